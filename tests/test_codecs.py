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

from reference_codecs import (
    INPUT_WH,
    ref_decode_msra,
    ref_decode_udp_dark,
    ref_flip_back,
    ref_generate_target,
    ref_targets,
)

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


# Unit roundoff of the low-precision formats (8 and 11 significant bits).
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_heatmaps_decode(dtype):
    """bf16 / fp16 heatmaps decode as the official decoder decodes the same rounded values, in float32; the
    rounding moves a keypoint by at most 24 u heatmap px (u the unit roundoff).

    The bound: each blurred log value moves by <= u, so the gradient by <= u and the Hessian entries by <= 4u; on
    the blurred Gaussian (variance 2^2 + 2^2) |H^-1| ~ 8 and |g| <= 1/16 within half a pixel of the peak, so the
    Newton step moves by <= 8u + 8 * 4u * 8 / 16 = 24u.
    """
    heatmaps, _ = noisy_heatmaps(8, seed=10, noise=0.0, margin=24.0)
    codec = UDPHeatmap()
    stride = np.array(codec.stride)
    low = heatmaps.to(dtype)
    decoded, scores = codec.decode(low)
    assert decoded.dtype == torch.float32 and scores.dtype == torch.float32
    rounded = low.to(torch.float32).numpy()  # exact: every bf16 / fp16 value is a float32
    ref, maxvals = ref_decode_udp_dark(rounded)
    np.testing.assert_allclose(decoded.numpy(), ref * stride, atol=1e-3)
    np.testing.assert_array_equal(scores.numpy(), maxvals)
    full, _ = ref_decode_udp_dark(heatmaps.numpy())
    moved = np.abs(decoded.numpy() / stride - full).max()
    assert moved <= 24 * UNIT_ROUNDOFF[dtype], f"{dtype} rounding moved a keypoint by {moved:.4f} heatmap px"
    if dtype == torch.bfloat16:
        assert moved > 1e-4  # the rounding is visible: the check above is not vacuous


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
    with pytest.raises(
        ValueError, match=r"heatmaps are \(32, 24\) but this codec was built for heatmap_size \(64, 48\)"
    ):
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


def test_flip_test_of_a_mirror_consistent_model_is_exact():
    """UDP: a model that predicts the official targets on both the crop and its mirror image gives, after
    flip_back and averaging, the targets of the crop itself, so the flip test changes no keypoint."""
    gen = torch.Generator().manual_seed(15)
    points = 24 + torch.rand(4, 17, 2, generator=gen, dtype=torch.float64) * (torch.tensor([191.0, 255.0]) - 48)
    heatmaps = torch.from_numpy(ref_targets(points.numpy(), use_udp=True))
    # On the mirrored crop, pixel u shows what pixel W - 1 - u shows, and channel i holds i's mirror partner.
    mirrored = points[:, coco_flip_indices()].clone()
    mirrored[..., 0] = (INPUT_WH[0] - 1) - mirrored[..., 0]
    flipped = torch.from_numpy(ref_targets(mirrored.numpy(), use_udp=True))
    averaged = (heatmaps + flip_back(flipped, coco_flip_indices())) / 2
    torch.testing.assert_close(averaged, heatmaps, atol=1e-6, rtol=0)
    codec = UDPHeatmap()
    with_flip, _ = codec.decode(averaged)
    without, _ = codec.decode(heatmaps)
    torch.testing.assert_close(with_flip, without, atol=1e-4, rtol=0)
    assert (without.double() - points).abs().max() < 0.05 * 4  # and both are the keypoints


def test_flip_back_shift_per_crop():
    """A batch mixing UDP (no shift) and non-UDP (shift) crops: each crop as the official flip_back says."""
    flipped = torch.rand(3, 17, 8, 6, generator=torch.Generator().manual_seed(17))
    shift = torch.tensor([True, False, True])
    out = flip_back(flipped, coco_flip_indices(), shift=shift)
    for i in range(3):
        expected = ref_flip_back(flipped[i : i + 1].numpy(), COCO_PAIRS, bool(shift[i]))
        np.testing.assert_array_equal(out[i : i + 1].numpy(), expected)
    with pytest.raises(ValueError, match=r"shift must be a bool or hold one flag per crop \(3\), got 2"):
        flip_back(flipped, coco_flip_indices(), shift=torch.tensor([True, False]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_decode_on_cuda_matches_cpu():
    heatmaps, _ = noisy_heatmaps(6, seed=16)
    codec = UDPHeatmap()
    cpu = codec.decode(heatmaps)
    gpu = codec.decode(heatmaps.cuda())
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(gpu[1].cpu(), cpu[1])
