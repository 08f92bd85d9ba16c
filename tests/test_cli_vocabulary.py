"""Issue 16, the command line as a new user meets it: fast --help / --version, one vocabulary across the commands,
help text with defaults on every option, one-line errors that name the real cause."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from vitpose_hf import ViTPoseForPoseEstimation
from vitpose_hf.data.hub_dataset import write_layout
from vitpose_hf.keypoint_metadata import get_dataset_info
from vitpose_hf.testing import SYNTHETIC_FIGURE_LAYOUT, synthetic_keypoint_dataset
from vitpose_hf_cli import COMMANDS, build_command_parser, main

from helpers import tiny_config

SRC = Path(__file__).resolve().parents[1] / "src"


def run_cli(*argv: str) -> int:
    """`vitpose-hf ARGV` in this process."""
    return main(list(argv))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("vocab") / "model"
    ViTPoseForPoseEstimation(tiny_config()).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def figures(tmp_path_factory) -> Path:
    """A tiny Hub-format dataset folder with its own layout file (synthetic figures, 9 keypoints)."""
    folder = tmp_path_factory.mktemp("vocab") / "figures"
    train = synthetic_keypoint_dataset(num_images=8, seed=0)
    datasets.DatasetDict({"train": train}).save_to_disk(str(folder))
    write_layout(get_dataset_info(SYNTHETIC_FIGURE_LAYOUT), folder)
    return folder


# ----------------------------------------------------------------------------------------------------------------
# --help, --version
# ----------------------------------------------------------------------------------------------------------------
def test_help_and_version_import_neither_torch_nor_transformers():
    import vitpose_hf

    code = (
        "import sys, contextlib, io\n"
        "from vitpose_hf_cli import main\n"
        "for argv in (['--help'], ['--version']):\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit as exc:\n"
        "            assert exc.code == 0, exc.code\n"
        "    print(out.getvalue())\n"
        "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'vitpose_hf') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert "HEAVY []" in done.stdout  # the launcher imported nothing heavy
    for name in COMMANDS:
        assert name in done.stdout
    assert f"vitpose-hf {vitpose_hf.__version__}" in done.stdout


def test_every_option_of_every_command_has_help_text_and_its_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("--help")
    assert exit_info.value.code == 0
    assert "Run `vitpose-hf COMMAND --help`" in capsys.readouterr().out
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(name, "--help")
        assert exit_info.value.code == 0, name
        text = capsys.readouterr().out
        assert text.startswith(f"usage: vitpose-hf {name}")
        parser, _ = build_command_parser(name)
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            shown = formatter._expand_help(action) if action.option_strings else action.help
            where = f"{name} {action.option_strings or action.dest}"
            assert shown and shown.strip(), f"{where} has no help text"
            for option in action.option_strings:
                assert option in text, where
                assert "_" not in option, f"{where}: options are dashed"
            default = action.default
            if action.option_strings and default not in (None, False, [], argparse.SUPPRESS):
                if isinstance(default, (list, tuple)):
                    default = " ".join(map(str, default))
                assert "default" in shown and str(default) in shown, f"{where}: the help does not say its default"


def test_the_old_spellings_still_parse_but_are_not_shown(capsys):
    from vitpose_hf.training import train

    new = train.parse_args(["--model", "m", "--dataset-name", "d", "--output-dir", "o", "--warmup-start-factor", "0.1"])
    old = train.parse_args(
        ["--model_name_or_path", "m", "--dataset_name", "d", "--output_dir", "o", "--warmup_ratio", "0.1"]
    )
    assert vars(new) == vars(old)
    assert new.model_name_or_path == "m" and new.warmup_ratio == 0.1 and new.gradient_checkpointing is False
    assert train.parse_args(["--model", "m", "--dataset-name", "d", "--output-dir", "o", "--gradient-checkpointing"])
    parser, _ = build_command_parser("train")
    help_text = parser.format_help()
    assert "--model_name_or_path" not in help_text and "--warmup_ratio" not in help_text
    assert "NOT transformers' warmup_ratio" in " ".join(help_text.split())
    # the error for a missing required flag names the dashed spelling
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(["--model", "m", "--dataset-name", "d"])
    assert exit_info.value.code == 2
    assert "required: --output-dir" in capsys.readouterr().err

    eval_parser, _ = build_command_parser("eval")
    new = eval_parser.parse_args(["--model", "m", "--boxes", "b.json", "--box-threshold", "0.3", "--dtype", "float32"])
    old = eval_parser.parse_args(["m", "--bbox-file", "b.json", "--det-score-thr", "0.3", "--dtype", "fp32"])
    assert (new.bbox_file, new.det_score_thr, new.dtype) == (old.bbox_file, old.det_score_thr, old.dtype)
    assert (new.bbox_file, new.det_score_thr, new.dtype, old.model_path) == ("b.json", 0.3, "fp32", "m")
    assert "--bbox-file" not in eval_parser.format_help()


def test_dtype_dataset_and_box_format_share_one_vocabulary():
    predict, _ = build_command_parser("predict")
    evaluate, _ = build_command_parser("eval")
    for parser in (predict, evaluate):
        dtype = next(a for a in parser._actions if a.dest == "dtype")
        assert tuple(dtype.choices) == ("auto", "fp32", "bf16", "fp16")
        assert parser.parse_args(["--dataset", "3", "--dtype", "bfloat16"]).dataset == 3
        assert parser.parse_args(["--dataset", "ap10k"]).dataset == "ap10k"
    assert predict.parse_args(["--box-format", "XYXY"]).box_format == "xyxy"


def test_predict_picks_a_head_by_index(model_dir, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (48, 64), (120, 60, 30)).save(image)
    out = tmp_path / "r.json"
    assert (
        run_cli("predict", str(image), "--model", model_dir, "--dataset", "0", "--json", str(out), "--no-progress") == 0
    )
    assert json.loads(out.read_text())["dataset"] == "coco"
    assert run_cli("predict", str(image), "--model", model_dir, "--dataset", "3", "--no-progress") == 2
    assert "dataset index 3 is out of range" in one_error_line(capsys, "predict")


# ----------------------------------------------------------------------------------------------------------------
# One-line errors
# ----------------------------------------------------------------------------------------------------------------
def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error printed"
    assert err[-1].startswith(f"vitpose-hf {command}: error: "), err
    assert not any("Traceback" in line for line in err)
    return err[-1]


def test_a_missing_local_model_says_no_such_folder_not_the_hub(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert run_cli("predict", "--model", "./does-not-exist", "--no-progress") == 2
    line = one_error_line(capsys, "predict")
    assert "'./does-not-exist': no such file or folder" in line and "Hub (" not in line
    assert run_cli("convert", str(tmp_path / "missing.pth"), str(tmp_path / "out")) == 2
    assert "no such file or folder" in one_error_line(capsys, "convert")
    assert run_cli("train", "--model-size", "s", "--dataset-name", "./missing", "--output-dir", str(tmp_path)) == 2
    assert "--dataset-name './missing': no such file or folder" in one_error_line(capsys, "train")


def test_offline_hub_names_get_the_same_message_everywhere(tmp_path, capsys, monkeypatch, figures):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "vitpose-hf-tests/not-a-cached-model"
    annotations = tmp_path / "gt.json"
    annotations.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    runs = {
        "convert": ["convert", "--model", name, "--output", str(tmp_path / "out")],
        "eval": ["eval", "--model", name, "--annotations", str(annotations), "--output", str(tmp_path / "r.json")],
        "train": ["train", "--model", name, "--dataset-name", str(figures), "--output-dir", str(tmp_path / "t")],
    }
    for command, argv in runs.items():
        assert run_cli(*argv) == 1, command
        line = one_error_line(capsys, command)
        assert "Hugging Face Hub" in line and "cannot be reached" in line and "--model /path/to/checkpoint" in line
    assert (
        run_cli("train", "--model-size", "s", "--dataset-name", "nobody/not-a-dataset", "--output-dir", str(tmp_path))
        == 1
    )
    line = one_error_line(capsys, "train")
    assert "cannot load the dataset 'nobody/not-a-dataset'" in line and "--dataset-name /path/to/dataset" in line


def test_convert_on_a_text_file_named_pth(tmp_path, capsys):
    fake = tmp_path / "weights.pth"
    fake.write_text("this is not a checkpoint\n")
    assert run_cli("convert", "--model", str(fake), "--output", str(tmp_path / "out")) == 2
    line = one_error_line(capsys, "convert")
    assert "is not a checkpoint that torch.load can read" in line and "weights.pth" in line
    assert not (tmp_path / "out").exists()


def test_eval_user_errors_are_one_line_and_found_before_the_model(tmp_path, capsys):
    never_loaded = str(tmp_path / "no-model-needed")  # a folder that does not exist: loading it would fail
    os.makedirs(never_loaded)
    images = tmp_path / "images"
    images.mkdir()
    gt = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
        "annotations": [{"id": 1, "image_id": 1, "bbox": [1, 1, 20, 20], "keypoints": [5, 5, 2] * 17, "area": 400}],
        "categories": [{"id": 1, "name": "person"}],
    }
    annotations = tmp_path / "gt.json"
    annotations.write_text(json.dumps(gt))
    base = ["eval", "--model", never_loaded, "--output", str(tmp_path / "r.json")]

    assert run_cli(*base) == 2
    assert "give exactly one data source: --annotations" in one_error_line(capsys, "eval")
    assert run_cli("eval", "--annotations", str(annotations)) == 2
    assert "give the model to evaluate: --model" in one_error_line(capsys, "eval")
    assert run_cli(*base, "--annotations", str(annotations), "--images", str(images)) == 2
    line = one_error_line(capsys, "eval")
    assert f"the image folder {str(images)!r}" in line and "holds none of the 1 annotated images" in line
    assert "'a.jpg'" in line

    from PIL import Image

    Image.new("RGB", (64, 48)).save(images / "a.jpg")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"a.jpg": [[1, 2, 3, 4]]}))
    assert run_cli(*base, "--annotations", str(annotations), "--images", str(images), "--boxes", str(boxes)) == 2
    line = one_error_line(capsys, "eval")
    assert "is a JSON object" in line and "COCO detection results" in line
    boxes.write_text(json.dumps(gt))
    assert run_cli(*base, "--annotations", str(annotations), "--images", str(images), "--boxes", str(boxes)) == 2
    assert "is a COCO annotation file (leave --boxes out" in one_error_line(capsys, "eval")


def test_eval_unknown_dataset_lists_the_heads_once(model_dir, tmp_path, capsys):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 48)).save(images / "a.jpg")
    gt = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
        "annotations": [],
        "categories": [{"id": 1, "name": "person"}],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    argv = ["eval", "--model", model_dir, "--annotations", str(tmp_path / "gt.json"), "--images", str(images)]
    assert run_cli(*argv, "--dataset", "aic", "--output", str(tmp_path / "r.json"), "--no-progress") == 2
    line = one_error_line(capsys, "eval")
    assert "unknown dataset 'aic'" in line and line.count("coco") == 1


def test_device_cuda_on_a_cpu_only_torch(model_dir, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.version, "cuda", None)  # a CPU-only build, whatever this machine has
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (48, 64)).save(image)
    assert run_cli("predict", str(image), "--model", model_dir, "--device", "cuda", "--no-progress") == 2
    line = one_error_line(capsys, "predict")
    assert "--device cuda: this torch build" in line and "has no CUDA support; use --device cpu" in line


def test_export_and_pretrain_mae_errors_are_one_line(model_dir, tmp_path, capsys):
    assert run_cli("export", "--model", model_dir) == 2
    assert "--model MODEL --output FILE" in one_error_line(capsys, "export")
    out = tmp_path / "m.onnx"
    out.write_text("already here")
    assert run_cli("export", "--model", model_dir, "--output", str(out), "--dtype", "float32") == 2
    assert "overwrite" in one_error_line(capsys, "export")
    argv = ["pretrain-mae", "--hidden-size", "32", "--dataset-name", "x", "--output-dir", str(tmp_path / "mae")]
    assert run_cli(*argv) == 2
    assert "give --model-size, or all of --hidden-size" in one_error_line(capsys, "pretrain-mae")


def test_train_refuses_a_layout_that_contradicts_the_datasets_own(figures, tmp_path, capsys):
    argv = ["train", "--model-size", "s", "--dataset-name", str(figures), "--output-dir", str(tmp_path / "o")]
    assert run_cli(*argv, "--dataset-layout", "coco") == 2
    line = one_error_line(capsys, "train")
    assert "--dataset-layout 'coco' (coco, 17 keypoints) differs from the layout stored with" in line
    assert "(synthetic_figure, 9 keypoints)" in line or "9 keypoints" in line
    assert "--force-layout" in line


# ----------------------------------------------------------------------------------------------------------------
# Long work shows progress
# ----------------------------------------------------------------------------------------------------------------
def train_in_process(*argv: str) -> int:
    """`vitpose-hf train` in this process (Accelerate keeps global state between runs: reset it)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return run_cli("train", *argv)


def test_train_shows_a_progress_bar_and_gradient_checkpointing_keeps_the_losses(figures, tmp_path, capsys):
    tiny = "hidden_size=32,num_hidden_layers=2,num_attention_heads=4,patch_size=8,deconv_channels=32"
    common = ["--model-size", "s", "--config-overrides", tiny, "--image-size", "64", "48", "--dataset-name"]
    common += [str(figures), "--max-train-steps", "3", "--dataloader-num-workers", "0", "--logging-steps", "1"]
    common += ["--per-device-train-batch-size", "4", "--drop-path-rate", "0", "--seed", "1"]
    assert train_in_process(*common, "--output-dir", str(tmp_path / "plain")) == 0
    err = capsys.readouterr().err
    assert "train:" in err and "3/3" in err and ("step/s" in err or "s/step" in err)  # tqdm: count, rate, ETA
    assert train_in_process(*common, "--output-dir", str(tmp_path / "ckpt"), "--gradient-checkpointing") == 0
    capsys.readouterr()
    assert train_in_process(*common, "--output-dir", str(tmp_path / "quiet"), "--no-progress") == 0
    assert "%|" not in capsys.readouterr().err  # no bar at all: neither ours nor transformers' shard writing

    def losses(name: str) -> list[float]:
        lines = (tmp_path / name / "train_log.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]

    plain, checkpointed = losses("plain"), losses("ckpt")
    assert len(plain) == 3
    # recomputing the activations in the backward pass changes memory, not the numbers
    assert plain == pytest.approx(checkpointed, rel=1e-4, abs=1e-7)
