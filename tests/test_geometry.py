"""Geometry: boxes, centre/scale and the UDP / classic warps, against re-implementations of the official code."""

import json
import math

import cv2
import numpy as np
import pytest
import torch

from vitpose_hf.geometry import (
    BOX_PADDING,
    PIXEL_STD,
    apply_affine,
    box_to_center_scale,
    crop_to_image,
    image_to_crop,
    inverse_warp_matrix,
    validate_boxes,
    warp_matrix,
    xywh_to_xyxy,
    xyxy_to_xywh,
)

INPUT = (256, 192)  # (H, W)


# ---- references written from the official algorithm (numpy, one box at a time) -----------------------------------
def ref_xywh2cs(box, input_size=INPUT, padding=1.25):
    x, y, w, h = box
    aspect = input_size[1] / input_size[0]
    center = np.array([x + w * 0.5, y + h * 0.5])
    if w > aspect * h:
        h = w / aspect
    elif w < aspect * h:
        w = h * aspect
    return center, np.array([w / 200.0, h / 200.0]) * padding


def ref_udp_matrix(theta, size_input, size_dst, size_target):
    theta = np.deg2rad(theta)
    sx, sy = size_dst[0] / size_target[0], size_dst[1] / size_target[1]
    m = np.zeros((2, 3))
    m[0, 0] = math.cos(theta) * sx
    m[0, 1] = -math.sin(theta) * sx
    m[0, 2] = sx * (
        -0.5 * size_input[0] * math.cos(theta) + 0.5 * size_input[1] * math.sin(theta) + 0.5 * size_target[0]
    )
    m[1, 0] = math.sin(theta) * sy
    m[1, 1] = math.cos(theta) * sy
    m[1, 2] = sy * (
        -0.5 * size_input[0] * math.sin(theta) - 0.5 * size_input[1] * math.cos(theta) + 0.5 * size_target[1]
    )
    return m


def ref_classic_matrix(center, scale, rot, output_size):
    """The 3-point construction of the classic (non-UDP) affine transform; output_size is (w, h)."""
    src_w = scale[0] * 200.0
    dst_w, dst_h = output_size
    r = np.pi * rot / 180
    sn, cs = np.sin(r), np.cos(r)
    src_dir = np.array([0 * cs - (-0.5 * src_w) * sn, 0 * sn + (-0.5 * src_w) * cs])
    dst_dir = np.array([0.0, -0.5 * dst_w])

    def third(a, b):
        d = a - b
        return b + np.array([-d[1], d[0]])

    src = np.stack([center, center + src_dir, third(center, center + src_dir)]).astype(np.float32)
    d0 = np.array([dst_w * 0.5, dst_h * 0.5])
    dst = np.stack([d0, d0 + dst_dir, third(d0, d0 + dst_dir)]).astype(np.float32)
    return cv2.getAffineTransform(src, dst)


def ref_transform_preds(coords, center, scale, heatmap_size_wh, use_udp):
    scale = scale * 200.0
    if use_udp:
        sx, sy = scale[0] / (heatmap_size_wh[0] - 1.0), scale[1] / (heatmap_size_wh[1] - 1.0)
    else:
        sx, sy = scale[0] / heatmap_size_wh[0], scale[1] / heatmap_size_wh[1]
    return np.stack([coords[:, 0] * sx + center[0] - scale[0] * 0.5, coords[:, 1] * sy + center[1] - scale[1] * 0.5], 1)


@pytest.fixture(scope="module")
def real_boxes(shared_data):
    gt = json.loads((shared_data / "mmpose/coco/test_coco.json").read_text())
    det = json.loads((shared_data / "mmpose/coco/test_coco_det_AP_H_56.json").read_text())
    boxes = [a["bbox"] for a in gt["annotations"]] + [d["bbox"] for d in det]
    return torch.tensor(boxes, dtype=torch.float64)


# ---- boxes -----------------------------------------------------------------------------------------------------
def test_constants():
    assert PIXEL_STD == 200.0 and BOX_PADDING == 1.25


def test_box_format_round_trip(real_boxes):
    xyxy = xywh_to_xyxy(real_boxes)
    assert torch.allclose(xyxy[:, 2:], real_boxes[:, :2] + real_boxes[:, 2:])
    assert torch.allclose(xyxy_to_xywh(xyxy), real_boxes)


def test_center_scale_matches_official(real_boxes):
    center, scale = box_to_center_scale(real_boxes, "xywh", INPUT)
    for i, box in enumerate(real_boxes.tolist()):
        c, s = ref_xywh2cs(box)
        np.testing.assert_allclose(center[i].numpy(), c, rtol=1e-9, err_msg=f"box {i} {box}")
        np.testing.assert_allclose(scale[i].numpy(), s, rtol=1e-9, err_msg=f"box {i} {box}")
    c2, s2 = box_to_center_scale(xywh_to_xyxy(real_boxes), "xyxy", INPUT)
    torch.testing.assert_close(c2, center)
    torch.testing.assert_close(s2, scale)
    # the scale always has the model's aspect ratio
    torch.testing.assert_close(scale[:, 0] / scale[:, 1], torch.full_like(scale[:, 0], 192 / 256))


def test_center_scale_other_input_and_padding():
    c, s = box_to_center_scale([[10, 20, 30, 300]], input_size=(384, 288), padding=1.0)
    rc, rs = ref_xywh2cs([10, 20, 30, 300], (384, 288), 1.0)
    np.testing.assert_allclose(c[0].numpy(), rc, rtol=1e-6)
    np.testing.assert_allclose(s[0].numpy(), rs, rtol=1e-6)


def test_empty_boxes():
    assert validate_boxes([]).shape == (0, 4)
    center, scale = box_to_center_scale(np.zeros((0, 4)))
    assert center.shape == (0, 2) and scale.shape == (0, 2)


@pytest.mark.parametrize(
    "boxes, fmt, message",
    [
        ([[0, 0, float("nan"), 10]], "xywh", r"boxes\[0\] = \[0\.0, 0\.0, nan, 10\.0\] \(xywh\) contains NaN"),
        ([[1, 1, 5, 5], [0, float("inf"), 3, 3]], "xywh", r"boxes\[1\] .* contains NaN or infinity"),
        (
            [[1, 1, 5, 5], [0, 0, -3, 3]],
            "xywh",
            r"boxes\[1\] = \[0\.0, 0\.0, -3\.0, 3\.0\] \(xywh\) has a negative width",
        ),
        ([[0, 0, 3, -0.5]], "xywh", r"negative height"),
        ([[10, 0, 5, 5]], "xyxy", r"has x2 < x1"),
        ([[0, 10, 5, 5]], "xyxy", r"has y2 < y1"),
        ([[0, 0, 3]], "xywh", r"must have shape \(N, 4\) \(xywh\), got shape \(1, 3\)"),
        ([0, 0, 3, 3], "xywh", r"must have shape \(N, 4\)"),
        ([[[0, 0, 3, 3]]], "xywh", r"got shape \(1, 1, 4\)"),
        ([[0, 0, 3], [1, 2, 3, 4]], "xywh", r"rectangular array"),
    ],
)
def test_bad_boxes(boxes, fmt, message):
    with pytest.raises(ValueError, match=message):
        box_to_center_scale(boxes, fmt)


def test_bad_box_format():
    with pytest.raises(ValueError, match="box_format must be one of"):
        box_to_center_scale([[0, 0, 1, 1]], "cxcywh")


def test_zero_size_box_is_accepted():
    center, scale = box_to_center_scale([[5, 6, 0, 0]])
    assert center.tolist() == [[5.0, 6.0]] and scale.tolist() == [[0.0, 0.0]]
    inverse = inverse_warp_matrix(center, scale)
    assert torch.isfinite(inverse).all()
    points = crop_to_image(torch.tensor([[[0.0, 0.0], [191.0, 255.0]]]), center, scale)
    torch.testing.assert_close(points, torch.tensor([[[5.0, 6.0], [5.0, 6.0]]]))


# ---- warps -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rotation", [None, 0.0, 33.0, -71.5])
def test_udp_matrix_matches_official(real_boxes, rotation):
    center, scale = box_to_center_scale(real_boxes)
    ours = warp_matrix(center, scale, INPUT, rotation, use_udp=True)
    for i in range(0, len(real_boxes), 7):
        c, s = center[i].numpy(), scale[i].numpy()
        ref = ref_udp_matrix(rotation or 0.0, c * 2.0, np.array([191.0, 255.0]), s * 200.0)
        np.testing.assert_allclose(ours[i].numpy(), ref, rtol=1e-9, atol=1e-9, err_msg=f"box {i}")


@pytest.mark.parametrize("rotation", [None, 25.0, -140.0])
def test_classic_matrix_matches_official(real_boxes, rotation):
    center, scale = box_to_center_scale(real_boxes)
    ours = warp_matrix(center, scale, INPUT, rotation, use_udp=False)
    for i in range(0, len(real_boxes), 7):
        ref = ref_classic_matrix(center[i].numpy(), scale[i].numpy(), rotation or 0.0, (192, 256))
        # cv2.getAffineTransform solves in float32 points: compare at that precision
        np.testing.assert_allclose(ours[i].numpy(), ref, rtol=1e-4, atol=5e-3, err_msg=f"box {i}")


@pytest.mark.parametrize("use_udp", [True, False])
def test_inverse_and_round_trip(real_boxes, use_udp):
    center, scale = box_to_center_scale(real_boxes)
    rotation = torch.linspace(-80, 80, len(real_boxes), dtype=torch.float64)
    forward = warp_matrix(center, scale, INPUT, rotation, use_udp)
    inverse = inverse_warp_matrix(center, scale, INPUT, rotation, use_udp)
    n = len(forward)
    last_row = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(n, 1, 3)
    product = torch.cat([forward, last_row], 1) @ torch.cat([inverse, last_row], 1)
    torch.testing.assert_close(product, torch.eye(3, dtype=torch.float64).expand(n, 3, 3))
    points = torch.rand(len(real_boxes), 17, 2, dtype=torch.float64) * 600
    back = crop_to_image(
        image_to_crop(points, center, scale, INPUT, rotation, use_udp), center, scale, INPUT, rotation, use_udp
    )
    torch.testing.assert_close(back, points)
    # the no-rotation fast path equals the matrix path
    fast = crop_to_image(points, center, scale, INPUT, None, use_udp)
    torch.testing.assert_close(fast, apply_affine(points, inverse_warp_matrix(center, scale, INPUT, None, use_udp)))


@pytest.mark.parametrize("use_udp", [True, False])
def test_crop_to_image_is_official_transform_preds(real_boxes, use_udp):
    """Heatmap px -> input px (codec) -> image px (geometry) equals the official transform_preds."""
    center, scale = box_to_center_scale(real_boxes)
    heat = torch.rand(len(real_boxes), 17, 2, dtype=torch.float64) * torch.tensor([47.0, 63.0], dtype=torch.float64)
    stride = torch.tensor([191 / 47, 255 / 63] if use_udp else [4.0, 4.0], dtype=torch.float64)
    ours = crop_to_image(heat * stride, center, scale, INPUT, None, use_udp)
    for i in range(0, len(real_boxes), 5):
        ref = ref_transform_preds(heat[i].numpy(), center[i].numpy(), scale[i].numpy(), (48, 64), use_udp)
        np.testing.assert_allclose(ours[i].numpy(), ref, rtol=1e-9, atol=1e-7)


def test_rotation_per_crop_and_errors():
    center, scale = box_to_center_scale([[0, 0, 50, 100], [10, 10, 80, 60]])
    per_crop = warp_matrix(center, scale, INPUT, torch.tensor([10.0, 10.0]))
    torch.testing.assert_close(per_crop, warp_matrix(center, scale, INPUT, 10.0))
    with pytest.raises(ValueError, match=r"rotation must be a number or hold one value per crop \(2\), got 3"):
        warp_matrix(center, scale, INPUT, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="rotation contains NaN"):
        warp_matrix(center, scale, INPUT, [1.0, float("nan")])


def test_use_udp_per_crop(real_boxes):
    """One flag per crop (a ViTPose++ batch mixing UDP and classic datasets): each crop gets its official matrix
    and its official transform_preds."""
    center, scale = box_to_center_scale(real_boxes)
    flags = torch.arange(len(real_boxes)) % 3 == 0
    rotation = torch.linspace(-60, 60, len(real_boxes), dtype=torch.float64)
    ours = warp_matrix(center, scale, INPUT, rotation, use_udp=flags)
    inverse = inverse_warp_matrix(center, scale, INPUT, rotation, use_udp=flags)
    heat = torch.rand(len(real_boxes), 17, 2, dtype=torch.float64) * torch.tensor([47.0, 63.0], dtype=torch.float64)
    for i in range(len(real_boxes)):
        c, s, r = center[i].numpy(), scale[i].numpy(), float(rotation[i])
        if flags[i]:
            ref = ref_udp_matrix(r, c * 2.0, np.array([191.0, 255.0]), s * 200.0)
            np.testing.assert_allclose(ours[i].numpy(), ref, rtol=1e-9, atol=1e-9, err_msg=f"box {i}")
        else:
            ref = ref_classic_matrix(c, s, r, (192, 256))
            np.testing.assert_allclose(ours[i].numpy(), ref, rtol=1e-4, atol=5e-3, err_msg=f"box {i}")
        np.testing.assert_allclose(
            (
                torch.cat([ours[i], torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)])
                @ torch.cat([inverse[i], torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)])
            ).numpy(),
            np.eye(3),
            atol=1e-9,
        )
    stride = torch.where(flags[:, None], torch.tensor([191 / 47, 255 / 63], dtype=torch.float64), 4.0)
    points = crop_to_image(heat * stride[:, None], center, scale, INPUT, None, flags)
    for i in range(len(real_boxes)):
        ref = ref_transform_preds(heat[i].numpy(), center[i].numpy(), scale[i].numpy(), (48, 64), bool(flags[i]))
        np.testing.assert_allclose(points[i].numpy(), ref, rtol=1e-9, atol=1e-7)
    back = crop_to_image(
        image_to_crop(points, center, scale, INPUT, rotation, flags), center, scale, INPUT, rotation, flags
    )
    torch.testing.assert_close(back, points)
    with pytest.raises(ValueError, match=rf"use_udp must be a bool or hold one flag per crop \({len(flags)}\), got 2"):
        warp_matrix(center, scale, INPUT, None, torch.tensor([True, False]))
    with pytest.raises(TypeError, match="use_udp must be a bool or hold one bool per crop, got dtype torch.int64"):
        warp_matrix(center, scale, INPUT, None, torch.ones(len(flags), dtype=torch.long))
