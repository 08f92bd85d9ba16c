"""Hub dataset schema, COCO json conversion, instance explosion and bad-annotation handling (CPU, seconds)."""

from __future__ import annotations

import json
import logging
import math

import datasets
import numpy as np
import pytest
import torch

from vitpose_hf.data import hub_dataset as hub_dataset
from vitpose_hf.data.hub_dataset import (
    coco_to_dataset,
    explode_instances,
    infer_layout,
    keypoint_features,
    load_image_split,
)
from vitpose_hf.data.transforms import (
    AugmentConfig,
    StreamingTopDownDataset,
    StreamSource,
    TopDownCollator,
    TopDownTransform,
)
from vitpose_hf.testing import SYNTHETIC_FIGURE_LAYOUT, figure_template, synthetic_keypoint_dataset


def _json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _trainable(ann, image):
    """Independent statement of the instance rule: non-crowd, >= 1 labelled keypoint, clipped box of positive size."""
    kps = np.asarray(ann["keypoints"], dtype=float).reshape(-1, 3)
    if ann.get("iscrowd") or not (kps[:, 2] > 0).any():
        return False
    x, y, w, h = ann["bbox"]
    x1, y1 = max(0, x), max(0, y)
    x2 = min(image["width"] - 1, x1 + max(0, w - 1))
    y2 = min(image["height"] - 1, y1 + max(0, h - 1))
    return ann.get("area", 1) > 0 and x2 > x1 and y2 > y1


def test_schema_is_a_list_of_instances_per_image():
    features = keypoint_features()
    assert set(features) == {"image", "image_id", "file_name", "width", "height", "objects"}
    assert isinstance(features["image"], datasets.Image)
    obj = features["objects"]
    inner = obj.feature if hasattr(obj, "feature") else obj[0]
    assert set(inner) == {"id", "category_id", "bbox", "keypoints", "iscrowd", "area"}


def test_convert_real_coco_json_matches_the_json(shared_data, tmp_path):
    coco_dir = shared_data / "mmpose" / "coco"
    gt = _json(coco_dir / "test_coco.json")
    ds, info, counts = coco_to_dataset(coco_dir / "test_coco.json", coco_dir, cache_dir=tmp_path / "cache")
    assert info["name"] == "coco"  # inferred from the category's keypoint names
    assert ds.num_rows == len(gt["images"]) == 4
    assert counts["annotations"] == len(gt["annotations"]) == 14
    raw = ds.cast_column("image", datasets.Image(decode=False))
    by_id = {a["id"]: a for a in gt["annotations"]}
    for row, image in zip(raw, gt["images"]):
        assert row["image_id"] == image["id"] and (row["width"], row["height"]) == (image["width"], image["height"])
        assert row["image"]["bytes"] == (coco_dir / image["file_name"]).read_bytes()  # original bytes, no re-encode
        expected = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
        assert sorted(o["id"] for o in row["objects"]) == sorted(a["id"] for a in expected)
        for obj in row["objects"]:
            ann = by_id[obj["id"]]
            np.testing.assert_allclose(obj["bbox"], ann["bbox"], rtol=1e-6)
            np.testing.assert_allclose(np.asarray(obj["keypoints"]).reshape(-1), ann["keypoints"], rtol=1e-6)
            assert obj["iscrowd"] == ann["iscrowd"] and math.isclose(obj["area"], ann["area"], rel_tol=1e-6)
    # parquet round trip keeps the schema and the values
    ds.to_parquet(str(tmp_path / "coco.parquet"))
    back = datasets.Dataset.from_parquet(str(tmp_path / "coco.parquet"), cache_dir=str(tmp_path / "cache"))
    assert back.features == ds.features
    assert back.remove_columns("image")[:] == ds.remove_columns("image")[:]


def test_convert_cli_writes_splits_and_layout(shared_data, tmp_path):
    root = shared_data / "super-gradients" / "pose_minicoco"
    out = tmp_path / "hub"
    code = hub_dataset.main(
        [
            "--annotations",
            str(root / "annotations" / "person_keypoints_train2017.json"),
            "--images",
            str(root / "images" / "train2017"),
            "--split",
            "train",
            "--annotations",
            str(root / "annotations" / "person_keypoints_val2017.json"),
            "--images",
            str(root / "images" / "val2017"),
            "--split",
            "validation",
            "--output",
            str(out),
            "--cache_dir",
            str(tmp_path / "cache"),
        ]
    )
    assert code == 0
    loaded = datasets.load_from_disk(str(out))
    assert set(loaded) == {"train", "validation"}
    train_json = _json(root / "annotations" / "person_keypoints_train2017.json")
    assert loaded["train"].num_rows == len(train_json["images"]) == 19  # images without people are kept
    assert sum(len(o) for o in loaded["train"]["objects"]) == len(train_json["annotations"]) == 70
    assert hub_dataset.read_layout(out)["name"] == "coco"
    assert load_image_split(str(out), "validation").num_rows == 19
    assert load_image_split(str(out), "test") is None


def test_explode_instances_follows_the_top_down_rule(shared_data, tmp_path):
    root = shared_data / "super-gradients" / "pose_minicoco"
    gt = _json(root / "annotations" / "person_keypoints_train2017.json")
    images = {im["id"]: im for im in gt["images"]}
    expected = sorted(a["id"] for a in gt["annotations"] if _trainable(a, images[a["image_id"]]))
    ds, _, _ = coco_to_dataset(
        root / "annotations" / "person_keypoints_train2017.json",
        root / "images" / "train2017",
        cache_dir=tmp_path / "cache",
    )
    instances, counts = explode_instances(ds, 17)
    assert sorted(instances["instance_id"]) == expected and len(expected) == 42
    assert counts["crowd"] == 1 and counts["ok"] == 42
    assert sum(counts.values()) == len(gt["annotations"])
    # rows point back to the image of each instance
    for row, image_id in zip(instances["row"], instances["image_id"]):
        assert ds[row]["image_id"] == image_id


def test_bad_annotations_are_dropped_or_skipped_and_counted(shared_data, tmp_path, caplog):
    coco_dir = shared_data / "mmpose" / "coco"
    gt = _json(coco_dir / "test_coco.json")
    image = gt["images"][0]
    good = next(a for a in gt["annotations"] if a["image_id"] == image["id"] and a["num_keypoints"] > 0)

    def variant(new_id, **changes):
        ann = json.loads(json.dumps(good))
        ann.update(id=new_id, **changes)
        return ann

    kps = list(good["keypoints"])
    nan_kps = list(kps)
    nan_kps[0] = float("nan")
    outside = list(kps)
    labelled = next(i for i in range(17) if kps[3 * i + 2] > 0)
    outside[3 * labelled] = image["width"] + 50.0
    bad = [
        variant(9001, keypoints=nan_kps),  # NaN
        variant(9002, keypoints=outside),  # a labelled keypoint outside the image
        variant(9003, bbox=[good["bbox"][0], good["bbox"][1], 0.0, good["bbox"][3]], area=0.0),  # zero-area box
        variant(9004, keypoints=kps[: 14 * 3]),  # wrong K
    ]
    doc = {"images": [image], "annotations": [good] + bad, "categories": gt["categories"]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))  # json writes NaN as a bare NaN, as broken exports do
    caplog.set_level(logging.INFO, logger="vitpose_hf")
    ds, _, counts = coco_to_dataset(path, coco_dir, cache_dir=tmp_path / "cache")
    # unusable structure is dropped at conversion; valid-but-untrainable ground truth is kept for evaluation
    assert counts["non_finite"] == 1 and counts["wrong_num_keypoints"] == 1 and counts["annotations"] == 3
    instances, counts = explode_instances(ds, 17, name="bad-json")
    assert instances["instance_id"] == [good["id"]]
    assert counts["zero_area"] == 1 and counts["keypoints_outside_image"] == 1
    assert "skipped 2 bad annotations" in caplog.text and "keypoints_outside_image=1" in caplog.text

    # a dataset written by another tool may hold anything: the explosion never crashes
    objects = [
        {"id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "keypoints": [[5, 5, 2]] * 17, "iscrowd": 0, "area": 100},
        {
            "id": 2,
            "category_id": 1,
            "bbox": [0, 0, 10, float("nan")],
            "keypoints": [[5, 5, 2]] * 17,
            "iscrowd": 0,
            "area": 100,
        },
        {"id": 3, "category_id": 1, "bbox": [0, 0, 10, 10], "keypoints": [[5, 5, 2]] * 14, "iscrowd": 0, "area": 100},
        {
            "id": 4,
            "category_id": 1,
            "bbox": [0, 0, 10, 10],
            "keypoints": [[5, float("inf"), 2]] * 17,
            "iscrowd": 0,
            "area": None,
        },
        {"id": 5, "category_id": 1, "bbox": [0, 0, 10, 10], "keypoints": [[0, 0, 0]] * 17, "iscrowd": 0, "area": 100},
    ]
    raw = datasets.Dataset.from_list(
        [{"image": None, "image_id": 7, "file_name": "x.png", "width": 20, "height": 20, "objects": objects}],
        features=keypoint_features(),
    )
    instances, counts = explode_instances(raw, 17, name="odd")
    assert instances["instance_id"] == [1]
    assert counts == {"ok": 1, "non_finite": 2, "wrong_num_keypoints": 1, "no_keypoints": 1}


def test_infer_layout_builtin_and_custom(shared_data):
    assert infer_layout(_json(shared_data / "mmpose" / "ap10k" / "test_ap10k.json"))["name"] == "ap10k"
    custom = {
        "categories": [
            {
                "id": 1,
                "name": "robot",
                "keypoints": ["base", "Left Arm", "Right Arm", "l_foot", "r_foot"],
                "skeleton": [[1, 2], [1, 3], [2, 1]],
            }
        ]
    }
    info = infer_layout(custom)
    assert info["name"] == "robot" and info["num_keypoints"] == 5
    assert sorted(map(sorted, info["flip_pairs"])) == [[1, 2], [3, 4]]
    assert info["skeleton"] == [[0, 1], [0, 2]]  # 1-based -> 0-based, duplicate link dropped
    assert info["sigmas"] is None


def test_synthetic_figures_are_drawn_where_the_keypoints_are():
    ds = synthetic_keypoint_dataset(num_images=6, seed=3, max_figures=2)
    assert ds.features == keypoint_features()
    info = SYNTHETIC_FIGURE_LAYOUT
    for row in ds:
        pixels = np.asarray(row["image"].convert("RGB")).astype(int)
        for obj in row["objects"]:
            kps = np.asarray(obj["keypoints"])
            x, y, w, h = obj["bbox"]
            assert (
                (kps[:, 0] >= x).all()
                and (kps[:, 0] <= x + w).all()
                and (kps[:, 1] >= y).all()
                and (kps[:, 1] <= y + h).all()
            )
            # each keypoint is the centre of a disc: its pixel has the pair's colour (figures may overlap, so most)
            colours = {tuple(pixels[int(round(py)), int(round(px))]) for px, py, _ in kps}
            assert len(colours) >= 3
    # left/right pairs are mirrored: the "left" point lies on the image's right of its partner in the template
    template = figure_template(info)
    for a, b in info["flip_pairs"]:
        assert template[a, 0] == -template[b, 0] > 0


def test_streaming_reads_instances_in_worker_processes(tmp_path):
    dd = datasets.DatasetDict(train=synthetic_keypoint_dataset(num_images=12, seed=5))
    dd.save_to_disk(str(tmp_path / "syn"))
    stream = load_image_split(str(tmp_path / "syn"), "train", streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    transform = TopDownTransform(SYNTHETIC_FIGURE_LAYOUT, (64, 48), (32, 24), AugmentConfig())
    dataset = StreamingTopDownDataset([StreamSource("syn", stream, transform, 0)], seed=0, shuffle_buffer=4)
    loader = torch.utils.data.DataLoader(dataset, batch_size=5, num_workers=2, collate_fn=TopDownCollator(9))
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == 6:
            break
    assert batches[0]["pixel_values"].shape == (5, 3, 64, 48) and batches[0]["labels"].shape == (5, 9, 32, 24)
    assert all(torch.isfinite(b["pixel_values"]).all() for b in batches)


def test_half_body_on_coincident_keypoints_keeps_the_full_box():
    """Bug 8: when the half-body joints all sit on one point they have no extent; the sample must not fail (it was
    NaN crop points and a ValueError from `encode`). The region falls back to the whole box."""
    config = AugmentConfig(
        half_body_prob=1.0, center_jitter_prob=0.0, flip_prob=0.0, scale_factor=0.0, rotation_prob=0.0
    )
    transform = TopDownTransform("coco", (64, 48), (16, 12), config)
    image = np.random.default_rng(0).integers(0, 255, (120, 100, 3), dtype=np.uint8)
    box = [30.0, 30.0, 40.0, 60.0]  # xywh
    coincident = np.zeros((17, 3))
    coincident[:, :2], coincident[:, 2] = (50.0, 60.0), 2
    # official _xywh2cs: centre of the box, grown to the 48 / 64 aspect (w 40 -> 45), x 1.25 / 200
    center, scale = [50.0, 60.0], [45 * 1.25 / 200, 60 * 1.25 / 200]
    for seed in range(20):
        sample = transform(image, box, coincident, np.random.default_rng(seed))
        assert all(bool(torch.isfinite(value).all()) for value in sample.values() if value.is_floating_point())
        np.testing.assert_allclose(sample["center"].numpy(), center, rtol=1e-6)
        np.testing.assert_allclose(sample["scale"].numpy(), scale, rtol=1e-6)
        assert sample["target_weight"].tolist() == [1.0] * 17
    # joints with an extent still get the half-body region: 1.5 x the aspect-fixed extent of the chosen part
    spread = coincident.copy()
    spread[:, 0] += np.arange(17) * 2.0
    sample = transform(image, box, spread, np.random.default_rng(0))
    chosen = sample["scale"].numpy() * 200 / 1.5
    assert chosen[0] / chosen[1] == pytest.approx(48 / 64) and chosen[0] < 45
