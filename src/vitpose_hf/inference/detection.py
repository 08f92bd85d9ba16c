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

from typing import Any

from vitpose_hf import pipeline_vitpose_hf as kernel
from vitpose_hf.inference.hub import hub_load
from vitpose_hf.pipeline_vitpose_hf import DEFAULT_DETECTOR_THRESHOLD, Detections

__all__ = ["DEFAULT_DETECTOR_THRESHOLD", "Detections", "ObjectDetector", "load_detector"]


def _load_by_name(load: Any, name: str, **kwargs: Any) -> Any:
    return hub_load(load, name, "detector", "--detector", **kwargs)


class ObjectDetector(kernel.ObjectDetector):
    __doc__ = kernel.ObjectDetector.__doc__

    # a Hub name that is neither cached nor reachable: HubUnreachableError naming --detector
    _load_by_name = staticmethod(_load_by_name)


def load_detector(detector: Any, **kwargs: Any) -> ObjectDetector | None:
    """``None`` -> ``None``; an :class:`ObjectDetector` as is; anything else wrapped in one.

    ``kwargs``: ``labels`` (default ``["person"]``), ``threshold``, ``device``, ``dtype`` and the
    :class:`ObjectDetector` arguments; Hub names load with :class:`~vitpose_hf.inference.hub.HubUnreachableError`.
    """
    return kernel.load_detector(detector, factory=ObjectDetector, **kwargs)
