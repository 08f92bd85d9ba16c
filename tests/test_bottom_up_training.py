"""A tiny bottom-up model trained on drawn 2-3 figure images learns to tell the figures apart by their tags."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitpose_hf.configuration_vitpose_hf import ViTPoseBottomUpConfig
from vitpose_hf.evaluation.metrics import coco_keypoint_metrics
from vitpose_hf.inference.bottom_up import BottomUpPoseEstimator
from vitpose_hf.modeling_vitpose_hf_bottom_up import ViTPoseForBottomUpPoseEstimation
from vitpose_hf.testing import synthetic_keypoint_dataset
from vitpose_hf.training.bottom_up import BottomUpAugment, bottom_up_coco_results, evaluate_bottom_up, train_bottom_up

# Simple figures (3 keypoints on a vertical line, tilted +-15 degrees), side by side, 2 or 3 per 64 x 64 image:
# small enough to learn in a few hundred steps on a shared CPU.
POLE = {
    "name": "pole",
    "keypoint_names": ["head", "hip", "foot"],
    "flip_pairs": [],
    "skeleton": [[0, 1], [1, 2]],
    "sigmas": [0.08, 0.08, 0.08],
}
SIDE = 64
# Grouping accuracy: a keypoint is grouped right when its predicted tag is nearer the mean tag of its own figure's
# other keypoints than the mean tag of every other figure. With 2-3 figures random tags score about 0.4-0.5; the
# untrained model (measured below as this data's chance level) scores 0.16 and the trained one 0.85 (seed 0).
THRESHOLD = 0.7


def _data(num_images: int, seed: int):
    return synthetic_keypoint_dataset(
        POLE,
        num_images=num_images,
        image_size=(SIDE, SIDE),
        seed=seed,
        min_figures=2,
        max_figures=3,
        side_by_side=True,
        figure_height=(0.7, 0.9),
    )


def _grouping_accuracy(model: ViTPoseForBottomUpPoseEstimation, rows) -> float:
    model.eval()
    estimator = BottomUpPoseEstimator(model)
    images = [row["image"] for row in rows]
    features = estimator.processor.preprocess(images)
    with torch.no_grad():
        tags = model(features["pixel_values"]).tags[:, :, 0].numpy()  # (B, K, h, w)
    h = tags.shape[-1]
    right = total = 0
    for n, row in enumerate(rows):
        people = np.array([obj["keypoints"] for obj in row["objects"]])[..., :2]
        # input = (image + 0.5) * r - 0.5 with r = 1 here (64 x 64 images); UDP heatmap = input * (h - 1) / (S - 1)
        cells = np.clip(np.round(people * (h - 1) / (SIDE - 1)).astype(int), 0, h - 1)
        values = np.array([[tags[n, j, cells[p, j, 1], cells[p, j, 0]] for j in range(3)] for p in range(len(people))])
        for p in range(len(people)):
            for j in range(3):
                own = np.delete(values[p], j).mean()
                others = [values[q].mean() for q in range(len(people)) if q != p]
                right += all(abs(values[p, j] - own) < abs(values[p, j] - o) for o in others)
                total += 1
    return right / total


@pytest.fixture
def one_thread():
    # two threads on a crowded 2-core machine are several times slower than one
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_tiny_model_learns_to_separate_figures(one_thread):
    torch.manual_seed(0)
    config = ViTPoseBottomUpConfig(
        image_size=(SIDE, SIDE),
        patch_size=8,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        decoder="simple",
        datasets=[POLE],
        pull_loss_weight=1.0,
        push_loss_weight=1.0,
        push_loss_type="max",
        max_people=5,
    )
    model = ViTPoseForBottomUpPoseEstimation(config)
    train, test = _data(128, seed=0), _data(16, seed=1)
    chance = _grouping_accuracy(model, test)
    history = train_bottom_up(
        model, train, steps=250, batch_size=8, learning_rate=3e-3, augment=BottomUpAugment(0.5, 10.0, (0.9, 1.1), 0.1)
    )
    accuracy = _grouping_accuracy(model, test)
    assert history[-1]["heatmap"] < history[0]["heatmap"]
    assert np.mean([h["push"] for h in history[-20:]]) < 0.5 * history[0]["push"]
    assert accuracy >= THRESHOLD and accuracy >= chance + 0.2, (accuracy, chance)

    # COCO AP of the trained model through the package's evaluation code: the wiring of evaluate_bottom_up
    images, annotations = [], []
    for row in test:
        images.append({"id": row["image_id"], "width": SIDE, "height": SIDE})
        for obj in row["objects"]:
            flat = [float(v) for point in obj["keypoints"] for v in point]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": row["image_id"],
                    "category_id": 1,
                    "keypoints": flat,
                    "num_keypoints": 3,
                    "bbox": list(obj["bbox"]),
                    "area": float(obj["area"]),
                    "iscrowd": 0,
                }
            )
    gt = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "pole"}]}
    metrics = evaluate_bottom_up(model, gt, test, dataset=POLE)
    assert metrics == coco_keypoint_metrics(gt, bottom_up_coco_results(BottomUpPoseEstimator(model), test), POLE)
