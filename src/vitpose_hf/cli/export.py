"""`vitpose-hf export --model MODEL --output OUT` (or `export MODEL OUT`): ONNX or ExportedProgram, heatmaps or
decoded keypoints in the graph."""

from __future__ import annotations

import argparse

from vitpose_hf.inference.export import EXPORT_FORMATS
from vitpose_hf_cli import DTYPES, CommandError, dataset_name_or_index, dtype_name, user_errors

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vitpose-hf export`."""
    parser.add_argument("paths", nargs="*", metavar="PATH", help=argparse.SUPPRESS)  # the old positional MODEL OUT
    parser.add_argument("--model", help="checkpoint folder or Hub id (required)")
    parser.add_argument("--output", metavar="FILE", help="file to write, .onnx or .pt2 (required)")
    parser.add_argument("--format", default="onnx", choices=EXPORT_FORMATS, help="graph format")
    parser.add_argument(
        "--dataset",
        type=dataset_name_or_index,
        default=None,
        metavar="NAME_OR_INDEX",
        help="ViTPose++: the dataset to export, its expert merged (default: the only one)",
    )
    parser.add_argument(
        "--all-datasets", action="store_true", help="ViTPose++: every head in one graph, with a dataset_index input"
    )
    parser.add_argument("--with-decoding", action="store_true", help="output keypoints and scores, not heatmaps")
    parser.add_argument(
        "--dtype", type=dtype_name, choices=[d for d in DTYPES if d != "auto"], default="fp32", help="weight dtype"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run(args: argparse.Namespace) -> int:
    """Run `vitpose-hf export`; bad inputs raise :class:`vitpose_hf_cli.CommandError` (one line, status 2)."""
    from vitpose_hf.inference.export import export

    paths = list(args.paths)
    model = args.model or (paths.pop(0) if paths else None)
    out = args.output or (paths.pop(0) if paths else None)
    if paths or not model or not out:
        raise CommandError("give the checkpoint and the output file: --model MODEL --output FILE (or MODEL FILE)")
    with user_errors(ValueError, FileExistsError, FileNotFoundError):
        path = export(
            model,
            out,
            format=args.format,
            dataset=args.dataset,
            dtype={"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[args.dtype],
            with_decoding=args.with_decoding,
            overwrite=args.overwrite,
            all_datasets=args.all_datasets,
        )
    print(f"wrote {path}")
    return 0
