"""`python -m vitpose_hf_cli`: the `vitpose-hf` command line."""

import sys

from vitpose_hf_cli import main

sys.exit(main())
