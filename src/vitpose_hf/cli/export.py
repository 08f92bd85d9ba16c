"""`vitpose-hf export MODEL OUT`: ONNX or ExportedProgram, heatmaps or decoded keypoints in the graph."""

from __future__ import annotations

import argparse

from vitpose_hf.inference.export import EXPORT_FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="checkpoint folder or Hub id")
    parser.add_argument("out", help="file to write (.onnx or .pt2)")
    parser.add_argument("--format", default="onnx", help=f"one of {', '.join(EXPORT_FORMATS)} (default onnx)")
    parser.add_argument("--dataset", default=None, help="ViTPose++: the dataset to export (its expert merged)")
    parser.add_argument(
        "--all-datasets", action="store_true", help="ViTPose++: every head in one graph, with a dataset_index input"
    )
    parser.add_argument("--with-decoding", action="store_true", help="output keypoints and scores, not heatmaps")
    parser.add_argument("--dtype", default="float32", help="float32, float16 or bfloat16 weights")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run(args: argparse.Namespace) -> int:
    from vitpose_hf.inference.export import export

    dataset = int(args.dataset) if args.dataset is not None and args.dataset.isdigit() else args.dataset
    path = export(
        args.model,
        args.out,
        format=args.format,
        dataset=dataset,
        dtype=args.dtype,
        with_decoding=args.with_decoding,
        overwrite=args.overwrite,
        all_datasets=args.all_datasets,
    )
    print(f"wrote {path}")
    return 0
