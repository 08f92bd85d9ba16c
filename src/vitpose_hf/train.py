"""Train or fine-tune ViTPose / ViTPose++ with Accelerate (`vitpose-hf train`, `scripts/train.py`).

In the style of transformers' ``run_*_no_trainer.py`` scripts: one Accelerator, `accelerate launch` for DDP / FSDP /
multi-node, `save_state` checkpoints that resume exactly, evaluation during training, `save_pretrained` folders with
the processor config and a model card, optional `push_to_hub`.

Recipe defaults (official ViTPose configs): AdamW betas (0.9, 0.999), weight decay 0.1 (none on 1-D parameters,
biases and the position embedding), lr 5e-4 (1e-3 for multi-dataset ViTPose++), layer-wise lr decay 0.8 / 0.75 /
0.8 / 0.85 for S / B / L / H (0.8 for ViTPose++-H), gradient clipping 1.0, 500 steps of linear warm-up from 0.001 x,
then x0.1 at epochs 170 and 200 of 210 (the same fractions of any other length), drop path per size.

Several ``--dataset_name`` train one multi-dataset model: each dataset has a keypoint layout (a head; datasets with
the same layout share it) and, by default, its own ViTPose++ expert. Every sample carries its head index, batches
mix datasets, ``--dataset_ratio`` sets the sampling shares, and after training each head is also exported as a dense
single-dataset model under ``per_dataset/<name>``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .augment import (
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
from .codecs import flip_back
from .configuration_vitpose_hf import LAYER_DECAY, PRESET_SIZES, ViTPoseConfig
from .geometry import PIXEL_STD, crop_to_image
from .hub_dataset import (
    BAD_STATUSES,
    check_instance,
    explode_instances,
    find_layout,
    format_counts,
    load_image_split,
    read_layout,
)
from .keypoint_metadata import VITPOSE_PLUS_DATASETS, flip_indices
from .modeling_vitpose_hf import ViTPoseForPoseEstimation

__all__ = [
    "add_arguments",
    "parse_args",
    "run",
    "main",
    "StepWarmupSchedule",
    "TrainingProgress",
    "build_optimizer",
    "convert_vit_state_dict",
    "load_vit_backbone",
    "adapt_model",
    "set_drop_path",
    "find_checkpoint",
    "files_to_push",
    "HUB_IGNORE_PATTERNS",
]

logger = logging.getLogger("vitpose_hf.train")

SIZES: dict[tuple[int, int], str] = {(p.hidden_size, p.num_hidden_layers): k for k, p in PRESET_SIZES.items()}
CHECKPOINT_DIR = "checkpoints"
# what --push_to_hub leaves out of the output folder
HUB_IGNORE_PATTERNS = [f"{CHECKPOINT_DIR}/*", "*.tmp", "*.tmp/*", "runs/*", ".gitignore"]


# ---------------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vitpose-hf train` (run with ``--help`` for the list)."""
    m = parser.add_argument_group("model (one of --model_name_or_path, --model_size, --config_name)")
    m.add_argument("--model_name_or_path", help="vitpose_hf or transformers ViTPose checkpoint (folder or Hub id) to fine-tune")
    m.add_argument("--model_size", choices=list(PRESET_SIZES),
                   help="build ViTPose-S/B/L/H from scratch (see --init_from)")
    m.add_argument("--init_from", help="transformers ViTMAEModel / ViTModel checkpoint (Hub id or folder), or an MAE .pth / "
                   ".safetensors file, converted into the backbone (position embedding interpolated)")
    m.add_argument("--config_name", help="config.json (or its folder) of the model to build from scratch")
    m.add_argument("--config_overrides", help='comma-separated config overrides, e.g. "hidden_size=32,num_hidden_layers=2"')
    m.add_argument("--decoder", choices=["classic", "simple"], default="classic", help="heatmap decoder for new models")
    m.add_argument("--image_size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), help="input size of new models (256 192)")
    m.add_argument("--experts", choices=["auto", "per_dataset", "none"], default="auto",
                   help="ViTPose++ experts: one per keypoint layout (auto: when training several layouts), or none")
    m.add_argument("--part_features", type=int, help="expert width (default hidden_size / 4)")
    m.add_argument("--drop_path_rate", type=float, help="stochastic depth (default: per size, or the checkpoint's)")

    d = parser.add_argument_group("data")
    d.add_argument("--dataset_name", action="append", required=True,
                   help="Hub dataset id, save_to_disk folder or parquet folder (repeat for multi-dataset training)")
    d.add_argument("--dataset_layout", action="append",
                   help="keypoint layout of each --dataset_name: built-in name (coco, aic, mpii, ap10k, ...) or layout json "
                   "(default: the dataset's keypoint_info.json)")
    d.add_argument("--dataset_ratio", type=float, nargs="+", action="extend",
                   help="sampling share of each --dataset_name (default: proportional to size, as the official code)")
    d.add_argument("--train_split", default="train")
    d.add_argument("--validation_split", default="validation")
    d.add_argument("--train_val_split", type=float, default=0.0,
                   help="fraction of training images held out for validation when a dataset has no validation split")
    d.add_argument("--max_train_samples", type=int, help="use only the first N training images of each dataset (debugging)")
    d.add_argument("--max_eval_samples", type=int, help="use only the first N validation images of each dataset")
    d.add_argument("--streaming", action="store_true", help="stream the training split (datasets.IterableDataset); "
                   "needs --max_train_steps")
    d.add_argument("--shuffle_buffer_size", type=int, default=1000, help="streaming shuffle buffer (images)")
    d.add_argument("--no_augmentation", action="store_true", help="plain crops (debugging, overfitting checks)")
    d.add_argument("--sigma", type=float, default=2.0, help="Gaussian sigma of the target heatmaps (2)")
    d.add_argument("--dataloader_num_workers", type=int, default=4, help="data loading worker processes per process")
    d.add_argument("--cache_dir", help="datasets / Hub cache folder")

    o = parser.add_argument_group("batch and schedule")
    o.add_argument("--per_device_train_batch_size", type=int, default=64)
    o.add_argument("--per_device_eval_batch_size", type=int, default=32)
    o.add_argument("--gradient_accumulation_steps", type=int, default=1)
    o.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], help="default: accelerate config / launch flag")
    o.add_argument("--num_train_epochs", type=int, default=210)
    o.add_argument("--max_train_steps", type=int, help="overrides --num_train_epochs")
    o.add_argument("--learning_rate", type=float, help="default 5e-4, or 1e-3 for multi-dataset ViTPose++")
    o.add_argument("--layer_decay", type=float, help="layer-wise lr decay (default per size: S 0.8, B 0.75, L 0.8, H 0.85)")
    o.add_argument("--weight_decay", type=float, default=0.1)
    o.add_argument("--adam_beta1", type=float, default=0.9)
    o.add_argument("--adam_beta2", type=float, default=0.999)
    o.add_argument("--adam_epsilon", type=float, default=1e-8)
    o.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping (0 = off)")
    o.add_argument("--warmup_steps", type=int, default=500)
    o.add_argument("--warmup_ratio", type=float, default=0.001, help="lr factor at step 0 of the warm-up")
    o.add_argument("--lr_steps", type=float, nargs="+",
                   help="lr x --lr_gamma at these epochs (or steps, see --lr_step_unit); default 170/210 and 200/210 "
                   "of training")
    o.add_argument("--lr_step_unit", choices=["epoch", "step"], default="epoch")
    o.add_argument("--lr_gamma", type=float, default=0.1)

    s = parser.add_argument_group("saving, evaluation, resuming")
    s.add_argument("--output_dir", required=True)
    s.add_argument("--checkpointing_steps", help="save_state every N optimizer steps, or 'epoch'")
    s.add_argument("--checkpoints_total_limit", type=int, help="keep only the newest N checkpoints")
    s.add_argument("--resume_from_checkpoint", help="checkpoint folder, or 'latest' (newest under output_dir)")
    s.add_argument("--eval_steps", type=int, help="evaluate every N steps (default: every 10 epochs and at the end)")
    s.add_argument("--eval_flip_test", action="store_true", help="average with flipped crops when evaluating")
    s.add_argument("--logging_steps", type=int, default=50)
    s.add_argument("--push_to_hub", action="store_true")
    s.add_argument("--hub_model_id", help="repo id for --push_to_hub (default: the output folder's name)")
    s.add_argument("--hub_token")
    s.add_argument("--hub_private_repo", action="store_true")
    s.add_argument("--report_to", default="none", help="trackers: tensorboard, wandb, all, none")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--cpu", action="store_true", help="train on the CPU even when an accelerator is present")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vitpose-hf train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return parser.parse_args(None if argv is None else list(argv))


def _check_args(args: argparse.Namespace) -> None:
    sources = [bool(args.model_name_or_path), bool(args.model_size), bool(args.config_name)]
    if sum(sources) != 1:
        raise ValueError("give exactly one of --model_name_or_path, --model_size, --config_name")
    if args.init_from and args.model_name_or_path:
        raise ValueError("--init_from initialises a new model (--model_size / --config_name), not --model_name_or_path")
    n = len(args.dataset_name)
    if args.dataset_layout and len(args.dataset_layout) != n:
        raise ValueError(f"give one --dataset_layout per --dataset_name ({n}), got {len(args.dataset_layout)}")
    if args.dataset_ratio and len(args.dataset_ratio) != n:
        raise ValueError(f"give one --dataset_ratio per --dataset_name ({n}), got {len(args.dataset_ratio)}")
    if args.streaming and args.max_train_steps is None:
        raise ValueError("--streaming needs --max_train_steps (the length of a stream is not known in advance)")
    if args.checkpointing_steps not in (None, "epoch") and not str(args.checkpointing_steps).isdigit():
        raise ValueError(f"--checkpointing_steps must be an integer or 'epoch', got {args.checkpointing_steps!r}")


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
            raise ValueError(f"--config_overrides entries are key=value, got {part!r}")
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
    model: ViTPoseForPoseEstimation, lr: float, weight_decay: float, layer_decay: float,
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
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
        return {"step": self.step, "steps_per_epoch": self.steps_per_epoch, "best_metric": self.best_metric,
                "best_step": self.best_step, "best_metrics": json.dumps(self.best_metrics)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        self.steps_per_epoch = int(state["steps_per_epoch"])
        self.best_metric = state.get("best_metric")
        self.best_step = state.get("best_step")
        self.best_metrics = json.loads(state.get("best_metrics") or "{}")


# ---------------------------------------------------------------------------------------------------------------
# Models: from a checkpoint, a size preset or a config; MAE / ViT initialisation; new heads and experts
# ---------------------------------------------------------------------------------------------------------------
def set_drop_path(model: ViTPoseForPoseEstimation, rate: float) -> None:
    """Set the stochastic-depth rate (linear from 0 at block 0 to ``rate`` at the last block)."""
    model.config.drop_path_rate = float(rate)
    blocks = model.backbone.blocks
    depth = len(blocks)
    for i, block in enumerate(blocks):
        block.drop_path1.rate = block.drop_path2.rate = float(rate) * i / max(depth - 1, 1)


def _interpolate_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(1, [1 +] S*S, C)`` -> ``(1, 1 + h*w, C)``: keep the first (class) slot, bicubic-resize the square grid."""
    n = pos.shape[1]
    side = math.isqrt(n)
    if side * side == n:  # no class slot: add a zero one (it is added to every token)
        extra, table = pos.new_zeros(1, 1, pos.shape[2]), pos
    else:
        side = math.isqrt(n - 1)
        if side * side != n - 1:
            raise ValueError(f"position embedding with {n} slots is not 1 + a square grid")
        extra, table = pos[:, :1], pos[:, 1:]
    if (side, side) != tuple(grid):
        table = table.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
        table = F.interpolate(table, size=tuple(grid), mode="bicubic", align_corners=False)
        table = table.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([extra, table], dim=1)


def _resize_patch_kernel(weight: torch.Tensor, size: int) -> torch.Tensor:
    """Official rule for a patch kernel of another size: zero-pad a smaller one, resize a larger one (bicubic)."""
    k = weight.shape[-1]
    if k == size:
        return weight
    if k < size:
        before = (size - k) // 2
        return F.pad(weight, (before, size - k - before, before, size - k - before))
    return F.interpolate(weight.float(), size=(size, size), mode="bicubic", align_corners=False).to(weight.dtype)


# Per-layer key names of ViT encoders: (ours, [(their name, rows)]) for every format we read.
_VIT_LAYER_FORMATS: dict[str, dict[str, list[str]]] = {
    # transformers checkpoints on disk / the Hub (ViTModel, ViTMAEModel): encoder.layer.{i}.*
    "hf": {
        "attn.qkv": ["attention.attention.query", "attention.attention.key", "attention.attention.value"],
        "attn.proj": ["attention.output.dense"], "mlp.fc1": ["intermediate.dense"], "mlp.fc2": ["output.dense"],
        "norm1": ["layernorm_before"], "norm2": ["layernorm_after"],
    },
    # transformers >= 5 modules in memory: layers.{i}.*
    "hf5": {
        "attn.qkv": ["attention.q_proj", "attention.k_proj", "attention.v_proj"], "attn.proj": ["attention.o_proj"],
        "mlp.fc1": ["mlp.fc1"], "mlp.fc2": ["mlp.fc2"], "norm1": ["layernorm_before"], "norm2": ["layernorm_after"],
    },
    # timm / official MAE .pth: blocks.{i}.*
    "timm": {name: [name] for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "norm1", "norm2")},
}
_VIT_LAYER_PREFIX = {"hf": "encoder.layer.{i}.", "hf5": "layers.{i}.", "timm": "blocks.{i}."}


def convert_vit_state_dict(state: Mapping[str, torch.Tensor], config: ViTPoseConfig) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map a ViT / MAE encoder state dict onto our backbone (``backbone.*`` keys).

    Reads transformers `ViTModel` / `ViTMAEModel` checkpoints (optionally under ``vit.``; the on-disk names and
    transformers 5's in-memory names) and timm / official MAE names (``patch_embed``, ``pos_embed``, ``blocks.i``;
    optionally under ``model.``). The class token and the encoder's final norm are not used (as the official
    loader: ``last_norm`` starts fresh); the position embedding is resized to the model's token grid; with ViTPose++
    experts every expert starts as the last ``part_features`` rows of the dense fc2 and fc2 keeps the first rows
    (the official dense -> MoE split).

    Returns:
        ``(state_dict, unused_keys)``.
    """
    src = {}
    for key, value in state.items():
        for prefix in ("module.", "model.", "vit.", "backbone."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        src[key] = value
    C, p = config.hidden_size, config.part_features if config.num_experts > 1 else 0
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(name: str) -> torch.Tensor | None:
        if name in src:
            used.add(name)
            return src[name]
        return None

    if "embeddings.position_embeddings" in src:
        patch_w, patch_b = take("embeddings.patch_embeddings.projection.weight"), take("embeddings.patch_embeddings.projection.bias")
        pos = take("embeddings.position_embeddings")
        take("embeddings.cls_token")
    else:
        patch_w, patch_b, pos = take("patch_embed.proj.weight"), take("patch_embed.proj.bias"), take("pos_embed")
        take("cls_token")
    if patch_w is None or pos is None:
        raise ValueError("the checkpoint has no ViT patch embedding / position embedding (is it a ViT or MAE encoder?)")
    if patch_w.shape[:2] != (C, config.num_channels):
        raise ValueError(f"checkpoint width {patch_w.shape[0]} does not match the model's hidden_size {C}")
    formats = [f for f, prefix in _VIT_LAYER_PREFIX.items() if any(k.startswith(prefix.format(i=0)) for k in src)]
    if not formats:
        raise ValueError("the checkpoint has no transformer layers in a known format (encoder.layer.i, layers.i, blocks.i)")
    fmt = formats[0]
    out["backbone.patch_embed.proj.weight"] = _resize_patch_kernel(patch_w, config.patch_size)
    if patch_b is not None:
        out["backbone.patch_embed.proj.bias"] = patch_b
    out["backbone.pos_embed"] = _interpolate_pos_embed(pos, config.patch_grid)
    for i in range(config.num_hidden_layers):
        pre, dst = _VIT_LAYER_PREFIX[fmt].format(i=i), f"backbone.blocks.{i}."
        for ours, theirs in _VIT_LAYER_FORMATS[fmt].items():
            for kind in ("weight", "bias"):
                parts = [take(f"{pre}{name}.{kind}") for name in theirs]
                if any(part is None for part in parts):
                    raise ValueError(f"the checkpoint has no {pre}{theirs[0]}.{kind} (the model has {config.num_hidden_layers} layers)")
                value = torch.cat(parts) if len(parts) > 1 else parts[0]
                if ours == "mlp.fc2" and p:
                    out[f"{dst}mlp.fc2.{kind}"] = value[: C - p]
                    for e in range(config.num_experts):
                        out[f"{dst}mlp.experts.{e}.{kind}"] = value[C - p:].clone()
                else:
                    out[f"{dst}{ours}.{kind}"] = value
    unused = sorted(k for k in src if k not in used)
    return out, unused


def load_vit_backbone(model: ViTPoseForPoseEstimation, source: str, cache_dir: str | None = None) -> list[str]:
    """Load a ViT / MAE encoder (Hub id, checkpoint folder, or .pth / .safetensors file) into ``model``'s backbone.

    Returns the checkpoint keys that were not used (decoder, final norm, pooler, ...).
    """
    if os.path.isfile(source):
        if source.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(source)
        else:
            state = torch.load(source, map_location="cpu", weights_only=True)
            for key in ("model", "state_dict"):
                if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                    state = state[key]
    else:
        from .conversion import load_state_dict_files

        kwargs = {"cache_dir": cache_dir} if cache_dir else {}
        state = load_state_dict_files(source, **kwargs)
    mapped, unused = convert_vit_state_dict(state, model.config)
    own = model.state_dict()
    for key, value in mapped.items():
        if own[key].shape != value.shape:
            raise ValueError(f"{key}: checkpoint shape {tuple(value.shape)} does not fit the model's {tuple(own[key].shape)}")
    model.load_state_dict(mapped, strict=False)
    decoder_like = [k for k in unused if not k.startswith("decoder")]
    logger.info(f"initialised the backbone from {source}: {len(mapped)} tensors; unused: {decoder_like[:8]}"
                f"{' ...' if len(decoder_like) > 8 else ''}")
    return unused


def _dense_fc2(state: Mapping[str, torch.Tensor], prefix: str, expert: int | None, kind: str) -> torch.Tensor:
    fc2 = state[f"{prefix}mlp.fc2.{kind}"]
    if expert is None:
        return fc2
    return torch.cat([fc2, state[f"{prefix}mlp.experts.{expert}.{kind}"]])


def adapt_model(source: ViTPoseForPoseEstimation, layouts: Sequence[dict], num_experts: int,
                part_features: int | None = None) -> ViTPoseForPoseEstimation:
    """A model for other keypoint layouts (heads) and experts, initialised from ``source``.

    The encoder is copied; a head is copied when ``source`` has a head of the same name and keypoint count, else it
    starts fresh. Each new expert starts from the expert of its layout in ``source`` (by name, the official expert
    order for six-expert checkpoints; else the first one): the dense FFN of that dataset is rebuilt as
    ``[fc2 | expert]`` and split again at the new width. A dense target gets the FFN of its first layout.
    """
    cfg = source.config
    config_dict = cfg.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "auto_map", "_name_or_path"):
        config_dict.pop(key, None)
    experts = num_experts if num_experts > 1 else 1
    p = (part_features or cfg.part_features or cfg.hidden_size // 4) if experts > 1 else 0
    config_dict.update(datasets=list(layouts), num_experts=experts, part_features=p)
    config = ViTPoseConfig(**config_dict)
    config._attn_implementation = cfg._attn_implementation
    model = ViTPoseForPoseEstimation(config)
    src = source.state_dict()
    dst = model.state_dict()
    old_names = cfg.dataset_names
    # experts of the source by dataset name: one per head, or the official six (transformers' ViTPose++ checkpoints
    # kept the COCO head alone but all six experts, in the official order)
    if cfg.num_experts == len(old_names):
        expert_names = old_names
    elif cfg.num_experts == len(VITPOSE_PLUS_DATASETS):
        expert_names = list(VITPOSE_PLUS_DATASETS)
    else:
        expert_names = []
    src_expert_of: dict[int, int | None] = {}
    for k, name in enumerate(config.dataset_names):
        if cfg.num_experts > 1:
            src_expert_of[k] = expert_names.index(name) if name in expert_names else 0
        else:
            src_expert_of[k] = None
    C = config.hidden_size
    new_state = {}
    for key, value in dst.items():
        if key.startswith("heads."):
            k, rest = key.split(".", 2)[1:]
            name = config.dataset_names[int(k)]
            if name in old_names:
                old_key = f"heads.{old_names.index(name)}.{rest}"
                if old_key in src and src[old_key].shape == value.shape:
                    new_state[key] = src[old_key]
            continue
        if ".mlp.fc2." in key or ".mlp.experts." in key:
            prefix, kind = key.split("mlp.")[0], key.rsplit(".", 1)[1]
            if ".mlp.fc2." in key:
                dense = _dense_fc2(src, prefix, src_expert_of[0], kind)
                new_state[key] = dense[: C - p] if p else dense
            else:
                e = int(key.split(".mlp.experts.")[1].split(".")[0])
                new_state[key] = _dense_fc2(src, prefix, src_expert_of[e], kind)[C - p:].clone()
            continue
        if key in src and src[key].shape == value.shape:
            new_state[key] = src[key]
    missing = model.load_state_dict(new_state, strict=False).missing_keys
    fresh_heads = sorted({k.split(".")[1] for k in missing if k.startswith("heads.")})
    if fresh_heads:
        logger.info(f"new heads (random init): {[config.dataset_names[int(k)] for k in fresh_heads]}")
    other = [k for k in missing if not k.startswith("heads.")]
    if other:
        raise ValueError(f"could not initialise {other[:5]} from the checkpoint")
    return model


def _size_key(config: ViTPoseConfig) -> str | None:
    return SIZES.get((config.hidden_size, config.num_hidden_layers))


def build_model(args: argparse.Namespace, layouts: list[dict]) -> ViTPoseForPoseEstimation:
    """The model to train: heads = ``layouts`` (unique by name), experts per ``--experts``."""
    want_experts = args.experts == "per_dataset" or (args.experts == "auto" and len(layouts) > 1)
    overrides = parse_overrides(args.config_overrides)
    if args.model_name_or_path:
        model = ViTPoseForPoseEstimation.from_pretrained(args.model_name_or_path, cache_dir=args.cache_dir)
        names = model.config.dataset_names
        same_heads = all(
            d["name"] in names and model.config.datasets[names.index(d["name"])]["keypoint_names"] == d["keypoint_names"]
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
            preset = f"vitpose{'-plus' if want_experts else ''}-{args.model_size}" + ("-simple" if args.decoder == "simple" else "")
            kwargs: dict[str, Any] = {"datasets": layouts}
            if want_experts:
                kwargs["num_experts"] = len(layouts)
            if args.image_size:
                kwargs["image_size"] = tuple(args.image_size)
            kwargs.update(overrides)
            if want_experts and "part_features" not in overrides:
                kwargs["part_features"] = args.part_features or kwargs.get("hidden_size", ViTPoseConfig.from_preset(preset).hidden_size) // 4
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
                config_dict["part_features"] = args.part_features or config_dict.get("part_features") or config_dict.get("hidden_size", 768) // 4
            else:
                config_dict.update(num_experts=1, part_features=0)
            config = ViTPoseConfig(**config_dict)
        model = ViTPoseForPoseEstimation(config)
        if args.init_from:
            load_vit_backbone(model, args.init_from, args.cache_dir)
    if args.drop_path_rate is not None:
        set_drop_path(model, args.drop_path_rate)
    return model


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class DataSpec:
    """One --dataset_name: its layout, splits and sampling ratio."""

    name: str
    layout: dict
    train: Any
    validation: Any
    ratio: float | None
    head: int = 0
    counts: Counter = field(default_factory=Counter)


def load_data_specs(args: argparse.Namespace) -> list[DataSpec]:
    specs = []
    for n, name in enumerate(args.dataset_name):
        if args.dataset_layout:
            layout = read_layout(args.dataset_layout[n])
        else:
            layout = find_layout(name)
            if layout is None:
                raise ValueError(f"no keypoint layout for {name!r}: pass --dataset_layout (coco, aic, mpii, ap10k, ... or a json)")
        train = load_image_split(name, args.train_split, streaming=args.streaming, cache_dir=args.cache_dir)
        if train is None:
            raise ValueError(f"{name!r} has no {args.train_split!r} split")
        validation = load_image_split(name, args.validation_split, streaming=False, cache_dir=args.cache_dir)
        if validation is None and args.train_val_split > 0:
            if args.streaming:
                raise ValueError("--train_val_split cannot split a streamed dataset; give it a validation split")
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
    return {"images": gt_images, "annotations": annotations,
            "categories": [{"id": c, "name": str(c)} for c in sorted(categories)] or [{"id": 1, "name": "1"}]}


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
def evaluate(model: torch.nn.Module, eval_sets: Sequence[EvalSet], accelerator: Any, flip_test: bool = False) -> dict[str, dict[str, float]]:
    """Validation loss and COCO keypoint AP (GT boxes, official rescoring + OKS-NMS) per evaluation set.

    AP needs the layout's OKS sigmas and pycocotools; without them only the loss is reported.
    """
    from accelerate.utils import broadcast_object_list

    was_training = model.training
    model.eval()
    results: dict[str, dict[str, float]] = {}
    for es in eval_sets:
        k = es.layout["num_keypoints"]
        transform = es.transform
        flip_index = flip_indices(es.layout)
        parts: dict[str, list[torch.Tensor]] = {"points": [], "scores": [], "instance": [], "loss": [], "scale": []}
        for batch in es.loader:
            out = model(pixel_values=batch["pixel_values"], dataset_index=batch["dataset_index"],
                        labels=batch["labels"], target_weight=batch["target_weight"])
            heatmaps = out.heatmaps[:, :k].float()
            if flip_test:
                flipped = model(pixel_values=batch["pixel_values"].flip(-1), dataset_index=batch["dataset_index"]).heatmaps
                heatmaps = 0.5 * (heatmaps + flip_back(flipped[:, :k].float(), flip_index, shift=not transform.use_udp))
            coords, scores = transform.codec.decode(heatmaps)
            points = crop_to_image(coords, batch["center"].float(), batch["scale"].float(), transform.input_size, None, transform.use_udp)
            b = heatmaps.shape[0]
            gathered = accelerator.gather_for_metrics({
                "points": points.float().contiguous(), "scores": scores.float().contiguous(), "instance": batch["instance"],
                "loss": out.loss.detach().float().expand(b).contiguous(), "scale": batch["scale"].float(),
            })
            for key, value in gathered.items():
                parts[key].append(value.cpu())
        metrics: dict[str, float] = {}
        if accelerator.is_main_process and parts["points"]:
            points, scores, instances, scales = (torch.cat(parts[key]).numpy() for key in ("points", "scores", "instance", "scale"))
            metrics["loss"] = float(torch.cat(parts["loss"]).mean())
            table = es.dataset.sources[0].table
            poses = [
                {"image_id": int(table.rows[i]), "keypoints": points[j], "scores": scores[j],
                 "area": float(scales[j, 0] * scales[j, 1] * PIXEL_STD**2), "box_score": 1.0}
                for j, i in enumerate(instances.tolist())
            ]
            if es.layout.get("sigmas"):
                try:
                    from .evaluation import evaluate_top_down

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
    """The checkpoint folder for ``--resume_from_checkpoint``: ``which`` itself, or the newest complete one."""
    if which != "latest":
        if not os.path.isdir(which):
            raise ValueError(f"checkpoint folder not found: {which!r}")
        return which
    folder = Path(output_dir) / CHECKPOINT_DIR
    steps = []
    for path in folder.glob("step_*") if folder.is_dir() else []:
        suffix = path.name[len("step_"):]
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
    """The files `--push_to_hub` uploads: the output folder without checkpoints and temporary folders."""
    from huggingface_hub.utils import filter_repo_objects

    root = Path(output_dir)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return list(filter_repo_objects(files, ignore_patterns=HUB_IGNORE_PATTERNS))


def make_processor(config: ViTPoseConfig) -> Any:
    """The image processor saved next to the weights (UDP per the first layout's official setting)."""
    from .image_processing_vitpose_hf import ViTPoseImageProcessor

    datasets = config.datasets
    names = [d if not _is_builtin(d) else d["name"] for d in datasets]
    dataset = names[0] if len(names) == 1 else names
    return ViTPoseImageProcessor(
        size={"height": config.image_size[0], "width": config.image_size[1]},
        use_udp=bool(datasets[0]["use_udp"]),
        dataset=dataset,
    )


def _is_builtin(info: Mapping[str, Any]) -> bool:
    from .keypoint_metadata import KEYPOINT_DATASETS

    known = KEYPOINT_DATASETS.get(info["name"])
    return known is not None and known["keypoint_names"] == info["keypoint_names"]


def save_model_folder(
    model: ViTPoseForPoseEstimation, folder: str, *, model_name: str, metrics: Mapping[str, Any] | None,
    dataset_ids: Mapping[str, str], base_model: str | None, training: Mapping[str, Any], notes: Sequence[str] = (),
) -> None:
    """``save_pretrained`` (safetensors) + processor config + model card, into ``folder``."""
    from .model_card import build_model_card

    model.save_pretrained(folder, safe_serialization=True)
    make_processor(model.config).save_pretrained(folder)
    card = build_model_card(model.config, model_name=model_name, metrics=metrics, dataset_ids=dataset_ids,
                            base_model=base_model, training=training, notes=notes)
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
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
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
    args: argparse.Namespace, specs: Sequence[DataSpec], config: ViTPoseConfig, augment: AugmentConfig,
    collator: TopDownCollator, device: torch.device,
) -> tuple[torch.utils.data.DataLoader, dict[str, dict[str, int]]]:
    """The training DataLoader (map-style with `MixedDatasetSampler`, or a stream) and the bad-annotation counts."""
    input_size, heatmap_size = tuple(config.image_size), tuple(config.heatmap_size)
    kwargs: dict[str, Any] = dict(batch_size=args.per_device_train_batch_size, num_workers=args.dataloader_num_workers,
                                  collate_fn=collator, pin_memory=device.type == "cuda",
                                  generator=torch.Generator().manual_seed(args.seed))
    if args.dataloader_num_workers > 0:
        kwargs.update(persistent_workers=not args.streaming, prefetch_factor=4)
    ratios = [s.ratio if s.ratio is not None else 1.0 for s in specs] if any(s.ratio is not None for s in specs) else None
    if args.streaming:
        sources = [StreamSource(spec.name, spec.train, TopDownTransform(spec.layout, input_size, heatmap_size, augment, args.sigma), spec.head)
                   for spec in specs]
        dataset = StreamingTopDownDataset(sources, ratios, seed=args.seed, shuffle_buffer=args.shuffle_buffer_size)
        return torch.utils.data.DataLoader(dataset, **kwargs), {}
    sources, skipped = [], {}
    for spec in specs:
        k = spec.layout["num_keypoints"]
        instances, counts = explode_instances(spec.train, k, name=f"{spec.name} [{args.train_split}]")
        spec.counts = counts
        skipped[spec.name] = {key: counts[key] for key in BAD_STATUSES if counts.get(key)}
        transform = TopDownTransform(spec.layout, input_size, heatmap_size, augment, args.sigma)
        sources.append(TopDownSource(spec.name, spec.train.select_columns(["image"]), InstanceTable.from_dataset(instances, k),
                                     transform, spec.head))
    sampler = MixedDatasetSampler([len(s.table) for s in sources], ratios, seed=args.seed)
    return torch.utils.data.DataLoader(TopDownDataset(sources), sampler=sampler, **kwargs), skipped


def build_eval_sets(
    args: argparse.Namespace, specs: Sequence[DataSpec], config: ViTPoseConfig, collator: TopDownCollator, main_process: bool,
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
        dataset = TopDownDataset([TopDownSource(spec.name, spec.validation.select_columns(["image"]),
                                                InstanceTable.from_dataset(instances, k), transform, spec.head)])
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.per_device_eval_batch_size, shuffle=False,
                                             num_workers=args.dataloader_num_workers, collate_fn=collator,
                                             generator=torch.Generator().manual_seed(args.seed))
        gt = coco_ground_truth(spec.validation, k) if main_process else {}
        eval_sets.append(EvalSet(spec.name, spec.head, spec.layout, dataset, loader, gt, transform))
    return eval_sets


def run(args: argparse.Namespace) -> int:
    """Train; returns 0. Raises ValueError for bad options or data."""
    from accelerate import Accelerator, DistributedDataParallelKwargs, PartialState
    from accelerate.utils import set_seed

    _check_args(args)
    output_dir = Path(args.output_dir)
    cpu = _force_cpu(args)
    state = PartialState(cpu=cpu)
    # no force=True: keep handlers that an embedding application (or pytest) installed
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("vitpose_hf").setLevel(logging.INFO if state.is_main_process else logging.WARNING)
    import datasets as hf_datasets

    if state.is_main_process:
        hf_datasets.utils.logging.set_verbosity_warning()
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / ".gitignore").write_text(f"{CHECKPOINT_DIR}/\n*.tmp/\n")
    else:
        hf_datasets.utils.logging.set_verbosity_error()
    hf_datasets.utils.logging.disable_progress_bar()

    set_seed(args.seed)
    with state.main_process_first():
        specs = load_data_specs(args)
    layouts = unique_layouts(specs)
    model = build_model(args, layouts)
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
    logger.info(f"{accelerator.num_processes} process(es), device {accelerator.device}, backend "
                f"{accelerator.state.backend or 'none'}, mixed precision "
                f"{accelerator.mixed_precision}; model {config.hidden_size}x{config.num_hidden_layers}, heads "
                f"{config.dataset_names}, experts {config.num_experts}; lr {lr}, layer decay {layer_decay}")

    # ---- data
    augment = AugmentConfig(enabled=not args.no_augmentation)
    collator = TopDownCollator(max(config.num_keypoints))
    with accelerator.main_process_first():
        train_loader, skipped = build_train_loader(args, specs, config, augment, collator, accelerator.device)
        eval_sets = build_eval_sets(args, specs, config, collator, accelerator.is_main_process)
    input_size = tuple(config.image_size)

    # ---- optimiser, schedule
    optimizer = build_optimizer(model, lr, args.weight_decay, layer_decay, (args.adam_beta1, args.adam_beta2), args.adam_epsilon)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    for es in eval_sets:
        es.loader = accelerator.prepare(es.loader)

    if args.streaming:
        steps_per_epoch = args.max_train_steps
        num_epochs, max_steps = 1, args.max_train_steps
    else:
        steps_per_epoch = max(1, math.ceil(len(train_loader) / args.gradient_accumulation_steps))
        max_steps = args.max_train_steps if args.max_train_steps is not None else args.num_train_epochs * steps_per_epoch
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

    hyper = {
        "size": _size_key(config) or f"{config.hidden_size}x{config.num_hidden_layers}",
        "input size": f"{input_size[0]}x{input_size[1]}",
        "datasets": ", ".join(s.name for s in specs),
        "learning rate": lr, "layer decay": layer_decay, "weight decay": args.weight_decay,
        "betas": f"({args.adam_beta1}, {args.adam_beta2})", "gradient clipping": args.max_grad_norm,
        "warm-up steps": args.warmup_steps, "lr milestones (steps)": str(milestones),
        "total batch size": args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps,
        "optimizer steps": max_steps, "drop path": config.drop_path_rate,
        "mixed precision": accelerator.mixed_precision, "augmentation": "official" if augment.enabled else "none",
        "seed": args.seed,
    }
    if accelerator.is_main_process:
        with open(output_dir / "training_args.json", "w", encoding="utf-8") as f:
            json.dump(_json_safe(vars(args)), f, indent=2)
    if args.report_to != "none":
        accelerator.init_trackers("vitpose_hf_train", {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})

    # ---- resume
    start_epoch, skip_batches = 0, 0
    if args.resume_from_checkpoint:
        path = find_checkpoint(output_dir, args.resume_from_checkpoint)
        if path is None:
            logger.warning(f"no checkpoint under {output_dir / CHECKPOINT_DIR}: starting from scratch")
        else:
            accelerator.load_state(path)
            if progress.steps_per_epoch != steps_per_epoch:
                logger.warning(f"the checkpoint had {progress.steps_per_epoch} steps per epoch, this run has {steps_per_epoch} "
                               "(other data, batch size or process count): the data order will differ")
            start_epoch = progress.step // steps_per_epoch
            skip_batches = (progress.step % steps_per_epoch) * args.gradient_accumulation_steps
            progress.steps_per_epoch = steps_per_epoch
            logger.info(f"resumed from {path} at step {progress.step} (epoch {start_epoch}, skipping {skip_batches} batches)")

    # ---- loop
    checkpoint_every = None if args.checkpointing_steps in (None, "epoch") else int(args.checkpointing_steps)
    log_path = output_dir / "train_log.jsonl"
    last_eval: dict[str, dict[str, float]] = {}
    last_eval_step = -1
    model.train()
    # the loss stays on the device between log lines (no host sync per step)
    window_loss, window_count, window_data, window_start = torch.zeros((), device=accelerator.device), 0, 0.0, time.perf_counter()
    samples_in_window = 0
    global_step = progress.step

    def log_line(record: dict[str, Any]) -> None:
        if accelerator.is_main_process:
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(_json_safe(record)) + "\n")
        if args.report_to != "none":
            accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record.get("step"))

    def run_eval() -> None:
        nonlocal last_eval, last_eval_step
        if not eval_sets:
            return
        with _rng_guard(accelerator.device):
            last_eval = evaluate(model, eval_sets, accelerator, args.eval_flip_test)
        last_eval_step = global_step
        name, value = summary_metric(last_eval)
        record = {"step": global_step, "eval_metric": name, "eval_value": value}
        for set_name, values in last_eval.items():
            record.update({f"eval/{set_name}/{k}": v for k, v in values.items()})
        log_line(record)
        logger.info(f"step {global_step}: evaluation {json.dumps(_json_safe(last_eval))}")
        if progress.best_metric is None or value > progress.best_metric:
            progress.best_metric, progress.best_step, progress.best_metrics = value, global_step, last_eval
            save_final_or_best(output_dir / "best", last_eval, best=True)

    def save_final_or_best(folder: Path, metrics: Mapping[str, Any], best: bool = False) -> None:
        state_dict = accelerator.get_state_dict(model)
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            with torch.device("meta"):  # no weight init: it would draw from the global RNG and change the run
                export = ViTPoseForPoseEstimation(unwrapped.config)
            export.load_state_dict({k: v.detach().cpu().clone() for k, v in state_dict.items()}, assign=True)
            export.eval()
            notes = [f"Best validation checkpoint (step {global_step})." if best else f"Final weights after {global_step} steps."]
            card_metrics = {name: metrics.get(_set_name(specs, name), {}) for name in export.config.dataset_names} if metrics else None
            save_model_folder(export, str(folder), model_name=args.hub_model_id or output_dir.name, metrics=card_metrics,
                              dataset_ids={s.layout["name"]: s.name for s in specs}, base_model=args.model_name_or_path or args.init_from,
                              training=hyper, notes=notes)
            if not best and len(export.heads) > 1:
                for name in export.config.dataset_names:
                    single = export.single_dataset(name)
                    m = metrics.get(_set_name(specs, name)) if metrics else None
                    save_model_folder(single, str(folder / "per_dataset" / name), model_name=f"{args.hub_model_id or output_dir.name}-{name}",
                                      metrics={name: m} if m else None, dataset_ids={s.layout["name"]: s.name for s in specs},
                                      base_model=args.model_name_or_path or args.init_from, training=hyper,
                                      notes=[f"Single-dataset export of the `{name}` head (expert merged into the FFN)."])
            logger.info(f"Saved {'best ' if best else ''}model to {folder}")
        accelerator.wait_for_everyone()

    done = global_step >= max_steps
    for epoch in range(start_epoch, num_epochs):
        if done:
            break
        train_loader.set_epoch(epoch)
        loader = accelerator.skip_first_batches(train_loader, skip_batches) if skip_batches else train_loader
        skip_batches = 0
        wait_start = time.perf_counter()
        for batch in _batches(loader, accelerator.device):
            window_data += time.perf_counter() - wait_start
            with accelerator.accumulate(model):
                outputs = model(pixel_values=batch["pixel_values"], dataset_index=batch["dataset_index"],
                                labels=batch["labels"], target_weight=batch["target_weight"])
                loss = outputs.loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            window_loss += loss.detach().float()
            window_count += 1
            samples_in_window += batch["pixel_values"].shape[0]
            if accelerator.sync_gradients:
                scheduler.step()
                global_step += 1
                progress.step = global_step
                if global_step % args.logging_steps == 0 or global_step == max_steps or global_step == 1:
                    elapsed = time.perf_counter() - window_start
                    mean_loss = accelerator.reduce(window_loss / max(window_count, 1), "mean")
                    log_line({"step": global_step, "epoch": epoch, "loss": float(mean_loss), "lr": scheduler.get_last_lr()[-1],
                              "samples_per_second": samples_in_window * accelerator.num_processes / max(elapsed, 1e-9),
                              "data_wait_share": window_data / max(elapsed, 1e-9)})
                    logger.info(f"step {global_step}/{max_steps} epoch {epoch} loss {float(mean_loss):.6f} "
                                f"lr {scheduler.get_last_lr()[-1]:.3g} data wait {100 * window_data / max(elapsed, 1e-9):.0f}%")
                    window_loss, window_count, window_data, samples_in_window = torch.zeros_like(window_loss), 0, 0.0, 0
                    window_start = time.perf_counter()
                if checkpoint_every and global_step % checkpoint_every == 0:
                    path = save_checkpoint(accelerator, str(output_dir), global_step, args.checkpoints_total_limit)
                    logger.info(f"checkpoint {path}")
                if args.eval_steps and global_step % args.eval_steps == 0:
                    run_eval()
                if global_step >= max_steps:
                    done = True
                    break
            wait_start = time.perf_counter()
        if args.checkpointing_steps == "epoch":
            path = save_checkpoint(accelerator, str(output_dir), global_step, args.checkpoints_total_limit)
            logger.info(f"checkpoint {path}")
        if not args.eval_steps and (epoch + 1) % 10 == 0 and global_step != last_eval_step:
            run_eval()

    if eval_sets and last_eval_step != global_step:
        run_eval()
    save_final_or_best(output_dir, last_eval)
    if accelerator.is_main_process:
        results = {
            "step": global_step,
            "eval": last_eval,
            "best_step": progress.best_step,
            "best_eval": progress.best_metrics,
            "skipped_annotations": skipped,
        }
        with open(output_dir / "all_results.json", "w", encoding="utf-8") as f:
            json.dump(_json_safe(results), f, indent=2)
        for name, counts in skipped.items():
            if counts:
                logger.warning(f"{name}: skipped bad annotations: {format_counts(counts)}")
    if args.push_to_hub and accelerator.is_main_process:
        push_folder(output_dir, args.hub_model_id or output_dir.name, args.hub_token, args.hub_private_repo)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


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
    info = api.upload_folder(repo_id=repo_id, folder_path=str(output_dir), ignore_patterns=HUB_IGNORE_PATTERNS,
                             commit_message="vitpose-hf training run")
    logger.info(f"pushed {output_dir} to {repo_id}")
    return str(info)


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
