"""MAE pre-training on person crops only (`vitpose-hf pretrain-mae`, `scripts/pretrain_mae.py`).

The ViTPose paper's "flexible pre-training" finding: MAE pre-training on the pose datasets alone (COCO + AIC person
crops) nearly matches ImageNet MAE. This runs transformers' own `ViTMAEForPreTraining` at the width and depth of a
ViTPose backbone (``--model-size`` or ``--hidden-size`` / ``--num-hidden-layers`` / ``--num-attention-heads``) on
the person instances of Hub-schema keypoint datasets (`vitpose_hf.data.hub_dataset`), and writes a `save_pretrained`
folder that `vitpose-hf train --init-from` converts into the backbone (position embedding interpolated to the
pose input's token grid; the MAE decoder, class token and final norm are not used).

Crops: the training pipeline's crops (`TopDownTransform`: person box x 1.25, the official flip / scale / rotation
augmentation unless ``--no-augmentation``, ImageNet mean / std), square (``--image-size``, default 256), because
MAE's fixed sin-cos position table and the conversion need a square token grid. Recipe defaults follow MAE: mask
ratio 0.75, normalised-pixel loss, AdamW betas (0.9, 0.95), weight decay 0.05, lr = 1.5e-4 x batch / 256, linear
warm-up then cosine decay.

Resuming: every ``--checkpointing-steps`` steps the run's whole state (model, optimiser, schedule, RNG, step) is
saved atomically under ``OUTPUT_DIR/checkpoints/step_N`` (the training script's `save_checkpoint`). Run the same
command again after a kill and it continues from the newest checkpoint, with the data order, masks and weights of
an uninterrupted run; other options than the ones it was started with are refused (``--overwrite-output-dir``
starts afresh).
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vitpose_hf.configuration_vitpose_hf import PRESET_SIZES
from vitpose_hf.data.hub_dataset import explode_instances, find_layout, load_image_split, read_layout
from vitpose_hf.data.transforms import (
    AugmentConfig,
    InstanceTable,
    MixedDatasetSampler,
    TopDownDataset,
    TopDownSource,
    TopDownTransform,
)
from vitpose_hf.training.train import CHECKPOINT_DIR, TrainingProgress, find_checkpoint
from vitpose_hf.training.train import save_checkpoint as save_state_checkpoint
from vitpose_hf_cli import dash_spellings

logger = logging.getLogger(__name__)

ARGS_FILE = "pretrain_mae_args.json"
RUN_FILE = "pretrain_mae_run.json"  # the options the run in an output folder was started with
# options that may change between a run and its resumption (they change neither the data, the model nor the result)
RESUMABLE_CHANGES = frozenset(
    {
        "logging_steps",
        "dataloader_num_workers",
        "cache_dir",
        "checkpointing_steps",
        "checkpoints_total_limit",
        "save_steps",
        "overwrite_output_dir",
        "output_dir",
        "cpu",
    }
)


# ---------------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vitpose-hf pretrain-mae`."""
    m = parser.add_argument_group("encoder shape (--model-size, or the three numbers)")
    m.add_argument("--model-size", choices=list(PRESET_SIZES), help="width / depth / heads of ViTPose-S/B/L/H")
    m.add_argument("--hidden-size", type=int, help="encoder width (default: from --model-size)")
    m.add_argument("--num-hidden-layers", type=int, help="encoder depth (default: from --model-size)")
    m.add_argument("--num-attention-heads", type=int, help="encoder heads (default: from --model-size)")
    m.add_argument("--mlp-ratio", type=float, default=4.0, help="FFN width / encoder width")
    m.add_argument("--patch-size", type=int, default=16, help="patch side in pixels")
    m.add_argument("--image-size", type=int, default=256, help="side of the square crops")
    m.add_argument("--mask-ratio", type=float, default=0.75, help="share of patches hidden from the encoder")
    m.add_argument("--no-norm-pix-loss", action="store_true", help="plain pixel targets (MAE default: normalised)")
    m.add_argument("--decoder-hidden-size", type=int, default=512, help="MAE decoder width")
    m.add_argument("--decoder-num-hidden-layers", type=int, default=8, help="MAE decoder depth")
    m.add_argument("--decoder-num-attention-heads", type=int, default=16, help="MAE decoder heads")
    m.add_argument("--decoder-intermediate-size", type=int, default=2048, help="MAE decoder FFN width")

    d = parser.add_argument_group("data")
    d.add_argument(
        "--dataset-name", action="append", required=True, help="Hub dataset id / save_to_disk / parquet folder"
    )
    d.add_argument("--dataset-layout", action="append", help="keypoint layout per --dataset-name (for the flip pairs)")
    d.add_argument("--dataset-ratio", type=float, nargs="+", action="extend", help="sampling share per dataset")
    d.add_argument("--train-split", default="train", help="split to train on")
    d.add_argument("--max-train-samples", type=int, help="use only the first N images of each dataset")
    d.add_argument("--no-augmentation", action="store_true", help="plain crops")
    d.add_argument("--dataloader-num-workers", type=int, default=4, help="data loading worker processes")
    d.add_argument("--cache-dir", help="datasets / Hub cache folder (default: the Hugging Face cache)")

    o = parser.add_argument_group("optimisation")
    o.add_argument("--per-device-train-batch-size", type=int, default=64, help="crops per device and step")
    o.add_argument(
        "--learning-rate",
        type=float,
        help="peak learning rate (default: 1.5e-4 x batch / 256, MAE's base-lr rule)",
    )
    o.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    o.add_argument("--adam-beta1", type=float, default=0.9, help="AdamW beta1")
    o.add_argument("--adam-beta2", type=float, default=0.95, help="AdamW beta2")
    o.add_argument("--num-train-epochs", type=int, default=400, help="epochs to train")
    o.add_argument("--max-train-steps", type=int, help="optimizer steps to train; overrides --num-train-epochs")
    o.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps (default: 1/10 of training)")
    o.add_argument("--mixed-precision", choices=["no", "bf16"], default="no", help="autocast precision")

    s = parser.add_argument_group("output")
    s.add_argument("--output-dir", required=True, help="folder for the MAE model (required)")
    s.add_argument("--save-steps", type=int, help="also save_pretrained under step-N/ every N steps")
    s.add_argument(
        "--checkpointing-steps",
        type=int,
        default=500,
        help="save the resumable state (model, optimiser, schedule, RNG) every N steps; 0: never",
    )
    s.add_argument("--checkpoints-total-limit", type=int, default=2, help="keep only the newest N checkpoints")
    s.add_argument(
        "--overwrite-output-dir",
        action="store_true",
        help="start afresh even when --output-dir holds checkpoints of an earlier run (they are deleted)",
    )
    s.add_argument("--logging-steps", type=int, default=50, help="log the loss every N steps")
    s.add_argument("--seed", type=int, default=0, help="random seed")
    s.add_argument("--cpu", action="store_true", help="train on the CPU even when CUDA is present")
    dash_spellings(parser)  # --output-dir and --output_dir alike


def encoder_shape(args: argparse.Namespace) -> tuple[int, int, int]:
    """``(hidden_size, num_hidden_layers, num_attention_heads)`` from a preset name or the explicit numbers."""
    if args.model_size:
        preset = PRESET_SIZES[args.model_size]
        shape = [preset.hidden_size, preset.num_hidden_layers, preset.num_attention_heads]
        for i, name in enumerate(("hidden_size", "num_hidden_layers", "num_attention_heads")):
            if getattr(args, name) is not None:
                shape[i] = getattr(args, name)
        return shape[0], shape[1], shape[2]
    if None in (args.hidden_size, args.num_hidden_layers, args.num_attention_heads):
        raise ValueError("give --model-size, or all of --hidden-size, --num-hidden-layers and --num-attention-heads")
    return args.hidden_size, args.num_hidden_layers, args.num_attention_heads


def build_mae_config(args: argparse.Namespace) -> Any:
    """The `ViTMAEConfig`: our backbone's shape (LayerNorm eps 1e-6, qkv bias, GELU) on square crops."""
    from transformers import ViTMAEConfig

    width, depth, heads = encoder_shape(args)
    if width % heads:
        raise ValueError(f"hidden_size {width} is not divisible by num_attention_heads {heads}")
    if args.image_size % args.patch_size:
        raise ValueError(f"--image-size {args.image_size} is not a multiple of --patch-size {args.patch_size}")
    if args.decoder_hidden_size % args.decoder_num_attention_heads:
        raise ValueError("--decoder-hidden-size must be divisible by --decoder-num-attention-heads")
    if not 0.0 < args.mask_ratio < 1.0:
        raise ValueError(f"--mask-ratio must be in (0, 1), got {args.mask_ratio}")
    return ViTMAEConfig(
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        intermediate_size=int(width * args.mlp_ratio),
        hidden_act="gelu",
        layer_norm_eps=1e-6,  # as our backbone (transformers' default 1e-12 would not match after transfer)
        qkv_bias=True,
        image_size=args.image_size,
        patch_size=args.patch_size,
        num_channels=3,
        mask_ratio=args.mask_ratio,
        norm_pix_loss=not args.no_norm_pix_loss,
        decoder_hidden_size=args.decoder_hidden_size,
        decoder_num_hidden_layers=args.decoder_num_hidden_layers,
        decoder_num_attention_heads=args.decoder_num_attention_heads,
        decoder_intermediate_size=args.decoder_intermediate_size,
    )


# ---------------------------------------------------------------------------------------------------------------
# Data: person crops of the Hub datasets
# ---------------------------------------------------------------------------------------------------------------
def collate_pixels(samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Only the crops: MAE needs no targets."""
    return {"pixel_values": torch.stack([s["pixel_values"] for s in samples])}


def build_crop_dataset(args: argparse.Namespace) -> tuple[TopDownDataset, MixedDatasetSampler]:
    """The person instances of every ``--dataset-name`` as square crops, and their seeded sampler."""
    n = len(args.dataset_name)
    if args.dataset_layout and len(args.dataset_layout) != n:
        raise ValueError(f"give one --dataset-layout per --dataset-name ({n}), got {len(args.dataset_layout)}")
    if args.dataset_ratio and len(args.dataset_ratio) != n:
        raise ValueError(f"give one --dataset-ratio per --dataset-name ({n}), got {len(args.dataset_ratio)}")
    side = args.image_size
    augment = AugmentConfig(enabled=not args.no_augmentation)
    sources = []
    for i, name in enumerate(args.dataset_name):
        layout = read_layout(args.dataset_layout[i]) if args.dataset_layout else find_layout(name)
        if layout is None:
            raise ValueError(f"no keypoint layout for {name!r}: pass --dataset-layout (coco, aic, ... or a json)")
        images = load_image_split(name, args.train_split, cache_dir=args.cache_dir)
        if images is None:
            raise ValueError(f"{name!r} has no {args.train_split!r} split")
        if args.max_train_samples:
            images = images.select(range(min(args.max_train_samples, images.num_rows)))
        k = layout["num_keypoints"]
        instances, _ = explode_instances(images, k, name=f"{name} [{args.train_split}]")
        # heatmap size is irrelevant (targets are dropped); the smallest valid one keeps the wasted work small
        transform = TopDownTransform(layout, (side, side), (side // 4, side // 4), augment)
        table = InstanceTable.from_dataset(instances, k)
        sources.append(TopDownSource(name, images.select_columns(["image"]), table, transform, i))
    sampler = MixedDatasetSampler([len(s.table) for s in sources], args.dataset_ratio, seed=args.seed)
    return TopDownDataset(sources), sampler


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------
def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]) -> Any:
    """AdamW; no weight decay on 1-D parameters (norms, biases) and the tokens, as MAE."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue  # the fixed sin-cos position tables
        (no_decay if p.ndim <= 1 or name.endswith(("cls_token", "mask_token")) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then half-cosine to 0 (MAE's schedule, per step)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def options_record(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON-safe options of a run."""
    return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, type(None)))}


def save_checkpoint(model: Any, folder: str | os.PathLike, args: argparse.Namespace, step: int) -> None:
    """`save_pretrained` of the MAE model into ``folder``, with the options and the step."""
    folder = Path(folder)
    model.save_pretrained(folder)
    record = options_record(args)
    record["step"] = step
    (folder / ARGS_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")


def check_resumable(output_dir: Path, args: argparse.Namespace) -> str | None:
    """The newest checkpoint to resume from (None: start afresh); ValueError when the folder's run was started
    with other options. Writes the run's options on a fresh start."""
    run_file = output_dir / RUN_FILE
    if args.overwrite_output_dir:
        shutil.rmtree(output_dir / CHECKPOINT_DIR, ignore_errors=True)
        run_file.unlink(missing_ok=True)
    path = find_checkpoint(output_dir)
    mine = {k: v for k, v in options_record(args).items() if k not in RESUMABLE_CHANGES}
    if path is not None and run_file.is_file():
        theirs = {k: v for k, v in json.loads(run_file.read_text()).items() if k not in RESUMABLE_CHANGES}
        changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if changed:
            details = ", ".join(f"--{k.replace('_', '-')} {theirs.get(k)!r} -> {mine.get(k)!r}" for k in changed)
            raise ValueError(
                f"{output_dir} holds checkpoints of a run started with other options ({details}): run the same "
                "command to resume it, or pass another --output-dir or --overwrite-output-dir"
            )
    if path is None:
        output_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(mine, indent=2), encoding="utf-8")
        os.replace(tmp, run_file)
    return path


def run(args: argparse.Namespace) -> int:
    """Pre-train and write ``output_dir`` (a `ViTMAEForPreTraining` folder), resuming the folder's run when it
    holds checkpoints; returns 0."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import ViTMAEForPreTraining

    from vitpose_hf_cli import user_errors

    output_dir = Path(args.output_dir)
    with user_errors():  # bad options or data, before any training: one line on the command line
        config = build_mae_config(args)
        dataset, sampler = build_crop_dataset(args)
        if len(sampler) == 0:
            raise ValueError("no person instances to pre-train on")
        resume_from = check_resumable(output_dir, args)
    accelerator = Accelerator(cpu=args.cpu, project_dir=str(output_dir))
    device = accelerator.device
    set_seed(args.seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        sampler=sampler,
        batch_size=args.per_device_train_batch_size,
        num_workers=args.dataloader_num_workers,
        collate_fn=collate_pixels,
        pin_memory=device.type == "cuda",
        drop_last=len(sampler) >= args.per_device_train_batch_size,
        generator=torch.Generator().manual_seed(args.seed),  # worker seeds off the global RNG
    )
    steps_per_epoch = len(loader)
    total = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    warmup = args.warmup_steps or max(1, total // 10)
    lr = args.learning_rate or 1.5e-4 * args.per_device_train_batch_size / 256
    model = ViTMAEForPreTraining(config)
    model.train()
    optimizer = build_optimizer(model, lr, args.weight_decay, (args.adam_beta1, args.adam_beta2))
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total))
    progress = TrainingProgress(steps_per_epoch=steps_per_epoch)
    accelerator.register_for_checkpointing(scheduler)
    accelerator.register_for_checkpointing(progress)
    log_path = output_dir / "pretrain_log.jsonl"
    skip = 0
    if resume_from is not None:
        accelerator.load_state(resume_from)  # model, optimiser, schedule, RNG, step
        if progress.steps_per_epoch != steps_per_epoch:
            raise ValueError(
                f"{resume_from} had {progress.steps_per_epoch} steps per epoch, this run has {steps_per_epoch}: "
                "the data changed since the run started"
            )
        skip = progress.step % steps_per_epoch
        # the killed run's lines after the checkpoint are trained again: drop them
        lines = log_path.read_text(encoding="utf-8").splitlines() if log_path.is_file() else []
        kept = [line for line in lines if json.loads(line)["step"] <= progress.step]
        log_path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        logger.info(f"resumed from {resume_from} at step {progress.step}")
    else:
        log_path.write_text("", encoding="utf-8")
    logger.info(
        f"MAE pre-training: {len(sampler)} crops of {args.image_size}x{args.image_size}, width {config.hidden_size}, "
        f"depth {config.num_hidden_layers}, {total} steps, lr {lr:g}, device {device}"
    )
    step, epoch, start = progress.step, progress.step // steps_per_epoch, time.time()
    with open(log_path, "a", encoding="utf-8") as log:
        while step < total:
            loader.set_epoch(epoch)
            batches = accelerator.skip_first_batches(loader, skip) if skip else loader
            skip = 0
            for batch in batches:
                pixels = batch["pixel_values"].to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.mixed_precision == "bf16"):
                    loss = model(pixel_values=pixels).loss
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite MAE loss at step {step}")
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                step = progress.step = step + 1
                record = {"step": step, "epoch": epoch, "loss": float(loss.detach()), "lr": scheduler.get_last_lr()[0]}
                log.write(json.dumps(record) + "\n")
                log.flush()
                if step % args.logging_steps == 0 or step == total:
                    logger.info(f"step {step}/{total} loss {record['loss']:.4f} ({time.time() - start:.0f} s)")
                if args.save_steps and step % args.save_steps == 0 and step < total:
                    save_checkpoint(accelerator.unwrap_model(model), output_dir / f"step-{step}", args, step)
                if args.checkpointing_steps and step % args.checkpointing_steps == 0 and step < total:
                    path = save_state_checkpoint(accelerator, str(output_dir), step, args.checkpoints_total_limit)
                    logger.info(f"checkpoint {path}")
                if step >= total:
                    break
            epoch += 1
    save_checkpoint(accelerator.unwrap_model(model), output_dir, args, step)
    logger.info(f"saved the MAE model to {output_dir} (use it as --init-from of vitpose-hf train)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    from vitpose_hf_cli import build_command_parser

    parser, _ = build_command_parser("pretrain-mae")
    return run(parser.parse_args(None if argv is None else list(argv)))


if __name__ == "__main__":
    sys.exit(main())
