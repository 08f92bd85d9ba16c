"""Draw poses on images with PIL: skeleton links, keypoints and boxes, in colours chosen per dataset.

Each dataset has its own palette (left side, right side, centre, and face / hands for COCO-WholeBody), so that
a ViTPose++ model's heads are told apart at a glance. Links and keypoints below ``score_threshold`` are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch

from vitpose_hf.boxes import convert_boxes, detector_box
from vitpose_hf.images import to_pil
from vitpose_hf.keypoint_metadata import get_dataset_info

__all__ = ["PALETTES", "draw", "keypoint_groups", "person_arrays", "person_box"]

RGB = tuple[int, int, int]

# dataset -> colours of (left, right, centre, face, hands); the default applies to any other dataset
PALETTES: dict[str, dict[str, RGB]] = {
    "coco": {"left": (255, 128, 0), "right": (51, 153, 255), "center": (0, 230, 118), "box": (0, 230, 118)},
    "aic": {"left": (255, 64, 129), "right": (0, 188, 212), "center": (255, 235, 59), "box": (255, 235, 59)},
    "mpii": {"left": (244, 67, 54), "right": (63, 81, 181), "center": (139, 195, 74), "box": (139, 195, 74)},
    "ap10k": {"left": (255, 152, 0), "right": (156, 39, 176), "center": (205, 220, 57), "box": (205, 220, 57)},
    "apt36k": {"left": (255, 87, 34), "right": (103, 58, 183), "center": (0, 150, 136), "box": (0, 150, 136)},
    "wholebody": {
        "left": (255, 128, 0),
        "right": (51, 153, 255),
        "center": (0, 230, 118),
        "face": (255, 255, 255),
        "left_hand": (255, 196, 0),
        "right_hand": (0, 200, 255),
        "box": (0, 230, 118),
    },
    "crowdpose": {"left": (255, 111, 0), "right": (41, 121, 255), "center": (118, 255, 3), "box": (118, 255, 3)},
    "ochuman": {"left": (255, 145, 0), "right": (48, 79, 254), "center": (29, 233, 182), "box": (29, 233, 182)},
}
_DEFAULT_PALETTE: dict[str, RGB] = {
    "left": (255, 160, 0),
    "right": (0, 176, 255),
    "center": (0, 230, 118),
    "box": (0, 230, 118),
}


def keypoint_groups(info: dict) -> list[str]:
    """Colour group of each keypoint: ``left`` / ``right`` / ``center``, or a part name (``face``, hands)."""
    groups = []
    parts = info.get("parts") or {}
    for i, name in enumerate(info["keypoint_names"]):
        part = next((p for p, (start, end) in parts.items() if start <= i < end), None)
        if part in ("face", "left_hand", "right_hand"):
            groups.append(part)
            continue
        lowered = name.lower()
        if "left" in lowered or lowered.startswith(("l_", "l-")):
            groups.append("left")
        elif "right" in lowered or lowered.startswith(("r_", "r-")):
            groups.append("right")
        else:
            groups.append("center")
    return groups


def _as_pil(image: Any) -> PIL.Image.Image:
    """A new 8-bit RGB image to draw on (paths are read with their EXIF orientation applied)."""
    pil = to_pil(image)
    return pil.copy() if pil is image else pil


def person_arrays(person: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(K, 2)`` points and ``(K,)`` scores from a pipeline person dict or a post-processor result dict."""
    keypoints = person.get("keypoints")
    if keypoints is None:
        raise ValueError(f"{where} has no 'keypoints'")
    if isinstance(keypoints, (list, tuple)) and keypoints and isinstance(keypoints[0], dict):
        points = np.array([[kp["x"], kp["y"]] for kp in keypoints], dtype=np.float64)
        scores = np.array([kp.get("score", 1.0) for kp in keypoints], dtype=np.float64)
        return points, scores
    if isinstance(keypoints, torch.Tensor):
        keypoints = keypoints.detach().float().cpu().numpy()
    points = np.asarray(keypoints, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] < 2:
        raise ValueError(
            f"{where}['keypoints'] must be (K, 2) or a list of {{name, x, y, score}}, got shape {points.shape}"
        )
    if points.shape[1] >= 3 and person.get("scores") is None:
        return points[:, :2], points[:, 2]
    scores = person.get("scores")
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().float().cpu().numpy()
    scores = np.ones(len(points)) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(points):
        raise ValueError(f"{where} has {len(points)} keypoints but {len(scores)} scores")
    return points[:, :2], scores


def person_box(person: dict, box_format: str | None) -> list[float] | None:
    """A person's box as ``xyxy`` (``box`` or ``bbox``, in its own ``box_format`` or the given one), or None."""
    box = person.get("box", person.get("bbox"))
    if box is None:
        return None
    if isinstance(box, torch.Tensor):
        box = box.detach().float().cpu().tolist()
    if isinstance(box, dict):
        return detector_box(box)
    box = [float(v) for v in box]
    if len(box) != 4 or not all(np.isfinite(box)):
        return None
    return convert_boxes(box, person.get("box_format", box_format) or "xywh", "xyxy")


def _resolve_info(person: dict, dataset: str | dict | None, num_keypoints: int) -> dict:
    if dataset is None:
        dataset = person.get("dataset")
    if dataset is None:
        by_count = {17: "coco", 14: "aic", 16: "mpii", 133: "wholebody"}
        if num_keypoints not in by_count:
            raise ValueError(f"cannot tell the dataset of a person with {num_keypoints} keypoints; pass dataset=...")
        dataset = by_count[num_keypoints]
    info = get_dataset_info(dataset)
    if info["num_keypoints"] != num_keypoints:
        raise ValueError(
            f"dataset {info['name']!r} has {info['num_keypoints']} keypoints but the person has {num_keypoints}"
        )
    return info


def draw(
    image: Any,
    people: Sequence[dict],
    dataset: str | dict | None = None,
    score_threshold: float = 0.3,
    radius: int | None = None,
    thickness: int | None = None,
    draw_boxes: bool = True,
    box_format: str | None = None,
) -> PIL.Image.Image:
    """Draw each person's skeleton, keypoints and box on a copy of ``image``.

    Args:
        image: a PIL image, a path, an ``(H, W[, C])`` numpy array or a ``(C, H, W)`` tensor.
        people: the pose pipeline's output for this image (dicts with ``keypoints`` as ``{name, x, y, score}``
            and ``box``), or the image processor's ``post_process_pose_estimation`` output (``keypoints`` ``(K, 2)``,
            ``scores``, ``bbox``): its per-image list as well as the one-image nesting ``[[person, ...]]``.
        dataset: keypoint dataset (name or info dict) for skeleton and colours; by default each person's
            ``dataset`` entry, else guessed from the keypoint count.
        score_threshold: keypoints scoring below are not drawn, nor links touching them.
        radius, thickness: keypoint radius and link width in pixels; scaled with the image size by default.
        draw_boxes: also draw each person's box.
        box_format: format of the boxes (``"xywh"`` / ``"xyxy"``) when a person dict does not say; the
            pipeline's dicts carry ``box_format``, post-processor dicts default to ``"xywh"``.

    Returns:
        A new RGB PIL image of the input's size.
    """
    if isinstance(score_threshold, bool) or not isinstance(score_threshold, (int, float)):
        raise ValueError(f"score_threshold must be a number, got {score_threshold!r}")
    if isinstance(people, dict):
        people = [people]
    if isinstance(people, (list, tuple)) and people and all(isinstance(p, (list, tuple)) for p in people):
        # the processor's per-image nesting, [[person, ...]] for one image
        if len(people) != 1:
            raise ValueError(
                f"people holds the results of {len(people)} images; draw one image at a time: draw(image, people[i])"
            )
        people = people[0]
    if not isinstance(people, (list, tuple)):
        raise TypeError(f"people must be a list of person dicts (one image's results), got {type(people).__name__}")
    canvas = _as_pil(image)
    side = min(canvas.size)
    radius = max(2, round(side / 128)) if radius is None else int(radius)
    thickness = max(2, round(side / 180)) if thickness is None else int(thickness)
    pen = PIL.ImageDraw.Draw(canvas)
    for n, person in enumerate(people):
        if not isinstance(person, dict):
            raise TypeError(f"people[{n}] must be a dict, got {type(person).__name__}")
        points, scores = person_arrays(person, f"people[{n}]")
        info = _resolve_info(person, dataset, len(points))
        palette = PALETTES.get(info["name"], _DEFAULT_PALETTE)
        groups = keypoint_groups(info)
        visible = np.isfinite(points).all(axis=1) & (scores >= score_threshold)
        if draw_boxes:
            box = person_box(person, box_format)
            if box is not None:
                pen.rectangle(box, outline=palette["box"], width=max(1, thickness // 2))
        for a, b in info["skeleton"]:
            if not (visible[a] and visible[b]):
                continue
            group = groups[a] if groups[a] == groups[b] else "center"
            colour = palette.get(group, palette["center"])
            pen.line([tuple(points[a]), tuple(points[b])], fill=colour, width=thickness)
        for i in np.flatnonzero(visible):
            x, y = points[i]
            colour = palette.get(groups[i], palette["center"])
            pen.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour, outline=(0, 0, 0))
    return canvas
