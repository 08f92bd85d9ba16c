"""Top-down training data: the official augmentation recipe, crops and heatmap targets, and the torch datasets,
sampler and collator the training loop reads from.

Per sample (`TopDownTransform`, order as the official ``train_pipeline``):

1. box -> centre and size; with probability 0.3 the centre moves by ``U(-0.2, 0.2) * (w, h)`` of the box;
2. horizontal flip with probability 0.5 (image mirrored, ``x -> width - 1 - x``, left/right keypoints swapped by
   the layout's flip pairs);
3. half body with probability 0.3 when more than 8 keypoints are labelled: the upper-body keypoints (if a standard
   normal draw is < 0.5 and more than 2 of them are labelled) else the lower-body ones (if more than 2) else the
   upper ones; centre = their mean, box = their extent, region 1.5 x the aspect-fixed box instead of 1.25 x
   (the full box is kept when the chosen keypoints all coincide: they have no extent to crop);
4. scale ``s *= clip(N(0, 1) * 0.5 + 1, 0.5, 1.5)``; rotation ``clip(N(0, 1) * 40, -80, 80)`` degrees with
   probability 0.6, else 0;
5. the affine crop, by `ViTPoseImageProcessor.preprocess` (the shared warp: UDP for UDP layouts such as COCO and
   MPII, the classic one otherwise), normalised with the ImageNet mean / std;
6. Gaussian heatmaps with sigma 2 from the shared codecs: `UDPHeatmap` for UDP layouts, `MSRAHeatmap` otherwise;
   target weight = labelled (v > 0), 0 when the Gaussian falls entirely outside the heatmap.

Every random draw of a sample comes from its own `numpy.random.Generator`, seeded by the sampler: augmentation does
not depend on worker processes, and a resumed run sees exactly the samples of an uninterrupted one.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from vitpose_hf.codecs import MSRAHeatmap, UDPHeatmap
from vitpose_hf.data.hub_dataset import check_instance, format_counts
from vitpose_hf.geometry import BOX_PADDING
from vitpose_hf.image_processing_vitpose_hf import ViTPoseImageProcessor
from vitpose_hf.images import to_rgb_array
from vitpose_hf.keypoint_metadata import flip_indices, get_dataset_info

__all__ = [
    "AugmentConfig",
    "InstanceTable",
    "MixedDatasetSampler",
    "StreamingTopDownDataset",
    "TopDownCollator",
    "TopDownDataset",
    "TopDownSource",
    "TopDownTransform",
]

logger = logging.getLogger(__name__)


@dataclass
class AugmentConfig:
    """Probabilities and ranges of the official COCO training pipeline (`enabled=False`: plain crops)."""

    enabled: bool = True
    flip_prob: float = 0.5
    center_jitter_prob: float = 0.3
    center_jitter_factor: float = 0.2
    half_body_prob: float = 0.3
    half_body_min_joints: int = 8
    half_body_part_min_joints: int = 2
    half_body_scale: float = 1.5
    scale_factor: float = 0.5
    rotation_factor: float = 40.0
    rotation_prob: float = 0.6

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TopDownTransform:
    """Image + one annotated instance -> crop, target heatmaps and weights (see the module docstring).

    Args:
        dataset_info: keypoint layout (name or info dict): flip pairs, upper/lower body ids, ``use_udp``.
        input_size: ``(H, W)`` of the crops.
        heatmap_size: ``(h, w)`` of the target heatmaps (the model's ``config.heatmap_size``).
        augment: the recipe; None or ``enabled=False`` for evaluation crops.
        sigma: Gaussian sigma of the targets (heatmap pixels).
        padding: box enlargement (1.25).
    """

    def __init__(
        self,
        dataset_info: str | dict,
        input_size: Sequence[int],
        heatmap_size: Sequence[int],
        augment: AugmentConfig | None = None,
        sigma: float = 2.0,
        padding: float = BOX_PADDING,
    ) -> None:
        self.info = get_dataset_info(dataset_info)
        self.num_keypoints = self.info["num_keypoints"]
        self.use_udp = bool(self.info["use_udp"])
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.heatmap_size = (int(heatmap_size[0]), int(heatmap_size[1]))
        self.augment = augment if augment is not None and augment.enabled else None
        self.padding = float(padding)
        self.flip_index = np.asarray(flip_indices(self.info), dtype=np.int64)
        self.upper = np.asarray(self.info.get("upper_body_ids") or [], dtype=np.int64)
        self.lower = np.asarray(self.info.get("lower_body_ids") or [], dtype=np.int64)
        self.processor = ViTPoseImageProcessor(
            size={"height": self.input_size[0], "width": self.input_size[1]},
            use_udp=self.use_udp,
            padding_factor=self.padding,
            sigma=sigma,
            dataset=self.info,
        )
        codec_class = UDPHeatmap if self.use_udp else MSRAHeatmap
        self.codec = codec_class(self.input_size, self.heatmap_size, sigma=sigma)

    def __repr__(self) -> str:
        return (
            f"TopDownTransform({self.info['name']!r}, input_size={self.input_size}, heatmap_size={self.heatmap_size}, "
            f"use_udp={self.use_udp}, augment={self.augment})"
        )

    # ---- the random part --------------------------------------------------------------------------------------
    def _half_body(
        self, keypoints: np.ndarray, visible: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(centre, size) of the half-body region, or None when it does not apply."""
        aug = self.augment
        upper = [i for i in self.upper if visible[i]]
        lower = [i for i in self.lower if visible[i]]
        if rng.standard_normal() < 0.5 and len(upper) > aug.half_body_part_min_joints:
            chosen = upper
        else:
            chosen = lower if len(lower) > aug.half_body_part_min_joints else upper
        if len(chosen) < 2:
            return None
        points = keypoints[chosen, :2]
        size = points.max(axis=0) - points.min(axis=0)
        if not (size > 0).any():
            # Coincident joints: the official code goes on with a zero scale (a singular warp); keep the full box.
            return None
        return points.mean(axis=0), size

    def _draw(
        self, image: np.ndarray, box: np.ndarray, keypoints: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, float, bool]:
        """Apply jitter, flip, half body, scale and rotation draws.

        Returns (image, keypoints (K, 3), centre (2,), size (w, h) of the region before padding, region factor
        relative to the 1.25 padding, rotation in degrees, flipped).
        """
        aug = self.augment
        width = image.shape[1]
        x, y, w, h = box
        center = np.array([x + 0.5 * w, y + 0.5 * h])
        size = np.array([w, h], dtype=np.float64)
        if rng.random() < aug.center_jitter_prob:
            center = center + 2 * aug.center_jitter_factor * (rng.random(2) - 0.5) * size
        flipped = bool(rng.random() <= aug.flip_prob)
        if flipped:
            image = image[:, ::-1]
            keypoints = keypoints[self.flip_index].copy()
            keypoints[:, 0] = width - 1 - keypoints[:, 0]
            center[0] = width - 1 - center[0]
        factor = 1.0
        visible = keypoints[:, 2] > 0
        if (
            len(self.upper) + len(self.lower) > 0
            and visible.sum() > aug.half_body_min_joints
            and rng.random() < aug.half_body_prob
        ):
            half = self._half_body(keypoints, visible, rng)
            if half is not None:
                center, size = half
                factor = aug.half_body_scale / self.padding
        factor *= float(
            np.clip(rng.standard_normal() * aug.scale_factor + 1, 1 - aug.scale_factor, 1 + aug.scale_factor)
        )
        rotation = 0.0
        if rng.random() <= aug.rotation_prob:
            rotation = float(
                np.clip(rng.standard_normal() * aug.rotation_factor, -2 * aug.rotation_factor, 2 * aug.rotation_factor)
            )
        return image, keypoints, center, size, factor, rotation, flipped

    # ---- the whole sample -------------------------------------------------------------------------------------
    def __call__(
        self, image: Any, box: Sequence[float], keypoints: np.ndarray, rng: np.random.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """One training (or evaluation) sample.

        Args:
            image: any image of :mod:`.images` (PIL in any mode, array, tensor, path).
            box: ``(4,)`` xywh box in image pixels (already clipped to the image).
            keypoints: ``(K, 3)`` ``[x, y, v]`` in image pixels.
            rng: the sample's generator; None (or no augmentation) for a plain crop.

        Returns:
            ``pixel_values`` ``(3, H, W)`` float32, ``labels`` ``(K, h, w)``, ``target_weight`` ``(K,)``, ``center``
            ``(2,)`` and ``scale`` ``(2,)`` of the crop (200-px units), ``rotation`` ``()`` degrees, ``flipped`` ``()``
            bool (the crop is cut from the mirrored image).
        """
        array = to_rgb_array(image)
        keypoints = np.asarray(keypoints, dtype=np.float64).reshape(self.num_keypoints, 3)
        box = np.asarray(box, dtype=np.float64)
        flipped = False
        if self.augment is not None and rng is not None:
            array, keypoints, center, size, factor, rotation, flipped = self._draw(array, box, keypoints, rng)
        else:
            center = box[:2] + 0.5 * box[2:]
            size, factor, rotation = box[2:], 1.0, 0.0
        crop_box = [[center[0] - 0.5 * size[0], center[1] - 0.5 * size[1], size[0], size[1]]]
        features = self.processor.preprocess(
            np.ascontiguousarray(array),
            boxes=crop_box,
            rotation=rotation if rotation != 0.0 else None,
            scale_factor=factor if factor != 1.0 else None,
            use_udp=self.use_udp,
        )
        points = torch.from_numpy(keypoints[None, :, :2]).float()
        crop_points = self.processor.keypoints_to_crop(points, features)
        visible = torch.from_numpy((keypoints[:, 2] > 0).astype(np.float32))[None]
        target = self.codec.encode(crop_points, visible)
        return {
            "pixel_values": features["pixel_values"][0],
            "labels": target["heatmaps"][0].float(),
            "target_weight": target["keypoint_weights"][0].float(),
            "center": features["center"][0].float(),
            "scale": features["scale"][0].float(),
            "rotation": torch.tensor(rotation, dtype=torch.float32),
            "flipped": torch.tensor(flipped),
        }


# ---------------------------------------------------------------------------------------------------------------
# Map-style datasets
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class InstanceTable:
    """The usable instances of one split as numpy arrays (cheap to index and to send to worker processes)."""

    rows: np.ndarray  # (N,) row of the image in the image dataset
    image_ids: np.ndarray  # (N,)
    boxes: np.ndarray  # (N, 4) clipped xywh
    keypoints: np.ndarray  # (N, K, 3)

    @classmethod
    def from_dataset(cls, instances: Any, num_keypoints: int) -> InstanceTable:
        """From the instance rows of `hub_dataset.explode_instances`."""
        n = instances.num_rows
        if n == 0:
            return cls(
                np.zeros(0, np.int64),
                np.zeros(0, np.int64),
                np.zeros((0, 4), np.float32),
                np.zeros((0, num_keypoints, 3), np.float32),
            )
        # the Arrow table with any selection applied: flatten nested lists without going through python objects
        data = instances.with_format("arrow")[:]

        def column(name: str) -> np.ndarray:
            import pyarrow as pa

            values = data.column(name).combine_chunks()
            while (
                pa.types.is_list(values.type)
                or pa.types.is_fixed_size_list(values.type)
                or pa.types.is_large_list(values.type)
            ):
                values = values.flatten()
            return values.to_numpy(zero_copy_only=False)

        return cls(
            rows=column("row").astype(np.int64),
            image_ids=column("image_id").astype(np.int64),
            boxes=column("bbox").astype(np.float32).reshape(n, 4),
            keypoints=column("keypoints").astype(np.float32).reshape(n, num_keypoints, 3),
        )

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class TopDownSource:
    """One dataset of a (multi-dataset) run: its images, instances, transform and model head."""

    name: str
    images: Any  # datasets.Dataset with an "image" column
    table: InstanceTable
    transform: TopDownTransform
    head: int


class TopDownDataset(torch.utils.data.Dataset):
    """Instances of one or several datasets.

    Items are addressed by ``(source, index, seed)`` tuples from `MixedDatasetSampler` (training: the seed drives
    the augmentation) or by a flat int (evaluation: plain crops, no augmentation).
    """

    def __init__(self, sources: Sequence[TopDownSource]) -> None:
        self.sources = list(sources)
        self.offsets = np.cumsum([0] + [len(s.table) for s in self.sources])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, key: Any) -> tuple[int, int, int | None]:
        if isinstance(key, (tuple, list)):
            source, index, seed = key
            return int(source), int(index), None if seed is None else int(seed)
        flat = int(key)
        if not 0 <= flat < len(self):
            raise IndexError(f"index {flat} out of range for {len(self)} instances")
        source = int(np.searchsorted(self.offsets, flat, side="right") - 1)
        return source, flat - int(self.offsets[source]), None

    def __getitem__(self, key: Any) -> dict[str, Any]:
        s, i, seed = self._locate(key)
        source = self.sources[s]
        table = source.table
        image = source.images[int(table.rows[i])]["image"]
        rng = np.random.default_rng(seed) if seed is not None else None
        sample = source.transform(image, table.boxes[i], table.keypoints[i], rng)
        sample["dataset_index"] = torch.tensor(source.head, dtype=torch.long)
        sample["source"] = torch.tensor(s, dtype=torch.long)
        sample["instance"] = torch.tensor(i, dtype=torch.long)
        return sample


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers proportional to ``weights`` that sum to ``total``."""
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    rest = total - counts.sum()
    if rest > 0:
        counts[np.argsort(-(exact - counts), kind="stable")[:rest]] += 1
    return counts


class MixedDatasetSampler(torch.utils.data.Sampler):
    """Shuffled ``(source, index, seed)`` items over several datasets, one epoch at a time.

    An epoch has as many items as all sources together. Without ``ratios`` each source contributes its size, i.e.
    every instance once, a uniform shuffle of the union (the official ConcatDataset). With ``ratios`` source d
    contributes ``ratio_d / sum(ratios)`` of the epoch, cycling through its own shuffled instances. Sources are
    interleaved at random, so batches mix datasets. Everything follows from ``(seed, epoch)``.
    """

    def __init__(self, sizes: Sequence[int], ratios: Sequence[float] | None = None, seed: int = 0) -> None:
        self.sizes = np.asarray(sizes, dtype=np.int64)
        if ratios is None:
            weights = self.sizes.astype(np.float64)
        else:
            weights = np.asarray(ratios, dtype=np.float64)
            if (
                weights.shape != self.sizes.shape
                or not np.isfinite(weights).all()
                or (weights < 0).any()
                or weights.sum() <= 0
            ):
                raise ValueError(
                    f"dataset ratios must be one non-negative number per dataset ({len(sizes)}), got {list(ratios)}"
                )
        weights = np.where(self.sizes > 0, weights, 0.0)
        if weights.sum() <= 0:
            raise ValueError(f"no training instances to sample from (dataset sizes {self.sizes.tolist()})")
        self.counts = _largest_remainder(int(self.sizes.sum()), weights)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self.counts.sum())

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        parts = []
        for d, (size, count) in enumerate(zip(self.sizes.tolist(), self.counts.tolist())):
            if count == 0:
                continue
            rounds = -(-count // size)
            index = np.concatenate([rng.permutation(size) for _ in range(rounds)])[:count]
            parts.append(np.stack([np.full(count, d), index], axis=1))
        items = np.concatenate(parts)
        items = items[rng.permutation(len(items))]
        seeds = rng.integers(0, 2**62, size=len(items))
        for (d, i), s in zip(items.tolist(), seeds.tolist()):
            yield d, i, s


class TopDownCollator:
    """Stack samples into a batch; heatmaps and weights are zero-padded to ``num_keypoints`` channels.

    Output: ``pixel_values`` ``(B, 3, H, W)``, ``labels`` ``(B, Kmax, h, w)``, ``target_weight`` ``(B, Kmax)``,
    ``dataset_index`` ``(B,)`` and the per-sample extras (``center``, ``scale``, ``source``, ``instance``, ...).
    """

    def __init__(self, num_keypoints: int) -> None:
        self.num_keypoints = int(num_keypoints)

    def __call__(self, samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        k = self.num_keypoints
        for key in samples[0]:
            values = [s[key] for s in samples]
            if key in ("labels", "target_weight") and any(v.shape[0] != k for v in values):
                padded = []
                for v in values:
                    pad = v.new_zeros((k - v.shape[0],) + tuple(v.shape[1:]))
                    padded.append(torch.cat([v, pad]) if v.shape[0] < k else v)
                values = padded
            batch[key] = torch.stack(values)
        return batch


# ---------------------------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class StreamSource:
    """One streamed dataset: an image-level `datasets.IterableDataset` and how to turn its rows into samples."""

    name: str
    rows: Any  # datasets.IterableDataset in the keypoint schema
    transform: TopDownTransform
    head: int


class StreamingTopDownDataset(torch.utils.data.IterableDataset):
    """Endless stream of training samples from `datasets.IterableDataset` sources (`--streaming`).

    Each worker process reads its own shards of every source (the `datasets` library splits shards between
    workers), explodes image rows into instances on the fly, skips and counts bad annotations (logged after each
    pass over a source), and picks the source of every sample by ``ratios``. Sources restart when exhausted;
    training length comes from ``--max_train_steps``.
    """

    def __init__(
        self,
        sources: Sequence[StreamSource],
        ratios: Sequence[float] | None = None,
        seed: int = 0,
        shuffle_buffer: int = 1000,
    ) -> None:
        self.sources = list(sources)
        weights = np.ones(len(self.sources)) if ratios is None else np.asarray(ratios, dtype=np.float64)
        if weights.shape != (len(self.sources),) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"dataset ratios must be one non-negative number per dataset, got {ratios}")
        self.probabilities = weights / weights.sum()
        self.seed = int(seed)
        self.shuffle_buffer = int(shuffle_buffer)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _instances(self, d: int, round_: int) -> Iterator[tuple[Any, list[float], np.ndarray]]:
        source = self.sources[d]
        rows = source.rows
        if self.shuffle_buffer > 1:
            rows = rows.shuffle(seed=self.seed + d, buffer_size=self.shuffle_buffer)
        rows.set_epoch(self.epoch * 1000 + round_)
        k = source.transform.num_keypoints
        counts: Counter = Counter()
        for row in rows:
            for obj in row.get("objects") or []:
                status, box, kps = check_instance(obj, k, row.get("width"), row.get("height"))
                counts[status] += 1
                if status == "ok":
                    yield row["image"], box, kps
        worker = torch.utils.data.get_worker_info()
        bad = {key: v for key, v in counts.items() if key not in ("ok", "crowd", "no_keypoints")}
        (logger.warning if bad else logger.info)(
            f"{source.name} (worker {worker.id if worker else 0}, pass {round_}): {counts.get('ok', 0)} instances, "
            f"skipped bad annotations: {format_counts(bad)}"
        )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker = torch.utils.data.get_worker_info()
        wid = worker.id if worker is not None else 0
        rng = np.random.default_rng([self.seed, self.epoch, wid])
        rounds = [0] * len(self.sources)
        iterators = [self._instances(d, 0) for d in range(len(self.sources))]
        alive = self.probabilities > 0
        while alive.any():
            p = np.where(alive, self.probabilities, 0.0)
            d = int(rng.choice(len(p), p=p / p.sum()))
            try:
                image, box, kps = next(iterators[d])
            except StopIteration:
                rounds[d] += 1
                iterators[d] = self._instances(d, rounds[d])
                try:
                    image, box, kps = next(iterators[d])
                except StopIteration:  # nothing in this worker's shards of the source
                    alive[d] = False
                    continue
            source = self.sources[d]
            sample = source.transform(image, box, kps, np.random.default_rng(int(rng.integers(0, 2**62))))
            sample["dataset_index"] = torch.tensor(source.head, dtype=torch.long)
            yield sample
