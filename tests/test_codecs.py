"""Heatmap codecs against numpy re-implementations of the official (mmpose 0.x / ViTPose) target and decode code."""

import cv2
import numpy as np
import pytest
import torch

from vitpose_hf.codecs import (
    MSRAHeatmap,
    UDPHeatmap,
    flip_back,
    gaussian_blur,
    get_heatmap_maximum,
    opencv_gaussian_kernel,
    refine_keypoints_dark_udp,
)

INPUT_WH = np.array([192, 256])
HEATMAP_WH = np.array([48, 64])


# ---- references written from the official algorithm (numpy loops, OpenCV) -----------------------------------------
def ref_generate_target(joints, visible, use_udp, sigma=2.0):
    """The official _udp_generate_target / _msra_generate_target for one instance (K, 2)."""
    w, h = HEATMAP_WH
    target = np.zeros((len(joints), h, w), np.float32)
    weight = visible.astype(np.float32).copy()
    stride = (INPUT_WH - 1.0) / (HEATMAP_WH - 1.0) if use_udp else INPUT_WH / HEATMAP_WH
    tmp = sigma * 3
    for k in range(len(joints)):
        mu_x = int(joints[k][0] / stride[0] + 0.5)
        mu_y = int(joints[k][1] / stride[1] + 0.5)
        ul = [int(mu_x - tmp), int(mu_y - tmp)]
        br = [int(mu_x + tmp + 1), int(mu_y + tmp + 1)]
        if ul[0] >= w or ul[1] >= h or br[0] < 0 or br[1] < 0:
            weight[k] = 0
            continue
        size = 2 * tmp + 1
        x = np.arange(0, size, 1, np.float32)
        y = x[:, None]
        x0 = y0 = size // 2
        if use_udp:
            x0 += joints[k][0] / stride[0] - mu_x
            y0 += joints[k][1] / stride[1] - mu_y
        g = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma**2))
        g_x = max(0, -ul[0]), min(br[0], w) - ul[0]
        g_y = max(0, -ul[1]), min(br[1], h) - ul[1]
        img_x = max(0, ul[0]), min(br[0], w)
        img_y = max(0, ul[1]), min(br[1], h)
        if weight[k] > 0.5:
            target[k][img_y[0] : img_y[1], img_x[0] : img_x[1]] = g[g_y[0] : g_y[1], g_x[0] : g_x[1]]
    return target, weight


def ref_max_preds(heatmaps):
    n, k, _, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1)
    idx = np.argmax(flat, 2)
    preds = np.stack([idx % w, idx // w], -1).astype(np.float32)
    return preds, np.amax(flat, 2)


def ref_decode_udp_dark(heatmaps, kernel=11):
    """argmax + post_dark_udp (cv2.GaussianBlur, clip, log, edge pad, Newton step), heatmap pixels."""
    heatmaps = heatmaps.copy()
    preds, maxvals = ref_max_preds(heatmaps)
    n, k, h, w = heatmaps.shape
    for maps in heatmaps:
        for m in maps:
            cv2.GaussianBlur(m, (kernel, kernel), 0, m)
    np.clip(heatmaps, 0.001, 50, heatmaps)
    np.log(heatmaps, heatmaps)
    pad = np.pad(heatmaps, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    for i in range(n):
        for j in range(k):
            x, y = int(preds[i, j, 0]) + 1, int(preds[i, j, 1]) + 1
            p = pad[i, j]
            g = np.array([0.5 * (p[y, x + 1] - p[y, x - 1]), 0.5 * (p[y + 1, x] - p[y - 1, x])])
            dxx = p[y, x + 1] - 2 * p[y, x] + p[y, x - 1]
            dyy = p[y + 1, x] - 2 * p[y, x] + p[y - 1, x]
            dxy = 0.5 * (p[y + 1, x + 1] - p[y, x + 1] - p[y + 1, x] + 2 * p[y, x] - p[y, x - 1] - p[y - 1, x] + p[y - 1, x - 1])
            hess = np.array([[dxx, dxy], [dxy, dyy]]) + np.finfo(np.float32).eps * np.eye(2)
            preds[i, j] -= np.linalg.inv(hess) @ g
    return preds, maxvals


def ref_decode_msra(heatmaps):
    preds, maxvals = ref_max_preds(heatmaps)
    n, k, h, w = heatmaps.shape
    for i in range(n):
        for j in range(k):
            m = heatmaps[i, j]
            px, py = int(preds[i, j, 0]), int(preds[i, j, 1])
            if 1 < px < w - 1 and 1 < py < h - 1:
                diff = np.array([m[py][px + 1] - m[py][px - 1], m[py + 1][px] - m[py - 1][px]])
                preds[i, j] += np.sign(diff) * 0.25
    return preds, maxvals


def ref_flip_back(flipped, flip_pairs, shift):
    out = flipped.copy()
    for left, right in flip_pairs:
        out[:, left] = flipped[:, right]
        out[:, right] = flipped[:, left]
    out = out[..., ::-1].copy()
    if shift:
        out[:, :, :, 1:] = out[:, :, :, :-1]
    return out


COCO_PAIRS = [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)]


def coco_flip_indices():
    perm = list(range(17))
    for a, b in COCO_PAIRS:
        perm[a], perm[b] = b, a
    return perm


def noisy_heatmaps(n, seed, noise=0.05, margin=0.0):
    """Gaussian targets at random positions (optionally anywhere, including the border) plus noise."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.tensor([margin, margin])
    high = torch.tensor([191.0, 255.0]) - margin
    keypoints = low + torch.rand(n, 17, 2, generator=gen) * (high - low)
    heatmaps = UDPHeatmap().encode(keypoints)["heatmaps"]
    return (heatmaps + noise * torch.randn(heatmaps.shape, generator=gen)).contiguous(), keypoints


# ---- OpenCV building blocks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [1, 3, 5, 7, 11, 13])  # 9: OpenCV 5 added a fixed table that 4.x lacks
@pytest.mark.parametrize("sigma", [0.0, 1.3])
def test_kernel_matches_opencv(size, sigma):
    ours = opencv_gaussian_kernel(size, sigma, dtype=torch.float64).numpy()
    np.testing.assert_allclose(ours, cv2.getGaussianKernel(size, sigma).ravel(), atol=1e-12)


def test_kernel_size_11_has_sigma_2():
    x = np.arange(11) - 5.0
    expected = np.exp(-(x**2) / 8.0)
    np.testing.assert_allclose(opencv_gaussian_kernel(11, dtype=torch.float64).numpy(), expected / expected.sum())


@pytest.mark.parametrize("shape", [(2, 3, 64, 48), (1, 2, 5, 3), (1, 1, 1, 7)])
def test_blur_matches_opencv_reflect101(shape):
    maps = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    ours = gaussian_blur(maps, 11).numpy()
    ref = maps.numpy().copy()
    for m in ref.reshape(-1, *shape[-2:]):
        cv2.GaussianBlur(m, (11, 11), 0, m)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


# ---- encode ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("codec_class, use_udp", [(UDPHeatmap, True), (MSRAHeatmap, False)])
def test_encode_matches_official(codec_class, use_udp):
    gen = torch.Generator().manual_seed(2)
    keypoints = torch.rand(6, 17, 2, generator=gen) * torch.tensor([260.0, 330.0]) - torch.tensor([35.0, 40.0])
    keypoints[0, :4] = torch.tensor([[-23.9, 10.0], [-24.1, 10.0], [214.0, 100.0], [0.0, 0.0]])  # window edges
    visible = (torch.rand(6, 17, generator=gen) > 0.2).float()
    out = codec_class().encode(keypoints, visible)
    assert out["heatmaps"].shape == (6, 17, 64, 48) and out["keypoint_weights"].shape == (6, 17)
    for i in range(6):
        target, weight = ref_generate_target(keypoints[i].numpy(), visible[i].numpy(), use_udp)
        np.testing.assert_allclose(out["heatmaps"][i].numpy(), target, atol=1e-5, err_msg=f"instance {i}")
        np.testing.assert_array_equal(out["keypoint_weights"][i].numpy(), weight)


def test_encode_udp_peak_on_exact_position():
    codec = UDPHeatmap()
    stride = torch.tensor(codec.stride)
    keypoints = torch.tensor([[[10.0, 20.0], [55.5, 101.25]]]) * stride  # heatmap (10, 20) and (55.5/..)
    heat = codec.encode(keypoints)["heatmaps"][0, 0]
    assert heat[20, 10] == 1.0 and heat.max() == 1.0
    # invisible keypoints draw nothing and get weight 0; NaN is fine there
    out = codec.encode(torch.tensor([[[float("nan"), 3.0], [50.0, 60.0]]]), torch.tensor([[0.0, 1.0]]))
    assert out["keypoint_weights"].tolist() == [[0.0, 1.0]] and out["heatmaps"][0, 0].abs().sum() == 0


def test_encode_errors():
    codec = UDPHeatmap()
    with pytest.raises(ValueError, match=r"keypoints must have shape \(N, K, 2\), got \(17, 2\)"):
        codec.encode(torch.zeros(17, 2))
    with pytest.raises(ValueError, match=r"keypoints_visible must have shape \(1, 17\)"):
        codec.encode(torch.zeros(1, 17, 2), torch.ones(1, 16))
    with pytest.raises(ValueError, match="NaN or infinity at visible"):
        codec.encode(torch.full((1, 1, 2), float("inf")))


# ---- decode ----------------------------------------------------------------------------------------------------
def test_udp_round_trip_sub_pixel():
    codec = UDPHeatmap()
    heatmaps, keypoints = noisy_heatmaps(40, seed=3, noise=0.0, margin=24.0)  # >= 6 heatmap px from the border
    decoded, scores = codec.decode(heatmaps)
    error = ((decoded - keypoints) / torch.tensor(codec.stride)).abs().max()
    assert error < 0.05, f"round trip error {error:.4f} heatmap px"
    assert (scores > 0.9).all()


@pytest.mark.parametrize("seed, noise, margin", [(4, 0.05, 0.0), (5, 0.02, 10.0), (6, 0.1, 0.0)])
def test_udp_decode_matches_official(seed, noise, margin):
    heatmaps, _ = noisy_heatmaps(24, seed, noise, margin)
    heatmaps[0, :4] = torch.flip(heatmaps[0, :4], dims=(-1, -2))  # some peaks at the far corner
    codec = UDPHeatmap()
    decoded, scores = codec.decode(heatmaps)
    ref, maxvals = ref_decode_udp_dark(heatmaps.numpy())
    ref_input = ref * np.array(codec.stride)
    np.testing.assert_allclose(decoded.numpy(), ref_input, atol=1e-3)
    np.testing.assert_array_equal(scores.numpy(), maxvals)


def test_dark_exact_in_float64_on_tiny_maps():
    """Any map size (reflection wraps several times): identical to the reference in float64."""
    maps = torch.rand(2, 3, 7, 9, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    locations, _ = get_heatmap_maximum(maps)
    ref, _ = ref_decode_udp_dark(maps.numpy())
    np.testing.assert_allclose(refine_keypoints_dark_udp(locations, maps).numpy(), ref, atol=1e-9)


def test_msra_decode_matches_official():
    heatmaps, _ = noisy_heatmaps(20, seed=8, noise=0.05)
    codec = MSRAHeatmap()
    decoded, scores = codec.decode(heatmaps)
    ref, maxvals = ref_decode_msra(heatmaps.numpy())
    np.testing.assert_allclose(decoded.numpy(), ref * 4.0, atol=1e-6)
    np.testing.assert_array_equal(scores.numpy(), maxvals)


def test_msra_round_trip_within_quarter_pixel():
    codec = MSRAHeatmap()
    keypoints = torch.rand(10, 17, 2, generator=torch.Generator().manual_seed(9)) * 140 + 25
    decoded, _ = codec.decode(codec.encode(keypoints)["heatmaps"])
    assert ((decoded - keypoints).abs() <= 0.5 * 4 + 1e-4).all()  # rounding to a heatmap pixel, then +- 0.25


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_heatmaps_decode(dtype):
    heatmaps, keypoints = noisy_heatmaps(8, seed=10, noise=0.0, margin=24.0)
    codec = UDPHeatmap()
    decoded, scores = codec.decode(heatmaps.to(dtype))
    assert decoded.dtype == torch.float32 and scores.dtype == torch.float32
    same, same_scores = codec.decode(heatmaps.to(dtype).float())
    torch.testing.assert_close(decoded, same)
    torch.testing.assert_close(scores, same_scores)
    assert ((decoded - keypoints) / torch.tensor(codec.stride)).abs().max() < 0.25


def test_float64_stays_float64():
    heatmaps, _ = noisy_heatmaps(2, seed=11)
    decoded, scores = UDPHeatmap().decode(heatmaps.double())
    assert decoded.dtype == torch.float64 and scores.dtype == torch.float64


def test_low_scores_are_kept_not_dropped():
    heatmaps = -torch.rand(2, 17, 64, 48, generator=torch.Generator().manual_seed(12)) - 0.5
    heatmaps[0, 3, 30, 20] = -0.01
    for codec in (UDPHeatmap(), MSRAHeatmap()):
        decoded, scores = codec.decode(heatmaps)
        assert (scores < 0).all() and torch.isfinite(decoded).all()
        assert scores[0, 3] == pytest.approx(-0.01)
        hm_xy = decoded[0, 3] / torch.tensor(codec.stride)
        assert (hm_xy - torch.tensor([20.0, 30.0])).abs().max() < 1.0  # near its arg-max, not at -1


def test_decode_errors():
    codec = UDPHeatmap()
    with pytest.raises(ValueError, match=r"heatmaps must have shape \(N, K, h, w\)"):
        codec.decode(torch.zeros(17, 64, 48))
    with pytest.raises(TypeError, match="floating point"):
        codec.decode(torch.zeros(1, 17, 64, 48, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"heatmaps are \(32, 24\) but this codec was built for heatmap_size \(64, 48\)"):
        codec.decode(torch.zeros(1, 17, 32, 24))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_size": (256,)}, "input_size must be"),
        ({"heatmap_size": (1, 48)}, "heatmap_size must be"),
        ({"sigma": 0}, "sigma must be a positive number"),
        ({"blur_kernel_size": 4}, "blur_kernel_size must be a positive odd integer"),
    ],
)
def test_constructor_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UDPHeatmap(**kwargs)


# ---- flip ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shift", [False, True])
def test_flip_back_matches_official(shift):
    flipped = torch.rand(3, 17, 64, 48, generator=torch.Generator().manual_seed(13))
    ours = flip_back(flipped, coco_flip_indices(), shift=shift)
    np.testing.assert_array_equal(ours.numpy(), ref_flip_back(flipped.numpy(), COCO_PAIRS, shift))


def test_flip_back_per_sample_and_dtype():
    flipped = torch.rand(2, 17, 8, 6, generator=torch.Generator().manual_seed(14)).to(torch.bfloat16)
    identity = list(range(17))
    per_sample = torch.tensor([coco_flip_indices(), identity])
    out = flip_back(flipped, per_sample)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out[0], flip_back(flipped[:1], coco_flip_indices())[0])
    torch.testing.assert_close(out[1], flipped[1].flip(-1))
    with pytest.raises(ValueError, match=r"flip_indices must have shape \(17,\) or \(2, 17\)"):
        flip_back(flipped, identity[:16])
    with pytest.raises(ValueError, match=r"flip_indices must lie in \[0, 17\)"):
        flip_back(flipped, identity[:16] + [17])


def test_flip_test_of_symmetric_prediction_is_exact():
    """A model that is exactly mirror-consistent gives the same keypoints with and without the flip test."""
    heatmaps, _ = noisy_heatmaps(4, seed=15)
    mirrored = heatmaps[:, coco_flip_indices()].flip(-1)  # what such a model predicts on the mirrored crop
    averaged = (heatmaps + flip_back(mirrored, coco_flip_indices())) / 2
    torch.testing.assert_close(averaged, heatmaps)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_decode_on_cuda_matches_cpu():
    heatmaps, _ = noisy_heatmaps(6, seed=16)
    codec = UDPHeatmap()
    cpu = codec.decode(heatmaps)
    gpu = codec.decode(heatmaps.cuda())
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(gpu[1].cpu(), cpu[1])
