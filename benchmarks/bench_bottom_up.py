"""Time per image of bottom-up ViTPose (512 x 512, no boxes) against top-down ViTPose with given boxes, same size.

    python benchmarks/bench_bottom_up.py [--size b] [--people 1 5 20] [--repeats 3] [--device cpu|cuda] [--threads N]

One run prints: the machine (CPU model and ISA flags, or the GPU), a plain fp32 matmul's GFLOP/s measured in the same
run, then per crowd size the median seconds per 640 x 480 image of
- bottom-up: preprocess (resize + pad to 512) + forward + grouping of that many people (the grouping runs on
  heatmaps and tags that encode that many people, since random weights find nobody), and
- top-down: preprocess of that many given boxes (256 x 192 crops) + forward of the crops + decoding,
measured alternately (so load changes hit both), and the crowd size where the two cost the same (linear fit of
the top-down times).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import machine, matmul_gflops, paired_times  # noqa: E402

from vitpose_hf.configuration_vitpose_hf import ViTPoseBottomUpConfig, ViTPoseConfig  # noqa: E402
from vitpose_hf.image_processing_vitpose_hf import ViTPoseImageProcessor  # noqa: E402
from vitpose_hf.image_processing_vitpose_hf_bottom_up import ViTPoseBottomUpImageProcessor  # noqa: E402
from vitpose_hf.modeling_vitpose_hf import ViTPoseForPoseEstimation  # noqa: E402
from vitpose_hf.modeling_vitpose_hf_bottom_up import ViTPoseForBottomUpPoseEstimation  # noqa: E402


def crowd(n: int, rng: np.random.Generator, height: int = 480, width: int = 640) -> tuple[np.ndarray, np.ndarray]:
    """n xywh boxes and (n, 17, 3) keypoints inside them."""
    boxes = np.stack(
        [rng.uniform(0, width - 60, n), rng.uniform(0, height - 120, n), np.full(n, 60.0), np.full(n, 120.0)], 1
    )
    points = boxes[:, None, :2] + rng.uniform(0, 1, (n, 17, 2)) * boxes[:, None, 2:]
    return boxes, np.concatenate([points, np.full((n, 17, 1), 2.0)], -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="b", choices=["s", "b", "l", "h"])
    parser.add_argument("--people", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    print(machine(device)[0], flush=True)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}", flush=True)
    print(f"plain fp32 matmul 2048^3: {matmul_gflops(torch.float32, device, 5):.0f} GFLOP/s", flush=True)

    torch.manual_seed(0)
    preset = f"vitpose-{args.size}"
    top_down = ViTPoseForPoseEstimation(ViTPoseConfig.from_preset(preset)).eval().to(device)
    bottom_up = ViTPoseForBottomUpPoseEstimation(ViTPoseBottomUpConfig.from_preset(preset)).eval().to(device)
    td_processor = ViTPoseImageProcessor()
    bu_processor = ViTPoseBottomUpImageProcessor()
    codec = bu_processor.get_codec()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    print(f"{preset}: bottom-up 512x512 (no boxes) vs top-down 256x192 crops of given boxes; image 640x480", flush=True)
    print(f"{'people':>6} {'bottom-up s':>12} {'top-down s':>11} {'bu/td':>6}", flush=True)

    rows = []
    for n in args.people:
        boxes, keypoints = crowd(n, rng)
        meta = bu_processor.preprocess(image)
        points = keypoints[..., :2] * meta["matrix"][0, 0, 0].item() + meta["matrix"][0, 0, 2].item()
        maps = codec.encode_people(torch.from_numpy(points), torch.ones(n, 17))
        people = SimpleNamespace(heatmaps=maps["heatmaps"].float()[None], tags=maps["tags"].float()[None, :, None])

        def run_bottom_up(people=people):
            with torch.inference_mode():
                features = bu_processor.preprocess(image)
                bottom_up(features["pixel_values"].to(device))
                bu_processor.post_process_pose_estimation(people, features)

        def run_top_down(boxes=boxes):
            with torch.inference_mode():
                features = td_processor.preprocess(image, boxes=[boxes])
                out = top_down(features["pixel_values"].to(device))
                td_processor.post_process_pose_estimation(out, crop_metadata=features)

        t_bu, t_td, ratio = paired_times(run_bottom_up, run_top_down, args.repeats, device, warmup=1)
        rows.append((n, t_bu, t_td))
        print(f"{n:6d} {t_bu:12.3f} {t_td:11.3f} {ratio:6.2f}", flush=True)

    if len(rows) >= 2:
        counts = np.array([r[0] for r in rows], dtype=float)
        slope, intercept = np.polyfit(counts, np.array([r[2] for r in rows]), 1)
        bu = float(np.median([r[1] for r in rows]))
        if slope > 0:
            print(
                f"crossover: top-down costs {intercept:.3f} s + {slope:.3f} s per person; bottom-up ~{bu:.3f} s "
                f"per image -> bottom-up is cheaper from ~{max((bu - intercept) / slope, 0):.1f} people per image",
                flush=True,
            )
    print(f"done at {time.strftime('%H:%M:%S')}", flush=True)


if __name__ == "__main__":
    main()
