#!/usr/bin/env python
"""Convert a COCO keypoint json and its images into the vitpose-hf Hub dataset schema (same as
`vitpose-hf convert-dataset`).

Example:
    python scripts/coco_to_hub_dataset.py \
        --annotations person_keypoints_train2017.json --images train2017 --split train \
        --annotations person_keypoints_val2017.json --images val2017 --split validation \
        --output coco-keypoints-hub [--push_to_hub my-org/coco-keypoints]
"""

import sys

from vitpose_hf.data.hub_dataset import main

if __name__ == "__main__":
    sys.exit(main())
