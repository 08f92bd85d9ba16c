"""Forward-pass speed of ViTPose-B / ViTPose++-B against transformers' VitPose with the same weights, in one run.

    python benchmarks/bench_model.py [--batch 8] [--repeats 9] [--device cpu|cuda] [--decoder classic|simple]
        [--dtypes fp32 bf16] [--no-compile] [--compile-mode max-autotune]
    TORCHINDUCTOR_FREEZING=1 python benchmarks/bench_model.py ...   # inductor freezes the weights (no_grad only)

Prints, row by row as measured: the machine (CPU model and ISA flags, whether bf16 is native), median times, the
median of interleaved ratios ours / transformers, achieved GFLOP/s and a plain matmul's GFLOP/s in the same run
and dtype. Rows: eager fp32 and bf16 autocast (`--dtypes`); `torch.compile` (`--compile-mode`) of both
models; ViTPose++-B on a one-dataset batch and on a mixed batch against dense ViTPose-B.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from transformers import VitPoseForPoseEstimation as HFVitPose

from vitpose_hf import ViTPoseConfig, ViTPoseForPoseEstimation
from vitpose_hf.cli.convert import export_transformers

ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def machine(device: str) -> tuple[str, bool]:
    """A description of the machine and whether bf16 matmuls are native on it."""
    if device.startswith("cuda"):
        return f"GPU {torch.cuda.get_device_name()}", True
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and model in ("unknown CPU", "x86_64", ""):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    isa = " ".join(f"{flag}={'yes' if flag in flags else 'no'}" for flag in ISA_FLAGS)
    return f"CPU {model}, {isa}; bf16 native: {'yes' if native else 'NO (bf16 is emulated and slower)'}", native


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def paired_samples(fn_a, fn_b, repeats: int, device: str, warmup: int = 2) -> tuple[list, list, float]:
    """Per-repeat seconds of two callables run alternately (so load changes hit both), and the median ratio a / b."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - start)
    return times_a, times_b, statistics.median(a / b for a, b in zip(times_a, times_b))


def paired_times(fn_a, fn_b, repeats: int, device: str, warmup: int = 2) -> tuple[float, float, float]:
    """Median times of two callables run alternately, and the median ratio a / b."""
    times_a, times_b, ratio = paired_samples(fn_a, fn_b, repeats, device, warmup)
    return statistics.median(times_a), statistics.median(times_b), ratio


def linear_seconds(dtype: torch.dtype, device: str, repeats: int, n: int = 2048, warmup: int = 2) -> list[float]:
    """Seconds per repeat of a plain n x n matmul, the reference for achieved GFLOP/s (2 n^3 FLOP each)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    w = torch.randn(n, n, device=device, dtype=dtype)
    # F.linear, the op nn.Linear runs: without native bf16 a bf16 `a @ b` takes a ~1 GFLOP/s path that it does not
    for _ in range(warmup):
        F.linear(a, w)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        F.linear(a, w)
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def matmul_gflops(dtype: torch.dtype, device: str, repeats: int) -> float:
    n = 2048
    return 2 * n**3 / statistics.median(linear_seconds(dtype, device, repeats, n)) / 1e9


def count_flops(model, x, **kwargs) -> int:
    # eager attention: its matmuls are counted, where a fused CPU attention kernel is not
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x, **kwargs)
    finally:
        model.set_attn_implementation(previous)
    return counter.get_total_flops()


def build_pair(preset: str, device: str):
    """Our model with random weights and transformers' VitPose loaded from the same weights."""
    torch.manual_seed(0)
    ours = ViTPoseForPoseEstimation(ViTPoseConfig.from_preset(preset)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        export_transformers(ours, tmp)
        theirs = HFVitPose.from_pretrained(tmp).eval()
    return ours.to(device), theirs.to(device)


def caller(model, x, autocast, **kwargs):
    def call():
        with torch.inference_mode(), autocast:
            model(x, **kwargs)

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--decoder", default="classic", choices=["classic", "simple"])
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile rows (each compiles for ~1 min on CPU)"
    )
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument(
        "--compile-mode",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        default="default",
        help="torch.compile mode of the compiled rows",
    )
    args = parser.parse_args()
    device, repeats = args.device, args.repeats
    compile_kwargs = {} if args.compile_mode == "default" else {"mode": args.compile_mode}
    freezing = os.environ.get("TORCHINDUCTOR_FREEZING") == "1"
    suffix = "-simple" if args.decoder == "simple" else ""
    x = torch.randn(args.batch, 3, 256, 192, device=device)
    description, bf16_native = machine(device)
    print(description, flush=True)
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, 256x192",
        flush=True,
    )
    if not args.no_compile:
        print(f"torch.compile mode {args.compile_mode}; inductor freezing {'on' if freezing else 'off'}", flush=True)

    ours, theirs = build_pair(f"vitpose-b{suffix}", device)
    flops = count_flops(ours, x)
    print(f"ViTPose-B{suffix}: {flops / args.batch / 1e9:.1f} GFLOP per crop", flush=True)
    header = (
        f"{'row':34} {'ours s':>8} {'ref s':>8} {'ratio':>6} {'ours GFLOP/s':>13} {'matmul GFLOP/s':>15} "
        f"{'% of matmul':>11}"
    )
    print(header, flush=True)

    def row(name, t_ours, t_ref, ratio, peak):
        print(
            f"{name:34} {t_ours:8.3f} {t_ref:8.3f} {ratio:6.2f} {flops / t_ours / 1e9:13.0f} {peak:15.0f} "
            f"{100 * flops / t_ours / 1e9 / peak:10.0f}%",
            flush=True,
        )

    device_type = device.split(":")[0]
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    for name, dtype in ((n, dtypes[n]) for n in args.dtypes):
        autocast = torch.autocast(device_type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
        note = "" if dtype == torch.float32 else (" (native)" if bf16_native else " (NOT native)")
        peak = matmul_gflops(dtype, device, repeats)
        with torch.inference_mode(), autocast:
            diff = (ours(x).heatmaps.float() - theirs(x).heatmaps.float()).abs().max().item()
        t_o, t_t, ratio = paired_times(caller(ours, x, autocast), caller(theirs, x, autocast), repeats, device)
        row(f"eager {name}{note} / tf eager", t_o, t_t, ratio, peak)
        print(f"  max |heatmap diff| ours vs transformers: {diff:.2e}", flush=True)
        if args.no_compile:
            continue
        for label, model in (("ours", ours), ("transformers", theirs)):
            compiled = torch.compile(model, **compile_kwargs)
            start = time.perf_counter()
            caller(compiled, x, autocast)()
            seconds = time.perf_counter() - start
            t_c, t_t, ratio = paired_times(caller(compiled, x, autocast), caller(theirs, x, autocast), repeats, device)
            row(f"compiled {label} {name} / tf eager", t_c, t_t, ratio, peak)
            print(f"  (compile took {seconds:.0f} s)", flush=True)

    # ViTPose++-B on a one-dataset batch and a mixed batch against dense ViTPose-B, eager fp32
    plus, _ = build_pair(f"vitpose-plus-b{suffix}", device)
    off = torch.autocast(device_type, enabled=False)
    peak = matmul_gflops(torch.float32, device, repeats)
    t_p, t_d, ratio = paired_times(caller(plus, x, off, dataset_index=0), caller(ours, x, off), repeats, device)
    row("ViTPose++-B one dataset / dense", t_p, t_d, ratio, peak)
    mixed = torch.arange(args.batch, device=device) % 6
    t_m, t_d, ratio = paired_times(caller(plus, x, off, dataset_index=mixed), caller(ours, x, off), repeats, device)
    row("ViTPose++-B 6-dataset mix / dense", t_m, t_d, ratio, peak)


if __name__ == "__main__":
    main()
