"""Training with Accelerate: the augmentation recipe, sampler, schedule, initialisation, and short CPU training runs
(synthetic figures, real COCO instances, multi-dataset, 2-process launch, SIGKILL + resume).

Runs use tiny models (width 32-64, 2 layers, 64x48 crops) and a few hundred steps at most.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vitpose_hf import ViTPoseConfig, ViTPoseForPoseEstimation
from vitpose_hf.conversion import adapt_model, convert_vit_state_dict, load_vit_backbone
from vitpose_hf.data.hub_dataset import explode_instances, write_layout
from vitpose_hf.data.transforms import (
    AugmentConfig,
    InstanceTable,
    MixedDatasetSampler,
    TopDownCollator,
    TopDownDataset,
    TopDownSource,
    TopDownTransform,
)
from vitpose_hf.geometry import warp_matrix
from vitpose_hf.keypoint_metadata import flip_indices, get_dataset_info
from vitpose_hf.testing import SYNTHETIC_FIGURE_LAYOUT, synthetic_keypoint_dataset
from vitpose_hf.training import train as train_module

REPO = Path(__file__).resolve().parents[1]
TINY = "hidden_size=32,num_hidden_layers=2,num_attention_heads=4,patch_size=8,deconv_channels=32"
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def run_training(argv: list[str]) -> int:
    """`vitpose-hf train` in this process (Accelerate keeps global state between runs: reset it)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return train_module.main(argv)


def tiny_args(output_dir: Path, *dataset_dirs: Path, steps: int, extra: tuple[str, ...] = ()) -> list[str]:
    argv = [
        "--model_size",
        "s",
        "--config_overrides",
        TINY,
        "--image_size",
        "64",
        "48",
        "--output_dir",
        str(output_dir),
        "--max_train_steps",
        str(steps),
        "--dataloader_num_workers",
        "0",
        "--logging_steps",
        "10",
    ]
    for d in dataset_dirs:
        argv += ["--dataset_name", str(d)]
    return argv + list(extra)


def save_hub(path: Path, layout, train, validation=None) -> Path:
    parts = {"train": train}
    if validation is not None:
        parts["validation"] = validation
    datasets.DatasetDict(parts).save_to_disk(str(path))
    write_layout(get_dataset_info(layout), path)
    return path


def results(output_dir: Path) -> dict:
    return json.loads((output_dir / "all_results.json").read_text())


@pytest.fixture(scope="module")
def figure_data(tmp_path_factory) -> Path:
    """Synthetic figures (9 keypoints, custom layout) with a few broken annotations mixed into the training split."""
    train = synthetic_keypoint_dataset(num_images=160, seed=0).to_list()
    broken = {
        "nan": {"bbox": [10, 10, 30, 40], "keypoints": [[float("nan"), 5, 2]] * 9},
        "outside": {"bbox": [10, 10, 30, 40], "keypoints": [[500, 20, 2]] + [[20, 20, 2]] * 8},
        "zero_area": {"bbox": [10, 10, 0, 40], "keypoints": [[20, 20, 2]] * 9},
        "wrong_k": {"bbox": [10, 10, 30, 40], "keypoints": [[20, 20, 2]] * 17},
    }
    for n, obj in enumerate(broken.values()):
        train[n]["objects"].append({"id": 10_000 + n, "category_id": 1, "iscrowd": 0, "area": 100.0, **obj})
    train = datasets.Dataset.from_list(train, features=synthetic_keypoint_dataset(num_images=1).features)
    validation = synthetic_keypoint_dataset(num_images=40, seed=1, image_id_offset=1000)
    return save_hub(tmp_path_factory.mktemp("figures") / "hub", SYNTHETIC_FIGURE_LAYOUT, train, validation)


@pytest.fixture(scope="module")
def two_layouts(tmp_path_factory) -> tuple[Path, Path]:
    """A COCO-layout and an AP-10K-layout synthetic set (17 keypoints each, other names, UDP vs non-UDP)."""
    root = tmp_path_factory.mktemp("multi")
    coco = save_hub(
        root / "coco",
        "coco",
        synthetic_keypoint_dataset("coco", num_images=24, seed=2),
        synthetic_keypoint_dataset("coco", num_images=6, seed=3),
    )
    ap10k = save_hub(
        root / "ap10k",
        "ap10k",
        synthetic_keypoint_dataset("ap10k", num_images=24, seed=4),
        synthetic_keypoint_dataset("ap10k", num_images=6, seed=5),
    )
    return coco, ap10k


# ---------------------------------------------------------------------------------------------------------------
# Augmentation, sampler, schedule
# ---------------------------------------------------------------------------------------------------------------
def reference_crop_parameters(rng, box, kps, image_width, info, aspect=48 / 64):
    """Independent numpy statement of the official recipe (reference sec. 4.3), draws in the official order.

    Returns (flipped, centre, scale (w, h) in 200-px units, rotation)."""
    x, y, w, h = box
    center = np.array([x + w / 2, y + h / 2])
    if rng.random() < 0.3:  # _xywh2cs jitter
        center += 0.4 * (rng.random(2) - 0.5) * np.array([w, h])

    def aspect_scale(w, h, pad):
        if w > aspect * h:
            h = w / aspect
        else:
            w = h * aspect
        return np.array([w, h]) / 200 * pad

    scale = aspect_scale(w, h, 1.25)
    flipped = rng.random() <= 0.5
    kps = np.array(kps, dtype=float)
    if flipped:
        kps = kps[flip_indices(info)]
        kps[:, 0] = image_width - 1 - kps[:, 0]
        center[0] = image_width - 1 - center[0]
    visible = kps[:, 2] > 0
    if visible.sum() > 8 and rng.random() < 0.3:
        upper = [i for i in info["upper_body_ids"] if visible[i]]
        lower = [i for i in info["lower_body_ids"] if visible[i]]
        if rng.standard_normal() < 0.5 and len(upper) > 2:
            chosen = upper
        else:
            chosen = lower if len(lower) > 2 else upper
        if len(chosen) >= 2:
            pts = kps[chosen, :2]
            center = pts.mean(axis=0)
            size = pts.max(axis=0) - pts.min(axis=0)
            scale = aspect_scale(size[0], size[1], 1.5)
    scale = scale * np.clip(rng.standard_normal() * 0.5 + 1, 0.5, 1.5)
    rotation = np.clip(rng.standard_normal() * 40, -80, 80) if rng.random() <= 0.6 else 0.0
    return flipped, center, scale, rotation


def test_augmentation_follows_the_official_recipe_and_crops_like_opencv():
    ds = synthetic_keypoint_dataset("coco", num_images=4, seed=11, image_size=(120, 100))
    info = get_dataset_info("coco")
    transform = TopDownTransform("coco", (64, 48), (32, 24), AugmentConfig())
    stride = np.array([(48 - 1) / (24 - 1), (64 - 1) / (32 - 1)])  # UDP
    seen = {"flip": 0, "rotation": 0}
    for n in range(40):
        row = ds[n % 4]
        obj = row["objects"][0]
        image = np.asarray(row["image"].convert("RGB"))
        kps = np.asarray(obj["keypoints"])
        sample = transform(image, obj["bbox"], kps, np.random.default_rng(n))
        flipped, center, scale, rotation = reference_crop_parameters(
            np.random.default_rng(n), obj["bbox"], kps, image.shape[1], info
        )
        assert bool(sample["flipped"]) == flipped
        np.testing.assert_allclose(sample["center"].numpy(), center, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(sample["scale"].numpy(), scale, rtol=1e-5)
        assert float(sample["rotation"]) == pytest.approx(rotation, abs=1e-4)
        seen["flip"] += flipped
        seen["rotation"] += rotation != 0
        # the crop is OpenCV's warpAffine of the (mirrored) image with the official UDP matrix
        source = np.ascontiguousarray(image[:, ::-1] if flipped else image).astype(np.float32)
        matrix = warp_matrix(torch.tensor(center[None]), torch.tensor(scale[None]), (64, 48), rotation, use_udp=True)[
            0
        ].numpy()
        expected = cv2.warpAffine(
            source, matrix, (48, 64), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
        expected = (expected / 255 - MEAN) / STD
        got = sample["pixel_values"].permute(1, 2, 0).numpy()
        assert np.abs(got - expected).mean() < 0.01 and np.abs(got - expected).max() < 0.25
        # every weighted target peaks where the matrix sends its keypoint (flip pairs swapped when mirrored)
        points = kps[flip_indices(info)] if flipped else kps
        if flipped:
            points = points.copy()
            points[:, 0] = image.shape[1] - 1 - points[:, 0]
        crop = points[:, :2] @ matrix[:, :2].T + matrix[:, 2]
        for k in np.flatnonzero(sample["target_weight"].numpy() > 0):
            heat = sample["labels"][k].numpy()
            peak = np.unravel_index(heat.argmax(), heat.shape)[::-1]
            inside = (0 <= crop[k] / stride).all() and (crop[k] / stride <= [23, 31]).all()
            if inside:
                assert np.abs(np.array(peak) - crop[k] / stride).max() <= 0.5 + 1e-6
    assert 8 <= seen["flip"] <= 32 and 12 <= seen["rotation"] <= 36


def test_half_body_and_jitter_rates():
    """The draws alone (no image work): half body ~0.3 of instances with > 8 labelled keypoints, jitter ~0.3."""
    transform = TopDownTransform("coco", (64, 48), (32, 24), AugmentConfig())
    kps = np.array([[50 + 3 * i, 20 + 6 * i, 2] for i in range(17)], dtype=float)
    box = np.array([40.0, 10.0, 60.0, 120.0])
    image = np.zeros((200, 200, 3), np.uint8)
    half = jitter = 0
    n = 3000
    for i in range(n):
        _, _, center, size, factor, _, flipped = transform._draw(image, box, kps, np.random.default_rng(i))
        half += not np.allclose(size, box[2:])
        plain = np.array([box[0] + box[2] / 2, box[1] + box[3] / 2])
        if flipped:
            plain[0] = 199 - plain[0]
        jitter += np.allclose(size, box[2:]) and not np.allclose(center, plain)
    assert abs(half / n - 0.3) < 0.03
    assert abs(jitter / (n - half) - 0.3) < 0.03


def test_sampler_mixes_datasets_with_ratios_and_is_reproducible():
    sampler = MixedDatasetSampler([30, 10], seed=1)
    items = list(sampler)
    assert len(items) == 40 and sorted((d, i) for d, i, _ in items) == [(0, i) for i in range(30)] + [
        (1, i) for i in range(10)
    ]
    batches = [items[i : i + 8] for i in range(0, 40, 8)]
    assert sum(len({d for d, _, _ in b}) == 2 for b in batches) >= 3  # batches mix datasets
    assert list(MixedDatasetSampler([30, 10], seed=1)) == items  # same seed and epoch: same items and seeds
    sampler.set_epoch(1)
    assert list(sampler) != items
    weighted = [d for d, _, _ in MixedDatasetSampler([30, 10], ratios=[1, 3], seed=0)]
    assert weighted.count(0) == 10 and weighted.count(1) == 30  # dataset 1 cycles through its 10 instances 3 times
    assert [d for d, _, _ in MixedDatasetSampler([30, 10], ratios=[1, 0])] == [0] * 40


def test_schedule_and_layer_decay_groups():
    schedule = train_module.StepWarmupSchedule(500, 0.001, [1700, 2000], 0.1)
    assert schedule(0) == pytest.approx(0.001) and schedule(250) == pytest.approx(0.5005) and schedule(500) == 1.0
    assert schedule(1699) == 1.0 and schedule(1700) == pytest.approx(0.1) and schedule(2000) == pytest.approx(0.01)
    model = ViTPoseForPoseEstimation(
        ViTPoseConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=(64, 48),
            patch_size=8,
            deconv_channels=16,
        )
    )
    optimizer = train_module.build_optimizer(model, 5e-4, 0.1, 0.75)
    lr_of = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            lr_of[id(p)] = (group["lr"], group["weight_decay"])
    named = dict(model.named_parameters())
    assert lr_of[id(named["heads.0.final_layer.weight"])] == (pytest.approx(5e-4), 0.1)
    assert lr_of[id(named["backbone.blocks.1.attn.qkv.weight"])] == (pytest.approx(5e-4 * 0.75), 0.1)
    assert lr_of[id(named["backbone.blocks.0.attn.qkv.bias"])] == (pytest.approx(5e-4 * 0.75**2), 0.0)
    assert lr_of[id(named["backbone.patch_embed.proj.weight"])] == (pytest.approx(5e-4 * 0.75**3), 0.1)
    assert lr_of[id(named["backbone.pos_embed"])][1] == 0.0
    assert optimizer.defaults["betas"] == (0.9, 0.999)


# ---------------------------------------------------------------------------------------------------------------
# Initialisation: MAE / ViT encoders, new heads and experts
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mae", "vit"])
def test_init_from_transformers_vit_interpolates_the_position_embedding(tmp_path, kind):
    from transformers import ViTConfig, ViTMAEConfig, ViTMAEModel, ViTModel

    common = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32, patch_size=8
    )
    source = (
        ViTMAEModel(ViTMAEConfig(**common)) if kind == "mae" else ViTModel(ViTConfig(**common), add_pooling_layer=False)
    )
    source.save_pretrained(tmp_path / "encoder")
    state = load_file(tmp_path / "encoder" / "model.safetensors")  # the checkpoint format: encoder.layer.{i}.*
    config = ViTPoseConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=(64, 48),
        patch_size=8,
        deconv_channels=16,
    )
    model = ViTPoseForPoseEstimation(config)
    last_norm = model.backbone.last_norm.weight.detach().clone()
    load_vit_backbone(model, str(tmp_path / "encoder"))
    ours = model.state_dict()
    layer = "encoder.layer.1.attention.attention."
    qkv = torch.cat([state[layer + n + ".weight"] for n in ("query", "key", "value")])
    torch.testing.assert_close(ours["backbone.blocks.1.attn.qkv.weight"], qkv)
    torch.testing.assert_close(
        ours["backbone.blocks.0.mlp.fc1.weight"], state["encoder.layer.0.intermediate.dense.weight"]
    )
    torch.testing.assert_close(ours["backbone.blocks.0.norm2.bias"], state["encoder.layer.0.layernorm_after.bias"])
    torch.testing.assert_close(
        ours["backbone.patch_embed.proj.weight"], state["embeddings.patch_embeddings.projection.weight"]
    )
    # position embedding: class slot kept, 4x4 grid resized to the 8x6 token grid (bicubic, align_corners=False)
    pos = state["embeddings.position_embeddings"]
    grid = (
        torch.nn.functional.interpolate(
            pos[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2), size=(8, 6), mode="bicubic", align_corners=False
        )
        .permute(0, 2, 3, 1)
        .reshape(1, 48, 32)
    )
    torch.testing.assert_close(ours["backbone.pos_embed"], torch.cat([pos[:, :1], grid], dim=1))
    torch.testing.assert_close(model.backbone.last_norm.weight, last_norm)  # the encoder's final norm is not used
    # transformers 5 modules name their weights differently in memory: the same tensors come out
    in_memory, _ = convert_vit_state_dict(source.state_dict(), config)
    for key, value in in_memory.items():
        torch.testing.assert_close(value, ours[key])
    out = model(torch.randn(2, 3, 64, 48))
    assert torch.isfinite(out.heatmaps).all()


def test_position_table_without_class_slot_gets_a_zero_slot_and_is_resampled():
    """timm-style tables without the class slot: the backbone's extra leading slot starts at zero; the grid is
    resampled as torch's bicubic (align_corners=False) of the square table; a table of 1 + non-square is refused."""
    from vitpose_hf.conversion import _interpolate_pos_embed

    torch.manual_seed(0)
    table = torch.randn(1, 16, 8)
    out = _interpolate_pos_embed(table, (8, 6))
    grid = (
        torch.nn.functional.interpolate(
            table.reshape(1, 4, 4, 8).permute(0, 3, 1, 2), size=(8, 6), mode="bicubic", align_corners=False
        )
        .permute(0, 2, 3, 1)
        .reshape(1, 48, 8)
    )
    torch.testing.assert_close(out, torch.cat([torch.zeros(1, 1, 8), grid], dim=1))
    same = torch.randn(1, 1 + 36, 8)
    assert torch.equal(_interpolate_pos_embed(same, (6, 6)), same)  # already the model's grid: unchanged
    with pytest.raises(ValueError, match="square grid"):
        _interpolate_pos_embed(torch.randn(1, 1 + 12, 8), (8, 6))


def test_dense_to_experts_keeps_the_function_and_reuses_heads():
    torch.manual_seed(0)
    dense = ViTPoseForPoseEstimation(
        ViTPoseConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=(64, 48),
            patch_size=8,
            deconv_channels=16,
            datasets=["coco"],
        )
    ).eval()
    plus = adapt_model(dense, [get_dataset_info("coco"), get_dataset_info("ap10k")], num_experts=2).eval()
    assert plus.config.num_experts == 2 and plus.config.part_features == 8
    x = torch.randn(3, 3, 64, 48)
    with torch.no_grad():
        ref = dense(x).heatmaps
        # every expert starts as the dense fc2's last rows: the encoder is unchanged for both datasets
        torch.testing.assert_close(plus(x, dataset_index=0).heatmaps, ref)
        features = [plus.backbone(x, dataset_index=i).last_hidden_state for i in (0, 1)]
    torch.testing.assert_close(features[0], features[1])
    torch.testing.assert_close(plus.heads[0].final_layer.weight, dense.heads[0].final_layer.weight)
    # a six-expert checkpoint with the COCO head only (transformers' ViTPose++): AP-10K gets expert 3,
    # the official index
    six = ViTPoseForPoseEstimation(
        ViTPoseConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=(64, 48),
            patch_size=8,
            deconv_channels=16,
            num_experts=6,
            part_features=8,
        )
    ).eval()
    animal = adapt_model(six, [get_dataset_info("ap10k")], num_experts=1).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            animal.backbone(x).last_hidden_state, six.backbone(x, expert_index=3).last_hidden_state
        )


# ---------------------------------------------------------------------------------------------------------------
# Training runs
# ---------------------------------------------------------------------------------------------------------------
def test_synthetic_figures_training_beats_the_untrained_model(figure_data, tmp_path, caplog):
    """150 steps on drawn figures: OKS AP > 0.5 (measured ~0.8-0.9), the same model untrained scores < 0.05."""
    caplog.set_level(logging.INFO, logger="vitpose_hf")
    common = ("--per_device_train_batch_size", "16", "--learning_rate", "2e-3", "--warmup_steps", "20", "--seed", "3")
    assert run_training(tiny_args(tmp_path / "untrained", figure_data, steps=0, extra=common)) == 0
    untrained = results(tmp_path / "untrained")["eval"][str(figure_data)]
    out = tmp_path / "trained"
    argv = tiny_args(
        out,
        figure_data,
        steps=150,
        extra=common + ("--dataloader_num_workers", "2", "--eval_steps", "75", "--checkpointing_steps", "75"),
    )
    assert run_training(argv) == 0
    final = results(out)["eval"][str(figure_data)]
    assert untrained["AP"] < 0.05
    assert final["AP"] > 0.5, final
    # bad annotations of the training split: skipped, counted in the log and the results
    counts = results(out)["skipped_annotations"][str(figure_data)]
    assert counts == {"non_finite": 1, "keypoints_outside_image": 1, "zero_area": 1, "wrong_num_keypoints": 1}
    assert "skipped 4 bad annotations" in caplog.text
    # the folder that --push_to_hub uploads: weights, processor, card, remote code; no checkpoints
    pushed = train_module.files_to_push(out)
    assert {
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "README.md",
        "modeling_vitpose_hf.py",
    } <= set(pushed)
    assert not any(p.startswith("checkpoints/") for p in pushed) and (out / "checkpoints" / "step_75").is_dir()
    assert "best/model.safetensors" in pushed
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    ap = {m.metric_type: m.metric_value for m in card.data.eval_results}["AP"]
    assert ap == pytest.approx(final["AP"], abs=1e-5) and card.data.pipeline_tag == "keypoint-detection"
    # the evaluation command (its own crops, decoding and protocol) scores the saved model as training did
    from vitpose_hf.cli import main as cli

    assert (
        cli(
            [
                "eval",
                str(out),
                "--hub-dataset",
                str(figure_data),
                "--split",
                "validation",
                "--output",
                str(tmp_path / "eval.json"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "eval_metrics.json").read_text())["metrics"]["AP"] == pytest.approx(
        final["AP"], abs=1e-6
    )
    # the saved model + processor predict keypoints near the drawn ones (pipeline of the inference side)
    from vitpose_hf.image_processing_vitpose_hf import ViTPoseImageProcessor

    model = ViTPoseForPoseEstimation.from_pretrained(out).eval()
    processor = ViTPoseImageProcessor.from_pretrained(out)
    row = datasets.load_from_disk(str(figure_data))["validation"][0]
    obj = row["objects"][0]
    inputs = processor(row["image"], boxes=[obj["bbox"]])
    with torch.no_grad():
        pose = processor.post_process_pose_estimation(model(inputs["pixel_values"]), crop_metadata=inputs)[0][0]
    error = np.linalg.norm(pose["keypoints"].numpy() - np.asarray(obj["keypoints"])[:, :2], axis=1)
    assert np.median(error) < 0.1 * obj["bbox"][3]


def test_overfitting_real_coco_instances_lowers_the_loss_10x(shared_data, tmp_path):
    from vitpose_hf.data import hub_dataset as hub_dataset

    hub = tmp_path / "coco"
    assert (
        hub_dataset.main(
            [
                "--annotations",
                str(shared_data / "mmpose" / "coco" / "test_coco.json"),
                "--output",
                str(hub),
                "--cache_dir",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    out = tmp_path / "overfit"
    argv = tiny_args(
        out,
        hub,
        steps=100,
        extra=(
            "--config_overrides",
            "hidden_size=64,num_hidden_layers=2,num_attention_heads=4,patch_size=8,deconv_channels=64",
            "--per_device_train_batch_size",
            "12",
            "--learning_rate",
            "2e-3",
            "--warmup_steps",
            "0",
            "--weight_decay",
            "0",
            "--drop_path_rate",
            "0",
            "--no_augmentation",
            "--logging_steps",
            "1",
            "--lr_steps",
            "1000",
            "--lr_step_unit",
            "step",
        ),
    )
    assert run_training(argv) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 100  # 12 real instances (4 images, 2 without keypoints skipped), one batch per step
    assert losses[0] / np.mean(losses[-5:]) > 10, (losses[0], losses[-5:])


def _heads_and_experts(state: dict) -> dict[str, torch.Tensor]:
    keys = [
        "heads.0.final_layer.weight",
        "heads.1.final_layer.weight",
        "backbone.blocks.0.mlp.experts.0.weight",
        "backbone.blocks.0.mlp.experts.1.weight",
        "backbone.blocks.0.attn.qkv.weight",
    ]
    return {k: state[k] for k in keys}


def test_multi_dataset_trains_each_head_and_expert_on_its_own_data(two_layouts, tmp_path):
    coco, ap10k = two_layouts
    # gradients of one batch: a head / expert gets none from the other dataset's samples
    model = adapt_model(
        ViTPoseForPoseEstimation(
            ViTPoseConfig(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=(64, 48),
                patch_size=8,
                deconv_channels=16,
            )
        ),
        [get_dataset_info("coco"), get_dataset_info("ap10k")],
        num_experts=2,
    )
    sources = []
    for head, path in enumerate((coco, ap10k)):
        images = datasets.load_from_disk(str(path))["train"]
        instances, _ = explode_instances(images, 17)
        layout = "coco" if head == 0 else "ap10k"
        transform = TopDownTransform(layout, (64, 48), tuple(model.config.heatmap_size), AugmentConfig())
        sources.append(
            TopDownSource(
                layout, images.select_columns(["image"]), InstanceTable.from_dataset(instances, 17), transform, head
            )
        )
    dataset = TopDownDataset(sources)
    collate = TopDownCollator(17)
    assert not sources[1].transform.use_udp and type(sources[1].transform.codec).__name__ == "MSRAHeatmap"

    def grads(items):
        model.zero_grad(set_to_none=True)
        batch = collate([dataset[item] for item in items])
        model(
            batch["pixel_values"],
            dataset_index=batch["dataset_index"],
            labels=batch["labels"],
            target_weight=batch["target_weight"],
        ).loss.backward()
        named = dict(model.named_parameters())
        return {k: named[k].grad for k in _heads_and_experts(dict(model.named_parameters()))}

    only_coco = grads([(0, i, i) for i in range(4)])
    assert (
        only_coco["heads.1.final_layer.weight"] is None and only_coco["backbone.blocks.0.mlp.experts.1.weight"] is None
    )
    assert (
        only_coco["heads.0.final_layer.weight"].abs().sum() > 0
        and only_coco["backbone.blocks.0.mlp.experts.0.weight"].abs().sum() > 0
    )
    mixed = grads([(0, 0, 0), (1, 0, 1), (0, 1, 2), (1, 1, 3)])
    assert all(g is not None and g.abs().sum() > 0 for g in mixed.values())

    # whole runs: both heads and experts move when both datasets are sampled; ratio 1:0 leaves dataset 1's alone
    common = ("--per_device_train_batch_size", "8", "--warmup_steps", "1", "--learning_rate", "1e-3")
    assert run_training(tiny_args(tmp_path / "init", coco, ap10k, steps=0, extra=common)) == 0
    init = _heads_and_experts(load_file(tmp_path / "init" / "model.safetensors"))
    assert (
        run_training(
            tiny_args(tmp_path / "mixed", coco, ap10k, steps=12, extra=common + ("--gradient_accumulation_steps", "2"))
        )
        == 0
    )
    mixed = _heads_and_experts(load_file(tmp_path / "mixed" / "model.safetensors"))
    assert all(not torch.equal(init[k], mixed[k]) for k in init)
    argv = tiny_args(
        tmp_path / "coco_only",
        coco,
        ap10k,
        steps=8,
        extra=common + ("--dataset_ratio", "1", "0", "--weight_decay", "0"),
    )
    assert run_training(argv) == 0
    coco_only = _heads_and_experts(load_file(tmp_path / "coco_only" / "model.safetensors"))
    for key in ("heads.1.final_layer.weight", "backbone.blocks.0.mlp.experts.1.weight"):
        assert torch.equal(coco_only[key], init[key]), key
    for key in (
        "heads.0.final_layer.weight",
        "backbone.blocks.0.mlp.experts.0.weight",
        "backbone.blocks.0.attn.qkv.weight",
    ):
        assert not torch.equal(coco_only[key], init[key]), key
    # per-dataset dense exports equal the multi-dataset model on that dataset
    full = ViTPoseForPoseEstimation.from_pretrained(tmp_path / "mixed").eval()
    x = torch.randn(2, 3, 64, 48)
    for index, name in enumerate(("coco", "ap10k")):
        single = ViTPoseForPoseEstimation.from_pretrained(tmp_path / "mixed" / "per_dataset" / name).eval()
        assert single.config.num_experts == 1 and single.config.dataset_names == [name]
        with torch.no_grad():
            torch.testing.assert_close(single(x).heatmaps, full(x, dataset_index=index).heatmaps, atol=1e-5, rtol=1e-5)


# The official ViTPose++ recipe (ViTAE-Transformer/ViTPose, configs/body/2d_kpt_sview_rgb_img/topdown_heatmap/coco/
# vitPose+_base_coco+aic+mpii+ap10k+apt36k+wholebody_256x192_udp.py) crops and encodes each dataset its own way:
#   train_pipeline (COCO):   dict(type='TopDownAffine', use_udp=True), dict(type='TopDownGenerateTarget', sigma=2,
#                            encoding='UDP', target_type=target_type)
#   ap10k_train_pipeline, aic_train_pipeline, cocowholebody_train_pipeline:
#                            dict(type='TopDownAffine'), dict(type='TopDownGenerateTarget', sigma=2)
# and mmpose's defaults are TopDownAffine(use_udp=False), TopDownGenerateTarget(encoding='MSRA').
OFFICIAL_UDP = {"coco": True, "mpii": True, "aic": False, "ap10k": False, "wholebody": False}


def test_multi_dataset_run_saves_each_datasets_udp_setting(two_layouts, tmp_path):
    """Regression: the saved processor used to carry the first layout's UDP flag (COCO's True) for AP-10K too."""
    from vitpose_hf.image_processing_vitpose_hf import ViTPoseImageProcessor

    coco, ap10k = two_layouts
    out = tmp_path / "run"
    assert run_training(tiny_args(out, coco, ap10k, steps=0, extra=("--per_device_train_batch_size", "4"))) == 0
    saved = json.loads((out / "preprocessor_config.json").read_text())
    assert saved["use_udp"] is None  # per dataset
    assert [get_dataset_info(d)["name"] for d in saved["dataset"]] == ["coco", "ap10k"]
    assert [get_dataset_info(d)["use_udp"] for d in saved["dataset"]] == [OFFICIAL_UDP["coco"], OFFICIAL_UDP["ap10k"]]
    assert ViTPoseImageProcessor.from_pretrained(out).use_udp is None
    # the single-dataset exports agree on one setting: a plain bool, as any single-dataset folder
    for name in ("coco", "ap10k"):
        single = json.loads((out / "per_dataset" / name / "preprocessor_config.json").read_text())
        assert single["use_udp"] is OFFICIAL_UDP[name] and get_dataset_info(single["dataset"])["name"] == name
    for name in ("coco", "aic", "mpii", "ap10k", "wholebody"):  # the built-in metadata the processor reads
        assert get_dataset_info(name)["use_udp"] is OFFICIAL_UDP[name], name


def _two_layout_run(two_layouts, tmp_path):
    """The training loader, evaluation sets, config and processor `vitpose-hf train` builds for coco + ap10k."""
    argv = tiny_args(tmp_path, *two_layouts, steps=1, extra=("--per_device_eval_batch_size", "6"))
    args = train_module.parse_args(argv)
    specs = train_module.load_data_specs(args)
    layouts = train_module.unique_layouts(specs)
    config = ViTPoseConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=(64, 48),
        patch_size=8,
        deconv_channels=16,
        datasets=layouts,
        num_experts=2,
        part_features=8,
    )
    for spec in specs:
        spec.head = config.dataset_to_index(spec.layout["name"])
    collator = TopDownCollator(17)
    loader, _ = train_module.build_train_loader(args, specs, config, AugmentConfig(), collator, torch.device("cpu"))
    eval_sets = train_module.build_eval_sets(args, specs, config, collator, True)
    return loader, eval_sets, config


def test_each_dataset_is_cropped_and_encoded_with_its_own_udp_setting(two_layouts, tmp_path):
    """Plain crops of the training and evaluation data: targets peak where the official formulas put them."""
    loader, eval_sets, config = _two_layout_run(two_layouts, tmp_path)
    (H, W), (h, w) = tuple(config.image_size), tuple(config.heatmap_size)
    train_sources = loader.dataset.sources
    assert [s.transform.use_udp for s in train_sources] == [True, False]
    assert [s.transform.use_udp for s in (es.dataset.sources[0] for es in eval_sets)] == [True, False]
    checked = {True: 0, False: 0}
    for dataset in [loader.dataset] + [es.dataset for es in eval_sets]:
        for s, source in enumerate(dataset.sources):
            udp = OFFICIAL_UDP[source.transform.info["name"]]
            for i in range(3):
                sample = dataset[(s, i, None)]  # no seed: the plain crop
                x, y, bw, bh = source.table.boxes[i].astype(np.float64)
                # official _xywh2cs: centre, aspect fix to W / H, padding 1.25, 200-px units
                center = np.array([x + bw / 2, y + bh / 2])
                size = np.array([max(bw, bh * W / H), max(bh, bw * H / W)]) * 1.25
                np.testing.assert_allclose(sample["center"].numpy(), center, rtol=1e-5)
                np.testing.assert_allclose(sample["scale"].numpy() * 200, size, rtol=1e-5)
                kps = source.table.keypoints[i].astype(np.float64)
                if udp:  # get_warp_matrix: (W-1, H-1) steps; _udp_generate_target: stride (W-1) / (w-1)
                    crop = (kps[:, :2] - center) * (np.array([W, H]) - 1) / size + (np.array([W, H]) - 1) / 2
                    mu = crop / ((np.array([W, H]) - 1) / (np.array([w, h]) - 1))
                else:  # get_affine_transform: (W, H); _msra_generate_target: stride W / w, centre int(x / stride + 0.5)
                    crop = (kps[:, :2] - center) * np.array([W, H]) / size + np.array([W, H]) / 2
                    mu = crop / (np.array([W, H]) / np.array([w, h]))
                expected = np.floor(mu + 0.5).astype(int)
                for k in np.flatnonzero(sample["target_weight"].numpy() > 0):
                    if not (0 <= expected[k, 0] < w and 0 <= expected[k, 1] < h):
                        continue
                    heat = sample["labels"][k].numpy()
                    assert tuple(np.unravel_index(heat.argmax(), heat.shape)[::-1]) == tuple(expected[k]), (udp, k)
                    if not udp:  # MSRA: the Gaussian sits on the integer centre, peak exactly 1
                        assert heat.max() == pytest.approx(1.0)
                    checked[udp] += 1
    assert checked[True] > 20 and checked[False] > 20


def test_evaluation_decodes_through_the_processor(two_layouts, tmp_path):
    """Wiring test: one evaluation batch per dataset, decoded by `train.predict_batch`, equals a processor set up
    by hand for that dataset (its UDP setting, flip pairs and decoder) and applied to the model's heatmaps."""
    from vitpose_hf.image_processing_vitpose_hf import ViTPoseImageProcessor

    _, eval_sets, config = _two_layout_run(two_layouts, tmp_path)
    torch.manual_seed(0)
    model = ViTPoseForPoseEstimation(config).eval()
    saved = train_module.make_processor(config)
    size = {"height": 64, "width": 48}
    for es in eval_sets:
        name = es.layout["name"]
        batch = next(iter(es.loader))
        loss, points, scores = train_module.predict_batch(model, saved, batch, es.transform.use_udp, flip_test=True)
        with torch.no_grad():
            heatmaps = model(batch["pixel_values"], dataset_index=es.head).heatmaps
            flipped = model(batch["pixel_values"].flip(-1), dataset_index=es.head).heatmaps
        crops = {"center": batch["center"], "scale": batch["scale"]}
        by_hand = ViTPoseImageProcessor(size=size, use_udp=OFFICIAL_UDP[name], dataset=name)
        people = by_hand.post_process_pose_estimation(heatmaps, flip_outputs=flipped, crop_metadata=crops)[0]
        torch.testing.assert_close(points, torch.stack([p["keypoints"] for p in people]))
        torch.testing.assert_close(scores, torch.stack([p["scores"] for p in people]))
        assert torch.isfinite(loss)
        # the other dataset's setting decodes elsewhere: the comparison above can tell them apart
        other = ViTPoseImageProcessor(size=size, use_udp=not OFFICIAL_UDP[name], dataset=name)
        wrong = other.post_process_pose_estimation(heatmaps, flip_outputs=flipped, crop_metadata=crops)[0]
        assert (torch.stack([p["keypoints"] for p in wrong]) - points).abs().max() > 0.5


def test_streaming_run_and_its_resume(two_layouts, tmp_path):
    coco, ap10k = two_layouts
    out = tmp_path / "stream"
    argv = tiny_args(
        out,
        coco,
        ap10k,
        steps=4,
        extra=(
            "--streaming",
            "--per_device_train_batch_size",
            "4",
            "--dataloader_num_workers",
            "1",
            "--checkpointing_steps",
            "2",
        ),
    )
    assert run_training(argv) == 0
    straight = load_file(out / "model.safetensors")
    for name in ("model.safetensors", "checkpoints/step_4"):
        target = out / name
        target.unlink() if target.is_file() else shutil.rmtree(target)
    assert run_training(argv + ["--resume_from_checkpoint", "latest"]) == 0  # replays the stream to step 2
    resumed = load_file(out / "model.safetensors")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_launch_two_cpu_processes_completes_and_saves_once(two_layouts, tmp_path):
    coco, ap10k = two_layouts
    out = tmp_path / "ddp"
    # on a machine without GPUs, --multi_gpu is accelerate's multi-process launcher; the script falls back to gloo
    cmd = [
        str(Path(sys.executable).with_name("accelerate")),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        str(REPO / "scripts" / "train.py"),
        *tiny_args(out, coco, ap10k, steps=4, extra=("--per_device_train_batch_size", "4", "--logging_steps", "1")),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=REPO)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "2 process(es)" in output and "backend gloo" in output
    assert output.count("Saved model to") == 1
    assert (out / "model.safetensors").is_file() and (out / "per_dataset" / "ap10k" / "model.safetensors").is_file()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]  # one line per step: only the main process writes


def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(figure_data, tmp_path):
    """Tolerance: none. Same seed, threads and data order give bit-identical weights (drop path on: the RNG resumes)."""
    argv = [
        "--per_device_train_batch_size",
        "8",
        "--checkpointing_steps",
        "10",
        "--warmup_steps",
        "5",
        "--eval_steps",
        "25",
        "--dataloader_num_workers",
        "1",
        "--max_train_samples",
        "48",
        "--max_eval_samples",
        "8",
    ]
    assert run_training(tiny_args(tmp_path / "straight", figure_data, steps=60, extra=tuple(argv))) == 0

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "scripts" / "train.py"),
                *tiny_args(killed, figure_data, steps=60, extra=tuple(argv)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
        deadline = time.monotonic() + 180
        while not (killed / "checkpoints" / "step_10").is_dir() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its data-loading workers, mid-run
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-2000:]
    assert not (killed / "model.safetensors").exists()
    assert (
        run_training(
            tiny_args(killed, figure_data, steps=60, extra=tuple(argv) + ("--resume_from_checkpoint", "latest"))
        )
        == 0
    )
    steps = [json.loads(line)["step"] for line in (killed / "train_log.jsonl").read_text().splitlines()]
    assert steps[-1] == 60 and 10 in steps  # the killed run's lines, then the resumed run's
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_launch_configs_and_cli():
    from accelerate.commands.config.config_args import load_config_from_file

    configs = sorted((REPO / "docs" / "accelerate").glob("*.yaml"))
    assert {p.name for p in configs} >= {"ddp_8gpu.yaml", "fsdp_8gpu.yaml", "multinode_ddp.yaml"}
    for path in configs:
        config = load_config_from_file(str(path))
        assert config.num_processes >= 2
    from vitpose_hf.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
