"""ViTPoseImageProcessor: crops against OpenCV and transformers, input handling, post-processing, serialisation."""

import itertools
import json
import math
from dataclasses import dataclass

import cv2
import numpy as np
import PIL.Image
import pytest
import torch
from transformers.models.vitpose.modeling_vitpose import VitPoseEstimatorOutput
from transformers.utils import ModelOutput

from vitpose_hf.boxes import xywh_to_xyxy
from vitpose_hf.codecs import MSRAHeatmap, UDPHeatmap
from vitpose_hf.geometry import apply_affine, box_to_center_scale, inverse_warp_matrix
from vitpose_hf.image_processing_vitpose_hf import ViTPoseImageProcessor, flip_pixel_values
from vitpose_hf.keypoint_metadata import get_dataset_info

from reference_codecs import INPUT_WH, ref_decode_msra, ref_keypoints, ref_targets, ref_transform_preds

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
    return cv2.warpAffine(
        image, matrix, (192, 256), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


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
    return [
        [-50, -30, 200, 300],
        [w - 40, h - 60, 100, 120],
        [w + 10, 5, 30, 60],
        [10, 10, 0, 0],
        [100, 100, 5, 3],
        [0, h / 2, w, 20],
        [w / 2, 0, 15, h],
    ]


# ---- crops -----------------------------------------------------------------------------------------------------
def assert_close_to_opencv(ours, reference, where):
    diff = np.abs(ours.astype(np.float64) - reference.astype(np.float64))
    assert diff.max() <= 2.0, f"{where}: max |ours - cv2| = {diff.max():.3f} grey levels"
    assert diff.mean() <= 0.5, f"{where}: mean |ours - cv2| = {diff.mean():.3f} grey levels"


def test_crops_match_opencv_on_real_images(processor, coco, minicoco):
    cases = [(c["image"], c["gt_boxes"] + c["det_boxes"] + odd_boxes(c["image"])) for c in coco]
    cases += [(m["image"], m["boxes"]) for m in minicoco]
    for n, (image, boxes) in enumerate(cases):
        _, ours = raw_crops(processor, image, boxes)
        assert ours.shape == (len(boxes), 256, 192, 3)
        for i, box in enumerate(boxes):
            c, s = box_to_center_scale([box], input_size=(256, 192))
            with np.errstate(divide="ignore", invalid="ignore"):  # a zero-size box: an infinite matrix, as official
                reference = ref_crop(image, ref_udp_matrix(c[0].double().numpy(), s[0].double().numpy()))
            assert_close_to_opencv(ours[i], reference, f"image {n} box {i} {box}")


def test_rotation_scale_and_classic_warp_match_opencv(processor, coco):
    image, boxes = coco[1]["image"], coco[1]["gt_boxes"]
    rotation = np.linspace(-70, 70, len(boxes))
    out, ours = raw_crops(processor, image, boxes, rotation=rotation.tolist(), scale_factor=0.8)
    for i in range(len(boxes)):
        reference = ref_crop(
            image, ref_udp_matrix(out["center"][i].double().numpy(), out["scale"][i].double().numpy(), rotation[i])
        )
        assert_close_to_opencv(ours[i], reference, f"rotated box {i}")
    torch.testing.assert_close(out["scale"], box_to_center_scale(boxes)[1] * 0.8)
    torch.testing.assert_close(out["rotation"], torch.tensor(rotation, dtype=torch.float32))
    out, ours = raw_crops(processor, image, boxes, use_udp=False)
    assert out["use_udp"].tolist() == [False] * len(boxes)
    for i in range(len(boxes)):
        reference = ref_crop(
            image, ref_classic_matrix(out["center"][i].double().numpy(), out["scale"][i].double().numpy())
        )
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
        (
            torch.zeros(40, 50, 3, dtype=torch.uint8),
            ValueError,
            r"torch images are \(C, H, W\) but got shape \(40, 50, 3\)",
        ),
        (np.zeros((40, 50, 5), np.uint8), ValueError, r"numpy images are \(H, W, C\)|expected 1 \(grey\)"),
        (
            torch.zeros(6, 40, 50),
            ValueError,
            r"expected 1 \(grey\), 2 \(grey\+alpha\), 3 \(RGB\) or 4 \(RGBA\) channels, got 6",
        ),
        (np.zeros((40, 50, 3), np.int32), TypeError, r"unsupported image dtype int32"),
        (torch.zeros(3, 40, 50, dtype=torch.int64), TypeError, r"unsupported image dtype torch.int64"),
        (np.zeros((0, 50, 3), np.uint8), ValueError, r"empty image"),
        (
            np.zeros((2, 2, 40, 50, 3), np.uint8),
            ValueError,
            r"a numpy image is \(H, W\), \(H, W, C\) or \(N, H, W, C\)",
        ),
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
    with pytest.raises(
        ValueError, match=r"boxes\[1\]\[0\] = \[0\.0, 0\.0, -1\.0, 4\.0\] \(xywh\) has a negative width"
    ):
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
COCO_PAIRS = [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)]
# Written here from the AP-10K / AIC keypoint orders (left/right partners), not read from the library.
AP10K_PAIRS = [(0, 1), (5, 8), (6, 9), (7, 10), (11, 14), (12, 15), (13, 16)]
AIC_PAIRS = [(0, 3), (1, 4), (2, 5), (6, 9), (7, 10), (8, 11)]


@dataclass
class PoseOutput(ModelOutput):
    """Stands for the model output with the ``datasets`` field (the model's dataset metadata, in head order)."""

    heatmaps: torch.Tensor | None = None
    num_keypoints: torch.Tensor | None = None
    dataset_index: torch.Tensor | None = None
    datasets: tuple | None = None


def ref_center_scale(box, padding=1.25, factor=1.0):
    """The official _xywh2cs (test mode) at the 192 x 256 aspect, times a scale factor."""
    x, y, w, h = box
    center = np.array([x + 0.5 * w, y + 0.5 * h])
    if w > 0.75 * h:
        h = w / 0.75
    elif w < 0.75 * h:
        w = h * 0.75
    return center, np.array([w, h]) / 200.0 * padding * factor


def partners(pairs, k):
    perm = list(range(k))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


def crop_points_for(k, use_udp, gen, n=1):
    """(n, K, 2) keypoints in input-crop pixels, >= 6 heatmap px from the border. For classic (MSRA) datasets they
    lie on the 4-px heatmap grid, where the official target and decoder are exact."""
    if use_udp:
        return 24.0 + torch.rand(n, k, 2, generator=gen, dtype=torch.float64) * torch.tensor([143.0, 207.0])
    cells = torch.stack([torch.randint(6, 42, (n, k), generator=gen), torch.randint(6, 58, (n, k), generator=gen)], -1)
    return (4 * cells).double()


def perfect_heatmaps(crop_points, use_udp, pairs):
    """What a perfectly trained head predicts: the official targets (UDP or MSRA, as the dataset was trained), on
    the crop and on the mirrored crop (pixel u shows what W - 1 - u shows; channel i holds i's partner)."""
    k = crop_points.shape[1]
    mirrored = crop_points[:, partners(pairs, k)].clone()
    mirrored[..., 0] = 191.0 - mirrored[..., 0]
    return ref_targets(crop_points.numpy(), use_udp), ref_targets(mirrored.numpy(), use_udp)


def stack_padded(maps, channels):
    out = np.zeros((len(maps), channels, 64, 48), np.float32)
    for i, m in enumerate(maps):
        out[i, : m.shape[0]] = m
    return torch.from_numpy(out)


def error_px(person_keypoints, expected):
    return (person_keypoints.double() - torch.as_tensor(expected, dtype=torch.float64)).norm(dim=-1)


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
        annotations += [
            (a["bbox"], a["keypoints"]) for a in gt["annotations"] if a["num_keypoints"] > 0 and not a["iscrowd"]
        ]
    boxes = torch.tensor([a[0] for a in annotations])
    keypoints = torch.tensor([a[1] for a in annotations], dtype=torch.float32).view(-1, 17, 3)
    targets = encode_gt(processor, boxes, keypoints)
    center, scale = box_to_center_scale(boxes)
    meta = {"center": center, "scale": scale, "use_udp": True}
    results = processor.post_process_pose_estimation(targets["heatmaps"], crop_metadata=meta)
    decoded = torch.stack([person["keypoints"] for person in results[0]])
    heatmap_xy = processor.keypoints_to_crop(keypoints[..., :2], meta) / torch.tensor(UDPHeatmap().stride)
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
    positional = processor.post_process_pose_estimation(heatmaps, inputs)  # where transformers puts the boxes
    assert [len(r) for r in from_meta] == [len(b) for b in boxes] == [len(r) for r in positional]
    names = from_meta[0][0]["labels"]
    assert names[:3] == ["nose", "left_eye", "right_eye"] and len(names) == 17
    for a, b in zip(itertools.chain(*from_meta), itertools.chain(*positional)):
        assert set(a) == {"keypoints", "scores", "labels", "bbox", "dataset"}
        assert a["keypoints"].shape == (17, 2) and a["keypoints"].dtype == torch.float32
        assert a["scores"].shape == (17,) and a["dataset"] == "coco" and a["labels"] == names
        torch.testing.assert_close(a["keypoints"], b["keypoints"])
    # the returned bbox is the input box, in the input format
    torch.testing.assert_close(from_meta[2][1]["bbox"], torch.tensor(boxes[2][1], dtype=torch.float32))
    xyxy_inputs = processor(images[0], xywh_to_xyxy(torch.tensor(boxes[0])), box_format="xyxy")
    xyxy_results = processor.post_process_pose_estimation(heatmaps[: len(boxes[0])], crop_metadata=xyxy_inputs)
    torch.testing.assert_close(
        xyxy_results[0][0]["bbox"], xywh_to_xyxy(torch.tensor(boxes[0][:1], dtype=torch.float32))[0]
    )
    torch.testing.assert_close(xyxy_results[0][0]["keypoints"], from_meta[0][0]["keypoints"])
    # numpy metadata works too
    np_inputs = processor(images, boxes, return_tensors="np")
    assert np_inputs["use_udp"].dtype == np.bool_ and np_inputs["use_udp"].shape == (len(flat_boxes),)
    from_np = processor.post_process_pose_estimation(heatmaps, crop_metadata=np_inputs)
    torch.testing.assert_close(from_np[2][0]["keypoints"], from_meta[2][0]["keypoints"])


def flip_test_case(coco, use_udp, seed):
    """Real crops, and smooth noisy heatmaps for them and for their mirrored crops (peaks ~1 px apart)."""
    image, boxes = coco[0]["image"], coco[0]["gt_boxes"]
    processor = ViTPoseImageProcessor(use_udp=use_udp)
    inputs = processor(image, boxes)
    gen = torch.Generator().manual_seed(seed)
    points = 24.0 + torch.rand(len(boxes), 17, 2, generator=gen, dtype=torch.float64) * torch.tensor([143.0, 207.0])
    heatmaps, _ = perfect_heatmaps(points, use_udp, COCO_PAIRS)
    moved = points + torch.randn(points.shape, generator=gen, dtype=torch.float64)
    _, flipped = perfect_heatmaps(moved, use_udp, COCO_PAIRS)
    noise = 0.03 * torch.randn((2,) + heatmaps.shape, generator=gen)
    return processor, inputs, torch.from_numpy(heatmaps) + noise[0], torch.from_numpy(flipped) + noise[1]


@pytest.mark.parametrize("use_udp", [True, False])
def test_flip_test_averages_in_heatmap_space(coco, use_udp):
    """flip_outputs: the official flip test (flip_back with the flip pairs, one-column shift when not UDP,
    average), decoding and transform_preds, recomputed here in numpy."""
    processor, inputs, heatmaps, flipped = flip_test_case(coco, use_udp, seed=4)
    ours = processor.post_process_pose_estimation(
        heatmaps, flip_outputs=VitPoseEstimatorOutput(heatmaps=flipped), crop_metadata=inputs
    )[0]
    expected, maxvals = ref_keypoints(
        heatmaps.numpy(),
        flipped.numpy(),
        COCO_PAIRS,
        inputs["center"].double().numpy(),
        inputs["scale"].double().numpy(),
        use_udp,
    )
    for i, person in enumerate(ours):
        np.testing.assert_allclose(person["keypoints"].numpy(), expected[i], atol=2e-3, err_msg=f"person {i}")
        np.testing.assert_allclose(person["scores"].numpy(), maxvals[i], atol=1e-6)
    without = processor.post_process_pose_estimation(heatmaps, crop_metadata=inputs)[0]
    assert max(error_px(a["keypoints"], b["keypoints"]).max() for a, b in zip(ours, without)) > 0.1  # it did average
    torch.testing.assert_close(flip_pixel_values(heatmaps), heatmaps.flip(-1))
    torch.testing.assert_close(processor.flip_pixel_values(heatmaps), heatmaps.flip(-1))


# Unit roundoff of the low-precision formats (8 and 11 significant bits); the codec test derives the bound.
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_bf16_heatmaps_and_low_precision_metadata(processor, coco, dtype):
    """Low-precision heatmaps: the official decode of the same rounded values, within the rounding bound of the
    float32 result; metadata cast to low precision is refused."""
    image, boxes = coco[0]["image"], coco[0]["gt_boxes"]
    inputs = processor(image, boxes)
    gen = torch.Generator().manual_seed(1)
    points = 24.0 + torch.rand(len(boxes), 17, 2, generator=gen, dtype=torch.float64) * torch.tensor([143.0, 207.0])
    heatmaps = torch.from_numpy(ref_targets(points.numpy(), True))
    low = processor.post_process_pose_estimation(heatmaps.to(dtype), crop_metadata=inputs)[0]
    centers, scales = inputs["center"].double().numpy(), inputs["scale"].double().numpy()
    rounded, _ = ref_keypoints(heatmaps.to(dtype).float().numpy(), None, [], centers, scales, True)
    full, _ = ref_keypoints(heatmaps.numpy(), None, [], centers, scales, True)
    for i, person in enumerate(low):
        assert person["keypoints"].dtype == torch.float32 and person["scores"].dtype == torch.float32
        np.testing.assert_allclose(person["keypoints"].numpy(), rounded[i], atol=2e-3)
        image_px_per_heatmap_px = scales[i] * 200 / np.array([47.0, 63.0])
        bound = 24 * UNIT_ROUNDOFF[dtype] * image_px_per_heatmap_px.max()
        assert np.abs(person["keypoints"].numpy() - full[i]).max() <= bound
    cast = dict(inputs)
    cast["center"] = inputs["center"].to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"crop_metadata\['center'\] is torch.bfloat16"):
        processor.post_process_pose_estimation(heatmaps, crop_metadata=cast)


def test_per_dataset_udp_settings_of_a_multi_dataset_model(coco):
    """README: each dataset of a multi-dataset model keeps its official setting (use_udp=None, the default). COCO
    crops: UDP warp, UDP targets, UDP-DARK; AP-10K crops: classic warp, MSRA targets, quarter-pixel decoder.

    A perfectly trained head (the official targets of each dataset) decodes back to the keypoints; one UDP setting
    for both (the old behaviour) puts the AP-10K keypoints pixels away, most at the far side of the crop."""
    image, boxes = coco[3]["image"], coco[3]["gt_boxes"]
    n = len(boxes)
    index = [i % 2 for i in range(n)]  # 0: coco, 1: ap10k
    udp = [i == 0 for i in index]
    processor = ViTPoseImageProcessor(dataset=["coco", "ap10k"])
    inputs = processor(image, boxes, dataset_index=index)
    assert inputs["use_udp"].tolist() == udp
    raw = processor(image, boxes, dataset_index=index, do_rescale=False, do_normalize=False)["pixel_values"]
    gen = torch.Generator().manual_seed(5)
    expected, maps, flips = [], [], []
    for i, box in enumerate(boxes):
        center, scale = ref_center_scale(box)
        matrix = ref_udp_matrix(center, scale) if udp[i] else ref_classic_matrix(center, scale)
        assert_close_to_opencv(raw[i].permute(1, 2, 0).numpy(), ref_crop(image, matrix), f"crop {i}")
        points = crop_points_for(17, udp[i], gen)
        heatmaps, flipped = perfect_heatmaps(points, udp[i], COCO_PAIRS if udp[i] else AP10K_PAIRS)
        maps.append(heatmaps[0])
        flips.append(flipped[0])
        expected.append(ref_transform_preds(points[0].numpy(), center, scale, INPUT_WH, udp[i]))
    heatmaps, flipped = stack_padded(maps, 17), stack_padded(flips, 17)
    datasets = (get_dataset_info("coco"), get_dataset_info("ap10k"))
    for outputs in (
        PoseOutput(heatmaps=heatmaps, dataset_index=torch.tensor(index)),  # the processor's datasets
        PoseOutput(heatmaps=heatmaps, dataset_index=torch.tensor(index), datasets=datasets),  # the model's
    ):
        for flip in (None, flipped):
            people = processor.post_process_pose_estimation(outputs, flip_outputs=flip, crop_metadata=inputs)[0]
            assert [p["dataset"] for p in people] == [["coco", "ap10k"][i] for i in index]
            for i, person in enumerate(people):
                tolerance = 0.01 if udp[i] else 1e-3  # DARK is exact on a Gaussian; MSRA on its grid
                assert error_px(person["keypoints"], expected[i]).max() < tolerance, f"crop {i} flip={flip is not None}"
    # The old behaviour: one UDP setting for every dataset.
    one_setting = ViTPoseImageProcessor(dataset=["coco", "ap10k"], use_udp=True)
    old_inputs = one_setting(image, boxes)
    assert old_inputs["use_udp"].all()
    old = one_setting.post_process_pose_estimation(
        PoseOutput(heatmaps=heatmaps, dataset_index=torch.tensor(index)), crop_metadata=old_inputs
    )[0]
    ap10k_error = torch.cat([error_px(old[i]["keypoints"], expected[i]) for i in range(n) if not udp[i]])
    assert ap10k_error.mean() > 1.3 and ap10k_error.max() > 3.0, f"{ap10k_error.mean():.2f} / {ap10k_error.max():.2f}"


def test_preprocess_needs_the_dataset_when_the_settings_differ(coco):
    image, boxes = coco[1]["image"], coco[1]["gt_boxes"][:2]
    processor = ViTPoseImageProcessor(dataset=["coco", "ap10k"])
    with pytest.raises(ValueError, match=r"datasets \['coco', 'ap10k'\] differ in use_udp: pass the dataset"):
        processor(image, boxes)
    assert processor(image, boxes, dataset="ap10k")["use_udp"].tolist() == [False, False]
    assert processor(image, boxes, dataset_index="coco")["use_udp"].tolist() == [True, True]
    assert processor(image, boxes, dataset=["coco", get_dataset_info("aic")])["use_udp"].tolist() == [True, False]
    with pytest.raises(ValueError, match="not both"):
        processor(image, boxes, dataset="coco", dataset_index=0)
    with pytest.raises(ValueError, match=r"dataset_index 2 is out of range for the 2 datasets \['coco', 'ap10k'\]"):
        processor(image, boxes, dataset_index=[0, 2])
    with pytest.raises(ValueError, match=r"dataset_index has 3 entries for 2 crops"):
        processor(image, boxes, dataset_index=[0, 1, 0])
    with pytest.raises(ValueError, match=r"dataset_index 'aic' is not one of the datasets"):
        processor(image, boxes, dataset_index="aic")
    with pytest.raises(ValueError, match="differ in use_udp"):
        processor.get_codec()
    assert isinstance(processor.get_codec(dataset="ap10k"), MSRAHeatmap)
    assert isinstance(ViTPoseImageProcessor(dataset=["coco", "ap10k"], use_udp=True).get_codec(), UDPHeatmap)
    # one setting for all: no dataset needed
    assert ViTPoseImageProcessor(dataset=["coco", "mpii"])(image, boxes)["use_udp"].tolist() == [True, True]


def test_processor_with_a_vitpose_plus_model_and_no_dataset(coco):
    """README: a default ViTPoseImageProcessor() with ViTPose++ outputs of the AP-10K head: the names, the flip
    pairs and the decoder come from the model's metadata (outputs.datasets[outputs.dataset_index])."""
    image, boxes = coco[2]["image"], coco[2]["gt_boxes"]
    processor = ViTPoseImageProcessor()
    inputs = processor(image, boxes)  # not told the dataset: COCO's UDP warp
    assert torch.as_tensor(inputs["use_udp"]).all()
    gen = torch.Generator().manual_seed(6)
    points = crop_points_for(17, False, gen, n=len(boxes))
    heatmaps, flipped = perfect_heatmaps(points, False, AP10K_PAIRS)  # the AP-10K head was trained on MSRA targets
    datasets = tuple(get_dataset_info(name) for name in ("coco", "aic", "mpii", "ap10k", "apt36k", "wholebody"))
    index = torch.full((len(boxes),), 3)
    outputs = PoseOutput(
        heatmaps=torch.from_numpy(heatmaps),
        num_keypoints=torch.full((len(boxes),), 17),
        dataset_index=index,
        datasets=datasets,
    )
    flip_outputs = PoseOutput(heatmaps=torch.from_numpy(flipped), dataset_index=index, datasets=datasets)
    people = processor.post_process_pose_estimation(outputs, flip_outputs=flip_outputs, crop_metadata=inputs)[0]
    ap10k_names = get_dataset_info("ap10k")["keypoint_names"]
    for i, person in enumerate(people):
        assert person["dataset"] == "ap10k" and person["labels"] == ap10k_names
        center, scale = ref_center_scale(boxes[i])
        expected = ref_transform_preds(points[i].numpy(), center, scale, INPUT_WH, True)  # the UDP warp it was cut with
        assert error_px(person["keypoints"], expected).max() < 1e-3, f"person {i}"
    # COCO's flip pairs would have averaged the wrong channels
    coco_flip = ref_keypoints(
        heatmaps,
        flipped,
        COCO_PAIRS,
        [ref_center_scale(b)[0] for b in boxes],
        [ref_center_scale(b)[1] for b in boxes],
        False,
    )[0]
    assert max(np.abs(coco_flip[i] - p["keypoints"].numpy()).max() for i, p in enumerate(people)) > 10
    assert (
        processor.post_process_pose_estimation(outputs, crop_metadata=inputs, dataset="ap10k")[0][0]["dataset"]
        == "ap10k"
    )
    with pytest.raises(ValueError, match=r"dataset='coco' conflicts with the model's dataset 'ap10k' for crop 0"):
        processor.post_process_pose_estimation(outputs, crop_metadata=inputs, dataset="coco")
    # Without the model's metadata, an index the processor does not know is an error, not COCO names.
    bare = PoseOutput(heatmaps=outputs.heatmaps, dataset_index=index)
    with pytest.raises(ValueError, match=r"dataset_index .*3 is out of range for the 1 datasets \['coco'\]"):
        processor.post_process_pose_estimation(bare, crop_metadata=inputs)
    with pytest.raises(ValueError, match="carry no dataset_index"):
        processor.post_process_pose_estimation(
            PoseOutput(heatmaps=outputs.heatmaps, datasets=datasets), crop_metadata=inputs
        )


def test_processor_with_a_real_tiny_vitpose_plus_model(coco):
    """A real ViTPose++ forward (random weights): a mixed batch of AP-10K, AIC and WholeBody crops, padded to 133
    channels; each crop gets its head's names and count, and the classic decoder of those datasets."""
    from vitpose_hf import ViTPoseForPoseEstimation

    from helpers import tiny_plus_config

    model = ViTPoseForPoseEstimation(tiny_plus_config()).eval()
    processor = ViTPoseImageProcessor(size={"height": 64, "width": 48})
    image, boxes = coco[2]["image"], coco[2]["gt_boxes"][:3]
    inputs = processor(image, boxes)
    with torch.no_grad():
        outputs = model(inputs["pixel_values"], dataset_index=torch.tensor([3, 1, 5]))
    if getattr(outputs, "datasets", None) is None:  # until the model output carries its metadata
        outputs["datasets"] = tuple(model.config.datasets)
    assert outputs.heatmaps.shape[:2] == (3, 133) and outputs.num_keypoints.tolist() == [17, 14, 133]
    people = processor.post_process_pose_estimation(outputs, crop_metadata=inputs)[0]
    assert [p["dataset"] for p in people] == ["ap10k", "aic", "wholebody"]
    for person, k, head in zip(people, (17, 14, 133), (3, 1, 5)):
        assert person["labels"] == model.config.datasets[head]["keypoint_names"] and person["keypoints"].shape == (k, 2)
    heatmaps = outputs.heatmaps.numpy()
    stride = 48 / heatmaps.shape[-1]  # MSRA: input / heatmap size
    for i, (person, k) in enumerate(zip(people, (17, 14, 133))):
        preds, maxvals = ref_decode_msra(heatmaps[i : i + 1, :k])
        center, scale = inputs["center"][i].double().numpy(), inputs["scale"][i].double().numpy()
        expected = ref_transform_preds(preds[0] * stride, center, scale, (48, 64), True)  # cut with the UDP warp
        np.testing.assert_allclose(person["keypoints"].numpy(), expected, atol=1e-3)
        np.testing.assert_allclose(person["scores"].numpy(), maxvals[0])


def test_mixed_dataset_batch(coco):
    """A padded ViTPose++ batch: COCO (17, UDP) and AIC (14, classic) crops; channels beyond num_keypoints[i] are
    ignored, each crop flips with its own pairs and shift."""
    image = coco[1]["image"]
    boxes = [[10, 20, 100, 200], [50, 60, 80, 90], [0, 0, 40, 40]]
    index = [0, 1, 0]
    processor = ViTPoseImageProcessor(dataset=["coco", "aic"])
    inputs = processor(image, boxes, dataset_index=index)
    gen = torch.Generator().manual_seed(2)
    maps, flips, expected = [], [], []
    for i, box in enumerate(boxes):
        udp, k, pairs = (True, 17, COCO_PAIRS) if index[i] == 0 else (False, 14, AIC_PAIRS)
        points = crop_points_for(k, udp, gen)
        heatmaps, flipped = perfect_heatmaps(points, udp, pairs)
        maps.append(heatmaps[0])
        flips.append(flipped[0])
        center, scale = ref_center_scale(box)
        expected.append(ref_transform_preds(points[0].numpy(), center, scale, INPUT_WH, udp))
    heatmaps, flipped = stack_padded(maps, 17), stack_padded(flips, 17)
    heatmaps[1, 14:] = torch.rand(3, 64, 48, generator=gen)  # padding channels must not matter
    datasets = (get_dataset_info("coco"), get_dataset_info("aic"))
    outputs = PoseOutput(
        heatmaps=heatmaps,
        num_keypoints=torch.tensor([17, 14, 17]),
        dataset_index=torch.tensor(index),
        datasets=datasets,
    )
    results = processor.post_process_pose_estimation(outputs, flip_outputs=flipped, crop_metadata=inputs)[0]
    assert [r["dataset"] for r in results] == ["coco", "aic", "coco"]
    assert [len(r["labels"]) for r in results] == [17, 14, 17] and results[1]["keypoints"].shape == (14, 2)
    for i, person in enumerate(results):
        assert error_px(person["keypoints"], expected[i]).max() < (0.01 if index[i] == 0 else 1e-3), f"crop {i}"
    with pytest.raises(ValueError, match="pass dataset_index"):
        processor.post_process_pose_estimation(heatmaps, crop_metadata=inputs)
    outputs["num_keypoints"] = torch.tensor([17, 17, 17])
    with pytest.raises(ValueError, match="does not match the keypoint counts"):
        processor.post_process_pose_estimation(outputs, crop_metadata=inputs)


@pytest.mark.parametrize(
    "options",
    [{"padding_factor": 1.0}, {"scale_factor": 0.8}, {"rotation": 30.0}, {"use_udp": False}],
    ids=["padding_factor", "scale_factor", "rotation", "use_udp"],
)
def test_boxes_cannot_replace_the_crop_metadata(processor, coco, options):
    """Bug: post_process(boxes=) rebuilt the crops with the default options, 5-26 px off. Now boxes= is an error;
    crop_metadata keeps every option and gives the keypoints back."""
    image, boxes = coco[1]["image"], coco[1]["gt_boxes"]
    inputs = processor(image, boxes, **options)
    use_udp = options.get("use_udp", True)
    gen = torch.Generator().manual_seed(7)
    points = crop_points_for(17, True, gen, n=len(boxes))  # COCO's head: UDP targets, whatever the warp
    heatmaps = torch.from_numpy(ref_targets(points.numpy(), True))
    expected = []
    for i, box in enumerate(boxes):
        center, scale = ref_center_scale(box, options.get("padding_factor", 1.25), options.get("scale_factor", 1.0))
        matrix = (
            ref_udp_matrix(center, scale, options.get("rotation", 0.0))
            if use_udp
            else ref_classic_matrix(center, scale)
        )
        inverse = cv2.invertAffineTransform(matrix)
        expected.append(points[i].numpy() @ inverse[:, :2].T + inverse[:, 2])
    with pytest.raises(ValueError, match=r"takes crop_metadata=.*not boxes="):
        processor.post_process_pose_estimation(heatmaps, boxes=boxes)
    people = processor.post_process_pose_estimation(heatmaps, crop_metadata=inputs)[0]
    for i, person in enumerate(people):
        assert error_px(person["keypoints"], expected[i]).max() < 0.01, f"box {i}"
    if "use_udp" not in options:  # what the boxes= path did: the default options
        defaults = processor.post_process_pose_estimation(heatmaps, crop_metadata=processor(image, boxes))[0]
        worst = max(error_px(p["keypoints"], e).max() for p, e in zip(defaults, expected))
        assert worst > 5.0, f"the default options are only {worst:.1f} px off"


def test_zero_size_box_gives_the_official_black_crop(processor, coco):
    """The official UDP matrix of a zero-size box is infinite (scale 0) and cv2.warpAffine returns an all-black
    crop; so does the processor (one image or several, either warp), and the keypoints map to the box centre."""
    image, other = coco[0]["image"], coco[1]["image"]
    h, w = image.shape[:2]
    boxes = [[40.0, 50.0, 0.0, 0.0], [10, 10, 120, 200], [w / 2, h / 2, 0, 0]]
    out, ours = raw_crops(processor, image, boxes)
    for i in (0, 2):
        center, scale = ref_center_scale(boxes[i])
        with np.errstate(divide="ignore", invalid="ignore"):
            reference = ref_crop(image, ref_udp_matrix(center, scale))
        assert reference.max() == 0
        np.testing.assert_array_equal(ours[i], reference)
    c, s = ref_center_scale(boxes[1])
    assert_close_to_opencv(ours[1], ref_crop(image, ref_udp_matrix(c, s)), "the box next to them")
    _, batch = raw_crops(processor, [image, other], [boxes[:2], boxes[:1]])
    assert batch[[0, 2]].max() == 0 and batch[1].max() > 0
    _, classic = raw_crops(processor, image, boxes, use_udp=False)
    assert classic[[0, 2]].max() == 0  # the official classic warp repeats the top-left pixel instead
    normalised = processor(image, boxes[:1])["pixel_values"][0]
    black = torch.tensor((0 - MEAN) / STD, dtype=torch.float32).view(3, 1, 1).expand(3, 256, 192)
    torch.testing.assert_close(normalised, black)
    heatmaps = torch.rand(3, 17, 64, 48, generator=torch.Generator().manual_seed(8))
    person = processor.post_process_pose_estimation(heatmaps, crop_metadata=out)[0][0]
    torch.testing.assert_close(person["keypoints"], torch.tensor([[40.0, 50.0]]).expand(17, 2))


def test_custom_dataset_dict_and_use_udp_from_the_dataset(coco):
    """A dataset given as an info dict; use_udp=None takes its official setting (non-UDP here)."""
    toy = {"name": "toy", "keypoint_names": ["a", "left_b", "right_b"], "flip_pairs": [[1, 2]]}
    p = ViTPoseImageProcessor(dataset=toy, use_udp=None)
    image, boxes = coco[1]["image"], coco[1]["gt_boxes"]
    inputs = p(image, boxes)
    assert inputs["use_udp"].tolist() == [False] * len(boxes)
    gen = torch.Generator().manual_seed(3)
    heatmaps = torch.rand(len(boxes), 3, 64, 48, generator=gen)
    flipped = torch.rand(len(boxes), 3, 64, 48, generator=gen)
    results = p.post_process_pose_estimation(heatmaps, flip_outputs=flipped, crop_metadata=inputs)[0]
    expected, scores = ref_keypoints(
        heatmaps.numpy(),
        flipped.numpy(),
        [(1, 2)],
        [ref_center_scale(b)[0] for b in boxes],
        [ref_center_scale(b)[1] for b in boxes],
        False,
    )
    for i, person in enumerate(results):
        assert person["labels"] == ["a", "left_b", "right_b"] and person["dataset"] == "toy"
        np.testing.assert_allclose(person["keypoints"].numpy(), expected[i], atol=1e-3)
        np.testing.assert_allclose(person["scores"].numpy(), scores[i], atol=1e-6)


def test_post_process_errors(processor, coco):
    boxes = coco[0]["gt_boxes"]
    inputs = processor(coco[0]["image"], boxes)
    heatmaps = torch.rand(len(boxes), 17, 64, 48)
    with pytest.raises(
        ValueError, match=f"the heatmaps hold {len(boxes) - 1} crops but crop_metadata describes {len(boxes)}"
    ):
        processor.post_process_pose_estimation(heatmaps[:-1], crop_metadata=inputs)
    with pytest.raises(ValueError, match="the heatmaps have 17 channels but dataset 'aic' has 14 keypoints"):
        processor.post_process_pose_estimation(heatmaps, crop_metadata=inputs, dataset="aic")
    with pytest.raises(ValueError, match="needs crop_metadata"):
        processor.post_process_pose_estimation(heatmaps)
    with pytest.raises(ValueError, match="flip_outputs heatmaps"):
        processor.post_process_pose_estimation(heatmaps, crop_metadata=inputs, flip_outputs=heatmaps[:, :5])
    with pytest.raises(TypeError, match="model output with .heatmaps or a tensor"):
        processor.post_process_pose_estimation([1, 2], crop_metadata=inputs)
    with pytest.raises(ValueError, match=r"crop_metadata has no 'scale'"):
        processor.post_process_pose_estimation(heatmaps, crop_metadata={"center": inputs["center"]})
    with pytest.raises(ValueError, match=r"crop_metadata\['use_udp'\] must be a bool or one bool per crop"):
        processor.post_process_pose_estimation(heatmaps, crop_metadata={**inputs, "use_udp": [True, False]})


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
    kernel = (
        "image_processing_vitpose_hf.py",
        "codecs.py",
        "geometry.py",
        "keypoint_metadata.py",
        "images.py",
        "boxes.py",
        "devices.py",
    )
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


def test_processor_works_outside_inference_mode_after_a_call_inside_it():
    """No buffers are kept between calls: a first call under inference_mode must not break later ones."""
    processor = ViTPoseImageProcessor(size={"height": 64, "width": 48})
    image = np.random.default_rng(0).integers(0, 256, (60, 50, 3), dtype=np.uint8)
    with torch.inference_mode():
        first = processor(image, boxes=[[5, 5, 30, 40]], box_format="xywh")["pixel_values"].clone()
    again = processor(image, boxes=[[5, 5, 30, 40]], box_format="xywh")["pixel_values"]
    assert torch.equal(first, again)
