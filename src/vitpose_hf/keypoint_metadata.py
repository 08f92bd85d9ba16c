"""Keypoint dataset definitions (names, flip pairs, skeletons, OKS sigmas) for ViTPose / ViTPose++.

Standard library only: this file is copied next to checkpoints for ``trust_remote_code``.

Every info dict is plain JSON (it is stored in ``config.json``) with the keys

- ``name``: str
- ``keypoint_names``: list[str] of length K
- ``flip_pairs``: list of [left, right] index pairs (0-based)
- ``skeleton``: list of [a, b] links to draw (0-based)
- ``sigmas``: list[float] of length K (per-keypoint OKS sigmas, COCO convention) or None
- ``upper_body_ids`` / ``lower_body_ids``: list[int] (half-body augmentation)
- ``detector_labels``: list[str], COCO detector classes that find this dataset's subjects
- ``use_udp``: bool, the official ViTPose evaluation setting for this dataset
- ``parts``: optional dict part name -> [start, end) index range
- ``num_keypoints``: int K (filled by :func:`validate_dataset_info`)

The facts (keypoint order, pairs, links, sigmas, upper/lower split) follow the official ViTPose
dataset configs (``configs/_base_/datasets/*.py``) and the datasets' own annotation files;
``tests/test_metadata_sources.py`` pins them to the official values.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from typing import Any

__all__ = [
    "KEYPOINT_DATASETS",
    "VITPOSE_PLUS_DATASETS",
    "builtin_dataset_name",
    "flip_indices",
    "get_dataset_info",
    "infer_flip_pairs",
    "list_datasets",
    "match_builtin_dataset",
    "normalize_keypoint_name",
    "validate_dataset_info",
]

# Order of the ViTPose++ expert heads (and MoE expert indices).
VITPOSE_PLUS_DATASETS: tuple[str, ...] = ("coco", "aic", "mpii", "ap10k", "apt36k", "wholebody")

_PERSON = ["person"]
# COCO classes that cover the AP-10K / APT-36K species in a top-down pipeline.
_COCO_ANIMALS = ["bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe"]


def _pairs(*pairs: tuple[int, int]) -> list[list[int]]:
    return [[int(a), int(b)] for a, b in pairs]


# --------------------------------------------------------------------------------------------
# COCO person (17): also the body part of COCO-WholeBody and the OCHuman layout.
# --------------------------------------------------------------------------------------------
_COCO_NAMES = [
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
]
_COCO_FLIP = _pairs((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
# Same 19 links as the COCO annotation "skeleton" (which is 1-based), here 0-based.
_COCO_SKELETON = _pairs(
    (15, 13),
    (13, 11),
    (16, 14),
    (14, 12),
    (11, 12),
    (5, 11),
    (6, 12),
    (5, 6),
    (5, 7),
    (6, 8),
    (7, 9),
    (8, 10),
    (1, 2),
    (0, 1),
    (0, 2),
    (1, 3),
    (2, 4),
    (3, 5),
    (4, 6),
)
# OKS sigmas of the COCO keypoint evaluation.
_COCO_SIGMAS = [
    0.026,
    0.025,
    0.025,
    0.035,
    0.035,
    0.079,
    0.079,
    0.072,
    0.072,
    0.062,
    0.062,
    0.107,
    0.107,
    0.087,
    0.087,
    0.089,
    0.089,
]
_COCO_UPPER = list(range(11))
_COCO_LOWER = list(range(11, 17))

# --------------------------------------------------------------------------------------------
# AI Challenger (14)
# --------------------------------------------------------------------------------------------
_AIC_NAMES = [
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "head_top",
    "neck",
]
_AIC_FLIP = _pairs((0, 3), (1, 4), (2, 5), (6, 9), (7, 10), (8, 11))
_AIC_SKELETON = _pairs(
    (2, 1),
    (1, 0),
    (0, 13),
    (13, 3),
    (3, 4),
    (4, 5),
    (8, 7),
    (7, 6),
    (6, 9),
    (9, 10),
    (10, 11),
    (12, 13),
    (0, 6),
    (3, 9),
)
# AIC's official evaluation uses delta = 2 * sigma; these are the sigma values.
_AIC_SIGMAS = [
    0.01388152,
    0.01515228,
    0.01057665,
    0.01417709,
    0.01497891,
    0.01402144,
    0.03909642,
    0.03686941,
    0.01981803,
    0.03843971,
    0.03412318,
    0.02415081,
    0.01291456,
    0.01236173,
]

# --------------------------------------------------------------------------------------------
# MPII (16): evaluated with PCKh. The official mpii_info.py lists sigmas "adapted from COCO" that no official
# evaluation uses; none are kept here, so OKS AP is not silently computed for MPII.
# --------------------------------------------------------------------------------------------
_MPII_NAMES = [
    "right_ankle",
    "right_knee",
    "right_hip",
    "left_hip",
    "left_knee",
    "left_ankle",
    "pelvis",
    "thorax",
    "upper_neck",
    "head_top",
    "right_wrist",
    "right_elbow",
    "right_shoulder",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
]
_MPII_FLIP = _pairs((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13))
_MPII_SKELETON = _pairs(
    (0, 1),
    (1, 2),
    (2, 6),
    (6, 3),
    (3, 4),
    (4, 5),
    (6, 7),
    (7, 8),
    (8, 9),
    (8, 12),
    (12, 11),
    (11, 10),
    (8, 13),
    (13, 14),
    (14, 15),
)

# --------------------------------------------------------------------------------------------
# AP-10K (17); APT-36K uses the same keypoint definition.  Names as in the AP-10K annotations.
# --------------------------------------------------------------------------------------------
_AP10K_NAMES = [
    "left_eye",
    "right_eye",
    "nose",
    "neck",
    "root_of_tail",
    "left_shoulder",
    "left_elbow",
    "left_front_paw",
    "right_shoulder",
    "right_elbow",
    "right_front_paw",
    "left_hip",
    "left_knee",
    "left_back_paw",
    "right_hip",
    "right_knee",
    "right_back_paw",
]
_AP10K_FLIP = _pairs((0, 1), (5, 8), (6, 9), (7, 10), (11, 14), (12, 15), (13, 16))
_AP10K_SKELETON = _pairs(
    (0, 1),
    (0, 2),
    (1, 2),
    (2, 3),
    (3, 4),
    (3, 5),
    (5, 6),
    (6, 7),
    (3, 8),
    (8, 9),
    (9, 10),
    (4, 11),
    (11, 12),
    (12, 13),
    (4, 14),
    (14, 15),
    (15, 16),
)
# As in the official ViTPose configs/_base_/datasets/ap10k.py, in AP-10K keypoint order (not COCO's).
_AP10K_SIGMAS = [
    0.025,
    0.025,
    0.026,
    0.035,
    0.035,
    0.079,
    0.072,
    0.062,
    0.079,
    0.072,
    0.062,
    0.107,
    0.087,
    0.089,
    0.107,
    0.087,
    0.089,
]
# The reference definition tags right_front_paw (10) as lower body; kept for parity.
_AP10K_UPPER = [0, 1, 2, 3, 5, 6, 7, 8, 9]
_AP10K_LOWER = [4, 10, 11, 12, 13, 14, 15, 16]

# --------------------------------------------------------------------------------------------
# CrowdPose (14)
# --------------------------------------------------------------------------------------------
_CROWDPOSE_NAMES = [
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
    "top_head",
    "neck",
]
_CROWDPOSE_FLIP = _pairs((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11))
_CROWDPOSE_SKELETON = _pairs(
    (10, 8),
    (8, 6),
    (11, 9),
    (9, 7),
    (6, 7),
    (0, 6),
    (1, 7),
    (0, 1),
    (0, 2),
    (1, 3),
    (2, 4),
    (3, 5),
    (12, 13),
    (1, 13),
    (0, 13),
)
_CROWDPOSE_SIGMAS = [
    0.079,
    0.079,
    0.072,
    0.072,
    0.062,
    0.062,
    0.107,
    0.107,
    0.087,
    0.087,
    0.089,
    0.089,
    0.079,
    0.079,
]

# --------------------------------------------------------------------------------------------
# COCO-WholeBody (133 = 17 body + 6 foot + 68 face + 21 left hand + 21 right hand)
# --------------------------------------------------------------------------------------------
_WB_PARTS = {
    "body": [0, 17],
    "foot": [17, 23],
    "face": [23, 91],
    "left_hand": [91, 112],
    "right_hand": [112, 133],
}
_FOOT_NAMES = ["left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel"]
_HAND_NAMES = ["hand_root"] + [
    f"{finger}{j}"
    for finger in ("thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger")
    for j in range(1, 5)
]
# Mirror partners of the 68-point face landmarks (0-based within the face part); the
# landmarks not listed lie on the face's vertical midline.
_FACE_MIRROR = [
    (0, 16),
    (1, 15),
    (2, 14),
    (3, 13),
    (4, 12),
    (5, 11),
    (6, 10),
    (7, 9),  # jaw line
    (17, 26),
    (18, 25),
    (19, 24),
    (20, 23),
    (21, 22),  # eyebrows
    (31, 35),
    (32, 34),  # nostrils
    (36, 45),
    (37, 44),
    (38, 43),
    (39, 42),
    (40, 47),
    (41, 46),  # eyes
    (48, 54),
    (49, 53),
    (50, 52),
    (55, 59),
    (56, 58),  # outer lips
    (60, 64),
    (61, 63),
    (65, 67),  # inner lips
]


def _build_wholebody() -> dict[str, Any]:
    foot0, face0 = _WB_PARTS["foot"][0], _WB_PARTS["face"][0]
    lh0, rh0 = _WB_PARTS["left_hand"][0], _WB_PARTS["right_hand"][0]
    names = (
        list(_COCO_NAMES)
        + _FOOT_NAMES
        + [f"face-{i}" for i in range(68)]
        + [f"left_{n}" for n in _HAND_NAMES]
        + [f"right_{n}" for n in _HAND_NAMES]
    )
    flip = (
        [list(p) for p in _COCO_FLIP]
        + [[foot0 + i, foot0 + 3 + i] for i in range(3)]
        + [[face0 + a, face0 + b] for a, b in _FACE_MIRROR]
        + [[lh0 + i, rh0 + i] for i in range(21)]
    )
    skeleton = [list(p) for p in _COCO_SKELETON]
    # Each ankle to its big toe, small toe and heel.
    for ankle, start in ((15, foot0), (16, foot0 + 3)):
        skeleton += [[ankle, start + i] for i in range(3)]
    # Each hand fans out from its own hand_root (91 / 112): root -> finger1 -> ... -> finger4, five fingers.
    # As in the official skeleton, no link joins a hand root to the body wrist.
    for root in (lh0, rh0):
        for finger in range(5):
            chain = [root] + [root + 1 + 4 * finger + j for j in range(4)]
            skeleton += [[a, b] for a, b in itertools.pairwise(chain)]
    sigmas = list(_COCO_SIGMAS) + [
        # foot
        0.068,
        0.066,
        0.066,
        0.092,
        0.094,
        0.094,
        # face (68)
        0.042,
        0.043,
        0.044,
        0.043,
        0.040,
        0.035,
        0.031,
        0.025,
        0.020,
        0.023,
        0.029,
        0.032,
        0.037,
        0.038,
        0.043,
        0.041,
        0.045,
        0.013,
        0.012,
        0.011,
        0.011,
        0.012,
        0.012,
        0.011,
        0.011,
        0.013,
        0.015,
        0.009,
        0.007,
        0.007,
        0.007,
        0.012,
        0.009,
        0.008,
        0.016,
        0.010,
        0.017,
        0.011,
        0.009,
        0.011,
        0.009,
        0.007,
        0.013,
        0.008,
        0.011,
        0.012,
        0.010,
        0.034,
        0.008,
        0.008,
        0.009,
        0.008,
        0.008,
        0.007,
        0.010,
        0.008,
        0.009,
        0.009,
        0.009,
        0.007,
        0.007,
        0.008,
        0.011,
        0.008,
        0.008,
        0.008,
        0.010,
        0.008,
    ]
    hand_sigmas = [
        0.029,
        0.022,
        0.035,
        0.037,
        0.047,
        0.026,
        0.025,
        0.024,
        0.035,
        0.018,
        0.024,
        0.022,
        0.026,
        0.017,
        0.021,
        0.021,
        0.032,
        0.020,
        0.019,
        0.022,
        0.031,
    ]
    sigmas += hand_sigmas + hand_sigmas  # the two hands share one sigma set
    return {
        "name": "wholebody",
        "keypoint_names": names,
        "flip_pairs": flip,
        "skeleton": skeleton,
        "sigmas": sigmas,
        # Body + feet split as in the reference definition; face and hands belong to neither.
        "upper_body_ids": list(_COCO_UPPER),
        "lower_body_ids": list(_COCO_LOWER) + list(range(foot0, face0)),
        "detector_labels": list(_PERSON),
        "use_udp": False,
        "parts": copy.deepcopy(_WB_PARTS),
    }


def _info(
    name: str,
    names: list[str],
    flip: list[list[int]],
    skeleton: list[list[int]],
    sigmas: list[float] | None,
    upper: list[int],
    lower: list[int],
    labels: list[str],
    use_udp: bool,
) -> dict[str, Any]:
    return {
        "name": name,
        "keypoint_names": list(names),
        "flip_pairs": copy.deepcopy(flip),
        "skeleton": copy.deepcopy(skeleton),
        "sigmas": None if sigmas is None else list(sigmas),
        "upper_body_ids": list(upper),
        "lower_body_ids": list(lower),
        "detector_labels": list(labels),
        "use_udp": use_udp,
    }


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
_KEY_ORDER = (
    "name",
    "num_keypoints",
    "keypoint_names",
    "flip_pairs",
    "skeleton",
    "sigmas",
    "upper_body_ids",
    "lower_body_ids",
    "detector_labels",
    "use_udp",
    "parts",
)
_DEFAULTS: dict[str, Any] = {
    "flip_pairs": [],
    "skeleton": [],
    "sigmas": None,
    "upper_body_ids": [],
    "lower_body_ids": [],
    "detector_labels": ["person"],
    "use_udp": False,
}


def _is_int(x: Any) -> bool:
    # bool is an int subclass but never a valid index.
    return isinstance(x, int) and not isinstance(x, bool)


def _check_index(value: Any, k: int, where: str) -> int:
    if not _is_int(value):
        raise ValueError(f"{where}: index {value!r} is not an int")
    if not 0 <= value < k:
        raise ValueError(f"{where}: index {value} out of range for {k} keypoints (valid 0..{k - 1})")
    return int(value)


def _check_pairs(value: Any, k: int, key: str) -> list[list[int]]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{key!r} must be a list of [a, b] index pairs, got {type(value).__name__}")
    out = []
    for n, pair in enumerate(value):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"{key}[{n}] must be a pair [a, b], got {pair!r}")
        a = _check_index(pair[0], k, f"{key}[{n}]")
        b = _check_index(pair[1], k, f"{key}[{n}]")
        if a == b:
            raise ValueError(f"{key}[{n}] = {list(pair)!r} links keypoint {a} to itself")
        out.append([a, b])
    return out


def _check_ids(value: Any, k: int, key: str) -> list[int]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{key!r} must be a list of keypoint indices, got {type(value).__name__}")
    out = [_check_index(v, k, key) for v in value]
    dup = sorted({i for i in out if out.count(i) > 1})
    if dup:
        raise ValueError(f"{key!r} lists indices more than once: {dup}")
    return out


def validate_dataset_info(info: dict) -> dict:
    """Check a (possibly user-defined) dataset info dict and return a normalised deep copy.

    Required keys: ``name`` and ``keypoint_names``. Missing optional keys get defaults
    (no flip pairs, no skeleton, ``sigmas=None``, ``detector_labels=["person"]``,
    ``use_udp=False``); ``num_keypoints`` is filled in. Extra keys are kept if JSON-serialisable.
    Raises ValueError naming the problem (TypeError if ``info`` is not a dict).
    """
    if not isinstance(info, dict):
        raise TypeError(f"dataset info must be a dict, got {type(info).__name__}")
    for key in ("name", "keypoint_names"):
        if key not in info:
            raise ValueError(f"dataset info is missing required key {key!r} (has: {sorted(info)})")

    name = info["name"]
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"'name' must be a non-empty string, got {name!r}")

    names = info["keypoint_names"]
    if not isinstance(names, (list, tuple)) or not names:
        raise ValueError(f"{name}: 'keypoint_names' must be a non-empty list of strings, got {names!r}")
    for n, kp in enumerate(names):
        if not isinstance(kp, str) or not kp:
            raise ValueError(f"{name}: keypoint_names[{n}] must be a non-empty string, got {kp!r}")
    dup_names = sorted({kp for kp in names if names.count(kp) > 1})
    if dup_names:
        raise ValueError(f"{name}: duplicate keypoint names {dup_names}")
    k = len(names)

    if "num_keypoints" in info and info["num_keypoints"] is not None:
        nk = info["num_keypoints"]
        if not _is_int(nk) or nk != k:
            raise ValueError(f"{name}: num_keypoints={nk!r} but keypoint_names has {k} entries")

    merged = {**copy.deepcopy(_DEFAULTS), **copy.deepcopy(info)}
    out: dict[str, Any] = {"name": name, "num_keypoints": k, "keypoint_names": list(names)}

    flip = _check_pairs(merged["flip_pairs"], k, f"{name}: flip_pairs")
    seen: dict[int, int] = {}
    for n, (a, b) in enumerate(flip):
        for i in (a, b):
            if i in seen:
                raise ValueError(
                    f"{name}: keypoint {i} ({names[i]!r}) appears in flip_pairs[{seen[i]}] and "
                    f"flip_pairs[{n}]; each keypoint may have at most one mirror partner"
                )
            seen[i] = n
    out["flip_pairs"] = flip

    skeleton = _check_pairs(merged["skeleton"], k, f"{name}: skeleton")
    links: dict[frozenset, int] = {}
    for n, (a, b) in enumerate(skeleton):
        link = frozenset((a, b))
        if link in links:
            raise ValueError(f"{name}: skeleton[{n}] = {[a, b]} duplicates skeleton[{links[link]}]")
        links[link] = n
    out["skeleton"] = skeleton

    sigmas = merged["sigmas"]
    if sigmas is not None:
        if not isinstance(sigmas, (list, tuple)):
            raise ValueError(f"{name}: 'sigmas' must be a list of floats or None, got {type(sigmas).__name__}")
        if len(sigmas) != k:
            raise ValueError(f"{name}: 'sigmas' has {len(sigmas)} values but there are {k} keypoints")
        clean = []
        for n, s in enumerate(sigmas):
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0:
                raise ValueError(f"{name}: sigmas[{n}] = {s!r} must be a finite positive number")
            clean.append(float(s))
        sigmas = clean
    out["sigmas"] = sigmas

    upper = _check_ids(merged["upper_body_ids"], k, f"{name}: upper_body_ids")
    lower = _check_ids(merged["lower_body_ids"], k, f"{name}: lower_body_ids")
    both = sorted(set(upper) & set(lower))
    if both:
        raise ValueError(f"{name}: keypoints {both} are in both upper_body_ids and lower_body_ids")
    out["upper_body_ids"] = upper
    out["lower_body_ids"] = lower

    labels = merged["detector_labels"]
    if not isinstance(labels, (list, tuple)) or not labels or not all(isinstance(s, str) and s for s in labels):
        raise ValueError(f"{name}: 'detector_labels' must be a non-empty list of strings, got {labels!r}")
    out["detector_labels"] = list(labels)

    use_udp = merged["use_udp"]
    if not isinstance(use_udp, bool):
        raise ValueError(f"{name}: 'use_udp' must be a bool, got {use_udp!r}")
    out["use_udp"] = use_udp

    parts = merged.get("parts")
    if parts is not None:
        if not isinstance(parts, dict) or not parts:
            raise ValueError(f"{name}: 'parts' must be a non-empty dict name -> [start, end], got {parts!r}")
        clean_parts: dict[str, list[int]] = {}
        for part, rng in parts.items():
            if not isinstance(part, str) or not part:
                raise ValueError(f"{name}: part name {part!r} must be a non-empty string")
            if (
                not isinstance(rng, (list, tuple))
                or len(rng) != 2
                or not all(_is_int(v) for v in rng)
                or not 0 <= rng[0] < rng[1] <= k
            ):
                raise ValueError(f"{name}: parts[{part!r}] = {rng!r} must be [start, end] with 0 <= start < end <= {k}")
            clean_parts[part] = [int(rng[0]), int(rng[1])]
        ordered = sorted(clean_parts.items(), key=lambda kv: kv[1][0])
        for (p1, r1), (p2, r2) in itertools.pairwise(ordered):
            if r2[0] < r1[1]:
                raise ValueError(f"{name}: parts {p1!r} {r1} and {p2!r} {r2} overlap")
        out["parts"] = clean_parts

    # Keep unknown keys (forward compatibility) but they must survive config.json.
    for key, value in merged.items():
        if key in _KEY_ORDER:
            continue
        if not isinstance(key, str):
            raise ValueError(f"{name}: dataset info keys must be strings, got {key!r}")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: value of extra key {key!r} is not JSON-serialisable: {exc}") from None
        out[key] = value
    return out


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
KEYPOINT_DATASETS: dict[str, dict] = {
    info["name"]: validate_dataset_info(info)
    for info in (
        _info("coco", _COCO_NAMES, _COCO_FLIP, _COCO_SKELETON, _COCO_SIGMAS, _COCO_UPPER, _COCO_LOWER, _PERSON, True),
        _info(
            "aic",
            _AIC_NAMES,
            _AIC_FLIP,
            _AIC_SKELETON,
            _AIC_SIGMAS,
            [0, 1, 2, 3, 4, 5, 12, 13],
            list(range(6, 12)),
            _PERSON,
            False,
        ),
        _info("mpii", _MPII_NAMES, _MPII_FLIP, _MPII_SKELETON, None, list(range(7, 16)), list(range(7)), _PERSON, True),
        _info(
            "ap10k",
            _AP10K_NAMES,
            _AP10K_FLIP,
            _AP10K_SKELETON,
            _AP10K_SIGMAS,
            _AP10K_UPPER,
            _AP10K_LOWER,
            _COCO_ANIMALS,
            False,
        ),
        _info(
            "apt36k",
            _AP10K_NAMES,
            _AP10K_FLIP,
            _AP10K_SKELETON,
            _AP10K_SIGMAS,
            _AP10K_UPPER,
            _AP10K_LOWER,
            _COCO_ANIMALS,
            False,
        ),
        _build_wholebody(),
        _info(
            "crowdpose",
            _CROWDPOSE_NAMES,
            _CROWDPOSE_FLIP,
            _CROWDPOSE_SKELETON,
            _CROWDPOSE_SIGMAS,
            [0, 1, 2, 3, 4, 5, 12, 13],
            list(range(6, 12)),
            _PERSON,
            False,
        ),
        _info(
            "ochuman", _COCO_NAMES, _COCO_FLIP, _COCO_SKELETON, _COCO_SIGMAS, _COCO_UPPER, _COCO_LOWER, _PERSON, False
        ),
    )
}

# Spellings accepted by get_dataset_info, compared after lower-casing and dropping "-", "_", " ".
_ALIASES = {
    "coco": "coco",
    "cocobody": "coco",
    "aic": "aic",
    "aichallenger": "aic",
    "mpii": "mpii",
    "ap10k": "ap10k",
    "apt36k": "apt36k",
    "wholebody": "wholebody",
    "cocowholebody": "wholebody",
    "crowdpose": "crowdpose",
    "ochuman": "ochuman",
}


def builtin_dataset_name(name: str) -> str | None:
    """The built-in dataset a name or alias means (any case, ``-``/``_``/spaces ignored), or None."""
    key = "".join(ch for ch in name.strip().lower() if ch not in "-_ ")
    return _ALIASES.get(key)


def list_datasets() -> list[str]:
    """Names of the built-in datasets (ViTPose++ heads first, in head order)."""
    return list(KEYPOINT_DATASETS)


def get_dataset_info(dataset: str | dict) -> dict:
    """Info dict for a built-in dataset name / alias (a deep copy), or a validated copy of a dict."""
    if isinstance(dataset, dict):
        return validate_dataset_info(dataset)
    if not isinstance(dataset, str):
        raise TypeError(f"dataset must be a name or an info dict, got {type(dataset).__name__}")
    canonical = builtin_dataset_name(dataset)
    if canonical is None:
        raise ValueError(
            f"unknown keypoint dataset {dataset!r}; known datasets: {', '.join(list_datasets())} "
            "(aliases: coco_wholebody, ap-10k, apt-36k, ai_challenger), or pass an info dict"
        )
    return copy.deepcopy(KEYPOINT_DATASETS[canonical])


def flip_indices(info: dict) -> list[int]:
    """Permutation ``p`` with ``p[i]`` = mirror partner of keypoint ``i`` (``i`` if unpaired).

    Flipping an image horizontally maps keypoint ``i`` to slot ``p[i]``; ``p`` is an involution.
    Also accepts a dataset name.
    """
    info = get_dataset_info(info)
    perm = list(range(info["num_keypoints"]))
    for a, b in info["flip_pairs"]:
        perm[a], perm[b] = b, a
    return perm


# --------------------------------------------------------------------------------------------
# Layouts from keypoint names alone (checkpoints that carry only names, e.g. transformers' id2label)
# --------------------------------------------------------------------------------------------
_WORD_SPLITS = (re.compile(r"([a-z0-9])([A-Z])"), re.compile(r"([A-Z])([A-Z][a-z])"))
# Single-letter words of the common spellings: L_Eye, R_F_Paw (right front paw), L_B_Paw ...
_SHORT_WORDS = {"l": "left", "r": "right", "f": "front", "b": "back"}
_MIRROR_WORDS = {"left": "right", "right": "left"}


def _words(name: str) -> list[str]:
    for pattern in _WORD_SPLITS:  # camelCase and "RShoulder" into words
        name = pattern.sub(r"\1_\2", name)
    return [_SHORT_WORDS.get(w, w) for w in re.split(r"[^a-z0-9]+", name.lower()) if w]


def normalize_keypoint_name(name: str) -> str:
    """Spelling-free form of a keypoint name: lower-case words joined by ``_``, with ``L``/``R``/``F``/``B``
    spelled out. ``"L_Eye"``, ``"LeftEye"`` and ``"left eye"`` all give ``"left_eye"``."""
    return "_".join(_words(name))


def match_builtin_dataset(keypoint_names: list[str]) -> str | None:
    """Name of the first built-in dataset whose keypoints are ``keypoint_names`` in order (any spelling), or None.

    COCO and OCHuman share their names (as do AP-10K and APT-36K); the first in registry order wins.
    """
    wanted = [normalize_keypoint_name(n) for n in keypoint_names]
    for name, info in KEYPOINT_DATASETS.items():
        if [normalize_keypoint_name(n) for n in info["keypoint_names"]] == wanted:
            return name
    return None


def infer_flip_pairs(keypoint_names: list[str]) -> list[list[int]]:
    """Mirror pairs found from the names: a name with the word left/right (or L/R) and its partner with the
    other side, e.g. ``left_eye``/``right_eye``, ``L_F_Paw``/``R_F_Paw``, ``wing_l``/``wing_r``.

    Names that appear twice after normalising pair with nothing. Returns ``[a, b]`` pairs with ``a < b``.
    """
    words = [_words(n) for n in keypoint_names]
    keys = ["_".join(w) for w in words]
    index = {key: i for i, key in enumerate(keys) if keys.count(key) == 1}
    pairs = []
    for i, w in enumerate(words):
        if not any(x in _MIRROR_WORDS for x in w):
            continue
        j = index.get("_".join(_MIRROR_WORDS.get(x, x) for x in w))
        if j is not None and i < j and keys[i] in index:
            pairs.append([i, j])
    return pairs
