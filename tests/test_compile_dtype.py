"""torch.compile of the pose model (pipeline ``compile=True``, ``predict --compile``) and the ``--dtype auto`` rule."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pytest
import torch
from test_pipeline import tiny_pose_model

from vitpose_hf.image_processing_vitpose_hf import ViTPoseImageProcessor
from vitpose_hf.inference import hub
from vitpose_hf.inference.hub import choose_dtype, cpu_has_native_bf16
from vitpose_hf.inference.pipeline import PoseEstimationPipeline

# /proc/cpuinfo flag lines of three kinds of CPU (trimmed): Sapphire Rapids (AMX), Cooper Lake, and Skylake-X / Zen 2
AMX = "fpu avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8".split()
COOPER = "fpu avx2 avx512f avx512bw avx512_bf16".split()
NO_BF16 = "fpu sse4_2 avx2 fma avx512f avx512bw avx512_vnni".split()


@pytest.mark.parametrize(("flags", "native"), [(AMX, True), (COOPER, True), (NO_BF16, False), ([], False)])
def test_native_bf16_from_cpu_flags(flags, native):
    assert cpu_has_native_bf16(flags) is native
    assert choose_dtype("auto", "cpu", cpu_flags=flags) == (torch.bfloat16 if native else torch.float32)


def test_auto_is_bf16_on_cuda_and_logged(caplog):
    with caplog.at_level(logging.INFO, logger="vitpose_hf.inference.hub"):
        assert choose_dtype("auto", "cuda", cpu_flags=NO_BF16) == torch.bfloat16
        assert choose_dtype("auto", "cpu", cpu_flags=NO_BF16) == torch.float32
    assert "bf16 (CUDA)" in caplog.text
    assert "fp32 (no native bf16 on cpu)" in caplog.text


def test_explicit_bf16_on_a_cpu_without_native_bf16_warns_once(monkeypatch):
    monkeypatch.setattr(hub, "_warned_slow_bf16", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert choose_dtype("bf16", "cpu", cpu_flags=AMX) == torch.bfloat16  # native: no warning
        assert choose_dtype("bf16", "cuda", cpu_flags=NO_BF16) == torch.bfloat16
        assert choose_dtype("bf16", "cpu", cpu_flags=NO_BF16) == torch.bfloat16
        assert choose_dtype(torch.bfloat16, "cpu", cpu_flags=NO_BF16) == torch.bfloat16
        assert choose_dtype("float32", "cpu", cpu_flags=NO_BF16) == torch.float32
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "slower than float32" in messages[0]
    assert choose_dtype(None, "cpu") is None  # None keeps the model's dtype
    with pytest.raises(ValueError, match="unknown torch_dtype 'int8'"):
        choose_dtype("int8", "cpu")


def _pipe(**kwargs) -> PoseEstimationPipeline:
    processor = ViTPoseImageProcessor(size={"height": 64, "width": 48})
    return PoseEstimationPipeline(
        model=tiny_pose_model(), image_processor=processor, task="pose-estimation", device="cpu", **kwargs
    )


def test_pipeline_auto_keeps_the_model_dtype_as_transformers():
    assert _pipe(torch_dtype="auto").model.dtype == torch.float32  # transformers.pipeline passes "auto" by default
    assert _pipe(dtype="bf16").model.dtype == torch.bfloat16


def test_cli_dtype_auto_follows_this_cpu(tmp_path, shared_data, caplog):
    from vitpose_hf.cli import main

    model_dir = _checkpoint(tmp_path)
    image = shared_data / "mmpose" / "coco" / "000000000785.jpg"
    with caplog.at_level(logging.INFO, logger="vitpose_hf.inference.hub"):
        assert (
            main(["predict", "--no-progress", str(image), "--model", model_dir, "--json", str(tmp_path / "p.json")])
            == 0
        )
    expected = "bf16 (native bf16 CPU)" if cpu_has_native_bf16() else "fp32 (no native bf16 on cpu)"
    assert f"--dtype auto: {expected}" in caplog.text


def _checkpoint(tmp_path) -> str:
    model_dir = tmp_path / "ckpt"
    tiny_pose_model().save_pretrained(model_dir)
    ViTPoseImageProcessor(size={"height": 64, "width": 48}).save_pretrained(model_dir)
    return str(model_dir)


# Consistency (wiring) test, as the acceptance asks: compiled and eager runs of the same fp32 model.
def test_compiled_pipeline_equals_eager_fp32():
    torch._dynamo.reset()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (120, 90, 3), dtype=np.uint8)
    boxes = [[5.0, 8.0, 60.0, 100.0], [20.0, 2.0, 50.0, 70.0], [0.0, 0.0, 90.0, 120.0]]
    eager = _pipe(torch_dtype="float32")(image, boxes=boxes)
    compiled_pipe = _pipe(torch_dtype="float32", compile={"backend": "aot_eager"})
    assert compiled_pipe._pose_forward is not compiled_pipe.model
    for _ in range(2):  # the second call reuses the compiled graph
        compiled = compiled_pipe(image, boxes=boxes)
        assert len(compiled) == len(eager) == 3
        for a, b in zip(eager, compiled, strict=True):
            np.testing.assert_allclose(_points(b), _points(a), rtol=0, atol=1e-5)


def _points(person: dict) -> np.ndarray:
    return np.array([[k["x"], k["y"], k["score"]] for k in person["keypoints"]])


def test_compile_option_type_is_checked():
    with pytest.raises(TypeError, match="compile must be a bool or a dict"):
        _pipe(compile="yes")


def test_cli_predict_compile_matches_eager(tmp_path, shared_data, monkeypatch):
    from vitpose_hf.cli import main

    monkeypatch.setattr(torch, "compile", _aot_eager_compile(torch.compile))
    model_dir = _checkpoint(tmp_path)
    image = shared_data / "mmpose" / "coco" / "000000000785.jpg"
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({image.name: [[280.79, 44.73, 218.7, 346.68]]}))
    results = []
    for extra in ([], ["--compile"]):
        out = tmp_path / f"poses{len(extra)}.json"
        args = [str(image), "--model", model_dir, "--boxes", str(boxes), "--json", str(out), "--dtype", "float32"]
        assert main(["predict", "--no-progress", *args, *extra]) == 0
        results.append(json.loads(out.read_text()))
    calls = _aot_eager_compile.calls
    assert calls == 1  # only the --compile run compiled
    (a,), (b,) = (r["images"][0]["people"] for r in results)
    np.testing.assert_allclose(_points(b), _points(a), rtol=0, atol=1e-5)


def _aot_eager_compile(real):
    """torch.compile with the fast aot_eager backend, counting calls (the default inductor takes minutes here)."""
    _aot_eager_compile.calls = 0

    def compile_(model, **options):
        _aot_eager_compile.calls += 1
        return real(model, **{**options, "backend": "aot_eager"})

    return compile_
