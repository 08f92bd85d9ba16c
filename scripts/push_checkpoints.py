"""Write (and with --push, upload) the release folders: the same as `vitpose-hf push` (see its --help).

python scripts/push_checkpoints.py --sizes b --variants classic --source vitpose-b=ViTPose_base_coco_256x192.pth
python scripts/push_checkpoints.py --cards model_cards   # regenerate the committed model cards only
"""

from __future__ import annotations

import sys

from vitpose_hf.cli.push import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv[:1] == ["--cards"]:
        from vitpose_hf.release.variants import write_model_cards

        written = write_model_cards(argv[1] if len(argv) > 1 else "model_cards")
        print(f"wrote {len(written)} cards")
        sys.exit(0)
    sys.exit(main(argv))
