"""``python -m vitpose_hf.cli COMMAND ...``: the ``vitpose-hf`` command, so that launchers that take a module run it
(``accelerate launch -m vitpose_hf.cli annotate ...``)."""

import sys

from vitpose_hf.cli import main

if __name__ == "__main__":
    sys.exit(main())
