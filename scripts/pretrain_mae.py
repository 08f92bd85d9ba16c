#!/usr/bin/env python
"""MAE pre-training on person crops only (same as `vitpose-hf pretrain-mae`; see docs/training.md).

Example:
    python scripts/pretrain_mae.py --model_size b --dataset_name my-org/coco-keypoints --dataset_layout coco \
        --dataset_name my-org/aic-keypoints --dataset_layout aic --output_dir mae-b-pose
    python scripts/train.py --model_size b --init_from mae-b-pose --dataset_name my-org/coco-keypoints ...
"""

import sys

from vitpose_hf.training.pretrain_mae import main

if __name__ == "__main__":
    sys.exit(main())
