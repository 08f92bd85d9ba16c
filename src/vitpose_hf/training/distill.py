"""Output distillation (`vitpose-hf distill`, `scripts/distill.py`): a student learns from a frozen teacher.

The training script's run (same options, data, schedule, checkpoints, saving) with a loss of
``gt_weight * GT loss + distill_weight * teacher loss``, where the teacher loss is the same visibility-free keypoint
MSE between the student's heatmaps and the teacher's heatmaps of the same crops at the same resolution. Teacher and
student may differ in size and may be ViTPose++ models: each student head reads the teacher's head of the same
dataset name (or ``--teacher-dataset`` for all of them).

Knowledge-token distillation (the paper's token-based distillation), ``--token-stage``:

* stage 1 (``--token-stage 1 --teacher T``): T, frozen and in eval mode, gets a learnable ``(1, 1, C)`` token
  appended to its patch tokens; only the token trains, on the GT pose loss. The output folder is T with the token.
* stage 2 (``--token-stage 2 --token-from STAGE1``): the student gets a copy of that token, frozen, and trains with
  it (GT loss, plus output distillation when ``--teacher`` is given). Its config records ``knowledge_token``, so
  ``from_pretrained`` restores it and inference uses it. When the teacher's width differs from the student's
  (H to B, B to S), the student also gets a trainable linear projection (teacher width -> student width) applied to
  the frozen token and learned with the student; its config records ``knowledge_token_width`` (the paper does not
  say how a token crosses widths: the projection is our choice).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from vitpose_hf.modeling_vitpose_hf import ViTPoseForPoseEstimation
from vitpose_hf.training import train as train_module
from vitpose_hf_cli import dash_spellings

__all__ = [
    "add_arguments",
    "load_knowledge_token",
    "main",
    "parse_args",
    "run",
    "student_with_token",
    "teacher_head_map",
    "token_only",
]

logger = logging.getLogger("vitpose_hf.training.distill")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The training script's options plus the teacher's."""
    train_module.add_arguments(parser)
    t = parser.add_argument_group("distillation")
    t.add_argument("--teacher", help="teacher checkpoint (folder or Hub id), kept frozen in eval mode")
    t.add_argument(
        "--teacher-dataset",
        help="teacher head / expert (name or index) for every sample (default: the head of the same dataset name)",
    )
    t.add_argument("--distill-weight", type=float, default=1.0, help="weight of the teacher loss")
    t.add_argument("--gt-weight", type=float, default=1.0, help="weight of the ground-truth loss")
    t.add_argument(
        "--token-stage",
        type=int,
        choices=(1, 2),
        help="knowledge-token distillation: 1 trains a token on the frozen --teacher; 2 trains the student with the "
        "frozen token of --token-from",
    )
    t.add_argument("--token-from", help="stage-1 output (folder or Hub id) whose token stage 2 uses")
    dash_spellings(parser)  # --output-dir and --output_dir alike


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options of `vitpose-hf distill` from ``argv`` (dashed or underscore spellings)."""
    from vitpose_hf_cli import build_command_parser

    parser, _ = build_command_parser("distill")
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


def token_only(model: ViTPoseForPoseEstimation) -> None:
    """Stage 1: freeze every weight of the teacher and give it a new trainable knowledge token."""
    if model.config.knowledge_token:
        raise ValueError("the stage-1 teacher already has a knowledge token")
    model.requires_grad_(False)
    model.backbone.add_knowledge_token().requires_grad_(True)


def load_knowledge_token(path: str, cache_dir: str | None = None) -> torch.Tensor:
    """The `(1, 1, C)` token of a stage-1 checkpoint; ValueError when it has none."""
    source = ViTPoseForPoseEstimation.from_pretrained(path, cache_dir=cache_dir)
    if source.backbone.knowledge_token is None:
        raise ValueError(f"{path} has no knowledge token: pass the output folder of --token-stage 1")
    return source.backbone.knowledge_token.detach().clone()


def student_with_token(token: torch.Tensor) -> Callable[[ViTPoseForPoseEstimation], None]:
    """Stage 2: the student gets a frozen copy of ``token`` `(1, 1, C_t)`; when ``C_t`` is not the student's
    width, also a trainable projection to it (`ViTPoseModel.add_knowledge_token`)."""

    def prepare(model: ViTPoseForPoseEstimation) -> None:
        if model.config.knowledge_token:
            raise ValueError("the stage-2 student already has a knowledge token")
        model.backbone.add_knowledge_token(token).requires_grad_(False)
        if model.backbone.knowledge_token_proj is not None:
            logger.info(
                f"knowledge token of width {token.shape[-1]} projected to the student's {model.config.hidden_size}"
            )

    return prepare


def _check_token_args(args: argparse.Namespace) -> None:
    if args.token_stage == 1:
        if not args.teacher:
            raise ValueError("--token-stage 1 trains a token on a teacher: give --teacher")
        if args.token_from or args.model_name_or_path or args.model_size or args.config_name or args.init_from:
            raise ValueError("--token-stage 1 trains only a token on --teacher: drop the student options")
    elif args.token_stage == 2:
        if not args.token_from:
            raise ValueError("--token-stage 2 needs --token-from (the output folder of --token-stage 1)")
    elif args.token_from:
        raise ValueError("--token-from is for --token-stage 2")
    elif not args.teacher:
        raise ValueError("output distillation needs --teacher")


def run(args: argparse.Namespace) -> int:
    """Distil; returns 0. Raises ValueError for bad options, data or a teacher that does not fit."""
    from vitpose_hf.inference.hub import progress_bars

    with progress_bars(not getattr(args, "no_progress", False)):
        return _distill(args)


def _distill(args: argparse.Namespace) -> int:
    from vitpose_hf_cli import user_errors

    with user_errors():  # bad options or data, before any training: one line on the command line
        _check_token_args(args)
        prepare = None
        if args.token_stage == 1:
            args.model_name_or_path, prepare = args.teacher, token_only
        elif args.token_stage == 2:
            prepare = student_with_token(load_knowledge_token(args.token_from, args.cache_dir))
        state = train_module.setup(args, prepare)
    if args.token_stage:
        state.hyper["knowledge token"] = "stage 1 (teacher frozen)" if args.token_stage == 1 else args.token_from
    if args.teacher and args.token_stage != 1:
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
    # stage 1: the teacher stays in eval mode (no drop path, BatchNorm statistics untouched)
    state.model.train(args.token_stage != 1)
    with train_module.progress_bar(state):
        for epoch in range(state.start_epoch, state.num_epochs):
            if state.step >= state.max_steps:
                break
            train_module.train_epoch(state, epoch)
    return train_module.finish(state)


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
