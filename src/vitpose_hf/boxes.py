"""Person boxes: their formats and the nesting rules of every box input of the package.

Formats (``box_format``):

- ``"xywh"`` (COCO): top-left corner, width, height;
- ``"xyxy"``: two corners, with width = x2 - x1 (continuous coordinates, as detectors return them).

Nesting (the processor, the pipeline and ``predict`` follow the same rules):

- for one image: ``(M, 4)`` boxes as a list of lists, an array or a tensor; a list of ``(4,)`` tensors;
  transformers' nesting ``[[box, box, ...]]``; an array / tensor ``(1, M, 4)``. One box is ``[box]``; a flat
  ``[x, y, w, h]`` is refused;
- for several images: a list with one ``(M_i, 4)`` entry per image, or an array / tensor ``(num_images, M, 4)``.

An empty entry means no box for that image. Every box is checked by :func:`validate_boxes`.

This file travels with checkpoints for ``trust_remote_code`` (the image processor imports it): it imports nothing
from the package.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "BOX_FORMATS",
    "TensorLike",
    "as_float_tensor",
    "boxes_per_image",
    "check_box_format",
    "box_warnings",
    "clip_box_to_image",
    "convert_boxes",
    "detector_box",
    "is_box_list",
    "short_repr",
    "split_per_image",
    "stack_if_tensors",
    "to_xywh",
    "validate_boxes",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
]

BOX_FORMATS = ("xywh", "xyxy")

TensorLike = torch.Tensor | np.ndarray | Sequence
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


# ----------------------------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------------------------
def short_repr(values: object, limit: int = 120) -> str:
    """``repr`` of a value (tensors and arrays as lists), cut to ``limit`` characters for error messages."""
    text = repr(values.tolist() if isinstance(values, (torch.Tensor, np.ndarray)) else values)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def as_float_tensor(values: TensorLike, name: str) -> torch.Tensor:
    """Numbers (tensor, array, nested lists) -> a float tensor (float64 tensors stay float64, the rest float32).

    A tensor stays on its device; anything else is made on the host (move it with :func:`.devices.to_device`).
    """
    if isinstance(values, torch.Tensor):
        tensor = values.detach()
        if not (tensor.is_floating_point() or tensor.dtype in _INT_DTYPES):
            raise TypeError(f"{name} must hold numbers, got a tensor of dtype {tensor.dtype}")
        return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a rectangular array of numbers, got {short_repr(values)} ({exc})") from None
    return torch.from_numpy(array).to(torch.float32)


# ----------------------------------------------------------------------------------------------------------------
# Formats
# ----------------------------------------------------------------------------------------------------------------
def check_box_format(box_format: str) -> str:
    """``box_format`` as ``"xywh"`` or ``"xyxy"`` (any case: ``"XYWH"`` too); ValueError otherwise."""
    normal = box_format.lower() if isinstance(box_format, str) else box_format
    if normal not in BOX_FORMATS:
        raise ValueError(f"box_format must be one of {BOX_FORMATS} (any case), got {box_format!r}")
    return normal


def validate_boxes(boxes: TensorLike, box_format: str = "xywh", name: str = "boxes") -> torch.Tensor:
    """Check boxes and return them as a float tensor of shape ``(N, 4)`` (float32; float64 tensors stay float64).

    An empty list gives shape ``(0, 4)``. Raises ValueError naming the offending box for a wrong shape, a NaN or
    infinite value, or a negative width / height (``x2 < x1`` or ``y2 < y1`` in ``"xyxy"``). Zero-size boxes are
    accepted, as in the official code: their scale is 0, their keypoints map back to the box centre, and the
    image processor gives them an all-black crop (see :meth:`ViTPoseImageProcessor.preprocess`).
    """
    box_format = check_box_format(box_format)
    tensor = as_float_tensor(boxes, name)
    if tensor.numel() == 0 and tensor.ndim <= 2:
        return tensor.reshape(0, 4)
    if tensor.ndim != 2 or tensor.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) ({box_format}), got shape {tuple(tensor.shape)}")
    finite = torch.isfinite(tensor).all(dim=1)
    size = tensor[:, 2:] if box_format == "xywh" else tensor[:, 2:] - tensor[:, :2]
    bad = ~finite | (size < 0).any(dim=1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        box = tensor[i].tolist()
        if not bool(finite[i]):
            reason = "contains NaN or infinity"
        elif box_format == "xywh":
            reason = f"has a negative {'width' if box[2] < 0 else 'height'}"
        else:
            reason = "has x2 < x1" if box[2] < box[0] else "has y2 < y1"
        raise ValueError(f"{name}[{i}] = {box} ({box_format}) {reason}")
    return tensor


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` boxes ``(x, y, w, h)`` -> ``(x1, y1, x2, y2)`` with ``x2 = x + w`` (continuous coordinates)."""
    return torch.cat([boxes[..., :2], boxes[..., :2] + boxes[..., 2:4]], dim=-1)


def xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` boxes ``(x1, y1, x2, y2)`` -> ``(x, y, w, h)`` with ``w = x2 - x1``.

    mmpose 0.x's inference helper adds 1 (``w = x2 - x1 + 1``, inclusive pixel indices); detectors return
    continuous corners, so no +1 here (the same as transformers' documented conversion).
    """
    return torch.cat([boxes[..., :2], boxes[..., 2:4] - boxes[..., :2]], dim=-1)


def to_xywh(boxes: torch.Tensor, box_format: str) -> torch.Tensor:
    """``(N, 4)`` tensor boxes in ``box_format`` -> xywh (the same tensor when already xywh)."""
    return boxes if check_box_format(box_format) == "xywh" else xyxy_to_xywh(boxes)


def convert_boxes(boxes: Any, source: str, target: str) -> Any:
    """Boxes ``(..., 4)`` from ``source`` to ``target`` format, as a new object of the same kind.

    Tensors stay tensors (same dtype), numpy arrays become float64 arrays, lists (one box or a list of boxes)
    become lists of floats.
    """
    source, target = check_box_format(source), check_box_format(target)
    if isinstance(boxes, torch.Tensor):
        if source == target:
            return boxes.clone()
        return xywh_to_xyxy(boxes) if target == "xyxy" else xyxy_to_xywh(boxes)
    array = np.array(boxes, dtype=np.float64)  # a copy
    if array.ndim == 0 or array.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (..., 4), got {short_repr(boxes)}")
    if source != target:
        if target == "xyxy":
            array[..., 2:] += array[..., :2]
        else:
            array[..., 2:] -= array[..., :2]
    return array if isinstance(boxes, np.ndarray) else array.tolist()


def box_warnings(
    boxes: TensorLike, box_format: str, width: float, height: float, name: str = "boxes"
) -> dict[str, str]:
    """Messages for boxes that are almost surely a mistake (not errors: the model still runs on them).

    - a zero-size box (its crop is all black);
    - a box entirely outside the ``width`` x ``height`` image;
    - an ``xywh`` box whose reading reaches far (over 10% of the image) beyond the image while its ``xyxy``
      reading fits: the boxes are probably ``xyxy`` given as ``xywh``.
    Returns ``{kind: message}`` with kinds ``"zero-size"``, ``"outside"``, ``"xyxy-as-xywh"`` (so that a caller can
    warn once per kind); each message names the first such box and how many there are.
    """
    box_format = check_box_format(box_format)
    tensor = validate_boxes(boxes, box_format, name).double()
    if tensor.shape[0] == 0:
        return {}
    xyxy = xywh_to_xyxy(tensor) if box_format == "xywh" else tensor
    size = xyxy[:, 2:] - xyxy[:, :2]
    checks = [
        ("zero-size", (size <= 0).any(dim=1), "has zero width or height (its crop is all black)"),
        (
            "outside",
            (xyxy[:, 2] <= 0) | (xyxy[:, 3] <= 0) | (xyxy[:, 0] >= width) | (xyxy[:, 1] >= height),
            f"lies entirely outside the {width:g} x {height:g} image",
        ),
    ]
    if box_format == "xywh":
        fits_as_xyxy = (
            (tensor[:, 0] < tensor[:, 2])
            & (tensor[:, 1] < tensor[:, 3])
            & (tensor[:, 2] <= width)
            & (tensor[:, 3] <= height)
            & (tensor[:, :2] >= 0).all(dim=1)
        )
        far = (xyxy[:, 2] > 1.1 * width) | (xyxy[:, 3] > 1.1 * height)
        checks.append(
            (
                "xyxy-as-xywh",
                fits_as_xyxy & far,
                "reaches far beyond the image as xywh but fits it as xyxy: are the boxes xyxy? "
                "(pass box_format='xyxy', or --box-format xyxy)",
            )
        )
    messages = {}
    for kind, flags, reason in checks:
        if bool(flags.any()):
            i = int(flags.nonzero()[0, 0])
            count = int(flags.sum())
            others = f" ({count} such boxes)" if count > 1 else ""
            messages[kind] = f"{name}[{i}] = {tensor[i].tolist()} ({box_format}) {reason}{others}"
    return messages


def clip_box_to_image(box: Sequence[float], width: float | None, height: float | None) -> list[float] | None:
    """The official COCO loader's clean-up of one xywh box: clipped to the image; None when nothing is left.

    As mmpose's top-down COCO dataset: ``x1 = max(0, x)``, ``x2 = min(width - 1, x1 + max(0, w - 1))`` (inclusive
    pixel indices; likewise for y), kept only when ``x2 > x1`` and ``y2 > y1``. An unknown size skips the clip to
    the right and bottom edges.
    """
    x, y, w, h = (float(v) for v in box)
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = x1 + max(0.0, w - 1.0), y1 + max(0.0, h - 1.0)
    if width is not None and height is not None:
        x2, y2 = min(float(width) - 1.0, x2), min(float(height) - 1.0, y2)
    if x2 <= x1 or y2 <= y1:
        return None
    return [x1, y1, x2 - x1, y2 - y1]


def detector_box(box: Any, where: str = "box") -> list[float]:
    """A detector's box as ``[x1, y1, x2, y2]``: 4 numbers, or the ``{"xmin", "ymin", "xmax", "ymax"}`` dict of
    transformers' object-detection pipeline."""
    if isinstance(box, dict):
        try:
            return [float(box[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
        except KeyError:
            raise ValueError(f"{where}: a box dict needs xmin, ymin, xmax, ymax, got keys {sorted(box)}") from None
    values = np.asarray(box, dtype=np.float64).reshape(-1)
    if values.size != 4:
        raise ValueError(f"{where}: a detector box is [x1, y1, x2, y2], got {box!r}")
    return values.tolist()


# ----------------------------------------------------------------------------------------------------------------
# Nesting
# ----------------------------------------------------------------------------------------------------------------
def is_box_list(value: Any) -> bool:
    """True for a list of boxes (a 2-D array, a sequence of sequences, or empty); False for one flat box."""
    if isinstance(value, np.ndarray):
        return value.ndim == 2 or value.size == 0
    if isinstance(value, torch.Tensor):
        return value.ndim == 2 or value.numel() == 0
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, (list, tuple, np.ndarray, torch.Tensor)) for v in value)
    return False


def stack_if_tensors(boxes: Any) -> Any:
    """A list of ``(4,)`` tensors -> one ``(M, 4)`` CPU tensor; anything else unchanged."""
    if isinstance(boxes, (list, tuple)) and boxes and all(isinstance(b, torch.Tensor) for b in boxes):
        try:
            return torch.stack([b.detach().cpu().reshape(-1) for b in boxes])
        except RuntimeError:
            return boxes
    return boxes


def split_per_image(boxes: Any, num_images: int, single: bool) -> list[Any]:
    """The caller's boxes as one ``(M_i, 4)`` entry per image (values untouched, not yet validated).

    ``single``: the call was for one image (see the module docstring for the accepted nestings).
    """
    if single:
        boxes = stack_if_tensors(boxes)
        if isinstance(boxes, (list, tuple)) and len(boxes) == 1 and is_box_list(boxes[0]):
            return [stack_if_tensors(boxes[0])]  # transformers' nesting: [[box, box, ...]] for one image
        if isinstance(boxes, (torch.Tensor, np.ndarray)) and boxes.ndim == 3 and boxes.shape[0] == 1:
            return [boxes[0]]
        return [boxes]
    if isinstance(boxes, (torch.Tensor, np.ndarray)):
        if boxes.ndim != 3:
            raise ValueError(
                f"for {num_images} images, boxes must be a list with one (M_i, 4) entry per image or an array of "
                f"shape (num_images, M, 4), got shape {tuple(boxes.shape)}"
            )
        per_image = list(boxes)
    elif isinstance(boxes, (list, tuple)):
        per_image = [stack_if_tensors(b) for b in boxes]
    else:
        raise TypeError(
            f"boxes must be a list of per-image box lists, a tensor or an array, got {type(boxes).__name__}"
        )
    if len(per_image) != num_images:
        raise ValueError(f"got boxes for {len(per_image)} images but {num_images} images")
    return per_image


def boxes_per_image(boxes: Any, num_images: int, single: bool, box_format: str) -> list[torch.Tensor]:
    """Validated ``(M_i, 4)`` float boxes for each image (see :func:`split_per_image` and :func:`validate_boxes`)."""
    box_format = check_box_format(box_format)
    per_image = split_per_image(boxes, num_images, single)
    if single:
        return [validate_boxes(per_image[0], box_format, name="boxes")]
    return [validate_boxes(b, box_format, name=f"boxes[{i}]") for i, b in enumerate(per_image)]
