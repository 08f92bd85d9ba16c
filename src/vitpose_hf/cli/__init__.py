"""The `vitpose-hf` command line: one entry point, one sub-command per module.

The command table and the dispatcher live in the light launcher :mod:`vitpose_hf_cli` (outside this package, so that
``vitpose-hf --help`` and ``--version`` do not import torch); they are re-exported here. Each sub-command module
defines ``add_arguments(parser)`` and ``run(args) -> int``; raising :class:`CommandError` prints one error line.
"""

from __future__ import annotations

import sys

from vitpose_hf_cli import COMMANDS, CommandError, HelpFormatter, build_command_parser, build_parser, main

__all__ = ["COMMANDS", "CommandError", "HelpFormatter", "build_command_parser", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
