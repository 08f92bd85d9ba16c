"""The whole benchmark suite in one run; writes benchmarks/RESULTS.md. Every figure sits next to its reference.

    PYTHONPATH=src python benchmarks/run_all.py                 # S/B/L/H, batch 1 and 8 (64 on GPU), compiled rows
    PYTHONPATH=src python benchmarks/run_all.py --quick         # ViTPose-S, few repeats: < 5 min on a 2-core CPU
    PYTHONPATH=src python benchmarks/run_all.py --device cuda
    PYTHONPATH=src python benchmarks/run_all.py --tiny --output /tmp/R.md   # tiny random models (the test's run)

Sections: model forward (fp32 / bf16 eager, compiled, onnxruntime) against transformers' VitPose with the same
weights; ViTPose++ against dense; pre- / post-processing against transformers' processor; the pipeline in people/s
with given boxes against transformers' processor + model + post-processing by hand; training samples/s; achieved
GFLOP/s as a share of a plain matmul of the same dtype on the same device. Figures are the median and the median
absolute deviation of the repeats; ratios are the median of per-repeat ratios (ours and the reference alternate, so
load changes hit both). Each row is printed as soon as it is measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling bench_* scripts

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_model import count_flops, linear_seconds, machine, paired_samples  # noqa: E402
from bench_processor import make_boxes, make_heatmaps  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import VitPoseForPoseEstimation as HFVitPose  # noqa: E402

from vitpose_hf import ViTPoseConfig, ViTPoseForPoseEstimation  # noqa: E402
from vitpose_hf.cli.convert import export_transformers  # noqa: E402

SECTIONS = (
    "Model forward",
    "ViTPose++ vs dense",
    "Pre- and post-processing",
    "Pipeline",
    "Training",
    "Achieved GFLOP/s",
)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=(64, 48), patch_size=8)


# ---- statistics ----------------------------------------------------------------------------------------------------


@dataclass
class Figure:
    """Repeated measurements of one quantity (seconds, or a rate)."""

    values: list[float]
    unit: str
    scale: float = 1.0  # display factor (1e3 for ms)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> float:
        m = self.median
        return statistics.median(abs(v - m) for v in self.values)

    def __str__(self) -> str:
        return f"{self.median * self.scale:.4g} ± {self.spread * self.scale:.2g} {self.unit}"


def ms(values: list[float]) -> Figure:
    return Figure(values, "ms", 1e3)


@dataclass
class Report:
    sections: dict[str, list[list[str]]] = field(default_factory=lambda: {name: [] for name in SECTIONS})

    def row(self, section: str, name: str, ours: Figure, ref: Figure, ratio: float, reference: str, note: str = ""):
        cells = [name, str(ours), str(ref), f"{ratio:.2f}", reference, note]
        self.sections[section].append(cells)
        print(f"[{section}] " + " | ".join(cells), flush=True)


def paired(fn_a: Callable, fn_b: Callable, repeats: int, device: str, warmup: int = 1) -> tuple[list, list, float]:
    """Per-repeat seconds of two callables run alternately, and the median of the per-repeat ratios a / b."""
    return paired_samples(fn_a, fn_b, repeats, device, warmup)


def matmul_gflops(dtype: torch.dtype, device: str, repeats: int, n: int) -> Figure:
    times = linear_seconds(dtype, device, repeats, n, warmup=1)
    return Figure([2 * n**3 / t / 1e9 for t in times], "GFLOP/s")


# ---- models --------------------------------------------------------------------------------------------------------


def dense_config(size: str, tiny: bool) -> ViTPoseConfig:
    return ViTPoseConfig(**TINY) if tiny else ViTPoseConfig.from_preset(f"vitpose-{size}")


def plus_config(size: str, tiny: bool) -> ViTPoseConfig:
    if tiny:
        return ViTPoseConfig.from_preset("vitpose-plus-b", **TINY, part_features=8)
    return ViTPoseConfig.from_preset(f"vitpose-plus-{size}")


def build_pair(config: ViTPoseConfig, device: str) -> tuple[ViTPoseForPoseEstimation, HFVitPose]:
    """Our model with random weights and transformers' VitPose loaded from the same weights."""
    torch.manual_seed(0)
    ours = ViTPoseForPoseEstimation(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        export_transformers(ours, tmp)
        theirs = HFVitPose.from_pretrained(tmp).eval()
    return ours.to(device), theirs.to(device)


def caller(model: Callable, x: torch.Tensor, bf16: bool, device: str, **kwargs) -> Callable[[], None]:
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16)

    def call() -> None:
        with torch.inference_mode(), autocast:
            model(x, **kwargs)

    return call


# ---- sections ------------------------------------------------------------------------------------------------------


def bench_forward(args, report: Report, size: str) -> None:
    device, repeats = args.device, args.repeats
    label = "tiny" if args.tiny else f"ViTPose-{size.upper()}"
    ours, theirs = build_pair(dense_config(size, args.tiny), device)
    h, w = ours.config.image_size
    for batch in args.batches:
        x = torch.randn(batch, 3, h, w, device=device)
        flops = count_flops(ours, x)
        for dtype_name, bf16 in (("fp32", False), ("bf16", True)):
            t_o, t_t, ratio = paired(caller(ours, x, bf16, device), caller(theirs, x, bf16, device), repeats, device)
            name = f"{label} b{batch} {dtype_name} eager"
            crops = f"ours {batch / statistics.median(t_o):.0f} crops/s"
            report.row("Model forward", name, ms(t_o), ms(t_t), ratio, "transformers eager, same dtype", crops)
            # measured right after the pair it is compared with, so that both see the same load
            peak = matmul_gflops(torch.bfloat16 if bf16 else torch.float32, device, max(3, repeats), args.matmul_n)
            rate_o = Figure([flops / t / 1e9 for t in t_o], "GFLOP/s")
            rate_t = Figure([flops / t / 1e9 for t in t_t], "GFLOP/s")
            note = (
                f"{flops / batch / 1e9:.3g} GFLOP/crop; {args.matmul_n}^3 matmul {peak}; "
                f"ours {100 * rate_o.median / peak.median:.0f}%, "
                f"reference {100 * rate_t.median / peak.median:.0f}% of matmul"
            )
            report.row("Achieved GFLOP/s", name, rate_o, rate_t, 1 / ratio, "transformers eager, same dtype", note)
            if args.compile:
                compiled = torch.compile(ours)
                start = time.perf_counter()
                caller(compiled, x, bf16, device)()
                took = time.perf_counter() - start
                t_c, t_t, ratio = paired(
                    caller(compiled, x, bf16, device), caller(theirs, x, bf16, device), repeats, device
                )
                report.row(
                    "Model forward",
                    f"{label} b{batch} {dtype_name} compiled",
                    ms(t_c),
                    ms(t_t),
                    ratio,
                    "transformers eager, same dtype",
                    f"torch.compile defaults; first call {took:.0f} s; "
                    f"ours {batch / statistics.median(t_c):.0f} crops/s",
                )
        if args.onnx and not device.startswith("cuda"):
            bench_onnx(args, report, ours, theirs, x, f"{label} b{batch} fp32 onnxruntime")


def bench_onnx(args, report: Report, ours, theirs, x: torch.Tensor, name: str) -> None:
    from vitpose_hf.inference.export import export, load_exported

    with tempfile.TemporaryDirectory() as tmp:
        session = load_exported(export(ours, Path(tmp) / "model.onnx"))
    feed = {"pixel_values": x.cpu().numpy()}
    eager = caller(ours, x, False, args.device)
    t_x, t_e, vs_eager = paired(lambda: session.run(None, feed), eager, args.repeats, args.device)
    t_x, t_t, ratio = paired(
        lambda: session.run(None, feed), caller(theirs, x, False, args.device), args.repeats, args.device
    )
    report.row(
        "Model forward", name, ms(t_x), ms(t_t), ratio, "transformers eager fp32", f"{vs_eager:.2f}x our eager fp32"
    )


def bench_plus(args, report: Report, size: str) -> None:
    device = args.device
    torch.manual_seed(0)
    plus = ViTPoseForPoseEstimation(plus_config(size, args.tiny)).eval().to(device)
    dense = ViTPoseForPoseEstimation(dense_config(size, args.tiny)).eval().to(device)
    h, w = dense.config.image_size
    label = "tiny" if args.tiny else f"ViTPose++-{size.upper()}"
    batch = max(args.batches)
    x = torch.randn(batch, 3, h, w, device=device)
    for case, index in (("one dataset", 0), ("6-dataset mix", torch.arange(batch, device=device) % 6)):
        t_p, t_d, ratio = paired(
            caller(plus, x, False, device, dataset_index=index), caller(dense, x, False, device), args.repeats, device
        )
        report.row("ViTPose++ vs dense", f"{label} b{batch} fp32 {case}", ms(t_p), ms(t_d), ratio, "dense, same size")


def bench_processor(args, report: Report) -> None:
    from transformers.models.vitpose.image_processing_pil_vitpose import VitPoseImageProcessorPil
    from transformers.models.vitpose.modeling_vitpose import VitPoseEstimatorOutput

    from vitpose_hf.image_processing_vitpose_hf import ViTPoseImageProcessor

    rng = np.random.default_rng(0)
    ours, theirs = ViTPoseImageProcessor(), VitPoseImageProcessorPil()
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    repeats = args.repeats
    ref = "transformers VitPoseImageProcessorPil"
    boxes = make_boxes(10, rng)
    t_o, t_t, ratio = paired(
        lambda: ours(image, boxes), lambda: theirs(image, boxes=[boxes], return_tensors="pt"), repeats, "cpu"
    )
    report.row("Pre- and post-processing", "preprocess 640x480, 10 boxes", ms(t_o), ms(t_t), ratio, ref)
    for people in (10,) if args.quick or args.tiny else (10, 100):
        person_boxes = make_boxes(people, rng)
        outputs = VitPoseEstimatorOutput(heatmaps=make_heatmaps(people, rng))
        crops = ours(image, person_boxes)
        t_o, t_t, ratio = paired(
            lambda o=outputs, c=crops: ours.post_process_pose_estimation(o, crop_metadata=c),
            lambda o=outputs, b=person_boxes: theirs.post_process_pose_estimation(o, boxes=[b]),
            repeats,
            "cpu",
        )
        name = f"post-process {people} people (17x64x48, UDP+DARK)"
        report.row("Pre- and post-processing", name, ms(t_o), ms(t_t), ratio, ref)


def bench_pipeline(args, report: Report, size: str) -> None:
    from transformers.models.vitpose.image_processing_pil_vitpose import VitPoseImageProcessorPil

    from vitpose_hf.inference.pipeline import pipeline

    device = args.device
    ours, theirs = build_pair(dense_config(size, args.tiny), device)
    h, w = ours.config.image_size
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    people = args.people
    boxes = make_boxes(people, rng)
    label = "tiny" if args.tiny else f"ViTPose-{size.upper()}"
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if dtype == torch.bfloat16 and not device.startswith("cuda"):
            continue  # CPU: the fp32 row is the target's; bf16 is emulated on most CPUs
        pose = pipeline(ours.to(dtype), device=device)
        processor = VitPoseImageProcessorPil(size={"height": h, "width": w})
        theirs = theirs.to(dtype)

        def by_hand(processor=processor, model=theirs, dtype=dtype) -> None:
            inputs = processor(image, boxes=[boxes], return_tensors="pt")
            with torch.inference_mode():
                outputs = model(inputs["pixel_values"].to(device, dtype))
            outputs.heatmaps = outputs.heatmaps.float().cpu()
            processor.post_process_pose_estimation(outputs, boxes=[boxes])

        t_o, t_t, ratio = paired(lambda pose=pose: pose(image, boxes=boxes), by_hand, args.repeats, device)
        report.row(
            "Pipeline",
            f"{label} {dtype_name}, {people} given boxes",
            Figure([people / t for t in t_o], "people/s"),
            Figure([people / t for t in t_t], "people/s"),
            1 / ratio,
            "transformers processor + model + post-processing by hand",
            "one 640x480 image",
        )
    ours.float()


def bench_training(args, report: Report, size: str) -> None:
    from accelerate.state import AcceleratorState, GradientState
    from bench_training import make_data

    from vitpose_hf.training import train as train_module

    device, steps, batch = args.device, args.train_steps, args.train_batch
    bf16 = device.startswith("cuda")
    config = dense_config(size, args.tiny)
    label = "tiny" if args.tiny else f"ViTPose-{size.upper()}"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = make_data(tmp / "data", args.train_images)
        config.save_pretrained(tmp / "config")
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        argv = ["--config_name", str(tmp / "config"), "--dataset_name", str(folder), "--output_dir", str(tmp / "out")]
        argv += ["--max_train_steps", str(steps + 1), "--logging_steps", "1", "--warmup_steps", "1"]
        argv += ["--per_device_train_batch_size", str(batch), "--dataloader_num_workers", str(args.workers)]
        argv += ["--mixed_precision", "bf16" if bf16 else "no"] + ([] if bf16 else ["--cpu"])
        train_module.main(argv)
        log = [json.loads(line) for line in (tmp / "out" / "train_log.jsonl").read_text().splitlines()]
        windows = [r for r in log if "samples_per_second" in r][1:]  # step 1 (start-up) left out
        ours = Figure([r["samples_per_second"] for r in windows], "samples/s")
        wait = statistics.median(r["data_wait_share"] for r in windows)

    # reference: transformers' VitPose, same config, a bare AdamW + MSE loop on tensors already in memory
    torch.manual_seed(0)
    _, theirs = build_pair(config, device)
    theirs.train()
    h, w = config.image_size
    x = torch.randn(batch, 3, h, w, device=device)
    with torch.no_grad():
        target = torch.rand_like(theirs(x).heatmaps.float())
    optimizer = torch.optim.AdamW(theirs.parameters(), lr=1e-4)
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16)

    def step() -> None:
        with autocast:
            loss = torch.nn.functional.mse_loss(theirs(x).heatmaps.float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times, _, _ = paired(step, lambda: None, max(2, len(ours.values)), device)
    ref = Figure([batch / t for t in times], "samples/s")
    report.row(
        "Training",
        f"{label} batch {batch} {'bf16' if bf16 else 'fp32'}, {args.workers} workers",
        ours,
        ref,
        ours.median / ref.median,  # separate runs: a ratio of medians
        "transformers VitPose, bare loop on in-memory tensors (no data loading)",
        f"ours: vitpose_hf.training.train on JPEG COCO-layout data; data wait {100 * wait:.0f}%",
    )


# ---- output --------------------------------------------------------------------------------------------------------


def versions() -> str:
    import transformers

    import vitpose_hf

    parts = [
        f"python {platform.python_version()}",
        f"torch {torch.__version__}",
        f"transformers {transformers.__version__}",
    ]
    parts.append(f"numpy {np.__version__}")
    try:
        import onnxruntime

        parts.append(f"onnxruntime {onnxruntime.__version__}")
    except ImportError:
        parts.append("onnxruntime not installed")
    parts.append(f"vitpose_hf {getattr(vitpose_hf, '__version__', 'dev')}")
    return ", ".join(parts)


def write_markdown(path: Path, args, report: Report, description: str, command: str) -> None:
    lines = ["# Benchmark results", ""]
    if args.note:
        lines += [f"**Note: {args.note}**", ""]
    lines += [
        f"- Machine: {description}",
        f"- Device: {args.device}; torch threads {torch.get_num_threads()}; {os.cpu_count()} CPUs visible",
        f"- Libraries: {versions()}",
        f"- Run: `{command}` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "- Figures: median ± median absolute deviation over the repeats; ratio: median of per-repeat ratios "
        "(times: ours / reference, lower is better; rates: ours / reference, higher is better).",
        "",
    ]
    header = "| row | ours | reference | ratio | reference is | note |"
    for section in SECTIONS:
        lines += [f"## {section}", "", header, "|---|---|---|---|---|---|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in report.sections[section]]
        if not report.sections[section]:
            lines.append("| (skipped) | - | - | - | - | - |")
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {path}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="ViTPose-S, few repeats, no compile (< 5 min on 2 cores)")
    parser.add_argument("--tiny", action="store_true", help="tiny random models, a handful of repeats (tests)")
    parser.add_argument("--sizes", nargs="+", choices=["s", "b", "l", "h"], help="default s b l h (quick: s)")
    parser.add_argument("--batches", nargs="+", type=int, help="default 1 8 (GPU: 1 64); quick / tiny: 1 4")
    parser.add_argument("--repeats", type=int, help="default 9; quick 3; tiny 2")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, help="compiled rows (default: not quick)")
    parser.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True, help="onnxruntime rows (CPU)")
    parser.add_argument("--people", type=int, default=10, help="given boxes per image in the pipeline rows")
    parser.add_argument("--skip", nargs="*", default=[], choices=["forward", "plus", "processor", "pipeline", "train"])
    parser.add_argument("--train-steps", type=int, help="timed training steps (default 5; quick/tiny 2)")
    parser.add_argument("--train-batch", type=int, help="default 8 (GPU 64); tiny 2")
    parser.add_argument("--train-images", type=int, default=24)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="training loader workers")
    parser.add_argument("--note", default="", help="a line shown at the top of RESULTS.md (e.g. 'shared machine')")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    args = parser.parse_args(argv)
    small = args.quick or args.tiny
    gpu = args.device.startswith("cuda")
    args.sizes = args.sizes or (["s"] if small else ["s", "b", "l", "h"])
    args.batches = args.batches or ([1, 4] if small else [1, 64 if gpu else 8])
    args.repeats = args.repeats or (2 if args.tiny else 3 if args.quick else 9)
    args.matmul_n = 256 if args.tiny else 2048
    args.compile = (not small) if args.compile is None else args.compile
    args.train_steps = args.train_steps or (2 if small else 5)
    args.train_batch = args.train_batch or (2 if args.tiny else 64 if gpu else 8)
    if args.tiny:
        args.train_images, args.workers = min(args.train_images, 4), 0
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    device = args.device
    description, _ = machine(device)
    print(description, flush=True)
    report = Report()
    smallest = args.sizes[0]
    if "forward" not in args.skip:
        for size in args.sizes:
            bench_forward(args, report, size)
    if "plus" not in args.skip:
        bench_plus(args, report, "b" if "b" in args.sizes else smallest)
    if "processor" not in args.skip:
        bench_processor(args, report)
    if "pipeline" not in args.skip:
        bench_pipeline(args, report, "b" if "b" in args.sizes else smallest)
    if "train" not in args.skip:
        bench_training(args, report, smallest)
    command = shlex.join(["python", "benchmarks/run_all.py", *(sys.argv[1:] if argv is None else argv)])
    write_markdown(args.output, args, report, description, command.strip())
    return args.output


if __name__ == "__main__":
    main()
