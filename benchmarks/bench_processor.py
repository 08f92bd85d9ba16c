"""Time ViTPoseImageProcessor against transformers' VitPose image processor (PIL backend), in one run.

Cases: preprocessing one 640x480 image with 10 boxes; post-processing 10 and 100 people (17 x 64 x 48
heatmaps, UDP + DARK decoding). Prints the median time of each and the ratio (target: >= 10x), once per torch
thread count (transformers' processor is single-threaded numpy / scipy either way).

    PYTHONPATH=src python benchmarks/bench_processor.py [--repeats 30] [--threads 1 2]

On a machine shared with other jobs, torch's multi-threaded ops stall while a worker thread waits for a core:
compare the 1-thread figures there.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from transformers.models.vitpose.image_processing_pil_vitpose import VitPoseImageProcessorPil
from transformers.models.vitpose.modeling_vitpose import VitPoseEstimatorOutput

from vitpose_hf.codecs import UDPHeatmap
from vitpose_hf.image_processing_vitpose_hf import ViTPoseImageProcessor


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def make_boxes(num: int, rng: np.random.Generator) -> list[list[float]]:
    """``num`` xywh person-like boxes inside a 640 x 480 image."""
    w = rng.uniform(40, 200, num)
    h = rng.uniform(100, 400, num)
    x = rng.uniform(0, 640 - w)
    y = rng.uniform(0, 480 - h)
    return np.stack([x, y, w, h], axis=1).round(2).tolist()


def make_heatmaps(num: int, rng: np.random.Generator) -> torch.Tensor:
    """Realistic heatmaps: a sigma-2 Gaussian per keypoint at a random place, plus a little noise."""
    codec = UDPHeatmap()
    keypoints = torch.from_numpy(rng.uniform([10, 10], [180, 245], (num, 17, 2))).float()
    heatmaps = codec.encode(keypoints)["heatmaps"]
    return (heatmaps * 0.9 + 0.02 * torch.from_numpy(rng.standard_normal(heatmaps.shape)).float()).contiguous()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch CPU thread counts to run")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", flush=True)
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n{threads} torch thread(s)")
        print(f"{'case':<40} {'vitpose_hf':>12} {'transformers':>13} {'speed-up':>9}", flush=True)
        for name, mine, ref in run_cases(args.repeats):  # each row as soon as it is measured
            print(f"{name:<40} {mine:>9.2f} ms {ref:>10.2f} ms {ref / mine:>8.1f}x", flush=True)


def run_cases(repeats: int) -> Iterator[tuple[str, float, float]]:
    """(case, our median ms, transformers' median ms) for the three cases, yielded one by one as measured."""
    rng = np.random.default_rng(0)

    ours = ViTPoseImageProcessor()
    theirs = VitPoseImageProcessorPil()
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    boxes = make_boxes(10, rng)

    ours_ms = median_ms(lambda: ours(image, boxes), repeats)
    theirs_ms = median_ms(lambda: theirs(image, boxes=[boxes], return_tensors="pt"), repeats)
    yield ("preprocess 1 image 640x480, 10 boxes", ours_ms, theirs_ms)

    for people in (10, 100):
        person_boxes = make_boxes(people, rng)
        heatmaps = make_heatmaps(people, rng)
        outputs = VitPoseEstimatorOutput(heatmaps=heatmaps)
        crops = ours(image, person_boxes)  # the crop metadata post-processing maps back with
        ours_ms = median_ms(lambda o=outputs, c=crops: ours.post_process_pose_estimation(o, crop_metadata=c), repeats)
        theirs_ms = median_ms(
            lambda o=outputs, b=person_boxes: theirs.post_process_pose_estimation(o, boxes=[b]), max(5, repeats // 3)
        )
        yield (f"post-process {people} people (17x64x48)", ours_ms, theirs_ms)


if __name__ == "__main__":
    main()
