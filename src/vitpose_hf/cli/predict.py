"""``vitpose-hf predict``: poses on images, folders of frames and videos; annotated PNGs and JSON.

    vitpose-hf predict                                   # the bundled sample photo -> ./vitpose-hf-output/
    vitpose-hf predict photo.jpg frames/ --out results/ --json results/poses.json
    vitpose-hf predict val2017/ --boxes detections.json --flip-test --json preds.json
    vitpose-hf predict clip.mp4 --detector PekingU/rtdetr_r50vd --out clip_poses/    # needs the `video` extra
    vitpose-hf predict clip.mp4 --detector PekingU/rtdetr_r50vd --track --detect-every 3 --smooth one-euro --out out/
    vitpose-hf predict photo.jpg --model bottom_up_checkpoint/ --paradigm bottom-up --scales 1 0.5 --json poses.json

A bottom-up checkpoint (``--paradigm bottom-up``, the default for a local bottom-up folder) finds every person in the
whole image itself: no boxes, no detector; its people are written in the same per-person format.

Boxes come from ``--boxes`` (a JSON file), else from ``--detector`` (any transformers object-detection model), else
the whole image is one box. ``--boxes`` accepts

- a mapping from image file name (or path) to its boxes: ``{"a.jpg": [[x, y, w, h], ...]}``, each box a list of 4
  numbers or ``{"bbox": [...], "score": s}``, in ``--box-format`` (``xywh`` by default);
- a COCO detection-results list: ``[{"image_id": 785, "bbox": [x, y, w, h], "score": 0.98, "category_id": 1}, ...]``
  (``image_id`` is matched to file names such as ``000000000785.jpg``; ``file_name`` may be given instead);
- a COCO annotation file (``images`` + ``annotations``; its non-crowd boxes).

COCO boxes are ``xywh`` by definition; with ``--box-format xyxy`` they are converted and results use ``xyxy``. Every
box of the file is used, whatever its COCO ``category_id``; ``--box-category 1`` keeps only those of category 1 (and
says how many it removed). Images missing from the file get no people.

An unreadable image is skipped with a warning, counted in the summary, and the command exits with status 1 at the
end (``--strict`` stops at the first one instead). What a folder holds besides its images (sub-folders, videos,
other files) is listed in a note: folders are not searched recursively.

Outputs: with ``--out DIR`` an annotated PNG per image (``DIR/<name>.png``; folders keep a sub-folder, videos get
``DIR/<video>/frame_000123.png`` plus ``frame_000123.json``); with ``--json FILE`` one JSON file for everything
(``-`` prints it). With neither, PNGs go to ``./vitpose-hf-output``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitpose_hf.boxes import BOX_FORMATS, box_warnings, convert_boxes, validate_boxes
from vitpose_hf.video.sources import VIDEO_FILE_EXTENSIONS
from vitpose_hf_cli import DTYPES, dataset_name_or_index, dtype_name

__all__ = ["SAMPLE_IMAGE", "BoxTable", "add_arguments", "load_boxes_file", "run"]

SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "assets" / "astronaut.jpg"
DEFAULT_OUT = "vitpose-hf-output"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
VIDEO_EXTENSIONS = set(VIDEO_FILE_EXTENSIONS)  # the video package's list: one owner
IMAGES_PER_CALL = 8  # images whose crops share one pipeline call (and its forward batches)

# COCO category ids of the classes that find people and the AP-10K / APT-36K animals
COCO_CATEGORY_NAMES = {
    1: "person",
    16: "bird",
    17: "cat",
    18: "dog",
    19: "horse",
    20: "sheep",
    21: "cow",
    22: "elephant",
    23: "bear",
    24: "zebra",
    25: "giraffe",
}

logger = logging.getLogger(__name__)


class InputError(ValueError):
    """A bad command-line input (file, folder, boxes file)."""


# ----------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vitpose-hf predict`."""
    from vitpose_hf.inference.pipeline import DEFAULT_MODEL

    parser.epilog = "Without IMAGE_OR_DIR the bundled sample photo is used (scikit-image's public-domain astronaut)."
    parser.add_argument(
        "inputs", nargs="*", metavar="IMAGE_OR_DIR", help="image files, folders of images or frames, video files"
    )
    parser.add_argument("--sample", action="store_true", help="add the bundled sample photo to the inputs")
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"Hub name or local checkpoint folder (default: {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "--boxes",
        metavar="FILE.json",
        help="boxes per image: a name -> boxes mapping, COCO detection results or a COCO annotation file",
    )
    parser.add_argument(
        "--box-format",
        type=str.lower,
        choices=BOX_FORMATS,
        default=None,
        help="format of --boxes mapping boxes and of the output boxes, any case (default: xywh)",
    )
    parser.add_argument(
        "--box-category",
        type=int,
        action="append",
        metavar="ID",
        help="keep only --boxes entries of this COCO category_id (repeatable; default: every box of the file)",
    )
    parser.add_argument(
        "--box-threshold",
        type=float,
        default=None,
        metavar="S",
        help="drop boxes scoring below S (file boxes with a score, detector boxes; detector default 0.5)",
    )
    parser.add_argument(
        "--detector",
        default=None,
        metavar="MODEL",
        help="transformers object-detection model (Hub name or folder) used when no boxes are given",
    )
    parser.add_argument(
        "--dataset",
        type=dataset_name_or_index,
        default=None,
        metavar="NAME_OR_INDEX",
        help="head of a ViTPose++ checkpoint, by name (coco, aic, mpii, ap10k, apt36k, wholebody) or index "
        "(default: the first head)",
    )
    parser.add_argument("--flip-test", action="store_true", help="average with the mirrored crops (official flip test)")
    parser.add_argument(
        "--out", metavar="DIR", default=None, help="write an annotated PNG per image (and a JSON per video frame)"
    )
    parser.add_argument(
        "--json", metavar="FILE", default=None, help="write all results to one JSON file ('-' prints it)"
    )
    parser.add_argument(
        "--strict", action="store_true", help="stop at the first unreadable image (default: skip it, exit 1 at the end)"
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=0.3,
        metavar="S",
        help="draw keypoints scoring at least S (default 0.3)",
    )
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="crops per forward pass (default 32)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: first GPU if any)")
    parser.add_argument(
        "--dtype",
        type=dtype_name,
        default="auto",
        choices=DTYPES,
        help="precision of the pose model (auto: bf16 on CUDA and on CPUs with avx512_bf16/AMX, else fp32; "
        "float32 / bfloat16 / float16 are accepted too)",
    )
    parser.add_argument("--compile", action="store_true", help="run the pose model through torch.compile")
    parser.add_argument(
        "--video-stride", type=int, default=1, metavar="N", help="use every N-th video frame (default 1)"
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="hide every progress bar (also the model loading bars)"
    )
    parser.add_argument(
        "--paradigm",
        choices=("top-down", "bottom-up"),
        default=None,
        help="top-down: boxes or a detector, then crops; bottom-up: whole images, no boxes (default: from the "
        "checkpoint; give bottom-up for a Hub id)",
    )
    parser.add_argument(
        "--scales",
        type=float,
        nargs="+",
        default=None,
        metavar="S",
        help="bottom-up multi-scale test, e.g. --scales 1 0.5 (default: the processor's, 1)",
    )
    from vitpose_hf.video.cli import add_track_arguments

    add_track_arguments(parser)


# ----------------------------------------------------------------------------------------------------------------
# Boxes files
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class BoxTable:
    """Boxes read from a ``--boxes`` file, looked up by image path."""

    by_key: dict[str, list[tuple[list[float], float | None, int | None]]]
    by_id: dict[int, list[tuple[list[float], float | None, int | None]]]
    box_format: str  # the format of the stored boxes

    def lookup(self, path: Path) -> list[tuple[list[float], float | None, int | None]] | None:
        for key in (str(path), os.path.normpath(str(path)), os.path.abspath(str(path)), path.as_posix()):
            if key in self.by_key:
                return self.by_key[key]
        if path.name in self._by_name:
            return self._by_name[path.name]
        if path.stem.isdigit() and int(path.stem) in self.by_id:
            return self.by_id[int(path.stem)]
        return None

    @property
    def _by_name(self) -> dict[str, list]:
        cache = self.__dict__.get("_names")
        if cache is None:
            names: dict[str, list] = {}
            seen: dict[str, int] = {}
            for key, value in self.by_key.items():
                base = os.path.basename(key)
                seen[base] = seen.get(base, 0) + 1
                names[base] = value
            cache = {k: v for k, v in names.items() if seen[k] == 1}  # ambiguous base names need a full path
            self.__dict__["_names"] = cache
        return cache


def _box_entry(value: Any, where: str, with_category: bool = False) -> tuple[list[float], float | None, int | None]:
    score = None
    category = None
    if isinstance(value, dict):
        box = value.get("bbox", value.get("box"))
        if box is None:
            raise InputError(f"{where}: a box entry needs 'bbox' (or 'box'), got keys {sorted(value)}")
        score = value.get("score")
        category = value.get("category_id") if with_category else None
    else:
        box = value
    if (
        not isinstance(box, (list, tuple))
        or len(box) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
    ):
        raise InputError(f"{where}: a box is 4 numbers, got {box!r}")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        raise InputError(f"{where}: score must be a number, got {score!r}")
    return [float(v) for v in box], None if score is None else float(score), category


def load_boxes_file(path: str | os.PathLike, box_format: str | None = None) -> BoxTable:
    """Read a ``--boxes`` file (see the module docstring). COCO formats are stored as ``xywh``."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise InputError(f"--boxes: no such file {os.fspath(path)!r}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"--boxes: {os.fspath(path)!r} is not valid JSON ({exc})") from None
    by_key: dict[str, list] = {}
    by_id: dict[int, list] = {}
    if isinstance(data, list):  # COCO detection results
        for i, item in enumerate(data):
            if not isinstance(item, dict) or "bbox" not in item or not ("image_id" in item or "file_name" in item):
                raise InputError(
                    f"--boxes: entry {i} of a COCO results list needs 'bbox' and 'image_id' or 'file_name', "
                    f"got {item!r}"
                )
            entry = _box_entry(item, f"--boxes entry {i}", with_category=True)
            if "file_name" in item:
                by_key.setdefault(str(item["file_name"]), []).append(entry)
            else:
                by_id.setdefault(int(item["image_id"]), []).append(entry)
        return BoxTable(by_key, by_id, "xywh")
    if isinstance(data, dict) and "annotations" in data and "images" in data:  # COCO annotation file
        names = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        for name in names.values():
            by_key.setdefault(name, [])
        for i, ann in enumerate(data["annotations"]):
            if ann.get("iscrowd", 0):
                continue
            entry = _box_entry({**ann, "score": ann.get("score")}, f"--boxes annotation {i}", with_category=True)
            if entry[0][2] <= 0 or entry[0][3] <= 0:
                continue
            image_id = int(ann["image_id"])
            if image_id in names:
                by_key[names[image_id]].append(entry)
            else:
                by_id.setdefault(image_id, []).append(entry)
        return BoxTable(by_key, by_id, "xywh")
    if isinstance(data, dict):  # file name -> boxes
        for name, boxes in data.items():
            if not isinstance(boxes, list):
                raise InputError(f"--boxes: the boxes of {name!r} must be a list, got {type(boxes).__name__}")
            by_key[str(name)] = [_box_entry(b, f"--boxes {name!r}[{j}]") for j, b in enumerate(boxes)]
        return BoxTable(by_key, by_id, box_format or "xywh")
    raise InputError(
        f"--boxes: expected a JSON object (file name -> boxes) or a COCO results list, got {type(data).__name__}"
    )


# ----------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One image to process: where it comes from and where its outputs go."""

    source: Path
    out_stem: Path  # output path without suffix, relative to --out
    frame: int | None = None
    image: Any = None  # filled when read (videos come with their frames)


def _unique(stem: Path, used: set[str]) -> Path:
    candidate, n = stem, 1
    while str(candidate) in used:
        candidate = stem.with_name(f"{stem.name}_{n}")
        n += 1
    used.add(str(candidate))
    return candidate


def _expand_inputs(inputs: list[str]) -> list[tuple[str, Path, Path]]:
    """(kind, path, output stem) for each image or video; kind is 'image' or 'video'."""
    items: list[tuple[str, Path, Path]] = []
    used: set[str] = set()
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            _note_unread(path, bool(files))
            if not files:
                videos = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
                if not videos:
                    raise InputError(f"the folder {text!r} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
                for video in videos:
                    items.append(("video", video, _unique(Path(path.name or "frames") / video.stem, used)))
                continue
            folder = path.resolve().name or "frames"
            for file in files:
                items.append(("image", file, _unique(Path(folder) / file.stem, used)))
        elif path.is_file():
            suffix = path.suffix.lower()
            if suffix in IMAGE_EXTENSIONS:
                items.append(("image", path, _unique(Path(path.stem), used)))
            elif suffix in VIDEO_EXTENSIONS:
                items.append(("video", path, _unique(Path(path.stem), used)))
            else:
                raise InputError(
                    f"{text!r} is neither an image ({', '.join(sorted(IMAGE_EXTENSIONS))}) nor a video "
                    f"({', '.join(sorted(VIDEO_EXTENSIONS))})"
                )
        else:
            raise InputError(f"no such file or folder: {text!r}")
    return items


def _note_unread(folder: Path, has_images: bool) -> None:
    """Say on stderr what a folder holds that is not read: sub-folders, videos (when it has images), other files."""
    subfolders, videos, others = [], [], []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            subfolders.append(entry.name + "/")
        elif entry.suffix.lower() in VIDEO_EXTENSIONS:
            if has_images:
                videos.append(entry.name)
        elif entry.suffix.lower() not in IMAGE_EXTENSIONS:
            others.append(entry.name)
    parts = []
    for names, what in (
        (subfolders, "sub-folder(s), not searched"),
        (videos, "video(s), read only when given by name or in a folder without images"),
        (others, "file(s) that are not images"),
    ):
        if names:
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            parts.append(f"{len(names)} {what} ({shown})")
    if parts:
        print(f"note: in the folder {str(folder)!r}, not read: " + "; ".join(parts), file=sys.stderr)


def _read_image(path: Path) -> Any:
    from vitpose_hf.images import load_image

    try:
        return load_image(path)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _cv2(path: Path) -> Any:
    try:
        import cv2
    except ImportError:
        raise InputError(
            f"reading the video {str(path)!r} needs OpenCV, in the optional `video` extra: "
            "pip install 'vitpose-hf[video]' (or extract the frames into a folder and pass the folder)"
        ) from None
    return cv2


def _open_video(path: Path) -> Any:
    capture = _cv2(path).VideoCapture(str(path))
    if not capture.isOpened():
        raise InputError(f"OpenCV cannot open the video {str(path)!r}")
    return capture


def _video_frames(path: Path, stem: Path, stride: int) -> Iterator[Job]:
    cv2 = _cv2(path)
    capture = _open_video(path)
    index = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if index % stride == 0:
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                yield Job(path, stem / f"frame_{index:06d}", index, rgb)
            index += 1
    finally:
        capture.release()


def _count_frames(path: Path, stride: int) -> int | None:
    capture = _open_video(path)
    try:
        total = int(capture.get(_cv2(path).CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()
    return (total + stride - 1) // stride if total > 0 else None


# ----------------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------------
def _chunks(jobs: Iterator[Job], size: int) -> Iterator[list[Job]]:
    chunk: list[Job] = []
    for job in jobs:
        chunk.append(job)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _all_jobs(items: list[tuple[str, Path, Path]], stride: int) -> Iterator[Job]:
    for kind, path, stem in items:
        if kind == "image":
            yield Job(path, stem)
        else:
            yield from _video_frames(path, stem, stride)


@dataclass
class BoxCounts:
    """What the ``--boxes`` filters removed, for the summary."""

    by_category: int = 0
    by_score: int = 0
    warned: set[str] = field(default_factory=set)  # kinds of suspicious boxes already reported


def _file_boxes(
    table: BoxTable,
    job: Job,
    box_format: str,
    categories: set[int] | None,
    threshold: float | None,
    counts: BoxCounts,
) -> tuple[list[list[float]], list[float | None]]:
    entries = table.lookup(job.source) if job.frame is None else None
    if entries is None:
        return [], []
    boxes, scores = [], []
    for box, score, category in entries:
        if categories is not None and (category is None or int(category) not in categories):
            counts.by_category += 1
            continue
        if threshold is not None and score is not None and score < threshold:
            counts.by_score += 1
            continue
        boxes.append(convert_boxes(box, table.box_format, box_format))
        scores.append(score)
    if boxes:
        name = f"the --boxes of {job.source.name}"
        validate_boxes(boxes, box_format, name=name)  # names the file and the box
        height, width = _image_hw(job.image)
        for kind, message in box_warnings(boxes, box_format, width, height, name=name).items():
            if kind not in counts.warned:  # once per kind and run
                counts.warned.add(kind)
                print(f"warning: {message}", file=sys.stderr)
    return boxes, scores


def _image_hw(image: Any) -> tuple[int, int]:
    from vitpose_hf.images import image_size

    return image_size(image)


def _category_note(table: BoxTable, categories: set[int] | None) -> None:
    """With several COCO categories in the file and no --box-category, say that all of them are used."""
    if categories is not None:
        return
    found: dict[int, int] = {}
    for entries in (*table.by_key.values(), *table.by_id.values()):
        for _, _, category in entries:
            if category is not None:
                found[int(category)] = found.get(int(category), 0) + 1
    if len(found) > 1:
        listed = ", ".join(f"{COCO_CATEGORY_NAMES.get(c, f'category {c}')}: {n}" for c, n in sorted(found.items()))
        print(
            f"note: --boxes holds several COCO categories ({listed}); all are used. "
            "Pass --box-category 1 to keep only the people.",
            file=sys.stderr,
        )


def _write_json(path: str, payload: Any) -> None:
    if path == "-":
        json.dump(payload, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)


def _predict(args: argparse.Namespace) -> int:
    from vitpose_hf.inference.hub import check_device

    if getattr(args, "track", False) and not args.inputs:  # before the sample photo fallback
        raise InputError("--track needs a video file or a folder of frames")
    inputs = list(args.inputs)
    if args.sample or not inputs:
        if not SAMPLE_IMAGE.is_file():
            raise InputError(f"the bundled sample image is missing ({SAMPLE_IMAGE}); reinstall vitpose-hf")
        if not inputs:
            print(f"no input given: using the bundled sample photo {SAMPLE_IMAGE}", file=sys.stderr)
        inputs.append(str(SAMPLE_IMAGE))
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.video_stride < 1:
        raise InputError(f"--video-stride must be at least 1, got {args.video_stride}")
    if args.boxes and args.detector:
        raise InputError("pass either --boxes or --detector, not both")
    if args.box_category and not args.boxes:
        raise InputError("--box-category filters the --boxes file; without --boxes it does nothing")
    bottom_up = _bottom_up(args)
    check_device(args.device)
    items = _expand_inputs(inputs)
    if args.boxes and any(kind == "video" for kind, _, _ in items):
        raise InputError("--boxes applies to image files; for videos use --detector (or the whole frame as one box)")
    out_dir = args.out if args.out is not None else (DEFAULT_OUT if args.json is None else None)
    box_format = args.box_format or "xywh"
    table = load_boxes_file(args.boxes, args.box_format) if args.boxes else None
    categories = set(args.box_category) if args.box_category else None
    if table is not None:
        _category_note(table, categories)
        if table.box_format != box_format:
            logger.info("--boxes holds %s boxes: converting them to %s", table.box_format, box_format)
    whole_image = table is None and args.detector is None and not bottom_up and not args.track
    if whole_image:
        print(
            "note: no --boxes and no --detector: each image is one box, the whole image (right for one person per "
            "image). Pass --boxes FILE.json or --detector MODEL to find several people.",
            file=sys.stderr,
        )

    total: int | None = 0  # for the progress bar; opening videos first also reports a missing OpenCV early
    for kind, path, _ in [] if args.track else items:  # --track opens its sources itself
        if kind == "image":
            total = None if total is None else total + 1
        else:
            frames = _count_frames(path, args.video_stride)
            total = None if total is None or frames is None else total + frames

    if bottom_up:
        pipe, info = _bottom_up_estimator(args)
    else:
        pipe, info = _top_down_pipeline(args, box_format)
        if args.track:
            from vitpose_hf.video.cli import run_track

            return run_track(args, pipe, inputs=list(args.inputs))  # a folder is one frame source here
    return _write_results(
        args, pipe, info, items, total, out_dir, box_format, table, categories, whole_image, bottom_up
    )


def _bottom_up(args: argparse.Namespace) -> bool:
    """Whether the run is bottom-up (``--paradigm``, else the checkpoint's type); refuses the options that do not
    apply to the chosen paradigm."""
    from vitpose_hf.inference.bottom_up import is_bottom_up_checkpoint

    folder = Path(args.model)
    local = (folder / "config.json").is_file()
    found = local and is_bottom_up_checkpoint(folder)
    if args.paradigm == "top-down" and found:
        raise InputError(f"--paradigm top-down, but {args.model!r} is a bottom-up checkpoint")
    if args.paradigm == "bottom-up" and local and not found:
        raise InputError(
            f"--paradigm bottom-up, but {args.model!r} is a top-down checkpoint "
            "(`vitpose-hf train --paradigm bottom-up --model ...` makes a bottom-up one from it)"
        )
    if not (found or args.paradigm == "bottom-up"):
        if args.scales is not None:
            raise InputError("--scales is the multi-scale test of bottom-up models (--paradigm bottom-up)")
        return False
    refused = [
        name
        for name, given in (
            ("--boxes", args.boxes),
            ("--detector", args.detector),
            ("--box-threshold", args.box_threshold is not None),
            ("--track", args.track),
            ("--compile", args.compile),
        )
        if given
    ]
    if refused:
        raise InputError(
            f"{' / '.join(refused)} {'does' if len(refused) == 1 else 'do'} not apply to a bottom-up model: it finds "
            "the people in the whole image itself"
        )
    if args.dtype not in ("auto", "fp32"):
        raise InputError(f"--dtype {args.dtype} is not supported for bottom-up models (they run in fp32)")
    if args.scales is not None and not all(s > 0 for s in args.scales):
        raise InputError(f"--scales must be positive numbers, got {args.scales}")
    return True


def _bottom_up_estimator(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The :class:`~vitpose_hf.inference.bottom_up.BottomUpPoseEstimator` of ``--model`` and its head's dataset."""
    from vitpose_hf.inference.pipeline import pipeline

    try:
        estimator = pipeline(
            args.model,
            paradigm="bottom-up",
            dataset=args.dataset,
            device=args.device,
            flip_test=args.flip_test,
            scales=args.scales,
            batch_size=args.batch_size,
        )
    except (KeyError, IndexError) as exc:  # an unknown --dataset head
        raise InputError(f"--dataset {args.dataset!r}: {str(exc).strip(chr(39))}") from None
    return estimator, estimator.model.config.datasets[estimator.dataset_index]


def _top_down_pipeline(args: argparse.Namespace, box_format: str) -> tuple[Any, dict[str, Any]]:
    """The top-down pose pipeline of ``--model`` (with ``--detector``) and its head's dataset."""
    from vitpose_hf.inference.hub import choose_dtype
    from vitpose_hf.inference.pipeline import PoseEstimationPipeline, load_pose_model

    model = load_pose_model(args.model, torch_dtype=None if args.dtype == "auto" else args.dtype)
    pipe_kwargs: dict[str, Any] = {"batch_size": args.batch_size, "box_format": box_format, "flip_test": args.flip_test}
    if args.dataset is not None:
        pipe_kwargs["dataset"] = args.dataset
    if args.detector is not None and args.box_threshold is not None:
        pipe_kwargs["detector_threshold"] = args.box_threshold
    if args.device is not None:
        pipe_kwargs["device"] = args.device
    pipe = PoseEstimationPipeline(
        model=model,
        image_processor=None,
        detector=args.detector,
        task="pose-estimation",
        torch_dtype=None if args.dtype == "auto" else args.dtype,
        compile=args.compile,
        **pipe_kwargs,
    )
    if args.dtype == "auto":  # bf16 on CUDA and native-bf16 CPUs, else float32 (logged)
        pipe.model.to(choose_dtype("auto", pipe.device))
    try:
        index = model.config.dataset_to_index(args.dataset if args.dataset is not None else 0)
    except (KeyError, IndexError, ValueError) as exc:
        raise InputError(f"--dataset {args.dataset!r}: {exc}") from None
    return pipe, model.config.datasets[index]


def _write_results(
    args: argparse.Namespace,
    pipe: Any,
    info: dict[str, Any],
    items: list[tuple[str, Path, Path]],
    total: int | None,
    out_dir: str | None,
    box_format: str,
    table: BoxTable | None,
    categories: set[int] | None,
    whole_image: bool,
    bottom_up: bool,
) -> int:
    """Run ``pipe`` (top-down pipeline or bottom-up estimator: the same per-person output) over the inputs and
    write the drawings and JSON."""
    import torch
    from tqdm import tqdm

    from vitpose_hf.inference.drawing import draw

    records: list[dict[str, Any]] = []
    missing = 0
    people_count = 0
    unreadable: list[str] = []
    first_error = ""
    counts = BoxCounts()
    out_path = Path(out_dir) if out_dir is not None else None
    with tqdm(total=total, unit="img", desc="vitpose-hf", disable=args.no_progress, file=sys.stderr) as progress:
        for chunk in _chunks(_all_jobs(items, args.video_stride), IMAGES_PER_CALL):
            readable = []
            for job in chunk:
                if job.image is None:
                    try:
                        job.image = _read_image(job.source)
                    except InputError as exc:
                        if args.strict:
                            raise
                        unreadable.append(str(job.source))
                        first_error = first_error or str(exc)
                        print(f"warning: skipping an unreadable image: {exc}", file=sys.stderr)
                        progress.update(1)
                        continue
                readable.append(job)
            chunk = readable
            if not chunk:
                continue
            call: dict[str, Any] = {}
            if table is not None:
                boxes, scores = [], []
                for job in chunk:
                    b, sc = _file_boxes(table, job, box_format, categories, args.box_threshold, counts)
                    if job.frame is None and table.lookup(job.source) is None:
                        missing += 1
                    boxes.append(b)
                    scores.append(sc)
                call["boxes"] = boxes
                call["box_scores"] = scores
            elif whole_image:  # the pipeline's own fallback, without its Python-API advice
                call["boxes"] = [[[0.0, 0.0, *map(float, _size_of(job.image))]] for job in chunk]
            with torch.inference_mode():
                results = pipe([job.image for job in chunk], **call)
            if bottom_up:  # the estimator's boxes are xywh; convert_boxes owns the format names
                for person in (p for people in results for p in people):
                    person["box"], person["box_format"] = convert_boxes(person["box"], "xywh", box_format), box_format
            for job, people in zip(chunk, results):
                people_count += len(people)
                width, height = _size_of(job.image)
                record = {
                    "file": str(job.source),
                    "frame": job.frame,
                    "width": width,
                    "height": height,
                    "people": people,
                }
                records.append(record)
                if out_path is not None:
                    target = out_path / job.out_stem
                    target.parent.mkdir(parents=True, exist_ok=True)
                    # name + suffix, not with_suffix: "a.b.jpg" has the stem "a.b"
                    draw(job.image, people, score_threshold=args.score_threshold).save(
                        target.parent / f"{target.name}.png"
                    )
                    if job.frame is not None:
                        with open(target.parent / f"{target.name}.json", "w", encoding="utf-8") as f:
                            json.dump(record, f, indent=1)
                job.image = None  # frames can be many: keep only the results
                progress.update(1)
    if missing:
        print(f"warning: {missing} image(s) have no entry in {args.boxes}: no people for them", file=sys.stderr)
    if counts.by_category:
        kept = ", ".join(map(str, sorted(categories or ())))
        print(f"note: --box-category {kept} removed {counts.by_category} box(es) of other categories", file=sys.stderr)
    if counts.by_score:
        print(f"note: --box-threshold removed {counts.by_score} box(es) of --boxes", file=sys.stderr)
    if args.json is not None:
        _write_json(
            args.json,
            {"model": str(args.model), "dataset": info["name"], "box_format": box_format, "images": records},
        )
    where = []
    if out_path is not None:
        where.append(f"annotated images in {out_path}/")
    if args.json is not None and args.json != "-":
        where.append(f"results in {args.json}")
    summary = f"{len(records)} image(s), {people_count} {'person' if people_count == 1 else 'people'}"
    if unreadable:
        summary += f", {len(unreadable)} unreadable image(s) skipped"
    print(summary + ("; " + ", ".join(where) if where else ""), file=sys.stderr if args.json == "-" else sys.stdout)
    if unreadable and not records:
        raise InputError(f"no image could be read ({first_error})")
    if unreadable:
        print(
            f"vitpose-hf predict: {len(unreadable)} image(s) could not be read: {', '.join(unreadable)}",
            file=sys.stderr,
        )
        return 1
    return 0


def _size_of(image: Any) -> tuple[int, int]:
    from vitpose_hf.images import image_size

    height, width = image_size(image)
    return width, height


def run(args: argparse.Namespace) -> int:
    """Run ``vitpose-hf predict``; bad inputs print one error line and return 2, an unreachable Hub returns 1, and
    unreadable images (skipped) return 1 at the end."""
    from vitpose_hf.inference.hub import HubUnreachableError, NoSuchPathError, progress_bars

    try:
        with progress_bars(not args.no_progress):
            return _predict(args)
    except HubUnreachableError as exc:
        print(f"vitpose-hf predict: error: {exc}", file=sys.stderr)
        return 1
    except (InputError, ValueError, TypeError, NoSuchPathError) as exc:
        print(f"vitpose-hf predict: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"vitpose-hf predict: error: {exc}", file=sys.stderr)
        return 1
