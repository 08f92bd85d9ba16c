"""Training throughput of the real training loop (`vitpose_hf.training.train`), and the share spent waiting for data.

    python benchmarks/bench_training.py                       # ViTPose-S, CPU (and ViTPose-B bf16 when CUDA is there)
    python benchmarks/bench_training.py --steps 8 --batch 8 --workers 2 --skip-gpu

Data: synthetic COCO-layout images of 640x480 (JPEG, 1-3 drawn people each), converted to the Hub schema, so every
sample pays for JPEG decoding, the official augmentation, the UDP warp and target rendering, as with COCO.

Prints, per run: samples/s over the timed steps (the first step, with worker start-up, is left out), the share of
wall time the loop waited for a batch, and the data pipeline's cost per sample in one process (how many loader
workers a given speed needs: workers = samples/s x cost).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import datasets
import torch

from vitpose_hf.data.hub_dataset import explode_instances, write_layout
from vitpose_hf.data.transforms import AugmentConfig, InstanceTable, TopDownDataset, TopDownSource, TopDownTransform
from vitpose_hf.keypoint_metadata import get_dataset_info
from vitpose_hf.testing import synthetic_keypoint_dataset
from vitpose_hf.training import train as train_module


def make_data(folder: Path, images: int) -> Path:
    train = synthetic_keypoint_dataset(
        "coco",
        num_images=images,
        image_size=(480, 640),
        max_figures=3,
        figure_height=(0.4, 0.9),
        image_format="JPEG",
        seed=0,
    )
    datasets.DatasetDict(train=train).save_to_disk(str(folder))
    write_layout(get_dataset_info("coco"), folder)
    return folder


def pipeline_cost(folder: Path, input_size: tuple[int, int], samples: int = 100) -> float:
    """Seconds per training sample of the data pipeline alone, in this process (1 thread, as a loader worker)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    images = datasets.load_from_disk(str(folder))["train"]
    instances, _ = explode_instances(images, 17)
    transform = TopDownTransform("coco", input_size, (input_size[0] // 4, input_size[1] // 4), AugmentConfig())
    dataset = TopDownDataset(
        [
            TopDownSource(
                "coco", images.select_columns(["image"]), InstanceTable.from_dataset(instances, 17), transform, 0
            )
        ]
    )
    n = len(dataset)
    for i in range(5):
        dataset[(0, i % n, i)]
    start = time.perf_counter()
    for i in range(samples):
        dataset[(0, i % n, i)]
    cost = (time.perf_counter() - start) / samples
    torch.set_num_threads(threads)
    return cost


def run(size: str, folder: Path, output: Path, steps: int, batch: int, workers: int, extra: list[str]) -> dict:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    argv = [
        "--model_size",
        size,
        "--dataset_name",
        str(folder),
        "--output_dir",
        str(output),
        "--max_train_steps",
        str(steps + 1),
        "--logging_steps",
        str(steps + 1),
        "--per_device_train_batch_size",
        str(batch),
        "--dataloader_num_workers",
        str(workers),
        "--warmup_steps",
        "1",
        *extra,
    ]
    train_module.main(argv)
    log = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    last = [r for r in log if "samples_per_second" in r][-1]  # steps 2..N+1: step 1 (start-up) is its own window
    return last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per run")
    parser.add_argument("--batch", type=int, default=8, help="CPU batch size")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="CPU run loader workers")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--gpu-batch", type=int, default=64)
    parser.add_argument("--gpu-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--gpu-steps", type=int, default=20)
    parser.add_argument("--skip-gpu", action="store_true")
    args = parser.parse_args()

    header = (
        f"{'model':<10} {'device':<28} {'batch':>5} {'workers':>7} {'samples/s':>10} {'data wait':>9} "
        f"{'workers needed':>15}"
    )

    def show(model: str, device: str, batch: int, workers: int, record: dict) -> None:
        sps = record["samples_per_second"]  # each row as soon as it is measured
        print(
            f"{model:<10} {device:<28} {batch:>5} {workers:>7} {sps:>10.1f} {100 * record['data_wait_share']:>8.0f}% "
            f"{sps * cost:>15.1f}",
            flush=True,
        )

    with tempfile.TemporaryDirectory() as tmp:
        folder = make_data(Path(tmp) / "data", args.images)
        cost = pipeline_cost(folder, (256, 192))
        print(
            f"data pipeline: {1000 * cost:.1f} ms per sample in one process (JPEG 640x480, official augmentation, "
            f"256x192 UDP crop, 17 targets)",
            flush=True,
        )
        print(f"\n{header}", flush=True)
        threads = torch.get_num_threads()
        record = run(
            "s", folder, Path(tmp) / "cpu", args.steps, args.batch, args.workers, ["--cpu", "--mixed_precision", "no"]
        )
        show("ViTPose-S", "cpu fp32", args.batch, args.workers, record)
        if torch.cuda.is_available() and not args.skip_gpu:
            record = run(
                "b",
                folder,
                Path(tmp) / "gpu",
                args.gpu_steps,
                args.gpu_batch,
                args.gpu_workers,
                ["--mixed_precision", "bf16"],
            )
            show("ViTPose-B", f"{torch.cuda.get_device_name()} bf16", args.gpu_batch, args.gpu_workers, record)
    print(
        f"\n(CPU torch threads in the main process: {threads}; 'workers needed' = samples/s x pipeline cost per sample)"
    )


if __name__ == "__main__":
    main()
