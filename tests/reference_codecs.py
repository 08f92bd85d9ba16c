"""Numpy / OpenCV re-implementations of the official (mmpose 0.x / ViTPose) heatmap code, written from the
algorithm for tests: target generation, decoding, flip-back and the back-transform. One instance or one map at a
time, in loops, so that they share nothing with the vectorised library code."""

import cv2
import numpy as np

INPUT_WH = np.array([192, 256])
HEATMAP_WH = np.array([48, 64])


def ref_generate_target(joints, visible, use_udp, sigma=2.0, input_wh=INPUT_WH, heatmap_wh=HEATMAP_WH):
    """The official _udp_generate_target / _msra_generate_target for one instance (K, 2) in input-crop pixels."""
    w, h = heatmap_wh
    target = np.zeros((len(joints), h, w), np.float32)
    weight = visible.astype(np.float32).copy()
    stride = (input_wh - 1.0) / (heatmap_wh - 1.0) if use_udp else input_wh / heatmap_wh
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


def ref_targets(crop_points, use_udp, **kwargs):
    """(N, K, h, w) official targets of (N, K, 2) input-crop points, all visible."""
    points = np.asarray(crop_points, dtype=np.float64)
    return np.stack([ref_generate_target(p, np.ones(len(p)), use_udp, **kwargs)[0] for p in points])


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
    n, k = heatmaps.shape[:2]
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
            dxy = 0.5 * (
                p[y + 1, x + 1] - p[y, x + 1] - p[y + 1, x] + 2 * p[y, x] - p[y, x - 1] - p[y - 1, x] + p[y - 1, x - 1]
            )
            hess = np.array([[dxx, dxy], [dxy, dyy]]) + np.finfo(np.float32).eps * np.eye(2)
            preds[i, j] -= np.linalg.inv(hess) @ g
    return preds, maxvals


def ref_decode_msra(heatmaps):
    """argmax + the 'default' quarter-pixel shift toward the higher neighbour, heatmap pixels."""
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
    """The official flip_back (swap each left/right pair, mirror the width) plus shift_heatmap (one column)."""
    out = flipped.copy()
    for left, right in flip_pairs:
        out[:, left] = flipped[:, right]
        out[:, right] = flipped[:, left]
    out = out[..., ::-1].copy()
    if shift:
        out[:, :, :, 1:] = out[:, :, :, :-1]
    return out


def ref_transform_preds(coords, center, scale, heatmap_wh, use_udp):
    """The official transform_preds: (K, 2) heatmap pixels -> image pixels for one crop (no rotation)."""
    size = np.asarray(scale, dtype=np.float64) * 200.0
    if use_udp:
        factor = size / (np.asarray(heatmap_wh, dtype=np.float64) - 1.0)
    else:
        factor = size / np.asarray(heatmap_wh, dtype=np.float64)
    return np.asarray(coords, dtype=np.float64) * factor + np.asarray(center, dtype=np.float64) - size * 0.5


def ref_keypoints(heatmaps, flipped, flip_pairs, centers, scales, use_udp, heatmap_wh=HEATMAP_WH):
    """The official test path for one setting: flip test average, decode, back-transform; image pixels (N, K, 2)."""
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    if flipped is not None:
        heatmaps = (heatmaps + ref_flip_back(np.asarray(flipped, dtype=np.float32), flip_pairs, not use_udp)) * 0.5
    preds, maxvals = ref_decode_udp_dark(heatmaps) if use_udp else ref_decode_msra(heatmaps)
    points = [ref_transform_preds(p, c, s, heatmap_wh, use_udp) for p, c, s in zip(preds, centers, scales)]
    return np.stack(points), maxvals
