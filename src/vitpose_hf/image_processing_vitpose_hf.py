"""Top-down image processor for ViTPose / ViTPose++: boxes in, crops out; heatmaps in, keypoints out.

``preprocess`` cuts one crop per person box with the official (UDP) affine warp, batched in torch on the
images' device, and normalises it. ``post_process_pose_estimation`` decodes heatmaps (UDP + DARK, or the classic
quarter-pixel decoder), optionally averages a flip test, and maps keypoints back to image pixels. Encoding and
decoding live in :mod:`.codecs`, geometry in :mod:`.geometry`: training and inference use the same code.

Images (PIL, numpy, torch, paths, URLs; any mode or dtype) are turned into RGB by :mod:`.images`, which documents
the rule; boxes follow the formats and nesting rules of :mod:`.boxes`.
"""

from __future__ import annotations

import copy
import functools
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.processing_utils import ImagesKwargs

from .boxes import boxes_per_image as _boxes_per_image
from .boxes import check_box_format, to_xywh, validate_boxes
from .boxes import is_box_list as _is_box_list
from .boxes import stack_if_tensors as _stack_if_tensors
from .codecs import MSRAHeatmap, UDPHeatmap, _check_kernel_size, flip_back
from .geometry import BOX_PADDING, _center_scale, crop_to_image, image_to_crop, inverse_warp_matrix
from .images import is_batch as _is_batch
from .images import to_rgb_tensors as _to_rgb_tensors
from .keypoint_metadata import flip_indices as dataset_flip_indices
from .keypoint_metadata import get_dataset_info

__all__ = ["ViTPoseImageProcessor", "flip_pixel_values"]

DECODERS = ("udp_dark", "msra")
_LOW_PRECISION = (torch.float16, torch.bfloat16)
# Work buffers of the CPU warp are kept per thread: faulting in fresh multi-MB buffers on every call costs as
# much as the warp itself on some systems (glibc hands large blocks back to the OS after each use).
_SCRATCH = threading.local()
_SCRATCH_LIMIT = 64 * 2**20  # bytes; larger buffers are allocated per call


def _work_buffer(name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """An uninitialised float32 tensor of ``shape``, reused across calls on CPU (never returned to the user)."""
    numel = math.prod(shape)
    if device.type != "cpu" or numel * 4 > _SCRATCH_LIMIT:
        return torch.empty(shape, dtype=torch.float32, device=device)
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    buffer = buffers.get(name)
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[name] = torch.empty(numel, dtype=torch.float32)
    return buffer[:numel].view(shape)


class ViTPoseImageProcessorKwargs(ImagesKwargs, total=False):
    """Config fields of :class:`ViTPoseImageProcessor` beyond transformers' standard image kwargs."""

    padding_factor: float
    use_udp: bool | None
    decoder: str | None
    blur_kernel_size: int
    sigma: float
    dataset: str | dict | list | None


def flip_pixel_values(pixel_values: torch.Tensor) -> torch.Tensor:
    """Mirror ``(N, 3, H, W)`` crops horizontally (the flip test input; the official ``img.flip(3)``)."""
    return pixel_values.flip(-1)


@dataclass(frozen=True)
class _Dataset:
    name: str
    keypoint_names: tuple[str, ...]
    flip_indices: tuple[int, ...]
    use_udp: bool

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)


@dataclass
class _Crops:
    """What post-processing needs about the crops: geometry, input boxes and the image of each crop."""

    center: torch.Tensor  # (N, 2)
    scale: torch.Tensor  # (N, 2), 200-px units
    rotation: torch.Tensor | None  # (N,) degrees
    use_udp: bool
    boxes: torch.Tensor  # (N, 4), the input boxes
    image_index: torch.Tensor  # (N,)
    num_images: int


def _dataset_from_info(info: dict) -> _Dataset:
    names, flips = tuple(info["keypoint_names"]), tuple(dataset_flip_indices(info))
    return _Dataset(info["name"], names, flips, bool(info["use_udp"]))


@functools.lru_cache(maxsize=64)
def _dataset_by_name(name: str) -> _Dataset:
    return _dataset_from_info(get_dataset_info(name))


def _resolve_dataset(dataset: str | dict) -> _Dataset:
    if isinstance(dataset, str):
        return _dataset_by_name(dataset)
    if isinstance(dataset, dict):
        return _dataset_from_info(get_dataset_info(dataset))
    raise TypeError(f"a dataset is a name or an info dict, got {type(dataset).__name__}")


def _check_size_dict(size: Any, name: str) -> dict[str, int]:
    if isinstance(size, (tuple, list)) and len(size) == 2:
        size = {"height": size[0], "width": size[1]}
    if (
        not isinstance(size, dict)
        or set(size) != {"height", "width"}
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in size.values())
    ):
        raise ValueError(f"{name} must be {{'height': int, 'width': int}} with positive sizes, got {size!r}")
    return {"height": int(size["height"]), "width": int(size["width"])}


def _check_triplet(values: Any, name: str) -> list[float]:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 1:
        array = np.repeat(array, 3)
    if array.size != 3 or not np.isfinite(array).all():
        raise ValueError(f"{name} must be 3 finite numbers (R, G, B), got {values!r}")
    return [float(v) for v in array]


# ----------------------------------------------------------------------------------------------------------------
# The processor
# ----------------------------------------------------------------------------------------------------------------
class ViTPoseImageProcessor(BaseImageProcessor):
    r"""Top-down ViTPose image processor (saved as ``preprocessor_config.json``).

    Args:
        size: ``{"height": 256, "width": 192}``, the model input (crop) size.
        image_mean, image_std: normalisation per RGB channel (ImageNet by default), on the 0..1 scale.
        do_rescale, rescale_factor: multiply pixel values by ``rescale_factor`` (1/255) before normalising.
        do_normalize: subtract ``image_mean`` and divide by ``image_std``.
        padding_factor: box enlargement before cropping (1.25, as the official code).
        use_udp: the unbiased (UDP) warp and back-transform (True, as the official COCO / MPII configs). ``None``
            takes the official setting of the dataset (``use_udp`` of its keypoint metadata).
        decoder: ``"udp_dark"`` (arg-max + DARK, the official UDP test setting) or ``"msra"`` (arg-max +
            quarter-pixel shift, the official non-UDP setting). ``None`` picks ``"udp_dark"`` when UDP is used
            and ``"msra"`` otherwise.
        blur_kernel_size: kernel of the DARK blur (11; OpenCV's rule gives sigma 2.0).
        sigma: Gaussian sigma of training targets (2.0), used by :meth:`get_codec`.
        dataset: keypoint dataset of the heatmaps: a name (``"coco"``), an info dict, or a list of them, one per
            head of a multi-dataset (ViTPose++) model, indexed by ``outputs.dataset_index``.
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = ViTPoseImageProcessorKwargs
    _CONFIG_KEYS = (
        "size",
        "image_mean",
        "image_std",
        "do_rescale",
        "rescale_factor",
        "do_normalize",
        "padding_factor",
        "use_udp",
        "decoder",
        "blur_kernel_size",
        "sigma",
        "dataset",
    )

    def __init__(
        self,
        size: dict[str, int] | None = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        padding_factor: float = BOX_PADDING,
        use_udp: bool | None = True,
        decoder: str | None = None,
        blur_kernel_size: int = 11,
        sigma: float = 2.0,
        dataset: str | dict | list | None = "coco",
        **kwargs: Any,
    ) -> None:
        kwargs.pop("image_processor_type", None)
        super().__init__(**kwargs)
        self.size = _check_size_dict(size if size is not None else {"height": 256, "width": 192}, "size")
        self.image_mean = _check_triplet(IMAGENET_DEFAULT_MEAN if image_mean is None else image_mean, "image_mean")
        self.image_std = _check_triplet(IMAGENET_DEFAULT_STD if image_std is None else image_std, "image_std")
        if any(s == 0 for s in self.image_std):
            raise ValueError(f"image_std must not contain 0, got {self.image_std}")
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = bool(do_normalize)
        if isinstance(padding_factor, bool) or not isinstance(padding_factor, (int, float)) or not padding_factor > 0:
            raise ValueError(f"padding_factor must be a positive number, got {padding_factor!r}")
        self.padding_factor = float(padding_factor)
        if use_udp is not None and not isinstance(use_udp, bool):
            raise ValueError(f"use_udp must be True, False or None, got {use_udp!r}")
        self.use_udp = use_udp
        if decoder is not None and decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS} or None, got {decoder!r}")
        self.decoder = decoder
        self.blur_kernel_size = _check_kernel_size(blur_kernel_size, "blur_kernel_size")
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
            raise ValueError(f"sigma must be a positive number, got {sigma!r}")
        self.sigma = float(sigma)
        if dataset is None:
            dataset = "coco"
        for entry in dataset if isinstance(dataset, (list, tuple)) else [dataset]:
            _resolve_dataset(entry)  # fail early on an unknown name or a bad dict
        self.dataset = list(dataset) if isinstance(dataset, tuple) else dataset

    # ------------------------------------------------------------------------------------------------------------
    # Serialisation
    # ------------------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The config fields (what ``preprocessor_config.json`` holds)."""
        output = {key: copy.deepcopy(getattr(self, key)) for key in self._CONFIG_KEYS}
        if getattr(self, "auto_map", None):
            output["auto_map"] = copy.deepcopy(self.auto_map)
        output["image_processor_type"] = type(self).__name__
        return output

    # ------------------------------------------------------------------------------------------------------------
    # Helpers
    # ------------------------------------------------------------------------------------------------------------
    @property
    def input_size(self) -> tuple[int, int]:
        """``(H, W)`` of the crops."""
        return self.size["height"], self.size["width"]

    def _use_udp(self, use_udp: bool | None, dataset: Any) -> bool:
        if use_udp is None:
            use_udp = self.use_udp
        if use_udp is None:
            entries = dataset if isinstance(dataset, (list, tuple)) else [dataset]
            flags = {_resolve_dataset(d).use_udp for d in entries}
            if len(flags) != 1:
                raise ValueError("use_udp=None but the datasets disagree on UDP; set use_udp explicitly")
            use_udp = flags.pop()
        return use_udp

    def _decoder(self, use_udp: bool) -> str:
        return self.decoder if self.decoder is not None else ("udp_dark" if use_udp else "msra")

    def get_codec(
        self, heatmap_size: tuple[int, int] | None = None, decoder: str | None = None
    ) -> UDPHeatmap | MSRAHeatmap:
        """The heatmap codec of this config (for training targets and decoding).

        Args:
            heatmap_size: ``(h, w)``; a quarter of the input size by default (64 x 48 for 256 x 192).
            decoder: ``"udp_dark"`` or ``"msra"``; by default the config's choice.
        """
        decoder = decoder or self._decoder(self._use_udp(None, self.dataset))
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        h, w = self.input_size
        heatmap_size = tuple(heatmap_size) if heatmap_size is not None else (h // 4, w // 4)
        return self._codec(decoder, heatmap_size)

    def _codec(self, decoder: str, heatmap_size: tuple[int, int]) -> UDPHeatmap | MSRAHeatmap:
        key = (decoder, tuple(heatmap_size), self.input_size, self.sigma, self.blur_kernel_size)
        cache = self.__dict__.setdefault("_codecs", {})  # not serialised: to_dict lists the config keys
        if key not in cache:
            codec_class = UDPHeatmap if decoder == "udp_dark" else MSRAHeatmap
            cache[key] = codec_class(self.input_size, tuple(heatmap_size), self.sigma, self.blur_kernel_size)
        return cache[key]

    @staticmethod
    def flip_pixel_values(pixel_values: torch.Tensor) -> torch.Tensor:
        """Mirror ``(N, 3, H, W)`` crops horizontally for the flip test."""
        return flip_pixel_values(pixel_values)

    # ------------------------------------------------------------------------------------------------------------
    # Preprocessing
    # ------------------------------------------------------------------------------------------------------------
    def __call__(self, images: Any, boxes: Any = None, **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, boxes, **kwargs)

    def preprocess(
        self,
        images: Any,
        boxes: Any = None,
        box_format: str = "xywh",
        return_tensors: str | None = "pt",
        rotation: float | Sequence[float] | torch.Tensor | None = None,
        scale_factor: float | Sequence[float] | torch.Tensor | None = None,
        device: torch.device | str | None = None,
        dataset: str | dict | list | None = None,
        use_udp: bool | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Cut and normalise one crop per box.

        Args:
            images: one image, or a list / batch of images (see the module docstring for types and modes).
            boxes: for one image, ``(M, 4)`` boxes (a list, array or tensor); for several images, a list with one
                ``(M_i, 4)`` entry per image (or an array ``(num_images, M, 4)``). An empty entry gives no crop.
                ``None`` uses the whole image as one box.
            box_format: ``"xywh"`` (COCO) or ``"xyxy"``.
            return_tensors: ``"pt"`` (default) or ``"np"``.
            rotation: degrees per crop (a number or ``(N_crops,)``), for training augmentation.
            scale_factor: multiplies each crop's scale (a number or ``(N_crops,)``), for training augmentation.
            device: where to warp; by default the device of torch inputs, else the CPU.
            dataset: only used when ``use_udp`` resolves to None (the dataset's official setting).
            use_udp: override of the config's ``use_udp`` for this call.
            kwargs: per-call overrides of ``do_rescale``, ``rescale_factor``, ``do_normalize``, ``image_mean``,
                ``image_std`` and ``padding_factor``.

        Returns:
            ``BatchFeature`` with ``pixel_values`` ``(N_crops, 3, H, W)`` float32 and the crop metadata that
            :meth:`post_process_pose_estimation` accepts as ``crop_metadata``: ``image_index`` ``(N_crops,)``,
            ``center`` ``(N_crops, 2)``, ``scale`` ``(N_crops, 2)`` (200-px units, padded, after
            ``scale_factor``), ``boxes`` ``(N_crops, 4)`` (the input boxes, in ``box_format``),
            ``crops_per_image`` ``(num_images,)``, ``box_format``, ``use_udp`` and, when given, ``rotation``.
        """
        options = self._call_options(kwargs)
        box_format = check_box_format(box_format)
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None (= 'pt'), got {return_tensors!r}")
        use_udp = self._use_udp(use_udp, dataset if dataset is not None else self.dataset)
        out_h, out_w = self.input_size

        single = not _is_batch(images)
        if single:
            rgb = _to_rgb_tensors(images)
        else:
            if isinstance(images, (list, tuple)):
                rgb = []
                for i, image in enumerate(images):
                    if _is_batch(image):
                        raise ValueError(f"images[{i}] is a batch; pass a flat list of images")
                    rgb.extend(_to_rgb_tensors(image, f"images[{i}]"))
            else:
                rgb = _to_rgb_tensors(images)
        if device is None:
            device = next((im.device for im in rgb), torch.device("cpu"))
        device = torch.device(device)
        rgb = [im.to(device) for im in rgb]

        if boxes is None:
            per_image = [
                torch.tensor([[0.0, 0.0, im.shape[2], im.shape[1]]], dtype=torch.float32) for im in rgb
            ]
        else:
            per_image = _boxes_per_image(boxes, len(rgb), single, box_format)
        counts = torch.tensor([len(b) for b in per_image], dtype=torch.long)
        all_boxes = torch.cat(per_image).to(device=device, dtype=torch.float32) if per_image else torch.zeros(0, 4)
        all_boxes = all_boxes.to(device)
        n = all_boxes.shape[0]
        image_index = torch.repeat_interleave(torch.arange(len(per_image)), counts).to(device)

        center, scale = self._center_scale(all_boxes, box_format, (out_h, out_w), options["padding_factor"])
        if scale_factor is not None:
            factor = torch.as_tensor(scale_factor, dtype=torch.float32, device=device).reshape(-1)
            if factor.numel() not in (1, n) or not bool(torch.isfinite(factor).all()) or bool((factor <= 0).any()):
                raise ValueError(f"scale_factor must be a positive number or {n} positive numbers, got {scale_factor!r}")
            scale = scale * factor.unsqueeze(-1)
        angles = None
        if rotation is not None:
            angles = torch.as_tensor(rotation, dtype=torch.float32, device=device).reshape(-1)
            if angles.numel() not in (1, n) or not bool(torch.isfinite(angles).all()):
                raise ValueError(f"rotation must be a number or {n} finite numbers (degrees), got {rotation!r}")
            angles = angles.expand(n).clone()

        raw = self._warp(rgb, image_index, counts, center, scale, angles, use_udp, (out_h, out_w))
        pixel_values = self._normalize(raw, options)

        data: dict[str, Any] = {
            "pixel_values": pixel_values,
            "image_index": image_index,
            "center": center,
            "scale": scale,
            "boxes": all_boxes,
            "crops_per_image": counts.to(device),
        }
        if angles is not None:
            data["rotation"] = angles
        if return_tensors == "np":
            data = {key: value.cpu().numpy() for key, value in data.items()}
        data["box_format"] = box_format
        data["use_udp"] = use_udp
        return BatchFeature(data=data, tensor_type=None)

    def _call_options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        # No per-call `size`: post-processing maps back with the processor's size.
        allowed = ("do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std", "padding_factor")
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise TypeError(f"unexpected keyword arguments {unknown}; per-call options are {list(allowed)}")
        options = {key: kwargs.get(key) if kwargs.get(key) is not None else getattr(self, key) for key in allowed}
        options["image_mean"] = _check_triplet(options["image_mean"], "image_mean")
        options["image_std"] = _check_triplet(options["image_std"], "image_std")
        return options

    @staticmethod
    def _center_scale(
        boxes: torch.Tensor, box_format: str, input_size: tuple[int, int], padding: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Centre / scale of boxes already checked by ``validate_boxes``."""
        return _center_scale(to_xywh(boxes, box_format), input_size, padding)

    @staticmethod
    def _sample_points(matrix: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """``(N, h, w, 2)`` points ``matrix @ (u, v, 1)`` for every crop pixel ``(u, v)`` (a work buffer).

        An affine map is a sum of a column term and a row term; adding the two broadcasts is ~30x faster on a
        CPU than a matmul with an inner dimension of 3.
        """
        u = torch.arange(w, dtype=matrix.dtype, device=matrix.device)
        v = torch.arange(h, dtype=matrix.dtype, device=matrix.device)
        columns = (matrix[:, :, 0, None] * u).transpose(1, 2).unsqueeze(1)  # (N, 1, w, 2)
        rows = (matrix[:, :, 1, None] * v + matrix[:, :, 2, None]).transpose(1, 2).unsqueeze(2)  # (N, h, 1, 2)
        return torch.add(columns, rows, out=_work_buffer("grid", (matrix.shape[0], h, w, 2), matrix.device))

    @staticmethod
    def _float_source(image: torch.Tensor) -> torch.Tensor:
        """``(1, 3, H, W)`` float32 view of a ``(3, H, W)`` image, converted into a channels-last work buffer."""
        if image.dtype == torch.float32:
            return image.unsqueeze(0)
        _, h, w = image.shape
        buffer = _work_buffer("source", (h, w, 3), image.device)
        buffer.copy_(image.permute(1, 2, 0))
        return buffer.permute(2, 0, 1).unsqueeze(0)

    def _warp(
        self,
        images: list[torch.Tensor],
        image_index: torch.Tensor,
        counts: torch.Tensor,
        center: torch.Tensor,
        scale: torch.Tensor,
        rotation: torch.Tensor | None,
        use_udp: bool,
        out_size: tuple[int, int],
    ) -> torch.Tensor:
        """All crops in one ``grid_sample``: ``(N, 3, H, W)`` float32 on the 0..255 scale, zero outside images.

        ``cv2.warpAffine`` (INTER_LINEAR, BORDER_CONSTANT 0) samples pixel ``q`` of the crop at ``M^-1 q`` in
        the image, pixel centres on integers, and a neighbour outside the image counts as 0: that is
        ``grid_sample(bilinear, zeros, align_corners=False)`` once pixel coordinates are mapped to [-1, 1].
        """
        out_h, out_w = out_size
        n = center.shape[0]
        device = center.device
        if n == 0:
            return torch.zeros(0, 3, out_h, out_w, device=device)
        inverse = inverse_warp_matrix(center, scale, out_size, rotation, use_udp)  # crop -> image pixels
        used = [i for i, c in enumerate(counts.tolist()) if c > 0]
        if len(used) == 1:
            source = self._float_source(images[used[0]])
            img_h, img_w = source.shape[-2:]
            # pixel -> grid coordinate: g = (2 p + 1) / size - 1, folded into the matrix.
            to_grid = torch.tensor([2.0 / img_w, 2.0 / img_h], device=device)
            matrix = inverse * to_grid[:, None]
            matrix[:, :, 2] += to_grid / 2 - 1.0
            grid = self._sample_points(matrix, out_h, out_w)
            return F.grid_sample(source.expand(n, -1, -1, -1), grid, "bilinear", "zeros", align_corners=False)
        # Several images: stack them on one zero canvas, each with a zero row above and below and a zero
        # column to its right, and clamp sample points to [-1, size] so no crop can read another image.
        heights = [im.shape[1] for im in images]
        widths = [im.shape[2] for im in images]
        offsets = [0] * len(images)
        top = 1
        for i in used:
            offsets[i], top = top, top + heights[i] + 1
        canvas_w = max(widths[i] for i in used) + 1
        dtype = torch.float32 if any(images[i].is_floating_point() for i in used) else torch.uint8
        canvas = torch.zeros(top, canvas_w, 3, dtype=dtype, device=device)
        for i in used:  # copies whole images, not per-box pixel work
            canvas[offsets[i] : offsets[i] + heights[i], : widths[i]] = images[i].permute(1, 2, 0)
        source = self._float_source(canvas.permute(2, 0, 1))
        points = self._sample_points(inverse, out_h, out_w)  # (N, h, w, 2) image pixels
        sizes = torch.tensor(list(zip(widths, heights)), dtype=torch.float32, device=device)[image_index]
        torch.minimum(points, sizes[:, None, None], out=points).clamp_(min=-1.0)
        shift = torch.zeros(n, 2, device=device)
        shift[:, 1] = torch.as_tensor(offsets, dtype=torch.float32, device=device)[image_index]
        to_grid = torch.tensor([2.0 / canvas_w, 2.0 / top], device=device)
        grid = points.mul_(to_grid).add_((shift * to_grid + to_grid / 2 - 1.0)[:, None, None])
        return F.grid_sample(source.expand(n, -1, -1, -1), grid, "bilinear", "zeros", align_corners=False)

    @staticmethod
    def _normalize(raw: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
        """``raw * rescale / std - mean / std`` per channel, in place on the (contiguous) warp output."""
        factor = options["rescale_factor"] if options["do_rescale"] else 1.0
        mean = torch.tensor(options["image_mean"], dtype=torch.float32, device=raw.device)
        std = torch.tensor(options["image_std"], dtype=torch.float32, device=raw.device)
        if not options["do_normalize"]:
            mean, std = torch.zeros_like(mean), torch.ones_like(std)
        return raw.mul_((factor / std).view(1, 3, 1, 1)).add_((-mean / std).view(1, 3, 1, 1)).contiguous()

    def keypoints_to_crop(self, keypoints: torch.Tensor, crop_metadata: dict[str, Any]) -> torch.Tensor:
        """Map ``(N_crops, K, 2)`` image keypoints into crop pixels with the warp of each crop (for targets)."""
        center, scale, rotation, use_udp = self._crop_geometry(crop_metadata)
        keypoints = torch.as_tensor(keypoints, device=center.device)
        return image_to_crop(keypoints, center, scale, self.input_size, rotation, use_udp)

    # ------------------------------------------------------------------------------------------------------------
    # Post-processing
    # ------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _heatmaps_of(outputs: Any, name: str) -> torch.Tensor:
        heatmaps = outputs.get("heatmaps") if isinstance(outputs, dict) else getattr(outputs, "heatmaps", outputs)
        if not isinstance(heatmaps, torch.Tensor):
            raise TypeError(f"{name} must be a model output with .heatmaps or a tensor, got {type(outputs).__name__}")
        if heatmaps.ndim != 4 or not heatmaps.is_floating_point():
            raise ValueError(f"{name} heatmaps must be a float tensor (N, K, h, w), got {heatmaps.dtype} {tuple(heatmaps.shape)}")
        return heatmaps

    @staticmethod
    def _field(source: Any, key: str) -> Any:
        if source is None:
            return None
        return source.get(key) if isinstance(source, dict) or hasattr(source, "keys") else getattr(source, key, None)

    def _crop_geometry(self, meta: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
        values = []
        for key in ("center", "scale"):
            value = self._field(meta, key)
            if value is None:
                raise ValueError(f"crop_metadata has no {key!r}; pass the BatchFeature returned by preprocess")
            value = torch.as_tensor(value)
            if value.dtype in _LOW_PRECISION:
                raise ValueError(
                    f"crop_metadata[{key!r}] is {value.dtype}: too coarse for image coordinates (BatchFeature.to(dtype) "
                    "casts every float tensor). Cast only the pixels: inputs['pixel_values'] = "
                    "inputs['pixel_values'].to(dtype)"
                )
            values.append(value.float())
        rotation = self._field(meta, "rotation")
        use_udp = self._field(meta, "use_udp")
        use_udp = self._use_udp(None, self.dataset) if use_udp is None else bool(use_udp)
        return values[0], values[1], None if rotation is None else torch.as_tensor(rotation).float(), use_udp

    def _datasets_per_crop(
        self, dataset: Any, dataset_index: Any, n: int
    ) -> tuple[list[_Dataset], list[int] | None]:
        """Distinct datasets and, for more than one, the dataset slot of each crop."""
        if dataset is not None:
            if isinstance(dataset, (list, tuple)):
                if len(dataset) != n:
                    raise ValueError(f"dataset is a list of {len(dataset)} entries but there are {n} crops")
                entries = [_resolve_dataset(d) for d in dataset]
                return entries, list(range(n))
            return [_resolve_dataset(dataset)], None
        if not isinstance(self.dataset, (list, tuple)):
            return [_resolve_dataset(self.dataset)], None
        heads = [_resolve_dataset(d) for d in self.dataset]
        if len(heads) == 1:
            return heads, None
        if dataset_index is None:
            raise ValueError(
                f"this processor lists {len(heads)} datasets {[h.name for h in heads]}: the outputs carry no "
                "dataset_index, so pass dataset_index=... or dataset=<name>"
            )
        index = torch.as_tensor(dataset_index).reshape(-1)
        index = index.expand(n) if index.numel() == 1 else index
        if index.numel() != n:
            raise ValueError(f"dataset_index has {index.numel()} entries for {n} crops")
        slots = index.tolist()
        bad = [i for i in slots if not 0 <= i < len(heads)]
        if bad:
            raise ValueError(f"dataset_index {bad[0]} is out of range for the {len(heads)} datasets of this processor")
        return heads, slots

    def post_process_pose_estimation(
        self,
        outputs: Any,
        boxes: Any = None,
        box_format: str | None = None,
        flip_outputs: Any = None,
        dataset: str | dict | Sequence[str | dict] | None = None,
        crop_metadata: Any = None,
        image_index: Sequence[int] | torch.Tensor | None = None,
        dataset_index: Sequence[int] | torch.Tensor | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Decode heatmaps into keypoints in image pixels, grouped per image.

        Args:
            outputs: the model output (``.heatmaps`` ``(N, K, h, w)``, any float dtype / device; optional
                ``.num_keypoints`` ``(N,)`` for a padded mixed-dataset batch and ``.dataset_index`` ``(N,)``), or
                the heatmaps tensor itself.
            boxes: the boxes given to :meth:`preprocess` (same nesting). Or pass ``crop_metadata`` instead.
            box_format: format of ``boxes`` (``"xywh"`` by default; taken from ``crop_metadata`` when given).
            flip_outputs: output (or heatmaps) of the model on the mirrored crops (:func:`flip_pixel_values`). They
                are flipped back with the dataset's flip pairs (plus the one-pixel shift when not UDP) and
                averaged with ``outputs`` before decoding, as the official flip test.
            dataset: one dataset (name or info dict) for all crops, or a list with one per crop. By default the
                processor's ``dataset`` (indexed by ``dataset_index`` when it lists several).
            crop_metadata: the ``BatchFeature`` (or dict) returned by :meth:`preprocess`.
            image_index: ``(N,)`` image of each crop when ``boxes`` is a flat ``(N, 4)`` list for several images.
            dataset_index: ``(N,)`` head of each crop; by default ``outputs.dataset_index``.

        Returns:
            One list per image, with one dict per box: ``keypoints`` ``(K, 2)`` float32 ``(x, y)`` image pixels,
            ``scores`` ``(K,)`` float32 (raw heatmap maxima; nothing is dropped, low ones included), ``labels``
            (keypoint names), ``bbox`` ``(4,)`` the input box in ``box_format``, ``dataset`` (name). Tensors stay
            on the device of the heatmaps.
        """
        heatmaps = self._heatmaps_of(outputs, "outputs")
        n, channels, hm_h, hm_w = heatmaps.shape
        device = heatmaps.device
        if crop_metadata is not None:
            if boxes is not None:
                raise ValueError("pass either boxes or crop_metadata, not both")
            crops = self._crops_from_metadata(crop_metadata, box_format)
        elif boxes is None:
            raise ValueError("post_process_pose_estimation needs the boxes (or crop_metadata from preprocess)")
        else:
            crops = self._crops_from_boxes(boxes, box_format or "xywh", image_index, dataset)
        if crops.center.shape[0] != n:
            raise ValueError(f"the heatmaps hold {n} crops but {crops.center.shape[0]} boxes were given")

        if dataset_index is None and not isinstance(outputs, torch.Tensor):
            dataset_index = self._field(outputs, "dataset_index")
        entries, slots = self._datasets_per_crop(dataset, dataset_index, n)
        num_keypoints = None if isinstance(outputs, torch.Tensor) else self._field(outputs, "num_keypoints")
        self._check_channels(entries, slots, channels, num_keypoints, n)

        # Flip test: flip the mirrored heatmaps back and average, in float32 (as the official code, in numpy).
        work = heatmaps.float() if heatmaps.dtype != torch.float64 else heatmaps
        if flip_outputs is not None:
            flipped = self._heatmaps_of(flip_outputs, "flip_outputs")
            if flipped.shape != heatmaps.shape:
                raise ValueError(f"flip_outputs heatmaps {tuple(flipped.shape)} differ from outputs {tuple(heatmaps.shape)}")
            padded = [list(e.flip_indices) + list(range(e.num_keypoints, channels)) for e in entries]
            perm = padded[0] if slots is None else torch.tensor([padded[s] for s in slots], dtype=torch.long)
            back = flip_back(flipped.to(device=device, dtype=work.dtype), perm, shift=not crops.use_udp)
            work = (work + back) * 0.5

        crop_points, scores = self._codec(self._decoder(crops.use_udp), (hm_h, hm_w)).decode(work)
        rotation = None if crops.rotation is None else crops.rotation.to(device)
        keypoints = crop_to_image(
            crop_points, crops.center.to(device), crops.scale.to(device), self.input_size, rotation, crops.use_udp
        ).float()
        return self._group_results(keypoints, scores.float(), crops, entries, slots)

    def _crops_from_metadata(self, meta: Any, box_format: str | None) -> _Crops:
        center, scale, rotation, use_udp = self._crop_geometry(meta)
        n = center.shape[0]
        meta_format = self._field(meta, "box_format")
        if box_format is not None and meta_format is not None and box_format != meta_format:
            raise ValueError(f"box_format={box_format!r} but crop_metadata holds {meta_format!r} boxes")
        boxes = self._field(meta, "boxes")
        index = self._field(meta, "image_index")
        index = torch.as_tensor(index).reshape(-1) if index is not None else torch.zeros(n, dtype=torch.long)
        counts = self._field(meta, "crops_per_image")
        num_images = len(counts) if counts is not None else (int(index.max()) + 1 if index.numel() else 0)
        return _Crops(
            center=center,
            scale=scale,
            rotation=rotation,
            use_udp=use_udp,
            boxes=torch.as_tensor(boxes) if boxes is not None else torch.full((n, 4), float("nan")),
            image_index=index,
            num_images=num_images,
        )

    def _crops_from_boxes(self, boxes: Any, box_format: str, image_index: Any, dataset: Any) -> _Crops:
        box_format = check_box_format(box_format)
        if image_index is not None:  # flat (N, 4) boxes with the image of each
            flat = validate_boxes(_stack_if_tensors(boxes), box_format, name="boxes")
            index = torch.as_tensor(image_index, dtype=torch.long).reshape(-1)
            if index.numel() != flat.shape[0]:
                raise ValueError(f"image_index has {index.numel()} entries for {flat.shape[0]} boxes")
            if index.numel() and int(index.min()) < 0:
                raise ValueError("image_index must be non-negative")
            num_images = int(index.max()) + 1 if index.numel() else 0
        else:  # the nesting of preprocess: one image's (M, 4) boxes, or one (M_i, 4) entry per image
            nested = isinstance(boxes, (list, tuple)) and len(boxes) > 0 and _is_box_list(boxes[0])
            nested = nested or (isinstance(boxes, (torch.Tensor, np.ndarray)) and boxes.ndim == 3)
            per_image = _boxes_per_image(boxes, len(boxes), single=not nested, box_format=box_format)
            flat = torch.cat(per_image)
            index = torch.repeat_interleave(torch.arange(len(per_image)), torch.tensor([len(b) for b in per_image]))
            num_images = len(per_image)
        center, scale = self._center_scale(flat, box_format, self.input_size, self.padding_factor)
        use_udp = self._use_udp(None, dataset if dataset is not None else self.dataset)
        return _Crops(center, scale, None, use_udp, flat, index, num_images)

    @staticmethod
    def _check_channels(
        entries: list[_Dataset], slots: list[int] | None, channels: int, num_keypoints: Any, n: int
    ) -> None:
        """The heatmap channels must fit the datasets; ``num_keypoints`` (padded batches) must match them."""
        expected = [entries[0].num_keypoints] * n if slots is None else [entries[s].num_keypoints for s in slots]
        if num_keypoints is None and slots is None and channels != entries[0].num_keypoints:
            raise ValueError(
                f"the heatmaps have {channels} channels but dataset {entries[0].name!r} has "
                f"{entries[0].num_keypoints} keypoints"
            )
        if expected and max(expected) > channels:
            raise ValueError(f"the heatmaps have {channels} channels but a crop's dataset has {max(expected)} keypoints")
        if num_keypoints is not None:
            real = torch.as_tensor(num_keypoints).reshape(-1).tolist()
            if real != expected:
                raise ValueError(
                    f"outputs.num_keypoints {real[:8]} does not match the keypoint counts of the crops' datasets "
                    f"{expected[:8]} (first 8 crops shown)"
                )

    @staticmethod
    def _group_results(
        keypoints: torch.Tensor,
        scores: torch.Tensor,
        crops: _Crops,
        entries: list[_Dataset],
        slots: list[int] | None,
    ) -> list[list[dict[str, Any]]]:
        """One list per image of one dict per crop; views of the batched tensors (no per-person copies)."""
        results: list[list[dict[str, Any]]] = [[] for _ in range(crops.num_images)]
        boxes = crops.boxes.to(device=keypoints.device, dtype=torch.float32).unbind(0)
        if slots is None:
            k = entries[0].num_keypoints
            keypoint_rows, score_rows = keypoints[:, :k].unbind(0), scores[:, :k].unbind(0)
        for i, image in enumerate(crops.image_index.tolist()):
            entry = entries[0] if slots is None else entries[slots[i]]
            if slots is None:
                person_keypoints, person_scores = keypoint_rows[i], score_rows[i]
            else:
                person_keypoints, person_scores = keypoints[i, : entry.num_keypoints], scores[i, : entry.num_keypoints]
            results[image].append(
                {
                    "keypoints": person_keypoints,
                    "scores": person_scores,
                    "labels": list(entry.keypoint_names),
                    "bbox": boxes[i],
                    "dataset": entry.name,
                }
            )
        return results


ViTPoseImageProcessor.register_for_auto_class()
