"""ViTPoseImageProcessor: crops against OpenCV and transformers, input handling, post-processing, serialisation."""

import json
import math

import cv2
import numpy as np
import PIL.Image
import pytest
import torch
from transformers.models.vitpose.modeling_vitpose import VitPoseEstimatorOutput

from vitpose_hf.boxes import xywh_to_xyxy
from vitpose_hf.codecs import MSRAHeatmap, UDPHeatmap, flip_back
from vitpose_hf.geometry import apply_affine, box_to_center_scale, crop_to_image, inverse_warp_matrix
from vitpose_hf.image_processing_vitpose_hf import ViTPoseImageProcessor, flip_pixel_values

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


# ---- reference: the official crop, cv2.warpAffine INTER_LINEAR with the UDP (or classic) matrix, zero border -------
def ref_udp_matrix(center, scale, rotation=0.0):
    theta = np.deg2rad(rotation)
    size_input, size_dst, size_target = center * 2.0, np.array([191.0, 255.0]), scale * 200.0
    sx, sy = size_dst / size_target
    c, s = math.cos(theta), math.sin(theta)
    return np.array(
        [
            [c * sx, -s * sx, sx * (-0.5 * size_input[0] * c + 0.5 * size_input[1] * s + 0.5 * size_target[0])],
            [s * sy, c * sy, sy * (-0.5 * size_input[0] * s - 0.5 * size_input[1] * c + 0.5 * size_target[1])],
        ]
    )


def ref_classic_matrix(center, scale):
    """The classic (non-UDP) warp without rotation: region of scale*200 px onto (192, 256), centre to (96, 128)."""
    k = np.array([192.0, 256.0]) / (scale * 200.0)
    return np.array([[k[0], 0, 96.0 - k[0] * center[0]], [0, k[1], 128.0 - k[1] * center[1]]])


def ref_crop(image, matrix):
    return cv2.warpAffine(image, matrix, (192, 256), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def raw_crops(processor, *args, **kwargs):
    """Crops on the 0..255 scale (no rescale, no normalisation), as (N, H, W, 3) numpy."""
    out = processor(*args, do_rescale=False, do_normalize=False, **kwargs)
    return out, out["pixel_values"].permute(0, 2, 3, 1).numpy()


def load_rgb(path):
    return np.asarray(PIL.Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def coco(shared_data):
    """The 4 COCO val images with GT boxes, detector boxes and GT keypoints."""
    folder = shared_data / "mmpose/coco"
    gt = json.loads((folder / "test_coco.json").read_text())
    det = json.loads((folder / "test_coco_det_AP_H_56.json").read_text())
    items = []
    for image in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
        items.append(
            {
                "path": folder / image["file_name"],
                "image": load_rgb(folder / image["file_name"]),
                "gt_boxes": [a["bbox"] for a in anns],
                "det_boxes": [d["bbox"] for d in det if d["image_id"] == image["id"]],
                "keypoints": [a["keypoints"] for a in anns],
            }
        )
    return items


@pytest.fixture(scope="module")
def minicoco(shared_data):
    """A few more real COCO images of other sizes, with their GT boxes."""
    folder = shared_data / "super-gradients/pose_minicoco"
    gt = json.loads((folder / "annotations/person_keypoints_val2017.json").read_text())
    items = []
    for image in gt["images"]:
        boxes = [a["bbox"] for a in gt["annotations"] if a["image_id"] == image["id"]]
        if boxes:
            items.append({"image": load_rgb(folder / "images/val2017" / image["file_name"]), "boxes": boxes})
    return items[:5]


@pytest.fixture(scope="module")
def processor():
    return ViTPoseImageProcessor()


def odd_boxes(image):
    """Boxes partly or fully outside the image, tiny, wide, tall and zero-size ones."""
    h, w = image.shape[:2]
    return [[-50, -30, 200, 300], [w - 40, h - 60, 100, 120], [w + 10, 5, 30, 60], [10, 10, 0, 0], [100, 100, 5, 3],
            [0, h / 2, w, 20], [w / 2, 0, 15, h]]


# ---- crops -----------------------------------------------------------------------------------------------------
def assert_close_to_opencv(ours, reference, where):
    diff = np.abs(ours.astype(np.float64) - reference.astype(np.float64))
    assert diff.max() <= 2.0, f"{where}: max |ours - cv2| = {diff.max():.3f} grey levels"
    assert diff.mean() <= 0.5, f"{where}: mean |ours - cv2| = {diff.mean():.3f} grey levels"


def test_crops_match_opencv_on_real_images(processor, coco, minicoco):
    cases = [(c["image"], c["gt_boxes"] + c["det_boxes"] + odd_boxes(c["image"])) for c in coco]
    cases += [(m["image"], m["boxes"]) for m in minicoco]
    for n, (image, boxes) in enumerate(cases):
        out, ours = raw_crops(processor, image, boxes)
        assert ours.shape == (len(boxes), 256, 192, 3)
        for i, box in enumerate(boxes):
            c, s = box_to_center_scale([box], input_size=(256, 192))
            if box[2] == 0 and box[3] == 0:
                continue  # OpenCV cannot invert a zero-scale matrix
            reference = ref_crop(image, ref_udp_matrix(c[0].double().numpy(), s[0].double().numpy()))
            assert_close_to_opencv(ours[i], reference, f"image {n} box {i} {box}")


def test_rotation_scale_and_classic_warp_match_opencv(processor, coco):
    image, boxes = coco[1]["image"], coco[1]["gt_boxes"]
    rotation = np.linspace(-70, 70, len(boxes))
    out, ours = raw_crops(processor, image, boxes, rotation=rotation.tolist(), scale_factor=0.8)
    for i in range(len(boxes)):
        reference = ref_crop(image, ref_udp_matrix(out["center"][i].double().numpy(), out["scale"][i].double().numpy(), rotation[i]))
        assert_close_to_opencv(ours[i], reference, f"rotated box {i}")
    torch.testing.assert_close(out["scale"], box_to_center_scale(boxes)[1] * 0.8)
    torch.testing.assert_close(out["rotation"], torch.tensor(rotation, dtype=torch.float32))
    out, ours = raw_crops(processor, image, boxes, use_udp=False)
    assert out["use_udp"] is False
    for i in range(len(boxes)):
        reference = ref_crop(image, ref_classic_matrix(out["center"][i].double().numpy(), out["scale"][i].double().numpy()))
        assert_close_to_opencv(ours[i], reference, f"classic box {i}")


def test_normalisation(processor, coco):
    image, boxes = coco[0]["image"], coco[0]["gt_boxes"]
    raw = processor(image, boxes, do_rescale=False, do_normalize=False)["pixel_values"]
    normalised = processor(image, boxes)["pixel_values"]
    expected = (raw / 255.0 - torch.tensor(MEAN).float().view(1, 3, 1, 1)) / torch.tensor(STD).float().view(1, 3, 1, 1)
    torch.testing.assert_close(normalised, expected)
    assert normalised.is_contiguous() and normalised.dtype == torch.float32


def test_batch_of_images_equals_one_call_per_image(processor, coco):
    images = [c["image"] for c in coco]
    boxes = [c["gt_boxes"] + odd_boxes(c["image"])[:3] for c in coco]
    boxes[2] = []  # an image without boxes in the middle of the batch
    batch = processor(images, boxes)
    assert batch["crops_per_image"].tolist() == [len(b) for b in boxes]
    assert batch["image_index"].tolist() == [i for i, b in enumerate(boxes) for _ in b]
    singles = [processor(img, b)["pixel_values"] for img, b in zip(images, boxes)]
    # float32 grid coordinates on the tall canvas: ~0.03 grey levels apart
    torch.testing.assert_close(batch["pixel_values"], torch.cat(singles), atol=1e-3, rtol=0)
    torch.testing.assert_close(batch["boxes"], torch.tensor([x for b in boxes for x in b], dtype=torch.float32))


def test_crops_agree_with_transformers_inside_the_image(processor, coco):
    """transformers' scipy warp agrees inside the image (it rounds to uint8) and differs at image borders."""
    from transformers.models.vitpose.image_processing_pil_vitpose import VitPoseImageProcessorPil

    theirs_processor = VitPoseImageProcessorPil()
    std = torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1) * 255
    for item in coco:
        image, boxes = item["image"], item["gt_boxes"]
        ours = processor(image, boxes)
        theirs = theirs_processor(PIL.Image.fromarray(image), boxes=[boxes], return_tensors="pt")["pixel_values"]
        assert theirs.shape == ours["pixel_values"].shape
        grey_levels = ((ours["pixel_values"] - theirs).abs() * std).permute(0, 2, 3, 1)
        # crop pixels whose sample point lies inside the image
        v, u = torch.meshgrid(torch.arange(256.0), torch.arange(192.0), indexing="ij")
        grid = torch.stack([u, v], -1).reshape(1, -1, 2).expand(len(boxes), -1, -1)
        points = apply_affine(grid, inverse_warp_matrix(ours["center"], ours["scale"])).reshape(len(boxes), 256, 192, 2)
        h, w = image.shape[:2]
        inside = (points[..., 0] >= 0) & (points[..., 0] <= w - 1) & (points[..., 1] >= 0) & (points[..., 1] <= h - 1)
        assert inside.float().mean() > 0.8
        assert grey_levels[inside].max() <= 1.0, "more than transformers' uint8 rounding inside the image"


def test_xyxy_boxes_and_default_whole_image_box(processor, coco):
    image, boxes = coco[0]["image"], coco[0]["gt_boxes"]
    xywh = processor(image, boxes)
    xyxy = processor(image, xywh_to_xyxy(torch.tensor(boxes)), box_format="xyxy")
    torch.testing.assert_close(xyxy["pixel_values"], xywh["pixel_values"])
    assert xyxy["box_format"] == "xyxy"
    torch.testing.assert_close(xyxy["boxes"], xywh_to_xyxy(torch.tensor(boxes, dtype=torch.float32)))
    whole = processor(image)
    h, w = image.shape[:2]
    torch.testing.assert_close(whole["boxes"], torch.tensor([[0.0, 0.0, w, h]]))


def test_empty_boxes(processor, coco):
    image = coco[0]["image"]
    for empty in ([], [[]], np.zeros((0, 4)), torch.zeros(0, 4)):
        out = processor(image, empty)
        assert out["pixel_values"].shape == (0, 3, 256, 192)
        assert out["image_index"].shape == (0,) and out["center"].shape == (0, 2)
        assert processor.post_process_pose_estimation(torch.zeros(0, 17, 64, 48), crop_metadata=out) == [[]]
    out = processor([image, image], [[], []])
    assert out["pixel_values"].shape == (0, 3, 256, 192) and out["crops_per_image"].tolist() == [0, 0]
    assert processor.post_process_pose_estimation(torch.zeros(0, 17, 64, 48), crop_metadata=out) == [[], []]
    assert processor.post_process_pose_estimation(torch.zeros(0, 17, 64, 48), boxes=[[], []]) == [[], []]
    assert processor([], [])["pixel_values"].shape == (0, 3, 256, 192)


def test_numpy_return_and_transformers_box_nesting(processor, coco):
    image, boxes = coco[0]["image"], coco[0]["gt_boxes"]
    out = processor(image, [boxes], return_tensors="np")  # transformers' nesting for one image
    assert isinstance(out["pixel_values"], np.ndarray) and out["pixel_values"].shape == (len(boxes), 3, 256, 192)
    np.testing.assert_allclose(out["pixel_values"], processor(image, boxes)["pixel_values"].numpy())


# ---- image types and modes -------------------------------------------------------------------------------------
def test_image_types_agree(processor, coco):
    item = coco[3]
    image, boxes = item["image"], item["gt_boxes"]
    reference = processor(image, boxes)["pixel_values"]
    chw = torch.from_numpy(image).permute(2, 0, 1)
    for name, value in [
        ("PIL", PIL.Image.fromarray(image)),
        ("path", item["path"]),
        ("str path", str(item["path"])),
        ("torch CHW", chw),
        ("torch CHW contiguous", chw.contiguous()),
        ("torch float 0..255", chw.float()),
        ("numpy float", image.astype(np.float64)),
        ("numpy from BGR (negative strides)", np.ascontiguousarray(image[..., ::-1])[..., ::-1]),
        ("numpy RGBA", np.concatenate([image, np.full(image.shape[:2] + (1,), 7, np.uint8)], -1)),
        ("PIL RGBA (alpha dropped)", PIL.Image.fromarray(image).convert("RGBA")),
    ]:
        torch.testing.assert_close(processor(value, boxes)["pixel_values"], reference, msg=name)
    batched = processor(chw.unsqueeze(0).expand(2, -1, -1, -1), [boxes, boxes[:1]])
    torch.testing.assert_close(batched["pixel_values"], torch.cat([reference, reference[:1]]), atol=1e-3, rtol=0)
    batched_np = processor(np.stack([image, image]), [boxes, []])
    torch.testing.assert_close(batched_np["pixel_values"], reference)


def test_greyscale_palette_and_16_bit_rules(processor, coco):
    image, boxes = coco[0]["image"], coco[0]["gt_boxes"][:3]
    grey = PIL.Image.fromarray(image).convert("L")
    grey_rgb = np.repeat(np.asarray(grey)[..., None], 3, -1)
    expected = processor(grey_rgb, boxes)["pixel_values"]
    grey_array = np.asarray(grey)
    for name, value in [
        ("PIL L", grey),
        ("PIL LA", grey.convert("LA")),
        ("numpy HW", grey_array),
        ("numpy HW1", grey_array[..., None]),
        ("numpy grey+alpha", np.stack([grey_array, np.zeros_like(grey_array)], -1)),
        ("torch HW", torch.from_numpy(grey_array.copy())),
        ("torch 1HW", torch.from_numpy(grey_array.copy()).unsqueeze(0)),
        ("torch float 1HW", torch.from_numpy(grey_array.copy()).unsqueeze(0).float()),
        ("numpy uint16", grey_array.astype(np.uint16) * 257),  # 255 * 257 = 65535
        ("PIL I;16", PIL.Image.fromarray(grey_array.astype(np.uint16) * 257)),
    ]:
        torch.testing.assert_close(processor(value, boxes)["pixel_values"], expected, atol=1e-5, rtol=0, msg=name)
    palette = PIL.Image.fromarray(image).convert("P")
    torch.testing.assert_close(
        processor(palette, boxes)["pixel_values"], processor(np.asarray(palette.convert("RGB")), boxes)["pixel_values"]
    )
    binary = np.zeros((50, 40), bool)
    binary[10:30, 5:20] = True
    torch.testing.assert_close(
        processor(binary, [[0, 0, 40, 50]])["pixel_values"],
        processor(binary.astype(np.uint8) * 255, [[0, 0, 40, 50]])["pixel_values"],
    )


@pytest.mark.parametrize(
    "image, error, message",
    [
        (np.zeros((3, 40, 50), np.uint8), ValueError, r"numpy images are \(H, W, C\) but got shape \(3, 40, 50\)"),
        (torch.zeros(40, 50, 3, dtype=torch.uint8), ValueError, r"torch images are \(C, H, W\) but got shape \(40, 50, 3\)"),
        (np.zeros((40, 50, 5), np.uint8), ValueError, r"numpy images are \(H, W, C\)|expected 1 \(grey\)"),
        (torch.zeros(6, 40, 50), ValueError, r"expected 1 \(grey\), 2 \(grey\+alpha\), 3 \(RGB\) or 4 \(RGBA\) channels, got 6"),
        (np.zeros((40, 50, 3), np.int32), TypeError, r"unsupported image dtype int32"),
        (torch.zeros(3, 40, 50, dtype=torch.int64), TypeError, r"unsupported image dtype torch.int64"),
        (np.zeros((0, 50, 3), np.uint8), ValueError, r"empty image"),
        (np.zeros((2, 2, 40, 50, 3), np.uint8), ValueError, r"a numpy image is \(H, W\), \(H, W, C\) or \(N, H, W, C\)"),
        ("/no/such/image.jpg", ValueError, r"no image file at '/no/such/image.jpg'"),
        (12, TypeError, r"unsupported image type int"),
    ],
)
def test_bad_images(processor, image, error, message):
    with pytest.raises(error, match=message):
        processor(image, [[0, 0, 10, 10]])


class _UnconvertibleImage(PIL.Image.Image):
    """Stands for a PIL mode that cannot be converted (every mode of Pillow 13 can)."""

    @property
    def mode(self):
        return "XYZ"

    def convert(self, *args, **kwargs):
        raise ValueError("conversion from XYZ to RGB not supported")


def test_bad_image_mode(processor):
    with pytest.raises(ValueError, match=r"images: cannot convert PIL mode 'XYZ' to RGB"):
        processor(_UnconvertibleImage(), [[0, 0, 4, 4]])


# ---- bad boxes and arguments -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "boxes, message",
    [
        ([[10, 10, float("nan"), 20]], r"boxes\[0\] = \[10\.0, 10\.0, nan, 20\.0\] \(xywh\) contains NaN"),
        ([[10, 10, 5, 5], [0, 0, float("inf"), 20]], r"boxes\[1\] .* contains NaN or infinity"),
        ([[10, 10, -5, 20]], r"boxes\[0\] = \[10\.0, 10\.0, -5\.0, 20\.0\] \(xywh\) has a negative width"),
        ([[10, 10, 5, -1]], r"negative height"),
        ([[10, 10, 5]], r"boxes must have shape \(N, 4\) \(xywh\), got shape \(1, 3\)"),
        ([10, 10, 5, 5], r"boxes must have shape \(N, 4\)"),
        ([[1, 2, 3, 4], [1, 2, 3]], r"rectangular array"),
    ],
)
def test_bad_boxes(processor, coco, boxes, message):
    with pytest.raises(ValueError, match=message):
        processor(coco[0]["image"], boxes)


def test_bad_boxes_in_a_batch_name_the_image(processor, coco):
    images = [coco[0]["image"], coco[1]["image"]]
    with pytest.raises(ValueError, match=r"boxes\[1\]\[0\] = \[0\.0, 0\.0, -1\.0, 4\.0\] \(xywh\) has a negative width"):
        processor(images, [[[0, 0, 4, 4]], [[0, 0, -1, 4]]])
    with pytest.raises(ValueError, match=r"got boxes for 3 images but 2 images"):
        processor(images, [[[0, 0, 4, 4]], [], []])
    with pytest.raises(ValueError, match=r"boxes\[1\] must have shape \(N, 4\)"):
        processor(images, [[[0, 0, 4, 4]], [0, 0, 4, 4]])
    with pytest.raises(ValueError, match=r"x2 < x1"):
        processor(images[0], [[10, 0, 5, 5]], box_format="xyxy")


def test_bad_arguments(processor, coco):
    image = coco[0]["image"]
    with pytest.raises(ValueError, match="box_format must be one of"):
        processor(image, [[0, 0, 4, 4]], box_format="cxcywh")
    with pytest.raises(ValueError, match="return_tensors must be"):
        processor(image, [[0, 0, 4, 4]], return_tensors="tf")
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['resample'\]"):
        processor(image, [[0, 0, 4, 4]], resample=2)
    with pytest.raises(ValueError, match=r"rotation must be a number or 1 finite numbers"):
        processor(image, [[0, 0, 4, 4]], rotation=[1.0, 2.0])
    with pytest.raises(ValueError, match="scale_factor must be a positive number"):
        processor(image, [[0, 0, 4, 4]], scale_factor=-1.0)
    with pytest.raises(ValueError, match="decoder must be one of"):
        ViTPoseImageProcessor(decoder="argmax")
    with pytest.raises(ValueError, match="unknown keypoint dataset"):
        ViTPoseImageProcessor(dataset="cocoa")
    with pytest.raises(ValueError, match="size must be"):
        ViTPoseImageProcessor(size={"height": 256})


# ---- post-processing -------------------------------------------------------------------------------------------
def encode_gt(processor, boxes, keypoints, box_format="xywh"):
    """Heatmap targets of GT keypoints for the crops of `boxes` (the training path: warp, then encode)."""
    center, scale = box_to_center_scale(boxes, box_format)
    crop_points = processor.keypoints_to_crop(keypoints[..., :2], {"center": center, "scale": scale, "use_udp": True})
    return processor.get_codec().encode(crop_points, (keypoints[..., 2] > 0).float())


def test_coco_gt_round_trip_within_half_a_pixel(processor, coco, shared_data):
    """GT keypoints -> box crop -> UDP target -> UDP-DARK decode -> image: back within 0.5 px.

    Keypoints closer than 4 heatmap px to the heatmap border are left out: there the reflected blur of the
    official DARK step biases the estimate (up to ~1 heatmap px at the edge), in the official code as here.
    """
    folder = shared_data / "super-gradients/pose_minicoco/annotations"
    annotations = [a for c in coco for a in zip(c["gt_boxes"], c["keypoints"])]
    for split in ("train2017", "val2017"):
        gt = json.loads((folder / f"person_keypoints_{split}.json").read_text())
        annotations += [(a["bbox"], a["keypoints"]) for a in gt["annotations"] if a["num_keypoints"] > 0 and not a["iscrowd"]]
    boxes = torch.tensor([a[0] for a in annotations])
    keypoints = torch.tensor([a[1] for a in annotations], dtype=torch.float32).view(-1, 17, 3)
    targets = encode_gt(processor, boxes, keypoints)
    results = processor.post_process_pose_estimation(targets["heatmaps"], boxes=boxes)
    decoded = torch.stack([person["keypoints"] for person in results[0]])
    center, scale = box_to_center_scale(boxes)
    heatmap_xy = processor.keypoints_to_crop(keypoints[..., :2], {"center": center, "scale": scale}) / torch.tensor(UDPHeatmap().stride)
    margin = torch.minimum(heatmap_xy, torch.tensor([47.0, 63.0]) - heatmap_xy).min(-1).values
    checked = (keypoints[..., 2] > 0) & (margin >= 4)
    assert checked.sum() >= 700 and checked.sum() >= 0.95 * (keypoints[..., 2] > 0).sum()
    error = (decoded - keypoints[..., :2]).norm(dim=-1)[checked]
    assert error.max() < 0.5, f"max round-trip error {error.max():.3f} px"


def test_post_process_structure(processor, coco):
    images = [c["image"] for c in coco[:3]]
    boxes = [coco[0]["gt_boxes"], [], coco[2]["gt_boxes"][:2]]
    inputs = processor(images, boxes)
    keypoints = torch.rand(len(inputs["pixel_values"]), 17, 3) * 100 + 50
    keypoints[..., 2] = 1
    flat_boxes = [b for per in boxes for b in per]
    heatmaps = encode_gt(processor, flat_boxes, keypoints)["heatmaps"]
    from_meta = processor.post_process_pose_estimation(VitPoseEstimatorOutput(heatmaps=heatmaps), crop_metadata=inputs)
    from_boxes = processor.post_process_pose_estimation(heatmaps, boxes=boxes)
    from_index = processor.post_process_pose_estimation(heatmaps, boxes=flat_boxes, image_index=inputs["image_index"])
    assert [len(r) for r in from_meta] == [len(b) for b in boxes]
    assert [len(r) for r in from_index] == [len(b) for b in boxes]
    names = ViTPoseImageProcessor().post_process_pose_estimation(heatmaps[:1], boxes=flat_boxes[:1])[0][0]["labels"]
    assert names[:3] == ["nose", "left_eye", "right_eye"] and len(names) == 17
    for a, b, c in zip(sum(from_meta, []), sum(from_boxes, []), sum(from_index, [])):
        assert set(a) == {"keypoints", "scores", "labels", "bbox", "dataset"}
        assert a["keypoints"].shape == (17, 2) and a["keypoints"].dtype == torch.float32
        assert a["scores"].shape == (17,) and a["dataset"] == "coco" and a["labels"] == names
        for other in (b, c):
            torch.testing.assert_close(a["keypoints"], other["keypoints"])
            torch.testing.assert_close(a["bbox"], other["bbox"])
    # the returned bbox is the input box, in the input format
    torch.testing.assert_close(from_meta[2][1]["bbox"], torch.tensor(boxes[2][1], dtype=torch.float32))
    xyxy_inputs = processor(images[0], xywh_to_xyxy(torch.tensor(boxes[0])), box_format="xyxy")
    xyxy_results = processor.post_process_pose_estimation(heatmaps[: len(boxes[0])], crop_metadata=xyxy_inputs)
    torch.testing.assert_close(xyxy_results[0][0]["bbox"], xywh_to_xyxy(torch.tensor(boxes[0][:1], dtype=torch.float32))[0])
    torch.testing.assert_close(xyxy_results[0][0]["keypoints"], from_meta[0][0]["keypoints"])
    # numpy metadata works too
    np_inputs = processor(images, boxes, return_tensors="np")
    from_np = processor.post_process_pose_estimation(heatmaps, crop_metadata=np_inputs)
    torch.testing.assert_close(from_np[2][0]["keypoints"], from_meta[2][0]["keypoints"])


def test_flip_test_averages_in_heatmap_space(processor, coco):
    boxes = coco[0]["gt_boxes"]
    gen = torch.Generator().manual_seed(0)
    heatmaps = torch.rand(len(boxes), 17, 64, 48, generator=gen)
    flipped = torch.rand(len(boxes), 17, 64, 48, generator=gen)
    flip_indices = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
    for use_udp in (True, False):
        p = ViTPoseImageProcessor(use_udp=use_udp)
        ours = p.post_process_pose_estimation(heatmaps, boxes=boxes, flip_outputs=VitPoseEstimatorOutput(heatmaps=flipped))
        averaged = (heatmaps + flip_back(flipped, flip_indices, shift=not use_udp)) / 2
        expected = p.post_process_pose_estimation(averaged, boxes=boxes)
        for a, b in zip(ours[0], expected[0]):
            torch.testing.assert_close(a["keypoints"], b["keypoints"])
            torch.testing.assert_close(a["scores"], b["scores"])
    torch.testing.assert_close(flip_pixel_values(heatmaps), heatmaps.flip(-1))
    torch.testing.assert_close(processor.flip_pixel_values(heatmaps), heatmaps.flip(-1))


def test_bf16_heatmaps_and_low_precision_metadata(processor, coco):
    boxes = coco[0]["gt_boxes"]
    inputs = processor(coco[0]["image"], boxes)
    heatmaps = torch.rand(len(boxes), 17, 64, 48, generator=torch.Generator().manual_seed(1))
    for dtype in (torch.bfloat16, torch.float16):
        low = processor.post_process_pose_estimation(heatmaps.to(dtype), crop_metadata=inputs)
        same = processor.post_process_pose_estimation(heatmaps.to(dtype).float(), crop_metadata=inputs)
        torch.testing.assert_close(low[0][0]["keypoints"], same[0][0]["keypoints"])
        assert low[0][0]["keypoints"].dtype == torch.float32
    cast = dict(inputs)
    cast["center"] = inputs["center"].to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"crop_metadata\['center'\] is torch.bfloat16"):
        processor.post_process_pose_estimation(heatmaps, crop_metadata=cast)


def test_mixed_dataset_batch():
    """A padded ViTPose++ batch: COCO (17) and AIC (14) crops, channels beyond num_keypoints[i] ignored."""
    p = ViTPoseImageProcessor(dataset=["coco", "aic"])
    boxes = [[10, 20, 100, 200], [50, 60, 80, 90], [0, 0, 40, 40]]
    gen = torch.Generator().manual_seed(2)
    heatmaps = torch.rand(3, 17, 64, 48, generator=gen)
    heatmaps[1, 14:] = 0
    outputs = VitPoseEstimatorOutput(heatmaps=heatmaps)
    outputs["num_keypoints"] = torch.tensor([17, 14, 17])
    outputs["dataset_index"] = torch.tensor([0, 1, 0])
    flipped = torch.rand(3, 17, 64, 48, generator=gen)
    results = p.post_process_pose_estimation(outputs, boxes=boxes, flip_outputs=flipped)[0]
    assert [r["dataset"] for r in results] == ["coco", "aic", "coco"]
    assert [len(r["labels"]) for r in results] == [17, 14, 17] and results[1]["keypoints"].shape == (14, 2)
    coco_only = ViTPoseImageProcessor(dataset="coco").post_process_pose_estimation(heatmaps[[0]], boxes=boxes[:1], flip_outputs=flipped[[0]])
    torch.testing.assert_close(results[0]["keypoints"], coco_only[0][0]["keypoints"])
    aic_only = ViTPoseImageProcessor(dataset="aic").post_process_pose_estimation(heatmaps[[1], :14], boxes=boxes[1:2], flip_outputs=flipped[[1], :14])
    torch.testing.assert_close(results[1]["keypoints"], aic_only[0][0]["keypoints"])
    with pytest.raises(ValueError, match="pass dataset_index"):
        p.post_process_pose_estimation(heatmaps, boxes=boxes)
    outputs["num_keypoints"] = torch.tensor([17, 17, 17])
    with pytest.raises(ValueError, match="does not match the keypoint counts"):
        p.post_process_pose_estimation(outputs, boxes=boxes)


def test_custom_dataset_dict_and_use_udp_from_the_dataset(coco):
    """A dataset given as an info dict; use_udp=None takes its official setting (non-UDP here)."""
    toy = {"name": "toy", "keypoint_names": ["a", "left_b", "right_b"], "flip_pairs": [[1, 2]]}
    p = ViTPoseImageProcessor(dataset=toy, use_udp=None)
    image, boxes = coco[1]["image"], coco[1]["gt_boxes"]
    inputs = p(image, boxes)
    assert inputs["use_udp"] is False
    gen = torch.Generator().manual_seed(3)
    heatmaps = torch.rand(len(boxes), 3, 64, 48, generator=gen)
    flipped = torch.rand(len(boxes), 3, 64, 48, generator=gen)
    results = p.post_process_pose_estimation(heatmaps, flip_outputs=flipped, crop_metadata=inputs)[0]
    averaged = (heatmaps + flip_back(flipped, [0, 2, 1], shift=True)) / 2
    crop_points, scores = MSRAHeatmap().decode(averaged)
    expected = crop_to_image(crop_points, inputs["center"], inputs["scale"], (256, 192), use_udp=False)
    for i, person in enumerate(results):
        assert person["labels"] == ["a", "left_b", "right_b"] and person["dataset"] == "toy"
        torch.testing.assert_close(person["keypoints"], expected[i])
        torch.testing.assert_close(person["scores"], scores[i])


def test_post_process_errors(processor, coco):
    boxes = coco[0]["gt_boxes"]
    heatmaps = torch.rand(len(boxes), 17, 64, 48)
    with pytest.raises(ValueError, match=f"the heatmaps hold {len(boxes)} crops but {len(boxes) - 1} boxes"):
        processor.post_process_pose_estimation(heatmaps, boxes=boxes[:-1])
    with pytest.raises(ValueError, match="the heatmaps have 17 channels but dataset 'aic' has 14 keypoints"):
        processor.post_process_pose_estimation(heatmaps, boxes=boxes, dataset="aic")
    with pytest.raises(ValueError, match="needs the boxes"):
        processor.post_process_pose_estimation(heatmaps)
    with pytest.raises(ValueError, match="flip_outputs heatmaps"):
        processor.post_process_pose_estimation(heatmaps, boxes=boxes, flip_outputs=heatmaps[:, :5])
    with pytest.raises(TypeError, match="model output with .heatmaps or a tensor"):
        processor.post_process_pose_estimation([1, 2], boxes=boxes)
    with pytest.raises(ValueError, match=r"boxes\[0\] .* contains NaN"):
        processor.post_process_pose_estimation(heatmaps[:1], boxes=[[0, 0, float("nan"), 1]])


# ---- serialisation ---------------------------------------------------------------------------------------------
def test_save_and_load(tmp_path, monkeypatch):
    import transformers.dynamic_module_utils as dynamic
    from transformers import AutoImageProcessor

    processor = ViTPoseImageProcessor(use_udp=False, dataset=["coco", "aic"], blur_kernel_size=5)
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert config["image_processor_type"] == "ViTPoseImageProcessor"
    assert config["auto_map"] == {"AutoImageProcessor": "image_processing_vitpose_hf.ViTPoseImageProcessor"}
    assert config["size"] == {"height": 256, "width": 192} and config["padding_factor"] == 1.25
    assert config["use_udp"] is False and config["dataset"] == ["coco", "aic"] and config["blur_kernel_size"] == 5
    kernel = ("image_processing_vitpose_hf.py", "codecs.py", "geometry.py", "keypoint_metadata.py", "images.py", "boxes.py")
    for name in kernel:  # the processor's relative imports, copied beside it for trust_remote_code
        assert (tmp_path / name).is_file(), name
    again = ViTPoseImageProcessor.from_pretrained(tmp_path)
    assert again.to_dict() == processor.to_dict()
    assert ViTPoseImageProcessor.from_pretrained(tmp_path, use_udp=True).use_udp is True
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    auto = AutoImageProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(auto).__name__ == "ViTPoseImageProcessor"
    assert {k: v for k, v in auto.to_dict().items()} == processor.to_dict()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_input_stays_on_device(processor, coco):
    image, boxes = coco[0]["image"], coco[0]["gt_boxes"]
    tensor = torch.from_numpy(image).permute(2, 0, 1).cuda()
    out = processor(tensor, boxes)
    assert out["pixel_values"].is_cuda
    torch.testing.assert_close(out["pixel_values"].cpu(), processor(image, boxes)["pixel_values"], atol=1e-3, rtol=0)
    heatmaps = torch.rand(len(boxes), 17, 64, 48, device="cuda", dtype=torch.bfloat16)
    result = processor.post_process_pose_estimation(heatmaps, crop_metadata=out)
    assert result[0][0]["keypoints"].is_cuda
