"""Drawing: links and keypoints land where the keypoints are, in the dataset's colours; thresholds; input kinds."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from vitpose_hf.inference.drawing import PALETTES, draw, keypoint_groups
from vitpose_hf.keypoint_metadata import get_dataset_info

COCO = get_dataset_info("coco")


def grey_image(width=200, height=160, value=40):
    return PIL.Image.new("RGB", (width, height), (value, value, value))


def coco_person(score=0.9, dataset="coco", box=(40.0, 20.0, 120.0, 130.0)):
    """A standing figure: points spread over the image, all with the same score."""
    points = {
        "nose": (100, 30),
        "left_eye": (105, 26),
        "right_eye": (95, 26),
        "left_ear": (110, 30),
        "right_ear": (90, 30),
        "left_shoulder": (125, 55),
        "right_shoulder": (75, 55),
        "left_elbow": (140, 85),
        "right_elbow": (60, 85),
        "left_wrist": (150, 115),
        "right_wrist": (50, 115),
        "left_hip": (115, 105),
        "right_hip": (85, 105),
        "left_knee": (118, 130),
        "right_knee": (82, 130),
        "left_ankle": (120, 148),
        "right_ankle": (80, 148),
    }
    return {
        "box": list(box),
        "box_format": "xywh",
        "dataset": dataset,
        "keypoints": [
            {"name": n, "x": float(points[n][0]), "y": float(points[n][1]), "score": score}
            for n in COCO["keypoint_names"]
        ],
    }


def pixel(image, xy):
    return image.getpixel((round(xy[0]), round(xy[1])))


def midpoint(person, a, b):
    kps = {k["name"]: (k["x"], k["y"]) for k in person["keypoints"]}
    (x1, y1), (x2, y2) = kps[a], kps[b]
    return (x1 + x2) / 2, (y1 + y2) / 2


def test_links_and_keypoints_are_drawn_in_the_dataset_colours():
    image = grey_image()
    person = coco_person()
    out = draw(image, [person], score_threshold=0.3, draw_boxes=False)
    assert out is not image and out.size == image.size and out.mode == "RGB"
    assert np.asarray(image).max() == 40  # the input is left alone
    palette = PALETTES["coco"]
    # a left-side link, a right-side link, a centre link (shoulder to shoulder), mid-way between keypoints
    assert pixel(out, midpoint(person, "left_elbow", "left_wrist")) == palette["left"]
    assert pixel(out, midpoint(person, "right_elbow", "right_wrist")) == palette["right"]
    assert pixel(out, midpoint(person, "left_shoulder", "right_shoulder")) == palette["center"]
    # along the whole link, pixels changed
    kps = {k["name"]: np.array([k["x"], k["y"]]) for k in person["keypoints"]}
    for t in np.linspace(0.1, 0.9, 9):
        xy = kps["left_hip"] * (1 - t) + kps["left_knee"] * t
        assert pixel(out, xy) != (40, 40, 40)
    # keypoints: filled discs of the side's colour
    assert pixel(out, kps["left_ankle"]) == palette["left"]
    assert pixel(out, kps["nose"]) == palette["center"]
    # far from the figure nothing changed
    assert pixel(out, (5, 155)) == (40, 40, 40)


def test_each_dataset_has_its_own_colours():
    person = coco_person()
    coco = draw(grey_image(), [person], draw_boxes=False)
    ochuman = draw(grey_image(), [{**person, "dataset": "ochuman"}], draw_boxes=False)  # same 17 keypoints
    xy = midpoint(person, "left_elbow", "left_wrist")
    assert pixel(coco, xy) == PALETTES["coco"]["left"]
    assert pixel(ochuman, xy) == PALETTES["ochuman"]["left"]
    assert PALETTES["coco"]["left"] != PALETTES["ochuman"]["left"]
    # the dataset argument wins over the person's entry
    forced = draw(grey_image(), [person], dataset="ochuman", draw_boxes=False)
    assert pixel(forced, xy) == PALETTES["ochuman"]["left"]


def test_score_threshold_hides_keypoints_and_their_links():
    image = grey_image()
    low = coco_person(score=0.1)
    unchanged = draw(image, [low], score_threshold=0.3, draw_boxes=False)
    assert np.array_equal(np.asarray(unchanged), np.asarray(image))
    shown = draw(image, [low], score_threshold=0.05, draw_boxes=False)
    assert not np.array_equal(np.asarray(shown), np.asarray(image))
    # one hidden endpoint removes the link
    person = coco_person()
    person["keypoints"][COCO["keypoint_names"].index("left_wrist")]["score"] = 0.0
    out = draw(image, [person], score_threshold=0.3, draw_boxes=False)
    assert pixel(out, midpoint(person, "left_elbow", "left_wrist")) == (40, 40, 40)


def test_box_is_drawn_in_its_format():
    person = coco_person(box=(30.0, 20.0, 100.0, 120.0))
    out = draw(grey_image(), [person], radius=1, thickness=2)
    assert pixel(out, (30, 80)) == PALETTES["coco"]["box"]  # left edge of the xywh box
    assert pixel(out, (130, 80)) == PALETTES["coco"]["box"]  # right edge at x + w
    xyxy = {**person, "box": [30.0, 20.0, 100.0, 120.0], "box_format": "xyxy"}
    out = draw(grey_image(), [xyxy], radius=1, thickness=2)
    assert pixel(out, (100, 70)) == PALETTES["coco"]["box"]  # right edge at x2


def test_post_processor_results_and_input_kinds(tmp_path):
    person = coco_person()
    points = torch.tensor([[k["x"], k["y"]] for k in person["keypoints"]])
    raw = {
        "keypoints": points,
        "scores": torch.full((17,), 0.9),
        "labels": COCO["keypoint_names"],
        "bbox": torch.tensor(person["box"]),
        "dataset": "coco",
    }
    expected = np.asarray(draw(grey_image(), [person]))
    assert np.array_equal(np.asarray(draw(grey_image(), [raw])), expected)
    # no dataset entry: 17 keypoints means COCO
    assert np.array_equal(np.asarray(draw(grey_image(), [{k: v for k, v in raw.items() if k != "dataset"}])), expected)
    array = np.full((160, 200, 3), 40, dtype=np.uint8)
    assert np.array_equal(np.asarray(draw(array, [person])), expected)
    assert np.array_equal(np.asarray(draw(torch.from_numpy(array).permute(2, 0, 1), [person])), expected)
    path = tmp_path / "grey.png"
    grey_image().save(path)
    assert np.array_equal(np.asarray(draw(path, [person])), expected)
    grey = grey_image().convert("L")
    assert draw(grey, [person]).mode == "RGB"
    assert draw(grey_image(), []).size == (200, 160)


def test_wholebody_parts_have_their_own_colours():
    info = get_dataset_info("wholebody")
    groups = keypoint_groups(info)
    assert groups[info["keypoint_names"].index("left_wrist")] == "left"
    assert groups[info["parts"]["face"][0]] == "face"
    assert groups[info["parts"]["left_hand"][0]] == "left_hand"
    rng = np.random.default_rng(0)
    people = [{"dataset": "wholebody", "keypoints": rng.uniform(10, 150, size=(133, 2)), "scores": np.ones(133)}]
    out = np.asarray(draw(grey_image(), people))
    colours = {tuple(c) for c in out.reshape(-1, 3)}
    palette = PALETTES["wholebody"]
    assert {palette["face"], palette["left_hand"], palette["right_hand"]} <= colours


def test_wholebody_hands_are_drawn_from_the_hand_roots():
    # regression: the fingers were linked to the body wrists (9, 10) instead of the hand roots (91, 112)
    info = get_dataset_info("wholebody")
    names = info["keypoint_names"]
    points = np.full((133, 2), 5.0)
    scores = np.zeros(133)
    placed = {
        "left_wrist": (30, 30),
        "left_hand_root": (100, 120),
        "left_thumb1": (170, 30),
        "right_wrist": (30, 150),
        "right_hand_root": (60, 90),
        "right_pinky_finger1": (170, 150),
    }
    for name, xy in placed.items():
        points[names.index(name)] = xy
        scores[names.index(name)] = 1.0
    out = draw(
        grey_image(200, 180),
        [{"keypoints": points, "scores": scores}],
        dataset="wholebody",
        score_threshold=0.5,
        draw_boxes=False,
        radius=2,
        thickness=3,
    )
    palette = PALETTES["wholebody"]
    assert pixel(out, (135, 75)) == palette["left_hand"]  # hand root -> thumb1
    assert pixel(out, (115, 120)) == palette["right_hand"]  # hand root -> pinky1
    assert pixel(out, (100, 30)) == (40, 40, 40)  # no wrist -> thumb1 link
    assert pixel(out, (100, 150)) == (40, 40, 40)  # no wrist -> pinky1 link


def test_bad_inputs():
    person = coco_person()
    with pytest.raises(ValueError, match="'aic' has 14 keypoints but the person has 17"):
        draw(grey_image(), [person], dataset="aic")
    with pytest.raises(ValueError, match="cannot tell the dataset"):
        draw(grey_image(), [{"keypoints": np.zeros((5, 2))}])
    with pytest.raises(ValueError, match="unknown keypoint dataset"):
        draw(grey_image(), [person], dataset="yoga")
    with pytest.raises(TypeError, match="list of person dicts"):
        draw(grey_image(), "person")
    with pytest.raises(ValueError, match="score_threshold"):
        draw(grey_image(), [person], score_threshold="high")
    with pytest.raises(ValueError, match="4 keypoints but 3 scores"):
        draw(
            grey_image(),
            [{"keypoints": np.zeros((4, 2)), "scores": [1, 1, 1]}],
            dataset={"name": "x", "keypoint_names": list("abcd")},
        )
    with pytest.raises(TypeError, match="unsupported image type"):
        draw(42, [person])
