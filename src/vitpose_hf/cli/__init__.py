"""The `vitpose-hf` command line: one entry point, one sub-command per module.

Each sub-command module defines `add_arguments(parser)` and `run(args) -> int`; modules are imported only
when their command runs, so `vitpose-hf --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("vitpose_hf.cli.predict", "estimate poses on images, folders of frames or videos"),
    "eval": ("vitpose_hf.cli.evaluate", "evaluate a model on a COCO-format or Hub dataset"),
    "train": ("vitpose_hf.training.train", "train or fine-tune with Accelerate"),
    "distill": ("vitpose_hf.training.distill", "train a student from a frozen teacher's heatmaps"),
    "pretrain-mae": ("vitpose_hf.training.pretrain_mae", "MAE pre-training on person crops (an --init_from for train)"),
    "convert": ("vitpose_hf.cli.convert", "convert official .pth or transformers checkpoints"),
    "export": ("vitpose_hf.cli.export", "export to ONNX or a torch.export ExportedProgram"),
    "convert-dataset": ("vitpose_hf.data.hub_dataset", "turn a COCO keypoint json and images into a Hub dataset"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitpose-hf", description="ViTPose / ViTPose++ for Hugging Face.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and not argv[0].startswith("-"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        parser.print_help()
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    sub_parser = argparse.ArgumentParser(prog=f"vitpose-hf {name}", description=COMMANDS[name][1])
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
