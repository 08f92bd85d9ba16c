"""Bottom-up ViTPose: codec on real COCO ground truth, loss, model, processor geometry, errors and empty images."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools.coco import COCO

from vitpose_hf.codecs import AssociativeEmbedding
from vitpose_hf.configuration_vitpose_hf import ViTPoseBottomUpConfig, ViTPoseConfig
from vitpose_hf.evaluation.metrics import coco_keypoint_metrics, to_coco_results
from vitpose_hf.image_processing_vitpose_hf_bottom_up import ViTPoseBottomUpImageProcessor
from vitpose_hf.inference.bottom_up import BottomUpPoseEstimator, is_bottom_up_checkpoint
from vitpose_hf.keypoint_metadata import get_dataset_info
from vitpose_hf.modeling_vitpose_hf import ViTPoseForPoseEstimation
from vitpose_hf.modeling_vitpose_hf_bottom_up import (
    ViTPoseForBottomUpPoseEstimation,
    associative_embedding_loss,
    bottom_up_loss,
)
from vitpose_hf.training.bottom_up import BottomUpTargets, evaluate_bottom_up_on_coco, train_bottom_up

GT_FILES = [
    ("mmpose/coco/test_coco.json", "mmpose/coco"),
    (
        "super-gradients/pose_minicoco/annotations/person_keypoints_val2017.json",
        "super-gradients/pose_minicoco/images/val2017",
    ),
    (
        "super-gradients/pose_minicoco/annotations/person_keypoints_train2017.json",
        "super-gradients/pose_minicoco/images/train2017",
    ),
]
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, deconv_channels=16)


def _people(gt: dict, image_id: int) -> np.ndarray:
    anns = [
        a for a in gt["annotations"] if a["image_id"] == image_id and not a.get("iscrowd") and a["num_keypoints"] > 0
    ]
    return np.array([a["keypoints"] for a in anns], dtype=np.float64).reshape(len(anns), 17, 3)


def _to_input(points: np.ndarray, height: int, width: int, side: int) -> np.ndarray:
    """Independent statement of the resize: the longer side to `side`, pixel centres at +0.5."""
    r = side / max(height, width)
    return (points + 0.5) * r - 0.5


def _from_input(points: np.ndarray, height: int, width: int, side: int) -> np.ndarray:
    r = side / max(height, width)
    return (points + 0.5) / r - 0.5


def _maps(codec: AssociativeEmbedding, people: np.ndarray, height: int, width: int, side: int) -> SimpleNamespace:
    target = codec.encode_people(torch.from_numpy(_to_input(people[..., :2], height, width, side)), people[..., 2] > 0)
    return SimpleNamespace(heatmaps=target["heatmaps"].float()[None], tags=target["tags"].float()[None, :, None])


@pytest.mark.parametrize("gt_file,image_dir", GT_FILES)
def test_perfect_tags_on_real_coco_reach_oks_ap(shared_data, gt_file, image_dir):
    """GT -> heatmaps + ideal tags -> top-k, grouping, refinement -> image pixels: COCO AP (pycocotools) >= 0.95."""
    gt_path = shared_data / gt_file
    gt = json.loads(gt_path.read_text())
    processor = ViTPoseBottomUpImageProcessor()
    codec = processor.get_codec()
    poses, multi = [], 0
    for image in gt["images"]:
        people = _people(gt, image["id"])
        multi += len(people) > 1
        meta = {"matrix": processor.preprocess(str(shared_data / image_dir / image["file_name"]))["matrix"]}
        if not len(people):
            continue
        out = _maps(codec, people, image["height"], image["width"], 512)
        for person in processor.post_process_pose_estimation(out, meta)[0]:
            poses.append({**person, "image_id": image["id"]})
    assert multi >= 2, "the test needs multi-person images"
    metrics = coco_keypoint_metrics(str(gt_path), to_coco_results(poses))
    assert metrics["AP"] >= 0.95, metrics


def test_flip_and_multi_scale_test_map_back_to_the_image(shared_data):
    """Maps of the mirrored input (encoded from mirrored GT) and of a half-size input, merged by the processor,
    still decode to the GT (COCO AP >= 0.9): the flip-back (pairs from keypoint_metadata) and rescaling line up."""
    gt_path = shared_data / GT_FILES[0][0]
    gt = json.loads(gt_path.read_text())
    processor = ViTPoseBottomUpImageProcessor(scales=(1.0, 0.5), flip_test=True)
    flip = get_dataset_info("coco")["flip_pairs"]
    swap = list(range(17))
    for a, b in flip:
        swap[a], swap[b] = b, a
    poses = []
    for image in gt["images"]:
        people = _people(gt, image["id"])
        if not len(people):
            continue
        h, w = image["height"], image["width"]
        outs, flips = [], []
        for scale in processor.scales:
            side = processor.input_side(scale)
            codec = processor.get_codec(side)
            outs.append(_maps(codec, people, h, w, side))
            mirrored = people[:, swap].copy()
            mirrored[..., 0] = _from_input(side - 1 - _to_input(mirrored[..., 0], h, w, side), h, w, side)
            flips.append(_maps(codec, mirrored, h, w, side))
        meta = processor.preprocess(np.zeros((h, w, 3), np.uint8))
        for person in processor.post_process_pose_estimation(outs, meta, flip_outputs=flips)[0]:
            poses.append({**person, "image_id": image["id"]})
    metrics = coco_keypoint_metrics(str(gt_path), to_coco_results(poses))
    assert metrics["AP"] >= 0.9, metrics


def test_resize_and_pad_match_opencv():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(96, 128, 3), dtype=np.uint8)  # H 96, W 128 -> 48 x 64 in a 64 x 64 input
    processor = ViTPoseBottomUpImageProcessor(size=64)
    pixels = processor.preprocess(image)["pixel_values"][0]
    reference = cv2.resize(image.astype(np.float32), (64, 48), interpolation=cv2.INTER_LINEAR) / 255
    mean, std = np.array(processor.image_mean), np.array(processor.image_std)
    reference = torch.from_numpy(((reference - mean) / std).transpose(2, 0, 1)).float()
    torch.testing.assert_close(pixels[:, :47, :63], reference[:, :47, :63], atol=1e-4, rtol=0)
    assert pixels[:, 49:].abs().max() == 0  # padding is the mean colour


def test_ignore_mask_covers_unlabelled_people(shared_data):
    """People with no keypoint labels are masked by their segmentation (pycocotools annToMask as reference)."""
    gt_path = shared_data / GT_FILES[0][0]
    coco = COCO(str(gt_path))
    processor = ViTPoseBottomUpImageProcessor(size=256)
    targets = BottomUpTargets(processor, get_dataset_info("coco"))
    checked = 0
    for image_id, image in coco.imgs.items():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        unlabelled = [a for a in anns if a["num_keypoints"] == 0]
        if not unlabelled:
            continue
        picture = np.zeros((image["height"], image["width"], 3), np.uint8)
        sample = targets(picture, anns)
        ignore = np.zeros((image["height"], image["width"]), bool)
        for a in unlabelled:
            ignore |= coco.annToMask(a).astype(bool)
        hm = sample["masks"].shape[-1]
        step = 255 / (hm - 1)  # UDP: heatmap pixel i sits on input pixel i * (S - 1) / (h - 1)
        ys, xs = np.meshgrid(np.arange(hm) * step, np.arange(hm) * step, indexing="ij")
        col = np.round(_from_input(xs, image["height"], image["width"], 256)).astype(int)
        row = np.round(_from_input(ys, image["height"], image["width"], 256)).astype(int)
        inside = (col >= 0) & (col < image["width"]) & (row >= 0) & (row < image["height"])
        expected = np.zeros((hm, hm), bool)
        expected[inside] = ignore[row[inside], col[inside]]
        assert expected.any()
        np.testing.assert_array_equal(sample["masks"].numpy() == 0, expected)
        labelled = sum(a["num_keypoints"] > 0 for a in anns)
        assert int(sample["keypoint_indices"][..., 1].any(-1).sum()) <= labelled
        checked += 1
    assert checked


def test_loss_terms_against_a_direct_loop():
    torch.manual_seed(0)
    b, k, h, w, m = 2, 3, 6, 5, 4
    tags = torch.randn(b, k, 2, h, w)
    indices = torch.zeros(b, m, k, 2, dtype=torch.long)
    indices[..., 0] = torch.randint(0, h * w, (b, m, k))
    indices[0, :3, :, 1] = 1
    indices[0, 2, 1, 1] = 0  # one unlabelled keypoint
    indices[1, :1, :2, 1] = 1  # one person: no push term
    pull, push = associative_embedding_loss(tags, indices)
    pulls, pushes = [], []
    for i in range(b):
        means = []
        spreads = []
        for p in range(m):
            vals = [
                tags[i, j, :, indices[i, p, j, 0] // w, indices[i, p, j, 0] % w]
                for j in range(k)
                if indices[i, p, j, 1]
            ]
            if not vals:
                continue
            mean = torch.stack(vals).mean(0)
            means.append(mean)
            spreads.append(torch.stack([((v - mean) ** 2).sum() for v in vals]).mean())
        pulls.append(torch.stack(spreads).mean())
        n = len(means)
        total = sum(math.exp(-float(((means[a] - means[c]) ** 2).sum())) for a in range(n) for c in range(n) if a != c)
        pushes.append(total / max(n * (n - 1), 1) * 0.5)
    torch.testing.assert_close(pull, torch.stack(pulls).mean())
    torch.testing.assert_close(push, torch.tensor(pushes).mean().float())
    heat, target = torch.rand(b, k, h, w), torch.rand(b, k, h, w)
    mask = (torch.rand(b, h, w) > 0.3).float()
    terms = bottom_up_loss(heat, tags, target, mask, indices, (2.0, 0.5, 0.25))
    expected = 2.0 * (((heat - target) ** 2) * mask[:, None]).sum() / heat.numel()
    torch.testing.assert_close(terms["heatmap"], expected)
    torch.testing.assert_close(terms["loss"], expected + 0.5 * pull + 0.25 * push)


def test_from_top_down_resizes_the_position_table_and_keeps_heatmaps():
    torch.manual_seed(0)
    top_down = ViTPoseForPoseEstimation(ViTPoseConfig(**TINY)).eval()
    bottom_up = ViTPoseForBottomUpPoseEstimation.from_top_down(top_down, image_size=(128, 128)).eval()
    table = top_down.backbone.pos_embed[:, 1:].reshape(1, 16, 12, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(table, size=(8, 8), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(bottom_up.backbone.pos_embed[:, 1:], expected)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        reference = top_down(x, interpolate_pos_encoding=True).heatmaps
        out = bottom_up(x)
    torch.testing.assert_close(out.heatmaps, reference)
    assert out.tags.shape == (2, 17, 1, 32, 32)


def test_ps_ffn_dataset_index_routes_experts_and_heads(tmp_path):
    torch.manual_seed(0)
    config = ViTPoseBottomUpConfig(
        image_size=(64, 64), num_experts=2, part_features=8, datasets=["coco", "aic"], tag_dim=2, **TINY
    )
    model = ViTPoseForBottomUpPoseEstimation(config).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        aic = model(x, dataset_index="aic")
        mixed = model(x, dataset_index=[0, 1])
        features = model.backbone(x, dataset_index=1).feature_maps
        head = model.heads[1](features)
    assert aic.heatmaps.shape == (2, 14, 16, 16) and aic.tags.shape == (2, 14, 2, 16, 16)
    torch.testing.assert_close(aic.heatmaps, head[:, :14])
    torch.testing.assert_close(aic.tags.flatten(1, 2), head[:, 14:])
    assert mixed.heatmaps.shape[1] == 17
    torch.testing.assert_close(mixed.heatmaps[1, :14], aic.heatmaps[1])
    assert mixed.heatmaps[1, 14:].abs().max() == 0
    model.save_pretrained(tmp_path)
    assert is_bottom_up_checkpoint(tmp_path)
    loaded = ViTPoseForBottomUpPoseEstimation.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.config, ViTPoseBottomUpConfig) and loaded.config.tag_dim == 2
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, dataset_index=1).tags, aic.tags)


def test_image_without_people_gives_an_empty_list():
    torch.manual_seed(0)
    model = ViTPoseForBottomUpPoseEstimation(ViTPoseBottomUpConfig(image_size=(64, 64), **TINY))
    estimator = BottomUpPoseEstimator(model)
    blank = np.full((50, 70, 3), 128, np.uint8)
    assert estimator([blank, blank]) == [[], []]
    assert estimator([]) == []
    assert BottomUpPoseEstimator(model, scales=(1.0, 0.5), flip_test=True)(blank) == [[]]
    codec = AssociativeEmbedding((64, 64), (16, 16))
    empty = codec.encode_people(torch.zeros(0, 17, 2))
    assert empty["keypoint_indices"].shape == (0, 17, 2) and empty["heatmaps"].abs().max() == 0
    points, scores, person = codec.decode_people(empty["heatmaps"], empty["tags"])
    assert points.shape == (0, 17, 2) and scores.shape == (0, 17) and person.shape == (0,)


def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="multiple of 32"):
        ViTPoseBottomUpImageProcessor(size=100)
    with pytest.raises(ValueError, match="scales"):
        ViTPoseBottomUpImageProcessor(scales=(1.0, -1.0))
    with pytest.raises(ValueError, match="tag_dim"):
        ViTPoseBottomUpConfig(tag_dim=0)
    with pytest.raises(ValueError, match="push_loss_type"):
        ViTPoseBottomUpConfig(push_loss_type="hinge")
    processor = ViTPoseBottomUpImageProcessor(size=64)
    with pytest.raises(TypeError, match="unsupported image type"):
        processor.preprocess([object()])
    with pytest.raises(ValueError, match="NaN"):
        processor.preprocess(torch.full((3, 10, 10), float("nan")))
    heat = SimpleNamespace(heatmaps=torch.zeros(1, 17, 16, 16), tags=torch.zeros(1, 17, 1, 16, 16))
    with pytest.raises(ValueError, match="metadata"):
        processor.post_process_pose_estimation(heat, None)
    meta = processor.preprocess(np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(ValueError, match="keypoints"):
        processor.post_process_pose_estimation(
            SimpleNamespace(heatmaps=torch.zeros(1, 5, 16, 16), tags=torch.zeros(1, 5, 1, 16, 16)), meta
        )
    with pytest.raises(TypeError, match="heatmaps and .tags"):
        processor.post_process_pose_estimation(torch.zeros(1, 17, 16, 16), meta)
    codec = AssociativeEmbedding((64, 64), (16, 16))
    with pytest.raises(ValueError, match="tags must have shape"):
        codec.decode_people(torch.zeros(17, 16, 16), torch.zeros(17, 8, 8))
    with pytest.raises(ValueError, match="keypoints must have shape"):
        codec.encode_people(torch.zeros(2, 17))
    with pytest.raises(ValueError, match="ignore_mask"):
        codec.encode_people(torch.zeros(1, 17, 2), ignore_mask=torch.zeros(5, 5, dtype=torch.bool))
    model = ViTPoseForBottomUpPoseEstimation(ViTPoseBottomUpConfig(image_size=(64, 64), **TINY))
    with pytest.raises(ValueError, match="pixel_values must have shape"):
        model(torch.zeros(1, 64, 64))
    with pytest.raises(ValueError, match="together"):
        model(torch.zeros(1, 3, 64, 64), target_heatmaps=torch.zeros(1, 17, 16, 16))
    with pytest.raises(ValueError, match="out of range"):
        model(torch.zeros(1, 3, 64, 64), dataset_index=3)


def test_people_have_the_top_down_output_format(shared_data):
    """Same keys, shapes and dtypes as the top-down processor's per-person dicts (plus the person `score`)."""
    from vitpose_hf.image_processing_vitpose_hf import ViTPoseImageProcessor

    image = np.zeros((120, 160, 3), np.uint8)
    top_down = ViTPoseImageProcessor()
    crops = top_down.preprocess(image, boxes=[[[10.0, 10.0, 50.0, 90.0]]])
    reference = top_down.post_process_pose_estimation(torch.rand(1, 17, 64, 48), crop_metadata=crops)[0][0]
    gt = json.loads((shared_data / GT_FILES[0][0]).read_text())
    entry = gt["images"][0]
    people = _people(gt, entry["id"])
    processor = ViTPoseBottomUpImageProcessor()
    meta = processor.preprocess(np.zeros((entry["height"], entry["width"], 3), np.uint8))
    found = processor.post_process_pose_estimation(
        _maps(processor.get_codec(), people, entry["height"], entry["width"], 512), meta
    )[0]
    assert len(found) == len(people)
    for person in found:
        assert set(person) == set(reference) | {"score"}
        for key in ("keypoints", "scores", "bbox"):
            assert person[key].shape == reference[key].shape and person[key].dtype == reference[key].dtype
        assert person["labels"] == reference["labels"] and person["dataset"] == reference["dataset"]
        x, y, w, h = person["bbox"].tolist()
        xy = person["keypoints"]
        assert x <= xy[:, 0].min() and xy[:, 0].max() <= x + w + 1e-3 and y <= xy[:, 1].min()
    scores = [p["score"] for p in found]
    assert scores == sorted(scores, reverse=True)


def test_training_and_evaluation_refuse_empty_input(shared_data):
    model = ViTPoseForBottomUpPoseEstimation(ViTPoseBottomUpConfig(image_size=(64, 64), **TINY))
    with pytest.raises(ValueError, match="empty"):
        train_bottom_up(model, [], steps=1)
    with pytest.raises(ValueError, match="found no people"):
        evaluate_bottom_up_on_coco(model, shared_data / GT_FILES[0][0], max_images=1)
