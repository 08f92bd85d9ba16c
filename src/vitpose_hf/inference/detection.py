"""Object detectors that find the people (or animals) a top-down pose model then looks at.

Any transformers object-detection model works (RT-DETR, DETR, Conditional / Deformable DETR, YOLOS, D-FINE, ...):
give a Hub name, a local folder, a model instance, or a transformers ``object-detection`` pipeline. Detections are
kept when their class name is in ``labels`` (``["person"]`` for human heads, the dataset's ``detector_labels`` for
AP-10K / APT-36K) and their score reaches ``threshold``.

A plain callable also works: ``detector(images) -> [[{"box": ..., "score": ..., "label": ...}, ...], ...]`` with one
list per image and ``box`` as ``[x1, y1, x2, y2]`` or the object-detection pipeline's
``{"xmin", "ymin", "xmax", "ymax"}`` dict, in pixels.

Boxes come out in ``"xyxy"`` pixels of the input image. With no detector at all the pose pipeline uses the whole
image as one box (see :mod:`vitpose_hf.inference.pipeline`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vitpose_hf.boxes import detector_box
from vitpose_hf.images import to_pil
from vitpose_hf.inference.hub import hub_load

__all__ = ["Detections", "ObjectDetector", "load_detector"]

DEFAULT_DETECTOR_THRESHOLD = 0.5
_OWN_LABELS: Any = object()  # "use the detector's own labels"


@dataclass
class Detections:
    """Detections of one image: ``boxes`` ``(M, 4)`` float64 xyxy pixels, ``scores`` ``(M,)``, ``labels`` (names)."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,)))
    labels: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


class ObjectDetector:
    """A transformers object-detection model with its image processor, a label filter and a score threshold.

    Args:
        model: a Hub name or local folder (loaded with ``AutoModelForObjectDetection``), a model instance, a
            transformers ``object-detection`` pipeline, or a callable (see the module docstring).
        image_processor: the model's image processor; loaded from ``model`` when it is a name or folder.
        labels: class names to keep (compared case-insensitively with ``model.config.id2label``). ``None`` keeps
            every class.
        threshold: minimum detection score.
        device, dtype: where and in which precision the model runs (a loaded model keeps its own otherwise).
        batch_size: images per forward pass.
        from_pretrained_kwargs: passed to ``from_pretrained`` (``revision``, ``local_files_only``, ...).
    """

    def __init__(
        self,
        model: str | os.PathLike | torch.nn.Module | Callable,
        image_processor: Any = None,
        labels: Sequence[str] | None = ("person",),
        threshold: float = DEFAULT_DETECTOR_THRESHOLD,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 8,
        **from_pretrained_kwargs: Any,
    ) -> None:
        self.labels = _check_labels(labels)
        self.threshold = _check_threshold(threshold)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.model: torch.nn.Module | None = None
        self.image_processor = image_processor
        self.function: Callable | None = None
        self.name = None
        if isinstance(model, (str, os.PathLike)):
            from transformers import AutoImageProcessor, AutoModelForObjectDetection

            self.name = os.fspath(model)
            self.model = hub_load(
                AutoModelForObjectDetection.from_pretrained,
                self.name,
                "detector",
                "--detector",
                **from_pretrained_kwargs,
            )
            if self.image_processor is None:
                hub = {
                    k: v for k, v in from_pretrained_kwargs.items() if k not in ("dtype", "torch_dtype", "device_map")
                }
                self.image_processor = hub_load(
                    AutoImageProcessor.from_pretrained, self.name, "detector", "--detector", **hub
                )
        elif _is_transformers_pipeline(model):
            self.model = model.model
            self.image_processor = image_processor if image_processor is not None else model.image_processor
        elif isinstance(model, torch.nn.Module):
            self.model = model
        elif callable(model):
            self.function = model
        else:
            raise TypeError(
                f"detector must be a model name or folder, a transformers object-detection model or pipeline, or a "
                f"callable, got {type(model).__name__}"
            )
        if self.model is not None:
            if self.image_processor is None:
                raise ValueError("a detector model instance needs its image_processor (pass image_processor=...)")
            if not hasattr(self.image_processor, "post_process_object_detection"):
                raise TypeError(
                    f"{type(self.image_processor).__name__} has no post_process_object_detection: the detector must be "
                    "a transformers object-detection model"
                )
            self.name = self.name or getattr(self.model, "name_or_path", None) or type(self.model).__name__
            self.model.eval()
            if device is not None or dtype is not None:
                self.model.to(device=device, dtype=dtype)
            if self.labels is not None:
                self._check_labels_known(self.labels)

    # ------------------------------------------------------------------------------------------------------------
    @property
    def id2label(self) -> dict[int, str]:
        if self.model is None:
            return {}
        return {int(k): str(v) for k, v in (self.model.config.id2label or {}).items()}

    def _check_labels_known(self, labels: set[str]) -> None:
        known = {name.lower() for name in self.id2label.values()}
        if not labels & known:
            shown = sorted(self.id2label.values())
            raise ValueError(
                f"the detector {self.name!r} has no class named {sorted(labels)}; its classes are "
                f"{shown[:20]}{' ...' if len(shown) > 20 else ''}. Pass labels=[...] with names it knows"
            )

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> ObjectDetector:
        if self.model is not None:
            self.model.to(device=device, dtype=dtype)
        return self

    def __call__(
        self,
        images: Sequence[Any],
        labels: Sequence[str] | None = _OWN_LABELS,
        threshold: float | None = None,
    ) -> list[Detections]:
        """Detect objects on each image; returns one :class:`Detections` per image (xyxy pixels).

        ``labels`` and ``threshold`` override the detector's own for this call (``labels=None`` keeps every class).
        """
        wanted = self.labels if labels is _OWN_LABELS else _check_labels(labels)
        threshold = self.threshold if threshold is None else _check_threshold(threshold)
        images = list(images)
        if self.function is not None:
            raw = self._call_function(images)
        else:
            if wanted is not None:
                self._check_labels_known(wanted)
            raw = []
            for start in range(0, len(images), self.batch_size):
                raw.extend(self._run_model(images[start : start + self.batch_size], threshold))
        out = []
        for det in raw:
            keep = [
                i
                for i in range(len(det))
                if det.scores[i] >= threshold and (wanted is None or det.labels[i].lower() in wanted)
            ]
            out.append(Detections(det.boxes[keep].reshape(-1, 4), det.scores[keep], [det.labels[i] for i in keep]))
        return out

    def _call_function(self, images: list[Any]) -> list[Detections]:
        results = self.function(images)
        if not isinstance(results, (list, tuple)) or len(results) != len(images):
            raise ValueError(
                f"the detector callable must return one list of detections per image ({len(images)}), got "
                f"{type(results).__name__} of length {len(results) if hasattr(results, '__len__') else '?'}"
            )
        out = []
        for i, items in enumerate(results):
            boxes, scores, names = [], [], []
            for j, item in enumerate(items):
                if not isinstance(item, dict) or "box" not in item:
                    raise ValueError(
                        f"detection {j} of image {i} must be a dict with 'box', 'score', 'label', got {item!r}"
                    )
                boxes.append(detector_box(item["box"], f"detection {j} of image {i}"))
                scores.append(float(item.get("score", 1.0)))
                names.append(str(item.get("label", "")))
            out.append(
                Detections(
                    np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(scores, dtype=np.float64), names
                )
            )
        return out

    @torch.no_grad()
    def _run_model(self, images: list[Any], threshold: float) -> list[Detections]:
        pil = [to_pil(image) for image in images]
        inputs = self.image_processor(images=pil, return_tensors="pt")
        parameter = next(self.model.parameters())
        inputs = {
            k: (
                v.to(parameter.device, dtype=parameter.dtype)
                if torch.is_floating_point(v) and k == "pixel_values"
                else v.to(parameter.device)
            )
            for k, v in inputs.items()
            if isinstance(v, torch.Tensor)
        }
        outputs = self.model(**inputs)
        # post-process in float32: box coordinates in half precision are off by pixels
        for key, value in list(outputs.items()):
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                outputs[key] = value.float()
        sizes = torch.tensor([[im.height, im.width] for im in pil], device=parameter.device)
        processed = self.image_processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=sizes)
        names = self.id2label
        out = []
        for result in processed:
            ids = result["labels"].tolist()
            out.append(
                Detections(
                    result["boxes"].double().cpu().numpy().reshape(-1, 4),
                    result["scores"].double().cpu().numpy(),
                    [names.get(int(i), str(i)) for i in ids],
                )
            )
        return out

    def __repr__(self) -> str:
        labels = sorted(self.labels) if self.labels is not None else "all"
        return f"ObjectDetector({self.name!r}, labels={labels}, threshold={self.threshold})"


def _is_transformers_pipeline(value: Any) -> bool:
    try:
        from transformers import Pipeline
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, Pipeline)


def _check_labels(labels: Sequence[str] | None) -> set[str] | None:
    if labels is None:
        return None
    if isinstance(labels, str):
        labels = [labels]
    if (
        not isinstance(labels, (list, tuple, set, frozenset))
        or not labels
        or not all(isinstance(x, str) for x in labels)
    ):
        raise ValueError(f"labels must be a non-empty list of class names or None (all classes), got {labels!r}")
    return {x.lower() for x in labels}


def _check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not np.isfinite(threshold):
        raise ValueError(f"the detector threshold must be a finite number, got {threshold!r}")
    return float(threshold)


def load_detector(
    detector: Any,
    labels: Sequence[str] | None = ("person",),
    threshold: float = DEFAULT_DETECTOR_THRESHOLD,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> ObjectDetector | None:
    """``None`` -> ``None``; an :class:`ObjectDetector` as is; anything else wrapped in one (see its arguments)."""
    if detector is None:
        return None
    if isinstance(detector, ObjectDetector):
        return detector
    return ObjectDetector(detector, labels=labels, threshold=threshold, device=device, dtype=dtype, **kwargs)
