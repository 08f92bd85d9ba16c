"""Python API users get the same once-per-kind warnings as the CLI for inputs that are almost surely mistakes."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from test_pipeline import tiny_pose_model

from vitpose_hf import ViTPoseImageProcessor, pipeline


@pytest.fixture(scope="module")
def pose():
    return pipeline(tiny_pose_model(), device="cpu")


def test_pipeline_warns_once_per_kind_for_suspicious_boxes(pose, caplog):
    image = np.zeros((48, 64, 3), np.uint8)  # 64 wide, 48 high
    boxes = [[10, 10, 0, 20], [100, 60, 10, 10], [30, 20, 60, 46]]  # zero-size, outside, xyxy read as xywh
    with caplog.at_level(logging.WARNING):
        first = pose([image, image], boxes=[boxes, boxes], box_format="xywh")
        pose(image, boxes=boxes, box_format="xywh")
    text = [r.getMessage() for r in caplog.records]
    assert sum("zero width or height" in t for t in text) == 1
    assert sum("entirely outside" in t for t in text) == 1
    assert sum("are the boxes xyxy?" in t for t in text) == 1
    assert [len(people) for people in first] == [3, 3]  # warnings only: every box still gives a person


def test_pipeline_is_quiet_for_sensible_boxes(caplog):
    quiet = pipeline(tiny_pose_model(), device="cpu")
    with caplog.at_level(logging.WARNING):
        quiet(np.zeros((48, 64, 3), np.uint8), boxes=[[5, 5, 30, 40]], box_format="xywh")
    assert not [r for r in caplog.records if "boxes[" in r.getMessage()]


def test_processor_warns_for_a_float_image_in_unit_range():
    processor = ViTPoseImageProcessor()
    unit = torch.rand(3, 40, 30)  # already divided by 255: would come out nearly black
    with pytest.warns(UserWarning, match="0..1 only"):
        processor(unit, boxes=[[0, 0, 30, 40]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        processor(unit * 255, boxes=[[0, 0, 30, 40]])  # 0..255 floats: fine
        processor(unit, boxes=[[0, 0, 30, 40]], do_rescale=False)  # the user said it is already scaled
