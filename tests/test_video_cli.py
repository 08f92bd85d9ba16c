"""``predict VIDEO --track``: the option module on predict's own parser, and every output of a tracked run with a
real tiny random ViTPose through the pipeline (wiring) and a stand-in detector."""

from __future__ import annotations

import argparse
import json

import numpy as np
import PIL.Image
import pytest
import torch

from vitpose_hf import ViTPoseForPoseEstimation
from vitpose_hf.cli import predict
from vitpose_hf.inference.formats import from_coco_results, read_openpose
from vitpose_hf.inference.pipeline import PoseEstimationPipeline
from vitpose_hf.video.cli import TRACK_OPTIONS, run_track
from vitpose_hf.video.sources import VideoSourceError

from helpers import tiny_config

cv2 = pytest.importorskip("cv2")

W, H, FRAMES = 160, 120, 6


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    predict.add_arguments(p)  # predict adds the --track options itself (video.cli.add_track_arguments)
    return p


@pytest.fixture(scope="module")
def clip(shared_data, tmp_path_factory):
    photo = PIL.Image.open(shared_data / "mmpose" / "coco" / "000000000785.jpg").convert("RGB").resize((W, H))
    path = tmp_path_factory.mktemp("clip") / "walk.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
    for t in range(FRAMES):
        writer.write(cv2.cvtColor(np.roll(np.asarray(photo), 3 * t, axis=1), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    model = ViTPoseForPoseEstimation(tiny_config()).eval()

    def detector(images):  # one person, moving with the picture
        return [[{"box": [70.0, 10.0, 125.0, 110.0], "score": 0.9, "label": "person"}] for _ in images]

    return PoseEstimationPipeline(model, detector=detector, device="cpu")


def test_wiring_predict_has_every_track_option_once():
    # argparse would refuse a clash while building the parser; each option string appears once
    options = [option for action in parser()._actions for option in action.option_strings]
    assert set(TRACK_OPTIONS) <= set(options) and len(options) == len(set(options))


@pytest.mark.parametrize("smooth", ["one-euro", "savgol"])
def test_wiring_track_writes_every_output(clip, pipe, tmp_path, smooth):
    out, coco, openpose, record = tmp_path / "out", tmp_path / "coco.json", tmp_path / "op", tmp_path / "all.json"
    args = parser().parse_args(
        [str(clip), "--track", "--detect-every", "2", "--smooth", smooth, "--batch-size", "4", "--no-progress"]
        + ["--score-threshold", "0.0", "--out", str(out), "--coco-results", str(coco), "--openpose", str(openpose)]
        + ["--json", str(record)]
    )
    assert run_track(args, pipe) == 0
    rendered = cv2.VideoCapture(str(out / "walk.mp4"))
    count = 0
    while True:
        ok, frame = rendered.read()
        if not ok:
            break
        assert frame.shape == (H, W, 3)
        count += 1
    rendered.release()
    assert count == FRAMES
    frames = sorted((out / "walk").glob("frame_*.json"))
    assert len(frames) == FRAMES
    first = json.loads(frames[0].read_text())
    assert first["frame"] == 0 and first["file"] == str(clip) and first["people"][0]["track_id"] == 1
    by_frame = from_coco_results(coco)
    assert sorted(by_frame) == list(range(FRAMES))
    assert {p["track_id"] for people in by_frame.values() for p in people} == {1}
    assert sorted(read_openpose(openpose)) == list(range(FRAMES))
    document = json.loads(record.read_text())
    assert [f["detected"] for f in document["videos"][0]["frames"]] == [True, False] * 3


def test_track_bad_input(clip, pipe, tmp_path):
    bare = PoseEstimationPipeline(ViTPoseForPoseEstimation(tiny_config()).eval(), device="cpu")
    with pytest.raises(ValueError, match="--detector"):
        run_track(parser().parse_args([str(clip), "--track", "--out", str(tmp_path)]), bare)
    with pytest.raises(ValueError, match="one input"):
        run_track(parser().parse_args([str(clip), str(clip), "--track", "--coco-results", "x.json"]), pipe)
    with pytest.raises(ValueError, match="--detect-every"):
        run_track(parser().parse_args([str(clip), "--track", "--detect-every", "0"]), pipe)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 64)
    with pytest.raises(VideoSourceError, match="broken.mp4"):
        run_track(parser().parse_args([str(broken), "--track", "--out", str(tmp_path)]), pipe)
