"""The ``keypoint-detection`` pipeline (alias ``pose-estimation``): images in, people with named keypoints out.

This file travels with every released checkpoint (remote code, listed in the checkpoint's ``custom_pipelines``), so
``transformers.pipeline(model=REPO, trust_remote_code=True)`` builds it with only transformers installed. It imports
only its flat siblings. With :mod:`vitpose_hf` installed, :mod:`vitpose_hf.inference.pipeline` adds Hub-aware loading
(clear errors when the Hub cannot be reached) and the CLI's dtype rule on top, and registers the task.

Where the boxes come from, in order:

1. ``boxes=`` given to the call: one list of boxes per image (``box_format`` ``"xywh"``, the default, or ``"xyxy"``).
2. the ``detector`` given when the pipeline was built (any transformers object-detection model, see
   :class:`ObjectDetector`), keeping the dataset's detector classes (``person``, or the animal classes for
   AP-10K / APT-36K) that score at least ``detector_threshold``;
3. otherwise the whole image is one box. This is right for a photo of one person, and a warning is logged once.

Output schema (the one place it is documented)
----------------------------------------------
The pipeline returns plain Python (JSON-serialisable): for one image a list with one dict per person, for a list of
images one such list per image::

    {"box": [x, y, w, h], "box_format": "xywh", "box_score": 0.98 | None, "label": "person" | None,
     "dataset": "coco", "keypoints": [{"name": "nose", "x": 398.1, "y": 181.8, "score": 0.87}, ...]}

``box`` is the input box in ``box_format``; ``box_score`` and ``label`` are the detector's (``None`` for boxes given
by the caller unless ``box_scores`` are passed, and for the whole-image box). Keypoints are ``(x, y)`` pixels of
the input image, in the dataset's keypoint order; none are dropped, low scores included.

The image processor's ``post_process_pose_estimation`` (the lower-level API) keeps the structure of transformers'
own ViTPose processor: one list per image, one dict per person with ``keypoints`` ``(K, 2)`` float32 tensor of
``(x, y)`` pixels, ``scores`` ``(K,)``, ``labels`` (the ``K`` keypoint names, in order) and ``bbox`` ``(4,)`` (the
input box), plus ``dataset`` (the head's name). The pipeline's dicts above are those, made JSON-friendly.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers import Pipeline
from transformers.image_processing_utils import BaseImageProcessor

from .boxes import box_warnings, boxes_per_image, check_box_format, convert_boxes, detector_box, split_per_image
from .image_processing_vitpose_hf import ViTPoseImageProcessor, flip_pixel_values
from .images import image_size, is_batch, load_image, to_pil
from .modeling_vitpose_hf import ViTPoseEstimatorOutput, ViTPosePreTrainedModel

__all__ = [
    "DEFAULT_DETECTOR_THRESHOLD",
    "Detections",
    "ObjectDetector",
    "PoseEstimationPipeline",
    "load_detector",
    "processor_for_model",
]

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
DEFAULT_DETECTOR_THRESHOLD = 0.5
_OWN_LABELS: Any = object()  # "use the detector's own labels"


def _plain_load(load: Callable[..., Any], name: str, **kwargs: Any) -> Any:
    """``load(name, **kwargs)``: how the remote-code copy loads by name (the package adds Hub error handling)."""
    return load(name, **kwargs)


def _torch_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    """A floating torch dtype from itself or its torch name (``"bfloat16"``, ``"torch.float16"``); None stays None."""
    if value is None:
        return None
    found = getattr(torch, value.removeprefix("torch."), None) if isinstance(value, str) else value
    if not isinstance(found, torch.dtype) or not found.is_floating_point:
        raise ValueError(f"torch_dtype must be a floating point torch dtype or its name, got {value!r}")
    return found


def _checkpoint_file(source: str, filename: str) -> str | None:
    """A file of a checkpoint folder or Hub repo (cached or downloadable), or None."""
    if os.path.isdir(source):
        path = os.path.join(source, filename)
        return path if os.path.isfile(path) else None
    try:
        from transformers.utils import cached_file

        return cached_file(source, filename, _raise_exceptions_for_missing_entries=False)
    except Exception:  # noqa: BLE001 - no network, an invalid repo id: build the processor from the config instead
        return None


# ----------------------------------------------------------------------------------------------------------------
# Object detectors (boxes for the top-down model)
# ----------------------------------------------------------------------------------------------------------------
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
            transformers ``object-detection`` pipeline, or a callable ``detector(images)`` returning one list per
            image of ``{"box": [x1, y1, x2, y2] or {"xmin", "ymin", "xmax", "ymax"}, "score", "label"}`` dicts.
        image_processor: the model's image processor; loaded from ``model`` when it is a name or folder.
        labels: class names to keep (compared case-insensitively with ``model.config.id2label``). ``None`` keeps
            every class.
        threshold: minimum detection score.
        device, dtype: where and in which precision the model runs (a loaded model keeps its own otherwise).
        batch_size: images per forward pass.
        from_pretrained_kwargs: passed to ``from_pretrained`` (``revision``, ``local_files_only``, ...).
    """

    # how a detector named by Hub id or folder is loaded: ``(from_pretrained, name, **kwargs) -> object``
    _load_by_name = staticmethod(_plain_load)

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
            self.model = self._load_by_name(
                AutoModelForObjectDetection.from_pretrained, self.name, **from_pretrained_kwargs
            )
            if self.image_processor is None:
                hub = {
                    k: v for k, v in from_pretrained_kwargs.items() if k not in ("dtype", "torch_dtype", "device_map")
                }
                self.image_processor = self._load_by_name(AutoImageProcessor.from_pretrained, self.name, **hub)
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
    factory: type[ObjectDetector] | None = None,
    **kwargs: Any,
) -> ObjectDetector | None:
    """``None`` -> ``None``; an :class:`ObjectDetector` as is; anything else wrapped in one (see its arguments).

    ``factory``: the :class:`ObjectDetector` subclass to build (the package's loads Hub names with clear errors).
    """
    if detector is None:
        return None
    if isinstance(detector, ObjectDetector):
        return detector
    factory = factory or ObjectDetector
    return factory(detector, labels=labels, threshold=threshold, device=device, dtype=dtype, **kwargs)


def processor_for_model(
    model: ViTPosePreTrainedModel,
    source: str | os.PathLike | None = None,
    find_file: Callable[[str, str], str | None] = _checkpoint_file,
) -> ViTPoseImageProcessor:
    """The model's image processor: its saved ``ViTPoseImageProcessor``, else one built from the model config.

    A transformers ``VitPoseImageProcessor`` config contributes its size, mean and std. The built processor uses
    each dataset's official UDP setting and has the model's input size. ``find_file(source, filename)`` finds
    the saved config (a path or None).
    """
    source = os.fspath(source) if source is not None else getattr(model, "name_or_path", None)
    saved: dict[str, Any] = {}
    if source:
        path = find_file(source, "preprocessor_config.json")
        if path is not None:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
    if saved.get("image_processor_type") == ViTPoseImageProcessor.__name__:
        return ViTPoseImageProcessor.from_dict(saved)
    height, width = model.config.image_size
    options: dict[str, Any] = {
        "size": {"height": height, "width": width},
        "use_udp": None,
        "dataset": list(model.config.datasets),
    }
    for key in ("image_mean", "image_std", "do_rescale", "rescale_factor", "do_normalize"):
        if key in saved:
            options[key] = saved[key]
    return ViTPoseImageProcessor(**options)


def _adapt_processor(
    processor: Any, model: ViTPosePreTrainedModel, find_file: Callable[[str, str], str | None]
) -> ViTPoseImageProcessor:
    if isinstance(processor, ViTPoseImageProcessor):
        return processor
    if processor is None:
        return processor_for_model(model, find_file=find_file)
    if isinstance(processor, (str, os.PathLike)):
        return processor_for_model(model, source=processor, find_file=find_file)
    if isinstance(processor, BaseImageProcessor):
        # e.g. transformers' VitPoseImageProcessor: keep its normalisation, use our crops and decoding
        built = processor_for_model(model, source="", find_file=find_file)
        for key in ("image_mean", "image_std"):
            value = getattr(processor, key, None)
            if value is not None:
                setattr(built, key, [float(v) for v in value])
        return built
    raise TypeError(f"image_processor must be a ViTPoseImageProcessor, a path or None, got {type(processor).__name__}")


# ----------------------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------------------
class _Images:
    """All images of one call, handed to ``run_single`` as one input so that their crops are batched together."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items


def _load_image(image: Any, where: str, timeout: float | None) -> Any:
    """Paths and URLs are read (EXIF orientation applied); PIL images, arrays and tensors are checked and kept."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image, where, timeout=timeout)
    if isinstance(image, (PIL.Image.Image, np.ndarray, torch.Tensor)):
        try:
            image_size(image)  # checks the number of dimensions
        except TypeError as exc:
            raise ValueError(f"{where}: {exc}") from None
        return image
    raise TypeError(
        f"{where}: unsupported image type {type(image).__name__}; pass a path, a URL, a PIL image, an (H, W, C) "
        "numpy array or a (C, H, W) torch tensor, or a list of those"
    )


def _as_float64(boxes: Any) -> np.ndarray:
    if isinstance(boxes, torch.Tensor):
        return boxes.detach().cpu().double().numpy().reshape(-1, 4)
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def _boxes_per_image(boxes: Any, num_images: int, box_format: str) -> list[np.ndarray]:
    """One validated float64 `(M_i, 4)` array per image, with the nesting rules and errors of :mod:`.boxes`.

    The values are taken from the caller's boxes, not the validated float32 copies, so that the returned
    `box` is exactly the box given.
    """
    boxes_per_image(boxes, num_images, single=False, box_format=box_format)  # raises on bad input
    return [_as_float64(b) if len(b) else np.zeros((0, 4)) for b in split_per_image(boxes, num_images, single=False)]


def _scores_per_image(box_scores: Any, per_image: list[np.ndarray]) -> list[list[float | None]]:
    if box_scores is None:
        return [[None] * len(b) for b in per_image]
    if not isinstance(box_scores, (list, tuple)) or len(box_scores) != len(per_image):
        raise ValueError(f"box_scores must hold one list of scores per image ({len(per_image)}), got {box_scores!r}")
    out = []
    for i, (scores, boxes) in enumerate(zip(box_scores, per_image)):
        if isinstance(scores, (torch.Tensor, np.ndarray)):
            scores = scores.tolist()
        if not isinstance(scores, (list, tuple)) or len(scores) != len(boxes):
            raise ValueError(f"box_scores[{i}] must hold one score per box ({len(boxes)}), got {scores!r}")
        values = []
        for score in scores:  # None: no score for this box
            if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float, np.number))):
                raise ValueError(f"box_scores[{i}] must hold numbers (or None), got {score!r}")
            values.append(None if score is None else float(score))
        out.append(values)
    return out


def _concat_outputs(outputs: list[ViTPoseEstimatorOutput]) -> ViTPoseEstimatorOutput:
    if len(outputs) == 1:
        return outputs[0]
    fields = {}
    for key in ("heatmaps", "num_keypoints", "dataset_index"):
        parts = [getattr(o, key) for o in outputs]
        if all(p is not None for p in parts):
            fields[key] = torch.cat(parts)
    return ViTPoseEstimatorOutput(**fields, datasets=outputs[0].datasets)


# ----------------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------------
class PoseEstimationPipeline(Pipeline):
    """Top-down pose estimation with a ViTPose / ViTPose++ model (task ``"keypoint-detection"``).

    Build it with ``transformers.pipeline(model=REPO, trust_remote_code=True)`` (this file, from the checkpoint),
    or with vitpose_hf installed, :func:`vitpose_hf.pipeline` / ``transformers.pipeline("keypoint-detection",
    model=...)``. Output: see the module docstring.

    Args:
        model: a :class:`ViTPoseForPoseEstimation` (ours or a converted transformers ``vitpose`` checkpoint).
        image_processor: a :class:`ViTPoseImageProcessor`; by default the checkpoint's, else one built from the
            model config.
        detector: finds the boxes when a call gives none: a Hub name or folder of any transformers
            object-detection model, a model instance, an object-detection pipeline, an :class:`ObjectDetector` or
            a callable (see :mod:`vitpose_hf.inference.detection`). ``None``: the whole image is one box.
        detector_kwargs: passed to the detector's ``from_pretrained``.
        device: where the model (and detector) run; default: the first GPU if any, else the CPU.
        torch_dtype (or dtype): ``torch.bfloat16`` / ``"bfloat16"`` / ``torch.float16`` to run the pose model in
            half precision (decoding stays float32); with vitpose_hf installed also ``"bf16"`` / ``"fp16"``, and
            bf16 on a CPU without native bf16 warns once.
            ``None`` / ``"auto"`` (transformers' meaning): the model's own dtype. The CLI's ``--dtype auto`` rule
            (bf16 on CUDA and native-bf16 CPUs) is :func:`vitpose_hf.inference.hub.choose_dtype`.
        compile: ``True`` (or a dict of ``torch.compile`` options, e.g. ``{"backend": "aot_eager"}``) runs the pose
            model through ``torch.compile``; the first call of each new crop-batch shape compiles.
        batch_size: crops per forward pass (default 32).
        Call options may also be given here as defaults: ``dataset``, ``flip_test``, ``box_format``,
        ``detector_threshold``, ``detector_labels``, ``timeout``.
    """

    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False
    # what the installed package replaces (vitpose_hf.inference.pipeline): Hub-aware loading and its dtype rule
    _find_file = staticmethod(_checkpoint_file)
    _detector_factory: type[ObjectDetector] = ObjectDetector

    def _check_dtype(self, requested: Any) -> None:
        _torch_dtype(requested)

    def _choose_dtype(self, requested: Any) -> torch.dtype | None:
        return _torch_dtype(requested)

    def __init__(
        self,
        model: ViTPosePreTrainedModel,
        image_processor: Any = None,
        detector: Any = None,
        detector_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # by class name, not isinstance: with remote code, transformers may load the model's module and this file's
        # `.modeling_vitpose_hf` as two copies (one per dynamic-module folder), whose classes differ
        pose_model = any(cls.__name__ == ViTPosePreTrainedModel.__name__ for cls in type(model).__mro__)
        if not pose_model or not hasattr(model, "heads"):
            hint = ""
            if type(model).__name__ == "VitPoseForPoseEstimation":
                hint = (
                    " (this is transformers' VitPose: load the checkpoint with "
                    "vitpose_hf.ViTPoseForPoseEstimation.from_pretrained, which converts it)"
                )
            raise TypeError(
                "the pose-estimation pipeline needs a vitpose_hf ViTPoseForPoseEstimation, "
                f"got {type(model).__name__}{hint}"
            )
        torch_dtype, plain_dtype = kwargs.pop("torch_dtype", None), kwargs.pop("dtype", None)
        requested = torch_dtype if torch_dtype not in (None, "auto") else plain_dtype
        requested = None if requested == "auto" else requested  # transformers' "auto": the model's own dtype
        self._check_dtype(requested)  # a bad name fails before the pipeline is built
        compile_options = kwargs.pop("compile", False)
        if not isinstance(compile_options, (bool, dict)):
            raise TypeError(f"compile must be a bool or a dict of torch.compile options, got {compile_options!r}")
        image_processor = _adapt_processor(image_processor, model, self._find_file)
        super().__init__(model=model, image_processor=image_processor, **kwargs)
        dtype = self._choose_dtype(requested)
        if dtype is not None and self.model.dtype != dtype:
            self.model.to(dtype)
        self.model.eval()
        self._pose_forward: Any = self.model
        if compile_options:
            self._pose_forward = torch.compile(self.model, **({} if compile_options is True else compile_options))
        self.detector: ObjectDetector | None = load_detector(
            detector, labels=None, device=self.device, factory=self._detector_factory, **(detector_kwargs or {})
        )
        if self.detector is not None and not isinstance(detector, (str, os.PathLike)):
            self.detector.to(self.device)
        self._warned_whole_image = False
        self._warned_box_kinds: set[str] = set()

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save the model and the image processor (not the detector) to a folder that ``pipeline()`` loads.

        transformers' default would also write a ``custom_pipelines`` entry naming the registered model class, which
        its loader looks up in the ``transformers`` namespace and cannot find. Released folders
        (:mod:`vitpose_hf.release`) carry a ``custom_pipelines`` entry pointing at this file instead.
        """
        if os.path.isfile(save_directory):
            raise ValueError(f"{os.fspath(save_directory)!r} is a file; pass a folder")
        os.makedirs(save_directory, exist_ok=True)
        self.model.save_pretrained(save_directory, **kwargs)
        self.image_processor.save_pretrained(save_directory, **kwargs)

    # ---- parameters -------------------------------------------------------------------------------------------
    def _sanitize_parameters(
        self,
        boxes: Any = None,
        box_scores: Any = None,
        box_format: str | None = None,
        dataset: str | int | None = None,
        flip_test: bool | None = None,
        detector_threshold: float | None = None,
        detector_labels: Sequence[str] | None = None,
        timeout: float | None = None,
        _crop_batch_size: int | None = None,
    ) -> tuple[dict, dict, dict]:
        preprocess: dict[str, Any] = {}
        forward: dict[str, Any] = {}
        if boxes is not None:
            preprocess["boxes"] = boxes
        if box_scores is not None:
            preprocess["box_scores"] = box_scores
        if box_format is not None:
            preprocess["box_format"] = check_box_format(box_format)
        if dataset is not None:
            self.model.config.dataset_to_index(dataset)  # ValueError naming this checkpoint's datasets
            preprocess["dataset"] = dataset
        if detector_threshold is not None:
            if isinstance(detector_threshold, bool) or not isinstance(detector_threshold, (int, float)):
                raise ValueError(f"detector_threshold must be a number, got {detector_threshold!r}")
            preprocess["detector_threshold"] = float(detector_threshold)
        if detector_labels is not None:
            labels = [detector_labels] if isinstance(detector_labels, str) else list(detector_labels)
            if not labels or not all(isinstance(x, str) for x in labels):
                raise ValueError(f"detector_labels must be a list of class names, got {detector_labels!r}")
            preprocess["detector_labels"] = labels
        if timeout is not None:
            preprocess["timeout"] = timeout
        if flip_test is not None:
            if not isinstance(flip_test, bool):
                raise ValueError(f"flip_test must be True or False, got {flip_test!r}")
            forward["flip_test"] = flip_test
        if _crop_batch_size is not None:
            if isinstance(_crop_batch_size, bool) or not isinstance(_crop_batch_size, int) or _crop_batch_size < 1:
                raise ValueError(f"batch_size must be a positive integer, got {_crop_batch_size!r}")
            forward["batch_size"] = _crop_batch_size
        return preprocess, forward, {}

    def __call__(self, images: Any, boxes: Any = None, **kwargs: Any) -> list:
        """Estimate poses.

        Args:
            images: one image or a list of images: paths, http(s) URLs, PIL images, ``(H, W, C)`` numpy arrays or
                ``(C, H, W)`` torch tensors (a 4-D array / tensor is a batch).
            boxes: for one image, its ``(M, 4)`` boxes; for a list, one such list per image. An empty list gives
                no people. ``None``: the detector's boxes, or the whole image.
            box_scores: optional scores of the given boxes (same nesting, without the 4), reported as ``box_score``.
            box_format: ``"xywh"`` (COCO, default) or ``"xyxy"``, for the given boxes and the returned ``box``.
            dataset: the head of a multi-dataset (ViTPose++) checkpoint: ``"coco"``, ``"aic"``, ``"mpii"``,
                ``"ap10k"``, ``"apt36k"``, ``"wholebody"`` or an index; default: the checkpoint's first.
            flip_test: average with the mirrored crops (official flip test); default False.
            batch_size: crops per forward pass.
            detector_threshold: minimum detector score (default 0.5).
            detector_labels: detector classes to keep; default: the dataset's ``detector_labels``.
            timeout: seconds to wait for URLs.

        Returns:
            For one image, a list with one dict per person; for a list of images, one such list per image.
        """
        if images is None:
            raise ValueError("keypoint-detection needs an image or a list of images")
        batch_size = kwargs.pop("batch_size", None)
        if "num_workers" in kwargs:
            raise TypeError("num_workers is not supported: the crops of all images are batched in one call")
        single = not is_batch(images)
        items = [images] if single else list(images)
        if boxes is not None and single:
            boxes = split_per_image(boxes, 1, single=True)
        if single and kwargs.get("box_scores") is not None:
            scores = kwargs["box_scores"]
            if not (
                isinstance(scores, (list, tuple))
                and len(scores) == 1
                and isinstance(scores[0], (list, tuple, np.ndarray, torch.Tensor))
            ):
                kwargs["box_scores"] = [scores]
        if boxes is not None:
            kwargs["boxes"] = boxes
        if batch_size is not None:
            kwargs["_crop_batch_size"] = batch_size
        results = super().__call__(_Images(items), **kwargs)
        return results[0] if single else results

    # ---- the three steps ----------------------------------------------------------------------------------------
    def _dataset(self, dataset: str | int | None) -> tuple[int, dict]:
        index = self.model.config.dataset_to_index(0 if dataset is None else dataset)
        return index, self.model.config.datasets[index]

    def _warn_suspicious_boxes(self, images: list[Any], per_image: list[np.ndarray], box_format: str) -> None:
        """Log once per kind (zero-size, outside the image, xyxy given as xywh) for the user's boxes."""
        for i, (image, boxes) in enumerate(zip(images, per_image)):
            height, width = image_size(image)
            for kind, message in box_warnings(boxes, box_format, width, height, name=f"boxes[{i}]").items():
                if kind not in self._warned_box_kinds:
                    self._warned_box_kinds.add(kind)
                    logger.warning(message)

    def preprocess(
        self,
        inputs: _Images,
        boxes: Any = None,
        box_scores: Any = None,
        box_format: str = "xywh",
        dataset: str | int | None = None,
        detector_threshold: float = DEFAULT_DETECTOR_THRESHOLD,
        detector_labels: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        index, info = self._dataset(dataset)
        images = [_load_image(image, f"images[{i}]", timeout) for i, image in enumerate(inputs.items)]
        if boxes is not None:
            per_image = _boxes_per_image(boxes, len(images), box_format)
            self._warn_suspicious_boxes(images, per_image, box_format)
            scores = _scores_per_image(box_scores, per_image)
            labels: list[list[str | None]] = [[None] * len(b) for b in per_image]
        elif box_scores is not None:
            raise ValueError("box_scores were given without boxes")
        elif self.detector is not None:
            wanted = detector_labels if detector_labels is not None else info.get("detector_labels") or ["person"]
            detections = self.detector(images, labels=wanted, threshold=detector_threshold)
            per_image = [convert_boxes(d.boxes, "xyxy", box_format) for d in detections]
            scores = [[float(s) for s in d.scores] for d in detections]
            labels = [list(d.labels) for d in detections]
        else:
            if not self._warned_whole_image:
                logger.warning(
                    "no boxes and no detector: each whole image is used as one box (one subject per image). Pass "
                    "boxes=... or build the pipeline with detector=... (any transformers object-detection model)."
                )
                self._warned_whole_image = True
            per_image = []
            for image in images:
                height, width = image_size(image)
                per_image.append(np.array([[0.0, 0.0, float(width), float(height)]]))  # same numbers in both formats
            scores = [[None] for _ in images]
            labels = [[None] for _ in images]
        crops = self.image_processor(images, boxes=per_image, box_format=box_format, device=self.device, dataset=info)
        return {
            "crops": crops,
            "dataset_index": index,
            "boxes": per_image,
            "box_scores": scores,
            "box_labels": labels,
            "box_format": box_format,
        }

    def _forward(
        self, model_inputs: dict[str, Any], flip_test: bool = False, batch_size: int | None = None
    ) -> dict[str, Any]:
        crops = model_inputs["crops"]
        index = model_inputs["dataset_index"]
        info = self.model.config.datasets[index]
        pixel_values = crops["pixel_values"]
        n = pixel_values.shape[0]
        if n == 0:
            people: list[list[dict]] = [[] for _ in model_inputs["boxes"]]
        else:
            size = batch_size or self._batch_size or DEFAULT_BATCH_SIZE
            dtype = self.model.dtype
            outputs, flipped = [], []
            for start in range(0, n, size):
                chunk = pixel_values[start : start + size].to(device=self.device, dtype=dtype)
                outputs.append(self._pose_forward(chunk, dataset_index=index))
                if flip_test:
                    flipped.append(self._pose_forward(flip_pixel_values(chunk), dataset_index=index))
            people = self.image_processor.post_process_pose_estimation(
                _concat_outputs(outputs),
                flip_outputs=_concat_outputs(flipped) if flip_test else None,
                crop_metadata=crops,
                dataset=info,
                dataset_index=index,  # the host value the model got: post-processing then never reads the device
            )
        return {**{k: v for k, v in model_inputs.items() if k != "crops"}, "people": people}

    def postprocess(self, model_outputs: dict[str, Any]) -> list[list[dict[str, Any]]]:
        box_format = model_outputs["box_format"]
        results = []
        for image_people, boxes, scores, labels in zip(
            model_outputs["people"], model_outputs["boxes"], model_outputs["box_scores"], model_outputs["box_labels"]
        ):
            image_results = []
            for j, person in enumerate(image_people):
                points = person["keypoints"].detach().cpu().double().tolist()
                point_scores = person["scores"].detach().cpu().double().tolist()
                image_results.append(
                    {
                        "box": [float(v) for v in boxes[j]],
                        "box_format": box_format,
                        "box_score": scores[j],
                        "label": labels[j],
                        "dataset": person["dataset"],
                        "keypoints": [
                            {"name": name, "x": xy[0], "y": xy[1], "score": s}
                            for name, xy, s in zip(person["labels"], points, point_scores)
                        ],
                    }
                )
            results.append(image_results)
        return results
