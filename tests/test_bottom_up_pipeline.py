"""`vitpose_hf.pipeline()` with a bottom-up model: dispatch by checkpoint or `paradigm=`, and clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vitpose_hf
from vitpose_hf.configuration_vitpose_hf import ViTPoseBottomUpConfig, ViTPoseConfig
from vitpose_hf.inference.bottom_up import BottomUpPoseEstimator
from vitpose_hf.modeling_vitpose_hf import ViTPoseForPoseEstimation
from vitpose_hf.modeling_vitpose_hf_bottom_up import ViTPoseForBottomUpPoseEstimation

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, deconv_channels=16)


@pytest.fixture(scope="module")
def bottom_up_folder(tmp_path_factory):
    torch.manual_seed(0)
    model = ViTPoseForBottomUpPoseEstimation(ViTPoseBottomUpConfig(image_size=(64, 64), **TINY)).eval()
    folder = tmp_path_factory.mktemp("bottom_up")
    model.save_pretrained(folder)
    return folder, model


def test_a_bottom_up_folder_or_model_gives_the_bottom_up_estimator(bottom_up_folder):
    folder, model = bottom_up_folder
    image = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    from_folder = vitpose_hf.pipeline(folder)
    from_model = vitpose_hf.pipeline(model, paradigm="bottom-up", flip_test=False)
    assert isinstance(from_folder, BottomUpPoseEstimator) and isinstance(from_model, BottomUpPoseEstimator)
    # same weights, same settings: the same people, in the top-down pipeline's per-person format
    expected = BottomUpPoseEstimator(model, flip_test=from_folder.flip_test)([image])
    assert from_folder([image]) == expected
    for person in expected[0]:
        assert set(person) >= {"box", "box_format", "box_score", "label", "dataset", "keypoints"}
        assert len(person["keypoints"]) == 17


def test_top_down_models_stay_top_down():
    model = ViTPoseForPoseEstimation(ViTPoseConfig(image_size=(64, 48), **TINY)).eval()
    assert isinstance(vitpose_hf.pipeline(model), vitpose_hf.PoseEstimationPipeline)


def test_bottom_up_refusals_name_the_problem(bottom_up_folder):
    folder, model = bottom_up_folder
    with pytest.raises(ValueError, match="paradigm must be"):
        vitpose_hf.pipeline(model, paradigm="sideways")
    with pytest.raises(ValueError, match="detector= does not apply"):
        vitpose_hf.pipeline(folder, detector="PekingU/rtdetr_r50vd")
    with pytest.raises(TypeError, match="box_format"):
        vitpose_hf.pipeline(folder, box_format="xyxy")
    with pytest.raises(ValueError, match="torch_dtype"):
        vitpose_hf.pipeline(folder, torch_dtype="fp16")
