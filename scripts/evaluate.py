#!/usr/bin/env python
"""Evaluate a ViTPose model on a COCO-format or Hub keypoint dataset (same as `vitpose-hf eval`).

Example:
    python scripts/evaluate.py path/to/model --annotations data/coco/annotations/person_keypoints_val2017.json \
        --images data/coco/val2017 --bbox-file COCO_val2017_detections_AP_H_56_person.json --flip-test
"""

import argparse
import sys

from vitpose_hf.cli import evaluate as evaluate_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.splitlines()[0])
    evaluate_cli.add_arguments(parser)
    return evaluate_cli.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
