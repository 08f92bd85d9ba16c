"""Write a Hub-ready release folder and upload it.

A folder holds ``config.json`` (with ``auto_map`` and ``custom_pipelines``), the weights as ``model.safetensors``
(sharded into ``model-0000k-of-0000N.safetensors`` plus ``model.safetensors.index.json`` above ``max_shard_size``),
``preprocessor_config.json``, the remote-code files (the flat modules the model, processor and pipeline import) and
``README.md``, the model card. transformers-format copies hold transformers' own ``vitpose`` config and weights and
no code.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from vitpose_hf.conversion import is_transformers_vitpose, ours_to_transformers, read_config_dict
from vitpose_hf.modeling_vitpose_hf import ViTPoseForPoseEstimation
from vitpose_hf.release.variants import DEFAULT_OWNER, Release, release_card

__all__ = [
    "DEFAULT_MAX_SHARD_SIZE",
    "PIPELINE_TASK",
    "PushError",
    "add_remote_code",
    "check_source_shape",
    "load_source",
    "push_folder",
    "remote_code_files",
    "write_release_folder",
]

DEFAULT_MAX_SHARD_SIZE = "2GB"  # ViTPose++-H (3.6 GB) goes out in two shards
# The task name under `custom_pipelines`. Not the Hub's "keypoint-detection" itself: transformers.pipeline() looks a
# task up in the config's custom_pipelines before its registry, so that name would shadow the task vitpose_hf
# registers (pipeline("keypoint-detection", model=REPO) would then demand trust_remote_code even with the package
# installed). `pipeline(model=REPO, trust_remote_code=True)` picks the one custom task by itself.
PIPELINE_TASK = "vitpose-keypoint-detection"
PIPELINE_CLASS = "pipeline_vitpose_hf.PoseEstimationPipeline"
_SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "decoder", "num_experts", "part_features")


class PushError(RuntimeError):
    """The upload cannot start or failed: no token, no network, or the Hub refused it (the message says which)."""


# ----------------------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------------------
def load_source(
    source: str | os.PathLike, official_overrides: dict[str, Any] | None = None, **kwargs: Any
) -> ViTPoseForPoseEstimation:
    """The model of an official ``.pth`` file, a transformers ``vitpose`` checkpoint or one of our folders.

    Official files go through the conversion of ``vitpose-hf convert`` (architecture read from the tensors,
    ``official_overrides`` such as ``num_attention_heads`` on top); checkpoints by Hub name or folder through
    ``from_pretrained`` (transformers' converted on load), with ``kwargs``.
    """
    source = os.fspath(source)
    if os.path.isfile(source):
        from vitpose_hf.cli.convert import convert_official

        return convert_official(source, **(official_overrides or {}))
    config = read_config_dict(source, **kwargs)
    if config is None:
        raise ValueError(
            f"{source} is not an official .pth file nor a checkpoint folder or Hub repo with a config.json"
        )
    if not is_transformers_vitpose(source, **kwargs) and config.get("model_type") != "vitpose_hf":
        raise ValueError(f"{source} has model_type {config.get('model_type')!r}; expected 'vitpose' or 'vitpose_hf'")
    return ViTPoseForPoseEstimation.from_pretrained(source, **kwargs).eval()


def check_source_shape(model: ViTPoseForPoseEstimation, release: Release) -> None:
    """ValueError naming the differences when ``model`` does not have the shape of ``release``'s preset."""
    from vitpose_hf.configuration_vitpose_hf import ViTPoseConfig

    want = ViTPoseConfig.from_preset(release.source)
    diff = {
        key: (getattr(model.config, key), getattr(want, key))
        for key in _SHAPE_KEYS
        if getattr(model.config, key) != getattr(want, key)
    }
    if release.dataset is not None and release.dataset not in model.config.dataset_names:
        diff["datasets"] = (model.config.dataset_names, [release.dataset, "..."])
    if diff:
        shown = ", ".join(f"{k} {got!r} (expected {exp!r})" for k, (got, exp) in diff.items())
        raise ValueError(f"the source of {release.name} is not a {release.source} model: {shown}")


# ----------------------------------------------------------------------------------------------------------------
# Folders
# ----------------------------------------------------------------------------------------------------------------
def remote_code_files() -> list[Path]:
    """The flat modules a checkpoint needs for ``trust_remote_code``: the pipeline file and what it imports."""
    from transformers.dynamic_module_utils import get_relative_import_files

    from vitpose_hf import pipeline_vitpose_hf

    entry = Path(pipeline_vitpose_hf.__file__)
    return sorted({entry, *(Path(p) for p in get_relative_import_files(str(entry)))})


def _custom_pipelines() -> dict[str, Any]:
    return {
        PIPELINE_TASK: {
            "impl": PIPELINE_CLASS,
            "pt": ["AutoModelForPoseEstimation"],
            "tf": [],
            "type": "image",
        }
    }


def add_remote_code(folder: str | os.PathLike) -> None:
    """Make a ``save_pretrained`` folder of ours run with only transformers installed.

    Adds ``custom_pipelines`` (the pose pipeline) and ``AutoModel`` to ``config.json``'s ``auto_map`` and copies
    the remote-code files beside it. The training script calls this too, so trained checkpoints behave as releases.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if "auto_map" not in config:  # written by save_pretrained for classes registered for auto classes
        raise ValueError(f"{config_path} has no auto_map: not a vitpose_hf save_pretrained folder")
    config["custom_pipelines"] = _custom_pipelines()
    # a released checkpoint is a pose model: AutoModel (and the Hub task's auto class) give keypoints, not features
    pose_class = config["auto_map"]["AutoModelForPoseEstimation"]
    config["auto_map"].update(AutoModel=pose_class, AutoModelForKeypointDetection=pose_class)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for path in remote_code_files():
        shutil.copyfile(path, folder / path.name)


def _write_vitpose_hf(
    model: ViTPoseForPoseEstimation, folder: Path, max_shard_size: str | int, source: str | None
) -> None:
    from vitpose_hf.inference.pipeline import processor_for_model

    model.save_pretrained(folder, max_shard_size=max_shard_size)
    processor_for_model(model, source=source or "").save_pretrained(folder)
    add_remote_code(folder)


def _write_transformers(model: ViTPoseForPoseEstimation, folder: Path, max_shard_size: str | int) -> None:
    from huggingface_hub import save_torch_state_dict
    from transformers import VitPoseImageProcessor

    config_dict, state = ours_to_transformers(model.config, model.state_dict(), 0)  # the format of `--to transformers`
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n", encoding="utf-8")
    save_torch_state_dict(state, folder, max_shard_size=max_shard_size, metadata={"format": "pt"})
    height, width = model.config.image_size
    VitPoseImageProcessor(size={"height": height, "width": width}).save_pretrained(folder)


def write_release_folder(
    model: ViTPoseForPoseEstimation,
    release: Release,
    folder: str | os.PathLike,
    *,
    owner: str = DEFAULT_OWNER,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    source: str | None = None,
    base_model: str | None = None,
) -> Path:
    """Write the Hub-ready folder of ``release`` cut from ``model`` (the source's six-head or dense model).

    Args:
        model: the converted source model; dense releases take ``model.single_dataset(release.dataset)``.
        folder: where to write; must be empty or missing.
        owner: Hub user or organisation (the card names ``owner/name``).
        max_shard_size: weights above it are split into several safetensors files (``"2GB"``, ``"100KB"``, bytes).
        source: where the model came from; its ``preprocessor_config.json`` is reused when it has ours.
        base_model: Hub id named as ``base_model`` in the card.
    """
    folder = Path(folder)
    if folder.is_file() or (folder.is_dir() and any(folder.iterdir())):
        raise FileExistsError(f"{folder} exists and is not an empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    if release.dataset is not None:
        model = model.single_dataset(release.dataset)
    if release.weights_format == "transformers":
        _write_transformers(model, folder, max_shard_size)
    else:
        _write_vitpose_hf(model, folder, max_shard_size, source if source and os.path.isdir(source) else None)
    card = release_card(release, model.config, owner, base_model=base_model)
    card.save(folder / "README.md")
    return folder


# ----------------------------------------------------------------------------------------------------------------
# Upload
# ----------------------------------------------------------------------------------------------------------------
def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload from vitpose-hf push",
) -> str:
    """Create ``repo_id`` (if needed) and upload ``folder`` with huggingface_hub; returns the commit URL.

    Raises :class:`PushError` when there is no token, the Hub cannot be reached, or it refuses the upload.
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    token = token or get_token()
    if not token:
        raise PushError(
            "no Hugging Face token: run `hf auth login`, set HF_TOKEN, or pass --token (a token with write access "
            f"to {repo_id.split('/')[0]!r})"
        )
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=os.fspath(folder), commit_message=commit_message)
    except OfflineModeIsEnabled as exc:
        raise PushError(f"cannot upload {repo_id}: huggingface_hub offline mode is on (HF_HUB_OFFLINE)") from exc
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        raise PushError(f"the Hub refused the upload of {repo_id} (HTTP {status}): {exc}") from exc
    except OSError as exc:  # connection refused, DNS, timeouts (httpx errors are not OSErrors: see below)
        raise PushError(f"cannot reach the Hugging Face Hub to upload {repo_id}: {exc}") from exc
    except Exception as exc:
        import httpx

        if isinstance(exc, httpx.TransportError):
            raise PushError(f"cannot reach the Hugging Face Hub to upload {repo_id}: {exc}") from exc
        raise
    return str(getattr(info, "commit_url", info))
