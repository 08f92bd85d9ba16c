import copy
import json
import re

import numpy as np
import pytest

from vitpose_hf.keypoint_metadata import (
    KEYPOINT_DATASETS,
    VITPOSE_PLUS_DATASETS,
    flip_indices,
    get_dataset_info,
    list_datasets,
    validate_dataset_info,
)

EXPECTED_K = {
    "coco": 17,
    "aic": 14,
    "mpii": 16,
    "ap10k": 17,
    "apt36k": 17,
    "wholebody": 133,
    "crowdpose": 14,
    "ochuman": 17,
}


def _load(shared_data, rel):
    with open(shared_data / rel) as f:
        return json.load(f)


def _norm(name: str) -> str:
    return name.strip().lower().replace(" ", "_")


def _category_links(category) -> set:
    # COCO-format skeletons are 1-based; compare as undirected 0-based links.
    return {frozenset((a - 1, b - 1)) for a, b in category["skeleton"]}


def _links(info) -> set:
    return {frozenset(p) for p in info["skeleton"]}


def _mirror_name(name: str) -> str:
    swaps = {"left": "right", "right": "left", "l": "r", "r": "l"}
    return re.sub(r"(?<![a-z])(left|right|l|r)(?=_)", lambda m: swaps[m.group(1)], name.lower())


# ----------------------------------------------------------------------------- registry / API


def test_registry_contents():
    assert VITPOSE_PLUS_DATASETS == ("coco", "aic", "mpii", "ap10k", "apt36k", "wholebody")
    assert set(list_datasets()) == set(EXPECTED_K)
    assert list_datasets()[:6] == list(VITPOSE_PLUS_DATASETS)
    for name, k in EXPECTED_K.items():
        info = KEYPOINT_DATASETS[name]
        assert info["name"] == name
        assert info["num_keypoints"] == k == len(info["keypoint_names"])


@pytest.mark.parametrize("name", sorted(EXPECTED_K))
def test_builtin_validates_and_is_json(name):
    info = get_dataset_info(name)
    assert validate_dataset_info(info) == info
    assert json.loads(json.dumps(info, allow_nan=False)) == info
    # A round-tripped dict (as read back from config.json) is accepted as is.
    assert get_dataset_info(json.loads(json.dumps(info))) == info
    for key in (
        "keypoint_names",
        "flip_pairs",
        "skeleton",
        "upper_body_ids",
        "lower_body_ids",
        "detector_labels",
        "use_udp",
        "sigmas",
        "num_keypoints",
    ):
        assert key in info


@pytest.mark.parametrize("name", sorted(EXPECTED_K))
def test_flip_indices_is_involution_matching_pairs(name):
    info = get_dataset_info(name)
    perm = flip_indices(info)
    k = info["num_keypoints"]
    assert sorted(perm) == list(range(k))
    assert [perm[p] for p in perm] == list(range(k))
    paired = {i for pair in info["flip_pairs"] for i in pair}
    for i in range(k):
        assert (perm[i] != i) == (i in paired)
    # Flipping twice with numpy fancy indexing is the identity.
    x = np.arange(k)
    np.testing.assert_array_equal(x[perm][perm], x)


@pytest.mark.parametrize("name", sorted(EXPECTED_K))
def test_flip_pairs_swap_left_right_names(name):
    info = get_dataset_info(name)
    names = info["keypoint_names"]
    perm = flip_indices(info)
    for i, n in enumerate(names):
        if name == "wholebody" and n.startswith("face-"):
            continue  # 68 numbered landmarks, checked separately
        mirrored = _mirror_name(n)
        if mirrored == n.lower():
            assert perm[i] == i, f"{n} has no side but is paired with {names[perm[i]]}"
        else:
            assert names[perm[i]].lower() == mirrored, f"{n} paired with {names[perm[i]]}"


def test_wholebody_face_mirror_is_68_landmark_layout():
    info = get_dataset_info("wholebody")
    perm = flip_indices(info)
    face = [perm[23 + i] - 23 for i in range(68)]
    assert all(0 <= j < 68 for j in face)
    # Jaw line 0..16 reverses; midline points (chin, nose bridge, lip centres) stay.
    assert face[:17] == list(range(16, -1, -1))
    assert [i for i in range(68) if face[i] == i] == [8, 27, 28, 29, 30, 33, 51, 57, 62, 66]
    assert face[36] == 45 and face[39] == 42 and face[48] == 54 and face[60] == 64


def test_upper_lower_and_use_udp_and_detectors():
    for name in EXPECTED_K:
        info = get_dataset_info(name)
        assert not set(info["upper_body_ids"]) & set(info["lower_body_ids"])
        assert info["upper_body_ids"] and info["lower_body_ids"]
    udp = {n: get_dataset_info(n)["use_udp"] for n in EXPECTED_K}
    assert udp == {
        "coco": True,
        "mpii": True,
        "aic": False,
        "ap10k": False,
        "apt36k": False,
        "wholebody": False,
        "crowdpose": False,
        "ochuman": False,
    }
    animals = {"bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe"}
    for n in EXPECTED_K:
        labels = get_dataset_info(n)["detector_labels"]
        assert set(labels) == (animals if n in ("ap10k", "apt36k") else {"person"})
    coco = get_dataset_info("coco")
    names = coco["keypoint_names"]
    assert all(names[i].endswith(("hip", "knee", "ankle")) for i in coco["lower_body_ids"])
    assert sorted(coco["upper_body_ids"] + coco["lower_body_ids"]) == list(range(17))


# ----------------------------------------------------------------------------- aliases / errors


@pytest.mark.parametrize(
    "alias, name",
    [
        ("COCO", "coco"),
        ("coco_wholebody", "wholebody"),
        ("COCO-WholeBody", "wholebody"),
        ("ap-10k", "ap10k"),
        ("AP10K", "ap10k"),
        ("apt-36k", "apt36k"),
        ("ai_challenger", "aic"),
        ("CrowdPose", "crowdpose"),
        (" mpii ", "mpii"),
        ("OCHuman", "ochuman"),
    ],
)
def test_aliases(alias, name):
    assert get_dataset_info(alias) == KEYPOINT_DATASETS[name]


def test_get_returns_deep_copy():
    info = get_dataset_info("coco")
    info["keypoint_names"][0] = "changed"
    info["flip_pairs"].append([0, 1])
    assert KEYPOINT_DATASETS["coco"]["keypoint_names"][0] == "nose"
    assert get_dataset_info("coco")["flip_pairs"] == KEYPOINT_DATASETS["coco"]["flip_pairs"]


def test_unknown_name_lists_known():
    with pytest.raises(ValueError) as exc:
        get_dataset_info("cocoo")
    msg = str(exc.value)
    assert "'cocoo'" in msg
    for name in EXPECTED_K:
        assert name in msg
    with pytest.raises(TypeError):
        get_dataset_info(3)


def _user():
    return {"name": "tri", "keypoint_names": ["left_a", "right_a", "mid"]}


def test_user_dataset_defaults_filled():
    info = validate_dataset_info(_user())
    assert info == {
        "name": "tri",
        "num_keypoints": 3,
        "keypoint_names": ["left_a", "right_a", "mid"],
        "flip_pairs": [],
        "skeleton": [],
        "sigmas": None,
        "upper_body_ids": [],
        "lower_body_ids": [],
        "detector_labels": ["person"],
        "use_udp": False,
    }
    full = validate_dataset_info(
        {
            **_user(),
            "flip_pairs": [(0, 1)],
            "skeleton": [(0, 2), (1, 2)],
            "sigmas": [0.1, 0.1, 1],
            "parts": {"all": (0, 3)},
            "extra": {"a": 1},
        }
    )
    assert full["flip_pairs"] == [[0, 1]] and full["sigmas"] == [0.1, 0.1, 1.0]
    assert full["parts"] == {"all": [0, 3]} and full["extra"] == {"a": 1}
    assert flip_indices(full) == [1, 0, 2]
    json.dumps(full)


@pytest.mark.parametrize(
    "patch, fragment",
    [
        ({"keypoint_names": None}, "keypoint_names"),
        ({"keypoint_names": ["a", "a", "b"]}, "duplicate keypoint names"),
        ({"name": ""}, "name"),
        ({"num_keypoints": 4}, "num_keypoints=4"),
        ({"flip_pairs": [[0, 3]]}, "out of range"),
        ({"flip_pairs": [[0, -1]]}, "out of range"),
        ({"flip_pairs": [[0, 1], [1, 0]]}, "at most one mirror partner"),
        ({"flip_pairs": [[0, 1], [0, 2]]}, "at most one mirror partner"),
        ({"flip_pairs": [[1, 1]]}, "itself"),
        ({"flip_pairs": [[0, 1, 2]]}, "pair"),
        ({"flip_pairs": [[0.0, 1]]}, "not an int"),
        ({"flip_pairs": [[True, 1]]}, "not an int"),
        ({"skeleton": [[0, 5]]}, "out of range"),
        ({"skeleton": [[0, 1], [1, 0]]}, "duplicates"),
        ({"sigmas": [0.1, 0.1]}, "2 values but there are 3"),
        ({"sigmas": [0.1, 0.1, -0.1]}, "sigmas[2]"),
        ({"sigmas": [0.1, 0.1, float("nan")]}, "sigmas[2]"),
        ({"upper_body_ids": [0], "lower_body_ids": [0, 1]}, "both"),
        ({"upper_body_ids": [0, 0]}, "more than once"),
        ({"detector_labels": []}, "detector_labels"),
        ({"use_udp": "yes"}, "use_udp"),
        ({"parts": {"a": [0, 4]}}, "parts['a']"),
        ({"parts": {"a": [0, 2], "b": [1, 3]}}, "overlap"),
        ({"extra": {1, 2}}, "JSON"),
    ],
)
def test_malformed_user_dataset(patch, fragment):
    bad = {**_user(), **patch}
    with pytest.raises(ValueError) as exc:
        validate_dataset_info(bad)
    assert fragment in str(exc.value)
    with pytest.raises(ValueError):
        get_dataset_info(bad)


def test_missing_required_key_and_type():
    with pytest.raises(ValueError, match="keypoint_names"):
        validate_dataset_info({"name": "x"})
    with pytest.raises(ValueError, match="'name'"):
        validate_dataset_info({"keypoint_names": ["a"]})
    with pytest.raises(TypeError):
        validate_dataset_info([("name", "x")])


def test_validate_does_not_mutate_input():
    user = {**_user(), "flip_pairs": [(0, 1)]}
    before = copy.deepcopy(user)
    validate_dataset_info(user)
    assert user == before


# ----------------------------------------------------------------------------- facts vs references


def test_coco_sigmas_match_cocoeval():
    from pycocotools.cocoeval import Params

    ref = Params(iouType="keypoints").kpt_oks_sigmas
    for name in ("coco", "ochuman"):
        np.testing.assert_allclose(get_dataset_info(name)["sigmas"], ref, atol=1e-12)


def test_coco_sigmas_match_xtcocotools_default():
    try:
        from xtcocotools.cocoeval import COCOeval
    except (ImportError, ValueError) as exc:  # ValueError: binary built against another numpy
        pytest.skip(f"xtcocotools unusable here: {exc}")
    ref = COCOeval(iouType="keypoints").sigmas
    np.testing.assert_allclose(get_dataset_info("coco")["sigmas"], ref, atol=1e-12)


def test_sigmas_are_mirror_symmetric_where_expected():
    # The official AP-10K sigmas are symmetric in AP-10K order; the old COCO-ordered copy was not.
    for name in ("coco", "ochuman", "crowdpose", "ap10k", "apt36k"):
        info = get_dataset_info(name)
        perm = flip_indices(info)
        s = np.asarray(info["sigmas"])
        np.testing.assert_allclose(s, s[perm])
    wb = get_dataset_info("wholebody")
    s = wb["sigmas"]
    assert s[91:112] == s[112:133]
    assert s[:17] == get_dataset_info("coco")["sigmas"]
    assert get_dataset_info("mpii")["sigmas"] is None
    assert get_dataset_info("apt36k")["sigmas"] == get_dataset_info("ap10k")["sigmas"]


@pytest.mark.parametrize(
    "name, rel",
    [
        ("coco", "mmpose/coco/test_coco.json"),
        ("coco", "super-gradients/pose_minicoco/annotations/person_keypoints_val2017.json"),
        ("ochuman", "mmpose/ochuman/test_ochuman.json"),
        ("aic", "mmpose/aic/test_aic.json"),
    ],
)
def test_names_and_skeleton_match_annotations(shared_data, name, rel):
    (cat,) = _load(shared_data, rel)["categories"]
    info = get_dataset_info(name)
    assert [_norm(n) for n in cat["keypoints"]] == info["keypoint_names"]
    assert _category_links(cat) == _links(info)
    assert len(cat["skeleton"]) == len(info["skeleton"])


def test_ap10k_matches_every_category(shared_data):
    cats = _load(shared_data, "mmpose/ap10k/test_ap10k.json")["categories"]
    assert len(cats) > 10
    for name in ("ap10k", "apt36k"):
        info = get_dataset_info(name)
        for cat in cats:
            assert cat["keypoints"] == info["keypoint_names"], cat["name"]
            assert _category_links(cat) == _links(info), cat["name"]


def test_crowdpose_names_match_annotations(shared_data):
    info = get_dataset_info("crowdpose")
    for rel in ("mmpose/crowdpose/test_crowdpose.json", "xtcocoapi/annotations/example_crowdpose_val.json"):
        (cat,) = _load(shared_data, rel)["categories"]
        # The files call the head keypoint "head"; the model definition calls it "top_head".
        names = ["top_head" if n == "head" else n for n in cat["keypoints"]]
        assert names == info["keypoint_names"]
        # Their "skeleton" is COCO's (indices up to 17 for 14 keypoints), so it is not a reference.
        assert max(max(p) for p in cat["skeleton"]) > info["num_keypoints"]
        anns = _load(shared_data, rel)["annotations"]
        assert all(len(a["keypoints"]) == 3 * info["num_keypoints"] for a in anns)


def test_mpii_order_against_real_joints(shared_data):
    info = get_dataset_info("mpii")
    idx = {n: i for i, n in enumerate(info["keypoint_names"])}
    samples = _load(shared_data, "mmpose/mpii/test_mpii.json")
    assert samples
    for s in samples:
        assert len(s["joints"]) == len(s["joints_vis"]) == 16
        y = [p[1] for p in s["joints"]]
        # Upright people: head top above neck above thorax above pelvis.
        assert y[idx["head_top"]] < y[idx["upper_neck"]] < y[idx["thorax"]] < y[idx["pelvis"]]
        for side in ("left", "right"):
            a, k = idx[f"{side}_ankle"], idx[f"{side}_knee"]
            if s["joints_vis"][a] and s["joints_vis"][k]:
                assert y[a] > y[k]


def test_wholebody_parts_and_real_annotations(shared_data):
    info = get_dataset_info("wholebody")
    parts = info["parts"]
    assert parts == {
        "body": [0, 17],
        "foot": [17, 23],
        "face": [23, 91],
        "left_hand": [91, 112],
        "right_hand": [112, 133],
    }
    covered = sorted(i for s, e in parts.values() for i in range(s, e))
    assert covered == list(range(133))
    assert info["keypoint_names"][:17] == get_dataset_info("coco")["keypoint_names"]
    coco_links = _links(get_dataset_info("coco"))
    assert coco_links <= _links(info)

    data = _load(shared_data, "mmpose/coco/test_coco_wholebody.json")
    (cat,) = data["categories"]
    assert [_norm(n) for n in cat["keypoints"]] == info["keypoint_names"][:17]
    fields = {
        "keypoints": "body",
        "foot_kpts": "foot",
        "face_kpts": "face",
        "lefthand_kpts": "left_hand",
        "righthand_kpts": "right_hand",
    }
    names = info["keypoint_names"]
    checked = 0
    for ann in data["annotations"]:
        for field, part in fields.items():
            s, e = parts[part]
            assert len(ann[field]) == 3 * (e - s), field
        kp = np.asarray(ann["keypoints"], float).reshape(17, 3)
        # A labelled hand lies nearer its own wrist than the other one (left/right part order).
        for field, own, other in (("lefthand_kpts", 9, 10), ("righthand_kpts", 10, 9)):
            hand = np.asarray(ann[field], float).reshape(21, 3)
            if hand[0, 2] > 0 and kp[own, 2] > 0 and kp[other, 2] > 0:
                d_own = np.linalg.norm(hand[0, :2] - kp[own, :2])
                d_other = np.linalg.norm(hand[0, :2] - kp[other, :2])
                assert d_own < d_other, (ann["id"], field)
                checked += 1
    assert checked >= 3
    # Concatenated 133-keypoint file.
    part_file = shared_data / "mmpose/coco/test_keypoint_partition_metric.json"
    if part_file.exists():
        anns = _load(shared_data, "mmpose/coco/test_keypoint_partition_metric.json")["annotations"]
        assert all(len(a["keypoints"]) == 3 * 133 for a in anns)
    # Each hand fans out from its own hand root (official skeleton), never from a body wrist.
    assert {frozenset((91, 92)), frozenset((112, 113))} <= _links(info)
    assert not any(link & {9, 10} and link & set(range(91, 133)) for link in _links(info))
    assert names[91] == "left_hand_root" and names[112] == "right_hand_root"
    assert names[17:23] == [
        "left_big_toe",
        "left_small_toe",
        "left_heel",
        "right_big_toe",
        "right_small_toe",
        "right_heel",
    ]


def test_skeletons_are_connected_where_expected():
    # Every keypoint (except the WholeBody face, which has no links) is drawn.
    for name in EXPECTED_K:
        info = get_dataset_info(name)
        used = {i for p in info["skeleton"] for i in p}
        unused = set(range(info["num_keypoints"])) - used
        if name == "wholebody":
            assert unused == set(range(23, 91))
        else:
            assert not unused, (name, unused)


# ----------------------------------------------------------------------------- dataset names as given

ROBOT = {"name": "MyRobot", "keypoint_names": ["left_gripper", "right_gripper", "base"], "flip_pairs": [[0, 1]]}


def test_custom_dataset_name_keeps_its_case(tmp_path):
    # regression: dataset_to_index lower-cased the name, so "MyRobot" could not be selected
    import torch

    from vitpose_hf import ViTPoseConfig, ViTPoseForPoseEstimation

    from helpers import TINY

    assert get_dataset_info(ROBOT)["name"] == "MyRobot"
    config = ViTPoseConfig(datasets=["coco", ROBOT], **TINY)
    assert config.dataset_names == ["coco", "MyRobot"]
    assert config.dataset_to_index("MyRobot") == 1
    assert config.dataset_to_index("myrobot") == config.dataset_to_index("MYROBOT") == 1  # one match ignoring case
    assert config.dataset_to_index("COCO") == 0
    config.save_pretrained(tmp_path)
    again = ViTPoseConfig.from_pretrained(tmp_path)
    assert again.dataset_names == ["coco", "MyRobot"] and again.dataset_to_index("MyRobot") == 1

    model = ViTPoseForPoseEstimation(config).eval()
    x = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        by_name = model(x, dataset_index="MyRobot").heatmaps
        by_index = model(x, dataset_index=1).heatmaps
    assert by_name.shape[1] == 3
    torch.testing.assert_close(by_name, by_index, rtol=0, atol=0)


def test_dataset_names_differing_only_in_case_need_the_exact_name():
    from vitpose_hf import ViTPoseConfig

    from helpers import TINY

    config = ViTPoseConfig(datasets=[ROBOT, {**ROBOT, "name": "myrobot"}], **TINY)
    assert config.dataset_to_index("MyRobot") == 0
    assert config.dataset_to_index("myrobot") == 1
    with pytest.raises(ValueError, match=r"MYROBOT.*\['MyRobot', 'myrobot'\]"):
        config.dataset_to_index("MYROBOT")
    with pytest.raises(ValueError, match="unknown dataset 'robot'.*MyRobot"):
        config.dataset_to_index("robot")


def test_builtin_aliases_still_select_heads():
    from vitpose_hf import ViTPoseConfig

    from helpers import TINY

    config = ViTPoseConfig(datasets=["coco", "aic", "wholebody", "ap10k"], **TINY)
    assert config.dataset_to_index("coco_wholebody") == config.dataset_to_index("COCO-WholeBody") == 2
    assert config.dataset_to_index("AI_Challenger") == 1
    assert config.dataset_to_index("AP-10K") == 3
    with pytest.raises(ValueError, match="unknown dataset 'apt36k'"):  # a built-in name this checkpoint lacks
        config.dataset_to_index("apt36k")
    with pytest.raises(ValueError, match="out of range"):
        config.dataset_to_index(4)
