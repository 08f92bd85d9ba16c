#!/usr/bin/env python
"""Output distillation from a frozen teacher (same as `vitpose-hf distill`; see docs/training.md).

Example:
    python scripts/distill.py --teacher my-org/vitpose-h-coco --model_size b --init_from facebook/vit-mae-base \
        --dataset_name my-org/coco-keypoints --dataset_layout coco --distill_weight 1 --output_dir vitpose-b-from-h
"""

import sys

from vitpose_hf.training.distill import main

if __name__ == "__main__":
    sys.exit(main())
