"""Output distillation (`vitpose-hf distill`, `scripts/distill.py`): a student learns from a frozen teacher.

The training script's run (same options, data, schedule, checkpoints, saving) with a loss of
``gt_weight * GT loss + distill_weight * teacher loss``, where the teacher loss is the same visibility-free keypoint
MSE between the student's heatmaps and the teacher's heatmaps of the same crops at the same resolution. Teacher and
student may differ in size and may be ViTPose++ models: each student head reads the teacher's head of the same
dataset name (or ``--teacher_dataset`` for all of them).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from vitpose_hf.modeling_vitpose_hf import ViTPoseForPoseEstimation
from vitpose_hf.training import train as train_module

__all__ = ["add_arguments", "main", "parse_args", "run", "teacher_head_map"]

logger = logging.getLogger("vitpose_hf.training.distill")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The training script's options plus the teacher's."""
    train_module.add_arguments(parser)
    t = parser.add_argument_group("distillation")
    t.add_argument("--teacher", required=True, help="teacher checkpoint (folder or Hub id), kept frozen in eval mode")
    t.add_argument(
        "--teacher_dataset",
        "--teacher-dataset",
        help="teacher head / expert (name or index) for every sample (default: the head of the same dataset name)",
    )
    t.add_argument("--distill_weight", "--distill-weight", type=float, default=1.0, help="weight of the teacher loss")
    t.add_argument("--gt_weight", "--gt-weight", type=float, default=1.0, help="weight of the ground-truth loss")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vitpose-hf distill", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return parser.parse_args(None if argv is None else list(argv))


def teacher_head_map(
    student: ViTPoseForPoseEstimation, teacher: ViTPoseForPoseEstimation, teacher_dataset: int | str | None = None
) -> list[int]:
    """For each student head, the teacher head that teaches it; ValueError when the layouts do not match."""
    out = []
    for info in student.config.datasets:
        t = teacher.config.dataset_to_index(info["name"] if teacher_dataset is None else teacher_dataset)
        if teacher.config.datasets[t]["keypoint_names"] != info["keypoint_names"]:
            raise ValueError(
                f"teacher head {teacher.config.dataset_names[t]!r} has other keypoints than the student's head "
                f"{info['name']!r}: a teacher must predict the student's keypoints"
            )
        out.append(t)
    return out


def load_teacher(path: str, student: ViTPoseForPoseEstimation, device: torch.device) -> ViTPoseForPoseEstimation:
    """The frozen teacher on ``device``; ValueError when its crops or heatmaps differ from the student's."""
    teacher = ViTPoseForPoseEstimation.from_pretrained(path).to(device).eval().requires_grad_(False)
    s, t = student.config, teacher.config
    if list(t.image_size) != list(s.image_size) and not t.interpolate_pos_encoding:
        raise ValueError(f"teacher input size {t.image_size} differs from the student's {s.image_size}")
    if tuple(t.heatmap_size) != tuple(s.heatmap_size):
        raise ValueError(
            f"teacher heatmaps {tuple(t.heatmap_size)} differ from the student's {tuple(s.heatmap_size)}: "
            "output distillation needs the same resolution"
        )
    return teacher


def make_loss(teacher: ViTPoseForPoseEstimation, head_map: Sequence[int], gt_weight: float, distill_weight: float):
    """The loss function of `train_module.TrainState.loss_fn`."""
    table = torch.tensor(head_map, dtype=torch.long)

    def loss_fn(state: Any, batch: Mapping[str, torch.Tensor], outputs: Any) -> torch.Tensor:
        student = state.accelerator.unwrap_model(state.model)
        pixel_values, heads = batch["pixel_values"], batch["dataset_index"]
        with torch.no_grad():
            taught = teacher(pixel_values, dataset_index=table.to(heads.device)[heads]).heatmaps.float()
        routing = student.route(heads, pixel_values.shape[0], pixel_values.device)
        k = outputs.heatmaps.shape[1]
        if taught.shape[1] < k:
            taught = torch.nn.functional.pad(taught, (0, 0, 0, 0, 0, k - taught.shape[1]))
        weight = torch.ones(taught.shape[:2], device=taught.device)
        distill = student.loss(outputs.heatmaps, routing, taught[:, :k], weight)
        return gt_weight * outputs.loss + distill_weight * distill

    return loss_fn


def run(args: argparse.Namespace) -> int:
    """Distil; returns 0. Raises ValueError for bad options, data or a teacher that does not fit."""
    state = train_module.setup(args)
    student = state.accelerator.unwrap_model(state.model)
    teacher = load_teacher(args.teacher, student, state.accelerator.device)
    head_map = teacher_head_map(student, teacher, args.teacher_dataset)
    state.loss_fn = make_loss(teacher, head_map, args.gt_weight, args.distill_weight)
    state.hyper.update(teacher=args.teacher, **{"distill weight": args.distill_weight, "GT weight": args.gt_weight})
    logger.info(
        f"distilling from {args.teacher} (heads {head_map}), GT weight {args.gt_weight}, "
        f"teacher weight {args.distill_weight}"
    )
    train_module.resume(state)
    state.model.train()
    for epoch in range(state.start_epoch, state.num_epochs):
        if state.step >= state.max_steps:
            break
        train_module.train_epoch(state, epoch)
    return train_module.finish(state)


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
