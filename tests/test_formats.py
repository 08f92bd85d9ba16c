"""Interchange formats: COCO keypoint results (scored with pycocotools), OpenPose JSON and supervision KeyPoints,
on the shared COCO ground truth."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import PIL.Image
import pytest
import torch

from vitpose_hf import ViTPoseForPoseEstimation, ViTPoseImageProcessor
from vitpose_hf.inference.formats import (
    from_coco_results,
    from_openpose,
    read_openpose,
    to_coco_results,
    to_openpose,
    to_supervision,
    write_coco_results,
    write_openpose,
)
from vitpose_hf.keypoint_metadata import get_dataset_info

from helpers import tiny_config

COCO_NAMES = get_dataset_info("coco")["keypoint_names"]
# OpenPose's COCO body model output order, as its documentation lists it (output_format_coco)
OPENPOSE_COCO_DOC = [
    "Nose",
    "Neck",
    "RShoulder",
    "RElbow",
    "RWrist",
    "LShoulder",
    "LElbow",
    "LWrist",
    "RHip",
    "RKnee",
    "RAnkle",
    "LHip",
    "LKnee",
    "LAnkle",
    "REye",
    "LEye",
    "REar",
    "LEar",
]


@pytest.fixture(scope="module")
def coco_gt(shared_data):
    path = shared_data / "mmpose" / "coco" / "test_coco.json"
    return path, json.loads(path.read_text())


def gt_people(gt) -> dict[int, list[dict]]:
    """Our person dicts from the ground truth (score 1 where labelled, 0 elsewhere), with made-up track ids."""
    out: dict[int, list[dict]] = {im["id"]: [] for im in gt["images"]}
    for n, ann in enumerate(gt["annotations"]):
        if ann["num_keypoints"] == 0:
            continue
        kps = np.asarray(ann["keypoints"], dtype=np.float64).reshape(17, 3)
        out[ann["image_id"]].append(
            {
                "box": list(ann["bbox"]),
                "box_format": "xywh",
                "box_score": 1.0,
                "label": "person",
                "dataset": "coco",
                "track_id": 100 + n,
                "keypoints": [
                    {"name": name, "x": x, "y": y, "score": float(v > 0)} for name, (x, y, v) in zip(COCO_NAMES, kps)
                ],
            }
        )
    return out


def keypoints_of(person) -> np.ndarray:
    return np.array([[k["x"], k["y"], k["score"]] for k in person["keypoints"]])


# ----------------------------------------------------------------------------------------------------------------
# COCO results
# ----------------------------------------------------------------------------------------------------------------
def test_coco_results_from_ground_truth_score_ap_1_with_pycocotools(coco_gt, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    path, gt = coco_gt
    results_file = tmp_path / "results.json"
    entries = write_coco_results(results_file, gt_people(gt))
    assert len(entries) == sum(a["num_keypoints"] > 0 for a in gt["annotations"])
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
        evaluation = COCOeval(coco, coco.loadRes(str(results_file)), "keypoints")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)  # AP
    assert evaluation.stats[5] == pytest.approx(1.0)  # AR


def test_coco_results_round_trip(coco_gt):
    _, gt = coco_gt
    ours = gt_people(gt)
    entries = to_coco_results(ours, rescore=False)
    first = entries[0]
    assert set(first) == {"image_id", "category_id", "keypoints", "score", "bbox", "track_id"}
    back = from_coco_results(json.loads(json.dumps(entries)))
    assert sorted(back) == sorted(k for k, v in ours.items() if v)
    for image_id, people in back.items():
        assert len(people) == len(ours[image_id])
        for a, b in zip(people, ours[image_id]):
            np.testing.assert_allclose(keypoints_of(a), keypoints_of(b))
            assert a["box"] == pytest.approx(b["box"]) and a["track_id"] == b["track_id"]
            assert a["box_score"] == b["box_score"] and [k["name"] for k in a["keypoints"]] == COCO_NAMES


def test_coco_results_rescoring_follows_the_official_rule():
    scores = np.array([0.9, 0.1, 0.5, 0.3] + [0.15] * 13)
    person = {
        "box": [0, 0, 10, 10],
        "box_score": 0.8,
        "keypoints": [{"name": n, "x": 1.0, "y": 2.0, "score": float(s)} for n, s in zip(COCO_NAMES, scores)],
    }
    entry = to_coco_results({7: [person]})[0]
    assert entry["image_id"] == 7 and "track_id" not in entry
    assert entry["score"] == pytest.approx(0.8 * np.mean([0.9, 0.5, 0.3]))  # box score x mean of scores > 0.2


def test_coco_results_bad_input(tmp_path):
    with pytest.raises(ValueError, match="51"):
        from_coco_results([{"image_id": 1, "keypoints": [0.0] * 50, "score": 1.0}])
    with pytest.raises(ValueError, match="no COCO results file"):
        from_coco_results(tmp_path / "missing.json")
    with pytest.raises(TypeError, match="one list of people per image"):
        to_coco_results([{"keypoints": []}])
    assert to_coco_results({}) == [] and from_coco_results([]) == {}


# ----------------------------------------------------------------------------------------------------------------
# OpenPose
# ----------------------------------------------------------------------------------------------------------------
def test_openpose_coco18_layout_and_round_trip(coco_gt):
    _, gt = coco_gt
    people = [p for ps in gt_people(gt).values() for p in ps]
    document = to_openpose(people, canvas_size=(640, 480))
    assert document["canvas_width"] == 640 and len(document["people"]) == len(people)
    ours = {"Nose": "nose", "REye": "right_eye", "LEye": "left_eye", "REar": "right_ear", "LEar": "left_ear"}
    for side, word in (("R", "right"), ("L", "left")):
        for joint, name in (("Shoulder", "shoulder"), ("Elbow", "elbow"), ("Wrist", "wrist"), ("Hip", "hip")):
            ours[side + joint] = f"{word}_{name}"
        ours.update({side + "Knee": f"{word}_knee", side + "Ankle": f"{word}_ankle"})
    for person, entry in zip(people, document["people"]):
        assert entry["person_id"] == [person["track_id"]]
        flat = np.asarray(entry["pose_keypoints_2d"]).reshape(18, 3)
        points = {k["name"]: (k["x"], k["y"], k["score"]) for k in person["keypoints"]}
        for i, doc_name in enumerate(OPENPOSE_COCO_DOC):
            if doc_name == "Neck":
                ls, rs = np.array(points["left_shoulder"]), np.array(points["right_shoulder"])
                np.testing.assert_allclose(flat[i], [*((ls[:2] + rs[:2]) / 2), min(ls[2], rs[2])])
            else:
                np.testing.assert_allclose(flat[i], points[ours[doc_name]])
    back = from_openpose(json.loads(json.dumps(document)))
    for a, b in zip(back, people):
        np.testing.assert_allclose(keypoints_of(a), keypoints_of(b))
        assert a["track_id"] == b["track_id"]


def test_openpose_native_and_wholebody(shared_data):
    gt = json.loads((shared_data / "mmpose" / "coco" / "test_keypoint_partition_metric.json").read_text())
    names = get_dataset_info("wholebody")["keypoint_names"]
    ann = next(a for a in gt["annotations"] if a["num_keypoints"] > 0)
    kps = np.asarray(ann["keypoints"], dtype=np.float64).reshape(133, 3)
    person = {
        "dataset": "wholebody",
        "keypoints": [{"name": n, "x": x, "y": y, "score": float(v > 0)} for n, (x, y, v) in zip(names, kps)],
    }
    entry = to_openpose([person])["people"][0]
    assert entry["person_id"] == [-1]  # no track id: OpenPose's -1
    np.testing.assert_allclose(np.reshape(entry["hand_left_keypoints_2d"], (21, 3))[:, :2], kps[91:112, :2])
    np.testing.assert_allclose(np.reshape(entry["face_keypoints_2d"], (68, 3))[:, :2], kps[23:91, :2])
    native = to_openpose([person], layout="native")
    back = from_openpose(native, layout="native", dataset="wholebody")[0]
    np.testing.assert_allclose(keypoints_of(back)[:, :2], kps[:, :2])
    assert "track_id" not in back
    with pytest.raises(ValueError, match="layout='native'"):
        from_openpose(to_openpose([person]), dataset="wholebody")  # coco18 has no feet


def test_openpose_folder_round_trip(coco_gt, tmp_path):
    _, gt = coco_gt
    frames = [p for p in gt_people(gt).values()]
    paths = write_openpose(tmp_path, frames, stem="clip")
    assert [p.name for p in paths][:2] == ["clip_000000000000_keypoints.json", "clip_000000000001_keypoints.json"]
    back = read_openpose(tmp_path)
    assert sorted(back) == list(range(len(frames)))
    for i, people in enumerate(frames):
        assert [p["track_id"] for p in back[i]] == [p["track_id"] for p in people]
        for a, b in zip(back[i], people):
            np.testing.assert_allclose(keypoints_of(a), keypoints_of(b))


def test_openpose_bad_input(tmp_path):
    with pytest.raises(ValueError, match="54"):
        from_openpose({"people": [{"pose_keypoints_2d": [0.0] * 51}]})
    with pytest.raises(ValueError, match="'people' list"):
        from_openpose({"version": 1.3})
    with pytest.raises(ValueError, match="layout"):
        to_openpose([], layout="body25")
    with pytest.raises(ValueError, match="no OpenPose"):
        read_openpose(tmp_path)
    assert to_openpose([])["people"] == []


# ----------------------------------------------------------------------------------------------------------------
# supervision
# ----------------------------------------------------------------------------------------------------------------
def test_to_supervision_xy_and_confidence(coco_gt):
    sv = pytest.importorskip("supervision", reason="supervision is not installed (pip install supervision)")
    _, gt = coco_gt
    people = gt_people(gt)[785] + gt_people(gt)[40083]
    points = to_supervision(people)
    assert isinstance(points, sv.KeyPoints) and len(points) == len(people)
    expected = np.stack([keypoints_of(p) for p in people])
    np.testing.assert_allclose(points.xy, expected[..., :2], rtol=1e-6)
    np.testing.assert_allclose(points.keypoint_confidence, expected[..., 2])
    assert points.data["track_id"].tolist() == [p["track_id"] for p in people]
    np.testing.assert_allclose(points.detection_confidence, [1.0] * len(people))
    assert len(to_supervision([])) == 0


def test_processor_output_goes_into_supervision_from_transformers(shared_data):
    sv = pytest.importorskip("supervision", reason="supervision is not installed (pip install supervision)")
    torch.manual_seed(0)
    model = ViTPoseForPoseEstimation(tiny_config()).eval()
    processor = ViTPoseImageProcessor(size={"height": 64, "width": 48})
    image = PIL.Image.open(shared_data / "mmpose" / "coco" / "000000000785.jpg").convert("RGB")
    boxes = [[[281.0, 45.0, 219.0, 347.0], [10.0, 20.0, 100.0, 200.0]]]
    inputs = processor(image, boxes=boxes, return_tensors="pt")
    with torch.no_grad():
        outputs = model(inputs["pixel_values"])
    results = processor.post_process_pose_estimation(outputs, crop_metadata=inputs)
    points = sv.KeyPoints.from_transformers(results[0])
    assert len(points) == 2
    np.testing.assert_allclose(points.xy, torch.stack([r["keypoints"] for r in results[0]]).numpy(), rtol=1e-6)
    np.testing.assert_allclose(points.keypoint_confidence, torch.stack([r["scores"] for r in results[0]]).numpy())
