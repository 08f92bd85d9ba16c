import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VITPOSE_HF_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real test photos and annotations; tests that need them skip (one line) where they are missing."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared test data: {SHARED_DATA} does not exist (set VITPOSE_HF_SHARED_DATA)")
    return SHARED_DATA
