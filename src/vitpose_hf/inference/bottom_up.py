"""Bottom-up inference: whole images in, every person's keypoints out, with no detector.

`BottomUpPoseEstimator` runs `ViTPoseForBottomUpPoseEstimation` with its processor (optional multi-scale and flip
test) and returns, per image, a list of people in the pose-estimation pipeline's output format. A person's box is
the box around its keypoints and its ``box_score`` the person score.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..configuration_vitpose_hf import ViTPoseBottomUpConfig
from ..image_processing_vitpose_hf_bottom_up import ViTPoseBottomUpImageProcessor
from ..images import is_batch
from ..modeling_vitpose_hf_bottom_up import ViTPoseForBottomUpPoseEstimation

__all__ = ["BottomUpPoseEstimator", "is_bottom_up_checkpoint", "people_to_pipeline_format"]


def is_bottom_up_checkpoint(path: str | os.PathLike) -> bool:
    """True when a local checkpoint folder's ``config.json`` has the bottom-up model type."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    with open(config, encoding="utf-8") as f:
        return json.load(f).get("model_type") == ViTPoseBottomUpConfig.model_type


def people_to_pipeline_format(people: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Processor people (tensors) -> the pipeline's JSON-ready dicts (``box``, ``box_format``, ``box_score``,
    ``label``, ``dataset``, ``keypoints`` as ``[{name, x, y, score}]``)."""
    out = []
    for person in people:
        points = person["keypoints"].detach().cpu().double().tolist()
        scores = person["scores"].detach().cpu().double().tolist()
        out.append(
            {
                "box": [float(v) for v in person["bbox"].detach().cpu().double().tolist()],
                "box_format": "xywh",
                "box_score": float(person["score"]),
                "label": "person",
                "dataset": person["dataset"],
                "keypoints": [
                    {"name": name, "x": xy[0], "y": xy[1], "score": s}
                    for name, xy, s in zip(person["labels"], points, scores)
                ],
            }
        )
    return out


class BottomUpPoseEstimator:
    """Multi-person pose estimation without boxes.

    Args:
        model: a `ViTPoseForBottomUpPoseEstimation` or a checkpoint path / Hub id.
        processor: its processor; by default one built from the model config.
        scales: test scales (default: the processor's).
        flip_test: also run mirrored inputs (default: the processor's).
        dataset: head of a multi-dataset model (index or name); 0 by default.
        device: where to run (default: the model's device).
        batch_size: images per forward.
    """

    def __init__(
        self,
        model: ViTPoseForBottomUpPoseEstimation | str | os.PathLike,
        processor: ViTPoseBottomUpImageProcessor | None = None,
        scales: Sequence[float] | None = None,
        flip_test: bool | None = None,
        dataset: int | str = 0,
        device: str | torch.device | None = None,
        batch_size: int = 8,
    ) -> None:
        if not isinstance(model, ViTPoseForBottomUpPoseEstimation):
            model = ViTPoseForBottomUpPoseEstimation.from_pretrained(model)
        self.model = model.eval()
        if device is not None:
            self.model.to(device)
        self.dataset_index = model.config.dataset_to_index(dataset)
        info = model.config.datasets[self.dataset_index]
        if processor is None:
            processor = ViTPoseBottomUpImageProcessor.from_model_config(model.config, dataset=info)
        elif processor._info["num_keypoints"] != len(info["keypoint_names"]):
            raise ValueError(
                f"the processor's dataset {processor._info['name']!r} has {processor._info['num_keypoints']} "
                f"keypoints but the model head {info['name']!r} has {len(info['keypoint_names'])}"
            )
        self.processor = processor
        self.scales = list(processor.scales if scales is None else scales)
        self.flip_test = processor.flip_test if flip_test is None else bool(flip_test)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size

    @torch.inference_mode()
    def predict(self, images: Any, threshold: float | None = None) -> list[list[dict[str, Any]]]:
        """Per image, the processor's people dicts (tensors; see its ``post_process_pose_estimation``)."""
        if not is_batch(images):
            images = [images]
        images = list(images)
        device = next(self.model.parameters()).device
        results: list[list[dict[str, Any]]] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            outputs, flips, first = [], [], None
            for scale in self.scales:
                meta = self.processor.preprocess(chunk, scale=scale)
                first = meta if first is None else first
                pixels = meta["pixel_values"].to(device)
                outputs.append(self.model(pixels, dataset_index=self.dataset_index))
                if self.flip_test:
                    flips.append(self.model(self.processor.flip_pixel_values(pixels), dataset_index=self.dataset_index))
            results.extend(
                self.processor.post_process_pose_estimation(
                    outputs, first, flip_outputs=flips if self.flip_test else None, threshold=threshold
                )
            )
        return results

    def __call__(self, images: Any, threshold: float | None = None) -> list[list[dict[str, Any]]]:
        """Per image, a list of people in the pose-estimation pipeline's format (``[]`` when nobody is found)."""
        return [people_to_pipeline_format(people) for people in self.predict(images, threshold)]
