"""`vitpose-hf predict`: PNG and JSON outputs on real images, the boxes-file formats, folders, videos, the bundled
sample, the detector flag, an unreachable Hub, and bad inputs."""

from __future__ import annotations

import json
import sys

import numpy as np
import PIL.Image
import pytest
from test_pipeline import tiny_detector, tiny_pose_model  # tiny checkpoint builders shared with the pipeline tests

from vitpose_hf.cli import main
from vitpose_hf.cli.predict import SAMPLE_IMAGE
from vitpose_hf.image_processing_vitpose_hf import ViTPoseImageProcessor
from vitpose_hf.keypoint_metadata import get_dataset_info

COCO_SKELETON = get_dataset_info("coco")["skeleton"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli_pose")
    tiny_pose_model().save_pretrained(path)
    ViTPoseImageProcessor(size={"height": 64, "width": 48}).save_pretrained(path)  # the default UDP + DARK
    return str(path)


@pytest.fixture(scope="module")
def plus_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli_plus")
    tiny_pose_model(plus=True).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli_detr")
    model, processor = tiny_detector()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def coco_dir(shared_data):
    return shared_data / "mmpose" / "coco"


def predict(*args: str) -> int:
    return main(["predict", "--no-progress", *args])


def changed_along_links(original: np.ndarray, drawn: np.ndarray, person: dict, threshold: float) -> tuple[int, int]:
    """(changed, sampled) pixels at the inner points of the skeleton links the drawing should show."""
    height, width = original.shape[:2]
    points = np.array([[k["x"], k["y"]] for k in person["keypoints"]])
    scores = np.array([k["score"] for k in person["keypoints"]])
    changed = sampled = 0
    for a, b in COCO_SKELETON:
        if scores[a] < threshold or scores[b] < threshold or np.linalg.norm(points[a] - points[b]) < 20:
            continue
        for t in np.linspace(0.3, 0.7, 5):  # away from the keypoint discs
            x, y = np.rint(points[a] * (1 - t) + points[b] * t).astype(int)
            if 1 <= x < width - 1 and 1 <= y < height - 1:
                sampled += 1  # the 3x3 neighbourhood: a 2-pixel line may sit half a pixel off the rounded point
                window = (slice(y - 1, y + 2), slice(x - 1, x + 2))
                changed += int((original[window] != drawn[window]).any())
    return changed, sampled


def test_writes_png_and_json_with_the_skeleton_drawn(model_dir, coco_dir, tmp_path):
    image_path = coco_dir / "000000000785.jpg"
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"000000000785.jpg": [[280.79, 44.73, 218.7, 346.68]]}))
    out, result = tmp_path / "out", tmp_path / "poses.json"
    assert (
        predict(str(image_path), "--model", model_dir, "--boxes", str(boxes), "--out", str(out), "--json", str(result))
        == 0
    )

    payload = json.loads(result.read_text())
    assert payload["dataset"] == "coco" and payload["box_format"] == "xywh"
    (record,) = payload["images"]
    assert record["file"] == str(image_path) and record["frame"] is None
    original = PIL.Image.open(image_path).convert("RGB")
    assert (record["width"], record["height"]) == original.size
    (person,) = record["people"]
    assert person["box"] == [280.79, 44.73, 218.7, 346.68]
    assert len(person["keypoints"]) == 17

    png = PIL.Image.open(out / "000000000785.png")
    assert png.format == "PNG" and png.size == original.size and png.mode == "RGB"
    before, after = np.asarray(original), np.asarray(png)
    changed, sampled = changed_along_links(before, after, person, threshold=0.3)
    assert sampled >= 20 and changed >= 0.9 * sampled
    assert (before != after).any(axis=2).mean() < 0.2  # the photo itself is kept


def test_coco_detection_results_on_a_folder(model_dir, coco_dir, tmp_path):
    out, result = tmp_path / "out", tmp_path / "poses.json"
    detections = coco_dir / "test_coco_det_AP_H_56.json"
    rc = predict(
        str(coco_dir),
        "--model",
        model_dir,
        "--boxes",
        str(detections),
        "--box-threshold",
        "0.5",
        "--out",
        str(out),
        "--json",
        str(result),
    )
    assert rc == 0
    raw = json.loads(detections.read_text())
    images = json.loads(result.read_text())["images"]
    assert [r["file"].rsplit("/", 1)[-1] for r in images] == sorted(p.name for p in coco_dir.glob("*.jpg"))
    for record in images:
        image_id = int(record["file"].rsplit("/", 1)[-1].split(".")[0])
        expected = [d for d in raw if d["image_id"] == image_id and d["score"] >= 0.5]
        assert [p["box"] for p in record["people"]] == [d["bbox"] for d in expected]
        assert [p["box_score"] for p in record["people"]] == [d["score"] for d in expected]
        assert (out / "coco" / (record["file"].rsplit("/", 1)[-1][:-4] + ".png")).is_file()
    assert sum(len(r["people"]) for r in images) == 18

    # --box-format xyxy converts the COCO boxes
    rc = predict(
        str(coco_dir / "000000000785.jpg"),
        "--model",
        model_dir,
        "--boxes",
        str(detections),
        "--box-threshold",
        "0.5",
        "--box-format",
        "xyxy",
        "--json",
        str(result),
    )
    assert rc == 0
    (record,) = json.loads(result.read_text())["images"]
    x, y, w, h = next(d["bbox"] for d in raw if d["image_id"] == 785 and d["score"] >= 0.5)
    assert record["people"][0]["box"] == pytest.approx([x, y, x + w, y + h])
    assert record["people"][0]["box_format"] == "xyxy"


def test_coco_annotation_file_and_file_name_entries(model_dir, coco_dir, tmp_path):
    result = tmp_path / "poses.json"
    assert (
        predict(str(coco_dir), "--model", model_dir, "--boxes", str(coco_dir / "test_coco.json"), "--json", str(result))
        == 0
    )
    counts = [len(r["people"]) for r in json.loads(result.read_text())["images"]]
    assert counts == [1, 3, 5, 5]  # the non-crowd ground-truth boxes of each image, in file order

    entries = [
        {"file_name": "000000040083.jpg", "bbox": [38.08, 110.95, 174.71, 174.71], "score": 0.7, "category_id": 1},
        {"file_name": "000000040083.jpg", "bbox": [257.76, 139.06, 140.05, 154.21], "score": 0.6, "category_id": 18},
    ]
    boxes = tmp_path / "by_name.json"
    boxes.write_text(json.dumps(entries))
    assert (
        predict(str(coco_dir / "000000040083.jpg"), "--model", model_dir, "--boxes", str(boxes), "--json", str(result))
        == 0
    )
    people = json.loads(result.read_text())["images"][0]["people"]
    assert [p["box_score"] for p in people] == [0.7, 0.6]  # the user's boxes are never filtered by class
    one_image = [str(coco_dir / "000000040083.jpg"), "--model", model_dir, "--boxes", str(boxes)]
    assert predict(*one_image, "--box-category", "1", "--json", str(result)) == 0
    people = json.loads(result.read_text())["images"][0]["people"]
    assert [p["box_score"] for p in people] == [0.7]  # the dog (category 18) is not a person

    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps({"000000040083.jpg": [{"bbox": [0, 0, 50, 80], "score": 0.4}, [10, 10, 30, 30]]}))
    assert (
        predict(
            str(coco_dir / "000000040083.jpg"), "--model", model_dir, "--boxes", str(mapping), "--json", str(result)
        )
        == 0
    )
    people = json.loads(result.read_text())["images"][0]["people"]
    assert [p["box"] for p in people] == [[0, 0, 50, 80], [10, 10, 30, 30]]
    assert [p["box_score"] for p in people] == [0.4, None]


def test_bundled_sample_is_the_default_input(model_dir, tmp_path, capsys):
    assert SAMPLE_IMAGE.is_file()
    assert "public domain" in (SAMPLE_IMAGE.parent / "ATTRIBUTION.md").read_text()
    out = tmp_path / "out"
    assert predict("--model", model_dir, "--out", str(out)) == 0
    png = PIL.Image.open(out / "astronaut.png")
    assert png.size == PIL.Image.open(SAMPLE_IMAGE).size == (512, 512)
    captured = capsys.readouterr()
    assert "sample" in captured.err and "1 image(s), 1 person" in captured.out


def test_json_to_stdout_and_flip_test(model_dir, coco_dir, capsys):
    boxes = str(coco_dir / "test_coco.json")
    assert (
        predict(
            str(coco_dir / "000000000785.jpg"), "--model", model_dir, "--boxes", boxes, "--flip-test", "--json", "-"
        )
        == 0
    )
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert len(payload["images"][0]["people"]) == 1
    assert "1 image(s)" in captured.err


def test_dataset_flag_picks_the_head(plus_model_dir, coco_dir, tmp_path):
    result = tmp_path / "poses.json"
    rc = predict(
        str(coco_dir / "000000000785.jpg"),
        "--model",
        plus_model_dir,
        "--dataset",
        "aic",
        "--boxes",
        str(coco_dir / "test_coco.json"),
        "--json",
        str(result),
    )
    assert rc == 0
    person = json.loads(result.read_text())["images"][0]["people"][0]
    assert person["dataset"] == "aic" and len(person["keypoints"]) == 14


def test_folder_of_frames(model_dir, coco_dir, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    image = PIL.Image.open(coco_dir / "000000000785.jpg").resize((160, 106))
    for i in (2, 0, 1):
        image.save(frames / f"frame_{i:03d}.png")
    image.save(frames / "take.2.jpg")  # a dot in the stem keeps its full name
    (frames / "notes.txt").write_text("not an image")
    out, result = tmp_path / "out", tmp_path / "poses.json"
    assert predict(str(frames), "--model", model_dir, "--out", str(out), "--json", str(result)) == 0
    records = json.loads(result.read_text())["images"]
    names = ["frame_000.png", "frame_001.png", "frame_002.png", "take.2.jpg"]
    assert [r["file"].rsplit("/", 1)[-1] for r in records] == names
    assert sorted(p.name for p in (out / "frames").iterdir()) == names[:3] + ["take.2.png"]


def test_video_frames_and_json_per_frame(model_dir, coco_dir, tmp_path):
    cv2 = pytest.importorskip("cv2")
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (96, 64))
    frame = np.asarray(PIL.Image.open(coco_dir / "000000000785.jpg").convert("RGB").resize((96, 64)))
    for shift in range(3):
        writer.write(cv2.cvtColor(np.roll(frame, 4 * shift, axis=1), cv2.COLOR_RGB2BGR))
    writer.release()
    out, result = tmp_path / "out", tmp_path / "poses.json"
    assert predict(str(video), "--model", model_dir, "--out", str(out), "--json", str(result)) == 0
    records = json.loads(result.read_text())["images"]
    assert [r["frame"] for r in records] == [0, 1, 2]
    for i in range(3):
        png = PIL.Image.open(out / "clip" / f"frame_{i:06d}.png")
        assert png.size == (96, 64)
        per_frame = json.loads((out / "clip" / f"frame_{i:06d}.json").read_text())
        assert per_frame["frame"] == i and per_frame["people"] == records[i]["people"]
    assert predict(str(video), "--model", model_dir, "--video-stride", "2", "--json", str(result)) == 0
    assert [r["frame"] for r in json.loads(result.read_text())["images"]] == [0, 2]


def test_video_without_opencv_names_the_extra(model_dir, tmp_path, monkeypatch, capsys):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00" * 16)
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 -> ImportError
    assert predict(str(video), "--model", model_dir) == 2
    assert "vitpose-hf[video]" in capsys.readouterr().err


def test_detector_flag(model_dir, detector_dir, coco_dir, tmp_path):
    result = tmp_path / "poses.json"
    rc = predict(
        str(coco_dir / "000000000785.jpg"),
        "--model",
        model_dir,
        "--detector",
        detector_dir,
        "--box-threshold",
        "0.5",
        "--json",
        str(result),
    )
    assert rc == 0
    people = json.loads(result.read_text())["images"][0]["people"]
    assert people and all(p["label"] == "person" and p["box_score"] >= 0.5 for p in people)


def test_unreachable_hub_says_how_to_pass_a_local_checkpoint(monkeypatch, capsys, coco_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert predict(str(coco_dir / "000000000785.jpg"), "--model", "vitpose-hf-tests/not-a-cached-model") == 1
    err = capsys.readouterr().err
    assert "Hugging Face Hub" in err and "cannot be reached" in err
    assert "--model /path/to/checkpoint" in err


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no such file or folder"),
        ("text_file", "neither an image"),
        ("empty_folder", "holds no images"),
        ("bad_json", "not valid JSON"),
        ("short_box", "a box is 4 numbers"),
        ("negative_box", "the --boxes of 000000000785.jpg[0] = [10.0, 10.0, -5.0, 20.0] (xywh) has a negative width"),
        ("no_boxes_file", "--boxes: no such file"),
        ("unknown_dataset", "unknown dataset 'aic' for this checkpoint"),
        ("boxes_and_detector", "either --boxes or --detector"),
        ("batch_size", "--batch-size must be at least 1"),
        ("bad_image", "cannot read the image"),
        ("boxes_for_video", "--boxes applies to image files"),
    ],
)
def test_bad_inputs(case, message, model_dir, coco_dir, tmp_path, capsys):
    image = str(coco_dir / "000000000785.jpg")
    boxes = tmp_path / "boxes.json"
    args = {
        "missing": [str(tmp_path / "nope.jpg")],
        "text_file": [str(tmp_path / "a.txt")],
        "empty_folder": [str(tmp_path / "empty")],
        "bad_json": [image, "--boxes", str(boxes)],
        "short_box": [image, "--boxes", str(boxes)],
        "negative_box": [image, "--boxes", str(boxes)],
        "no_boxes_file": [image, "--boxes", str(tmp_path / "missing.json")],
        "unknown_dataset": [image, "--dataset", "aic"],
        "boxes_and_detector": [image, "--boxes", str(boxes), "--detector", "x"],
        "batch_size": [image, "--batch-size", "0"],
        "bad_image": [str(tmp_path / "broken.jpg")],
        "boxes_for_video": [str(tmp_path / "clip.mp4"), "--boxes", str(boxes)],
    }[case]
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 16)
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    boxes.write_text(
        {
            "bad_json": "{not json",
            "short_box": json.dumps({"000000000785.jpg": [[1, 2, 3]]}),
            "negative_box": json.dumps({"000000000785.jpg": [[10, 10, -5, 20]]}),
        }.get(case, "{}")
    )
    assert predict(*args, "--model", model_dir) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' loading bar, if any
    assert last.startswith("vitpose-hf predict: error:") and message in last
