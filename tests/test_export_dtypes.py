"""Reduced-precision export: float16 / bfloat16 weights in ONNX (onnxruntime CPU) and ExportedProgram files.

Tolerances come from the unit roundoff u = eps / 2 of the weights' dtype (float16 2^-11, bfloat16 2^-8): every
weight and every op's output is rounded once, so through the tiny models' few layers the heatmaps' error relative
to their largest value stays a small multiple of u. Against PyTorch in the same dtype both sides round the same
weights and differ only in where the runtime rounds intermediates; against float32 the weights' rounding adds in.
The in-graph decoding runs in float32 on the rounded heatmaps: on a peaked model a relative error e of the peak's
neighbours moves DARK's Taylor step by about e / curvature heatmap pixels, which the crop -> image map scales by
image pixels per heatmap pixel (here at most about 11), so keypoints stay within KEYPOINT_PX_PER_U * u pixels.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_export import _crops, _rel, _run

from vitpose_hf import ViTPoseForPoseEstimation, ViTPoseImageProcessor
from vitpose_hf.inference.export import export, load_exported

from helpers import peaked_model, randomize_batchnorm, tiny_config, tiny_plus_config

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# Measured on these models (in u): heatmaps vs same dtype <= 1.7, vs float32 <= 2.1; keypoints <= 4.2 px (float16
# ONNX 0.7 u = 3e-4 px, bfloat16 4.2 u = 0.016 px); scores <= 1.9 u relative. Each bound leaves 2-5x margin.
SAME_DTYPE_PER_U = 4.0  # heatmaps vs PyTorch in the same dtype: max error / max |heatmap| <= 4 u
FP32_PER_U = 8.0  # heatmaps vs the float32 model: <= 8 u (weights rounded too); also scores' relative error
KEYPOINT_PX_PER_U = 20.0  # in-graph keypoints vs the processor on float32 heatmaps: <= 20 u image pixels
# onnxruntime's CPU provider has no bfloat16 Conv kernel: bfloat16 runs as an ExportedProgram only (see below).
CASES = [("float16", "onnx"), ("float16", "exported-program"), ("bfloat16", "exported-program")]


def _u(dtype: str) -> float:
    return torch.finfo(DTYPES[dtype]).eps / 2


def _random_model(config):
    """A random model (BatchNorm statistics randomised): zero-centred heatmaps, so the relative error is honest."""
    torch.manual_seed(0)
    model = ViTPoseForPoseEstimation(config).eval()
    randomize_batchnorm(model, 0)
    return model


@pytest.fixture(scope="module")
def dense():
    return _random_model(tiny_config())


@pytest.fixture(scope="module")
def plus():
    return _random_model(tiny_plus_config())


@pytest.fixture(scope="module")
def peaked_dense():
    return peaked_model(tiny_config(decoder="simple"))[0]


@pytest.fixture(scope="module")
def peaked_plus():
    return peaked_model(tiny_plus_config(decoder="simple"), expert_scale=0.1)[0]


def _assert_weights_stored_in(path, fmt: str, dtype: str) -> None:
    """Every floating-point weight in the file has the export dtype (read from the file, not from our code)."""
    if fmt == "onnx":
        want = {"float16": onnx.TensorProto.FLOAT16, "bfloat16": onnx.TensorProto.BFLOAT16}[dtype]
        # initializers named after the module's parameters; scalar constants of the graph may stay float32
        types = [i.data_type for i in onnx.load(str(path)).graph.initializer if i.name.startswith("model.")]
        assert types and set(types) == {want}
    else:
        with open(path, "rb") as handle:
            program = torch.export.load(handle)
        types = {t.dtype for t in program.state_dict.values() if t.is_floating_point()}
        assert types == {DTYPES[dtype]}


# kind: dense, a ViTPose++ head with its expert merged, or every head with a dataset_index input.
# ViTPose++ in float16 goes through ONNX only: the ExportedProgram's dtype handling is covered by bfloat16.
HEATMAP_CASES = [("dense", *case) for case in CASES] + [
    (kind, *case) for kind in ("plus-one-head", "plus-all-heads") for case in (CASES[0], CASES[2])
]


@pytest.mark.parametrize(("kind", "dtype", "fmt"), HEATMAP_CASES)
def test_heatmaps_reduced_precision(dense, plus, kind, dtype, fmt, tmp_path):
    model = dense if kind == "dense" else plus
    kwargs = {"dense": {}, "plus-one-head": {"dataset": "mpii"}, "plus-all-heads": {"all_datasets": True}}[kind]
    path = export(model, tmp_path / f"m.{fmt}", format=fmt, dtype=dtype, **kwargs)
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is left as it was
    _assert_weights_stored_in(path, fmt, dtype)

    x = torch.randn(5, 3, 64, 48)
    feeds = {"pixel_values": x}
    dataset = kwargs.get("dataset")
    if kind == "plus-all-heads":
        dataset = feeds["dataset_index"] = torch.tensor([0, 5, 2, 1, 3])
    got = _run(path, fmt, feeds)[0]
    assert got.dtype == np.float32
    low = copy.deepcopy(model).to(DTYPES[dtype])
    with torch.no_grad():
        ref32 = model(x, dataset_index=dataset).heatmaps
        ref_low = low(x.to(DTYPES[dtype]), dataset_index=dataset).heatmaps.float()
    k = ref32.shape[1]  # the all-heads graph pads to 133 channels
    u = _u(dtype)
    assert _rel(got[:, :k], ref_low) <= SAME_DTYPE_PER_U * u
    assert _rel(got[:, :k], ref32) <= FP32_PER_U * u
    assert _rel(got[:, :k], ref32) > 0  # the weights really were rounded


def _processor_keypoints(model, x, center, scale, dataset):
    processor = ViTPoseImageProcessor(size={"height": 64, "width": 48})
    with torch.no_grad():
        out = model(x, dataset_index=dataset)  # float32 heatmaps
    return processor.post_process_pose_estimation(out, crop_metadata={"center": center, "scale": scale})[0][0]


# Every head in one graph covers both decodings (UDP-DARK for most datasets, the quarter-pixel step for AIC).
@pytest.mark.parametrize("kind", ["dense", "plus-all-heads"])
@pytest.mark.parametrize(("dtype", "fmt"), [("float16", "onnx"), ("bfloat16", "exported-program")])
def test_decoding_in_graph_reduced_precision(peaked_dense, peaked_plus, kind, dtype, fmt, tmp_path):
    model = peaked_dense if kind == "dense" else peaked_plus
    multi = kind == "plus-all-heads"
    path = export(model, tmp_path / f"m.{fmt}", format=fmt, dtype=dtype, with_decoding=True, all_datasets=multi)
    n = 6
    x = torch.randn(n, 3, 64, 48)
    center, scale = _crops(n)
    feeds = {"pixel_values": x, "center": center, "scale": scale}
    if multi:
        feeds["dataset_index"] = torch.arange(n)
    keypoints, scores = _run(path, fmt, feeds)[:2]
    u = _u(dtype)
    for i in range(n):
        person = _processor_keypoints(model, x[i : i + 1], center[i : i + 1], scale[i : i + 1], i if multi else None)
        k = person["keypoints"].shape[0]
        np.testing.assert_allclose(keypoints[i, :k], person["keypoints"].numpy(), rtol=0, atol=KEYPOINT_PX_PER_U * u)
        np.testing.assert_allclose(scores[i, :k], person["scores"].numpy(), rtol=FP32_PER_U * u, atol=0)


def test_bfloat16_onnx_needs_opset_22_and_onnxruntime_cpu_cannot_run_it(dense, tmp_path):
    with pytest.raises(ValueError, match=r"bfloat16 ONNX needs opset >= 22.*no bfloat16 Conv kernel.*float16"):
        export(dense, tmp_path / "m.onnx", dtype="bfloat16")
    assert not (tmp_path / "m.onnx").exists()
    path = export(dense, tmp_path / "m22.onnx", dtype="bf16", opset=22)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)  # a valid bfloat16 model for other runtimes
    _assert_weights_stored_in(path, "onnx", "bfloat16")
    with pytest.raises(Exception, match=r"NOT_IMPLEMENTED.*Conv"):  # why it is refused at the default opset
        load_exported(path)


def test_unknown_dtype_names_the_choices(dense, tmp_path):
    for bad in ("int8", "half", torch.int8, torch.float64):
        with pytest.raises(ValueError, match=r"unknown dtype.*bfloat16.*float16.*float32"):
            export(dense, tmp_path / "m.onnx", dtype=bad)
    assert not list(tmp_path.iterdir())
