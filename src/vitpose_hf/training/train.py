"""Train or fine-tune ViTPose / ViTPose++ with Accelerate (`vitpose-hf train`, `scripts/train.py`).

In the style of transformers' ``run_*_no_trainer.py`` scripts: one Accelerator, `accelerate launch` for DDP / FSDP /
multi-node, `save_state` checkpoints that resume exactly, evaluation during training, `save_pretrained` folders with
the processor config and a model card, optional `push_to_hub`.

Recipe defaults (official ViTPose configs): AdamW betas (0.9, 0.999), weight decay 0.1 (none on 1-D parameters,
biases and the position embedding), lr 5e-4 (1e-3 for multi-dataset ViTPose++), layer-wise lr decay 0.8 / 0.75 /
0.8 / 0.85 for S / B / L / H (0.8 for ViTPose++-H), gradient clipping 1.0, 500 steps of linear warm-up from 0.001 x,
then x0.1 at epochs 170 and 200 of 210 (the same fractions of any other length), drop path per size.

Several ``--dataset-name`` train one multi-dataset model: each dataset has a keypoint layout (a head; datasets with
the same layout share it) and, by default, its own ViTPose++ expert. Every sample carries its head index, batches
mix datasets, ``--dataset-ratio`` sets the sampling shares, and after training each head is also exported as a dense
single-dataset model under ``per_dataset/<name>``.

``--paradigm bottom-up`` trains a `ViTPoseForBottomUpPoseEstimation` (associative embedding) on whole images of one
dataset with :func:`vitpose_hf.training.bottom_up.train_bottom_up`: a new model (``--model-size``), a bottom-up
checkpoint, or a top-down ``--model`` converted to bottom-up. It runs in one process (no Accelerate, no checkpoints
or resuming) and saves the model and its processor config in ``--output-dir``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitpose_hf.configuration_vitpose_hf import DECODERS, LAYER_DECAY, PRESET_SIZES, ViTPoseConfig
from vitpose_hf.conversion import adapt_model, load_vit_backbone
from vitpose_hf.data.hub_dataset import (
    BAD_STATUSES,
    check_instance,
    explode_instances,
    find_layout,
    format_counts,
    load_image_split,
    read_layout,
)
from vitpose_hf.data.transforms import (
    AugmentConfig,
    InstanceTable,
    MixedDatasetSampler,
    StreamingTopDownDataset,
    StreamSource,
    TopDownCollator,
    TopDownDataset,
    TopDownSource,
    TopDownTransform,
)
from vitpose_hf.geometry import PIXEL_STD
from vitpose_hf.image_processing_vitpose_hf import ViTPoseImageProcessor
from vitpose_hf.keypoint_metadata import KEYPOINT_DATASETS
from vitpose_hf.modeling_vitpose_hf import ViTPoseForPoseEstimation
from vitpose_hf.release.folder import add_remote_code
from vitpose_hf_cli import add_alias, build_command_parser, dash_spellings, user_errors

__all__ = [
    "HUB_IGNORE_PATTERNS",
    "StepWarmupSchedule",
    "TrainState",
    "TrainingProgress",
    "add_arguments",
    "build_optimizer",
    "evaluate",
    "files_to_push",
    "find_checkpoint",
    "finish",
    "freeze_parameters",
    "main",
    "make_processor",
    "maybe_evaluate",
    "parse_args",
    "predict_batch",
    "progress_bar",
    "resume",
    "run",
    "run_bottom_up",
    "save",
    "set_drop_path",
    "setup",
    "train_epoch",
    "train_step",
]

logger = logging.getLogger("vitpose_hf.training.train")

SIZES: dict[tuple[int, int], str] = {(p.hidden_size, p.num_hidden_layers): k for k, p in PRESET_SIZES.items()}
CHECKPOINT_DIR = "checkpoints"
# what --push-to-hub leaves out of the output folder
HUB_IGNORE_PATTERNS = [f"{CHECKPOINT_DIR}/*", "*.tmp", "*.tmp/*", "runs/*", ".gitignore"]


# ---------------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vitpose-hf train` (run with ``--help`` for the list)."""
    m = parser.add_argument_group("model (one of --model, --model-size, --config-name)")
    model = m.add_argument(
        "--model",
        dest="model_name_or_path",
        metavar="MODEL",
        help="vitpose_hf or transformers ViTPose checkpoint (folder or Hub id) to fine-tune",
    )
    add_alias(m, model, "--model_name_or_path", "--model-name-or-path")  # the transformers-script spelling
    m.add_argument(
        "--model-size", choices=list(PRESET_SIZES), help="build ViTPose-S/B/L/H from scratch (see --init-from)"
    )
    m.add_argument(
        "--paradigm",
        choices=["top-down", "bottom-up"],
        default="top-down",
        help="bottom-up: whole images, associative-embedding heads (one dataset; a top-down --model is converted, "
        "its position table resized)",
    )
    m.add_argument(
        "--init-from",
        help="transformers ViTMAEModel / ViTModel checkpoint (Hub id or folder), or an MAE "
        ".pth / .safetensors file, converted into the backbone (position embedding interpolated)",
    )
    m.add_argument("--config-name", help="config.json (or its folder) of the model to build from scratch")
    m.add_argument(
        "--config-overrides", help='comma-separated config overrides, e.g. "hidden_size=32,num_hidden_layers=2"'
    )
    m.add_argument(
        "--decoder",
        choices=list(DECODERS),
        default="classic",
        help="heatmap decoder for new models (minimal: linear per token + pixel shuffle, the paper's ablation)",
    )
    m.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("HEIGHT", "WIDTH"),
        help="input size of new models (default: 256 192)",
    )
    m.add_argument(
        "--experts",
        choices=["auto", "per_dataset", "none"],
        default="auto",
        help="ViTPose++ experts: one per keypoint layout (auto: when training several layouts), or none",
    )
    m.add_argument("--part-features", type=int, help="expert width (default: hidden_size / 4)")
    m.add_argument("--drop-path-rate", type=float, help="stochastic depth (default: per size, or the checkpoint's)")
    m.add_argument(
        "--freeze",
        action="append",
        choices=list(FREEZE_PARTS),
        default=[],
        help="keep these weights fixed (repeatable): attn = every block's attention (qkv, proj), ffn = every block's "
        "FFN (fc1, fc2, experts), backbone = the whole encoder (only the heads train)",
    )
    m.add_argument(
        "--freeze-blocks",
        type=int,
        default=0,
        metavar="N",
        help="keep the patch embedding, position embedding and the first N blocks fixed",
    )

    d = parser.add_argument_group("data")
    d.add_argument(
        "--dataset-name",
        action="append",
        required=True,
        help="Hub dataset id, save_to_disk folder or parquet folder (repeat for multi-dataset training)",
    )
    d.add_argument(
        "--dataset-layout",
        action="append",
        help="keypoint layout of each --dataset-name: built-in name (coco, aic, mpii, ap10k, ...) or layout "
        "json (default: the dataset's keypoint_info.json; a different one is refused without --force-layout)",
    )
    d.add_argument(
        "--force-layout",
        action="store_true",
        help="use --dataset-layout even where the dataset's own keypoint_info.json names another layout",
    )
    d.add_argument(
        "--dataset-ratio",
        type=float,
        nargs="+",
        action="extend",
        help="sampling share of each --dataset-name (default: proportional to size, as the official code)",
    )
    d.add_argument("--train-split", default="train", help="split to train on")
    d.add_argument("--validation-split", default="validation", help="split to evaluate on (skipped when missing)")
    d.add_argument(
        "--train-val-split",
        type=float,
        default=0.0,
        help="fraction of training images held out for validation when a dataset has no validation split",
    )
    d.add_argument(
        "--max-train-samples", type=int, help="use only the first N training images of each dataset (debugging)"
    )
    d.add_argument("--max-eval-samples", type=int, help="use only the first N validation images of each dataset")
    d.add_argument(
        "--streaming",
        action="store_true",
        help="stream the training split (datasets.IterableDataset); needs --max-train-steps",
    )
    d.add_argument("--shuffle-buffer-size", type=int, default=1000, help="streaming shuffle buffer in images")
    d.add_argument("--no-augmentation", action="store_true", help="plain crops (debugging, overfitting checks)")
    d.add_argument("--sigma", type=float, default=2.0, help="Gaussian sigma of the target heatmaps")
    d.add_argument("--dataloader-num-workers", type=int, default=4, help="data loading worker processes per process")
    d.add_argument("--cache-dir", help="datasets / Hub cache folder (default: the Hugging Face cache)")

    o = parser.add_argument_group("batch and schedule")
    o.add_argument("--per-device-train-batch-size", type=int, default=64, help="training crops per device and step")
    o.add_argument("--per-device-eval-batch-size", type=int, default=32, help="evaluation crops per device and batch")
    o.add_argument("--gradient-accumulation-steps", type=int, default=1, help="batches summed into one optimizer step")
    o.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute each block's activations in the backward pass: less memory, about 30%% slower",
    )
    o.add_argument(
        "--mixed-precision",
        choices=["no", "fp16", "bf16"],
        help="default: the accelerate config or launch flag",
    )
    o.add_argument("--num-train-epochs", type=int, default=210, help="epochs to train")
    o.add_argument("--max-train-steps", type=int, help="optimizer steps to train; overrides --num-train-epochs")
    o.add_argument(
        "--learning-rate",
        type=float,
        help="peak learning rate (default: 5e-4, or 1e-3 for multi-dataset ViTPose++)",
    )
    o.add_argument(
        "--layer-decay", type=float, help="layer-wise lr decay (default per size: S 0.8, B 0.75, L 0.8, H 0.85)"
    )
    o.add_argument(
        "--weight-decay", type=float, default=0.1, help="AdamW weight decay (none on biases, norms, position embedding)"
    )
    o.add_argument("--adam-beta1", type=float, default=0.9, help="AdamW beta1")
    o.add_argument("--adam-beta2", type=float, default=0.999, help="AdamW beta2")
    o.add_argument("--adam-epsilon", type=float, default=1e-8, help="AdamW epsilon")
    o.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0 = off)")
    o.add_argument("--warmup-steps", type=int, default=500, help="steps of linear lr warm-up")
    warmup = o.add_argument(
        "--warmup-start-factor",
        dest="warmup_ratio",
        type=float,
        default=0.001,
        metavar="F",
        help="lr factor at step 0 of the warm-up, rising linearly to 1 (mmcv's warmup_ratio; NOT transformers' "
        "warmup_ratio, which is a fraction of the training steps)",
    )
    add_alias(o, warmup, "--warmup_ratio", "--warmup-ratio")  # the old, mmcv-style name
    o.add_argument(
        "--lr-steps",
        type=float,
        nargs="+",
        help="lr x --lr-gamma at these epochs (or steps, see --lr-step-unit); default 170/210 and 200/210 of training",
    )
    o.add_argument("--lr-step-unit", choices=["epoch", "step"], default="epoch", help="unit of --lr-steps")
    o.add_argument("--lr-gamma", type=float, default=0.1, help="lr factor at each of --lr-steps")

    s = parser.add_argument_group("saving, evaluation, resuming")
    s.add_argument("--output-dir", required=True, help="folder for the model, checkpoints and logs (required)")
    s.add_argument("--checkpointing-steps", help="save_state every N optimizer steps, or 'epoch'")
    s.add_argument("--checkpoints-total-limit", type=int, help="keep only the newest N checkpoints")
    s.add_argument("--resume-from-checkpoint", help="checkpoint folder, or 'latest' (the newest under --output-dir)")
    s.add_argument("--eval-steps", type=int, help="evaluate every N steps (default: every 10 epochs and at the end)")
    s.add_argument("--eval-flip-test", action="store_true", help="average with flipped crops when evaluating")
    s.add_argument("--logging-steps", type=int, default=50, help="log the loss every N optimizer steps")
    s.add_argument("--push-to-hub", action="store_true", help="upload the output folder to the Hub at the end")
    s.add_argument("--hub-model-id", help="repo id for --push-to-hub (default: the output folder's name)")
    s.add_argument("--hub-token", help="Hub token (default: the logged-in one)")
    s.add_argument("--hub-private-repo", action="store_true", help="create the Hub repo as private")
    s.add_argument("--report-to", default="none", help="trackers: tensorboard, wandb, all, none")
    s.add_argument("--seed", type=int, default=0, help="random seed")
    s.add_argument("--cpu", action="store_true", help="train on the CPU even when an accelerator is present")
    s.add_argument("--no-progress", action="store_true", help="no progress bar (the log lines stay)")
    dash_spellings(parser)  # --output-dir and --output_dir alike


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options of `vitpose-hf train` from ``argv`` (dashed or underscore spellings)."""
    parser, _ = build_command_parser("train")
    return parser.parse_args(None if argv is None else list(argv))


def _check_args(args: argparse.Namespace) -> None:
    sources = [bool(args.model_name_or_path), bool(args.model_size), bool(args.config_name)]
    if sum(sources) != 1:
        raise ValueError("give exactly one of --model, --model-size, --config-name")
    if args.init_from and args.model_name_or_path:
        raise ValueError("--init-from initialises a new model (--model-size / --config-name), not --model")
    n = len(args.dataset_name)
    if args.dataset_layout and len(args.dataset_layout) != n:
        raise ValueError(f"give one --dataset-layout per --dataset-name ({n}), got {len(args.dataset_layout)}")
    if args.dataset_ratio and len(args.dataset_ratio) != n:
        raise ValueError(f"give one --dataset-ratio per --dataset-name ({n}), got {len(args.dataset_ratio)}")
    if args.streaming and args.max_train_steps is None:
        raise ValueError("--streaming needs --max-train-steps (the length of a stream is not known in advance)")
    if args.checkpointing_steps not in (None, "epoch") and not str(args.checkpointing_steps).isdigit():
        raise ValueError(f"--checkpointing-steps must be an integer or 'epoch', got {args.checkpointing_steps!r}")


def parse_overrides(text: str | None) -> dict[str, Any]:
    """``"a=1,b=[64,48],c=simple"`` -> ``{"a": 1, "b": [64, 48], "c": "simple"}`` (JSON values, else strings)."""
    if not text:
        return {}
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{("
        depth -= ch in "]})"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in parts)):
        if "=" not in part:
            raise ValueError(f"--config-overrides entries are key=value, got {part!r}")
        key, value = part.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value.strip()
    return out


# ---------------------------------------------------------------------------------------------------------------
# Optimiser and schedule
# ---------------------------------------------------------------------------------------------------------------
class StepWarmupSchedule:
    """lr factor of step t: linear warm-up from ``warmup_ratio`` over ``warmup_steps`` (mmcv's 'linear' warm-up),
    times ``gamma`` per passed milestone (steps). A class, not a lambda, so the scheduler state is saved whole."""

    def __init__(self, warmup_steps: int, warmup_ratio: float, milestones: Sequence[int], gamma: float) -> None:
        self.warmup_steps = int(warmup_steps)
        self.warmup_ratio = float(warmup_ratio)
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)

    def __call__(self, step: int) -> float:
        factor = self.gamma ** sum(step >= m for m in self.milestones)
        if step < self.warmup_steps:
            factor *= 1 - (1 - step / self.warmup_steps) * (1 - self.warmup_ratio)
        return factor


def build_optimizer(
    model: ViTPoseForPoseEstimation,
    lr: float,
    weight_decay: float,
    layer_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over the model's layer-decay groups: each group's lr is ``lr * lr_scale``."""
    groups = model.param_groups(weight_decay=weight_decay, layer_decay=layer_decay)
    for group in groups:
        group.pop("names", None)
        group["lr"] = lr * group["lr_scale"]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


@dataclass
class TrainingProgress:
    """Loop state saved with every checkpoint (`Accelerator.register_for_checkpointing`)."""

    step: int = 0
    steps_per_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    best_metrics: dict = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "steps_per_epoch": self.steps_per_epoch,
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "best_metrics": json.dumps(self.best_metrics),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        self.steps_per_epoch = int(state["steps_per_epoch"])
        self.best_metric = state.get("best_metric")
        self.best_step = state.get("best_step")
        self.best_metrics = json.loads(state.get("best_metrics") or "{}")


# ---------------------------------------------------------------------------------------------------------------
# Models: from a checkpoint, a size preset or a config (MAE / ViT initialisation and new heads or experts: the
# checkpoint surgery of `conversion`)
# ---------------------------------------------------------------------------------------------------------------
FREEZE_PARTS = ("attn", "ffn", "backbone")


def freeze_parameters(model: ViTPoseForPoseEstimation, parts: Sequence[str] = (), first_blocks: int = 0) -> list[str]:
    """Set ``requires_grad=False`` on the chosen weights (`FREEZE_PARTS`, and the embeddings plus the first
    ``first_blocks`` blocks); returns the frozen names. Frozen weights get no optimiser state and no weight decay.

    The norms in front of attention and FFN (norm1, norm2) stay trainable, as in the paper's MHSA / FFN ablation.
    """
    unknown = sorted(set(parts) - set(FREEZE_PARTS))
    if unknown:
        raise ValueError(f"unknown --freeze part(s) {unknown}; choose from {list(FREEZE_PARTS)}")
    depth = model.config.num_hidden_layers
    if not 0 <= first_blocks <= depth:
        raise ValueError(f"--freeze-blocks must be in 0..{depth} (the encoder's depth), got {first_blocks}")
    frozen = []
    for name, param in model.named_parameters():
        inner = name.removeprefix("backbone.")
        block = int(inner.split(".")[1]) if inner.startswith("blocks.") else None
        module = inner.split(".")[2] if block is not None else None
        if (
            ("backbone" in parts and name.startswith("backbone."))
            or ("attn" in parts and module == "attn")
            or ("ffn" in parts and module == "mlp")
            or (first_blocks and inner.startswith(("patch_embed.", "pos_embed")) and name.startswith("backbone."))
            or (block is not None and block < first_blocks)
        ):
            param.requires_grad_(False)
            frozen.append(name)
    if frozen:
        logger.info(
            f"frozen: {len(frozen)} tensors ({sum(p.numel() for p in model.parameters() if not p.requires_grad)} "
            "weights)"
        )
    return frozen


def set_drop_path(model: ViTPoseForPoseEstimation, rate: float) -> None:
    """Set the stochastic-depth rate (linear from 0 at block 0 to ``rate`` at the last block)."""
    model.config.drop_path_rate = float(rate)
    blocks = model.backbone.blocks
    depth = len(blocks)
    for i, block in enumerate(blocks):
        block.drop_path1.rate = block.drop_path2.rate = float(rate) * i / max(depth - 1, 1)


def _size_key(config: ViTPoseConfig) -> str | None:
    return SIZES.get((config.hidden_size, config.num_hidden_layers))


def build_model(args: argparse.Namespace, layouts: list[dict]) -> ViTPoseForPoseEstimation:
    """The model to train: heads = ``layouts`` (unique by name), experts per ``--experts``."""
    want_experts = args.experts == "per_dataset" or (args.experts == "auto" and len(layouts) > 1)
    overrides = parse_overrides(args.config_overrides)
    if args.model_name_or_path:
        from vitpose_hf.inference.hub import hub_load

        model = hub_load(ViTPoseForPoseEstimation.from_pretrained, args.model_name_or_path, cache_dir=args.cache_dir)
        names = model.config.dataset_names
        same_heads = all(
            d["name"] in names
            and model.config.datasets[names.index(d["name"])]["keypoint_names"] == d["keypoint_names"]
            for d in layouts
        )
        experts_ok = (model.config.num_experts > 1) == want_experts or (args.experts == "auto" and same_heads)
        if not (same_heads and experts_ok) or overrides:
            if overrides:
                for key, value in overrides.items():
                    setattr(model.config, key, value)
            model = adapt_model(model, layouts, len(layouts) if want_experts else 1, args.part_features)
    else:
        if args.model_size:
            preset = f"vitpose{'-plus' if want_experts else ''}-{args.model_size}"
            kwargs: dict[str, Any] = {"datasets": layouts, "decoder": args.decoder}
            if want_experts:
                kwargs["num_experts"] = len(layouts)
            if args.image_size:
                kwargs["image_size"] = tuple(args.image_size)
            kwargs.update(overrides)
            if want_experts and "part_features" not in overrides:
                width = kwargs.get("hidden_size", ViTPoseConfig.from_preset(preset).hidden_size)
                kwargs["part_features"] = args.part_features or width // 4
            config = ViTPoseConfig.from_preset(preset, **kwargs)
        else:
            path = args.config_name
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            with open(path, encoding="utf-8") as f:
                config_dict = json.load(f)
            for key in ("model_type", "transformers_version", "architectures", "auto_map", "_name_or_path"):
                config_dict.pop(key, None)
            config_dict.update(datasets=layouts, decoder=config_dict.get("decoder", args.decoder))
            if args.image_size:
                config_dict["image_size"] = list(args.image_size)
            config_dict.update(overrides)
            if want_experts:
                config_dict["num_experts"] = len(layouts)
                config_dict["part_features"] = (
                    args.part_features or config_dict.get("part_features") or config_dict.get("hidden_size", 768) // 4
                )
            else:
                config_dict.update(num_experts=1, part_features=0)
            config = ViTPoseConfig(**config_dict)
        model = ViTPoseForPoseEstimation(config)
        if args.init_from:
            load_vit_backbone(model, args.init_from, args.cache_dir)
    if args.drop_path_rate is not None:
        set_drop_path(model, args.drop_path_rate)
    freeze_parameters(model, getattr(args, "freeze", None) or (), getattr(args, "freeze_blocks", 0) or 0)
    return model


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class DataSpec:
    """One --dataset-name: its layout, splits and sampling ratio."""

    name: str
    layout: dict
    train: Any
    validation: Any
    ratio: float | None
    head: int = 0
    counts: Counter = field(default_factory=Counter)


def load_data_specs(args: argparse.Namespace) -> list[DataSpec]:
    from vitpose_hf.inference.hub import check_local_path, hub_reachable, unreachable_error

    specs = []
    for n, name in enumerate(args.dataset_name):
        check_local_path(name, "dataset", "--dataset-name")
        if not os.path.isdir(name) and not hub_reachable():
            try:  # a cached Hub dataset still loads offline
                cached = load_image_split(name, args.train_split, streaming=False, cache_dir=args.cache_dir)
            except OSError:
                cached = None
            if cached is None:
                raise unreachable_error(name, "dataset", "--dataset-name")
        if args.dataset_layout:
            layout = read_layout(args.dataset_layout[n])
            own = find_layout(name) if os.path.isdir(name) else None  # a Hub look-up would cost a round trip
            if own is not None and own["keypoint_names"] != layout["keypoint_names"] and not args.force_layout:
                raise ValueError(
                    f"--dataset-layout {args.dataset_layout[n]!r} ({layout['name']}, {len(layout['keypoint_names'])} "
                    f"keypoints) differs from the layout stored with {name!r} ({own['name']}, "
                    f"{len(own['keypoint_names'])} keypoints); drop --dataset-layout, or pass --force-layout"
                )
        else:
            layout = find_layout(name)
            if layout is None:
                raise ValueError(
                    f"no keypoint layout for {name!r}: pass --dataset-layout (coco, aic, mpii, ap10k, ... or a json)"
                )
        train = load_image_split(name, args.train_split, streaming=args.streaming, cache_dir=args.cache_dir)
        if train is None:
            raise ValueError(f"{name!r} has no {args.train_split!r} split")
        validation = load_image_split(name, args.validation_split, streaming=False, cache_dir=args.cache_dir)
        if validation is None and args.train_val_split > 0:
            if args.streaming:
                raise ValueError("--train-val-split cannot split a streamed dataset; give it a validation split")
            parts = train.train_test_split(test_size=args.train_val_split, seed=args.seed)
            train, validation = parts["train"], parts["test"]
        if args.max_train_samples and not args.streaming:
            train = train.select(range(min(args.max_train_samples, train.num_rows)))
        elif args.max_train_samples:
            train = train.take(args.max_train_samples)
        if validation is not None and args.max_eval_samples:
            validation = validation.select(range(min(args.max_eval_samples, validation.num_rows)))
        ratio = args.dataset_ratio[n] if args.dataset_ratio else None
        specs.append(DataSpec(name, layout, train, validation, ratio))
    return specs


def unique_layouts(specs: Sequence[DataSpec]) -> list[dict]:
    """One layout per head name; datasets with the same layout name share a head (and must agree on it)."""
    layouts: dict[str, dict] = {}
    for spec in specs:
        known = layouts.get(spec.layout["name"])
        if known is not None and known["keypoint_names"] != spec.layout["keypoint_names"]:
            raise ValueError(f"two datasets use the layout name {spec.layout['name']!r} with different keypoints")
        layouts.setdefault(spec.layout["name"], spec.layout)
    return list(layouts.values())


def coco_ground_truth(images: Any, num_keypoints: int) -> dict[str, Any]:
    """COCO ground truth of an image-level split (image ids = row numbers; malformed annotations left out)."""
    columns = [c for c in ("width", "height", "objects") if c in images.column_names]
    gt_images, annotations, categories = [], [], set()
    for row_index, row in enumerate(images.select_columns(columns)):
        gt_images.append({"id": row_index, "width": row.get("width"), "height": row.get("height")})
        for obj in row["objects"] or []:
            status, _, _ = check_instance(obj, num_keypoints, row.get("width"), row.get("height"))
            if status in ("malformed", "non_finite", "wrong_num_keypoints"):
                continue
            kps = np.asarray(obj["keypoints"], dtype=np.float64).reshape(-1)
            ann = {
                "id": len(annotations) + 1,
                "image_id": row_index,
                "category_id": int(obj.get("category_id") or 1),
                "bbox": [float(v) for v in obj["bbox"]],
                "keypoints": kps.tolist(),
                "num_keypoints": int((kps[2::3] > 0).sum()),
                "iscrowd": int(obj.get("iscrowd") or 0),
            }
            if obj.get("area") is not None:
                ann["area"] = float(obj["area"])
            categories.add(ann["category_id"])
            annotations.append(ann)
    return {
        "images": gt_images,
        "annotations": annotations,
        "categories": [{"id": c, "name": str(c)} for c in sorted(categories)] or [{"id": 1, "name": "1"}],
    }


@dataclass
class EvalSet:
    name: str
    head: int
    layout: dict
    dataset: TopDownDataset
    loader: Any
    ground_truth: dict
    transform: TopDownTransform


# ---------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def predict_batch(
    model: torch.nn.Module,
    processor: ViTPoseImageProcessor,
    batch: Mapping[str, torch.Tensor],
    use_udp: bool,
    flip_test: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss, image keypoints ``(B, K, 2)`` and scores ``(B, K)`` of one evaluation batch.

    Decoding is the processor's `post_process_pose_estimation` (flip test, decoder, crop-to-image) with the crops
    of the batch (``center``, ``scale``) cut with ``use_udp``, the setting of the batch's dataset.
    """
    out = model(
        pixel_values=batch["pixel_values"],
        dataset_index=batch["dataset_index"],
        labels=batch["labels"],
        target_weight=batch["target_weight"],
    )
    flipped = None
    if flip_test:
        flipped = model(
            pixel_values=processor.flip_pixel_values(batch["pixel_values"]), dataset_index=batch["dataset_index"]
        )
    crops = {"center": batch["center"], "scale": batch["scale"], "use_udp": bool(use_udp)}
    people = [
        p
        for image in processor.post_process_pose_estimation(out, flip_outputs=flipped, crop_metadata=crops)
        for p in image
    ]
    points = torch.stack([p["keypoints"] for p in people])
    scores = torch.stack([p["scores"] for p in people])
    return out.loss, points, scores


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    eval_sets: Sequence[EvalSet],
    accelerator: Any,
    flip_test: bool = False,
    processor: ViTPoseImageProcessor | None = None,
) -> dict[str, dict[str, float]]:
    """Validation loss and COCO keypoint AP (GT boxes, official rescoring + OKS-NMS) per evaluation set.

    Keypoints are decoded by ``processor`` (default: the one saved with the model, `make_processor`), each set with
    its own dataset's UDP setting. AP needs the layout's OKS sigmas and pycocotools; without them only the loss is
    reported.
    """
    from accelerate.utils import broadcast_object_list

    if processor is None:
        processor = make_processor(accelerator.unwrap_model(model).config)
    was_training = model.training
    model.eval()
    results: dict[str, dict[str, float]] = {}
    for es in eval_sets:
        parts: dict[str, list[torch.Tensor]] = {"points": [], "scores": [], "instance": [], "loss": [], "scale": []}
        for batch in es.loader:
            loss, points, scores = predict_batch(model, processor, batch, es.transform.use_udp, flip_test)
            b = points.shape[0]
            gathered = accelerator.gather_for_metrics(
                {
                    "points": points.float().contiguous(),
                    "scores": scores.float().contiguous(),
                    "instance": batch["instance"],
                    "loss": loss.detach().float().expand(b).contiguous(),
                    "scale": batch["scale"].float(),
                }
            )
            for key, value in gathered.items():
                parts[key].append(value.cpu())
        metrics: dict[str, float] = {}
        if accelerator.is_main_process and parts["points"]:
            points, scores, instances, scales = (
                torch.cat(parts[key]).numpy() for key in ("points", "scores", "instance", "scale")
            )
            metrics["loss"] = float(torch.cat(parts["loss"]).mean())
            table = es.dataset.sources[0].table
            poses = [
                {
                    "image_id": int(table.rows[i]),
                    "keypoints": points[j],
                    "scores": scores[j],
                    "area": float(scales[j, 0] * scales[j, 1] * PIXEL_STD**2),
                    "box_score": 1.0,
                }
                for j, i in enumerate(instances.tolist())
            ]
            if es.layout.get("sigmas"):
                try:
                    from vitpose_hf.evaluation.metrics import evaluate_top_down

                    metrics.update(evaluate_top_down(es.ground_truth, poses, es.layout))
                except ImportError as exc:  # pycocotools missing: validation loss only
                    logger.warning(f"COCO AP unavailable ({exc}); using the validation loss")
        shared = [metrics]
        broadcast_object_list(shared)
        results[es.name] = shared[0]
    model.train(was_training)
    return results


def summary_metric(results: Mapping[str, Mapping[str, float]]) -> tuple[str, float]:
    """(name, value to maximise): mean AP over the evaluation sets when every set has one, else -mean loss."""
    aps = [r["AP"] for r in results.values() if r.get("AP") is not None and r["AP"] >= 0]
    if results and len(aps) == len(results):
        return "AP", float(np.mean(aps))
    losses = [r["loss"] for r in results.values() if "loss" in r]
    return "loss", -float(np.mean(losses)) if losses else float("-inf")


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints and saving
# ---------------------------------------------------------------------------------------------------------------
def find_checkpoint(output_dir: str | os.PathLike, which: str = "latest") -> str | None:
    """The checkpoint folder for ``--resume-from-checkpoint``: ``which`` itself, or the newest complete one."""
    if which != "latest":
        if not os.path.isdir(which):
            raise ValueError(f"checkpoint folder not found: {which!r}")
        return which
    folder = Path(output_dir) / CHECKPOINT_DIR
    steps = []
    for path in folder.glob("step_*") if folder.is_dir() else []:
        suffix = path.name[len("step_") :]
        if path.is_dir() and suffix.isdigit():  # "step_N.tmp" = interrupted while saving
            steps.append((int(suffix), str(path)))
    return max(steps)[1] if steps else None


def save_checkpoint(accelerator: Any, output_dir: str, step: int, total_limit: int | None) -> str:
    """`save_state` into ``checkpoints/step_N`` atomically (written as ``step_N.tmp``, then renamed)."""
    folder = Path(output_dir) / CHECKPOINT_DIR
    final, tmp = folder / f"step_{step}", folder / f"step_{step}.tmp"
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if total_limit:
            done = sorted((int(p.name[5:]), p) for p in folder.glob("step_*") if p.name[5:].isdigit())
            for _, old in done[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return str(final)


def files_to_push(output_dir: str | os.PathLike) -> list[str]:
    """The files `--push-to-hub` uploads: the output folder without checkpoints and temporary folders."""
    from huggingface_hub.utils import filter_repo_objects

    root = Path(output_dir)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return list(filter_repo_objects(files, ignore_patterns=HUB_IGNORE_PATTERNS))


def make_processor(config: ViTPoseConfig) -> ViTPoseImageProcessor:
    """The image processor saved next to the weights.

    ``use_udp`` is the datasets' official setting when they agree (one bool), else None: per dataset, from each
    dataset's ``use_udp`` (the official ViTPose++ recipe trains COCO / MPII with UDP, AIC / AP-10K / WholeBody
    without). Built-in layouts are saved by name, others as their info dict.
    """
    datasets = config.datasets
    names = [d["name"] if _is_builtin(d) else d for d in datasets]
    flags = {bool(d["use_udp"]) for d in datasets}
    return ViTPoseImageProcessor(
        size={"height": config.image_size[0], "width": config.image_size[1]},
        use_udp=flags.pop() if len(flags) == 1 else None,
        dataset=names[0] if len(names) == 1 else names,
    )


def _is_builtin(info: Mapping[str, Any]) -> bool:
    """``info`` is the built-in layout of its name (keypoints, flip pairs and UDP setting): its name stands for it."""
    known = KEYPOINT_DATASETS.get(info["name"])
    return known is not None and all(known[key] == info[key] for key in ("keypoint_names", "flip_pairs", "use_udp"))


def save_model_folder(
    model: ViTPoseForPoseEstimation,
    folder: str,
    *,
    model_name: str,
    metrics: Mapping[str, Any] | None,
    dataset_ids: Mapping[str, str],
    base_model: str | None,
    training: Mapping[str, Any],
    notes: Sequence[str] = (),
) -> None:
    """``save_pretrained`` (safetensors) + processor config + model card, into ``folder``."""
    from vitpose_hf.training.model_card import build_model_card

    model.save_pretrained(folder, safe_serialization=True)
    make_processor(model.config).save_pretrained(folder)
    add_remote_code(folder)  # the card's trust_remote_code snippet needs the pipeline file and custom_pipelines
    card = build_model_card(
        model.config,
        model_name=model_name,
        metrics=metrics,
        dataset_ids=dataset_ids,
        base_model=base_model,
        training=training,
        notes=notes,
    )
    card.save(os.path.join(folder, "README.md"))


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------
def _force_cpu(args: argparse.Namespace) -> bool:
    """CPU when asked, or when launched on several processes without any accelerator (then gloo)."""
    if args.cpu:
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    try:
        from accelerate.utils import is_mps_available, is_npu_available, is_xpu_available

        others = is_xpu_available() or is_npu_available() or is_mps_available()
    except ImportError:
        others = False
    return not torch.cuda.is_available() and not others


def _rng_guard(device: torch.device) -> Any:
    """Keep the global RNG untouched (data-loader start-up and evaluation must not shift the training stream,
    or a resumed run, which starts its loader at another point, would draw other drop-path masks)."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    return torch.random.fork_rng(devices=devices)


def _batches(loader: Any, device: torch.device) -> Any:
    """Iterate ``loader``; its start-up (worker seeds drawn from the global RNG when the loader has no generator of
    its own, e.g. accelerate's dispatcher for streams) runs under `_rng_guard`."""
    iterator = iter(loader)
    first = True
    while True:
        try:
            if first:
                with _rng_guard(device):
                    batch = next(iterator)
                first = False
            else:
                batch = next(iterator)
        except StopIteration:
            return
        yield batch


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def build_train_loader(
    args: argparse.Namespace,
    specs: Sequence[DataSpec],
    config: ViTPoseConfig,
    augment: AugmentConfig,
    collator: TopDownCollator,
    device: torch.device,
) -> tuple[torch.utils.data.DataLoader, dict[str, dict[str, int]]]:
    """The training DataLoader (map-style with `MixedDatasetSampler`, or a stream) and the bad-annotation counts."""
    input_size, heatmap_size = tuple(config.image_size), tuple(config.heatmap_size)
    kwargs: dict[str, Any] = {
        "batch_size": args.per_device_train_batch_size,
        "num_workers": args.dataloader_num_workers,
        "collate_fn": collator,
        "pin_memory": device.type == "cuda",
        "generator": torch.Generator().manual_seed(args.seed),
    }
    if args.dataloader_num_workers > 0:
        kwargs.update(persistent_workers=not args.streaming, prefetch_factor=4)
    ratios = None
    if any(s.ratio is not None for s in specs):
        ratios = [s.ratio if s.ratio is not None else 1.0 for s in specs]
    if args.streaming:
        sources = [
            StreamSource(
                spec.name,
                spec.train,
                TopDownTransform(spec.layout, input_size, heatmap_size, augment, args.sigma),
                spec.head,
            )
            for spec in specs
        ]
        dataset = StreamingTopDownDataset(sources, ratios, seed=args.seed, shuffle_buffer=args.shuffle_buffer_size)
        return torch.utils.data.DataLoader(dataset, **kwargs), {}
    sources, skipped = [], {}
    for spec in specs:
        k = spec.layout["num_keypoints"]
        instances, counts = explode_instances(spec.train, k, name=f"{spec.name} [{args.train_split}]")
        spec.counts = counts
        skipped[spec.name] = {key: counts[key] for key in BAD_STATUSES if counts.get(key)}
        transform = TopDownTransform(spec.layout, input_size, heatmap_size, augment, args.sigma)
        sources.append(
            TopDownSource(
                spec.name,
                spec.train.select_columns(["image"]),
                InstanceTable.from_dataset(instances, k),
                transform,
                spec.head,
            )
        )
    sampler = MixedDatasetSampler([len(s.table) for s in sources], ratios, seed=args.seed)
    return torch.utils.data.DataLoader(TopDownDataset(sources), sampler=sampler, **kwargs), skipped


def build_eval_sets(
    args: argparse.Namespace,
    specs: Sequence[DataSpec],
    config: ViTPoseConfig,
    collator: TopDownCollator,
    main_process: bool,
) -> list[EvalSet]:
    """One evaluation set per dataset with a validation split (plain crops of the ground-truth boxes)."""
    input_size, heatmap_size = tuple(config.image_size), tuple(config.heatmap_size)
    eval_sets = []
    for spec in specs:
        if spec.validation is None:
            continue
        k = spec.layout["num_keypoints"]
        instances, _ = explode_instances(spec.validation, k, name=f"{spec.name} [{args.validation_split}]")
        if instances.num_rows == 0:
            continue
        transform = TopDownTransform(spec.layout, input_size, heatmap_size, None, args.sigma)
        dataset = TopDownDataset(
            [
                TopDownSource(
                    spec.name,
                    spec.validation.select_columns(["image"]),
                    InstanceTable.from_dataset(instances, k),
                    transform,
                    spec.head,
                )
            ]
        )
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=args.per_device_eval_batch_size,
            shuffle=False,
            num_workers=args.dataloader_num_workers,
            collate_fn=collator,
            generator=torch.Generator().manual_seed(args.seed),
        )
        gt = coco_ground_truth(spec.validation, k) if main_process else {}
        eval_sets.append(EvalSet(spec.name, spec.head, spec.layout, dataset, loader, gt, transform))
    return eval_sets


@dataclass
class LossWindow:
    """What the next log line reports. The loss stays on the device between log lines (no host sync per step)."""

    loss: torch.Tensor
    batches: int = 0
    samples: int = 0
    data_wait: float = 0.0
    start: float = field(default_factory=time.perf_counter)

    def reset(self) -> None:
        self.loss, self.batches, self.samples, self.data_wait = torch.zeros_like(self.loss), 0, 0, 0.0
        self.start = time.perf_counter()


@dataclass
class TrainState:
    """What the loop functions share: built by `setup`, advanced by `train_step`, closed by `finish`."""

    args: argparse.Namespace
    accelerator: Any
    model: torch.nn.Module  # as prepared by the accelerator (DDP / FSDP wrapper)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: Any
    eval_sets: list[EvalSet]
    specs: list[DataSpec]
    progress: TrainingProgress  # step and best metric; saved with every checkpoint
    output_dir: Path
    steps_per_epoch: int
    num_epochs: int
    max_steps: int
    hyper: dict[str, Any]  # the training table of the model cards
    skipped: dict[str, dict[str, int]]  # bad training annotations per dataset
    window: LossWindow
    start_epoch: int = 0
    skip_batches: int = 0  # batches of start_epoch already trained (resume)
    last_eval: dict[str, dict[str, float]] = field(default_factory=dict)
    last_eval_step: int = -1
    # (state, batch, student outputs) -> loss; None = the model's GT loss (distillation sets its own)
    loss_fn: Any = None
    bar: Any = None  # the tqdm progress bar of the optimizer steps (main process), set by `run`

    @property
    def step(self) -> int:
        return self.progress.step

    @property
    def checkpoint_every(self) -> int | None:
        steps = self.args.checkpointing_steps
        return None if steps in (None, "epoch") else int(steps)


def setup(
    args: argparse.Namespace, prepare_model: Callable[[ViTPoseForPoseEstimation], None] | None = None
) -> TrainState:
    """Logging, data, model, accelerator, optimiser and schedule of a run (nothing trained yet).

    ``prepare_model`` edits the built model (e.g. adds or freezes weights) before the optimiser sees it.
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs, PartialState
    from accelerate.utils import set_seed

    _check_args(args)
    output_dir = Path(args.output_dir)
    cpu = _force_cpu(args)
    process = PartialState(cpu=cpu)
    # no force=True: keep handlers that an embedding application (or pytest) installed
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("vitpose_hf").setLevel(logging.INFO if process.is_main_process else logging.WARNING)
    import datasets as hf_datasets

    if process.is_main_process:
        hf_datasets.utils.logging.set_verbosity_warning()
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / ".gitignore").write_text(f"{CHECKPOINT_DIR}/\n*.tmp/\n")
    else:
        hf_datasets.utils.logging.set_verbosity_error()
    hf_datasets.utils.logging.disable_progress_bar()

    set_seed(args.seed)
    with process.main_process_first():
        specs = load_data_specs(args)
    layouts = unique_layouts(specs)
    model = build_model(args, layouts)
    if getattr(args, "gradient_checkpointing", False):
        # transformers 5 renamed it (the old name warns); 4.x has only the old one
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    if prepare_model is not None:
        prepare_model(model)
    config = model.config
    for spec in specs:
        spec.head = config.dataset_to_index(spec.layout["name"])
    size = _size_key(config)
    multi = len(layouts) > 1
    lr = args.learning_rate if args.learning_rate is not None else (1e-3 if multi and config.num_experts > 1 else 5e-4)
    if args.layer_decay is not None:
        layer_decay = args.layer_decay
    else:
        layer_decay = LAYER_DECAY[size][1 if config.num_experts > 1 else 0] if size else 1.0

    find_unused = len(model.heads) > 1 or config.num_experts > 1
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=str(output_dir),
        cpu=cpu,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)],
    )
    logger.info(
        f"{accelerator.num_processes} process(es), device {accelerator.device}, backend "
        f"{accelerator.state.backend or 'none'}, mixed precision "
        f"{accelerator.mixed_precision}; model {config.hidden_size}x{config.num_hidden_layers}, heads "
        f"{config.dataset_names}, experts {config.num_experts}; lr {lr}, layer decay {layer_decay}"
    )

    # data
    augment = AugmentConfig(enabled=not args.no_augmentation)
    collator = TopDownCollator(max(config.num_keypoints))
    with accelerator.main_process_first():
        train_loader, skipped = build_train_loader(args, specs, config, augment, collator, accelerator.device)
        eval_sets = build_eval_sets(args, specs, config, collator, accelerator.is_main_process)
    input_size = tuple(config.image_size)

    # optimiser, schedule
    optimizer = build_optimizer(
        model, lr, args.weight_decay, layer_decay, (args.adam_beta1, args.adam_beta2), args.adam_epsilon
    )
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    for es in eval_sets:
        es.loader = accelerator.prepare(es.loader)

    if args.streaming:
        steps_per_epoch = args.max_train_steps
        num_epochs, max_steps = 1, args.max_train_steps
    else:
        steps_per_epoch = max(1, math.ceil(len(train_loader) / args.gradient_accumulation_steps))
        max_steps = args.max_train_steps
        if max_steps is None:
            max_steps = args.num_train_epochs * steps_per_epoch
        num_epochs = math.ceil(max_steps / steps_per_epoch)
    if args.lr_steps is None:
        milestones = [round(max_steps * f) for f in (170 / 210, 200 / 210)]
    elif args.lr_step_unit == "epoch":
        milestones = [round(e * steps_per_epoch) for e in args.lr_steps]
    else:
        milestones = [round(s) for s in args.lr_steps]
    schedule = StepWarmupSchedule(args.warmup_steps, args.warmup_ratio, milestones, args.lr_gamma)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    progress = TrainingProgress(steps_per_epoch=steps_per_epoch)
    accelerator.register_for_checkpointing(scheduler)
    accelerator.register_for_checkpointing(progress)

    total_batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    hyper = {
        "size": _size_key(config) or f"{config.hidden_size}x{config.num_hidden_layers}",
        "input size": f"{input_size[0]}x{input_size[1]}",
        "datasets": ", ".join(s.name for s in specs),
        "learning rate": lr,
        "layer decay": layer_decay,
        "weight decay": args.weight_decay,
        "betas": f"({args.adam_beta1}, {args.adam_beta2})",
        "gradient clipping": args.max_grad_norm,
        "warm-up steps": args.warmup_steps,
        "lr milestones (steps)": str(milestones),
        "total batch size": total_batch,
        "optimizer steps": max_steps,
        "drop path": config.drop_path_rate,
        "mixed precision": accelerator.mixed_precision,
        "augmentation": "official" if augment.enabled else "none",
        "seed": args.seed,
    }
    if args.freeze or args.freeze_blocks:
        hyper["frozen"] = ", ".join(
            [*args.freeze, *([f"first {args.freeze_blocks} blocks"] if args.freeze_blocks else [])]
        )
    if accelerator.is_main_process:
        with open(output_dir / "training_args.json", "w", encoding="utf-8") as f:
            json.dump(_json_safe(vars(args)), f, indent=2)
    if args.report_to != "none":
        accelerator.init_trackers(
            "vitpose_hf_train", {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        )
    return TrainState(
        args=args,
        accelerator=accelerator,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=train_loader,
        eval_sets=eval_sets,
        specs=specs,
        progress=progress,
        output_dir=output_dir,
        steps_per_epoch=steps_per_epoch,
        num_epochs=num_epochs,
        max_steps=max_steps,
        hyper=hyper,
        skipped=skipped,
        window=LossWindow(torch.zeros((), device=accelerator.device)),
    )


def resume(state: TrainState) -> None:
    """With --resume-from-checkpoint: load the accelerator state and find where in which epoch the run stopped."""
    args, output_dir = state.args, state.output_dir
    if not args.resume_from_checkpoint:
        return
    path = find_checkpoint(output_dir, args.resume_from_checkpoint)
    if path is None:
        logger.warning(f"no checkpoint under {output_dir / CHECKPOINT_DIR}: starting from scratch")
        return
    state.accelerator.load_state(path)
    progress, steps_per_epoch = state.progress, state.steps_per_epoch
    if progress.steps_per_epoch != steps_per_epoch:
        logger.warning(
            f"the checkpoint had {progress.steps_per_epoch} steps per epoch, this run has {steps_per_epoch} "
            "(other data, batch size or process count): the data order will differ"
        )
    state.start_epoch = progress.step // steps_per_epoch
    state.skip_batches = (progress.step % steps_per_epoch) * args.gradient_accumulation_steps
    progress.steps_per_epoch = steps_per_epoch
    logger.info(
        f"resumed from {path} at step {progress.step} (epoch {state.start_epoch}, skipping "
        f"{state.skip_batches} batches)"
    )


def log_line(state: TrainState, record: dict[str, Any]) -> None:
    """One line of ``train_log.jsonl`` (main process) and of the trackers."""
    if state.accelerator.is_main_process:
        with open(state.output_dir / "train_log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(_json_safe(record)) + "\n")
    if state.args.report_to != "none":
        state.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record.get("step"))


def _log_progress(state: TrainState, epoch: int) -> None:
    """The log line of the loss window that ends at this step; starts a new window."""
    window, accelerator, lr = state.window, state.accelerator, state.scheduler.get_last_lr()[-1]
    elapsed = max(time.perf_counter() - window.start, 1e-9)
    mean_loss = float(accelerator.reduce(window.loss / max(window.batches, 1), "mean"))
    log_line(
        state,
        {
            "step": state.step,
            "epoch": epoch,
            "loss": mean_loss,
            "lr": lr,
            "samples_per_second": window.samples * accelerator.num_processes / elapsed,
            "data_wait_share": window.data_wait / elapsed,
        },
    )
    logger.info(
        f"step {state.step}/{state.max_steps} epoch {epoch} loss {mean_loss:.6f} "
        f"lr {lr:.3g} data wait {100 * window.data_wait / elapsed:.0f}%"
    )
    window.reset()


def train_step(state: TrainState, batch: Mapping[str, torch.Tensor], epoch: int) -> bool:
    """One batch (forward, backward, optimiser under gradient accumulation); after each optimiser step the log
    line, checkpoint and evaluation that are due. Returns True when the run has reached its last step."""
    args, accelerator, model = state.args, state.accelerator, state.model
    with accelerator.accumulate(model):
        outputs = model(
            pixel_values=batch["pixel_values"],
            dataset_index=batch["dataset_index"],
            labels=batch["labels"],
            target_weight=batch["target_weight"],
        )
        loss = outputs.loss if state.loss_fn is None else state.loss_fn(state, batch, outputs)
        accelerator.backward(loss)
        if accelerator.sync_gradients and args.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        state.optimizer.step()
        state.optimizer.zero_grad(set_to_none=True)
    state.window.loss += loss.detach().float()
    state.window.batches += 1
    state.window.samples += batch["pixel_values"].shape[0]
    if not accelerator.sync_gradients:
        return False
    state.scheduler.step()
    state.progress.step += 1
    step = state.step
    if state.bar is not None:
        state.bar.update(1)
    if step % args.logging_steps == 0 or step == state.max_steps or step == 1:
        _log_progress(state, epoch)
    if state.checkpoint_every and step % state.checkpoint_every == 0:
        path = save_checkpoint(accelerator, str(state.output_dir), step, args.checkpoints_total_limit)
        logger.info(f"checkpoint {path}")
    maybe_evaluate(state)
    return step >= state.max_steps


def train_epoch(state: TrainState, epoch: int) -> None:
    """The batches of one epoch (after a resume, those not trained yet), then the epoch's checkpoint / evaluation."""
    args, accelerator = state.args, state.accelerator
    state.train_loader.set_epoch(epoch)
    loader = state.train_loader
    if state.skip_batches:
        loader = accelerator.skip_first_batches(loader, state.skip_batches)
    state.skip_batches = 0
    wait_start = time.perf_counter()
    for batch in _batches(loader, accelerator.device):
        state.window.data_wait += time.perf_counter() - wait_start
        if train_step(state, batch, epoch):
            break
        wait_start = time.perf_counter()
    if args.checkpointing_steps == "epoch":
        path = save_checkpoint(accelerator, str(state.output_dir), state.step, args.checkpoints_total_limit)
        logger.info(f"checkpoint {path}")
    maybe_evaluate(state, epoch_end=epoch)


def maybe_evaluate(state: TrainState, epoch_end: int | None = None) -> None:
    """Evaluate when due: every --eval-steps optimiser steps, else at the end of every 10th epoch."""
    args = state.args
    if epoch_end is None:
        due = bool(args.eval_steps) and state.step % args.eval_steps == 0
    else:
        due = not args.eval_steps and (epoch_end + 1) % 10 == 0 and state.step != state.last_eval_step
    if due:
        evaluate_now(state)


def evaluate_now(state: TrainState) -> None:
    """Evaluate (global RNG untouched), log the metrics, and save ``best/`` when the summary metric improves."""
    if not state.eval_sets:
        return
    with _rng_guard(state.accelerator.device):
        state.last_eval = evaluate(state.model, state.eval_sets, state.accelerator, state.args.eval_flip_test)
    state.last_eval_step = step = state.step
    name, value = summary_metric(state.last_eval)
    record = {"step": step, "eval_metric": name, "eval_value": value}
    for set_name, values in state.last_eval.items():
        record.update({f"eval/{set_name}/{k}": v for k, v in values.items()})
    log_line(state, record)
    logger.info(f"step {step}: evaluation {json.dumps(_json_safe(state.last_eval))}")
    progress = state.progress
    if progress.best_metric is None or value > progress.best_metric:
        progress.best_metric, progress.best_step, progress.best_metrics = value, step, state.last_eval
        save(state, state.output_dir / "best", state.last_eval, best=True)


def save(state: TrainState, folder: Path, metrics: Mapping[str, Any], best: bool = False) -> None:
    """The model folder (weights, processor, card) into ``folder``; the final one also gets a dense
    ``per_dataset/<name>`` export of each head of a multi-dataset model. Collective: every process calls it."""
    args, accelerator, specs = state.args, state.accelerator, state.specs
    state_dict = accelerator.get_state_dict(state.model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(state.model)
        with torch.device("meta"):  # no weight init: it would draw from the global RNG and change the run
            export = ViTPoseForPoseEstimation(unwrapped.config)
        export.load_state_dict({k: v.detach().cpu().clone() for k, v in state_dict.items()}, assign=True)
        export.eval()
        step = state.step
        name = args.hub_model_id or state.output_dir.name
        base_model = args.model_name_or_path or args.init_from
        dataset_ids = {s.layout["name"]: s.name for s in specs}
        notes = [f"Best validation checkpoint (step {step})." if best else f"Final weights after {step} steps."]
        card_metrics = None
        if metrics:
            card_metrics = {head: metrics.get(_set_name(specs, head), {}) for head in export.config.dataset_names}
        save_model_folder(
            export,
            str(folder),
            model_name=name,
            metrics=card_metrics,
            dataset_ids=dataset_ids,
            base_model=base_model,
            training=state.hyper,
            notes=notes,
        )
        if not best and len(export.heads) > 1:
            for head in export.config.dataset_names:
                single = export.single_dataset(head)
                m = metrics.get(_set_name(specs, head)) if metrics else None
                save_model_folder(
                    single,
                    str(folder / "per_dataset" / head),
                    model_name=f"{name}-{head}",
                    metrics={head: m} if m else None,
                    dataset_ids=dataset_ids,
                    base_model=base_model,
                    training=state.hyper,
                    notes=[f"Single-dataset export of the `{head}` head (expert merged into the FFN)."],
                )
        logger.info(f"Saved {'best ' if best else ''}model to {folder}")
    accelerator.wait_for_everyone()


def finish(state: TrainState) -> int:
    """Last evaluation (unless this step was just evaluated), the final model folder, ``all_results.json``, the
    optional push; ends the trackers. Returns 0."""
    args, accelerator, output_dir = state.args, state.accelerator, state.output_dir
    if state.eval_sets and state.last_eval_step != state.step:
        evaluate_now(state)
    save(state, output_dir, state.last_eval)
    if accelerator.is_main_process:
        results = {
            "step": state.step,
            "eval": state.last_eval,
            "best_step": state.progress.best_step,
            "best_eval": state.progress.best_metrics,
            "skipped_annotations": state.skipped,
        }
        with open(output_dir / "all_results.json", "w", encoding="utf-8") as f:
            json.dump(_json_safe(results), f, indent=2)
        for name, counts in state.skipped.items():
            if counts:
                logger.warning(f"{name}: skipped bad annotations: {format_counts(counts)}")
    if args.push_to_hub and accelerator.is_main_process:
        push_folder(output_dir, args.hub_model_id or output_dir.name, args.hub_token, args.hub_private_repo)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


def run(args: argparse.Namespace) -> int:
    """Train; returns 0. Raises :class:`vitpose_hf_cli.CommandError` (a ValueError) for bad options or data."""
    from vitpose_hf.inference.hub import progress_bars

    if getattr(args, "paradigm", "top-down") == "bottom-up":
        with progress_bars(not getattr(args, "no_progress", False)):
            return run_bottom_up(args)
    with progress_bars(not getattr(args, "no_progress", False)):
        with user_errors():  # bad options or data, found before any training: one line on the command line
            state = setup(args)
        resume(state)
        state.model.train()
        with progress_bar(state):
            for epoch in range(state.start_epoch, state.num_epochs):
                if state.step >= state.max_steps:
                    break
                train_epoch(state, epoch)
        return finish(state)


# options of the top-down Accelerate loop that the bottom-up loop does not have (name, default)
_TOP_DOWN_ONLY = (
    ("config_name", None),
    ("init_from", None),
    ("streaming", False),
    ("resume_from_checkpoint", None),
    ("checkpointing_steps", None),
    ("gradient_accumulation_steps", 1),
    ("gradient_checkpointing", False),
    ("mixed_precision", None),
    ("eval_steps", None),
    ("push_to_hub", False),
    ("freeze", []),
    ("freeze_blocks", 0),
    ("dataset_ratio", None),
    ("report_to", "none"),
    ("eval_flip_test", False),
)


def _bottom_up_model(args: argparse.Namespace, layout: dict) -> Any:
    """The bottom-up model of ``--model`` (bottom-up checkpoint, or top-down one converted) or ``--model-size``."""
    from vitpose_hf.configuration_vitpose_hf import ViTPoseBottomUpConfig
    from vitpose_hf.inference.bottom_up import is_bottom_up_checkpoint
    from vitpose_hf.inference.hub import hub_load
    from vitpose_hf.modeling_vitpose_hf_bottom_up import ViTPoseForBottomUpPoseEstimation

    overrides = parse_overrides(args.config_overrides)
    if args.image_size:
        overrides["image_size"] = tuple(args.image_size)
    if not args.model_name_or_path:
        return ViTPoseForBottomUpPoseEstimation(
            ViTPoseBottomUpConfig.from_preset(f"vitpose-{args.model_size}", datasets=[layout], **overrides)
        )
    source = args.model_name_or_path
    if is_bottom_up_checkpoint(source):
        if overrides:
            raise ValueError("--config-overrides / --image-size build new models; a bottom-up --model keeps its own")
        model = ViTPoseForBottomUpPoseEstimation.from_pretrained(source)
    else:
        top_down = hub_load(ViTPoseForPoseEstimation.from_pretrained, source, cache_dir=args.cache_dir)
        model = ViTPoseForBottomUpPoseEstimation.from_top_down(top_down, **overrides)
    if layout["name"] not in model.config.dataset_names:
        raise ValueError(
            f"the dataset's layout {layout['name']!r} is not a head of --model {source!r} "
            f"(heads: {model.config.dataset_names})"
        )
    return model


def run_bottom_up(args: argparse.Namespace) -> int:
    """``--paradigm bottom-up``: train with :func:`vitpose_hf.training.bottom_up.train_bottom_up` on the first
    ``--dataset-name`` and save the model and its processor config in ``--output-dir``. Returns 0."""
    from vitpose_hf.image_processing_vitpose_hf_bottom_up import ViTPoseBottomUpImageProcessor
    from vitpose_hf.training.bottom_up import BottomUpAugment, train_bottom_up

    with user_errors():
        sources = [bool(args.model_name_or_path), bool(args.model_size), bool(args.config_name)]
        if sum(sources) != 1:
            raise ValueError("give exactly one of --model, --model-size, --config-name")
        given = [f"--{name.replace('_', '-')}" for name, default in _TOP_DOWN_ONLY if getattr(args, name) != default]
        if given:
            raise ValueError(f"{', '.join(given)}: not available with --paradigm bottom-up (top-down training only)")
        if len(args.dataset_name) != 1:
            raise ValueError("--paradigm bottom-up trains on one --dataset-name")
        if args.per_device_train_batch_size < 1:
            raise ValueError(f"--per-device-train-batch-size must be positive, got {args.per_device_train_batch_size}")
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("vitpose_hf").setLevel(logging.INFO)
        torch.manual_seed(args.seed)
        spec = load_data_specs(args)[0]
        model = _bottom_up_model(args, spec.layout)
        if len(spec.train) == 0:
            raise ValueError(f"{spec.name!r}: the {args.train_split!r} split is empty")
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    batch = args.per_device_train_batch_size
    steps = args.max_train_steps or args.num_train_epochs * math.ceil(len(spec.train) / batch)
    logger.info(
        f"bottom-up training: {len(spec.train)} images of {spec.name} ({spec.layout['name']}), {steps} steps of "
        f"{batch}, device {device}; model {model.config.hidden_size}x{model.config.num_hidden_layers}, input "
        f"{tuple(model.config.image_size)}"
    )
    every = max(1, args.logging_steps)

    def log(step: int, terms: dict[str, float]) -> None:
        if (step + 1) % every == 0 or step + 1 == steps:
            logger.info(f"step {step + 1}/{steps}: " + ", ".join(f"{k} {v:.4g}" for k, v in terms.items()))

    kwargs: dict[str, Any] = {} if args.learning_rate is None else {"learning_rate": args.learning_rate}
    history = train_bottom_up(
        model.to(device),
        spec.train,
        steps=steps,
        batch_size=batch,
        weight_decay=args.weight_decay,
        augment=None if args.no_augmentation else BottomUpAugment(),
        dataset_index=spec.layout["name"],
        seed=args.seed,
        num_workers=args.dataloader_num_workers,
        callback=log,
        **kwargs,
    )
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    ViTPoseBottomUpImageProcessor.from_model_config(model.config).save_pretrained(output_dir)
    with open(output_dir / "all_results.json", "w", encoding="utf-8") as f:
        json.dump(_json_safe({"step": len(history), "paradigm": "bottom-up", "last_loss": history[-1:]}), f, indent=2)
    logger.info(
        f"saved the bottom-up model in {output_dir} (no evaluation during bottom-up training: score it with "
        f"`vitpose-hf eval --model {output_dir} ...`)"
    )
    return 0


@contextlib.contextmanager
def progress_bar(state: TrainState) -> Iterator[None]:
    """A bar of the optimizer steps with rate and ETA on the main process (not with ``--no-progress``)."""
    from tqdm.auto import tqdm

    disable = bool(getattr(state.args, "no_progress", False)) or not state.accelerator.is_main_process
    with tqdm(
        total=state.max_steps, initial=state.step, unit="step", desc="train", disable=disable, file=sys.stderr
    ) as bar:
        state.bar = bar
        try:
            yield
        finally:
            state.bar = None


def _set_name(specs: Sequence[DataSpec], layout_name: str) -> str:
    """The evaluation set (dataset name) that evaluates a head: the first dataset with that layout."""
    for spec in specs:
        if spec.layout["name"] == layout_name:
            return spec.name
    return layout_name


def push_folder(output_dir: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Create the Hub repo if needed and upload `files_to_push` of the output folder; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True, private=private)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(output_dir),
        ignore_patterns=HUB_IGNORE_PATTERNS,
        commit_message="vitpose-hf training run",
    )
    logger.info(f"pushed {output_dir} to {repo_id}")
    return str(info)


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
