"""The ``keypoint-detection`` pipeline with vitpose_hf installed (``pose-estimation`` is an alias).

    >>> import vitpose_hf
    >>> pose = vitpose_hf.inference.pipeline("usyd-community/vitpose-base-simple")
    >>> people = pose("photo.jpg", boxes=[[412.8, 157.6, 53.1, 138.0]], box_format="xywh")
    >>> people[0]["keypoints"][0]
    {'name': 'nose', 'x': 398.1, 'y': 181.8, 'score': 0.87}

The pipeline itself, and its output schema, live in :mod:`vitpose_hf.pipeline_vitpose_hf`, the flat file that also
travels with released checkpoints as remote code. This module adds what needs the installed package: loading by Hub
name with :class:`vitpose_hf.inference.hub.HubUnreachableError` when the Hub cannot be reached, the ``"bf16"`` /
``"fp16"`` dtype names with the slow-bf16-CPU warning, and the registration of the task with transformers, so that
``transformers.pipeline("keypoint-detection", model=...)`` builds it after ``import vitpose_hf``.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from vitpose_hf import pipeline_vitpose_hf as kernel
from vitpose_hf.image_processing_vitpose_hf import ViTPoseImageProcessor
from vitpose_hf.inference.bottom_up import BottomUpPoseEstimator, is_bottom_up_checkpoint
from vitpose_hf.inference.detection import ObjectDetector
from vitpose_hf.inference.hub import choose_dtype, hub_file, hub_load, resolve_dtype
from vitpose_hf.modeling_vitpose_hf import ViTPoseForPoseEstimation, ViTPosePreTrainedModel
from vitpose_hf.modeling_vitpose_hf_bottom_up import ViTPoseForBottomUpPoseEstimation

__all__ = [
    "DEFAULT_MODEL",
    "KeypointDetectionDispatch",
    "TASK",
    "TASK_ALIASES",
    "PoseEstimationPipeline",
    "load_pose_model",
    "pipeline",
    "processor_for_model",
    "register_pipeline",
]

TASK = "keypoint-detection"  # the Hub's task name (pipeline_tag of the released cards)
TASK_ALIASES = ("pose-estimation",)
DEFAULT_MODEL = "usyd-community/vitpose-base-simple"
DEFAULT_BATCH_SIZE = kernel.DEFAULT_BATCH_SIZE


class PoseEstimationPipeline(kernel.PoseEstimationPipeline):
    __doc__ = kernel.PoseEstimationPipeline.__doc__

    _find_file = staticmethod(hub_file)
    _detector_factory = ObjectDetector

    def _check_dtype(self, requested: Any) -> None:
        resolve_dtype(requested)

    def _choose_dtype(self, requested: Any) -> torch.dtype | None:
        return choose_dtype(requested, self.device)


def load_pose_model(
    model: str | os.PathLike | ViTPosePreTrainedModel = DEFAULT_MODEL,
    torch_dtype: str | torch.dtype | None = None,
    **kwargs: Any,
) -> ViTPoseForPoseEstimation:
    """Our checkpoints and transformers' ``vitpose`` ones by Hub name or folder (see :func:`hub_load`)."""
    if isinstance(model, torch.nn.Module):
        return model
    dtype = resolve_dtype(torch_dtype)
    if dtype is not None:
        kwargs["dtype"] = dtype
    return hub_load(ViTPoseForPoseEstimation.from_pretrained, model, "model", "--model", **kwargs)


def processor_for_model(
    model: ViTPosePreTrainedModel, source: str | os.PathLike | None = None
) -> ViTPoseImageProcessor:
    """The model's image processor: its saved ``ViTPoseImageProcessor``, else one built from the model config.

    A transformers ``VitPoseImageProcessor`` config contributes its size, mean and std. The built processor uses
    each dataset's official UDP setting and has the model's input size.
    """
    return kernel.processor_for_model(model, source, find_file=hub_file)


# ----------------------------------------------------------------------------------------------------------------
# Registration and the convenience constructor
# ----------------------------------------------------------------------------------------------------------------
_LOAD_FLAGS = (
    "_load_processor",
    "_load_image_processor",
    "_load_video_processor",
    "_load_feature_extractor",
    "_load_tokenizer",
)


class KeypointDetectionDispatch:
    """The ``keypoint-detection`` entry when another pipeline already serves that task (see
    :func:`register_pipeline`): ViTPose models get ours, every other model the pipeline that was there."""

    builtin: type  # set on the subclass that register_pipeline makes for the pipeline it found

    def __new__(cls, model: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(model, ViTPosePreTrainedModel):
            return PoseEstimationPipeline(model, *args, **kwargs)
        return cls.builtin(model, *args, **kwargs)


def _resolve(impl: Any) -> type:
    if isinstance(impl, str):  # transformers stores built-in impls as dotted paths
        import importlib

        module, _, name = impl.rpartition(".")
        return getattr(importlib.import_module(module), name)
    return impl


def register_pipeline() -> None:
    """Register ``"keypoint-detection"`` and its alias ``"pose-estimation"`` with transformers (idempotent).

    transformers 5.24 has no ``keypoint-detection`` pipeline (SuperPoint-style models are reached through
    ``AutoModelForKeypointDetection`` and the ``keypoint-matching`` task), so ours simply takes the name. Should a
    later transformers (or another library) serve ``keypoint-detection`` already, overwriting its entry would break
    its models; the entry becomes a :class:`KeypointDetectionDispatch` instead: its model classes are tried first
    (our checkpoints load through them too, being registered with ``AutoModelForKeypointDetection``), then ours
    (which also converts transformers' ``vitpose`` checkpoints), and the loaded model picks the pipeline.
    """
    from transformers.pipelines import PIPELINE_REGISTRY

    for task in (TASK, *TASK_ALIASES):
        current = PIPELINE_REGISTRY.supported_tasks.get(task)
        impl = current.get("impl") if current else None
        if impl is PoseEstimationPipeline or (isinstance(impl, type) and issubclass(impl, KeypointDetectionDispatch)):
            continue
        if impl is not None and task == TASK:
            builtin = _resolve(impl)
            flags = {name: getattr(builtin, name, False) for name in _LOAD_FLAGS}
            dispatch = type("KeypointDetectionDispatch", (KeypointDetectionDispatch,), {**flags, "builtin": builtin})
            theirs = current.get("pt") or ()
            PIPELINE_REGISTRY.register_pipeline(
                task,
                pipeline_class=dispatch,
                pt_model=(*(theirs if isinstance(theirs, tuple) else (theirs,)), ViTPoseForPoseEstimation),
                default=current.get("default"),
                type=current.get("type", "image"),
            )
            continue
        PIPELINE_REGISTRY.register_pipeline(
            task,
            pipeline_class=PoseEstimationPipeline,
            pt_model=ViTPoseForPoseEstimation,
            default={"pt": (DEFAULT_MODEL, "main")},
            type="image",
        )


def pipeline(
    model: str | os.PathLike | ViTPosePreTrainedModel = DEFAULT_MODEL,
    detector: Any = None,
    dataset: str | int | None = None,
    device: int | str | torch.device | None = None,
    torch_dtype: str | torch.dtype | None = None,
    image_processor: ViTPoseImageProcessor | str | None = None,
    paradigm: str | None = None,
    **kwargs: Any,
) -> PoseEstimationPipeline | BottomUpPoseEstimator:
    """Build a :class:`PoseEstimationPipeline` (same as ``transformers.pipeline("keypoint-detection", ...)``).

    Args:
        model: Hub name or local folder of a ViTPose checkpoint (ours or transformers' ``vitpose``), or a model.
            Default: ``usyd-community/vitpose-base-simple``. A Hub name that is neither cached nor downloadable
            raises :class:`vitpose_hf.inference.hub.HubUnreachableError`, which says how to pass a local folder.
        detector: see :class:`PoseEstimationPipeline`; ``None`` uses given boxes or the whole image.
        dataset: default head for ViTPose++ checkpoints.
        device: ``"cuda"``, ``"cpu"``, ``0``, ... (default: first GPU if any).
        torch_dtype: ``"bf16"`` / ``"fp16"`` / a torch dtype for the pose model.
        image_processor: a :class:`ViTPoseImageProcessor` or folder; by default the checkpoint's.
        paradigm: ``"top-down"`` (boxes or a detector, then crops) or ``"bottom-up"`` (whole images, a
            :class:`~vitpose_hf.inference.bottom_up.BottomUpPoseEstimator`, same per-person output). Default: from
            the checkpoint (a bottom-up model or local bottom-up folder gives bottom-up).
        kwargs: ``compile``, ``batch_size``, ``flip_test``, ``box_format``, ``detector_threshold``, ``detector_labels``,
            ``detector_kwargs``, ``revision`` / ``token`` / ``cache_dir`` (for loading by name).
    """
    register_pipeline()
    if paradigm not in (None, "top-down", "bottom-up"):
        raise ValueError(f"paradigm must be 'top-down' or 'bottom-up', got {paradigm!r}")
    if paradigm == "bottom-up" or (
        paradigm is None
        and (
            isinstance(model, ViTPoseForBottomUpPoseEstimation)
            or (isinstance(model, (str, os.PathLike)) and is_bottom_up_checkpoint(model))
        )
    ):
        if detector is not None:
            raise ValueError("a bottom-up model finds the people itself: detector= does not apply")
        if torch_dtype not in (None, "auto", "fp32", "float32", torch.float32):
            raise ValueError(f"torch_dtype={torch_dtype!r} is not supported for bottom-up models (they run in fp32)")
        if image_processor is not None:
            kwargs["processor"] = image_processor
        unknown = set(kwargs) - {"scales", "flip_test", "batch_size"}
        if unknown:
            raise TypeError(f"bottom-up pipeline got unexpected arguments: {', '.join(sorted(unknown))}")
        return BottomUpPoseEstimator(model, dataset=0 if dataset is None else dataset, device=device, **kwargs)
    load_kwargs = {k: kwargs.pop(k) for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
    source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
    model = load_pose_model(model, torch_dtype=torch_dtype, **load_kwargs)
    if image_processor is None and source is not None:
        image_processor = processor_for_model(model, source=source)
    if dataset is not None:
        kwargs["dataset"] = dataset
    if device is not None:
        kwargs["device"] = device
    return PoseEstimationPipeline(
        model=model, image_processor=image_processor, detector=detector, task=TASK, torch_dtype=torch_dtype, **kwargs
    )


register_pipeline()
