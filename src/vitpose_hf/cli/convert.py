"""Convert checkpoints: `python -m vitpose_hf.cli.convert SRC DST` (also `vitpose-hf convert`).

SRC is detected automatically:
- an official mmpose `.pth` (a dict with `state_dict`, or a bare state dict): ViTPose S/B/L/H classic or
  simple, the v1 multi-dataset models, ViTPose++ with all experts and heads, or a `model_split.py` output;
- a transformers `vitpose` folder or Hub repo (`config.json` with `model_type: "vitpose"`);
- one of our folders, with `--to transformers` to export to transformers' format.
DST is a `save_pretrained` folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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
    result = model.load_state_dict(state, strict=False, assign=True)
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


def convert(
    src: str,
    dst: str,
    preset: str | None = None,
    to: str = "vitpose_hf",
    dataset: str | None = None,
    datasets: list[str] | None = None,
    num_attention_heads: int | None = None,
) -> str:
    """Convert SRC to DST and return a one-line description of what was written."""
    overrides: dict[str, Any] = {"datasets": datasets} if datasets else {}
    if num_attention_heads:
        overrides["num_attention_heads"] = num_attention_heads
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
        raise ValueError(f"{src} is not an official .pth file, a transformers vitpose folder or a vitpose_hf folder")
    if to == "transformers":
        export_transformers(model, dst, dataset if dataset is not None else 0)
    else:
        model = model.single_dataset(dataset) if dataset is not None else model
        model.save_pretrained(dst)
    config = model.config
    return (
        f"{kind} {src} -> {dst} ({to}): width {config.hidden_size}, depth {config.num_hidden_layers}, "
        f"{config.num_experts} expert(s), {config.decoder} decoder, datasets {config.dataset_names}"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="official .pth, transformers vitpose folder/repo, or a vitpose_hf folder")
    parser.add_argument("dst", help="output folder")
    parser.add_argument(
        "--preset",
        help="architecture preset overriding what is read from the tensors "
        f"({', '.join(ViTPoseConfig.preset_names())})",
    )
    parser.add_argument("--to", choices=["vitpose_hf", "transformers"], default="vitpose_hf", help="output format")
    parser.add_argument(
        "--dataset",
        help="keep one dataset (its expert merged, its head only); with --to transformers, the head to export",
    )
    parser.add_argument(
        "--datasets", nargs="+", help="dataset names of the heads, in order, when they cannot be inferred"
    )
    parser.add_argument("--num-attention-heads", type=int, help="attention heads, for widths with no official model")


def run(args: argparse.Namespace) -> int:
    print(
        convert(
            args.src,
            args.dst,
            preset=args.preset,
            to=args.to,
            dataset=args.dataset,
            datasets=args.datasets,
            num_attention_heads=args.num_attention_heads,
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitpose_hf.cli.convert", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
