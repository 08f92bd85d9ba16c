"""One image loader (vitpose_hf.images) and one box parser (vitpose_hf.boxes), against OpenCV and numpy references."""

from __future__ import annotations

import ast
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import pytest
import torch

from vitpose_hf import boxes, images
from vitpose_hf.inference.drawing import draw

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vitpose_hf"
PHOTO = "mmpose/coco/000000000785.jpg"
ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def upright(shared_data):
    """A real photo (a corner of it, to keep the test fast), as RGB pixels."""
    with PIL.Image.open(shared_data / PHOTO) as photo:
        return np.asarray(photo.convert("RGB"))[:120, :90].copy()


def _save_with_orientation(pixels: np.ndarray, orientation: int, path: Path) -> Path:
    """Store ``pixels`` so that a viewer honouring EXIF ``orientation`` shows them upright (lossless PNG)."""
    # EXIF: 3 = shown after a 180 degree turn, 6 = after 90 degrees clockwise, 8 = after 90 degrees anticlockwise
    stored = {1: pixels, 3: np.rot90(pixels, 2), 6: np.rot90(pixels, 1), 8: np.rot90(pixels, -1)}[orientation]
    exif = PIL.Image.Exif()
    exif[ORIENTATION] = orientation
    PIL.Image.fromarray(np.ascontiguousarray(stored)).save(path, exif=exif)
    return path


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_by_every_loader(upright, orientation, tmp_path):
    path = _save_with_orientation(upright, orientation, tmp_path / f"o{orientation}.png")
    with PIL.Image.open(path) as raw:
        assert raw.getexif()[ORIENTATION] == orientation
        if orientation != 3:
            assert raw.size == (upright.shape[0], upright.shape[1])  # stored on its side
    # OpenCV's imread (what the official pipeline reads with) applies the orientation too
    np.testing.assert_array_equal(cv2.imread(str(path))[..., ::-1], upright)

    np.testing.assert_array_equal(np.asarray(images.load_image(path)), upright)
    np.testing.assert_array_equal(images.to_rgb_array(path), upright)
    np.testing.assert_array_equal(np.asarray(images.to_pil(str(path))), upright)
    (tensor,) = images.to_rgb_tensors(path)
    np.testing.assert_array_equal(tensor.permute(1, 2, 0).numpy(), upright)
    assert images.read_image_size(path) == upright.shape[:2]
    np.testing.assert_array_equal(np.asarray(draw(path, [])), upright)  # drawing reads through images.py


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA"])
def test_file_modes_read_as_opencv_reads_them(upright, mode, tmp_path):
    """Grey is replicated, alpha dropped (not composited), palettes expanded: cv2.imread(IMREAD_COLOR) of the file."""
    image = PIL.Image.fromarray(upright)
    if mode == "RGBA":
        alpha = np.linspace(0, 255, upright.shape[0] * upright.shape[1]).reshape(upright.shape[:2]).astype(np.uint8)
        image = PIL.Image.fromarray(np.dstack([upright, alpha]), "RGBA")
    else:
        image = image.convert(mode)
    path = tmp_path / f"{mode}.png"
    image.save(path)
    expected = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]
    np.testing.assert_array_equal(images.to_rgb_array(path), expected)
    np.testing.assert_array_equal(np.asarray(images.to_pil(path)), expected)


def test_16_bit_cmyk_and_float_rules():
    values = np.array([[0, 257, 32896, 65535]], np.uint16)  # 257 * k is exactly k on the 8-bit scale
    expected = np.repeat(np.array([[0, 1, 128, 255]], np.uint8)[..., None], 3, -1)
    for value in (values, PIL.Image.fromarray(values), torch.from_numpy(values.astype(np.int32)).to(torch.uint16)):
        np.testing.assert_array_equal(np.asarray(images.to_pil(value)), expected)
    np.testing.assert_allclose(images.to_rgb_array(values)[..., 0], values * (255 / 65535), rtol=1e-6)

    # CMYK by its definition: cyan removes red, full black removes everything, no ink is white
    cmyk = PIL.Image.new("CMYK", (3, 1))
    for x, ink in enumerate([(255, 0, 0, 0), (0, 0, 0, 255), (0, 0, 0, 0)]):
        cmyk.putpixel((x, 0), ink)
    np.testing.assert_array_equal(images.to_rgb_array(cmyk)[0], [[0, 255, 255], [0, 0, 0], [255, 255, 255]])

    floats = np.array([[[-3.0, 12.4, 12.6], [127.5, 128.5, 300.0]]])  # (1, 2, 3) on the 0..255 scale
    np.testing.assert_array_equal(np.asarray(images.to_pil(floats)), [[[0, 12, 13], [128, 128, 255]]])  # half to even
    assert images.to_rgb_array(floats).dtype == np.float32
    with pytest.raises(ValueError, match="NaN or infinite"):
        images.to_pil(np.full((2, 2, 3), np.nan))
    with pytest.raises(ValueError, match="expected one image, got a batch"):
        images.to_pil(np.zeros((2, 4, 4, 3), np.uint8))


def test_rgb_pil_is_not_copied_and_arrays_are_read_only(upright):
    pil = PIL.Image.fromarray(upright)
    assert images.to_pil(pil) is pil
    grey = images.to_rgb_array(upright[..., 0])
    assert grey.shape == upright.shape and not grey.flags.writeable
    np.testing.assert_array_equal(grey, np.repeat(upright[..., :1], 3, -1))


def test_unreadable_and_missing_files(tmp_path):
    text = tmp_path / "not_an_image.jpg"
    text.write_text("hello")
    with pytest.raises(ValueError, match="cannot read the image"):
        images.load_image(text)
    with pytest.raises(ValueError, match=r"images\[2\]: no image file at"):
        images.load_image(tmp_path / "missing.png", "images[2]")
    assert images.image_size(torch.zeros(3, 5, 7)) == (5, 7) and images.image_size(np.zeros((5, 7))) == (5, 7)
    with pytest.raises(TypeError, match="one image is a PIL image"):
        images.image_size(np.zeros((1, 5, 7, 3)))


# ----------------------------------------------------------------------------------------------------------------
# Boxes
# ----------------------------------------------------------------------------------------------------------------
def test_box_format_conversions():
    xywh = [[10.0, 20.0, 30.0, 40.0], [0.5, 1.5, 0.0, 2.0]]
    xyxy = [[10.0, 20.0, 40.0, 60.0], [0.5, 1.5, 0.5, 3.5]]
    assert boxes.convert_boxes(xywh, "xywh", "xyxy") == xyxy
    assert boxes.convert_boxes(xyxy[0], "xyxy", "xywh") == xywh[0]
    array = boxes.convert_boxes(np.array(xyxy), "xyxy", "xywh")
    assert isinstance(array, np.ndarray) and array.tolist() == xywh
    tensor = boxes.convert_boxes(torch.tensor(xywh, dtype=torch.float64), "xywh", "xyxy")
    assert tensor.dtype == torch.float64 and tensor.tolist() == xyxy
    same = torch.tensor(xywh)
    assert boxes.convert_boxes(same, "xywh", "xywh") is not same
    with pytest.raises(ValueError, match="box_format must be one of"):
        boxes.convert_boxes(xywh, "cxcywh", "xyxy")
    assert boxes.detector_box({"xmin": 1, "ymin": 2, "xmax": 3, "ymax": 4}) == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="needs xmin, ymin, xmax, ymax"):
        boxes.detector_box({"x": 1})


def test_coco_loader_box_clipping():
    # mmpose's TopDownCocoDataset: x2 = min(width - 1, x1 + max(0, w - 1)), kept when x2 > x1 and y2 > y1
    assert boxes.clip_box_to_image([-5.0, 10.0, 20.0, 30.0], 100, 100) == [0.0, 10.0, 19.0, 29.0]
    assert boxes.clip_box_to_image([90.0, 95.0, 50.0, 50.0], 100, 100) == [90.0, 95.0, 9.0, 4.0]
    assert boxes.clip_box_to_image([10.0, 10.0, 1.0, 30.0], 100, 100) is None  # w - 1 = 0: no width left
    assert boxes.clip_box_to_image([10.0, 10.0, 500.0, 30.0], None, None) == [10.0, 10.0, 499.0, 29.0]


@pytest.mark.parametrize(
    "given, single, expected",
    [
        ([[1, 2, 3, 4], [5, 6, 7, 8]], True, [[[1, 2, 3, 4], [5, 6, 7, 8]]]),  # one image, two boxes
        ([[[1, 2, 3, 4], [5, 6, 7, 8]]], True, [[[1, 2, 3, 4], [5, 6, 7, 8]]]),  # transformers' [[box, ...]]
        ([[1, 2, 3, 4]], True, [[[1, 2, 3, 4]]]),  # one box
        ([torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8])], True, [[[1, 2, 3, 4], [5, 6, 7, 8]]]),
        (np.array([[[1, 2, 3, 4]]]), True, [[[1, 2, 3, 4]]]),  # (1, M, 4)
        ([], True, [[]]),
        ([[[1, 2, 3, 4]], []], False, [[[1, 2, 3, 4]], []]),  # two images, the second without boxes
        (torch.tensor([[[1, 2, 3, 4]], [[5, 6, 7, 8]]]), False, [[[1, 2, 3, 4]], [[5, 6, 7, 8]]]),
    ],
)
def test_nesting_rules(given, single, expected):
    per_image = boxes.boxes_per_image(given, len(expected), single, "xywh")
    assert [b.tolist() for b in per_image] == expected
    assert all(b.dtype == torch.float32 and b.shape[-1] == 4 for b in per_image)


def test_nesting_errors():
    with pytest.raises(ValueError, match=r"boxes must have shape \(N, 4\)"):
        boxes.boxes_per_image([1, 2, 3, 4], 1, True, "xywh")  # a flat box: pass [box]
    with pytest.raises(ValueError, match="got boxes for 1 images but 2 images"):
        boxes.boxes_per_image([[[1, 2, 3, 4]]], 2, False, "xywh")
    with pytest.raises(ValueError, match=r"shape \(num_images, M, 4\)"):
        boxes.boxes_per_image(np.zeros((2, 4)), 2, False, "xywh")
    with pytest.raises(ValueError, match=r"boxes\[1\]\[0\] = \[5.0, 6.0, 1.0, 8.0\] \(xyxy\) has x2 < x1"):
        boxes.boxes_per_image([[[1, 2, 3, 4]], [[5, 6, 1, 8]]], 2, False, "xyxy")


# ----------------------------------------------------------------------------------------------------------------
# One owner: counted over the package's source
# ----------------------------------------------------------------------------------------------------------------
def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _image_loading(tree: ast.AST) -> list[str]:
    """Opening image files, EXIF transposes, RGB conversions, OpenCV / transformers image readers."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            name = _dotted(node)
            if name.endswith(("Image.open", "exif_transpose", "cv2.imread", "cv2.imdecode", "image_utils.load_image")):
                found.append(name)
        elif isinstance(node, ast.ImportFrom):
            names = {alias.name for alias in node.names}
            if (node.module or "").startswith("PIL") and names & {"open", "exif_transpose"}:
                found.append(f"from {node.module} import {sorted(names)}")
            if node.module == "transformers.image_utils" and "load_image" in names:
                found.append("from transformers.image_utils import load_image")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "convert"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value == "RGB"
        ):
            found.append('.convert("RGB")')
    return found


def _box_parsing(tree: ast.AST) -> list[str]:
    """Comparisons with a box format name, box-format tables, detector box dict keys, box helpers defined."""
    formats = {"xywh", "xyxy", "cxcywh"}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                constants = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                if any(isinstance(c, ast.Constant) and c.value in formats for c in constants):
                    found.append(f"comparison with a box format (line {node.lineno})")
        elif isinstance(node, (ast.Tuple, ast.List)) and {getattr(e, "value", None) for e in node.elts} >= {
            "xywh",
            "xyxy",
        }:
            found.append(f"a table of box formats (line {node.lineno})")
        elif isinstance(node, ast.Constant) and node.value == "xmin":
            found.append(f"detector box dict keys (line {node.lineno})")
        elif isinstance(node, ast.FunctionDef) and (
            "xyxy" in node.name or "xywh" in node.name or node.name.strip("_") in {"is_box_list", "stack_if_tensors"}
        ):
            found.append(f"def {node.name}")
    return found


def test_one_image_loader_and_one_box_parser():
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 10
    loaders, parsers = {}, {}
    for path in sources:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        name = path.relative_to(PACKAGE).as_posix()
        if _image_loading(tree):
            loaders[name] = _image_loading(tree)
        if _box_parsing(tree):
            parsers[name] = _box_parsing(tree)
    assert set(loaders) == {"images.py"}, loaders
    assert set(parsers) == {"boxes.py"}, parsers
    # the scanners see what they look for
    assert {"PIL.Image.open", "PIL.ImageOps.exif_transpose", "image_utils.load_image"} <= set(loaders["images.py"])
    assert any(entry.startswith("def xywh_to_xyxy") for entry in parsers["boxes.py"])


def test_kernel_modules_import_nothing_else_from_the_package():
    """images.py and boxes.py travel with checkpoints (trust_remote_code): no package imports at all."""
    for name in ("images.py", "boxes.py"):
        tree = ast.parse((PACKAGE / name).read_text(encoding="utf-8"))
        relative = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level]
        absolute = [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
        absolute += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.level]
        assert not relative and not any(m.startswith("vitpose_hf") for m in absolute), (name, relative, absolute)
