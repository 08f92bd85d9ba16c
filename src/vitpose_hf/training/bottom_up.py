"""Bottom-up training and evaluation: whole images with every person's targets, augmentation, a small loop.

- `BottomUpTargets`: one image and its people -> augmented input, multi-person heatmaps, tag indices and the loss
  mask (crowd regions and people without keypoint labels are masked out, by segmentation when given, else by box).
- `BottomUpDataset` / `bottom_up_collate`: over a Hub-schema keypoint dataset (`data.hub_dataset`).
- `train_bottom_up`: AdamW on `ViTPoseForBottomUpPoseEstimation` (CLI-free; the training script wires it).
- `bottom_up_coco_results` / `evaluate_bottom_up`: COCO results from a bottom-up model and COCO AP through
  `evaluation.metrics.coco_keypoint_metrics`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..codecs import AssociativeEmbedding
from ..evaluation.metrics import coco_keypoint_metrics, to_coco_results
from ..image_processing_vitpose_hf_bottom_up import ViTPoseBottomUpImageProcessor, resize_pad_matrix
from ..images import to_rgb_tensors
from ..inference.bottom_up import BottomUpPoseEstimator
from ..keypoint_metadata import flip_indices
from ..modeling_vitpose_hf_bottom_up import ViTPoseForBottomUpPoseEstimation

__all__ = [
    "BottomUpAugment",
    "BottomUpDataset",
    "BottomUpTargets",
    "bottom_up_coco_results",
    "bottom_up_collate",
    "evaluate_bottom_up",
    "evaluate_bottom_up_on_coco",
    "train_bottom_up",
]


@dataclass
class BottomUpAugment:
    """Random affine augmentation of whole images (HigherHRNet's ranges by default)."""

    flip_prob: float = 0.5
    max_rotation: float = 30.0  # degrees, uniform in [-max, max]
    scale_range: tuple[float, float] = (0.75, 1.5)
    max_translate: float = 0.2  # fraction of the input side, uniform in [-max, max] per axis


def _augment_matrix(side: int, aug: BottomUpAugment, rng: np.random.Generator) -> tuple[torch.Tensor, bool]:
    """``(2, 3)`` input -> input matrix about the centre, and whether it mirrors."""
    c = (side - 1) / 2
    angle = math.radians(rng.uniform(-aug.max_rotation, aug.max_rotation))
    s = rng.uniform(*aug.scale_range)
    flip = bool(rng.random() < aug.flip_prob)
    fx = -1.0 if flip else 1.0
    cos, sin = math.cos(angle) * s, math.sin(angle) * s
    linear = torch.tensor([[cos * fx, -sin], [sin * fx, cos]], dtype=torch.float64)
    shift = torch.tensor(rng.uniform(-aug.max_translate, aug.max_translate, 2) * side, dtype=torch.float64)
    centre = torch.tensor([c, c], dtype=torch.float64)
    return torch.cat([linear, (centre - linear @ centre + shift)[:, None]], dim=1), flip


def _compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """``outer ∘ inner`` of two ``(2, 3)`` affine matrices."""
    return torch.cat([outer[:, :2] @ inner[:, :2], (outer[:, :2] @ inner[:, 2:] + outer[:, 2:])], dim=1)


def _ignore_mask(objects: Sequence[Mapping[str, Any]], height: int, width: int) -> np.ndarray | None:
    """Image-size bool mask of crowd regions and unlabelled people (segmentation if present, else the box)."""
    mask = None
    for obj in objects:
        labelled = np.asarray(obj.get("keypoints") or [], dtype=np.float64).reshape(-1, 3)[:, 2] > 0
        if not obj.get("iscrowd") and labelled.any():
            continue
        region = np.zeros((height, width), dtype=bool)
        segmentation = obj.get("segmentation")
        if segmentation:
            from pycocotools import mask as mask_utils

            if isinstance(segmentation, list):
                rles = mask_utils.frPyObjects(segmentation, height, width)
                rle = mask_utils.merge(rles)
            elif isinstance(segmentation.get("counts"), list):
                rle = mask_utils.frPyObjects(segmentation, height, width)
            else:
                rle = segmentation
            region = mask_utils.decode(rle).astype(bool)
        elif obj.get("bbox") is not None:
            x, y, w, h = (float(v) for v in obj["bbox"])
            region[max(0, int(y)) : max(0, int(math.ceil(y + h))), max(0, int(x)) : max(0, int(math.ceil(x + w)))] = 1
        mask = region if mask is None else mask | region
    return mask


class BottomUpTargets:
    """One training sample from an image and its objects (COCO / Hub-schema dicts).

    Args:
        processor: gives the input side, normalisation, warp and the codec.
        dataset_info: keypoint metadata (flip pairs for mirrored samples).
        augment: random affine augmentation; None for none.
        max_people: people kept per image (padding rows for the tag loss).
    """

    def __init__(
        self,
        processor: ViTPoseBottomUpImageProcessor,
        dataset_info: Mapping[str, Any],
        augment: BottomUpAugment | None = None,
        max_people: int = 30,
    ) -> None:
        self.processor = processor
        self.codec: AssociativeEmbedding = processor.get_codec()
        self.info = dict(dataset_info)
        self.num_keypoints = len(self.info["keypoint_names"])
        self.flip_index = flip_indices(self.info)
        self.augment = augment
        self.max_people = max_people

    def __call__(
        self, image: Any, objects: Sequence[Mapping[str, Any]], rng: np.random.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """``pixel_values`` ``(3, S, S)``, ``target_heatmaps`` ``(K, h, w)``, ``masks`` ``(h, w)``,
        ``keypoint_indices`` ``(max_people, K, 2)``."""
        tensor = to_rgb_tensors(image, where="image")[0]
        height, width = tensor.shape[-2:]
        side = self.processor.size
        matrix = resize_pad_matrix(height, width, side)
        flipped = False
        if self.augment is not None and rng is not None:
            extra, flipped = _augment_matrix(side, self.augment, rng)
            matrix = _compose(extra, matrix)
        pixel_values = self.processor.warp([tensor], matrix[None], side)[0]

        people = []
        for obj in objects:
            kps = np.asarray(obj.get("keypoints") or [], dtype=np.float64).reshape(-1, 3)
            if kps.shape[0] != self.num_keypoints:
                raise ValueError(f"an object has {kps.shape[0]} keypoints, the dataset {self.num_keypoints}")
            if not obj.get("iscrowd") and (kps[:, 2] > 0).any():
                people.append(kps)
        people = people[: self.max_people]
        kps = torch.from_numpy(np.stack(people)) if people else torch.zeros(0, self.num_keypoints, 3)
        points = kps[..., :2] @ matrix[:, :2].T + matrix[:, 2]
        visible = kps[..., 2] > 0
        if flipped:  # a mirrored image: left and right keypoints swap names
            points, visible = points[:, self.flip_index], visible[:, self.flip_index]

        ignore = _ignore_mask(objects, height, width)
        hm_mask = None if ignore is None else self._mask_to_heatmap(torch.from_numpy(ignore), matrix)
        target = self.codec.encode_people(points, visible, hm_mask)
        indices = torch.zeros(self.max_people, self.num_keypoints, 2, dtype=torch.long)
        indices[: target["keypoint_indices"].shape[0]] = target["keypoint_indices"]
        return {
            "pixel_values": pixel_values,
            "target_heatmaps": target["heatmaps"].float(),
            "masks": target["mask"],
            "keypoint_indices": indices,
        }

    def _mask_to_heatmap(self, ignore: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """Image-size bool mask -> heatmap grid: each heatmap pixel reads the image pixel under its centre."""
        h, w = self.codec.heatmap_size
        sx, sy = self.codec.stride
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")  # fmt: skip
        points = torch.stack([xs * sx, ys * sy], dim=-1) - matrix[:, 2]
        image = points @ torch.linalg.inv(matrix[:, :2]).T
        col, row = image[..., 0].round().long(), image[..., 1].round().long()
        inside = (col >= 0) & (col < ignore.shape[1]) & (row >= 0) & (row < ignore.shape[0])
        return inside & ignore[row.clamp(0, ignore.shape[0] - 1), col.clamp(0, ignore.shape[1] - 1)]


class BottomUpDataset(torch.utils.data.Dataset):
    """Training samples over a Hub-schema dataset (rows with ``image`` and ``objects``)."""

    def __init__(self, rows: Any, targets: BottomUpTargets, seed: int = 0) -> None:
        self.rows = rows
        self.targets = targets
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """Different augmentation draws per epoch, reproducible from the seed."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.rows[int(index)]
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        return self.targets(row["image"], row["objects"] or [], rng)


def bottom_up_collate(samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack samples into a batch."""
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


def train_bottom_up(
    model: ViTPoseForBottomUpPoseEstimation,
    rows: Any,
    *,
    processor: ViTPoseBottomUpImageProcessor | None = None,
    steps: int = 100,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.0,
    augment: BottomUpAugment | None = None,
    dataset_index: int | str = 0,
    seed: int = 0,
    num_workers: int = 0,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train a bottom-up model on a Hub-schema keypoint dataset; returns each step's loss terms.

    Args:
        model: the model (trained in place).
        rows: Hub-schema rows (``image``, ``objects`` with ``keypoints``, ``iscrowd``, ``bbox``).
        processor: input side and codec; by default from the model config.
        steps, batch_size, learning_rate, weight_decay: the AdamW loop (cosine learning-rate decay).
        augment: random affine augmentation (None: none).
        dataset_index: the head / expert trained.
        seed: data order and augmentation.
        callback: called as ``callback(step, terms)`` after each step.
    """
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1, got {steps} and {batch_size}")
    if len(rows) == 0:
        raise ValueError("the training set is empty")
    k = model.config.dataset_to_index(dataset_index)
    info = model.config.datasets[k]
    if processor is None:
        processor = ViTPoseBottomUpImageProcessor.from_model_config(model.config, dataset=info)
    targets = BottomUpTargets(processor, info, augment, model.config.max_people)
    data = BottomUpDataset(rows, targets, seed)
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        data, batch_size=batch_size, shuffle=True, collate_fn=bottom_up_collate, generator=generator,
        num_workers=num_workers, drop_last=len(data) >= batch_size,
    )  # fmt: skip
    device = next(model.parameters()).device
    groups = model.param_groups(weight_decay=weight_decay)
    optimizer = torch.optim.AdamW([{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups],
                                  lr=learning_rate)  # fmt: skip
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1)))
    )
    history: list[dict[str, float]] = []
    model.train()
    step, epoch = 0, 0
    while step < steps:
        data.set_epoch(epoch)
        for batch in loader:
            batch = {name: value.to(device) for name, value in batch.items()}
            out = model(**batch, dataset_index=k)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            schedule.step()
            terms = {"loss": float(out.loss.detach()), **{n: float(v.detach()) for n, v in out.loss_terms.items()}}
            history.append(terms)
            if callback is not None:
                callback(step, terms)
            step += 1
            if step >= steps:
                break
        epoch += 1
    model.eval()
    return history


def bottom_up_coco_results(
    estimator: BottomUpPoseEstimator, rows: Any, image_ids: Sequence[Any] | None = None
) -> list[dict[str, Any]]:
    """COCO keypoint results of a bottom-up model on Hub-schema rows (``image``, ``image_id``)."""
    results = []
    for n in range(len(rows)):
        row = rows[n]
        image_id = row["image_id"] if image_ids is None else image_ids[n]
        for person in estimator.predict([row["image"]])[0]:
            results.extend(to_coco_results([{**person, "image_id": image_id}]))
    return results


def evaluate_bottom_up(
    model: ViTPoseForBottomUpPoseEstimation | BottomUpPoseEstimator,
    ground_truth: str | os.PathLike | Mapping[str, Any],
    rows: Any,
    dataset: str | Mapping[str, Any] = "coco",
    **metric_kwargs: Any,
) -> dict[str, float]:
    """COCO OKS AP / AR of a bottom-up model on Hub-schema rows of the images of ``ground_truth``."""
    estimator = model if isinstance(model, BottomUpPoseEstimator) else BottomUpPoseEstimator(model)
    results = bottom_up_coco_results(estimator, rows)
    if not results:
        raise ValueError("the model found no people in any image; COCO AP is undefined without predictions")
    return coco_keypoint_metrics(ground_truth, results, dataset, **metric_kwargs)


def evaluate_bottom_up_on_coco(
    model: ViTPoseForBottomUpPoseEstimation | BottomUpPoseEstimator | str | os.PathLike,
    annotations: str | os.PathLike,
    images: str | os.PathLike | None = None,
    dataset: str | Mapping[str, Any] = "coco",
    max_images: int | None = None,
    results_file: str | os.PathLike | None = None,
    **metric_kwargs: Any,
) -> dict[str, float]:
    """COCO AP of a bottom-up model on a COCO-format keypoint json and its image folder (default: the json's
    folder); with ``results_file`` the COCO results are written there as JSON (for `vitpose-hf evaluate`)."""
    import json
    from pathlib import Path

    annotations = Path(annotations)
    with open(annotations, encoding="utf-8") as f:
        gt = json.load(f)
    folder = Path(images) if images is not None else annotations.parent
    entries = gt.get("images") or []
    if max_images is not None:
        entries = entries[:max_images]
        ids = {e["id"] for e in entries}
        gt = {**gt, "images": entries, "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
    rows = [{"image": str(folder / e["file_name"]), "image_id": e["id"]} for e in entries]
    estimator = model if isinstance(model, BottomUpPoseEstimator) else BottomUpPoseEstimator(model)
    results = bottom_up_coco_results(estimator, rows)
    if results_file is not None:
        with open(results_file, "w", encoding="utf-8") as f:
            json.dump(results, f)
    if not results:
        raise ValueError("the model found no people in any image; COCO AP is undefined without predictions")
    return coco_keypoint_metrics(gt, results, dataset, **metric_kwargs)
