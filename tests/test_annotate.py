"""`vitpose-hf annotate`: real COCO photos through a tiny local checkpoint into Parquet shards, on 1 and 2 processes,
killed and resumed, with boxes from a column or a COCO detections file, and bad inputs.

References: the boxes, ids and sizes come from the COCO json files read here with `json`; keypoints are compared
with a direct pipeline call on the image files (read by PIL, not by `datasets`); the shard assignment with the
formula written here. The Hub upload is checked only at the `huggingface_hub.HfApi` boundary (offline).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")

from vitpose_hf.annotation.shards import ShardPlan  # noqa: E402
from vitpose_hf.cli import annotate as annotate_cli  # noqa: E402

from helpers import peaked_model, tiny_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARD_SIZE = 3  # 8 rows -> shards of rows 0-2, 3-5, 6-7


def _coco_records(shared: Path) -> list[dict]:
    """The 4 mmpose COCO images and the first 4 pose_minicoco val images (one without people), with their boxes."""
    records = []
    for folder, annotation_file, count in (
        (shared / "mmpose" / "coco", shared / "mmpose" / "coco" / "test_coco.json", 4),
        (
            shared / "super-gradients" / "pose_minicoco" / "images" / "val2017",
            shared / "super-gradients" / "pose_minicoco" / "annotations" / "person_keypoints_val2017.json",
            4,
        ),
    ):
        coco = json.loads(annotation_file.read_text())
        for image in coco["images"][:count]:
            boxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] == image["id"] and not a["iscrowd"]]
            records.append(
                {
                    "path": folder / image["file_name"],
                    "image_id": image["id"],
                    "file_name": image["file_name"],
                    "width": image["width"],
                    "height": image["height"],
                    "boxes": boxes,
                }
            )
    return records


def _save_dataset(records: list[dict], folder: Path) -> Path:
    columns = {
        "image": [str(r["path"]) for r in records],
        "image_id": [r["image_id"] for r in records],
        "file_name": [r["file_name"] for r in records],
        "boxes": [r["boxes"] for r in records],
    }
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("int64"),
            "file_name": datasets.Value("string"),
            "boxes": datasets.List(datasets.List(datasets.Value("float64"))),
        }
    )
    datasets.Dataset.from_dict(columns, features=features).save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def work(tmp_path_factory, shared_data):
    import torch

    root = tmp_path_factory.mktemp("annotate")
    records = _coco_records(shared_data)
    dataset = _save_dataset(records, root / "dataset")
    model, _ = peaked_model(tiny_config(decoder="simple"))  # clear heatmap peaks: no near-ties that rounding could flip
    torch.manual_seed(0)
    model.save_pretrained(str(root / "model"))
    return {"root": root, "records": records, "dataset": dataset, "model": root / "model"}


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    annotate_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def _cli(work, source, out, *extra: str) -> argparse.Namespace:
    """Arguments of a run on `source` with the tiny checkpoint, without progress output."""
    return _args(str(source), "--model", str(work["model"]), "--output-dir", str(out), "--no-progress", *extra)


def _base(work, out: Path, *extra: str) -> list[str]:
    return [
        str(work["dataset"]),
        "--model",
        str(work["model"]),
        "--box-column",
        "boxes",
        "--output-dir",
        str(out),
        "--shard-size",
        str(SHARD_SIZE),
        "--images-per-call",
        "2",
        "--no-progress",
        *extra,
    ]


def _load(out: Path):
    # the shard files sort in row order: the loaded rows are in input order, as the tests check via `index`
    return datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train")


@pytest.fixture(scope="module")
def single_run(work):
    out = work["root"] / "single"
    assert annotate_cli.run(_args(*_base(work, out))) == 0
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }


def _module_command() -> list[str]:
    """`-m vitpose_hf.cli annotate` once the command is registered in COMMANDS, `-m vitpose_hf.cli.annotate` before."""
    from vitpose_hf.cli import COMMANDS

    return ["vitpose_hf.cli", "annotate"] if "annotate" in COMMANDS else ["vitpose_hf.cli.annotate"]


def test_wiring_annotate_command_is_registered():
    from vitpose_hf.cli import COMMANDS, main

    if "annotate" not in COMMANDS:
        pytest.skip("`annotate` is added to vitpose_hf.cli.COMMANDS at merge (see notes/h13a-wiring.md)")
    assert COMMANDS["annotate"][0] == "vitpose_hf.cli.annotate"
    with pytest.raises(SystemExit) as exit_info:
        main(["annotate", "--help"])
    assert exit_info.value.code == 0


def _assert_same_rows(a, b) -> None:
    assert len(a) == len(b)
    for column in ("index", "image_id", "file_name", "width", "height", "num_people", "boxes", "dataset", "model"):
        assert a[column] == b[column], column
    for ra, rb in zip(a, b):
        np.testing.assert_allclose(
            np.asarray(ra["keypoints"]).reshape(-1), np.asarray(rb["keypoints"]).reshape(-1), atol=1e-3
        )
        np.testing.assert_allclose(
            np.asarray(ra["keypoint_scores"]).reshape(-1), np.asarray(rb["keypoint_scores"]).reshape(-1), atol=1e-4
        )


# ----------------------------------------------------------------------------------------------------------------
# The shard plan
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_rows,shard_size,processes", [(8, 3, 2), (10, 1, 3), (0, 5, 2), (7, 100, 4), (9, 3, 3)])
def test_shard_plan_covers_every_row_once_and_assigns_round_robin(num_rows, shard_size, processes):
    plan = ShardPlan(num_rows, shard_size)
    seen = []
    for p in range(processes):
        for shard in plan.shards_of(p, processes):
            assert shard % processes == p
            rows = plan.rows(shard)
            assert rows == range(shard * shard_size, min((shard + 1) * shard_size, num_rows))
            seen.extend(rows)
    assert sorted(seen) == list(range(num_rows))
    assert plan.num_shards == max(1, (num_rows + shard_size - 1) // shard_size)


# ----------------------------------------------------------------------------------------------------------------
# Single process: the rows against the COCO json and a direct pipeline call
# ----------------------------------------------------------------------------------------------------------------
def test_single_process_rows_match_the_coco_files_and_the_pipeline(work, single_run):
    from vitpose_hf.images import load_image
    from vitpose_hf.inference.pipeline import pipeline

    ds = _load(single_run)
    records = work["records"]
    assert ds["index"] == list(range(len(records)))
    assert ds["image_id"] == [r["image_id"] for r in records]
    assert ds["file_name"] == [r["file_name"] for r in records]
    assert ds["width"] == [r["width"] for r in records] and ds["height"] == [r["height"] for r in records]
    assert ds["num_people"] == [len(r["boxes"]) for r in records]
    assert 0 in ds["num_people"]  # the photo without people is a row with no people, not a skip
    for row, record in zip(ds, records):
        np.testing.assert_array_equal(
            np.asarray(row["boxes"]).reshape(-1, 4), np.asarray(record["boxes"]).reshape(-1, 4)
        )
    assert set(ds["dataset"]) == {"coco"} and set(ds["model"]) == {str(work["model"])}
    assert all(len(person) == 17 for row in ds["keypoints"] for person in row)

    pipe = pipeline(str(work["model"]), device="cpu")
    direct = pipe([load_image(r["path"]) for r in records], boxes=[r["boxes"] for r in records])
    for row, people in zip(ds, direct):
        expected = np.array([[[k["x"], k["y"]] for k in p["keypoints"]] for p in people]).reshape(-1)
        np.testing.assert_allclose(np.asarray(row["keypoints"]).reshape(-1), expected, atol=1e-3)

    summary = json.loads((single_run / "annotate_state" / "summary.json").read_text())
    assert summary["images"] == len(records) and summary["skipped"] == [] and summary["shards"] == 3
    assert summary["people"] == sum(len(r["boxes"]) for r in records)
    card = datasets.load_dataset(str(single_run), split="train")  # the written dataset card points at data/
    assert len(card) == len(records)


# ----------------------------------------------------------------------------------------------------------------
# Scale-out: two gloo CPU processes
# ----------------------------------------------------------------------------------------------------------------
def test_two_processes_with_accelerate_equal_a_single_process_run(work, single_run):
    out = work["root"] / "two"
    # without GPUs, --multi_gpu is accelerate's multi-process launcher and the processes use gloo on the CPU
    launch = "launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no"
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    port = ["--main_process_port", str(_free_port())]
    cmd = [accelerate, *launch.split(), *port, "-m", *_module_command(), *_base(work, out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=240, cwd=REPO)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert proc.stdout.count("image(s),") == 1  # one summary, from the main process
    writers = {}
    for marker in sorted((out / "annotate_state").glob("shard-*.json")):
        data = json.loads(marker.read_text())
        writers[data["shard"]] = data["process"]
    assert writers == {0: 0, 1: 1, 2: 0}  # shard i by process i % 2
    _assert_same_rows(_load(out), _load(single_run))


# ----------------------------------------------------------------------------------------------------------------
# Resume
# ----------------------------------------------------------------------------------------------------------------
def test_killed_after_its_first_shard_resumes_to_the_same_dataset(work, single_run):
    out = work["root"] / "killed"
    driver = textwrap.dedent(
        f"""
        import os, signal, sys
        from vitpose_hf.cli import annotate
        parser = annotate.argparse.ArgumentParser()
        annotate.add_arguments(parser)
        args = parser.parse_args({_base(work, out)!r})
        annotate.run(args, on_shard_written=lambda shard: os.kill(os.getpid(), signal.SIGKILL))
        """
    )
    proc = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, env=_env(), timeout=180)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert sorted(p.name for p in (out / "data").iterdir()) == ["shard-00000-of-00003.parquet"]
    first = (out / "data" / "shard-00000-of-00003.parquet").stat()
    # what a kill in the middle of a write leaves: a partial temporary file (never under data/)
    (out / "annotate_state" / "tmp" / "shard-00001-of-00003.parquet.999.tmp").write_bytes(b"PAR1 partial")

    # other arguments are refused, naming what changed, and touch nothing
    assert annotate_cli.run(_args(*_base(work, out, "--flip-test"))) == 2
    assert sorted(p.name for p in (out / "data").iterdir()) == ["shard-00000-of-00003.parquet"]

    assert annotate_cli.run(_args(*_base(work, out))) == 0
    assert (out / "data" / "shard-00000-of-00003.parquet").stat().st_mtime_ns == first.st_mtime_ns  # kept, not redone
    assert not any((out / "annotate_state" / "tmp").iterdir())
    resumed = _load(out)
    assert len(set(resumed["index"])) == len(resumed)  # no duplicates
    _assert_same_rows(resumed, _load(single_run))


def test_resume_with_other_arguments_is_refused_with_a_clear_error(work, single_run, capsys):
    out = work["root"] / "changed"
    shutil.copytree(single_run, out)
    assert annotate_cli.run(_args(*_base(work, out, "--shard-size", "2"))) == 2
    err = capsys.readouterr().err
    assert "other arguments" in err and "shard_size" in err and "--overwrite" in err
    assert annotate_cli.run(_args(*_base(work, out, "--shard-size", "2", "--overwrite"))) == 0
    assert len(list((out / "data").glob("*.parquet"))) == 4
    _assert_same_rows(_load(out), _load(single_run))


# ----------------------------------------------------------------------------------------------------------------
# A COCO detections file as the box source
# ----------------------------------------------------------------------------------------------------------------
def _expected_detections(shared: Path, threshold: float) -> dict[int, list]:
    detections = json.loads((shared / "mmpose" / "coco" / "test_coco_det_AP_H_56.json").read_text())
    expected: dict[int, list] = {}
    for d in detections:
        if d["category_id"] == 1 and d["score"] >= threshold:
            expected.setdefault(d["image_id"], []).append((d["bbox"], d["score"]))
    return expected


@pytest.mark.parametrize("source", ["imagefolder", "id_column"])
def test_coco_detections_file_gives_each_image_its_boxes(work, shared_data, source):
    detections = shared_data / "mmpose" / "coco" / "test_coco_det_AP_H_56.json"
    coco_records = work["records"][:4]
    if source == "imagefolder":  # matched by file name (000000000785.jpg -> image id 785)
        folder = work["root"] / "folder"
        if not folder.exists():
            folder.mkdir()
            for r in coco_records:
                shutil.copy(r["path"], folder / r["file_name"])
        input_, out = folder, work["root"] / "det_folder"
    else:  # matched by the image_id column: the file names say nothing
        renamed = [{**r, "file_name": f"photo_{i}.jpg"} for i, r in enumerate(coco_records)]
        input_, out = _save_dataset(renamed, work["root"] / "renamed"), work["root"] / "det_ids"
    argv = _cli(work, str(input_), str(out), "--boxes", str(detections), "--box-threshold", "0.5")
    assert annotate_cli.run(argv) == 0
    ds = _load(out)
    expected = _expected_detections(shared_data, 0.5)
    assert len(ds) == 4
    for row, record in zip(ds, coco_records):
        want = expected.get(record["image_id"], [])
        assert row["num_people"] == len(want) > 0
        np.testing.assert_array_equal(np.asarray(row["boxes"]), np.asarray([b for b, _ in want]))
        np.testing.assert_allclose(row["box_scores"], [s for _, s in want], rtol=1e-6)
    summary = json.loads((out / "annotate_state" / "summary.json").read_text())
    assert summary["unmatched"] == 0 and summary["people"] == sum(len(v) for v in expected.values())


# ----------------------------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------------------------
def _plain_dataset(folder: Path, columns: dict, features: dict) -> Path:
    datasets.Dataset.from_dict(columns, features=datasets.Features(features)).save_to_disk(str(folder))
    return folder


def test_box_column_of_the_wrong_shape_is_a_clear_error(work, capsys):
    records = work["records"][:2]
    image = {"image": datasets.Image()}
    flat = _plain_dataset(  # one flat box per row, not a list of boxes
        work["root"] / "flat",
        {"image": [str(r["path"]) for r in records], "boxes": [r["boxes"][0] for r in records]},
        {**image, "boxes": datasets.List(datasets.Value("float64"))},
    )
    out = work["root"] / "flat_out"
    argv = _cli(work, str(flat), str(out), "--box-column", "boxes")
    assert annotate_cli.run(argv) == 2
    err = capsys.readouterr().err
    assert "--box-column 'boxes'" in err and "list of boxes per row" in err and "[[x, y, w, h]]" in err
    assert not (out / "data").exists()  # refused before any work

    five = _plain_dataset(  # row 1 holds a box of 5 numbers
        work["root"] / "five",
        {"image": [str(r["path"]) for r in records], "boxes": [records[0]["boxes"], [[1.0, 2.0, 3.0, 4.0, 5.0]]]},
        {**image, "boxes": datasets.List(datasets.List(datasets.Value("float64")))},
    )
    argv = _cli(work, str(five), str(work["root"] / "five_out"), "--box-column", "boxes")
    assert annotate_cli.run(argv) == 2
    err = capsys.readouterr().err
    assert "row 1" in err and "(N, 4)" in err

    missing = _cli(work, str(five), str(work["root"] / "missing_out"), "--box-column", "bbox")
    assert annotate_cli.run(missing) == 2
    assert "'bbox' is not a column" in capsys.readouterr().err


def test_dataset_without_an_image_column_is_a_clear_error(work, capsys):
    folder = _plain_dataset(
        work["root"] / "no_image",
        {"file_name": ["a.jpg"], "boxes": [[[0.0, 0.0, 10.0, 10.0]]]},
        {"file_name": datasets.Value("string"), "boxes": datasets.List(datasets.List(datasets.Value("float64")))},
    )
    argv = _cli(work, str(folder), str(work["root"] / "no_image_out"))
    assert annotate_cli.run(argv) == 2
    err = capsys.readouterr().err
    assert "no image column" in err and "file_name" in err and "--image-column" in err


def test_unreadable_images_are_counted_skips_never_rows(work, capsys):
    records = work["records"][:3]
    broken = {"bytes": b"this is not a JPEG", "path": "broken.jpg"}
    rows = [str(records[0]["path"]), broken, str(records[1]["path"]), str(records[2]["path"])]
    folder = _plain_dataset(
        work["root"] / "broken",
        {
            "image": rows,
            "image_id": [records[0]["image_id"], 999, records[1]["image_id"], records[2]["image_id"]],
            "boxes": [records[0]["boxes"], [[0.0, 0.0, 5.0, 5.0]], records[1]["boxes"], records[2]["boxes"]],
        },
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("int64"),
            "boxes": datasets.List(datasets.List(datasets.Value("float64"))),
        },
    )
    out = work["root"] / "broken_out"
    argv = _cli(work, str(folder), str(out), "--box-column", "boxes", "--shard-size", "2")
    assert annotate_cli.run(argv) == 0
    printed = capsys.readouterr().out
    assert "1 unreadable image(s) skipped" in printed and "skipped row 1" in printed
    ds = _load(out)
    assert ds["index"] == [0, 2, 3] and 999 not in ds["image_id"]
    assert ds["num_people"] == [len(r["boxes"]) for r in records]
    summary = json.loads((out / "annotate_state" / "summary.json").read_text())
    assert [(s["index"], s["image_id"], s["file_name"]) for s in summary["skipped"]] == [(1, 999, "broken.jpg")]
    assert "cannot read the image" in summary["skipped"][0]["reason"]

    # an image folder with a truncated file: the same counted skip
    images = work["root"] / "broken_folder"
    images.mkdir()
    shutil.copy(records[0]["path"], images / "a.jpg")
    (images / "b.jpg").write_bytes(Path(records[1]["path"]).read_bytes()[:200])
    out2 = work["root"] / "broken_folder_out"
    argv = _cli(work, str(images), str(out2))
    assert annotate_cli.run(argv) == 0
    ds2 = _load(out2)
    assert ds2["file_name"] == ["a.jpg"] and ds2["num_people"] == [1]  # no boxes: the whole image is one box
    summary2 = json.loads((out2 / "annotate_state" / "summary.json").read_text())
    assert [s["file_name"] for s in summary2["skipped"]] == ["b.jpg"]


# ----------------------------------------------------------------------------------------------------------------
# The Hub upload, at the HfApi boundary (no network)
# ----------------------------------------------------------------------------------------------------------------
def test_wiring_push_to_hub_uploads_the_parquet_shards_and_card(work, single_run, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/datasets/{repo_id}"

    def upload_folder(self, **kwargs):
        calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        root = Path(kwargs["folder_path"])
        uploaded = sorted(str(p.relative_to(root)) for pattern in kwargs["allow_patterns"] for p in root.glob(pattern))
        calls.append(("files", uploaded))

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    out = work["root"] / "pushed"
    shutil.copytree(single_run, out)
    assert annotate_cli.run(_args(*_base(work, out, "--push-to-hub", "someone/poses", "--private"))) == 0
    assert calls[0][0] == "create_repo" and calls[0][2]["repo_type"] == "dataset" and calls[0][2]["private"]
    assert calls[1][0] == "upload_folder" and calls[1][2]["repo_type"] == "dataset"
    assert calls[2] == ("files", ["README.md"] + [f"data/shard-0000{i}-of-00003.parquet" for i in range(3)])
    assert "pushed to https://huggingface.co/datasets/someone/poses" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------------
# Other sources: a detector, a column of relative paths; an empty selection
# ----------------------------------------------------------------------------------------------------------------
def test_detector_boxes_are_used_and_reported_with_their_scores_and_labels(work):
    records = work["records"][:4]  # the four mmpose photos have distinct sizes: the detector finds them by size
    by_size = {(r["width"], r["height"]): r for r in records}
    seen = []

    def detector(images):
        out = []
        for image in images:
            record = by_size[image.size]
            seen.append(record["file_name"])
            out.append(
                [
                    {"box": [x, y, x + w, y + h], "score": 0.9 - 0.1 * k, "label": "person"}
                    for k, (x, y, w, h) in enumerate(record["boxes"])
                ]
                + [{"box": [0, 0, 5, 5], "score": 0.99, "label": "dog"}]  # not a person: dropped
            )
        return out

    args = _cli(work, work["dataset"], work["root"] / "detector", "--max-samples", "4")
    args.detector = detector  # the Python API takes any detector the pipeline takes
    assert annotate_cli.run(args) == 0
    assert sorted(seen) == sorted(r["file_name"] for r in records)
    ds = _load(work["root"] / "detector")
    for row, record in zip(ds, records):
        np.testing.assert_allclose(np.asarray(row["boxes"]), np.asarray(record["boxes"]), atol=1e-9)
        np.testing.assert_allclose(row["box_scores"], [0.9 - 0.1 * k for k in range(len(record["boxes"]))], atol=1e-6)
        assert row["box_labels"] == ["person"] * len(record["boxes"])


def test_string_path_column_with_an_image_root(work, shared_data):
    records = work["records"][:2]
    folder = _plain_dataset(
        work["root"] / "paths",
        {"picture": [r["file_name"] for r in records], "boxes": [r["boxes"] for r in records]},
        {"picture": datasets.Value("string"), "boxes": datasets.List(datasets.List(datasets.Value("float64")))},
    )
    out = work["root"] / "paths_out"
    argv = _cli(
        work,
        str(folder),
        str(out),
        "--image-column",
        "picture",
        "--image-root",
        str(shared_data / "mmpose" / "coco"),
        "--box-column",
        "boxes",
    )
    assert annotate_cli.run(argv) == 0
    ds = _load(out)
    assert ds["file_name"] == [r["file_name"] for r in records]
    assert ds["width"] == [r["width"] for r in records] and ds["num_people"] == [len(r["boxes"]) for r in records]


def test_empty_selection_and_all_skipped_shard_give_empty_results(work):
    import pyarrow.parquet as pq

    out = work["root"] / "empty"
    assert annotate_cli.run(_args(*_base(work, out, "--max-samples", "0"))) == 0
    table = pq.read_table(out / "data" / "shard-00000-of-00001.parquet")  # (`datasets` refuses a 0-row split)
    assert table.num_rows == 0 and "keypoints" in table.column_names

    broken = {"bytes": b"not an image", "path": "x.jpg"}
    first = work["records"][0]
    folder = _plain_dataset(
        work["root"] / "all_broken_shard",
        {"image": [broken, broken, str(first["path"])], "boxes": [[], [], first["boxes"]]},
        {"image": datasets.Image(), "boxes": datasets.List(datasets.List(datasets.Value("float64")))},
    )
    out = work["root"] / "all_broken_shard_out"
    argv = _cli(work, str(folder), str(out), "--box-column", "boxes", "--shard-size", "2")
    assert annotate_cli.run(argv) == 0
    ds = _load(out)  # shard 0 holds no rows; the dataset loads with the one good row
    assert ds["index"] == [2] and ds["num_people"] == [len(first["boxes"])]


def test_xyxy_box_column_with_scores_and_a_threshold(work, single_run):
    records = work["records"]
    xyxy = [[[x, y, x + w, y + h] for x, y, w, h in r["boxes"]] for r in records]  # converted here, by hand
    scores = [[0.9 if k % 2 == 0 else 0.2 for k in range(len(r["boxes"]))] for r in records]
    folder = _plain_dataset(
        work["root"] / "xyxy",
        {"image": [str(r["path"]) for r in records], "corners": xyxy, "conf": scores},
        {
            "image": datasets.Image(),
            "corners": datasets.List(datasets.List(datasets.Value("float64"))),
            "conf": datasets.List(datasets.Value("float32")),
        },
    )
    out = work["root"] / "xyxy_out"
    extra = ["--box-column", "corners", "--box-format", "xyxy", "--box-score-column", "conf", "--box-threshold", "0.5"]
    assert annotate_cli.run(_cli(work, folder, out, *extra)) == 0
    for row, ref, conf in zip(_load(out), _load(single_run), scores):
        keep = [k for k, c in enumerate(conf) if c >= 0.5]  # every other box
        assert row["num_people"] == len(keep) and row["box_scores"] == pytest.approx([conf[k] for k in keep])
        np.testing.assert_allclose(
            np.asarray(row["boxes"]).reshape(-1, 4), np.asarray(ref["boxes"])[keep].reshape(-1, 4)
        )
        np.testing.assert_allclose(
            np.asarray(row["keypoints"]).reshape(-1), np.asarray(ref["keypoints"])[keep].reshape(-1), atol=1e-3
        )


def test_bad_arguments_are_clear_errors(work, capsys):
    missing = work["root"] / "no_such_folder"
    assert annotate_cli.run(_cli(work, f"./{missing.relative_to(missing.anchor)}x/y", work["root"] / "o1")) == 2
    assert "no such dataset folder" in capsys.readouterr().err
    two = _cli(work, work["dataset"], work["root"] / "o2", "--box-column", "boxes", "--boxes", "b.json")
    assert annotate_cli.run(two) == 2
    assert "one box source" in capsys.readouterr().err
    assert annotate_cli.run(_cli(work, work["dataset"], work["root"] / "o3", "--shard-size", "0")) == 2
    assert "--shard-size must be at least 1" in capsys.readouterr().err


def test_project_hub_schema_boxes_from_a_struct_list_field(work, shared_data):
    from vitpose_hf.data.hub_dataset import coco_to_dataset

    annotations = shared_data / "mmpose" / "coco" / "test_coco.json"
    dataset, _, _ = coco_to_dataset(annotations, cache_dir=work["root"] / "cache")
    folder = work["root"] / "hub_schema"
    dataset.save_to_disk(str(folder))
    out = work["root"] / "hub_schema_out"
    assert annotate_cli.run(_cli(work, folder, out, "--box-column", "objects.bbox")) == 0
    coco = json.loads(annotations.read_text())
    ds = _load(out)
    assert ds["image_id"] == [im["id"] for im in coco["images"]]
    for row, image in zip(ds, coco["images"]):
        want = [a["bbox"] for a in coco["annotations"] if a["image_id"] == image["id"]]
        np.testing.assert_allclose(np.asarray(row["boxes"]), np.asarray(want), rtol=1e-6)  # float32 in the schema


def test_progress_and_throughput_are_shown_unless_no_progress(work, capsys):
    argv = [str(work["dataset"]), "--model", str(work["model"]), "--box-column", "boxes", "--max-samples", "2"]
    parser = argparse.ArgumentParser()
    annotate_cli.add_arguments(parser)
    assert annotate_cli.run(parser.parse_args([*argv, "--output-dir", str(work["root"] / "loud")])) == 0
    err = capsys.readouterr().err
    assert "annotate 1/1" in err and "images_per_s" in err and "people_per_s" in err  # the bar and its rates
    assert "process 1/1: 2 images" in err and "images/s" in err and "people/s" in err  # the closing line
    assert annotate_cli.run(_cli(work, work["dataset"], work["root"] / "quiet", "--box-column", "boxes")) == 0
    err = capsys.readouterr().err
    assert "annotate 1/1" not in err and "images/s" not in err
