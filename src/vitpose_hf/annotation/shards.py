"""Shards of an annotation run: which rows each holds, which process writes it, and how it is written and resumed.

The input rows ``0 .. num_rows - 1`` are cut into fixed-size shards (``shard_size`` rows, the last one shorter; an
empty input has one empty shard);
shard ``i`` is written by process ``i % num_processes``. The plan depends only on the number of rows and the shard
size, so a run resumed with another number of processes writes the same shards.

Layout of an output folder::

    data/shard-00000-of-00004.parquet     the results (one row per annotated image)
    annotate_state/manifest.json          the arguments' fingerprint, checked on resume
    annotate_state/shard-00000.json       written after its Parquet file: the shard is complete
    annotate_state/summary.json           counts over all shards (written at the end)

Every file is written to a temporary name and moved into place with ``os.replace`` (atomic on one file system), the
Parquet file before its marker: a killed run leaves either a complete shard or one that is redone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DATA_DIR",
    "STATE_DIR",
    "ShardPlan",
    "atomic_write_bytes",
    "atomic_write_json",
    "fingerprint",
    "OutputFolder",
]

DATA_DIR = "data"
STATE_DIR = "annotate_state"
TMP_DIR = "tmp"


@dataclass(frozen=True)
class ShardPlan:
    """Fixed-size shards of ``num_rows`` input rows."""

    num_rows: int
    shard_size: int

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ValueError(f"the shard size must be at least 1, got {self.shard_size}")
        if self.num_rows < 0:
            raise ValueError(f"the number of rows must be at least 0, got {self.num_rows}")

    @property
    def num_shards(self) -> int:
        """Number of shards; an empty input has one empty shard, so that its output is an empty Parquet table."""
        return max(1, -(-self.num_rows // self.shard_size))

    def rows(self, shard: int) -> range:
        """The input rows of one shard."""
        if not 0 <= shard < self.num_shards:
            raise IndexError(f"shard {shard} is outside 0..{self.num_shards - 1}")
        start = shard * self.shard_size
        return range(start, min(start + self.shard_size, self.num_rows))

    def shards_of(self, process_index: int, num_processes: int) -> list[int]:
        """The shards process ``process_index`` of ``num_processes`` writes: ``i % num_processes == process_index``."""
        if not 0 <= process_index < num_processes:
            raise ValueError(f"process index {process_index} is outside 0..{num_processes - 1}")
        return list(range(process_index, self.num_shards, num_processes))


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A stable hash of the settings that decide a run's output (JSON with sorted keys, SHA-256)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def atomic_write_bytes(path: Path, data: bytes, tmp_dir: Path) -> None:
    """Write ``data`` to ``path`` through a temporary file in ``tmp_dir`` (same file system) and ``os.replace``."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{path.name}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, payload: Any, tmp_dir: Path) -> None:
    """:func:`atomic_write_bytes` of a JSON document."""
    atomic_write_bytes(path, (json.dumps(payload, indent=1, sort_keys=True) + "\n").encode("utf-8"), tmp_dir)


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:  # cannot happen with atomic writes, unless edited by hand
        raise ValueError(f"{path} is not valid JSON ({exc}); delete it to redo its shard") from None


class OutputFolder:
    """The files of one run's output folder (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, plan: ShardPlan) -> None:
        self.root = Path(root)
        self.plan = plan
        self.data = self.root / DATA_DIR
        self.state = self.root / STATE_DIR
        self.tmp = self.state / TMP_DIR

    # ---- paths -----------------------------------------------------------------------------------------------
    def shard_path(self, shard: int) -> Path:
        """The Parquet file of a shard."""
        return self.data / f"shard-{shard:05d}-of-{self.plan.num_shards:05d}.parquet"

    def marker_path(self, shard: int) -> Path:
        """The done marker of a shard (written after its Parquet file)."""
        return self.state / f"shard-{shard:05d}.json"

    @property
    def manifest_path(self) -> Path:
        """The run's settings and their fingerprint."""
        return self.state / "manifest.json"

    @property
    def summary_path(self) -> Path:
        """Counts over all shards, with the skipped rows (written at the end)."""
        return self.state / "summary.json"

    # ---- run set-up --------------------------------------------------------------------------------------------
    def check_manifest(self, manifest: Mapping[str, Any]) -> bool:
        """True when the folder already holds a run with this fingerprint, False when it holds none.

        Raises ValueError when it holds a run with other settings (naming the settings that differ), or files
        that are not from a run at all.
        """
        found = _read_json(self.manifest_path)
        if found is None:
            if self.data.is_dir() and any(self.data.iterdir()):
                raise ValueError(
                    f"{self.data} already holds files but no {STATE_DIR}/manifest.json: not a vitpose-hf annotate "
                    "output; use another --output-dir or --overwrite"
                )
            return False
        if found.get("fingerprint") == manifest["fingerprint"]:
            return True
        old, new = found.get("settings", {}), manifest["settings"]
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:6]) or "the format version"
        raise ValueError(
            f"{self.root} holds an annotation run with other arguments ({details}); resuming needs the same "
            "arguments: use another --output-dir, or --overwrite to start over"
        )

    def prepare(self, manifest: Mapping[str, Any], overwrite: bool) -> None:
        """Main process only: clear the folder for ``overwrite``, drop stale temporary files, write the manifest."""
        if overwrite:
            shutil.rmtree(self.data, ignore_errors=True)
            shutil.rmtree(self.state, ignore_errors=True)
        self.data.mkdir(parents=True, exist_ok=True)
        self.state.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)  # what a killed run was writing
        self.tmp.mkdir()
        if not self.manifest_path.is_file():
            atomic_write_json(self.manifest_path, dict(manifest), self.tmp)

    # ---- shards ------------------------------------------------------------------------------------------------
    def completed(self, shard: int, fingerprint_: str) -> dict[str, Any] | None:
        """The marker of a complete shard (its Parquet file present with the recorded number of rows), else None."""
        import pyarrow.parquet as pq

        marker = _read_json(self.marker_path(shard))
        if not marker or marker.get("fingerprint") != fingerprint_:
            return None
        path = self.shard_path(shard)
        if not path.is_file():
            return None
        try:
            rows = pq.read_metadata(path).num_rows
        except (OSError, ValueError):
            return None
        return marker if rows == marker.get("rows") else None

    def write_shard(self, shard: int, table: Any, marker: Mapping[str, Any]) -> None:
        """Write a shard's Parquet table, then its marker (both atomically)."""
        import pyarrow.parquet as pq

        self.tmp.mkdir(parents=True, exist_ok=True)
        path = self.shard_path(shard)
        tmp = self.tmp / f"{path.name}.{os.getpid()}.tmp"
        # an empty shard gets no row group at all: `datasets` cannot read a 0-row row group (batch size 0)
        with pq.ParquetWriter(tmp, table.schema) as writer:
            if table.num_rows:
                writer.write_table(table)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        atomic_write_json(self.marker_path(shard), {**marker, "rows": table.num_rows}, self.tmp)
