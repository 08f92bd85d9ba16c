"""Convert checkpoints: `vitpose-hf convert --model SRC --output DST` (also `python -m vitpose_hf.cli.convert`).

SRC is detected automatically:
- an official mmpose `.pth` (a dict with `state_dict`, or a bare state dict): ViTPose S/B/L/H classic or
  simple, the v1 multi-dataset models, ViTPose++ with all experts and heads, or a `model_split.py` output;
- a transformers `vitpose` folder or Hub repo (`config.json` with `model_type: "vitpose"`);
- one of our folders, with `--to transformers` to export to transformers' format.
DST is a `save_pretrained` folder with a `preprocessor_config.json` (the per-dataset settings). Progress stages go to
stderr; the summary names the heads written (and, with `--to transformers`, those dropped).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch

from vitpose_hf.configuration_vitpose_hf import ViTPoseConfig
from vitpose_hf.conversion import (
    convert_official_state_dict,
    infer_official_config,
    is_transformers_vitpose,
    load_official_state_dict,
    ours_to_transformers,
    read_config_dict,
)
from vitpose_hf.modeling_vitpose_hf import ViTPoseForPoseEstimation
from vitpose_hf_cli import CommandError, dataset_name_or_index, user_errors

PRESET_ARCH_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "drop_path_rate",
    "decoder",
    "num_experts",
    "part_features",
)


def convert_official(path: str | os.PathLike, preset: str | None = None, **overrides: Any) -> ViTPoseForPoseEstimation:
    """Build our model from an official `.pth`, architecture read from the tensors (`preset` overrides it)."""
    state = convert_official_state_dict(load_official_state_dict(path))
    if preset:
        preset_config = ViTPoseConfig.from_preset(preset).to_dict()
        overrides = {**{k: preset_config[k] for k in PRESET_ARCH_KEYS}, **overrides}
    config = ViTPoseConfig(**infer_official_config(state, **overrides))
    with torch.device("meta"):
        model = ViTPoseForPoseEstimation(config)
    try:
        result = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:  # size mismatches: the preset or overrides contradict the tensors
        details = " ".join(line.strip() for line in str(exc).splitlines()[1:4])
        raise ValueError(f"{path} does not fit the chosen architecture: {details}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path} does not fit the inferred architecture: missing {result.missing_keys[:10]}, "
            f"unexpected {result.unexpected_keys[:10]}"
        )
    return model.eval()


def export_transformers(model: ViTPoseForPoseEstimation, directory: str | os.PathLike, dataset: int | str = 0) -> None:
    """Write transformers' `vitpose` format (one head; transformers cannot hold more)."""
    from safetensors.torch import save_file

    config_dict, state = ours_to_transformers(model.config, model.state_dict(), dataset)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(str(directory), "config.json"), "w", encoding="utf-8") as f:
        json.dump(config_dict, f, indent=2)
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        os.path.join(str(directory), "model.safetensors"),
        metadata={"format": "pt"},
    )


def _progress(message: str, start: float) -> None:
    """One stage of a conversion on stderr, with the time since ``start`` (large checkpoints take a while)."""
    print(f"[{time.perf_counter() - start:6.1f}s] {message}", file=sys.stderr, flush=True)


def write_processor(model: ViTPoseForPoseEstimation, directory: str | os.PathLike, source: str | None = None) -> None:
    """``preprocessor_config.json`` beside the weights: the model's input size and each dataset's settings (UDP),
    so that ``AutoImageProcessor.from_pretrained(directory, trust_remote_code=True)`` works."""
    from vitpose_hf.inference.pipeline import processor_for_model

    processor_for_model(model, source).save_pretrained(str(directory))


def write_transformers_processor(config: ViTPoseConfig, directory: str | os.PathLike) -> bool:
    """transformers' ``VitPoseImageProcessor`` config beside an exported checkpoint; False without that class."""
    try:
        from transformers import VitPoseImageProcessor
    except ImportError:
        return False
    height, width = config.image_size
    VitPoseImageProcessor(size={"height": height, "width": width}).save_pretrained(str(directory))
    return True


def _check_source(src: str) -> None:
    """A missing local path, or a Hub name that cannot be fetched, fails here with the real cause."""
    from vitpose_hf.inference.hub import check_local_path, hub_reachable, unreachable_error

    if os.path.exists(src):
        return
    check_local_path(src, "checkpoint", "--model")
    if read_config_dict(src) is None:
        if not hub_reachable():
            raise unreachable_error(src, "model", "--model")
        raise ValueError(f"--model {src!r}: no such file, folder or Hub repo with a config.json")


def convert(
    src: str,
    dst: str,
    preset: str | None = None,
    to: str = "vitpose_hf",
    dataset: str | int | None = None,
    datasets: list[str] | None = None,
    num_attention_heads: int | None = None,
) -> str:
    """Convert SRC to DST and return a description of what was written (heads kept and dropped included)."""
    overrides: dict[str, Any] = {"datasets": datasets} if datasets else {}
    if num_attention_heads:
        overrides["num_attention_heads"] = num_attention_heads
    _check_source(src)
    start = time.perf_counter()
    size = f" ({os.path.getsize(src) / 1e6:.0f} MB)" if os.path.isfile(src) else ""
    _progress(f"reading {src}{size}", start)
    if os.path.isfile(src):
        model = convert_official(src, preset=preset, **overrides)
        kind = "official checkpoint"
    elif is_transformers_vitpose(src):
        model = ViTPoseForPoseEstimation.from_pretrained(src)
        kind = "transformers vitpose checkpoint"
    elif (read_config_dict(src) or {}).get("model_type") == ViTPoseConfig.model_type:
        model = ViTPoseForPoseEstimation.from_pretrained(src)
        kind = "vitpose_hf checkpoint"
    else:
        raise ValueError(
            f"{src} is not an official .pth file, a transformers vitpose folder or a vitpose_hf folder "
            f"(its config.json has model_type {(read_config_dict(src) or {}).get('model_type')!r})"
        )
    all_heads = list(model.config.dataset_names)
    _progress(f"read a {kind} with the head(s) {all_heads}; writing {dst}", start)
    if to == "transformers":
        chosen = dataset if dataset is not None else 0
        kept = all_heads[model.config.dataset_to_index(chosen)]
        export_transformers(model, dst, chosen)
        write_transformers_processor(model.config, dst)
    else:
        model = model.single_dataset(dataset) if dataset is not None else model
        kept = None
        model.save_pretrained(dst)
        write_processor(model, dst, None if os.path.isfile(src) or dataset is not None else src)
    config = model.config
    heads = f"datasets {config.dataset_names}"
    if kept is not None:
        dropped = [name for name in all_heads if name != kept]
        heads = f"kept the {kept!r} head" + (
            f"; dropped {dropped} (transformers' format holds one head; --dataset NAME picks another)"
            if dropped
            else ""
        )
    elif dataset is not None and len(all_heads) > 1:
        dropped = [name for name in all_heads if name not in config.dataset_names]
        heads = f"kept {config.dataset_names}; dropped {dropped}"
    _progress("done", start)
    return (
        f"{kind} {src} -> {dst} ({to}): width {config.hidden_size}, depth {config.num_hidden_layers}, "
        f"{config.num_experts} expert(s), {config.decoder} decoder, {heads}"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vitpose-hf convert`."""
    parser.add_argument("paths", nargs="*", metavar="PATH", help=argparse.SUPPRESS)  # the old positional SRC DST
    parser.add_argument(
        "--model", help="official .pth, transformers vitpose folder / Hub repo, or a vitpose_hf folder (required)"
    )
    parser.add_argument("--output", metavar="DIR", help="output folder (required; a second positional works too)")
    parser.add_argument(
        "--preset",
        help="architecture preset overriding what is read from the tensors "
        f"({', '.join(ViTPoseConfig.preset_names())}; default: read from the tensors)",
    )
    parser.add_argument("--to", choices=["vitpose_hf", "transformers"], default="vitpose_hf", help="output format")
    parser.add_argument(
        "--dataset",
        type=dataset_name_or_index,
        metavar="NAME_OR_INDEX",
        help="keep one dataset (its expert merged, its head only); with --to transformers, the head to export "
        "(default: every head; the first with --to transformers)",
    )
    parser.add_argument(
        "--datasets", nargs="+", help="dataset names of the heads, in order, when they cannot be inferred"
    )
    parser.add_argument(
        "--num-attention-heads", type=int, help="attention heads, for widths with no official model (default: by width)"
    )


def _source_and_output(args: argparse.Namespace) -> tuple[str, str]:
    paths = list(args.paths)
    src = args.model or (paths.pop(0) if paths else None)
    dst = args.output or (paths.pop(0) if paths else None)
    if paths:
        raise CommandError(f"unexpected extra arguments {paths}; give --model SRC --output DIR")
    if not src or not dst:
        raise CommandError("give the checkpoint and the output folder: --model SRC --output DIR (or SRC DIR)")
    return src, dst


def run(args: argparse.Namespace) -> int:
    """Run `vitpose-hf convert`; bad inputs raise :class:`vitpose_hf_cli.CommandError` (one line, status 2)."""
    src, dst = _source_and_output(args)
    with user_errors(ValueError, FileNotFoundError):
        summary = convert(
            src,
            dst,
            preset=args.preset,
            to=args.to,
            dataset=args.dataset,
            datasets=args.datasets,
            num_attention_heads=args.num_attention_heads,
        )
    print(summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m vitpose_hf.cli.convert`: the same as `vitpose-hf convert`."""
    from vitpose_hf_cli import main as cli_main

    return cli_main(["convert", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
