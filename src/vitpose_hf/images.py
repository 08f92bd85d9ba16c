"""Every image input of the package, turned into RGB in one place.

The processor, the pipeline, ``vitpose-hf predict`` / ``eval``, drawing, detection and the training transform all
read images through this module, with one rule:

- PIL images: ``RGB`` as is; 16-bit (``I;16*``) and 32-bit integer (``I``) greyscale are scaled by 255 / 65535;
  ``F`` is taken on the 0..255 scale; every other mode goes through ``PIL.Image.convert("RGB")`` (greyscale is
  replicated, palettes are expanded, alpha is dropped, not composited, as OpenCV's ``imread`` does in the
  official pipeline; CMYK / YCbCr / LAB / HSV are converted).
- numpy arrays are ``(H, W)``, ``(H, W, C)`` or a batch ``(N, H, W, C)``; torch tensors are ``(H, W)``,
  ``(C, H, W)`` or a batch ``(N, C, H, W)``, on any device. Channels: 1 = grey (replicated), 2 = grey + alpha,
  3 = RGB (not BGR), 4 = RGBA (alpha dropped). uint8 is used as is, uint16 is scaled by 255 / 65535, bool is
  0 / 255, and floating point is taken on the 0..255 scale, as transformers does (for images already in 0..1
  pass ``do_rescale=False`` to the processor). NaN or infinite values are an error.
- a ``str`` / ``os.PathLike`` is opened with PIL, its EXIF orientation applied (as ``cv2.imread`` does), and then
  follows the PIL rule; an ``http(s)://`` URL is fetched with ``transformers.image_utils.load_image``.

This file travels with checkpoints for ``trust_remote_code`` (the image processor imports it): it imports nothing
from the package.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

__all__ = [
    "image_size",
    "is_batch",
    "load_image",
    "read_image_size",
    "to_pil",
    "to_rgb_array",
    "to_rgb_tensors",
    "warn_if_unit_range",
]

_16BIT_TO_8BIT = 255.0 / 65535.0
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


# ----------------------------------------------------------------------------------------------------------------
# Files and URLs
# ----------------------------------------------------------------------------------------------------------------
def _prefix(where: str | None) -> str:
    return f"{where}: " if where else ""


def load_image(source: str | os.PathLike, where: str | None = None, timeout: float | None = None) -> PIL.Image.Image:
    """Open an image file (EXIF orientation applied, pixels read, file closed) or fetch an ``http(s)://`` URL.

    The image keeps its PIL mode (16-bit, CMYK, ...); :func:`to_rgb_tensors` and the others apply the RGB rule.
    Raises ValueError for a missing or unreadable file (prefixed with ``where`` when given).
    """
    text = os.fspath(source)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text.startswith(("http://", "https://")):
        from transformers import image_utils  # looked up at call time, so that it can be patched in tests

        try:
            return image_utils.load_image(text, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - requests / httpx connection errors, HTTP errors, bad data
            raise ValueError(f"{_prefix(where)}cannot fetch the image URL {text!r}: {exc}") from None
    if not os.path.isfile(text):
        raise ValueError(f"{_prefix(where)}no image file at {text!r}")
    try:
        with PIL.Image.open(text) as opened:
            image = PIL.ImageOps.exif_transpose(opened)
            if image is opened:  # no transpose: detach the pixels from the file before it closes
                image = opened.copy()
            image.load()
    except (OSError, SyntaxError, ValueError) as exc:  # SyntaxError: PIL's error for some broken files
        raise ValueError(f"{_prefix(where)}cannot read the image {text!r}: {exc}") from None
    return image


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` of an image file from its header, after EXIF orientation (as :func:`load_image`)."""
    text = os.fspath(path)
    try:
        with PIL.Image.open(text) as opened:
            width, height = opened.size
            orientation = opened.getexif().get(_EXIF_ORIENTATION)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"cannot read the image {text!r}: {exc}") from None
    return (width, height) if orientation in _TRANSPOSED_ORIENTATIONS else (height, width)


# ----------------------------------------------------------------------------------------------------------------
# Arrays and tensors
# ----------------------------------------------------------------------------------------------------------------
def _numpy_to_tensor(array: np.ndarray) -> torch.Tensor:
    if any(stride < 0 for stride in array.strides):  # e.g. bgr[..., ::-1]; torch cannot view those
        array = np.ascontiguousarray(array)
    # PIL hands out read-only buffers; the tensor is only read, so torch's warning does not apply.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def _pil_to_hwc(image: PIL.Image.Image, where: str) -> np.ndarray:
    try:
        return _pil_pixels(image, where)
    except OSError as exc:  # a lazily opened file whose pixels cannot be read (truncated, corrupt)
        name = getattr(image, "filename", None)
        source = f" (from {name!r})" if name else ""
        raise ValueError(f"{where}: cannot read the pixels of the PIL image{source}: {exc}") from None


def _pil_pixels(image: PIL.Image.Image, where: str) -> np.ndarray:
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image)
    if mode.startswith("I;16") or mode == "I":
        return np.asarray(image).astype(np.float32) * _16BIT_TO_8BIT
    if mode == "F":
        return np.asarray(image, dtype=np.float32)
    if mode == "La":  # premultiplied grey + alpha: PIL has no direct RGB conversion
        return np.asarray(image)[..., 0]
    try:
        return np.asarray(image.convert("RGB"))
    except ValueError as exc:
        raise ValueError(f"{where}: cannot convert PIL mode {mode!r} to RGB ({exc})") from None


def _channels_to_rgb(image: torch.Tensor, where: str) -> torch.Tensor:
    """``(C, H, W)`` with C in 1..4 -> ``(3, H, W)`` view (grey replicated, alpha dropped)."""
    c = image.shape[0]
    if c == 3:
        return image
    if c == 4:
        return image[:3]
    if c in (1, 2):
        return image[:1].expand(3, -1, -1)
    raise ValueError(f"{where}: expected 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA) channels, got {c}")


def _convert_dtype(image: torch.Tensor, where: str) -> torch.Tensor:
    if image.is_floating_point() and not bool(torch.isfinite(image).all()):
        # checked here, once per image, so that the model's forward never reads values back from the device
        raise ValueError(f"{where}: the image contains NaN or infinite values")
    if image.dtype == torch.uint8 or image.dtype == torch.float32:
        return image
    if image.dtype == torch.bool:
        return image.to(torch.uint8) * 255
    if image.is_floating_point():
        return image.float()
    if image.dtype == torch.uint16:
        return image.to(torch.float32) * _16BIT_TO_8BIT
    raise TypeError(f"{where}: unsupported image dtype {image.dtype}; use uint8, uint16, bool or floating point")


def _array_images(array: np.ndarray, where: str) -> list[torch.Tensor]:
    kind, size = array.dtype.kind, array.dtype.itemsize
    if kind == "u" and size == 2:
        array = array.astype(np.float32) * _16BIT_TO_8BIT
    elif kind == "f" and array.dtype != np.float32:  # float16 / float64 / non-native byte order
        array = array.astype(np.float32)
    elif not (kind == "b" or kind == "f" or (kind == "u" and size == 1)):
        raise TypeError(f"{where}: unsupported image dtype {array.dtype}; use uint8, uint16, bool or floating point")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim == 3 and array.shape[-1] > 4 and array.shape[0] <= 4:
        raise ValueError(
            f"{where}: numpy images are (H, W, C) but got shape {array.shape}, which looks like (C, H, W); "
            "pass array.transpose(1, 2, 0)"
        )
    if array.ndim not in (3, 4):
        raise ValueError(f"{where}: a numpy image is (H, W), (H, W, C) or (N, H, W, C), got shape {array.shape}")
    tensor = _numpy_to_tensor(array)
    tensor = tensor.permute(2, 0, 1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)
    return _tensor_images(tensor, where)


def _tensor_images(tensor: torch.Tensor, where: str) -> list[torch.Tensor]:
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim == 3:
        batch = [tensor]
    elif tensor.ndim == 4:
        batch = list(tensor.unbind(0))
    else:
        raise ValueError(
            f"{where}: a torch image is (H, W), (C, H, W) or (N, C, H, W), got shape {tuple(tensor.shape)}"
        )
    out = []
    for i, image in enumerate(batch):
        name = where if len(batch) == 1 and tensor.ndim == 3 else f"{where}[{i}]"
        if image.shape[0] > 4 and image.shape[-1] <= 4:
            raise ValueError(
                f"{name}: torch images are (C, H, W) but got shape {tuple(image.shape)}, which looks like "
                "(H, W, C); pass image.permute(2, 0, 1)"
            )
        if image.shape[-1] == 0 or image.shape[-2] == 0:
            raise ValueError(f"{name}: empty image of shape {tuple(image.shape)}")
        out.append(_channels_to_rgb(_convert_dtype(image, name), name))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Public conversions
# ----------------------------------------------------------------------------------------------------------------
def is_batch(images: Any) -> bool:
    """True for a list / tuple of images and for 4-D arrays / tensors (a batch); False for one image."""
    return isinstance(images, (list, tuple)) or (isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4)


def to_rgb_tensors(images: Any, where: str = "images") -> list[torch.Tensor]:
    """One input (PIL, numpy, torch, path, URL; a 4-D array / tensor is a batch) -> ``(3, H, W)`` tensors.

    The tensors are uint8 (uint8 and bool inputs, 8-bit PIL modes) or float32 on the 0..255 scale, on the input's
    device, and may be views of the input (grey is an expanded view): do not write into them.
    """
    if isinstance(images, (str, os.PathLike)):
        images = load_image(images, where)
    if isinstance(images, PIL.Image.Image):
        return _array_images(_pil_to_hwc(images, where), where)
    if isinstance(images, np.ndarray):
        return _array_images(images, where)
    if isinstance(images, torch.Tensor):
        return _tensor_images(images.detach(), where)
    raise TypeError(
        f"{where}: unsupported image type {type(images).__name__}; pass a PIL image, a numpy array, a torch "
        "tensor, a path, or a list of those"
    )


def _one_rgb_tensor(image: Any, where: str) -> torch.Tensor:
    if is_batch(image):
        raise ValueError(f"{where}: expected one image, got a batch ({type(image).__name__})")
    return to_rgb_tensors(image, where)[0]


def to_rgb_array(image: Any, where: str = "image") -> np.ndarray:
    """One image -> ``(H, W, 3)`` numpy RGB, uint8 or float32 on the 0..255 scale (a read-only view when possible)."""
    if isinstance(image, PIL.Image.Image) and image.mode == "RGB":
        return np.asarray(image)
    array = _one_rgb_tensor(image, where).permute(1, 2, 0).cpu().numpy()
    array.flags.writeable = False  # may share memory with the input (or a read-only PIL buffer)
    return array


def warn_if_unit_range(images: list[torch.Tensor], where: str = "images") -> None:
    """Warn (a UserWarning, shown once per call site) when a float image holds values in 0..1 only, where the
    0..255 scale is expected: almost surely an image already divided by 255 (it would come out nearly black)."""
    for i, image in enumerate(images):
        if image.is_floating_point() and image.numel() and 0 < float(image.amax()) <= 1.0:
            name = where if len(images) == 1 else f"{where}[{i}]"
            warnings.warn(
                f"{name}: a float image with values in 0..1 only, where 0..255 is expected; multiply it by 255 "
                "(or, for the image processor, pass do_rescale=False)",
                UserWarning,
                stacklevel=3,
            )
            return


def to_pil(image: Any, where: str = "image") -> PIL.Image.Image:
    """One image -> an 8-bit RGB PIL image (float values rounded and clipped to 0..255). RGB PIL images are returned
    as they are, not copied. A float image in 0..1 only is converted as 0..255 too, with a warning."""
    if isinstance(image, PIL.Image.Image) and image.mode == "RGB":
        return image
    rgb = _one_rgb_tensor(image, where)
    warn_if_unit_range([rgb], where)
    if rgb.dtype != torch.uint8:
        rgb = rgb.clamp(0, 255).round().to(torch.uint8)
    return PIL.Image.fromarray(np.ascontiguousarray(rgb.permute(1, 2, 0).cpu().numpy()))


def image_size(image: Any) -> tuple[int, int]:
    """``(height, width)`` of a PIL image, an ``(H, W[, C])`` numpy array or a ``(C, H, W)`` / ``(H, W)`` tensor."""
    if isinstance(image, PIL.Image.Image):
        return image.height, image.width
    if isinstance(image, np.ndarray) and image.ndim in (2, 3):
        return int(image.shape[0]), int(image.shape[1])
    if isinstance(image, torch.Tensor) and image.ndim in (2, 3):
        return int(image.shape[-2]), int(image.shape[-1])
    shape = tuple(getattr(image, "shape", ()))
    raise TypeError(
        f"one image is a PIL image, an (H, W[, C]) numpy array or a (C, H, W) tensor, got {type(image).__name__}"
        + (f" of shape {shape}" if shape else "")
    )
