"""ViTPose / ViTPose++ pose estimation in the browser: a Gradio app, ready to run as a Hugging Face Space.

Give an image (or a video of a few seconds); people, or animals for the AP-10K / APT-36K heads, are found by a
transformers object detector, or taken from boxes drawn on the image or typed in. The app shows the drawn poses and
the JSON, and offers both for download.

    python demo/app.py                                   # Hub checkpoints (needs network, or the local HF cache)
    python demo/app.py --model ./my-checkpoint           # a local checkpoint folder first in the model list
    VITPOSE_DEMO_MODEL=./my-checkpoint python demo/app.py

Where the Hugging Face Hub cannot be reached, give a local checkpoint folder (``--model`` or ``VITPOSE_DEMO_MODEL``)
and boxes drawn or typed (or a local detector folder with ``--detector`` / ``VITPOSE_DEMO_DETECTOR``); the page then
says that the Hub is unreachable. Needs the ``demo`` extra: ``pip install "vitpose-hf[demo]"``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import gradio as gr
import numpy as np
import PIL.Image

import vitpose_hf
from vitpose_hf.boxes import convert_boxes
from vitpose_hf.inference.hub import HubUnreachableError, hub_reachable

# Hub checkpoints offered by default: label -> (repo, dataset heads). The heads of a ViTPose++ checkpoint are
# the package's six, in the checkpoint's dataset_index order.
HUB_MODELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ViTPose-B (COCO, simple decoder)": ("usyd-community/vitpose-base-simple", ("coco",)),
    "ViTPose-B (COCO, classic decoder)": ("usyd-community/vitpose-base", ("coco",)),
    "ViTPose++-S (6 datasets)": ("usyd-community/vitpose-plus-small", vitpose_hf.VITPOSE_PLUS_DATASETS),
    "ViTPose++-B (6 datasets)": ("usyd-community/vitpose-plus-base", vitpose_hf.VITPOSE_PLUS_DATASETS),
    "ViTPose++-L (6 datasets)": ("usyd-community/vitpose-plus-large", vitpose_hf.VITPOSE_PLUS_DATASETS),
    "ViTPose++-H (6 datasets)": ("usyd-community/vitpose-plus-huge", vitpose_hf.VITPOSE_PLUS_DATASETS),
}
DEFAULT_DETECTOR = "PekingU/rtdetr_r50vd_coco_o365"  # RT-DETR on COCO's 80 classes: people and the animals
BOXES_DETECTOR = "detector"
BOXES_GIVEN = "drawn / typed boxes"
BOXES_WHOLE = "whole image"
BOX_SOURCES = (BOXES_DETECTOR, BOXES_GIVEN, BOXES_WHOLE)
VIDEO_BATCH = 8  # frames per pipeline call
OUTPUT_MAX_AGE_S = 3600.0  # result files older than this are removed


@dataclass
class DemoSettings:
    """What the app serves: the model choices (label -> local folder or Hub name), the detector and limits."""

    models: dict[str, str]
    heads: dict[str, tuple[str, ...]] = field(default_factory=dict)  # known heads by label, before loading
    detector: str | None = DEFAULT_DETECTOR
    device: str | None = None
    hub_reachable: bool = True
    max_video_seconds: float = 5.0
    max_video_frames: int = 150
    output_dir: str | None = None

    @property
    def default_model(self) -> str:
        return next(iter(self.models))


def settings_from_args(argv: list[str] | None = None) -> tuple[DemoSettings, argparse.Namespace]:
    """Settings from the command line and the ``VITPOSE_DEMO_*`` environment variables (the command line wins)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="FOLDER_OR_NAME",
        help="a checkpoint folder or Hub name, listed first (repeatable; env VITPOSE_DEMO_MODEL, "
        f"several separated by {os.pathsep!r})",
    )
    parser.add_argument(
        "--detector",
        default=os.environ.get("VITPOSE_DEMO_DETECTOR", DEFAULT_DETECTOR),
        help=f"transformers object-detection model, Hub name or folder (default {DEFAULT_DETECTOR}; "
        "env VITPOSE_DEMO_DETECTOR; 'none' for no detector)",
    )
    parser.add_argument(
        "--local-only",
        action="store_true",
        default=os.environ.get("VITPOSE_DEMO_LOCAL_ONLY", "").lower() in ("1", "true", "yes"),
        help="offer only the --model checkpoints, not the Hub ones (env VITPOSE_DEMO_LOCAL_ONLY=1)",
    )
    parser.add_argument("--device", default=os.environ.get("VITPOSE_DEMO_DEVICE"), help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--max-video-seconds", type=float, default=float(os.environ.get("VITPOSE_DEMO_MAX_S", 5)))
    parser.add_argument("--host", default=None, help="server address (default: GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="server port (default: GRADIO_SERVER_PORT or 7860)")
    args = parser.parse_args(argv)

    given = args.model or [p for p in os.environ.get("VITPOSE_DEMO_MODEL", "").split(os.pathsep) if p]
    models: dict[str, str] = {}
    for source in given:
        label = f"local: {Path(source).name}" if os.path.isdir(source) else source
        models[label] = source
    heads: dict[str, tuple[str, ...]] = {}
    if not args.local_only:
        for label, (repo, repo_heads) in HUB_MODELS.items():
            models.setdefault(label, repo)
            heads[label] = repo_heads
    if not models:
        parser.error("--local-only needs at least one --model (or VITPOSE_DEMO_MODEL)")
    detector = None if str(args.detector).lower() in ("", "none") else args.detector
    # No network probe when everything is local (the probe is one HTTP request with a 3 s timeout).
    needs_hub = any(not os.path.isdir(s) for s in [*models.values(), *([detector] if detector else [])])
    settings = DemoSettings(
        models=models,
        heads=heads,
        detector=detector,
        device=args.device,
        hub_reachable=hub_reachable() if needs_hub else True,
        max_video_seconds=args.max_video_seconds,
    )
    return settings, args


# ----------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------
def parse_typed_boxes(text: str | None) -> list[list[float]]:
    """Boxes typed by the user: JSON (``[[x, y, w, h], ...]`` or one box) or one box of 4 numbers per line."""
    text = (text or "").strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise gr.Error(f"Typed boxes: not valid JSON ({exc.msg} at character {exc.pos}).") from None
        if value and all(isinstance(v, (int, float)) for v in value):
            value = [value]
        rows = value
    else:
        rows = [re.split(r"[\s,;]+", line.strip()) for line in text.splitlines() if line.strip()]
    boxes = []
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, (list, tuple)) or len(row) != 4:
            raise gr.Error(f"Typed boxes: box {i} is {row!r}; give 4 numbers per box (x y w h, or x1 y1 x2 y2).")
        try:
            boxes.append([float(v) for v in row])
        except (TypeError, ValueError):
            raise gr.Error(f"Typed boxes: box {i} ({row!r}) holds something that is not a number.") from None
    return boxes


def drawn_boxes(layers: list[np.ndarray] | None, height: int, width: int) -> list[list[float]]:
    """One ``xywh`` box per connected painted region of the editor's layers (a rectangle outline or a scribble)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for layer in layers or []:
        layer = np.asarray(layer)
        if layer.ndim != 3 or layer.shape[2] != 4:
            continue  # no alpha: nothing tells the strokes apart
        painted = (layer[..., 3] > 0).astype(np.uint8)
        if painted.shape != mask.shape:  # a layer at another scale than the background
            painted = cv2.resize(painted, (width, height), interpolation=cv2.INTER_NEAREST)
        mask |= painted
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    boxes = []
    for x, y, w, h, _area in stats[1:count]:  # row 0 is the background
        if w >= 2 and h >= 2:  # a click, not a box
            boxes.append([float(x), float(y), float(w), float(h)])
    return boxes


def editor_image(value: dict | None) -> tuple[np.ndarray, list[np.ndarray]]:
    """The background photo (RGB uint8) and the painted layers of an ImageEditor value; gr.Error without image."""
    background = value.get("background") if isinstance(value, dict) else None
    if background is None:
        raise gr.Error("No image: upload an image first (or use the Video tab for a video).")
    image = np.asarray(background)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8), list(value.get("layers") or [])


# ----------------------------------------------------------------------------------------------------------------
# Models and results
# ----------------------------------------------------------------------------------------------------------------
class PoseService:
    """Loads pose pipelines (and the detector) on first use and keeps the most recent ones."""

    def __init__(self, settings: DemoSettings, keep: int = 2) -> None:
        self.settings = settings
        self.keep = keep
        self._pipelines: OrderedDict[str, Any] = OrderedDict()
        self._detector: Any = None
        self.output_dir = Path(settings.output_dir or tempfile.mkdtemp(prefix="vitpose_demo_"))
        self.output_dir.mkdir(parents=True, exist_ok=True)

    def source(self, label: str) -> str:
        if label not in self.settings.models:
            raise gr.Error(f"Unknown model {label!r}; choose one of {list(self.settings.models)}.")
        return self.settings.models[label]

    def pose(self, label: str) -> Any:
        """The pose pipeline of a model choice (no detector), loaded once."""
        if label in self._pipelines:
            self._pipelines.move_to_end(label)
            return self._pipelines[label]
        source = self.source(label)
        try:
            pipe = vitpose_hf.pipeline(source, device=self.settings.device)
        except HubUnreachableError as exc:
            raise gr.Error(f"Hub unreachable: {exc}") from None
        except (OSError, ValueError, TypeError) as exc:
            raise gr.Error(f"Cannot load the model {source!r}: {exc}") from None
        self._pipelines[label] = pipe
        while len(self._pipelines) > self.keep:
            self._pipelines.popitem(last=False)
        return pipe

    def with_detector(self, label: str) -> Any:
        """The pose pipeline of ``label`` that finds its own boxes with the app's detector."""
        if self.settings.detector is None:
            raise gr.Error("This app was started without a detector: draw or type boxes, or use the whole image.")
        pose = self.pose(label)
        if self._detector is None:
            try:
                self._detector = vitpose_hf.ObjectDetector(self.settings.detector, labels=None, device=pose.device)
            except HubUnreachableError as exc:
                raise gr.Error(
                    f"Hub unreachable, so the detector cannot be loaded: {exc} Draw or type boxes instead."
                ) from None
            except (OSError, ValueError, TypeError) as exc:
                raise gr.Error(f"Cannot load the detector {self.settings.detector!r}: {exc}") from None
        return vitpose_hf.pipeline(
            pose.model, detector=self._detector, image_processor=pose.image_processor, device=pose.device
        )

    def heads(self, label: str) -> list[str]:
        """Dataset heads of a model choice: known ones without loading, else those of the loaded checkpoint."""
        if label in self.settings.heads:
            return list(self.settings.heads[label])
        return list(self.pose(label).model.config.dataset_names)

    def output_folder(self) -> Path:
        """A new folder for one call's files; folders of calls older than an hour are removed."""
        now = time.time()
        for old in self.output_dir.iterdir():
            if old.is_dir() and now - old.stat().st_mtime > OUTPUT_MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(dir=self.output_dir))


def _run(pipe: Any, images: list[np.ndarray], boxes: list[list[float]] | None, options: dict) -> list[list[dict]]:
    """The pipeline on a list of images; the package's own input errors are shown to the user."""
    try:
        return pipe(images, boxes=None if boxes is None else [boxes] * len(images), **options)
    except (ValueError, TypeError) as exc:
        raise gr.Error(str(exc)) from None
    except HubUnreachableError as exc:
        raise gr.Error(f"Hub unreachable: {exc}") from None


def _metadata(pipe: Any, dataset: str) -> dict[str, Any]:
    """The head's layout as the checkpoint stores it (custom layouts included)."""
    config = pipe.model.config
    info = config.datasets[config.dataset_to_index(dataset)]
    return {"dataset": info["name"], "keypoint_names": list(info["keypoint_names"]), "skeleton": info["skeleton"]}


def _dataset_choice(service: PoseService, label: str, dataset: str | None) -> str:
    heads = service.heads(label)
    if not dataset:
        return heads[0]
    if dataset not in heads:
        raise gr.Error(f"The model {label!r} has no {dataset!r} head; its heads are {heads}.")
    return dataset


def _boxes_and_pipe(
    service: PoseService, label: str, box_source: str, given: list[list[float]]
) -> tuple[Any, list[list[float]] | None]:
    if box_source == BOXES_DETECTOR:
        return service.with_detector(label), None
    if box_source == BOXES_GIVEN:
        return service.pose(label), given
    if box_source == BOXES_WHOLE:
        return service.pose(label), None
    raise gr.Error(f"Boxes from: choose one of {list(BOX_SOURCES)}, got {box_source!r}.")


def estimate_image(
    service: PoseService,
    editor: dict | None,
    label: str,
    dataset: str | None,
    box_source: str,
    typed: str,
    box_format: str,
    detector_threshold: float,
    score_threshold: float,
    show_boxes: bool,
    flip_test: bool,
) -> tuple[PIL.Image.Image, dict, list[str], str]:
    """Poses on one image: the drawing, the JSON, the two files to download and a status line."""
    image, layers = editor_image(editor)
    height, width = image.shape[:2]
    dataset = _dataset_choice(service, label, dataset)
    given = parse_typed_boxes(typed)
    if box_source == BOXES_GIVEN:
        drawn = drawn_boxes(layers, height, width)
        if drawn and box_format == "xyxy":
            drawn = convert_boxes(drawn, "xywh", "xyxy").tolist()
        given = given + drawn
    pipe, boxes = _boxes_and_pipe(service, label, box_source, given)
    started = time.perf_counter()
    options = {"dataset": dataset, "box_format": box_format, "flip_test": bool(flip_test)}
    if box_source == BOXES_DETECTOR:
        options["detector_threshold"] = float(detector_threshold)
    people = _run(pipe, [image], boxes, options)[0]
    seconds = time.perf_counter() - started
    drawing = vitpose_hf.draw(image, people, score_threshold=float(score_threshold), draw_boxes=bool(show_boxes))
    result = {
        "model": service.source(label),
        **_metadata(pipe, dataset),
        "image": {"width": width, "height": height},
        "boxes_from": box_source,
        "people": people,
    }
    folder = service.output_folder()
    png, js = folder / "poses.png", folder / "poses.json"
    drawing.save(png)
    js.write_text(json.dumps(result, indent=1), encoding="utf-8")
    status = f"{len(people)} {'person' if len(people) == 1 else 'people'} ({dataset} head, {seconds:.2f} s)."
    if not people and box_source == BOXES_GIVEN:
        status += " No boxes were given: draw rectangles on the image or type boxes."
    elif not people and box_source == BOXES_DETECTOR:
        status += f" The detector found nothing above {detector_threshold:.2f}."
    return drawing, result, [str(png), str(js)], status


def estimate_video(
    service: PoseService,
    video: str | None,
    label: str,
    dataset: str | None,
    box_source: str,
    typed: str,
    box_format: str,
    detector_threshold: float,
    score_threshold: float,
    show_boxes: bool,
    stride: float,
) -> tuple[str, dict, list[str], str]:
    """Poses on the first seconds of a video: the drawn video, the JSON (one entry per frame), files, status."""
    if not video:
        raise gr.Error("No video: upload a video of a few seconds first.")
    stride = int(stride or 1)
    if stride < 1:
        raise gr.Error(f"Frame stride must be at least 1, got {stride}.")
    dataset = _dataset_choice(service, label, dataset)
    pipe, boxes = _boxes_and_pipe(service, label, box_source, parse_typed_boxes(typed))
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise gr.Error(f"Cannot read the video {Path(video).name!r} (OpenCV could not open it).")
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = fps if np.isfinite(fps) and fps > 0 else 25.0
    limit = min(service.settings.max_video_frames, int(round(service.settings.max_video_seconds * fps)))
    folder = service.output_folder()
    options = {"dataset": dataset, "box_format": box_format}
    if box_source == BOXES_DETECTOR:
        options["detector_threshold"] = float(detector_threshold)
    sink = _VideoSink(folder / "poses.mp4", fps / stride)
    frames_out: list[dict] = []
    batch: list[tuple[int, np.ndarray]] = []
    index, truncated = 0, False

    def flush() -> None:
        people = _run(pipe, [frame for _, frame in batch], boxes, options)
        for (i, frame), frame_people in zip(batch, people):
            sink.write(vitpose_hf.draw(frame, frame_people, score_threshold=score, draw_boxes=bool(show_boxes)))
            frames_out.append({"index": i, "time": i / fps, "people": frame_people})
        batch.clear()

    score = float(score_threshold)
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if index >= limit:
                truncated = True
                break
            if index % stride == 0:
                batch.append((index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
            if len(batch) == VIDEO_BATCH:
                flush()
            index += 1
        if batch:
            flush()
    finally:
        capture.release()
        sink.close()
    if not frames_out:
        raise gr.Error(f"The video {Path(video).name!r} has no readable frames.")
    width, height = sink.size
    result = {
        "model": service.source(label),
        **_metadata(pipe, dataset),
        "video": {"width": width, "height": height, "fps": fps, "stride": stride, "frames": len(frames_out)},
        "boxes_from": box_source,
        "frames": frames_out,
    }
    js = folder / "poses.json"
    js.write_text(json.dumps(result, indent=1), encoding="utf-8")
    people = sum(len(f["people"]) for f in frames_out)
    status = f"{len(frames_out)} frames, {people} poses ({dataset} head)."
    if truncated:
        status += f" Only the first {limit} frames ({limit / fps:.1f} s) were processed."
    return str(sink.path), result, [str(sink.path), str(js)], status


class _VideoSink:
    """Drawn frames into an mp4 file (mp4v: OpenCV's pip wheels have no H.264 encoder; Gradio re-encodes the
    video to H.264 for browsers where ffmpeg is installed, as on Spaces with ``packages.txt``)."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps = path, fps
        self.writer: Any = None
        self.size: tuple[int, int] = (0, 0)

    def write(self, image: PIL.Image.Image) -> None:
        if self.writer is None:
            self.size = image.size
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self.size)
            if not self.writer.isOpened():
                raise gr.Error("OpenCV cannot write the output video (mp4v).")
        self.writer.write(cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


# ----------------------------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------------------------
def _detector_available(settings: DemoSettings) -> bool:
    detector = settings.detector
    return bool(detector) and (os.path.isdir(detector) or settings.hub_reachable)


def _hub_banner(settings: DemoSettings) -> str:
    if settings.hub_reachable:
        return ""
    local = [label for label, source in settings.models.items() if os.path.isdir(source)]
    hint = (
        f"Use the local checkpoint{'s' if len(local) > 1 else ''} {', '.join(local)}."
        if local
        else "Start the app with a local checkpoint folder: `python app.py --model /path/to/checkpoint` "
        "(or `VITPOSE_DEMO_MODEL=/path/to/checkpoint`)."
    )
    return (
        "**The Hugging Face Hub cannot be reached** (no network, or offline mode): Hub models work only if they "
        f"are in the local cache. {hint} The detector needs the Hub too, unless it is a local folder "
        "(`--detector /path`): draw or type boxes, or use the whole image."
    )


def build_app(settings: DemoSettings) -> gr.Blocks:
    """The Gradio page: an Image tab (draw boxes on the image) and a Video tab, sharing the model settings."""
    service = PoseService(settings)
    first_heads = list(settings.heads.get(settings.default_model, ()))
    with gr.Blocks(title="ViTPose pose estimation", delete_cache=(3600, 3600)) as app:
        gr.Markdown(
            "# ViTPose / ViTPose++ pose estimation\n"
            "Upload an image, then find the people (or animals, with the AP-10K / APT-36K heads) with the detector, "
            "or draw a rectangle (or scribble) around each one with the brush, or type boxes."
        )
        banner = _hub_banner(settings)
        gr.Markdown(banner, visible=bool(banner), elem_id="hub-status")
        with gr.Row():
            model = gr.Dropdown(list(settings.models), value=settings.default_model, label="Model (size)")
            dataset = gr.Dropdown(
                first_heads,
                value=first_heads[0] if first_heads else None,
                label="Dataset head (ViTPose++)",
                allow_custom_value=True,
            )
            box_source = gr.Radio(
                list(BOX_SOURCES),
                value=BOXES_DETECTOR if _detector_available(settings) else BOXES_GIVEN,
                label="Boxes from",
            )
        with gr.Row():
            typed = gr.Textbox(
                label="Typed boxes", placeholder="one box per line: x y w h (or JSON [[x, y, w, h], ...])", lines=2
            )
            box_format = gr.Radio(["xywh", "xyxy"], value="xywh", label="Box format")
            detector_threshold = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Detector threshold")
            score_threshold = gr.Slider(0.0, 1.0, value=0.3, step=0.05, label="Keypoint score threshold (drawing)")
            show_boxes = gr.Checkbox(value=True, label="Draw boxes")
        with gr.Tab("Image"):
            with gr.Row():
                editor = gr.ImageEditor(
                    label="Image (draw a rectangle around each person with the brush)",
                    type="numpy",
                    format="png",  # lossless: the browser sends the photo back re-encoded
                    layers=False,
                    brush=gr.Brush(default_size=4, colors=["#00e676", "#ff1744", "#2979ff"], color_mode="defaults"),
                    eraser=gr.Eraser(default_size=12),
                    transforms=(),
                    sources=("upload", "clipboard", "webcam"),
                )
                image_out = gr.Image(label="Poses", type="pil", format="png")
            flip_test = gr.Checkbox(value=False, label="Flip test (slower, a little more accurate)")
            image_button = gr.Button("Estimate poses", variant="primary")
            image_status = gr.Markdown()
            image_json = gr.JSON(label="Result")
            image_files = gr.File(label="Download", file_count="multiple")
        with gr.Tab("Video"):
            with gr.Row():
                video_in = gr.Video(label=f"Video (first {settings.max_video_seconds:g} s are used)", sources="upload")
                video_out = gr.Video(label="Poses", format="mp4")
            stride = gr.Number(value=1, precision=0, minimum=1, label="Use every N-th frame")
            video_button = gr.Button("Estimate poses", variant="primary")
            video_status = gr.Markdown()
            video_json = gr.JSON(label="Result")
            video_files = gr.File(label="Download", file_count="multiple")

        def on_model(label: str):
            heads = service.heads(label)
            return gr.update(choices=heads, value=heads[0])

        def on_image(*values):
            return estimate_image(service, *values)

        def on_video(*values):
            return estimate_video(service, *values)

        shared = [model, dataset, box_source, typed, box_format, detector_threshold, score_threshold, show_boxes]
        model.change(on_model, model, dataset, api_name="heads")
        image_button.click(
            on_image,
            [editor, *shared, flip_test],
            [image_out, image_json, image_files, image_status],
            api_name="estimate_image",
        )
        video_button.click(
            on_video,
            [video_in, *shared, stride],
            [video_out, video_json, video_files, video_status],
            api_name="estimate_video",
        )
        if not first_heads:  # a local checkpoint first: its heads once the page loads
            app.load(on_model, model, dataset, api_visibility="private")
    return app


def main(argv: list[str] | None = None) -> None:
    """Start the app (``python demo/app.py --help``)."""
    settings, args = settings_from_args(argv)
    app = build_app(settings)
    app.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port, ssr_mode=False)


if __name__ == "__main__":
    main()
