"""The command line reaches the video tracker and the bottom-up models: `predict VIDEO --track`, `predict` / `eval` /
`train` with bottom-up checkpoints (`--paradigm bottom-up`), and their one-line refusals.

Tiny random checkpoints saved in tmp folders (the builders of the pipeline, video and bottom-up tests); the shared
COCO photos and test_coco.json. Results are compared with the Python API on the same weights (wiring checks) and
with formulas computed here (box conversion).
"""

from __future__ import annotations

import json

import PIL.Image
import pytest
import torch
from safetensors.torch import load_file
from test_bottom_up_pipeline import TINY  # tiny encoder sizes shared with the bottom-up pipeline tests
from test_pipeline import tiny_detector, tiny_pose_model  # tiny checkpoint builders (also used by predict's tests)
from test_training import save_hub  # a Hub-schema DatasetDict folder with its keypoint layout
from test_video_cli import FRAMES, clip  # noqa: F401 - the 6-frame MJPG clip fixture of the video CLI tests

from vitpose_hf.cli import main
from vitpose_hf.configuration_vitpose_hf import ViTPoseBottomUpConfig
from vitpose_hf.image_processing_vitpose_hf_bottom_up import ViTPoseBottomUpImageProcessor
from vitpose_hf.images import load_image
from vitpose_hf.inference.bottom_up import BottomUpPoseEstimator
from vitpose_hf.modeling_vitpose_hf_bottom_up import ViTPoseForBottomUpPoseEstimation
from vitpose_hf.testing import synthetic_keypoint_dataset
from vitpose_hf.training.bottom_up import bottom_up_coco_results, evaluate_bottom_up_on_coco

COCO_KEYS = {"AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"}


@pytest.fixture(scope="module")
def coco_dir(shared_data):
    return shared_data / "mmpose" / "coco"


@pytest.fixture(scope="module")
def top_down_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("top_down")
    tiny_pose_model().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("detr")
    model, processor = tiny_detector()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bottom_up_dir(tmp_path_factory):
    """A random 64 x 64 COCO bottom-up model that reports its 3 best people whatever their score (so that a random
    model finds someone)."""
    torch.manual_seed(0)
    config = ViTPoseBottomUpConfig(image_size=(64, 64), detection_threshold=0.0, max_people=3, **TINY)
    path = tmp_path_factory.mktemp("bottom_up")
    ViTPoseForBottomUpPoseEstimation(config).eval().save_pretrained(path)
    return path


def run(capsys, *argv: str) -> tuple[int, str]:
    """`vitpose-hf ARGV` in this process: its exit status and its stderr."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def one_line_error(err: str, command: str) -> str:
    lines = [line for line in err.strip().splitlines() if not line.startswith(("note:", "warning:"))]
    assert len(lines) == 1 and lines[0].startswith(f"vitpose-hf {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------------------------------------------------------
# predict VIDEO --track
# ---------------------------------------------------------------------------------------------------------------
def test_wiring_predict_track_writes_track_ids_per_frame(clip, top_down_dir, detector_dir, tmp_path, capsys):  # noqa: F811
    out, record = tmp_path / "out", tmp_path / "all.json"
    rc, err = run(
        capsys,
        *("predict", clip, "--model", top_down_dir, "--detector", detector_dir, "--track", "--detect-every", "2"),
        *("--smooth", "one-euro", "--box-threshold", "0.3", "--out", out, "--json", record, "--no-progress"),
    )
    assert rc == 0, err
    frames = sorted((out / clip.stem).glob("frame_*.json"))
    assert [f.name for f in frames] == [f"frame_{i:06d}.json" for i in range(FRAMES)]
    people = [json.loads(f.read_text())["people"] for f in frames]
    assert any(people), "the tiny random detector finds someone on some frames"
    ids = [p["track_id"] for frame in people for p in frame]
    assert all(isinstance(i, int) and i >= 1 for i in ids)
    assert (out / f"{clip.stem}.mp4").is_file()
    document = json.loads(record.read_text())
    assert [len(f["people"]) for f in document["videos"][0]["frames"]] == [len(p) for p in people]


def test_track_without_inputs_is_a_one_line_error(top_down_dir, tmp_path, capsys):
    rc, err = run(capsys, "predict", "--model", top_down_dir, "--track", "--out", tmp_path)
    assert rc == 2
    assert "--track needs a video file or a folder of frames" in one_line_error(err, "predict")
    assert not any(tmp_path.iterdir())  # no fallback to the sample photo


# ---------------------------------------------------------------------------------------------------------------
# predict with a bottom-up checkpoint
# ---------------------------------------------------------------------------------------------------------------
def test_wiring_predict_bottom_up_writes_the_estimators_people(bottom_up_dir, coco_dir, tmp_path, capsys):
    photo = coco_dir / "000000000785.jpg"
    out, result = tmp_path / "out", tmp_path / "poses.json"
    rc, err = run(capsys, "predict", photo, "--model", bottom_up_dir, "--out", out, "--json", result, "--no-progress")
    assert rc == 0, err
    record = json.loads(result.read_text())["images"][0]
    expected = BottomUpPoseEstimator(bottom_up_dir, flip_test=False)([load_image(photo)])[0]
    assert len(expected) == 3 and record["people"] == expected  # the checkpoint's type chose bottom-up
    width, height = PIL.Image.open(photo).size
    assert (record["width"], record["height"]) == (width, height)
    assert PIL.Image.open(out / "000000000785.png").size == (width, height)  # predict's own drawing writer

    # --paradigm bottom-up, two test scales and xyxy boxes: the estimator's xywh boxes converted
    rc, err = run(
        capsys,
        *("predict", photo, "--model", bottom_up_dir, "--paradigm", "bottom-up", "--scales", "1", "0.5"),
        *("--box-format", "xyxy", "--json", result, "--no-progress"),
    )
    assert rc == 0, err
    people = json.loads(result.read_text())["images"][0]["people"]
    multi = BottomUpPoseEstimator(bottom_up_dir, flip_test=False, scales=[1, 0.5])([load_image(photo)])[0]
    assert [p["keypoints"] for p in people] == [p["keypoints"] for p in multi]
    for person, reference in zip(people, multi):
        x, y, w, h = reference["box"]
        assert person["box_format"] == "xyxy"
        assert person["box"] == pytest.approx([x, y, x + w, y + h], abs=1e-9)


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--boxes", "boxes.json"), "--boxes"),
        (("--detector", "some/detector"), "--detector"),
        (("--paradigm", "top-down"), "is a bottom-up checkpoint"),
        (("--dtype", "fp16"), "fp32"),
    ],
)
def test_predict_bottom_up_refusals(bottom_up_dir, coco_dir, tmp_path, capsys, extra, message):
    rc, err = run(capsys, "predict", coco_dir / "000000000785.jpg", "--model", bottom_up_dir, *extra, "--out", tmp_path)
    assert rc == 2
    assert message in one_line_error(err, "predict")


def test_predict_paradigm_refusals_for_a_top_down_model(top_down_dir, coco_dir, tmp_path, capsys):
    photo = coco_dir / "000000000785.jpg"
    rc, err = run(capsys, "predict", photo, "--model", top_down_dir, "--paradigm", "bottom-up", "--out", tmp_path)
    assert rc == 2 and "is a top-down checkpoint" in one_line_error(err, "predict")
    rc, err = run(capsys, "predict", photo, "--model", top_down_dir, "--scales", "1", "0.5", "--out", tmp_path)
    assert rc == 2 and "--scales" in one_line_error(err, "predict")


# ---------------------------------------------------------------------------------------------------------------
# eval with a bottom-up checkpoint
# ---------------------------------------------------------------------------------------------------------------
def test_wiring_eval_bottom_up_scores_like_the_python_api(bottom_up_dir, coco_dir, tmp_path, capsys):
    annotations = coco_dir / "test_coco.json"
    output, metrics_file = tmp_path / "results.json", tmp_path / "metrics.json"
    rc, err = run(
        capsys,
        *("eval", "--model", bottom_up_dir, "--annotations", annotations, "--images", coco_dir),
        *("--output", output, "--metrics-output", metrics_file, "--device", "cpu", "--no-progress"),
    )
    assert rc == 0, err
    written = json.loads(metrics_file.read_text())
    assert set(written["metrics"]) >= COCO_KEYS
    assert written["paradigm"] == "bottom-up" and written["num_images"] == 4 and written["dataset"] == "coco"
    python_results = tmp_path / "python_results.json"
    expected = evaluate_bottom_up_on_coco(
        BottomUpPoseEstimator(bottom_up_dir, flip_test=False), annotations, coco_dir, results_file=python_results
    )
    assert {k: written["metrics"][k] for k in COCO_KEYS} == {k: expected[k] for k in COCO_KEYS}
    results = json.loads(output.read_text())
    assert results == json.loads(python_results.read_text())
    assert len(results) == 4 * 3 and {r["image_id"] for r in results} == {
        im["id"] for im in json.loads(annotations.read_text())["images"]
    }


def test_wiring_eval_bottom_up_on_a_hub_dataset(bottom_up_dir, coco_figures, tmp_path, capsys):
    import datasets

    output = tmp_path / "results.json"
    rc, err = run(
        capsys,
        *("eval", "--model", bottom_up_dir, "--hub-dataset", coco_figures, "--output", output, "--no-progress"),
    )
    assert rc == 0, err
    rows = datasets.load_from_disk(str(coco_figures))["train"]
    expected = bottom_up_coco_results(BottomUpPoseEstimator(bottom_up_dir, flip_test=False), rows)
    assert json.loads(output.read_text()) == json.loads(json.dumps(expected)) and len(expected) == len(rows) * 3
    written = json.loads((tmp_path / "results_metrics.json").read_text())
    assert set(written["metrics"]) >= COCO_KEYS and written["num_people"] == len(expected)


def test_eval_bottom_up_refuses_boxes(bottom_up_dir, coco_dir, tmp_path, capsys):
    rc, err = run(
        capsys,
        *("eval", "--model", bottom_up_dir, "--annotations", coco_dir / "test_coco.json"),
        *("--boxes", coco_dir / "test_coco_det_AP_H_56.json", "--output", tmp_path / "r.json", "--no-progress"),
    )
    assert rc == 2
    assert "--boxes does not apply to a bottom-up model" in one_line_error(err, "eval")
    assert not (tmp_path / "r.json").exists()


# ---------------------------------------------------------------------------------------------------------------
# train --paradigm bottom-up
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coco_figures(tmp_path_factory):
    """A small Hub-schema COCO-layout set of drawn figures (2 per image)."""
    rows = synthetic_keypoint_dataset("coco", num_images=6, image_size=(64, 64), seed=7, min_figures=2, max_figures=2)
    return save_hub(tmp_path_factory.mktemp("coco_figures") / "hub", "coco", rows)


def train_args(output_dir, data, *extra: str) -> list[str]:
    return [
        *("train", "--paradigm", "bottom-up", "--dataset-name", data, "--output-dir", output_dir),
        *("--max-train-steps", "3", "--per-device-train-batch-size", "2", "--dataloader-num-workers", "0"),
        *("--learning-rate", "1e-2", "--cpu", "--no-progress", *extra),
    ]


def reloaded(folder) -> tuple[ViTPoseForBottomUpPoseEstimation, ViTPoseBottomUpImageProcessor]:
    model = ViTPoseForBottomUpPoseEstimation.from_pretrained(folder)
    processor = ViTPoseBottomUpImageProcessor.from_pretrained(folder)
    assert type(model) is ViTPoseForBottomUpPoseEstimation and model.config.model_type == "vitpose_hf_bottom_up"
    assert processor.size == max(model.config.image_size)
    return model, processor


def test_train_bottom_up_from_a_bottom_up_checkpoint_changes_its_weights(bottom_up_dir, coco_figures, tmp_path, capsys):
    rc, err = run(capsys, *train_args(tmp_path / "run", coco_figures, "--model", bottom_up_dir))
    assert rc == 0, err
    model, _ = reloaded(tmp_path / "run")
    before = load_file(str(bottom_up_dir / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert set(before) == set(after)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert len(changed) > len(before) // 2  # AdamW moves nearly every tensor in 3 steps
    assert json.loads((tmp_path / "run" / "all_results.json").read_text())["step"] == 3


def test_train_bottom_up_new_and_converted_models_reload(top_down_dir, coco_figures, tmp_path, capsys):
    overrides = "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,deconv_channels=16"
    new = tmp_path / "new"
    rc, err = run(
        capsys,
        *train_args(
            new, coco_figures, "--model-size", "s", "--config-overrides", overrides, "--image-size", "64", "64"
        ),
    )
    assert rc == 0, err
    model, _ = reloaded(new)
    assert tuple(model.config.image_size) == (64, 64) and model.config.hidden_size == 32
    assert model.config.dataset_names == ["coco"]

    converted = tmp_path / "converted"
    rc, err = run(capsys, *train_args(converted, coco_figures, "--model", top_down_dir, "--image-size", "64", "64"))
    assert rc == 0, err
    model, _ = reloaded(converted)
    source = tiny_pose_model()  # the same seed: the top-down weights the run started from
    assert model.config.hidden_size == source.config.hidden_size and tuple(model.config.image_size) == (64, 64)


def test_train_bottom_up_refusals(coco_figures, tmp_path, capsys):
    rc, err = run(capsys, *train_args(tmp_path / "x", coco_figures, "--model-size", "s", "--streaming"))
    assert rc == 2 and "--streaming" in one_line_error(err, "train")
    rc, err = run(
        capsys, *train_args(tmp_path / "x", coco_figures, "--model-size", "s", "--dataset-name", coco_figures)
    )
    assert rc == 2 and "one --dataset-name" in one_line_error(err, "train")
    assert not (tmp_path / "x").exists()
