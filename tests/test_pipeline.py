"""The pose-estimation pipeline: real images with given boxes, parity with processor + model by hand, a tiny
random detector with the label filter, batching across images, ViTPose++ heads, dtypes, and bad inputs."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import PIL.Image
import pytest
import torch
import transformers
from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessorPil

from vitpose_hf import ViTPoseForPoseEstimation
from vitpose_hf.image_processing_vitpose_hf import ViTPoseImageProcessor, flip_pixel_values
from vitpose_hf.inference.detection import ObjectDetector
from vitpose_hf.inference.hub import HubUnreachableError
from vitpose_hf.inference.pipeline import (
    DEFAULT_MODEL,
    TASK,
    PoseEstimationPipeline,
    pipeline,
    register_pipeline,
)

from helpers import peaked_model, tiny_config, tiny_plus_config
from official_names import COCO_NAMES

# the 80 COCO detection classes in the usual contiguous order (what COCO-trained detectors' id2label holds)
COCO80 = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
]
INPUT_H, INPUT_W = 64, 48


# ----------------------------------------------------------------------------------------------------------------
# tiny checkpoints
# ----------------------------------------------------------------------------------------------------------------
def sharpen_heads(model: ViTPoseForPoseEstimation, seed: int = 0) -> ViTPoseForPoseEstimation:
    """Random heads with clear, well-scored peaks (the default init gives near-flat heatmaps)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.heads.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            if name.endswith("final_layer.bias"):
                p.fill_(5.0)
    return model.eval()


def tiny_pose_model(seed: int = 0, plus: bool = False) -> ViTPoseForPoseEstimation:
    torch.manual_seed(seed)
    config = tiny_plus_config(deconv_channels=16) if plus else tiny_config(deconv_channels=16)
    return sharpen_heads(ViTPoseForPoseEstimation(config), seed)


def peaked_pose_model(seed: int = 0) -> tuple[ViTPoseForPoseEstimation, list[tuple[int, int]]]:
    """A tiny simple-decoder COCO model with one clear, untied heatmap peak per keypoint (see helpers.peaked_model)."""
    model, cells = peaked_model(tiny_config(decoder="simple"), seed)
    return model, cells[: model.config.num_keypoints[0]]


@pytest.fixture(scope="module")
def pose_dir(tmp_path_factory):
    """A tiny COCO checkpoint with a default ViTPoseImageProcessor: UDP crops and UDP + DARK decoding."""
    path = tmp_path_factory.mktemp("tiny_pose")
    tiny_pose_model().save_pretrained(path)
    ViTPoseImageProcessor(size={"height": INPUT_H, "width": INPUT_W}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def msra_pose_dir(tmp_path_factory):
    """The same weights with the classic arg-max + quarter-pixel decoder, for checks that need bounded decoding.

    DARK's Newton step, as in the official code, has no bound: on a random model's flat, noisy heatmaps it can
    throw a keypoint far outside the crop (the official behaviour, not a bug).
    """
    path = tmp_path_factory.mktemp("tiny_pose_msra")
    tiny_pose_model().save_pretrained(path)
    ViTPoseImageProcessor(size={"height": INPUT_H, "width": INPUT_W}, decoder="msra").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bare_pose_dir(tmp_path_factory):
    """The same weights without a preprocessor config (the pipeline builds one from the model config)."""
    path = tmp_path_factory.mktemp("tiny_pose_bare")
    tiny_pose_model().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def plus_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_plus")
    tiny_pose_model(plus=True).save_pretrained(path)
    return path


def tiny_detector() -> tuple[DetrForObjectDetection, DetrImageProcessorPil]:
    """A random DETR with COCO's 80 classes (no timm, no download) whose queries split into persons and dogs."""
    torch.manual_seed(0)
    config = DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config={
            "model_type": "resnet",
            "embedding_size": 8,
            "hidden_sizes": [8, 8, 8, 16],
            "depths": [1, 1, 1, 1],
            "layer_type": "basic",
            "out_features": ["stage4"],
        },
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=12,
        id2label=dict(enumerate(COCO80)),
        label2id={name: i for i, name in enumerate(COCO80)},
    )
    model = DetrForObjectDetection(config).eval()
    with torch.no_grad():
        model.model.query_position_embeddings.weight.normal_(0, 3.0)
        for layer in model.model.decoder.layers:
            for p in layer.parameters():
                if p.ndim == 2:
                    p.normal_(0, 0.5)
        for p in model.bbox_predictor.parameters():
            p.normal_(0, 0.3)
        head = model.class_labels_classifier
        head.weight.normal_(0, 0.1)
        for cls in (COCO80.index("person"), COCO80.index("dog"), COCO80.index("cat")):
            head.weight[cls].normal_(0, 3.0)
        head.bias.zero_()
        head.bias[len(COCO80)] = -5.0  # "no object" rarely wins
        head.bias[0] = 1.0
    processor = DetrImageProcessorPil(size={"shortest_edge": 96, "longest_edge": 128})
    return model, processor


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_detr")
    model, processor = tiny_detector()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


# ----------------------------------------------------------------------------------------------------------------
# real data
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coco(shared_data):
    """The 4 COCO images and their non-crowd ground-truth boxes (xywh)."""
    folder = shared_data / "mmpose" / "coco"
    data = json.loads((folder / "test_coco.json").read_text())
    paths, boxes = [], []
    for image in data["images"]:
        paths.append(str(folder / image["file_name"]))
        boxes.append([a["bbox"] for a in data["annotations"] if a["image_id"] == image["id"] and not a["iscrowd"]])
    return paths, boxes


def to_xyxy(boxes):
    return [[[x, y, x + w, y + h] for x, y, w, h in image_boxes] for image_boxes in boxes]


def padded_region(box_xywh, aspect=INPUT_W / INPUT_H, padding=1.25):
    """The image region a crop covers: the box grown to the input aspect ratio, then by the padding factor."""
    x, y, w, h = box_xywh
    cx, cy = x + w / 2, y + h / 2
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    w, h = w * padding, h * padding
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def keypoint_array(person):
    return np.array([[k["x"], k["y"], k["score"]] for k in person["keypoints"]])


# ----------------------------------------------------------------------------------------------------------------
# registration and construction
# ----------------------------------------------------------------------------------------------------------------
def test_task_registered_with_transformers(pose_dir):
    from transformers.pipelines import PIPELINE_REGISTRY

    register_pipeline()  # idempotent
    entry = PIPELINE_REGISTRY.supported_tasks[TASK]
    assert entry["impl"] is PoseEstimationPipeline
    assert entry["pt"] == (ViTPoseForPoseEstimation,)
    assert entry["default"]["model"]["pt"][0] == DEFAULT_MODEL == "usyd-community/vitpose-base-simple"
    pipe = transformers.pipeline(TASK, model=str(pose_dir), device="cpu")
    assert isinstance(pipe, PoseEstimationPipeline)
    assert isinstance(pipe.image_processor, ViTPoseImageProcessor)


def test_transformers_pipeline_matches_convenience(pose_dir, coco):
    paths, boxes = coco
    a = transformers.pipeline(TASK, model=str(pose_dir), device="cpu")(paths[:2], boxes=boxes[:2])
    b = pipeline(str(pose_dir), device="cpu")(paths[:2], boxes=boxes[:2])
    assert a == b


def test_transformers_vitpose_checkpoint_like_the_default_model(coco, tmp_path):
    """The default Hub model is in transformers' `vitpose` format: a local folder in that format works the same way."""
    from transformers import VitPoseConfig, VitPoseForPoseEstimation

    torch.manual_seed(0)
    backbone = {
        "model_type": "vitpose_backbone",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": [INPUT_H, INPUT_W],
        "patch_size": [8, 8],
        "out_indices": [2],
    }
    VitPoseForPoseEstimation(
        VitPoseConfig(backbone_config=backbone, num_labels=17, use_simple_decoder=True)
    ).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "VitPoseImageProcessor",
                "do_affine_transform": True,
                "do_normalize": True,
                "do_rescale": True,
                "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225],
                "normalize_factor": 200.0,
                "rescale_factor": 1 / 255,
                "size": {"height": INPUT_H, "width": INPUT_W},
            }
        )
    )
    paths, boxes = coco
    ours = pipeline(str(tmp_path), device="cpu")
    assert isinstance(ours.model, ViTPoseForPoseEstimation) and isinstance(ours.image_processor, ViTPoseImageProcessor)
    assert ours.image_processor.size == {"height": INPUT_H, "width": INPUT_W}
    results = ours(paths[0], boxes=boxes[0])
    assert [k["name"] for k in results[0]["keypoints"]] == COCO_NAMES
    assert transformers.pipeline(TASK, model=str(tmp_path), device="cpu")(paths[0], boxes=boxes[0]) == results


def test_save_pretrained_round_trip(pipe, coco, tmp_path):
    paths, boxes = coco
    pipe.save_pretrained(tmp_path / "saved")
    loaded = transformers.pipeline(TASK, model=str(tmp_path / "saved"), device="cpu")
    assert loaded.image_processor.to_dict() == pipe.image_processor.to_dict()
    assert loaded(paths[0], boxes=boxes[0]) == pipe(paths[0], boxes=boxes[0])


# ----------------------------------------------------------------------------------------------------------------
# real images with given boxes
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe(pose_dir):
    return pipeline(str(pose_dir), device="cpu")


def test_real_images_given_boxes_both_formats(pipe, coco):
    paths, boxes = coco
    # boxes on a 1/8-pixel grid: then x + w and x2 - x1 are exact in float32, so both formats give the very same
    # crops (DARK's unbounded step would amplify a last-bit difference on a random model's flat heatmaps)
    boxes = [[[round(v * 8) / 8 for v in box] for box in image_boxes] for image_boxes in boxes]
    xywh = pipe(paths, boxes=boxes, box_format="xywh")
    xyxy = pipe(paths, boxes=to_xyxy(boxes), box_format="xyxy")
    assert len(xywh) == len(xyxy) == len(paths) == 4
    for image_boxes, a_people, b_people, image_xyxy in zip(boxes, xywh, xyxy, to_xyxy(boxes)):
        assert len(a_people) == len(b_people) == len(image_boxes)
        for box, box_xyxy, a, b in zip(image_boxes, image_xyxy, a_people, b_people):
            # the box comes back as given, in the format given
            assert a["box"] == pytest.approx(box) and a["box_format"] == "xywh"
            assert b["box"] == pytest.approx(box_xyxy) and b["box_format"] == "xyxy"
            assert a["box_score"] is None and a["label"] is None and a["dataset"] == "coco"
            assert [k["name"] for k in a["keypoints"]] == COCO_NAMES
            # both formats describe the same crops, hence the same keypoints and scores
            np.testing.assert_array_equal(keypoint_array(a), keypoint_array(b))


def test_keypoints_in_image_coordinates_within_the_padded_box(msra_pose_dir, coco):
    paths, boxes = coco
    pipe = pipeline(str(msra_pose_dir), device="cpu")  # bounded decoding (see msra_pose_dir)
    results = pipe(paths, boxes=boxes)
    heatmap_w = INPUT_W // 2  # tiny model: 6 patches x 4 = 24 heatmap columns
    n = 0
    for image_boxes, people in zip(boxes, results):
        for box, person in zip(image_boxes, people):
            x1, y1, x2, y2 = padded_region(box)
            slack = (x2 - x1) / heatmap_w  # sub-pixel refinement may step one heatmap pixel past the border
            points = keypoint_array(person)[:, :2]
            assert np.isfinite(points).all()
            assert (points[:, 0] >= x1 - slack).all() and (points[:, 0] <= x2 + slack).all()
            assert (points[:, 1] >= y1 - slack).all() and (points[:, 1] <= y2 + slack).all()
            n += 1
    assert n == sum(len(b) for b in boxes) == 14
    # image coordinates, not crop coordinates: a box far from the origin gives points far from it
    far = pipe(paths[0], boxes=[[400.0, 300.0, 60.0, 80.0]])[0]
    assert keypoint_array(far)[:, 0].min() > 300 and keypoint_array(far)[:, 1].min() > 200


def test_json_round_trip(pipe, coco):
    paths, boxes = coco
    results = pipe(paths, boxes=boxes, box_scores=[[0.9] * len(b) for b in boxes], flip_test=True)
    text = json.dumps(results, allow_nan=False)
    assert json.loads(text) == results
    person = results[0][0]
    assert set(person) == {"box", "box_format", "box_score", "label", "dataset", "keypoints"}
    assert person["box_score"] == 0.9
    assert set(person["keypoints"][0]) == {"name", "x", "y", "score"}
    assert all(type(k["x"]) is float and type(k["score"]) is float for k in person["keypoints"])


@pytest.mark.parametrize("flip_test", [False, True])
def test_identical_to_processor_and_model_by_hand(pipe, pose_dir, coco, flip_test):
    paths, boxes = coco
    results = pipe(paths, boxes=boxes, flip_test=flip_test)

    processor = ViTPoseImageProcessor.from_pretrained(pose_dir)
    model = ViTPoseForPoseEstimation.from_pretrained(pose_dir).eval()
    images = [PIL.Image.open(p) for p in paths]
    inputs = processor(images, boxes=boxes, box_format="xywh")
    with torch.no_grad():
        outputs = model(inputs["pixel_values"])
        flipped = model(flip_pixel_values(inputs["pixel_values"])) if flip_test else None
    by_hand = processor.post_process_pose_estimation(outputs, crop_metadata=inputs, flip_outputs=flipped)

    assert [len(r) for r in results] == [len(r) for r in by_hand]
    for people, expected_people in zip(results, by_hand):
        for person, expected in zip(people, expected_people):
            assert [k["name"] for k in person["keypoints"]] == expected["labels"]
            got = torch.tensor([[k["x"], k["y"]] for k in person["keypoints"]], dtype=torch.float32)
            scores = torch.tensor([k["score"] for k in person["keypoints"]], dtype=torch.float32)
            assert torch.equal(got, expected["keypoints"])
            assert torch.equal(scores, expected["scores"])
            assert person["box"] == pytest.approx(expected["bbox"].tolist())


def test_processor_built_from_config_when_none_is_saved(bare_pose_dir, coco):
    paths, boxes = coco
    bare = pipeline(str(bare_pose_dir), device="cpu")
    assert bare.image_processor.size == {"height": INPUT_H, "width": INPUT_W}
    results = bare(paths[:2], boxes=boxes[:2])
    # the official COCO setting: UDP warp and UDP + DARK decoding, as a default-built processor does
    processor = ViTPoseImageProcessor(size={"height": INPUT_H, "width": INPUT_W})
    model = ViTPoseForPoseEstimation.from_pretrained(bare_pose_dir).eval()
    inputs = processor([PIL.Image.open(p) for p in paths[:2]], boxes=boxes[:2])
    with torch.no_grad():
        expected = processor.post_process_pose_estimation(model(inputs["pixel_values"]), crop_metadata=inputs)
    for people, expected_people in zip(results, expected):
        for person, e in zip(people, expected_people):
            assert [[k["x"], k["y"]] for k in person["keypoints"]] == e["keypoints"].double().tolist()


def test_crops_of_all_images_share_forward_passes(pipe, coco, monkeypatch):
    paths, boxes = coco
    calls = []
    original = pipe.model.forward

    def spy(pixel_values, *args, **kwargs):
        calls.append(pixel_values.shape[0])
        return original(pixel_values, *args, **kwargs)

    monkeypatch.setattr(pipe.model, "forward", spy)
    together = pipe(paths, boxes=boxes)
    assert calls == [14]  # 14 boxes over 4 images, one forward
    calls.clear()
    chunked = pipe(paths, boxes=boxes, batch_size=4)
    assert calls == [4, 4, 4, 2]
    for a, b in zip(together, chunked):
        for p, q in zip(a, b):
            np.testing.assert_allclose(keypoint_array(p), keypoint_array(q), atol=1e-3)
    calls.clear()
    pipe(paths, boxes=boxes, flip_test=True)
    assert calls == [14, 14]


def test_image_types_give_the_same_result(pipe, coco, monkeypatch):
    paths, boxes = coco
    box = boxes[0]
    image = PIL.Image.open(paths[0]).convert("RGB")
    array = np.asarray(image)
    expected = pipe(paths[0], boxes=box)
    assert pipe(image, boxes=box) == expected
    assert pipe(array, boxes=box) == expected
    assert pipe(torch.from_numpy(array).permute(2, 0, 1), boxes=box) == expected
    assert pipe([array], boxes=[box]) == [expected]
    assert pipe(array[None], boxes=[box]) == [expected]  # a 4-D array is a batch
    # transformers' nesting for one image: [[box, ...]]
    assert pipe(paths[0], boxes=[box]) == expected

    import transformers.image_utils

    seen = []

    def fake_load_image(url, timeout=None):
        seen.append((url, timeout))
        return image

    monkeypatch.setattr(transformers.image_utils, "load_image", fake_load_image)
    assert pipe("https://example.com/person.jpg", boxes=box, timeout=5.0) == expected
    assert seen == [("https://example.com/person.jpg", 5.0)]


def test_empty_box_lists_give_no_people(pipe, coco):
    paths, boxes = coco
    assert pipe(paths[0], boxes=[]) == []
    results = pipe(paths[:2], boxes=[[], boxes[1]])
    assert results[0] == [] and len(results[1]) == len(boxes[1])
    assert pipe(paths[:2], boxes=[[], []]) == [[], []]


def test_whole_image_box_without_detector_is_logged(pose_dir, coco, caplog):
    paths, _ = coco
    fresh = pipeline(str(pose_dir), device="cpu")
    with caplog.at_level(logging.WARNING, logger="vitpose_hf.inference.pipeline"):
        results = fresh(paths[:2])
        fresh(paths[:1])
    warnings = [r for r in caplog.records if "whole image" in r.getMessage()]
    assert len(warnings) == 1  # said once per pipeline
    for path, people in zip(paths, results):
        width, height = PIL.Image.open(path).size
        assert len(people) == 1
        assert people[0]["box"] == [0.0, 0.0, float(width), float(height)]
        assert people[0]["box_score"] is None


# ----------------------------------------------------------------------------------------------------------------
# ViTPose++ heads
# ----------------------------------------------------------------------------------------------------------------
def test_dataset_picks_the_vitpose_plus_head(plus_dir, coco):
    paths, boxes = coco
    plus = pipeline(str(plus_dir), device="cpu")
    default = plus(paths[0], boxes=boxes[0])
    assert default[0]["dataset"] == "coco" and len(default[0]["keypoints"]) == 17
    aic = plus(paths[0], boxes=boxes[0], dataset="aic")
    assert aic[0]["dataset"] == "aic" and len(aic[0]["keypoints"]) == 14
    assert aic[0]["keypoints"][12]["name"] == "head_top"
    wholebody = plus(paths[0], boxes=boxes[0], dataset="wholebody")
    assert len(wholebody[0]["keypoints"]) == 133
    by_index = plus(paths[0], boxes=boxes[0], dataset=3)
    assert by_index[0]["dataset"] == "ap10k"
    # a default set at construction
    mpii = pipeline(str(plus_dir), device="cpu", dataset="mpii")
    assert len(mpii(paths[0], boxes=boxes[0])[0]["keypoints"]) == 16


def test_unknown_dataset_for_the_checkpoint(pipe, plus_dir, coco):
    paths, boxes = coco
    with pytest.raises(ValueError, match=r"unknown dataset 'aic' for this checkpoint.*coco"):
        pipe(paths[0], boxes=boxes[0], dataset="aic")
    plus = pipeline(str(plus_dir), device="cpu")
    with pytest.raises(ValueError, match="crowdpose"):
        plus(paths[0], boxes=boxes[0], dataset="crowdpose")
    with pytest.raises(ValueError, match="out of range"):
        plus(paths[0], boxes=boxes[0], dataset=6)
    with pytest.raises(ValueError, match="unknown dataset"):
        pipeline(str(plus_dir), device="cpu", dataset="yoga")


# ----------------------------------------------------------------------------------------------------------------
# detector
# ----------------------------------------------------------------------------------------------------------------
def detections_by_hand(images, threshold, keep):
    model, processor = tiny_detector()
    inputs = processor(images=images, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    sizes = [(im.height, im.width) for im in images]
    raw = processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=sizes)
    out = []
    for result in raw:
        names = [COCO80[i] for i in result["labels"].tolist()]
        out.append(
            (
                names,
                [(b, s, n) for b, s, n in zip(result["boxes"].tolist(), result["scores"].tolist(), names) if n in keep],
            )
        )
    return out


def test_tiny_detector_finds_the_boxes_and_the_label_filter_applies(pose_dir, detector_dir, coco):
    paths, _ = coco
    images = [PIL.Image.open(p).convert("RGB") for p in paths[:2]]
    pipe = pipeline(str(pose_dir), detector=str(detector_dir), device="cpu", detector_threshold=0.5)
    results = pipe(paths[:2])
    expected = detections_by_hand(images, 0.5, {"person"})
    # the detections above the threshold hold other classes, and only persons come through
    assert {"dog", "cat"} <= {name for raw_names, _ in expected for name in raw_names}
    for people, (_raw_names, kept) in zip(results, expected):
        assert len(people) == len(kept) > 0
        for person, (box, score, name) in zip(people, kept):
            assert person["label"] == "person" == name
            assert person["box_score"] == pytest.approx(score) and person["box_score"] >= 0.5
            x1, y1, x2, y2 = box
            assert person["box"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-3)  # xywh by default
    # xyxy output, another threshold
    xyxy = pipe(paths[:2], box_format="xyxy", detector_threshold=0.97)
    expected = detections_by_hand(images, 0.97, {"person"})
    for people, (_, kept) in zip(xyxy, expected):
        assert len(people) == len(kept)
        for person, (box, _, _) in zip(people, kept):
            assert person["box"] == pytest.approx(box, abs=1e-3)


def test_detector_labels_follow_the_dataset(plus_dir, detector_dir, coco):
    paths, _ = coco
    images = [PIL.Image.open(paths[0]).convert("RGB")]
    animals = pipeline(str(plus_dir), detector=str(detector_dir), device="cpu", dataset="ap10k")
    people = animals(paths[0])
    kept = detections_by_hand(
        images, 0.5, {"dog", "cat", "horse", "sheep", "cow", "bird", "elephant", "bear", "zebra", "giraffe"}
    )[0][1]
    assert len(people) == len(kept) > 0
    assert {p["label"] for p in people} <= {"dog", "cat"}
    assert all(len(p["keypoints"]) == 17 and p["dataset"] == "ap10k" for p in people)
    # an explicit label list wins
    only_dogs = animals(paths[0], detector_labels=["dog"])
    assert {p["label"] for p in only_dogs} == {"dog"}


def test_detector_as_instance_pipeline_or_callable(pose_dir, coco):
    paths, _ = coco
    model, processor = tiny_detector()
    by_instance = pipeline(str(pose_dir), detector=ObjectDetector(model, processor), device="cpu")(paths[0])
    detr_pipe = transformers.pipeline("object-detection", model=model, image_processor=processor, device="cpu")
    by_pipeline = pipeline(str(pose_dir), detector=detr_pipe, device="cpu")(paths[0])
    assert by_instance == by_pipeline and len(by_instance) > 0

    def detector(images):
        return [
            [
                {"box": {"xmin": 10, "ymin": 20, "xmax": 110, "ymax": 220}, "score": 0.8, "label": "person"},
                {"box": [0, 0, 5, 5], "score": 0.9, "label": "car"},
            ]
            for _ in images
        ]

    people = pipeline(str(pose_dir), detector=detector, device="cpu")(paths[0])
    assert len(people) == 1 and people[0]["box"] == [10.0, 20.0, 100.0, 200.0] and people[0]["label"] == "person"


def test_detector_without_the_wanted_class_is_an_error(pose_dir, detector_dir, coco):
    paths, _ = coco
    pipe = pipeline(str(pose_dir), detector=str(detector_dir), device="cpu")
    with pytest.raises(ValueError, match="no class named.*unicorn"):
        pipe(paths[0], detector_labels=["unicorn"])


# ----------------------------------------------------------------------------------------------------------------
# precision and device
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["bf16", torch.float16])
def test_half_precision(coco, dtype, tmp_path):
    paths, boxes = coco
    model, cells = peaked_pose_model()
    with torch.no_grad():  # the model has the peaks it was built with
        heatmaps = model(torch.randn(2, 3, INPUT_H, INPUT_W, generator=torch.Generator().manual_seed(0))).heatmaps
    peaks = heatmaps.flatten(2).argmax(-1)
    assert (peaks == torch.tensor([(4 * r + 1) * heatmaps.shape[-1] + 4 * c + 1 for r, c in cells])).all()
    model.save_pretrained(tmp_path)
    ViTPoseImageProcessor(size={"height": INPUT_H, "width": INPUT_W}).save_pretrained(tmp_path)  # UDP + DARK

    expected = pipeline(str(tmp_path), device="cpu")(paths, boxes=boxes)
    half = pipeline(str(tmp_path), device="cpu", torch_dtype=dtype)
    wanted = torch.bfloat16 if dtype == "bf16" else dtype
    assert half.model.dtype == wanted
    results = half(paths, boxes=boxes)
    # Half precision may only change heatmap values, not the geometry: the peaks stay on the same pixel, and DARK's
    # sub-pixel step moves by about the values' relative rounding error over the blurred peak's log-curvature
    # (bf16: 2^-8, fp16: 2^-11, a few roundings deep), far below 0.05 heatmap px. Crop maths done in half
    # precision would not pass: bf16 box centres (steps of 2-4 px here) move 6 of these 14 people by more.
    # Scores are heatmap maxima: a few roundings of the dtype, 4 eps.
    eps = torch.finfo(wanted).eps
    n = 0
    for image_boxes, half_people, full_people in zip(boxes, results, expected):
        assert len(half_people) == len(full_people) == len(image_boxes)
        for box, person, reference in zip(image_boxes, half_people, full_people):
            x1, _, x2, _ = padded_region(box)
            heatmap_px = (x2 - x1) / (INPUT_W // 2 - 1)  # UDP: the heatmap's end pixels sit on the crop's edges
            got, want = keypoint_array(person), keypoint_array(reference)
            assert np.isfinite(got).all()
            np.testing.assert_allclose(got[:, :2], want[:, :2], rtol=0, atol=0.05 * heatmap_px)
            np.testing.assert_allclose(got[:, 2], want[:, 2], rtol=4 * eps, atol=0)
            n += 1
    assert n == 14


def test_model_instance_and_transformers_model_rejected(coco):
    paths, boxes = coco
    model = tiny_pose_model()
    pipe = pipeline(model, device="cpu")
    assert len(pipe(paths[0], boxes=boxes[0])) == 1
    from transformers import VitPoseConfig, VitPoseForPoseEstimation

    theirs = VitPoseForPoseEstimation(
        VitPoseConfig(
            backbone_config={
                "model_type": "vitpose_backbone",
                "hidden_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 4,
                "image_size": [64, 48],
                "patch_size": [8, 8],
            }
        )
    )
    with pytest.raises(TypeError, match="ViTPoseForPoseEstimation.from_pretrained"):
        PoseEstimationPipeline(model=theirs, device="cpu")


def test_hub_unreachable_error_says_how_to_pass_a_local_checkpoint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnreachableError) as info:
        pipeline("vitpose-hf-tests/not-a-cached-model")
    message = str(info.value)
    assert "cannot be reached" in message and "--model /path/to/checkpoint" in message
    assert "vitpose-hf-tests/not-a-cached-model" in message


def test_hub_load_turns_huggingface_hub_connection_errors_into_the_clear_error(monkeypatch):
    """A download that fails for lack of connection (huggingface_hub's LocalEntryNotFoundError, as transformers
    re-raises it) gives HubUnreachableError; other load errors (a missing repo, a bad file) pass through unchanged."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    from vitpose_hf.inference import hub as hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    real_reachable = hub.hub_reachable
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: True)  # the probe answers; the download fails
    calls = []

    def no_connection(name, **kwargs):
        calls.append(kwargs.get("local_files_only", False))
        try:
            raise LocalEntryNotFoundError("cannot find the requested files in the local cache")
        except LocalEntryNotFoundError as exc:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files") from exc

    with pytest.raises(HubUnreachableError, match="--detector /path/to/checkpoint") as info:
        hub.hub_load(no_connection, "org/not-cached", "detector", "--detector")
    assert isinstance(info.value.__cause__, OSError) and calls == [True, False]  # the cache first, then the Hub

    def missing_repo(name, **kwargs):
        raise OSError(f"{name} is not a local folder and is not a valid model identifier")

    with pytest.raises(OSError, match="not a valid model identifier") as info:
        hub.hub_load(missing_repo, "org/no-such-repo")
    assert not isinstance(info.value, HubUnreachableError)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")  # set after import: huggingface_hub read its flags already
    assert hub.offline_mode() and real_reachable() is False  # no request is made in offline mode


# ----------------------------------------------------------------------------------------------------------------
# bad inputs
# ----------------------------------------------------------------------------------------------------------------
def test_boxes_for_the_wrong_number_of_images(pipe, coco):
    paths, boxes = coco
    with pytest.raises(ValueError, match=r"got boxes for 3 images but 2 images"):
        pipe(paths[:2], boxes=boxes[:3])
    with pytest.raises(ValueError, match="box_scores"):
        pipe(paths[:2], boxes=boxes[:2], box_scores=[[0.5]])


@pytest.mark.parametrize(
    "box, message",
    [
        ([10.0, 10.0, -5.0, 20.0], r"boxes\[0\]\[0\] = .*negative width"),
        ([10.0, 10.0, 5.0, math.nan], "NaN"),
        ([10.0, 10.0, 5.0], r"shape \(N, 4\)"),
        (["a", 1, 2, 3], "numbers"),
    ],
)
def test_bad_box(pipe, coco, box, message):
    paths, _ = coco
    with pytest.raises(ValueError, match=message):
        pipe(paths[0], boxes=[box])


def test_bad_box_in_xyxy_and_bad_options(pipe, coco):
    paths, boxes = coco
    with pytest.raises(ValueError, match="x2 < x1"):
        pipe(paths[0], boxes=[[50, 10, 40, 30]], box_format="xyxy")
    with pytest.raises(ValueError, match="box_format"):
        pipe(paths[0], boxes=boxes[0], box_format="cxcywh")
    with pytest.raises(ValueError, match="batch_size"):
        pipe(paths[0], boxes=boxes[0], batch_size=0)
    with pytest.raises(ValueError, match="flip_test"):
        pipe(paths[0], boxes=boxes[0], flip_test="yes")
    with pytest.raises(TypeError):
        pipe(paths[0], boxes=boxes[0], dataset_index=1)  # not an option
    with pytest.raises(ValueError, match="torch_dtype"):
        pipeline(pipe.model, torch_dtype="int8")


def test_bad_images(pipe):
    with pytest.raises(TypeError, match="unsupported image type int"):
        pipe(42)
    with pytest.raises(ValueError, match="no image file"):
        pipe("/nonexistent/person.jpg", boxes=[])
    with pytest.raises(ValueError, match="needs an image"):
        pipe(None)
