"""Issue 16, nothing dropped or turned into garbage in silence: unreadable files, boxes the user gave, suspicious
inputs, converted folders, drawing nestings, model-level inputs, progress and missing test data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from vitpose_hf import ViTPoseForPoseEstimation, ViTPoseImageProcessor, draw
from vitpose_hf.boxes import box_warnings
from vitpose_hf.images import load_image, to_rgb_tensors
from vitpose_hf.keypoint_metadata import KEYPOINT_DATASETS
from vitpose_hf_cli import main

from helpers import tiny_config, tiny_plus_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("inputs") / "model"
    torch.manual_seed(0)
    ViTPoseForPoseEstimation(tiny_config()).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def plus_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("inputs") / "plus"
    torch.manual_seed(0)
    ViTPoseForPoseEstimation(tiny_plus_config()).save_pretrained(folder)
    return str(folder)


def photo(path: Path, size: tuple[int, int] = (64, 48), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    PIL.Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


# ----------------------------------------------------------------------------------------------------------------
# predict
# ----------------------------------------------------------------------------------------------------------------
def test_a_corrupt_file_in_a_folder_is_skipped_named_and_counted(model_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo(folder / "a.png", seed=1)
    photo(folder / "c.png", seed=2)
    (folder / "b.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "nested").mkdir()
    (folder / "clip.mp4").write_bytes(b"\x00" * 16)
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--model", model_dir, "--out", str(out), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "2 image(s)" in captured.out and "1 unreadable image(s) skipped" in captured.out
    assert "b.jpg" in captured.err and "skipping an unreadable image" in captured.err
    assert "not read: 1 sub-folder(s), not searched (nested/)" in captured.err and "clip.mp4" in captured.err
    assert sorted(p.name for p in (out / "photos").iterdir()) == ["a.png", "c.png"]  # the good images are written
    assert main(["predict", str(folder), "--model", model_dir, "--strict", "--no-progress"]) == 2
    assert "b.jpg" in capsys.readouterr().err.splitlines()[-1]


def test_user_boxes_are_not_filtered_by_the_heads_detector_classes(plus_dir, tmp_path, capsys):
    image = photo(tmp_path / "000000000785.jpg", size=(96, 128))
    boxes = tmp_path / "dets.json"
    boxes.write_text(
        json.dumps(
            [
                {"image_id": 785, "bbox": [5, 5, 40, 60], "score": 0.9, "category_id": 1},
                {"image_id": 785, "bbox": [30, 40, 50, 70], "score": 0.8, "category_id": 1},
            ]
        )
    )
    result = tmp_path / "r.json"
    argv = ["predict", str(image), "--model", plus_dir, "--boxes", str(boxes), "--json", str(result), "--no-progress"]
    assert main([*argv, "--dataset", "ap10k"]) == 0
    people = json.loads(result.read_text())["images"][0]["people"]
    assert [p["box"] for p in people] == [[5, 5, 40, 60], [30, 40, 50, 70]]  # person boxes on the animal head
    assert main([*argv, "--dataset", "ap10k", "--box-category", "17"]) == 0
    assert json.loads(result.read_text())["images"][0]["people"] == []
    assert "--box-category 17 removed 2 box(es)" in capsys.readouterr().err


def test_predict_speaks_cli_and_no_progress_silences_the_loading_bars(model_dir, tmp_path, capsys):
    image = photo(tmp_path / "a.png")
    assert main(["predict", str(image), "--model", model_dir, "--json", str(tmp_path / "r.json")]) == 0
    err = capsys.readouterr().err
    assert "no --boxes and no --detector" in err and "--detector MODEL" in err
    assert "boxes=" not in err and "detector=" not in err  # no Python-API advice on the command line
    assert "Loading weights" in err  # transformers' bar, shown by default
    assert main(["predict", str(image), "--model", model_dir, "--json", str(tmp_path / "r.json"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "%|" not in err


def test_suspicious_boxes_are_reported_once_per_kind(model_dir, tmp_path, capsys):
    # (64 x 48 image) a zero-size box, a box outside, and an xyxy box given as xywh
    width, height = 64, 48
    boxes = [[10, 10, 0, 20], [70, 5, 10, 10], [20, 10, 60, 44], [10, 4, 50, 40]]
    found = box_warnings(boxes, "xywh", width, height, name="boxes")
    assert set(found) == {"zero-size", "outside", "xyxy-as-xywh"}
    assert found["zero-size"].startswith("boxes[0] = [10.0, 10.0, 0.0, 20.0]")
    assert found["outside"].startswith("boxes[1]") and "outside the 64 x 48 image" in found["outside"]
    # box 2: x + w = 80 > 1.1 * 64 while [20, 10, 60, 44] fits as xyxy; box 3 (x + w = 60, y + h = 44) is fine
    assert found["xyxy-as-xywh"].startswith("boxes[2]") and "are the boxes xyxy?" in found["xyxy-as-xywh"]
    assert box_warnings([[20, 10, 60, 44]], "xyxy", width, height) == {}
    assert box_warnings([[20, 10, 60, 44]], "XYXY", width, height) == {}  # formats in any case

    image = photo(tmp_path / "a.png")
    mapping = tmp_path / "boxes.json"
    mapping.write_text(json.dumps({"a.png": boxes, "b.png": [[0, 0, 0, 0]]}))
    photo(tmp_path / "b.png", seed=3)
    argv = ["predict", str(image), str(tmp_path / "b.png"), "--model", model_dir, "--boxes", str(mapping)]
    assert main([*argv, "--json", str(tmp_path / "r.json"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert err.count("zero width or height") == 1  # both images have one: reported once
    assert err.count("entirely outside") == 1 and err.count("are the boxes xyxy?") == 1


def test_a_float_image_in_0_1_warns_where_0_255_is_expected():
    image = np.random.default_rng(0).random((48, 64, 3)).astype(np.float32)  # values in 0..1
    with pytest.warns(UserWarning, match="0..1 only, where 0..255 is expected"):
        drawn = draw(image, [])
    assert np.asarray(drawn).max() <= 1  # what the warning is about: a black picture
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        draw(image * 255, [])


# ----------------------------------------------------------------------------------------------------------------
# convert, convert-dataset
# ----------------------------------------------------------------------------------------------------------------
def test_convert_to_transformers_says_which_heads_it_kept(plus_dir, tmp_path, capsys):
    from transformers import VitPoseForPoseEstimation

    out = tmp_path / "tf"
    assert main(["convert", "--model", plus_dir, "--output", str(out), "--to", "transformers"]) == 0
    captured = capsys.readouterr()
    assert "kept the 'coco' head; dropped ['aic', 'mpii', 'ap10k', 'apt36k', 'wholebody']" in captured.out
    assert "reading" in captured.err and "done" in captured.err  # progress stages
    theirs = VitPoseForPoseEstimation.from_pretrained(out).eval()
    with torch.no_grad():
        assert theirs(torch.zeros(1, 3, 64, 48), dataset_index=torch.tensor([0])).heatmaps.shape[1] == 17
    assert (
        main(
            ["convert", "--model", plus_dir, "--output", str(tmp_path / "ap"), "--to", "transformers", "--dataset", "3"]
        )
        == 0
    )
    assert "kept the 'ap10k' head" in capsys.readouterr().out


def test_converted_folders_load_their_image_processor(plus_dir, tmp_path):
    from transformers import AutoImageProcessor

    out = tmp_path / "ours"
    assert main(["convert", plus_dir, str(out)]) == 0  # the old positional spelling
    processor = AutoImageProcessor.from_pretrained(str(out), trust_remote_code=True)
    assert type(processor).__name__ == "ViTPoseImageProcessor"
    assert processor.size == {"height": 64, "width": 48}
    names = [d if isinstance(d, str) else d["name"] for d in processor.dataset]
    assert names == ["coco", "aic", "mpii", "ap10k", "apt36k", "wholebody"]
    # per-dataset UDP: the official setting of each dataset (COCO / MPII with UDP, AIC / AP-10K without)
    assert processor.use_udp is None
    assert {KEYPOINT_DATASETS[n]["use_udp"] for n in names} == {True, False}


def coco_folder(root: Path, split_images: int) -> tuple[Path, Path]:
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    entries, annotations = [], []
    for i in range(split_images):
        photo(images / f"{i}.jpg", size=(64, 48), seed=i)
        entries.append({"id": i + 1, "file_name": f"{i}.jpg", "width": 64, "height": 48})
        annotations.append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 1,
                "bbox": [4, 4, 30, 30],
                "area": 900,
                "iscrowd": 0,
                "num_keypoints": 17,
                "keypoints": [10, 10, 2] * 17,
            }
        )
    categories = [{"id": 1, "name": "person", "keypoints": KEYPOINT_DATASETS["coco"]["keypoint_names"]}]
    path = root / "ann.json"
    path.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}))
    return path, images


def test_convert_dataset_refuses_an_existing_folder_and_overwrites_it_whole(tmp_path, capsys):
    import datasets

    ann, images = coco_folder(tmp_path / "coco", 3)
    out = tmp_path / "hub"
    two_splits = ["--annotations", str(ann), "--images", str(images), "--split", "train"]
    two_splits += ["--annotations", str(ann), "--images", str(images), "--split", "validation"]
    assert main(["convert-dataset", *two_splits, "--output", str(out), "--layout", "coco"]) == 0
    one_split = ["convert-dataset", "--annotations", str(ann), "--images", str(images), "--output", str(out)]
    assert main([*one_split, "--layout", "coco"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err.splitlines()[-1]
    assert sorted(datasets.load_from_disk(str(out))) == ["train", "validation"]  # untouched
    assert main([*one_split, "--layout", "coco", "--overwrite"]) == 0
    assert sorted(datasets.load_from_disk(str(out))) == ["train"]  # no stale validation split
    assert (out / "keypoint_info.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("hub.")]  # no staging folder left behind


# ----------------------------------------------------------------------------------------------------------------
# Python API
# ----------------------------------------------------------------------------------------------------------------
def test_draw_accepts_the_processors_per_image_nesting(tmp_path):
    model = ViTPoseForPoseEstimation(tiny_config()).eval()
    processor = ViTPoseImageProcessor(size={"height": 64, "width": 48})
    image = np.asarray(PIL.Image.open(photo(tmp_path / "a.png", (96, 128))))
    inputs = processor(image, boxes=[[10, 20, 60, 90]], box_format="xyxy")
    with torch.no_grad():
        outputs = model(inputs["pixel_values"])
    per_image = processor.post_process_pose_estimation(outputs, crop_metadata=inputs)
    assert len(per_image) == 1
    flat = np.asarray(draw(image, per_image[0], dataset="coco", score_threshold=0.0))
    nested = np.asarray(draw(image, per_image, dataset="coco", score_threshold=0.0))
    np.testing.assert_array_equal(nested, flat)
    assert (flat != image).any()  # something was drawn
    with pytest.raises(ValueError, match="results of 2 images; draw one image at a time"):
        draw(image, [per_image[0], per_image[0]])


def test_model_inputs_numpy_and_other_float_dtypes():
    torch.manual_seed(0)
    model = ViTPoseForPoseEstimation(tiny_config()).eval()
    pixels = torch.randn(2, 3, 64, 48)
    with pytest.raises(TypeError, match="torch.from_numpy"):
        model(pixels.numpy())
    with torch.no_grad():
        reference = model(pixels).heatmaps
        for dtype in (torch.float64, torch.float16, torch.bfloat16):
            got = model(pixels.to(dtype)).heatmaps  # cast to the model's dtype, not an error
            assert got.dtype == torch.float32
            rounded = model(pixels.to(dtype).float()).heatmaps
            torch.testing.assert_close(got, rounded, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(model(pixels.double()).heatmaps, reference, atol=1e-6, rtol=1e-5)


def test_a_truncated_image_and_an_unreachable_url_are_named(tmp_path):
    whole = photo(tmp_path / "whole.png", size=(256, 256))
    data = whole.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    lazy = PIL.Image.open(cut)  # opening reads the header only; the pixels fail later
    with pytest.raises(ValueError, match="cut.png"):
        to_rgb_tensors(lazy)
    with pytest.raises(ValueError, match="cut.png"):
        load_image(cut)
    url = "http://127.0.0.1:9/photo.jpg"  # the discard port: the connection is refused at once
    with pytest.raises(ValueError, match=r"cannot fetch the image URL 'http://127\.0\.0\.1:9/photo\.jpg'"):
        load_image(url, timeout=5)


# ----------------------------------------------------------------------------------------------------------------
# Fresh machines
# ----------------------------------------------------------------------------------------------------------------
def test_tests_that_need_the_photos_skip_with_one_line_without_them(tmp_path):
    env = {
        **os.environ,
        "VITPOSE_HF_SHARED_DATA": str(tmp_path / "no-data-here"),
        "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    test = "tests/test_images.py::test_rgb_pil_is_not_copied_and_arrays_are_read_only"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", test],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    assert "1 skipped" in done.stdout
    assert f"needs the shared test data: {tmp_path / 'no-data-here'} does not exist" in done.stdout
    assert "VITPOSE_HF_SHARED_DATA" in done.stdout


def test_benchmark_rows_come_one_by_one_as_measured():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_processor", REPO / "benchmarks" / "bench_processor.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.run_cases(1)
    name, ours, theirs = next(rows)  # the first row is there before the others are measured
    assert name.startswith("preprocess") and ours > 0 and theirs > 0
    assert [row[0] for row in rows] == ["post-process 10 people (17x64x48)", "post-process 100 people (17x64x48)"]
