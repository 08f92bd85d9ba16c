"""The light launcher of the `vitpose-hf` command line: the command table, ``--help`` and ``--version``.

It lives outside the ``vitpose_hf`` package on purpose. Importing ``vitpose_hf`` registers the model with the
transformers Auto classes, which imports torch and transformers (seconds); the top-level help and the version must
not pay for that. A sub-command's module (and with it ``vitpose_hf``) is imported only when that command is named.

Each sub-command module defines ``add_arguments(parser)`` and ``run(args) -> int``. A new command is one more line in
:data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Iterator

__all__ = [
    "COMMANDS",
    "CommandError",
    "HelpFormatter",
    "add_alias",
    "build_command_parser",
    "DTYPES",
    "build_parser",
    "dash_spellings",
    "dataset_name_or_index",
    "dtype_name",
    "main",
    "user_errors",
    "version",
]

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("vitpose_hf.cli.predict", "estimate poses on images, folders of frames or videos"),
    "eval": ("vitpose_hf.cli.evaluate", "evaluate a model on a COCO-format or Hub dataset"),
    "train": ("vitpose_hf.training.train", "train or fine-tune with Accelerate"),
    "distill": ("vitpose_hf.training.distill", "train a student from a frozen teacher's heatmaps"),
    "pretrain-mae": ("vitpose_hf.training.pretrain_mae", "MAE pre-training on person crops (an --init-from for train)"),
    "convert": ("vitpose_hf.cli.convert", "convert official .pth or transformers checkpoints"),
    "export": ("vitpose_hf.cli.export", "export to ONNX or a torch.export ExportedProgram"),
    "push": ("vitpose_hf.cli.push", "write Hub-ready release folders (and upload them with --push)"),
    "annotate": ("vitpose_hf.cli.annotate", "pose-annotate a whole image dataset into Parquet shards (Accelerate)"),
    "convert-dataset": ("vitpose_hf.data.hub_dataset", "turn a COCO keypoint json and images into a Hub dataset"),
}

EXIT_USAGE = 2  # argparse's exit status for bad arguments; user errors use it too


class CommandError(ValueError):
    """A user error of a sub-command: printed as one line ``vitpose-hf CMD: error: ...`` with exit status 2.

    Any exception with a ``cli_exit_code`` attribute is reported the same way (the Hub-unreachable error uses 1).
    """

    cli_exit_code = EXIT_USAGE


@contextlib.contextmanager
def user_errors(*kinds: type[BaseException]) -> Iterator[None]:
    """Turn the ``kinds`` of exception (default: ValueError) raised inside into :class:`CommandError`: bad options
    or data, found before the real work starts, end the command with one line instead of a traceback. Exceptions
    that carry their own ``cli_exit_code`` pass through unchanged."""
    caught = kinds or (ValueError,)
    try:
        yield
    except CommandError:
        raise
    except caught as exc:
        if getattr(exc, "cli_exit_code", None) is not None:
            raise
        raise CommandError(str(exc).strip("'\"")) from exc


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks and appends ``(default: X)`` to options whose help does not say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or "%(default)" in text
            or default is None
            or default is False  # a flag: off unless given
            or default == []
            or default == argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {shown})"


DTYPES = ("auto", "fp32", "bf16", "fp16")
_DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}


def dtype_name(text: str) -> str:
    """An argparse ``type`` for ``--dtype``: one of :data:`DTYPES`; torch's names (float32, bfloat16, float16) are
    accepted for them."""
    lowered = text.strip().lower()
    return _DTYPE_ALIASES.get(lowered, lowered)


def dataset_name_or_index(text: str) -> str | int:
    """An argparse ``type`` for ``--dataset``: a head's name, or its index (``3``) as the Python API takes it."""
    stripped = text.strip()
    return int(stripped) if stripped.isdigit() else stripped


def version() -> str:
    """The installed vitpose-hf version (from the package metadata; no import of the package itself)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("vitpose-hf")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: the command list, ``--help`` and ``--version``."""
    parser = argparse.ArgumentParser(
        prog="vitpose-hf",
        description="ViTPose / ViTPose++ for Hugging Face.",
        epilog="Run `vitpose-hf COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"vitpose-hf {version()}", help="print the version")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def add_alias(parser: argparse.ArgumentParser, action: argparse.Action, *spellings: str) -> None:
    """Accept ``spellings`` for ``action`` (of ``parser`` or one of its groups) without showing them in the help:
    old names that scripts may use."""
    for spelling in spellings:
        parser._option_string_actions.setdefault(spelling, action)


def dash_spellings(parser: argparse.ArgumentParser) -> None:
    """Every long option has a dashed spelling (``--output-dir``), shown in help and errors, and an underscore one
    (``--output_dir``, the Accelerate / transformers-script style), accepted as a hidden alias. Idempotent: an
    ``add_arguments`` may call it on its own parser, and the launcher calls it again."""
    for action in parser._actions:
        shown = []
        for option in action.option_strings:
            if option.startswith("--"):
                dashed = "--" + option[2:].replace("_", "-")
                add_alias(parser, action, dashed, "--" + option[2:].replace("-", "_"))
                option = dashed
            if option not in shown:
                shown.append(option)
        action.option_strings = shown


def build_command_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    """The parser of one sub-command and its module (imported here: this is the slow part)."""
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(
        prog=f"vitpose-hf {name}", description=COMMANDS[name][1], formatter_class=HelpFormatter
    )
    module.add_arguments(parser)
    dash_spellings(parser)
    return parser, module


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vitpose-hf` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and not argv[0].startswith("-"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        if argv:
            parser.parse_args(argv)  # --help, --version, or an unknown option (argparse's error)
        parser.print_help()
        return EXIT_USAGE
    name = argv[0]
    parser, module = build_command_parser(name)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except Exception as exc:
        code = getattr(exc, "cli_exit_code", None)  # user errors say how the command line should end
        if code is None:
            raise
        print(f"vitpose-hf {name}: error: {exc}", file=sys.stderr)
        return int(code)


if __name__ == "__main__":
    sys.exit(main())
