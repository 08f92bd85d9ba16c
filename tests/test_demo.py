"""The Gradio demo (demo/app.py), end to end: a server on 127.0.0.1, a gradio_client client, a tiny local model.

The server runs in a subprocess with the Hub offline (HF_HUB_OFFLINE=1, an empty HF_HOME), analytics off and
HTTP(S) proxies pointing at a closed port, so that any request leaving the machine fails instead of downloading.
Boxes are the real COCO ground-truth boxes of a shared photo, so no detector is needed. Every wait is bounded by a
timeout; nothing asserts on time.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from official_names import AIC_NAMES, COCO_NAMES

pytest.importorskip("gradio", reason="the demo needs gradio: pip install 'vitpose-hf[demo]'")
gradio_client = pytest.importorskip("gradio_client", reason="the demo test needs gradio_client (the `test` extra)")
cv2 = pytest.importorskip("cv2", reason="the demo's video input needs OpenCV (the `demo` extra)")


from test_pipeline import tiny_detector  # noqa: E402 - a random DETR with COCO's classes (see wiring notes)

from helpers import peaked_model, tiny_config, tiny_plus_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PHOTO = "mmpose/coco/000000040083.jpg"
DETECTOR_PHOTO = "mmpose/coco/000000000785.jpg"
START_TIMEOUT_S = 240  # importing torch, transformers and gradio on a busy 2-core machine
CALL_TIMEOUT_S = 120
# COCO's "animal" supercategory: the detector classes of the animal heads
COCO_ANIMALS = {"bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe"}
SCORE_THRESHOLD = 0.5  # keypoints (and links) scoring below are not drawn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _save_tiny(config, folder: Path, seed: int) -> Path:
    """A tiny checkpoint with one clear heatmap peak per keypoint (a random model's scores are all near 0)."""
    peaked_model(config, seed=seed)[0].save_pretrained(folder)
    return folder


def _gt_boxes(shared_data: Path) -> list[list[float]]:
    """COCO ground-truth boxes (xywh) of the annotated people in the photo."""
    coco = json.loads((shared_data / "mmpose/coco/test_coco.json").read_text())
    image_id = next(im["id"] for im in coco["images"] if im["file_name"] == Path(PHOTO).name)
    return [a["bbox"] for a in coco["annotations"] if a["image_id"] == image_id and a["num_keypoints"] > 0]


@pytest.fixture(scope="module")
def server(tmp_path_factory, shared_data):
    """The app on a free local port with two tiny checkpoints (ViTPose, ViTPose++); stopped after the tests."""
    root = tmp_path_factory.mktemp("demo")
    single = _save_tiny(tiny_config(decoder="simple"), root / "tiny-vitpose", seed=0)
    plus = _save_tiny(tiny_plus_config(decoder="simple"), root / "tiny-vitpose-plus", seed=1)
    detector = root / "tiny-detr"
    for part in tiny_detector():
        part.save_pretrained(detector)
    port = _free_port()
    dead_proxy = f"http://127.0.0.1:{_free_port()}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(root / "hf-home"),
        "GRADIO_TEMP_DIR": str(root / "gradio-tmp"),
        "TMPDIR": str(root),  # the app's result files stay in pytest's folder
        "HTTP_PROXY": dead_proxy,
        "HTTPS_PROXY": dead_proxy,
        "NO_PROXY": "127.0.0.1,localhost",
        "OMP_NUM_THREADS": "1",
    }
    for name in ("http_proxy", "https_proxy", "no_proxy", "VITPOSE_DEMO_DETECTOR", "VITPOSE_DEMO_LOCAL_ONLY"):
        env.pop(name, None)
    env["VITPOSE_DEMO_MODEL"] = os.pathsep.join([str(single), str(plus)])  # the models by environment variable
    command = [sys.executable, str(REPO / "demo" / "app.py")]
    command += ["--detector", str(detector), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    log = open(root / "server.log", "w+")  # noqa: SIM115 - read back on failure
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                log.seek(0)
                pytest.fail(f"the demo exited with {process.returncode}:\n{log.read()[-4000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"the demo did not start within {START_TIMEOUT_S} s:\n{log.read()[-4000:]}")
                time.sleep(0.5)
        client = gradio_client.Client(url, download_files=str(root / "downloads"), verbose=False)
        yield {"client": client, "url": url, "single": single, "plus": plus, "detector": detector}
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        log.close()
    assert process.returncode is not None  # the server stopped


def _image_call(
    server, image, model, dataset, boxes, source="drawn / typed boxes", score_threshold=SCORE_THRESHOLD, layers=()
):
    """One /estimate_image call; ``model`` is a local folder (shown as ``local: <name>``) or a model label."""
    editor = None
    if image is not None:
        editor = {
            "background": gradio_client.handle_file(str(image)),
            "layers": [gradio_client.handle_file(str(layer)) for layer in layers],
            "composite": None,
        }
    job = server["client"].submit(
        editor,
        f"local: {model.name}" if isinstance(model, Path) else model,
        dataset,
        source,
        json.dumps(boxes),
        "xywh",
        0.5,
        score_threshold,
        False,  # no boxes drawn: every changed pixel belongs to the skeleton
        False,
        api_name="/estimate_image",
    )
    return job.result(timeout=CALL_TIMEOUT_S)


def _segment_mask(shape, p, q, width):
    """Pixels within ``width`` of the segment p-q (computed here, independently of PIL's rasteriser)."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    pts = np.stack([xs, ys], axis=-1).astype(np.float64)
    p, q = np.asarray(p, float), np.asarray(q, float)
    d = q - p
    t = np.clip(((pts - p) @ d) / max(d @ d, 1e-12), 0, 1)
    return np.linalg.norm(pts - (p + t[..., None] * d), axis=-1) <= width


def test_image_with_typed_boxes(server, shared_data):
    photo = shared_data / PHOTO
    boxes = _gt_boxes(shared_data)
    assert len(boxes) == 2
    drawing_path, result, files, status = _image_call(server, photo, server["single"], "coco", boxes)

    original = np.asarray(PIL.Image.open(photo).convert("RGB"))
    height, width = original.shape[:2]
    assert result["image"] == {"width": width, "height": height}
    assert result["keypoint_names"] == COCO_NAMES
    assert len(result["people"]) == len(boxes)
    for person, box in zip(result["people"], boxes):
        assert person["box"] == pytest.approx(box)
        assert [kp["name"] for kp in person["keypoints"]] == COCO_NAMES
        # top-down keypoints lie in the crop: the box grown by the official 1.25 padding (and the aspect fix)
        x, y, w, h = box
        cx, cy, half = x + w / 2, y + h / 2, 1.25 * max(w, h * 48 / 64, h, w * 64 / 48) / 2
        for kp in person["keypoints"]:
            assert abs(kp["x"] - cx) <= half + 1 and abs(kp["y"] - cy) <= half + 1
    assert "2 people" in status

    drawing = np.asarray(PIL.Image.open(drawing_path).convert("RGB"))
    assert drawing.shape == original.shape
    changed = (drawing != original).any(axis=2)
    # where pixels may change: within the link width / dot radius (+1 for anti-aliasing) of the drawn skeleton
    side = min(width, height)
    reach = max(max(2, round(side / 128)), max(2, round(side / 180)) / 2) + 1.5
    allowed = np.zeros(changed.shape, bool)
    skeleton = json.loads(json.dumps(result["skeleton"]))
    for person in result["people"]:
        points = [(kp["x"], kp["y"]) for kp in person["keypoints"]]
        shown = [kp["score"] >= SCORE_THRESHOLD for kp in person["keypoints"]]
        assert sum(shown) >= 10  # the tiny model's peaks are clear
        for a, b in skeleton:
            if not (shown[a] and shown[b]):
                continue
            allowed |= _segment_mask(changed.shape, points[a], points[b], reach)
            # the link's middle (rasterisers differ by a pixel: look in the 3 x 3 pixels around it)
            mx, my = np.round((np.asarray(points[a]) + np.asarray(points[b])) / 2).astype(int)
            if 1 <= mx < width - 1 and 1 <= my < height - 1:
                assert changed[my - 1 : my + 2, mx - 1 : mx + 2].any(), f"link {a}-{b} not drawn at ({mx}, {my})"
        for (x, y), visible in zip(points, shown):
            if visible and 0 <= round(x) < width and 0 <= round(y) < height:
                assert changed[round(y), round(x)], f"keypoint at ({x:.1f}, {y:.1f}) not drawn"
    assert changed.sum() > 100
    assert not (changed & ~allowed).any(), "pixels changed away from the skeleton"

    # the downloads: the same drawing as PNG and the same JSON
    by_suffix = {Path(f).suffix: Path(f) for f in files}
    assert np.array_equal(np.asarray(PIL.Image.open(by_suffix[".png"]).convert("RGB")), drawing)
    assert json.loads(by_suffix[".json"].read_text()) == result


def test_drawn_boxes(server, shared_data, tmp_path):
    """Strokes painted in the editor's layer (a rectangle outline, a filled blob) become one box each."""
    width, height = PIL.Image.open(shared_data / PHOTO).size
    layer = np.zeros((height, width, 4), np.uint8)
    layer[100:241, 40:201][[0, -1]] = 255  # outline: top and bottom rows...
    layer[100:241, 40:201][:, [0, -1]] = 255  # ...and left and right columns: x 40..200, y 100..240
    layer[150:181, 300:351] = 255  # a filled blob: x 300..350, y 150..180
    path = tmp_path / "layer.png"
    PIL.Image.fromarray(layer, "RGBA").save(path)
    _, result, _, status = _image_call(server, shared_data / PHOTO, server["single"], "coco", [], layers=[path])
    boxes = sorted(person["box"] for person in result["people"])
    assert boxes == [[40.0, 100.0, 161.0, 141.0], [300.0, 150.0, 51.0, 31.0]]
    assert "2 people" in status


def _reference_detections(detector_dir: Path, photo: Path, threshold: float, keep: set[str]) -> list[tuple]:
    """The detector run with transformers directly: sorted (x, y, w, h, score, label) of the kept classes."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    model = AutoModelForObjectDetection.from_pretrained(detector_dir).eval()
    processor = AutoImageProcessor.from_pretrained(detector_dir)
    image = PIL.Image.open(photo).convert("RGB")
    with torch.no_grad():
        outputs = model(**processor(images=image, return_tensors="pt"))
    found = processor.post_process_object_detection(
        outputs, threshold=threshold, target_sizes=[(image.height, image.width)]
    )[0]
    rows = []
    for (x1, y1, x2, y2), score, label in zip(found["boxes"].tolist(), found["scores"].tolist(), found["labels"]):
        name = model.config.id2label[int(label)]
        if name in keep:
            rows.append((x1, y1, x2 - x1, y2 - y1, score, name))
    return sorted(rows)


@pytest.mark.parametrize(("model", "head", "classes"), [("single", "coco", {"person"}), ("plus", "ap10k", None)])
def test_detector_boxes(server, shared_data, model, head, classes):
    """Boxes from the app's detector (a tiny random DETR folder): people for COCO, animals for AP-10K.

    The random detector happens to see 2 people and 3 animals (scores well away from the threshold) on this photo.
    """
    photo = shared_data / DETECTOR_PHOTO
    classes = classes or COCO_ANIMALS
    threshold = 0.3
    expected = _reference_detections(server["detector"], photo, threshold, classes)
    assert expected, "the tiny detector should find something at this threshold"
    editor = {"background": gradio_client.handle_file(str(photo)), "layers": [], "composite": None}
    _, result, _, _ = (
        server["client"]
        .submit(
            editor,
            f"local: {server[model].name}",
            head,
            "detector",
            "",
            "xywh",
            threshold,
            0.3,
            True,
            False,
            api_name="/estimate_image",
        )
        .result(timeout=CALL_TIMEOUT_S)
    )
    got = sorted((*p["box"], p["box_score"], p["label"]) for p in result["people"])
    assert len(got) == len(expected)
    for row, ref in zip(got, expected):
        assert row[:5] == pytest.approx(ref[:5], abs=1e-3) and row[5] == ref[5]
    assert result["dataset"] == head


def test_vitpose_plus_head(server, shared_data):
    """A ViTPose++ checkpoint answers with the chosen head's keypoints (AI Challenger's 14 here)."""
    boxes = _gt_boxes(shared_data)[:1]
    _, result, _, _ = _image_call(server, shared_data / PHOTO, server["plus"], "aic", boxes)
    assert result["dataset"] == "aic"
    assert result["keypoint_names"] == AIC_NAMES
    assert [kp["name"] for kp in result["people"][0]["keypoints"]] == AIC_NAMES
    with pytest.raises(gradio_client.exceptions.AppError, match="no 'mpii' head"):
        _image_call(server, shared_data / PHOTO, server["single"], "mpii", boxes)


def test_bad_input_gives_clear_errors(server, shared_data):
    with pytest.raises(gradio_client.exceptions.AppError, match="No image"):
        _image_call(server, None, server["single"], "coco", [])
    with pytest.raises(gradio_client.exceptions.AppError, match="box 1 .* 4 numbers"):
        _image_call(server, shared_data / PHOTO, server["single"], "coco", [[1, 2, 3]])
    # a box the package rejects: its own message reaches the user
    with pytest.raises(gradio_client.exceptions.AppError, match="(?i)box"):
        _image_call(server, shared_data / PHOTO, server["single"], "coco", [[10, 10, -5, 20]])
    # no boxes is valid: no people
    _, result, _, status = _image_call(server, shared_data / PHOTO, server["single"], "coco", [])
    assert result["people"] == [] and "No boxes" in status


def test_whole_image(server, shared_data):
    """No boxes and no detector: the whole image is the one box."""
    width, height = PIL.Image.open(shared_data / PHOTO).size
    _, result, _, _ = _image_call(server, shared_data / PHOTO, server["single"], "coco", [], "whole image")
    assert [p["box"] for p in result["people"]] == [[0.0, 0.0, float(width), float(height)]]


def test_hub_unreachable_is_said(server, shared_data):
    """Offline: the page says so, and a Hub model that is not cached fails with a message, not a hang."""
    import httpx

    config = httpx.get(server["url"] + "config", timeout=30, trust_env=False).text
    assert "cannot be reached" in config
    with pytest.raises(gradio_client.exceptions.AppError, match="(?i)hub"):
        _image_call(server, shared_data / PHOTO, "ViTPose-B (COCO, simple decoder)", "coco", [], "whole image")


def test_video(server, shared_data, tmp_path):
    """A 6-frame video made from the shared photo: one pose per frame, the drawn video has the frames and size."""
    photo = cv2.imread(str(shared_data / PHOTO))
    frames = [cv2.resize(photo, (320, 212)) for _ in range(6)]
    frames = [np.roll(f, 4 * i, axis=1) for i, f in enumerate(frames)]  # a moving picture
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 6.0, (320, 212))
    for f in frames:
        writer.write(f)
    writer.release()
    box = [60.0, 40.0, 120.0, 150.0]
    job = server["client"].submit(
        gradio_client.handle_file(str(video)),
        f"local: {server['single'].name}",
        "coco",
        "drawn / typed boxes",
        "60 40 120 150",
        "xywh",
        0.5,
        0.0,
        False,
        1,
        api_name="/estimate_video",
    )
    drawn, result, files, status = job.result(timeout=CALL_TIMEOUT_S)
    assert result["video"]["frames"] == 6 and (result["video"]["width"], result["video"]["height"]) == (320, 212)
    assert [f["index"] for f in result["frames"]] == list(range(6))
    for frame in result["frames"]:
        assert len(frame["people"]) == 1 and frame["people"][0]["box"] == pytest.approx(box)
        assert [kp["name"] for kp in frame["people"][0]["keypoints"]] == COCO_NAMES
    drawn_path = drawn["video"] if isinstance(drawn, dict) else drawn
    capture = cv2.VideoCapture(str(drawn_path))
    out = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        out.append(frame.astype(np.int16))
    capture.release()
    assert len(out) == 6 and out[0].shape == (212, 320, 3)
    # lossy both ways, so compare neighbourhoods: the drawing changes pixels at the keypoints far more than elsewhere
    for frame, source, entry in zip(out, frames, result["frames"]):
        diff = np.abs(frame - source.astype(np.int16)).sum(axis=2)
        at = [
            diff[int(round(k["y"])), int(round(k["x"]))]
            for k in entry["people"][0]["keypoints"]
            if 0 <= round(k["x"]) < 320 and 0 <= round(k["y"]) < 212
        ]
        assert len(at) > 5 and np.median(at) > 4 * np.median(diff) + 20
    assert {Path(f).suffix for f in files} == {".mp4", ".json"}
    assert "6 frames" in status


def test_readme_snippet_runs(server, shared_data):
    """The Python call shown in demo/README.md works as written (server, photo and model swapped for the test's)."""
    text = (REPO / "demo" / "README.md").read_text(encoding="utf-8")
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    for old, new in [
        ("http://127.0.0.1:7860/", server["url"]),
        ('"photo.jpg"', repr(str(shared_data / PHOTO))),
        ('"ViTPose-B (COCO, simple decoder)"', repr(f"local: {server['single'].name}")),
    ]:
        assert old in snippet
        snippet = snippet.replace(old, new)
    scope: dict = {}
    exec(compile(snippet, "demo/README.md", "exec"), scope)
    assert [kp["name"] for kp in scope["result"]["people"][0]["keypoints"]] == COCO_NAMES
    assert scope["result"]["people"][0]["box"] == [38.0, 111.0, 175.0, 175.0]
