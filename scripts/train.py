#!/usr/bin/env python
"""Train or fine-tune ViTPose / ViTPose++ with Accelerate (same as `vitpose-hf train`).

Examples (see docs/training.md):
    python scripts/train.py --model_size b --init_from facebook/vit-mae-base \
        --dataset_name my-org/coco-keypoints --dataset_layout coco --output_dir vitpose-b-coco
    accelerate launch --config_file docs/accelerate/ddp_8gpu.yaml scripts/train.py ...
"""

import sys

from vitpose_hf.training.train import main

if __name__ == "__main__":
    sys.exit(main())
