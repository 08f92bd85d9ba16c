"""Forward-pass speed of ViTPose-B / ViTPose++-B against transformers' VitPose with the same weights, in one run.

    python benchmarks/bench_model.py [--batch 8] [--repeats 5] [--device cpu|cuda] [--decoder classic|simple]

Prints median times, the ratio ours / transformers, achieved GFLOP/s and a plain matmul's GFLOP/s measured in
the same run (the machine's practical peak), for fp32 and for bf16 under the same `torch.autocast`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import VitPoseForPoseEstimation as HFVitPose

from vitpose_hf import ViTPoseConfig, ViTPoseForPoseEstimation
from vitpose_hf.convert import export_transformers


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_time(fn, repeats: int, device: str, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired_times(fn_a, fn_b, repeats: int, device: str, warmup: int = 2) -> tuple[float, float, float]:
    """Median times of two callables run alternately (so load changes hit both), and the median ratio a / b."""
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
    ratio = statistics.median(a / b for a, b in zip(times_a, times_b))
    return statistics.median(times_a), statistics.median(times_b), ratio


def matmul_gflops(dtype: torch.dtype, device: str, repeats: int) -> float:
    n = 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = median_time(lambda: a @ b, repeats, device)
    return 2 * n**3 / t / 1e9


def count_flops(model, x, **kwargs) -> int:
    # with autograd on, the model takes its plain (countable) ops instead of fused oneDNN calls, and eager
    # attention's matmuls are counted where the CPU flash-attention kernel is not: same FLOPs
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.enable_grad(), FlopCounterMode(display=False) as counter:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--decoder", default="classic", choices=["classic", "simple"])
    args = parser.parse_args()
    device = args.device
    suffix = "-simple" if args.decoder == "simple" else ""
    x = torch.randn(args.batch, 3, 256, 192, device=device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, 256x192")

    ours, theirs = build_pair(f"vitpose-b{suffix}", device)
    flops = count_flops(ours, x)
    print(f"ViTPose-B{suffix}: {flops / args.batch / 1e9:.1f} GFLOP per crop")
    rows = []
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)

        def run(model, **kwargs):
            def call():
                with torch.inference_mode(), autocast:
                    model(x, **kwargs)
            return call

        with torch.inference_mode():
            with autocast:
                diff = (ours(x).heatmaps.float() - theirs(x).heatmaps.float()).abs().max().item()
        t_ours, t_theirs, ratio = paired_times(run(ours), run(theirs), args.repeats, device)
        peak = matmul_gflops(dtype, device, args.repeats)
        rows.append((name, t_ours, t_theirs, ratio, flops / t_ours / 1e9, flops / t_theirs / 1e9, peak, diff))
    print(f"{'dtype':5} {'ours s':>8} {'transformers s':>15} {'ratio':>6} {'ours GFLOP/s':>13} {'theirs GFLOP/s':>15} {'matmul GFLOP/s':>15} {'% of matmul':>11} {'max |diff|':>10}")
    for name, t_o, t_t, ratio, g_o, g_t, peak, diff in rows:
        print(f"{name:5} {t_o:8.3f} {t_t:15.3f} {ratio:6.2f} {g_o:13.0f} {g_t:15.0f} {peak:15.0f} {100 * g_o / peak:10.0f}% {diff:10.2e}")

    # ViTPose++-B on a one-dataset batch against dense ViTPose-B
    plus, plus_theirs = build_pair(f"vitpose-plus-b{suffix}", device)
    idx = torch.zeros(args.batch, dtype=torch.long, device=device)

    def call(model, **kwargs):
        def f():
            with torch.inference_mode():
                model(x, **kwargs)
        return f

    t_plus, t_dense, r_ours = paired_times(call(plus, dataset_index=idx), call(ours), args.repeats, device)
    t_plus_theirs, t_dense_theirs, r_theirs = paired_times(call(plus_theirs, dataset_index=idx), call(theirs), args.repeats, device)
    mixed = torch.arange(args.batch, device=device) % 6
    t_mixed, t_dense2, r_mixed = paired_times(call(plus, dataset_index=mixed), call(ours), args.repeats, device)
    print(f"ViTPose++-B / dense ViTPose-B, one-dataset batch (fp32): ours {r_ours:.3f}x "
          f"({t_plus:.3f} s vs {t_dense:.3f} s), transformers {r_theirs:.3f}x "
          f"({t_plus_theirs:.3f} s vs {t_dense_theirs:.3f} s)")
    print(f"ViTPose++-B mixed batch of 6 datasets (fp32): {t_mixed:.3f} s = {r_mixed:.3f}x dense")


if __name__ == "__main__":
    main()
