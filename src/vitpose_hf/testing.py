"""Synthetic keypoint data for tests, benchmarks and CI without downloads (not used by the library itself).

`synthetic_keypoint_dataset` draws figures with known keypoints into images, in the Hub schema of
:func:`vitpose_hf.data.hub_dataset.keypoint_features`, so that training and evaluation can run end to end offline.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vitpose_hf.data.hub_dataset import keypoint_features

from .keypoint_metadata import get_dataset_info

__all__ = ["SYNTHETIC_FIGURE_LAYOUT", "figure_template", "synthetic_keypoint_dataset"]

SYNTHETIC_FIGURE_LAYOUT: dict[str, Any] = {
    "name": "figure",
    "keypoint_names": [
        "head",
        "neck",
        "left_elbow",
        "right_elbow",
        "left_hand",
        "right_hand",
        "hip",
        "left_foot",
        "right_foot",
    ],
    "flip_pairs": [[2, 3], [4, 5], [7, 8]],
    "skeleton": [[0, 1], [1, 2], [1, 3], [2, 4], [3, 5], [1, 6], [6, 7], [6, 8]],
    "sigmas": [0.08] * 9,
    "upper_body_ids": [0, 1, 2, 3, 4, 5],
    "lower_body_ids": [6, 7, 8],
    "use_udp": True,
}

_PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (0, 0, 128),
    (255, 255, 255),
]


def figure_template(info: Mapping[str, Any]) -> np.ndarray:
    """``(K, 2)`` left-right symmetric template in [-0.5, 0.5] x [-1, 1] for a layout, fixed by its name.

    Unpaired keypoints sit on the axis, each flip pair mirrored (the "left" one on the image's right, as a
    person facing the camera), so a mirrored figure is again a valid figure.
    """
    import zlib

    k = len(info["keypoint_names"])
    rng = np.random.default_rng(zlib.crc32(info["name"].encode()))
    template = np.zeros((k, 2))
    paired = {i for pair in info.get("flip_pairs") or [] for i in pair}
    singles = [i for i in range(k) if i not in paired]
    pairs = info.get("flip_pairs") or []
    rows = np.linspace(-0.9, 0.9, len(singles) + len(pairs))
    order = rng.permutation(len(rows))
    for n, i in enumerate(singles):
        template[i] = (0.0, rows[order[n]])
    for n, (a, b) in enumerate(pairs):
        x = rng.uniform(0.2, 0.5)
        y = rows[order[len(singles) + n]] + rng.uniform(-0.05, 0.05)
        left = a if "left" in info["keypoint_names"][a].lower() or "right" in info["keypoint_names"][b].lower() else b
        right = b if left == a else a
        template[left], template[right] = (x, y), (-x, y)
    return template


def synthetic_keypoint_dataset(
    layout: str | Mapping[str, Any] = SYNTHETIC_FIGURE_LAYOUT,
    num_images: int = 64,
    image_size: tuple[int, int] = (128, 96),
    seed: int = 0,
    max_figures: int = 1,
    figure_height: tuple[float, float] = (0.45, 0.8),
    image_id_offset: int = 0,
    image_format: str = "PNG",
    min_figures: int = 1,
    side_by_side: bool = False,
):
    """Images of drawn figures with known keypoints, in the Hub schema (`keypoint_features`).

    Each figure is the layout's `figure_template`, randomly scaled, rotated (+-15 degrees), moved and jittered;
    keypoints are discs (a flip pair shares a colour, so mirroring is consistent), linked by the skeleton, on a
    noisy background. Every keypoint is labelled visible (v = 2); ``area`` is 0.6 x the box area.

    Args:
        layout: keypoint layout (name or info dict); default: the 9-keypoint `SYNTHETIC_FIGURE_LAYOUT`.
        num_images: rows.
        image_size: ``(height, width)``.
        seed: everything follows from it.
        max_figures: 1..n figures per image.
        figure_height: figure height as a fraction of the image height (range).
        image_id_offset: first ``image_id``.
        image_format: ``"PNG"`` (lossless: keypoint colours exact) or ``"JPEG"`` (realistic decoding cost).
        min_figures: at least this many figures per image (multi-person images for bottom-up models).
        side_by_side: give each figure its own vertical strip of the image, so figures do not overlap.
    """
    if not 1 <= min_figures <= max_figures:
        raise ValueError(f"need 1 <= min_figures <= max_figures, got {min_figures} and {max_figures}")
    import io

    import datasets
    import PIL.Image
    import PIL.ImageDraw

    info = get_dataset_info(dict(layout) if isinstance(layout, Mapping) else layout)
    k = info["num_keypoints"]
    template = figure_template(info)
    colour_of = list(range(k))
    for a, b in info.get("flip_pairs") or []:
        colour_of[b] = colour_of[a] = min(a, b)
    rng = np.random.default_rng(seed)
    height, width = image_size
    rows, next_id = [], 1
    for n in range(num_images):
        background = rng.integers(40, 200, size=3)
        pixels = np.clip(background + rng.normal(0, 12, size=(height, width, 3)), 0, 255).astype(np.uint8)
        image = PIL.Image.fromarray(pixels)
        draw = PIL.ImageDraw.Draw(image)
        objects = []
        count = int(rng.integers(min_figures, max_figures + 1))
        for f in range(count):
            fig_h = rng.uniform(*figure_height) * height / 2
            angle = np.deg2rad(rng.uniform(-15, 15))
            rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            points = (template + rng.normal(0, 0.03, template.shape)) @ rot.T * fig_h
            lo, hi = points.min(axis=0), points.max(axis=0)
            margin = 6.0
            left, right = (f * width / count, (f + 1) * width / count) if side_by_side else (0.0, width)
            center = np.array(
                [
                    rng.uniform(left + margin - lo[0], right - margin - hi[0])
                    if right - left - 2 * margin > hi[0] - lo[0]
                    else (left + right) / 2,
                    rng.uniform(margin - lo[1], height - margin - hi[1])
                    if height - 2 * margin > hi[1] - lo[1]
                    else height / 2,
                ]
            )
            points = points + center
            radius = max(1.5, fig_h * 0.06)
            for a, b in info.get("skeleton") or []:
                draw.line([tuple(points[a]), tuple(points[b])], fill=(235, 235, 235), width=max(1, int(radius / 2)))
            for i in range(k):
                x, y = points[i]
                draw.ellipse(
                    [x - radius, y - radius, x + radius, y + radius], fill=_PALETTE[colour_of[i] % len(_PALETTE)]
                )
            x1, y1 = np.maximum(points.min(axis=0) - radius - 2, 0)
            x2, y2 = np.minimum(points.max(axis=0) + radius + 2, [width - 1, height - 1])
            box = [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]
            objects.append(
                {
                    "id": next_id,
                    "category_id": 1,
                    "bbox": box,
                    "keypoints": [[float(x), float(y), 2.0] for x, y in points],
                    "iscrowd": 0,
                    "area": 0.6 * box[2] * box[3],
                }
            )
            next_id += 1
        buffer = io.BytesIO()
        image.save(buffer, format=image_format)
        file_name = f"synthetic_{n:06d}.{'jpg' if image_format.upper() == 'JPEG' else image_format.lower()}"
        rows.append(
            {
                "image": {"bytes": buffer.getvalue(), "path": file_name},
                "image_id": image_id_offset + n,
                "file_name": file_name,
                "width": width,
                "height": height,
                "objects": objects,
            }
        )
    return datasets.Dataset.from_list(rows, features=keypoint_features())
