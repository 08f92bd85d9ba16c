"""Bottom-up ViTPose image processor: whole images resized and padded to a square input, people grouped by tag.

The image -> input mapping is one 2 x 3 affine matrix per image (pixel centres on integers), kept in the metadata
that :meth:`ViTPoseBottomUpImageProcessor.preprocess` returns; post-processing maps keypoints back with its
inverse. Training augmentation composes its random scale / rotation / flip / shift with the same matrix and warps
with the same :meth:`~ViTPoseBottomUpImageProcessor.warp` (see ``training/bottom_up.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .codecs import AssociativeEmbedding, flip_back
from .image_processing_vitpose_hf import config_fields
from .images import is_batch, to_rgb_tensors
from .keypoint_metadata import flip_indices, get_dataset_info

__all__ = ["ViTPoseBottomUpImageProcessor", "invert_affine", "resize_pad_matrix"]


def resize_pad_matrix(height: int, width: int, size: int) -> torch.Tensor:
    """``(2, 3)`` image -> input matrix that scales the longer side to ``size`` (aspect kept), top-left aligned.

    Pixel centres sit on integers on both sides, so ``input = r * (image + 0.5) - 0.5`` per axis.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image has no pixels ({height}x{width})")
    r = size / max(height, width)
    return torch.tensor([[r, 0.0, 0.5 * r - 0.5], [0.0, r, 0.5 * r - 0.5]], dtype=torch.float64)


def invert_affine(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of ``(..., 2, 3)`` affine matrices."""
    linear, shift = matrix[..., :2], matrix[..., 2:]
    inverse = torch.linalg.inv(linear)
    return torch.cat([inverse, -inverse @ shift], dim=-1)


def _apply(points: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``(..., 2)`` points through a ``(2, 3)`` matrix."""
    return points @ matrix[:, :2].T + matrix[:, 2]


class ViTPoseBottomUpImageProcessor(BaseImageProcessor):
    r"""Processor of bottom-up ViTPose (saved as ``preprocessor_config.json``).

    Args:
        size: side of the square model input (512); the longer image side is scaled to it, the rest padded with
            the mean colour (0 after normalising).
        image_mean, image_std, do_rescale, rescale_factor, do_normalize: as the top-down processor.
        dataset: keypoint dataset (name or info dict): keypoint names and flip pairs.
        scales: multi-scale test: input sides ``size * s`` (rounded to a multiple of 32); the first is the
            reference whose heatmap grid the others are resized to.
        flip_test: also run the mirrored images and average heatmaps (tags are stacked).
        blur_kernel_size: DARK blur of the decoder (3: see :class:`~.codecs.AssociativeEmbedding`).
        heatmap_stride, sigma, max_people, detection_threshold, tag_threshold, nms_kernel,
            refine: the :class:`~.codecs.AssociativeEmbedding` codec settings.
    """

    model_input_names: ClassVar[list[str]] = ["pixel_values"]
    _CONFIG_KEYS = (
        "size",
        "image_mean",
        "image_std",
        "do_rescale",
        "rescale_factor",
        "do_normalize",
        "dataset",
        "scales",
        "flip_test",
        "heatmap_stride",
        "sigma",
        "blur_kernel_size",
        "max_people",
        "detection_threshold",
        "tag_threshold",
        "nms_kernel",
        "refine",
    )

    def __init__(
        self,
        size: int = 512,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        dataset: str | dict = "coco",
        scales: Sequence[float] = (1.0,),
        flip_test: bool = False,
        heatmap_stride: int = 4,
        sigma: float = 2.0,
        blur_kernel_size: int = 3,
        max_people: int = 30,
        detection_threshold: float = 0.1,
        tag_threshold: float = 1.0,
        nms_kernel: int = 5,
        refine: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("image_processor_type", None)
        super().__init__(**kwargs)
        if isinstance(size, bool) or not isinstance(size, int) or size < 32 or size % 32:
            raise ValueError(f"size must be a positive multiple of 32 (the input side), got {size!r}")
        self.size = size
        self.image_mean = [float(v) for v in (IMAGENET_DEFAULT_MEAN if image_mean is None else image_mean)]
        self.image_std = [float(v) for v in (IMAGENET_DEFAULT_STD if image_std is None else image_std)]
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or any(s == 0 for s in self.image_std):
            raise ValueError(f"image_mean / image_std must be 3 values (std non-zero), got {image_mean}, {image_std}")
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = bool(do_normalize)
        self.dataset = dataset
        self._info = get_dataset_info(copy.deepcopy(dataset))
        scales = [float(s) for s in scales]
        if not scales or any(not s > 0 for s in scales):
            raise ValueError(f"scales must be positive numbers, got {scales}")
        self.scales = scales
        self.flip_test = bool(flip_test)
        if isinstance(heatmap_stride, bool) or not isinstance(heatmap_stride, int) or heatmap_stride < 1:
            raise ValueError(f"heatmap_stride must be a positive integer, got {heatmap_stride!r}")
        self.heatmap_stride = heatmap_stride
        self.sigma = float(sigma)
        self.blur_kernel_size = int(blur_kernel_size)
        self.max_people = int(max_people)
        self.detection_threshold = float(detection_threshold)
        self.tag_threshold = float(tag_threshold)
        self.nms_kernel = int(nms_kernel)
        self.refine = bool(refine)
        self.get_codec(size)  # fail early on bad codec settings

    def to_dict(self) -> dict[str, Any]:
        """The config fields (what ``preprocessor_config.json`` holds)."""
        return config_fields(self, self._CONFIG_KEYS)

    @classmethod
    def from_model_config(cls, config: Any, **kwargs: Any) -> ViTPoseBottomUpImageProcessor:
        """A processor matching a `ViTPoseBottomUpConfig` (input side, dataset, decoding thresholds)."""
        kwargs.setdefault("size", int(max(config.image_size)))
        kwargs.setdefault("dataset", config.datasets[0])
        kwargs.setdefault("heatmap_stride", int(config.image_size[0] // config.heatmap_size[0]))
        for key in ("max_people", "detection_threshold", "tag_threshold"):
            kwargs.setdefault(key, getattr(config, key))
        kwargs.setdefault("sigma", config.heatmap_sigma)
        return cls(**kwargs)

    # ---- geometry -------------------------------------------------------------------------------------------------
    def input_side(self, scale: float = 1.0) -> int:
        """Input side for a test scale: ``size * scale`` rounded to a multiple of 32 (at least 32)."""
        return max(32, int(round(self.size * float(scale) / 32)) * 32)

    def get_codec(self, input_side: int | None = None) -> AssociativeEmbedding:
        """The codec of a square input of this side (default ``size``): heatmaps ``side / heatmap_stride``."""
        side = self.size if input_side is None else int(input_side)
        hm = side // self.heatmap_stride
        return AssociativeEmbedding(
            (side, side),
            (hm, hm),
            sigma=self.sigma,
            blur_kernel_size=self.blur_kernel_size,
            max_people=self.max_people,
            detection_threshold=self.detection_threshold,
            tag_threshold=self.tag_threshold,
            nms_kernel=self.nms_kernel,
            refine=self.refine,
        )

    def warp(self, images: Sequence[torch.Tensor], matrices: torch.Tensor, side: int) -> torch.Tensor:
        """Warp ``(3, H, W)`` images (uint8 or float on 0..255) through ``(B, 2, 3)`` image -> input matrices into
        normalised ``(B, 3, side, side)`` float32 inputs; outside the image is the mean colour (0)."""
        out = []
        ys, xs = torch.meshgrid(
            torch.arange(side, dtype=torch.float64), torch.arange(side, dtype=torch.float64), indexing="ij"
        )
        grid_points = torch.stack([xs, ys], dim=-1)  # (side, side, 2) input pixels
        mean = torch.tensor(self.image_mean).view(3, 1, 1)
        std = torch.tensor(self.image_std).view(3, 1, 1)
        factor = self.rescale_factor if self.do_rescale else 1.0
        for image, matrix in zip(images, matrices):
            h, w = image.shape[-2:]
            source = _apply(grid_points, invert_affine(matrix.double()))  # image pixels
            grid = torch.stack([(2 * source[..., 0] + 1) / w - 1, (2 * source[..., 1] + 1) / h - 1], dim=-1)
            src = image.to(torch.float32)[None]
            valid = torch.ones_like(src[:, :1])
            sampled = F.grid_sample(
                torch.cat([src, valid], 1), grid[None].float().to(src.device), "bilinear", "zeros", align_corners=False
            )[0]
            pixels, coverage = sampled[:3] * factor, sampled[3:]
            if self.do_normalize:
                # blend toward the mean colour where the sample reads outside the image (padding -> 0)
                pixels = (pixels - mean.to(pixels) * coverage) / std.to(pixels)
            out.append(pixels)
        return torch.stack(out) if out else torch.zeros(0, 3, side, side)

    # ---- preprocessing --------------------------------------------------------------------------------------------
    def __call__(self, images: Any, **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    def preprocess(self, images: Any, scale: float = 1.0, return_tensors: str | None = "pt") -> BatchFeature:
        """Resize (longer side to ``size * scale``, aspect kept) and pad each image to a square input.

        Args:
            images: one image or a list (PIL, numpy ``(H, W, 3)``, tensor ``(3, H, W)``, path); see :mod:`.images`.
            scale: one of the test scales (1.0 for the plain test).

        Returns:
            ``pixel_values`` ``(B, 3, S, S)``, ``matrix`` ``(B, 2, 3)`` float64 image -> input pixels,
            ``original_size`` ``(B, 2)`` ``(height, width)``.
        """
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be 'pt' (or None), got {return_tensors!r}")
        if not is_batch(images):
            images = [images]
        tensors = [t for i, image in enumerate(images) for t in to_rgb_tensors(image, where=f"images[{i}]")]
        side = self.input_side(scale)
        for i, t in enumerate(tensors):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"images[{i}] contains NaN or infinity")
        matrices = (
            torch.stack([resize_pad_matrix(t.shape[-2], t.shape[-1], side) for t in tensors])
            if tensors
            else (torch.zeros(0, 2, 3, dtype=torch.float64))
        )
        sizes = torch.tensor([list(t.shape[-2:]) for t in tensors], dtype=torch.long).reshape(-1, 2)
        return BatchFeature(
            {"pixel_values": self.warp(tensors, matrices, side), "matrix": matrices, "original_size": sizes}
        )

    @staticmethod
    def flip_pixel_values(pixel_values: torch.Tensor) -> torch.Tensor:
        """Mirror inputs horizontally (the flip test)."""
        return pixel_values.flip(-1)

    # ---- post-processing ------------------------------------------------------------------------------------------
    @staticmethod
    def _maps(outputs: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        heatmaps = getattr(outputs, "heatmaps", None) if not isinstance(outputs, dict) else outputs.get("heatmaps")
        tags = getattr(outputs, "tags", None) if not isinstance(outputs, dict) else outputs.get("tags")
        if not isinstance(heatmaps, torch.Tensor) or not isinstance(tags, torch.Tensor):
            raise TypeError(f"{name} must be a bottom-up model output with .heatmaps and .tags tensors")
        if heatmaps.ndim != 4 or tags.ndim != 5 or tags.shape[:2] != heatmaps.shape[:2]:
            raise ValueError(
                f"{name}: heatmaps must be (B, K, h, w) and tags (B, K, L, h, w), got {tuple(heatmaps.shape)} "
                f"and {tuple(tags.shape)}"
            )
        return heatmaps.float(), tags.float()

    def _merge(
        self, outputs: Sequence[Any], flip_outputs: Sequence[Any] | None, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Average heatmaps over scales (and flips) at the first scale's grid; stack the tags."""
        flip_index = flip_indices(self._info)
        heat_sum, tag_list, size, count = None, [], None, 0
        for s, out in enumerate(outputs):
            views = [self._maps(out, f"outputs[{s}]")]
            if flip_outputs is not None:
                hm, tg = self._maps(flip_outputs[s], f"flip_outputs[{s}]")
                if hm.shape != views[0][0].shape or tg.shape != views[0][1].shape:
                    raise ValueError(f"flip_outputs[{s}] shapes differ from outputs[{s}]")
                b, _, L, h, w = tg.shape
                tg = flip_back(tg.permute(0, 2, 1, 3, 4).reshape(b * L, k, h, w), flip_index).reshape(b, L, k, h, w)
                views.append((flip_back(hm, flip_index), tg.permute(0, 2, 1, 3, 4)))
            for hm, tg in views:
                if size is None:
                    size = tuple(hm.shape[-2:])
                b, _, L = tg.shape[:3]
                if tuple(hm.shape[-2:]) != size:
                    # align_corners=True keeps the UDP geometry: grid corners stay on the input corners
                    hm = F.interpolate(hm, size=size, mode="bilinear", align_corners=True)
                    tg = F.interpolate(
                        tg.reshape(b, k * L, *tg.shape[-2:]), size=size, mode="bilinear", align_corners=True
                    ).reshape(b, k, L, *size)
                heat_sum = hm if heat_sum is None else heat_sum + hm
                tag_list.append(tg)
                count += 1
        return heat_sum / count, torch.cat(tag_list, dim=2)

    def post_process_pose_estimation(
        self,
        outputs: Any,
        metadata: Any,
        flip_outputs: Any = None,
        threshold: float | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Group keypoints into people and map them back to image pixels.

        Args:
            outputs: the model output (``.heatmaps`` ``(B, K, h, w)``, ``.tags`` ``(B, K, L, h, w)``), or a list of
                them, one per test scale (the first sets the grid).
            metadata: the ``BatchFeature`` of :meth:`preprocess` (the first scale's when several).
            flip_outputs: the outputs on :meth:`flip_pixel_values` inputs (a list with one per scale when several).
            threshold: drop people whose score is below this (None keeps all).

        Returns:
            One list per image, one dict per person, as the top-down processor: ``keypoints`` ``(K, 2)`` float32
            image pixels, ``scores`` ``(K,)``, ``labels`` (keypoint names), ``bbox`` ``(4,)`` xywh around the
            keypoints, ``dataset`` (name), plus ``score`` (the person's score, mean of the keypoint scores). An
            image with no people gives ``[]``.
        """
        many = isinstance(outputs, (list, tuple))
        outputs = list(outputs) if many else [outputs]
        if flip_outputs is not None:
            flip_outputs = list(flip_outputs) if isinstance(flip_outputs, (list, tuple)) else [flip_outputs]
            if len(flip_outputs) != len(outputs):
                raise ValueError(f"{len(outputs)} outputs but {len(flip_outputs)} flip_outputs")
        if metadata is None or self._get(metadata, "matrix") is None:
            raise ValueError("post_process_pose_estimation needs metadata= (the BatchFeature from preprocess)")
        matrices = torch.as_tensor(self._get(metadata, "matrix")).double()
        heatmaps, _ = self._maps(outputs[0], "outputs")
        b, k, h, w = heatmaps.shape
        if k != self._info["num_keypoints"]:
            raise ValueError(
                f"heatmaps have {k} keypoints but the processor's dataset {self._info['name']!r} has "
                f"{self._info['num_keypoints']}"
            )
        if matrices.shape[0] != b:
            raise ValueError(f"outputs hold {b} images but metadata describes {matrices.shape[0]}")
        heat, tags = self._merge(outputs, flip_outputs, k)
        side = self._side_of(metadata, outputs[0])
        codec = self.get_codec(side)
        if codec.heatmap_size != (h, w):
            codec = AssociativeEmbedding(
                (side, side), (h, w), self.sigma, self.blur_kernel_size, self.max_people,
                self.detection_threshold, self.tag_threshold, self.nms_kernel, self.refine,
            )  # fmt: skip
        names = list(self._info["keypoint_names"])
        results: list[list[dict[str, Any]]] = []
        for i in range(b):
            points, scores, person_scores = codec.decode_people(heat[i], tags[i])
            inverse = invert_affine(matrices[i]).to(points.device)
            image_points = _apply(points.double(), inverse).float()
            people = []
            for j in range(points.shape[0]):
                score = float(person_scores[j])
                if threshold is not None and score < threshold:
                    continue
                xy = image_points[j]
                lo, hi = xy.min(dim=0).values, xy.max(dim=0).values
                people.append(
                    {
                        "keypoints": xy,
                        "scores": scores[j].float(),
                        "labels": names,
                        "bbox": torch.cat([lo, hi - lo]),
                        "dataset": self._info["name"],
                        "score": score,
                    }
                )
            results.append(people)
        return results

    @staticmethod
    def _get(source: Any, key: str) -> Any:
        if isinstance(source, dict) or hasattr(source, "keys"):
            return source.get(key) if hasattr(source, "get") else None
        return getattr(source, key, None)

    def _side_of(self, metadata: Any, outputs: Any) -> int:
        pixel_values = self._get(metadata, "pixel_values")
        if isinstance(pixel_values, torch.Tensor):
            return int(pixel_values.shape[-1])
        heatmaps, _ = self._maps(outputs, "outputs")
        return int(heatmaps.shape[-1] * self.heatmap_stride)


ViTPoseBottomUpImageProcessor.register_for_auto_class()
