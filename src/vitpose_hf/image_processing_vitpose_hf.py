"""Top-down image processor for ViTPose / ViTPose++: boxes in, crops out; heatmaps in, keypoints out.

``preprocess`` cuts one crop per person box with the official affine warp of the crop's dataset (UDP, or the
classic one), batched in torch on the images' device, and normalises it. ``post_process_pose_estimation`` decodes
heatmaps crop by crop (UDP + DARK, or the classic quarter-pixel decoder), optionally averages a flip test, and
maps keypoints back to image pixels. Encoding and decoding live in :mod:`.codecs`, geometry in :mod:`.geometry`:
training and inference use the same code.

Images (PIL, numpy, torch, paths, URLs; any mode or dtype) are turned into RGB by :mod:`.images`, which documents
the rule; boxes follow the formats and nesting rules of :mod:`.boxes`.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.processing_utils import ImagesKwargs

from .boxes import boxes_per_image, check_box_format, to_xywh
from .codecs import MSRAHeatmap, UDPHeatmap, _check_kernel_size, flip_back
from .devices import to_device
from .geometry import BOX_PADDING, _center_scale, crop_to_image, image_to_crop, inverse_warp_matrix
from .images import is_batch, to_rgb_tensors, warn_if_unit_range
from .keypoint_metadata import flip_indices as dataset_flip_indices
from .keypoint_metadata import get_dataset_info

__all__ = ["ViTPoseImageProcessor", "flip_pixel_values"]

DECODERS = ("udp_dark", "msra")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def config_fields(processor: BaseImageProcessor, keys: Sequence[str]) -> dict[str, Any]:
    """``keys`` of ``processor`` plus its ``auto_map`` and type: what its ``preprocessor_config.json`` holds."""
    output = {key: copy.deepcopy(getattr(processor, key)) for key in keys}
    if getattr(processor, "auto_map", None):
        output["auto_map"] = copy.deepcopy(processor.auto_map)
    output["image_processor_type"] = type(processor).__name__
    return output


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
    use_udp: torch.Tensor | None  # (N,) bool on the CPU: the warp of each crop (None: not recorded)
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
        use_udp: ``True``: the unbiased (UDP) warp and back-transform for every crop; ``False``: the classic ones.
            ``None`` (default): per dataset, each crop takes the official setting of its dataset (``use_udp`` of
            its keypoint metadata: UDP for COCO and MPII, classic for AIC, AP-10K, APT-36K and COCO-WholeBody, as
            the official ViTPose++ recipe trains them). With several datasets that differ, :meth:`preprocess`
            needs each crop's ``dataset`` / ``dataset_index``; the crop metadata records the warp of each crop.
        decoder: ``"udp_dark"`` (arg-max + DARK, the official UDP test setting) or ``"msra"`` (arg-max +
            quarter-pixel shift, the official non-UDP setting). ``None`` picks ``"udp_dark"`` for UDP crops and
            ``"msra"`` for classic ones, crop by crop.
        blur_kernel_size: kernel of the DARK blur (11; OpenCV's rule gives sigma 2.0).
        sigma: Gaussian sigma of training targets (2.0), used by :meth:`get_codec`.
        dataset: keypoint dataset of the heatmaps: a name (``"coco"``), an info dict, or a list of them, one per
            head of a multi-dataset (ViTPose++) model, indexed by ``dataset_index``. Model outputs that carry
            their own ``datasets`` take precedence in post-processing.
    """

    model_input_names: ClassVar[list[str]] = ["pixel_values"]
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
        use_udp: bool | None = None,
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
        return config_fields(self, self._CONFIG_KEYS)

    # ------------------------------------------------------------------------------------------------------------
    # Helpers
    # ------------------------------------------------------------------------------------------------------------
    @property
    def input_size(self) -> tuple[int, int]:
        """``(H, W)`` of the crops."""
        return self.size["height"], self.size["width"]

    def _heads(self) -> list[_Dataset]:
        """The processor's datasets, in the order that ``dataset_index`` counts."""
        entries = self.dataset if isinstance(self.dataset, (list, tuple)) else [self.dataset]
        return [_resolve_dataset(d) for d in entries]

    @staticmethod
    def _slots(dataset_index: Any, heads: list[_Dataset], n: int, where: str) -> list[int]:
        """Position in ``heads`` of each of ``n`` crops from an int, a name, or one of those per crop."""
        if isinstance(dataset_index, (torch.Tensor, np.ndarray)):
            values = dataset_index.reshape(-1).tolist()
        elif isinstance(dataset_index, (list, tuple)):
            values = list(dataset_index)
        else:
            values = [dataset_index]
        if len(values) == 1:
            values = values * n
        if len(values) != n:
            raise ValueError(f"{where} has {len(values)} entries for {n} crops")
        names = [h.name for h in heads]
        slots = []
        for value in values:
            if isinstance(value, str):
                if value not in names:
                    raise ValueError(f"{where} {value!r} is not one of the datasets {names}")
                value = names.index(value)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{where} must hold integers or dataset names, got {value!r}")
            if not 0 <= value < len(heads):
                raise ValueError(f"{where} {value} is out of range for the {len(heads)} datasets {names}")
            slots.append(int(value))
        return slots

    def _datasets_per_crop(
        self, dataset: Any, dataset_index: Any, n: int, heads: list[_Dataset] | None, where: str
    ) -> tuple[list[_Dataset], list[int] | None]:
        """Datasets and the slot of each crop among them; slots None: one dataset for all, or unknown if several.

        An explicit ``dataset`` (one, or one per crop) wins; otherwise ``dataset_index`` picks among ``heads`` (the
        processor's datasets when None).
        """
        if dataset is not None:
            if isinstance(dataset, (list, tuple)):
                if len(dataset) != n:
                    raise ValueError(f"dataset is a list of {len(dataset)} entries but there are {n} crops")
                return [_resolve_dataset(d) for d in dataset], list(range(n))
            return [_resolve_dataset(dataset)], None
        heads = self._heads() if heads is None else heads
        if dataset_index is None:
            return heads, None
        slots = self._slots(dataset_index, heads, n, where)
        return (heads, None) if len(heads) == 1 else (heads, slots)

    def _udp_per_crop(
        self, use_udp: bool | None, entries: list[_Dataset], slots: list[int] | None, n: int
    ) -> torch.Tensor:
        """``(N,)`` bool on the CPU: the call's or the config's ``use_udp``; with None each crop's dataset setting."""
        if use_udp is None:
            use_udp = self.use_udp
        if use_udp is not None:
            return torch.full((n,), bool(use_udp))
        if slots is None:
            flags = {e.use_udp for e in entries}
            if len(flags) > 1:
                raise ValueError(
                    f"use_udp=None (per dataset) but the datasets {[e.name for e in entries]} differ in use_udp: "
                    "pass the dataset of the crops (dataset= or dataset_index=), or set use_udp"
                )
            return torch.full((n,), flags.pop())
        return torch.tensor([entries[s].use_udp for s in slots], dtype=torch.bool).reshape(n)

    def _decoder(self, use_udp: bool) -> str:
        return self.decoder if self.decoder is not None else ("udp_dark" if use_udp else "msra")

    def get_codec(
        self,
        heatmap_size: tuple[int, int] | None = None,
        decoder: str | None = None,
        dataset: str | dict | None = None,
    ) -> UDPHeatmap | MSRAHeatmap:
        """The heatmap codec of this config (for training targets and decoding).

        Args:
            heatmap_size: ``(h, w)``; a quarter of the input size by default (64 x 48 for 256 x 192).
            decoder: ``"udp_dark"`` or ``"msra"``; by default the config's choice (``decoder``, else UDP-DARK for
                UDP crops and MSRA for classic ones).
            dataset: the dataset whose setting ``use_udp=None`` takes (needed when the processor's disagree).
        """
        if decoder is None:
            entries = [_resolve_dataset(dataset)] if dataset is not None else self._heads()
            decoder = self._decoder(bool(self._udp_per_crop(None, entries, None, 1)[0]))
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
        dataset: str | dict | Sequence[str | dict] | None = None,
        use_udp: bool | None = None,
        dataset_index: int | str | Sequence[int | str] | torch.Tensor | None = None,
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
            dataset: the dataset of the crops (name or info dict), or a list with one per crop. Only used when
                ``use_udp`` resolves to None: each crop is then cut with its dataset's official setting.
            use_udp: override of the warp for this call (True: UDP, False: classic); post-processing maps the
                keypoints back with the warp recorded per crop, and decodes as the config / the crop's dataset says.
            dataset_index: instead of ``dataset``: the crops' dataset among the processor's ``dataset`` list
                (an int or a name, or one per crop), as the model's ``dataset_index``.
            kwargs: per-call overrides of ``do_rescale``, ``rescale_factor``, ``do_normalize``, ``image_mean``,
                ``image_std`` and ``padding_factor``.

        Returns:
            ``BatchFeature`` with ``pixel_values`` ``(N_crops, 3, H, W)`` float32 and the crop metadata that
            :meth:`post_process_pose_estimation` accepts as ``crop_metadata``: ``image_index`` ``(N_crops,)``,
            ``center`` ``(N_crops, 2)``, ``scale`` ``(N_crops, 2)`` (200-px units, padded, after
            ``scale_factor``), ``boxes`` ``(N_crops, 4)`` (the input boxes, in ``box_format``),
            ``crops_per_image`` ``(num_images,)``, ``use_udp`` ``(N_crops,)`` bool (the warp of each crop),
            ``box_format`` and, when given, ``rotation``. ``pixel_values``, ``center``, ``scale`` and ``boxes`` are
            on ``device``; the bookkeeping (``image_index``, ``crops_per_image``, ``use_udp``, ``rotation``) stays
            on the CPU, where post-processing reads it, so that a GPU pipeline never waits for the device between
            the crops and the decoded keypoints.

        A zero-size box (width and height 0) has scale 0: its crop is all black (every pixel 0 before
        normalisation), as ``cv2.warpAffine`` gives with the official (infinite) UDP matrix, and its keypoints
        map back to the box centre, as the official ``transform_preds``. (The official classic warp builds a zero
        matrix there and repeats the image's top-left pixel; we give black for both warps.)
        """
        options = self._call_options(kwargs)
        box_format = check_box_format(box_format)
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None (= 'pt'), got {return_tensors!r}")
        if dataset is not None and dataset_index is not None:
            raise ValueError("pass dataset= or dataset_index=, not both")
        out_h, out_w = self.input_size

        single = not is_batch(images)
        if single:
            rgb = to_rgb_tensors(images)
        else:
            if isinstance(images, (list, tuple)):
                rgb = []
                for i, image in enumerate(images):
                    if is_batch(image):
                        raise ValueError(f"images[{i}] is a batch; pass a flat list of images")
                    rgb.extend(to_rgb_tensors(image, f"images[{i}]"))
            else:
                rgb = to_rgb_tensors(images)
        if options["do_rescale"]:
            warn_if_unit_range(rgb)
        if device is None:
            device = next((im.device for im in rgb), torch.device("cpu"))
        device = torch.device(device)
        rgb = [to_device(im, device) for im in rgb]

        if boxes is None:
            per_image = [torch.tensor([[0.0, 0.0, im.shape[2], im.shape[1]]], dtype=torch.float32) for im in rgb]
        else:
            per_image = boxes_per_image(boxes, len(rgb), single, box_format)
        counts = torch.tensor([len(b) for b in per_image], dtype=torch.long)
        all_boxes = torch.cat(per_image).to(torch.float32) if per_image else torch.zeros(0, 4)
        all_boxes = to_device(all_boxes, device)
        n = all_boxes.shape[0]
        image_index = torch.repeat_interleave(torch.arange(len(per_image)), counts)  # host bookkeeping
        entries, slots = self._datasets_per_crop(dataset, dataset_index, n, None, "dataset_index")
        udp = self._udp_per_crop(use_udp, entries, slots, n)

        center, scale = self._center_scale(all_boxes, box_format, (out_h, out_w), options["padding_factor"])
        # the augmentation values are checked before they move, so checking them never waits for the device
        if scale_factor is not None:
            factor = torch.as_tensor(scale_factor, dtype=torch.float32).reshape(-1)
            if factor.numel() not in (1, n) or not bool(torch.isfinite(factor).all()) or bool((factor <= 0).any()):
                raise ValueError(
                    f"scale_factor must be a positive number or {n} positive numbers, got {scale_factor!r}"
                )
            scale = scale * to_device(factor, device).unsqueeze(-1)
        angles = None
        if rotation is not None:
            angles = torch.as_tensor(rotation, dtype=torch.float32).reshape(-1)
            if angles.numel() not in (1, n) or not bool(torch.isfinite(angles).all()):
                raise ValueError(f"rotation must be a number or {n} finite numbers (degrees), got {rotation!r}")
            angles = angles.expand(n).clone()

        raw = self._warp(rgb, image_index, counts, center, scale, angles, udp, (out_h, out_w))
        pixel_values = self._normalize(raw, options)

        data: dict[str, Any] = {
            "pixel_values": pixel_values,
            "image_index": image_index,
            "center": center,
            "scale": scale,
            "boxes": all_boxes,
            "crops_per_image": counts,
            "use_udp": udp,
        }
        if angles is not None:
            data["rotation"] = angles
        if return_tensors == "np":
            data = {key: value.cpu().numpy() for key, value in data.items()}
        data["box_format"] = box_format
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
        return columns + rows

    @staticmethod
    def _float_source(image: torch.Tensor) -> torch.Tensor:
        """``(1, 3, H, W)`` float32 view of a ``(3, H, W)`` image, converted into a channels-last work buffer."""
        if image.dtype == torch.float32:
            return image.unsqueeze(0)
        _, h, w = image.shape
        # fresh each call: a buffer kept between calls would be global state (and an inference tensor after
        # a call under torch.inference_mode, which later calls outside it cannot write)
        buffer = torch.empty((h, w, 3), dtype=torch.float32, device=image.device)
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
        use_udp: torch.Tensor,
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
        # A zero-size box: the official UDP matrix is infinite and cv2.warpAffine gives an all-black crop. Its
        # inverse here is finite (every pixel -> the centre); sampling at pixel (-2, -2) instead gives black too.
        empty = (scale <= 0).any(dim=1, keepdim=True)
        inverse[:, :, 2] = torch.where(empty, inverse.new_tensor(-2.0), inverse[:, :, 2])
        used = [i for i, c in enumerate(counts.tolist()) if c > 0]
        if len(used) == 1:
            source = self._float_source(images[used[0]])
            img_h, img_w = source.shape[-2:]
            # pixel -> grid coordinate: g = (2 p + 1) / size - 1, folded into the matrix.
            to_grid = to_device(torch.tensor([2.0 / img_w, 2.0 / img_h]), device)
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
        sizes = to_device(torch.tensor(list(zip(widths, heights)), dtype=torch.float32)[image_index], device)
        torch.minimum(points, sizes[:, None, None], out=points).clamp_(min=-1.0)
        shift = torch.zeros(n, 2)
        shift[:, 1] = torch.as_tensor(offsets, dtype=torch.float32)[image_index]
        shift = to_device(shift, device)
        to_grid = to_device(torch.tensor([2.0 / canvas_w, 2.0 / top]), device)
        grid = points.mul_(to_grid).add_((shift * to_grid + to_grid / 2 - 1.0)[:, None, None])
        return F.grid_sample(source.expand(n, -1, -1, -1), grid, "bilinear", "zeros", align_corners=False)

    @staticmethod
    def _normalize(raw: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
        """``raw * rescale / std - mean / std`` per channel, in place on the (contiguous) warp output."""
        factor = options["rescale_factor"] if options["do_rescale"] else 1.0
        mean = to_device(torch.tensor(options["image_mean"], dtype=torch.float32), raw.device)
        std = to_device(torch.tensor(options["image_std"], dtype=torch.float32), raw.device)
        if not options["do_normalize"]:
            mean, std = torch.zeros_like(mean), torch.ones_like(std)
        return raw.mul_((factor / std).view(1, 3, 1, 1)).add_((-mean / std).view(1, 3, 1, 1)).contiguous()

    def keypoints_to_crop(self, keypoints: torch.Tensor, crop_metadata: dict[str, Any]) -> torch.Tensor:
        """Map ``(N_crops, K, 2)`` image keypoints into crop pixels with the warp of each crop (for targets)."""
        center, scale, rotation, use_udp = self._crop_geometry(crop_metadata)
        if use_udp is None:
            use_udp = self._udp_per_crop(None, self._heads(), None, center.shape[0])
        keypoints = torch.as_tensor(keypoints, device=center.device)
        return image_to_crop(keypoints, center, scale, self.input_size, rotation, self._flags_for(use_udp, center))

    # ------------------------------------------------------------------------------------------------------------
    # Post-processing
    # ------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _heatmaps_of(outputs: Any, name: str) -> torch.Tensor:
        heatmaps = outputs.get("heatmaps") if isinstance(outputs, dict) else getattr(outputs, "heatmaps", outputs)
        if not isinstance(heatmaps, torch.Tensor):
            raise TypeError(f"{name} must be a model output with .heatmaps or a tensor, got {type(outputs).__name__}")
        if heatmaps.ndim != 4 or not heatmaps.is_floating_point():
            raise ValueError(
                f"{name} heatmaps must be a float tensor (N, K, h, w), got {heatmaps.dtype} {tuple(heatmaps.shape)}"
            )
        return heatmaps

    @staticmethod
    def _field(source: Any, key: str) -> Any:
        if source is None or isinstance(source, torch.Tensor):
            return None
        return source.get(key) if isinstance(source, dict) or hasattr(source, "keys") else getattr(source, key, None)

    @staticmethod
    def _flags_for(use_udp: torch.Tensor, like: torch.Tensor) -> bool | torch.Tensor:
        """Per-crop UDP flags for the geometry: one bool when all crops agree (the common, cheaper path)."""
        if use_udp.numel() == 0 or bool(use_udp.all()) or not bool(use_udp.any()):
            return bool(use_udp.all())
        return to_device(use_udp, like.device)

    def _crop_geometry(self, meta: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(center, scale, rotation, use_udp) of crop metadata; use_udp ``(N,)`` bool on the CPU, None if absent."""
        values = []
        for key in ("center", "scale"):
            value = self._field(meta, key)
            if value is None:
                raise ValueError(f"crop_metadata has no {key!r}; pass the BatchFeature returned by preprocess")
            value = torch.as_tensor(value)
            if value.dtype in _LOW_PRECISION:
                raise ValueError(
                    f"crop_metadata[{key!r}] is {value.dtype}: too coarse for image coordinates "
                    "(BatchFeature.to(dtype) "
                    "casts every float tensor). Cast only the pixels: inputs['pixel_values'] = "
                    "inputs['pixel_values'].to(dtype)"
                )
            values.append(value.float())
        center, scale = values
        rotation = self._field(meta, "rotation")
        use_udp = self._field(meta, "use_udp")
        if use_udp is not None:  # a bool (metadata of older versions) or one flag per crop
            use_udp = torch.as_tensor(use_udp).detach().cpu().reshape(-1)
            if use_udp.dtype != torch.bool or use_udp.numel() not in (1, center.shape[0]):
                raise ValueError(
                    f"crop_metadata['use_udp'] must be a bool or one bool per crop ({center.shape[0]}), got "
                    f"{use_udp.dtype} with {use_udp.numel()} values"
                )
            use_udp = use_udp.expand(center.shape[0])
        return center, scale, None if rotation is None else torch.as_tensor(rotation).float(), use_udp

    def _crop_datasets(
        self, outputs: Any, dataset: Any, dataset_index: Any, n: int
    ) -> tuple[list[_Dataset], list[int] | None]:
        """The dataset of each crop: the model's (``outputs.datasets``) when the outputs carry them, else the
        explicit ``dataset`` or the processor's, indexed by ``dataset_index``."""
        if dataset_index is None:
            dataset_index = self._field(outputs, "dataset_index")
        model_datasets = self._field(outputs, "datasets")
        if model_datasets is None:
            where = "dataset_index (or outputs.dataset_index)"
            entries, slots = self._datasets_per_crop(dataset, dataset_index, n, None, where)
            if len(entries) > 1 and slots is None:
                raise ValueError(
                    f"this processor lists {len(entries)} datasets {[h.name for h in entries]}: the outputs carry no "
                    "dataset_index, so pass dataset_index=... or dataset=<name>"
                )
            return entries, slots
        heads = [_resolve_dataset(d) for d in model_datasets]
        entries, slots = self._datasets_per_crop(None, dataset_index, n, heads, "outputs.dataset_index")
        if len(entries) > 1 and slots is None:
            raise ValueError(
                f"outputs.datasets lists {len(entries)} datasets {[h.name for h in entries]} but the outputs carry no "
                "dataset_index; pass dataset_index=..."
            )
        if dataset is not None:
            given, given_slots = self._datasets_per_crop(dataset, None, n, [], "dataset")
            for i in range(n):
                name = given[0 if given_slots is None else given_slots[i]].name
                model_name = entries[0 if slots is None else slots[i]].name
                if name != model_name:
                    raise ValueError(
                        f"dataset={name!r} conflicts with the model's dataset {model_name!r} for crop {i} "
                        "(outputs.datasets[outputs.dataset_index]); drop dataset= or pass the model's dataset"
                    )
        return entries, slots

    def post_process_pose_estimation(
        self,
        outputs: Any,
        boxes: Any = None,
        box_format: str | None = None,
        flip_outputs: Any = None,
        dataset: str | dict | Sequence[str | dict] | None = None,
        crop_metadata: Any = None,
        dataset_index: Sequence[int] | torch.Tensor | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Decode heatmaps into keypoints in image pixels, grouped per image.

        Each crop is decoded with its own settings. Its dataset gives the keypoint names, the flip pairs and, with
        ``use_udp=None``, the targets the model was trained on: UDP-DARK (UDP targets) or the quarter-pixel decoder
        and the flip test's one-pixel shift (classic MSRA targets); ``use_udp=True`` / ``False`` sets them for all
        crops and ``decoder`` overrides the decoder. The back-transform to the image follows the warp that cut the
        crop (``crop_metadata["use_udp"]``).

        Args:
            outputs: the model output (``.heatmaps`` ``(N, K, h, w)``, any float dtype / device; optional
                ``.num_keypoints`` ``(N,)`` for a padded mixed-dataset batch, ``.dataset_index`` ``(N,)`` and
                ``.datasets``, the model's dataset metadata in head order), or the heatmaps tensor itself.
            boxes: not accepted (an error that says so), except the BatchFeature of :meth:`preprocess` passed in
                this place, where transformers' processor takes its boxes.
            crop_metadata: the ``BatchFeature`` (or dict) returned by :meth:`preprocess`: it holds each crop's
                centre, scale, rotation and warp. Required: boxes alone cannot say which ``padding_factor``,
                ``scale_factor``, rotation or warp cut the crops.
            box_format: format of the returned ``bbox``; must match ``crop_metadata`` (taken from it by default).
            flip_outputs: output (or heatmaps) of the model on the mirrored crops (:func:`flip_pixel_values`). They
                are flipped back with the dataset's flip pairs (plus the one-pixel shift for non-UDP crops) and
                averaged with ``outputs`` before decoding, as the official flip test.
            dataset: one dataset (name or info dict) for all crops, or a list with one per crop. When the outputs
                carry ``.datasets``, each crop's dataset is ``outputs.datasets[outputs.dataset_index[i]]`` and a
                different ``dataset`` is an error; otherwise the processor's ``dataset`` is the default (indexed by
                ``dataset_index`` when it lists several).
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
        if boxes is not None and crop_metadata is None and self._field(boxes, "center") is not None:
            crop_metadata, boxes = boxes, None  # the BatchFeature of preprocess, passed where transformers has boxes
        if boxes is not None:
            raise ValueError(
                "post_process_pose_estimation takes crop_metadata=<the BatchFeature returned by preprocess>, not "
                "boxes=: the boxes do not say which padding_factor, scale_factor, rotation or warp (use_udp, the "
                "crop's dataset) cut each crop, and rebuilding them from the processor's defaults is wrong when "
                "preprocess was called with other values"
            )
        if crop_metadata is None:
            raise ValueError("post_process_pose_estimation needs crop_metadata (the BatchFeature from preprocess)")
        crops = self._crops_from_metadata(crop_metadata, box_format)
        if crops.center.shape[0] != n:
            raise ValueError(f"the heatmaps hold {n} crops but crop_metadata describes {crops.center.shape[0]}")

        entries, slots = self._crop_datasets(outputs, dataset, dataset_index, n)
        self._check_channels(entries, slots, channels, self._field(outputs, "num_keypoints"), n)
        # What the model was trained on (decoder, flip shift) vs the warp that cut each crop (back-transform).
        targets_udp = self._udp_per_crop(None, entries, slots, n)
        warp_udp = self._flags_for(crops.use_udp if crops.use_udp is not None else targets_udp, heatmaps)

        # Flip test: flip the mirrored heatmaps back and average, in float32 (as the official code, in numpy).
        work = heatmaps.float() if heatmaps.dtype != torch.float64 else heatmaps
        if flip_outputs is not None:
            flipped = self._heatmaps_of(flip_outputs, "flip_outputs")
            if flipped.shape != heatmaps.shape:
                raise ValueError(
                    f"flip_outputs heatmaps {tuple(flipped.shape)} differ from outputs {tuple(heatmaps.shape)}"
                )
            padded = [list(e.flip_indices) + list(range(e.num_keypoints, channels)) for e in entries]
            perm = padded[0] if slots is None else torch.tensor([padded[s] for s in slots], dtype=torch.long)
            shift = self._flags_for(~targets_udp, heatmaps)
            back = flip_back(flipped.to(device=device, dtype=work.dtype), perm, shift=shift)
            work = (work + back) * 0.5

        crop_points, scores = self._decode(work, targets_udp, (hm_h, hm_w))
        keypoints = crop_to_image(  # crop_to_image checks the rotation where it is, then moves it
            crop_points,
            to_device(crops.center, device),
            to_device(crops.scale, device),
            self.input_size,
            crops.rotation,
            warp_udp,
        ).float()
        return self._group_results(keypoints, scores.float(), crops, entries, slots)

    def _decode(
        self, heatmaps: torch.Tensor, use_udp: torch.Tensor, heatmap_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode each crop with the decoder of its targets (UDP or not); one codec call per decoder present."""
        decoders = [self._decoder(bool(flag)) for flag in use_udp.tolist()]
        kinds = sorted(set(decoders))
        if len(kinds) <= 1:
            return self._codec(kinds[0] if kinds else self._decoder(True), heatmap_size).decode(heatmaps)
        n, k = heatmaps.shape[:2]
        coords = heatmaps.new_empty(n, k, 2)
        scores = heatmaps.new_empty(n, k)
        for kind in kinds:
            index = to_device(torch.tensor([i for i, d in enumerate(decoders) if d == kind]), heatmaps.device)
            part_coords, part_scores = self._codec(kind, heatmap_size).decode(heatmaps.index_select(0, index))
            coords.index_copy_(0, index, part_coords.to(coords.dtype))
            scores.index_copy_(0, index, part_scores.to(scores.dtype))
        return coords, scores

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

    @staticmethod
    def _check_channels(
        entries: list[_Dataset], slots: list[int] | None, channels: int, num_keypoints: Any, n: int
    ) -> None:
        """The heatmap channels must fit the datasets; ``num_keypoints`` (padded batches) must match them."""
        if isinstance(num_keypoints, torch.Tensor) and num_keypoints.device.type != "cpu":
            num_keypoints = None  # reading it back would wait for the device; the host-side checks below still hold
        expected = [entries[0].num_keypoints] * n if slots is None else [entries[s].num_keypoints for s in slots]
        if num_keypoints is None and slots is None and channels != entries[0].num_keypoints:
            raise ValueError(
                f"the heatmaps have {channels} channels but dataset {entries[0].name!r} has "
                f"{entries[0].num_keypoints} keypoints"
            )
        if expected and max(expected) > channels:
            raise ValueError(
                f"the heatmaps have {channels} channels but a crop's dataset has {max(expected)} keypoints"
            )
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
