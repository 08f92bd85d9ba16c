"""Built-in metadata pinned to the official sources, quoted here.

Keypoint facts come from the official ViTPose dataset configs (github.com/ViTAE-Transformer/ViTPose,
configs/_base_/datasets/*.py, commit c050ed29); the model sizes from its model configs
(configs/body/2d_kpt_sview_rgb_img/topdown_heatmap/coco/ViTPose_{size}_coco_256x192.py and vitPose+_{size}_...py).
"""

from __future__ import annotations

import re

import pytest

from vitpose_hf.configuration_vitpose_hf import LAYER_DECAY, PRESET_SIZES, ViTPoseConfig
from vitpose_hf.keypoint_metadata import get_dataset_info, list_datasets

from official_names import AIC_NAMES, AP10K_NAMES, COCO_NAMES

# ---- OKS sigmas, quoted from each official file's `sigmas=[...]` ------------------------------------------------

# configs/_base_/datasets/coco.py (and ochuman.py, the same values)
COCO_SIGMAS = [
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
OFFICIAL_SIGMAS = {
    "coco": COCO_SIGMAS,
    "ochuman": COCO_SIGMAS,
    # configs/_base_/datasets/aic_info.py (and aic.py); the AIC evaluation's delta is 2 x sigma
    "aic": [
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
    ],
    # configs/_base_/datasets/ap10k_info.py (and ap10k.py, which the APT-36K configs use), AP-10K keypoint order
    "ap10k": [
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
    ],
    "apt36k": [
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
    ],
    # configs/_base_/datasets/crowdpose.py
    "crowdpose": [
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
    ],
    # configs/_base_/datasets/coco_wholebody_info.py (and coco_wholebody.py)
    "wholebody": [
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
        0.068,
        0.066,
        0.066,
        0.092,
        0.094,
        0.094,
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
        0.01,
        0.008,
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
        0.02,
        0.019,
        0.022,
        0.031,
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
        0.02,
        0.019,
        0.022,
        0.031,
    ],
}

# ---- keypoint names in the official spelling and order ---------------------------------------------------------

FINGER_NAMES = ("thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger")
FINGERS = [f"{f}{j}" for f in FINGER_NAMES for j in (1, 2, 3, 4)]
OFFICIAL_NAMES = {
    "coco": COCO_NAMES,
    "ochuman": COCO_NAMES,
    "aic": AIC_NAMES,
    "mpii": [
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
    ],
    "ap10k": AP10K_NAMES,
    "apt36k": AP10K_NAMES,
    "crowdpose": [
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
    ],
    "wholebody": COCO_NAMES
    + ["left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel"]
    + [f"face-{i}" for i in range(68)]
    + ["left_hand_root"]
    + [f"left_{f}" for f in FINGERS]
    + ["right_hand_root"]
    + [f"right_{f}" for f in FINGERS],
}

# coco_wholebody_info.py `swap` of the 68 face landmarks (face-i <-> face-j); the others have swap=''.
WHOLEBODY_FACE_SWAPS = [
    (0, 16),
    (1, 15),
    (2, 14),
    (3, 13),
    (4, 12),
    (5, 11),
    (6, 10),
    (7, 9),
    (17, 26),
    (18, 25),
    (19, 24),
    (20, 23),
    (21, 22),
    (31, 35),
    (32, 34),
    (36, 45),
    (37, 44),
    (38, 43),
    (39, 42),
    (40, 47),
    (41, 46),
    (48, 54),
    (49, 53),
    (50, 52),
    (55, 59),
    (56, 58),
    (60, 64),
    (61, 63),
    (65, 67),
]

# `skeleton_info` links of the files the shared annotation files do not already pin (names, official spelling).
OFFICIAL_LINKS = {
    "mpii": [  # mpii_info.py
        ("right_ankle", "right_knee"),
        ("right_knee", "right_hip"),
        ("right_hip", "pelvis"),
        ("pelvis", "left_hip"),
        ("left_hip", "left_knee"),
        ("left_knee", "left_ankle"),
        ("pelvis", "thorax"),
        ("thorax", "upper_neck"),
        ("upper_neck", "head_top"),
        ("upper_neck", "right_shoulder"),
        ("right_shoulder", "right_elbow"),
        ("right_elbow", "right_wrist"),
        ("upper_neck", "left_shoulder"),
        ("left_shoulder", "left_elbow"),
        ("left_elbow", "left_wrist"),
    ],
    "crowdpose": [  # crowdpose.py
        ("left_ankle", "left_knee"),
        ("left_knee", "left_hip"),
        ("right_ankle", "right_knee"),
        ("right_knee", "right_hip"),
        ("left_hip", "right_hip"),
        ("left_shoulder", "left_hip"),
        ("right_shoulder", "right_hip"),
        ("left_shoulder", "right_shoulder"),
        ("left_shoulder", "left_elbow"),
        ("right_shoulder", "right_elbow"),
        ("left_elbow", "left_wrist"),
        ("right_elbow", "right_wrist"),
        ("top_head", "neck"),
        ("right_shoulder", "neck"),
        ("left_shoulder", "neck"),
    ],
    "ap10k": [  # ap10k_info.py
        ("L_Eye", "R_Eye"),
        ("L_Eye", "Nose"),
        ("R_Eye", "Nose"),
        ("Nose", "Neck"),
        ("Neck", "Root of tail"),
        ("Neck", "L_Shoulder"),
        ("L_Shoulder", "L_Elbow"),
        ("L_Elbow", "L_F_Paw"),
        ("Neck", "R_Shoulder"),
        ("R_Shoulder", "R_Elbow"),
        ("R_Elbow", "R_F_Paw"),
        ("Root of tail", "L_Hip"),
        ("L_Hip", "L_Knee"),
        ("L_Knee", "L_B_Paw"),
        ("Root of tail", "R_Hip"),
        ("R_Hip", "R_Knee"),
        ("R_Knee", "R_B_Paw"),
    ],
    # coco_wholebody_info.py: COCO's 19 body links, ankle -> toes/heel, and each hand from its own hand root
    "wholebody": [
        ("left_ankle", "left_knee"),
        ("left_knee", "left_hip"),
        ("right_ankle", "right_knee"),
        ("right_knee", "right_hip"),
        ("left_hip", "right_hip"),
        ("left_shoulder", "left_hip"),
        ("right_shoulder", "right_hip"),
        ("left_shoulder", "right_shoulder"),
        ("left_shoulder", "left_elbow"),
        ("right_shoulder", "right_elbow"),
        ("left_elbow", "left_wrist"),
        ("right_elbow", "right_wrist"),
        ("left_eye", "right_eye"),
        ("nose", "left_eye"),
        ("nose", "right_eye"),
        ("left_eye", "left_ear"),
        ("right_eye", "right_ear"),
        ("left_ear", "left_shoulder"),
        ("right_ear", "right_shoulder"),
        ("left_ankle", "left_big_toe"),
        ("left_ankle", "left_small_toe"),
        ("left_ankle", "left_heel"),
        ("right_ankle", "right_big_toe"),
        ("right_ankle", "right_small_toe"),
        ("right_ankle", "right_heel"),
    ]
    + [
        (f"{side}_{a}", f"{side}_{b}")
        for side in ("left", "right")
        for finger in FINGER_NAMES
        for a, b in (
            ("hand_root", f"{finger}1"),
            (f"{finger}1", f"{finger}2"),
            (f"{finger}2", f"{finger}3"),
            (f"{finger}3", f"{finger}4"),
        )
    ],
}


def _official_spelling(name: str) -> str:
    """The AP-10K file's spelling in the annotation files' one (L_F_Paw -> left_front_paw, Root of tail -> ...)."""
    words = re.split(r"[ _]", name.lower())
    words = [{"l": "left", "r": "right", "f": "front", "b": "back"}.get(w, w) for w in words]
    return "_".join(words)


def _index(dataset: str) -> dict[str, int]:
    return {_official_spelling(n): i for i, n in enumerate(OFFICIAL_NAMES[dataset])}


def _mirror(name: str) -> str:
    """The official `swap` rule of the named keypoints: the same name with the other side."""
    for a, b in (("left_", "right_"), ("right_", "left_"), ("L_", "R_"), ("R_", "L_")):
        if name.startswith(a):
            return b + name[len(a) :]
    return ""


@pytest.mark.parametrize("dataset", sorted(OFFICIAL_NAMES))
def test_keypoint_order_is_the_official_one(dataset):
    ours = get_dataset_info(dataset)["keypoint_names"]
    assert ours == [_official_spelling(n) for n in OFFICIAL_NAMES[dataset]]


def test_every_builtin_dataset_is_pinned():
    assert set(list_datasets()) == set(OFFICIAL_NAMES)
    assert set(list_datasets()) - {"mpii"} == set(OFFICIAL_SIGMAS)


@pytest.mark.parametrize("dataset", sorted(OFFICIAL_SIGMAS))
def test_sigmas_are_the_official_ones(dataset):
    assert get_dataset_info(dataset)["sigmas"] == OFFICIAL_SIGMAS[dataset]


def test_ap10k_sigmas_follow_ap10k_order():
    # regression: a COCO-ordered copy gave e.g. L_Elbow 0.079 and R_Hip 0.087
    info = get_dataset_info("ap10k")
    sigma = dict(zip(info["keypoint_names"], info["sigmas"]))
    assert sigma["left_elbow"] == sigma["right_elbow"] == 0.072
    assert sigma["left_hip"] == sigma["right_hip"] == 0.107
    assert sigma["left_front_paw"] == sigma["right_front_paw"] == 0.062


def test_mpii_has_no_oks_sigmas():
    # mpii_info.py lists sigmas "adapted from COCO", but MPII is evaluated with PCKh and no official evaluation
    # uses them; we keep none so that OKS AP is never reported for MPII by accident.
    assert get_dataset_info("mpii")["sigmas"] is None


@pytest.mark.parametrize("dataset", sorted(OFFICIAL_NAMES))
def test_flip_pairs_are_the_official_swaps(dataset):
    names = OFFICIAL_NAMES[dataset]
    index = {n: i for i, n in enumerate(names)}
    expected = {frozenset((i, index[_mirror(n)])) for i, n in enumerate(names) if _mirror(n) in index}
    if dataset == "wholebody":
        expected |= {frozenset((23 + a, 23 + b)) for a, b in WHOLEBODY_FACE_SWAPS}
    ours = {frozenset(p) for p in get_dataset_info(dataset)["flip_pairs"]}
    assert ours == expected
    assert len(ours) == len(get_dataset_info(dataset)["flip_pairs"])


@pytest.mark.parametrize("dataset", sorted(OFFICIAL_LINKS))
def test_skeleton_is_the_official_one(dataset):
    index = _index(dataset)
    links = OFFICIAL_LINKS[dataset]
    expected = {frozenset((index[_official_spelling(a)], index[_official_spelling(b)])) for a, b in links}
    skeleton = get_dataset_info(dataset)["skeleton"]
    assert {frozenset(p) for p in skeleton} == expected
    assert len(skeleton) == len(links)


def test_wholebody_hands_hang_off_the_hand_roots():
    # regression: the hands were linked to the body wrists (9, 10) instead of the hand roots (91, 112)
    skeleton = {frozenset(p) for p in get_dataset_info("wholebody")["skeleton"]}
    for root, start in ((91, 92), (112, 113)):
        assert {frozenset((root, start + 4 * f)) for f in range(5)} <= skeleton
    assert not [sorted(p) for p in skeleton if p & {9, 10} and max(p) >= 91]


# ---- model sizes -----------------------------------------------------------------------------------------------

# ViTPose_{small,base,large,huge}_coco_256x192.py: embed_dim, depth, num_heads, drop_path_rate and the
# layer_decay_rate of the single-dataset configs and of the vitPose+ configs.
OFFICIAL_SIZES = {
    "s": (384, 12, 12, 0.1, 0.8, 0.8),
    "b": (768, 12, 12, 0.3, 0.75, 0.75),
    "l": (1024, 24, 16, 0.5, 0.8, 0.8),
    "h": (1280, 32, 16, 0.55, 0.85, 0.8),
}


def test_preset_table_is_the_official_one():
    assert list(PRESET_SIZES) == list(OFFICIAL_SIZES)
    for key, (width, depth, heads, drop_path, decay, decay_plus) in OFFICIAL_SIZES.items():
        p = PRESET_SIZES[key]
        assert (p.hidden_size, p.num_hidden_layers, p.num_attention_heads) == (width, depth, heads)
        assert (p.drop_path_rate, p.layer_decay, p.layer_decay_plus) == (drop_path, decay, decay_plus)
        assert (p.name(), p.name(plus=True)) == (f"ViTPose-{key.upper()}", f"ViTPose++-{key.upper()}")


def test_preset_readers_are_wired_to_the_table(monkeypatch):
    """Wiring test: presets, conversion, training and the model card all read PRESET_SIZES."""
    import dataclasses

    from vitpose_hf.configuration_vitpose_hf import HEADS_BY_WIDTH
    from vitpose_hf.training import train as train
    from vitpose_hf.training.model_card import describe_size

    for key, p in PRESET_SIZES.items():
        config = ViTPoseConfig.from_preset(f"vitpose-plus-{key}")
        assert describe_size(config) == p.name(plus=True)
        assert train.SIZES[(p.hidden_size, p.num_hidden_layers)] == key
        assert LAYER_DECAY[key] == (p.layer_decay, p.layer_decay_plus)
        assert HEADS_BY_WIDTH[p.hidden_size] == p.num_attention_heads
    # an edit of the table reaches from_preset
    monkeypatch.setitem(PRESET_SIZES, "b", dataclasses.replace(PRESET_SIZES["b"], drop_path_rate=0.25))
    assert ViTPoseConfig.from_preset("vitpose-b").drop_path_rate == 0.25
