"""Writers for video results: a rendered video, per-frame JSON, COCO results JSON with ``track_id``, OpenPose JSON.

Each writer has ``write(result)`` for one :class:`~vitpose_hf.video.estimator.FrameResult` and ``close()``; they are
context managers. :func:`write_results` feeds results to several writers with a progress bar.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.ImageDraw

from vitpose_hf.boxes import convert_boxes
from vitpose_hf.inference.drawing import draw
from vitpose_hf.inference.formats import to_openpose, write_coco_results
from vitpose_hf.video.estimator import FrameResult
from vitpose_hf.video.sources import Frame, require_cv2

__all__ = [
    "CocoResultsWriter",
    "FrameJsonWriter",
    "OpenPoseWriter",
    "RenderedVideoWriter",
    "ResultWriter",
    "write_results",
]

_FOURCC = {".avi": "MJPG", ".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v"}


class ResultWriter:
    """Base class: ``write(result)``, ``close()``, and use as a context manager."""

    def write(self, result: FrameResult) -> None:  # pragma: no cover - abstract
        """Write one frame's results."""
        raise NotImplementedError

    def close(self) -> None:
        """Finish the output (flush files)."""

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class RenderedVideoWriter(ResultWriter):
    """A video with each frame's skeletons, boxes and track ids drawn (OpenCV; ``.mp4``, ``.avi``, ...).

    The frame size is taken from the first frame; results without ``image`` need ``image=`` passed to ``write``.
    """

    def __init__(self, path: str | os.PathLike, fps: float, score_threshold: float = 0.3) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in _FOURCC:
            raise ValueError(f"the rendered video must be one of {sorted(_FOURCC)}, got {self.path.name!r}")
        self.cv2 = require_cv2(f"writing the video {str(self.path)!r}")
        self.fourcc = _FOURCC[suffix]
        self.fps = float(fps)
        self.score_threshold = score_threshold
        self._writer: Any = None
        self._size: tuple[int, int] | None = None
        self.frames = 0

    def render(self, image: np.ndarray, people: Sequence[dict]) -> np.ndarray:
        """The frame with poses and track ids drawn, as RGB ``(H, W, 3)`` uint8."""
        canvas = draw(image, people, score_threshold=self.score_threshold)
        pen = PIL.ImageDraw.Draw(canvas)
        for person in people:
            if person.get("track_id") is None or person.get("box") is None:
                continue
            x1, y1, _, _ = convert_boxes(person["box"], person.get("box_format", "xywh"), "xyxy")
            text = f"#{person['track_id']}"
            left, top, right, bottom = pen.textbbox((x1 + 2, y1 + 2), text)
            pen.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=(0, 0, 0))
            pen.text((x1 + 2, y1 + 2), text, fill=(255, 255, 255))
        return np.asarray(canvas)

    def write(self, result: FrameResult, image: np.ndarray | None = None) -> None:
        """Draw and append one frame."""
        image = result.image if image is None else image
        if image is None:
            raise ValueError(f"frame {result.index} has no image to draw (run the estimator with keep_images=True)")
        frame = self.render(image, result.people)
        size = (frame.shape[1], frame.shape[0])
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = self.cv2.VideoWriter(
                str(self.path), self.cv2.VideoWriter_fourcc(*self.fourcc), self.fps, size
            )
            if not self._writer.isOpened():
                raise ValueError(f"OpenCV cannot write the video {str(self.path)!r} (codec {self.fourcc})")
            self._size = size
        elif size != self._size:
            raise ValueError(
                f"frame {result.index} is {size[0]}x{size[1]}, the video is {self._size[0]}x{self._size[1]}"
            )
        self._writer.write(self.cv2.cvtColor(frame, self.cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        """Release the video file."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None


class FrameJsonWriter(ResultWriter):
    """One JSON file per frame, ``folder/frame_000123.json`` (:meth:`FrameResult.to_json`, with ``track_id``)."""

    def __init__(self, folder: str | os.PathLike, source: str | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.source = source

    def write(self, result: FrameResult) -> None:
        """Write this frame's JSON file."""
        record = result.to_json()
        if self.source is not None:
            record = {"file": self.source, **record}
        with open(self.folder / f"frame_{result.index:06d}.json", "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)


class CocoResultsWriter(ResultWriter):
    """COCO keypoint results JSON for the whole video (``image_id`` = frame index, ``track_id``), written at close."""

    def __init__(self, path: str | os.PathLike, image_ids: Any = None, **options: Any) -> None:
        self.path = Path(path)
        self.image_ids = image_ids  # optional frame index -> image id mapping (or callable)
        self.options = options
        self.frames: dict[Any, list[dict]] = {}

    def write(self, result: FrameResult) -> None:
        """Keep this frame's people (the file is written at close)."""
        image_id: Any = result.index
        if callable(self.image_ids):
            image_id = self.image_ids(result.index)
        elif self.image_ids is not None:
            image_id = self.image_ids[result.index]
        self.frames[image_id] = result.people

    def close(self) -> None:
        """Write the COCO results file."""
        write_coco_results(self.path, self.frames, **self.options)


class OpenPoseWriter(ResultWriter):
    """One OpenPose JSON per frame, ``folder/<stem>_<frame:012d>_keypoints.json`` (``person_id`` = track id)."""

    def __init__(self, folder: str | os.PathLike, stem: str = "frame", layout: str = "coco18") -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stem = stem
        self.layout = layout

    def write(self, result: FrameResult) -> None:
        """Write this frame's OpenPose JSON file."""
        document = to_openpose(result.people, layout=self.layout, canvas_size=(result.width, result.height))
        with open(self.folder / f"{self.stem}_{result.index:012d}_keypoints.json", "w", encoding="utf-8") as f:
            json.dump(document, f)


def write_results(
    results: Iterable[FrameResult],
    writers: Sequence[ResultWriter],
    total: int | None = None,
    progress: bool = True,
    frames: Iterator[Frame] | None = None,
    description: str = "vitpose-hf",
) -> int:
    """Feed every result to every writer (closing them at the end), with a tqdm progress bar on stderr.

    ``frames``: the source's frames again, to draw when the results carry no image (an offline smoother with a
    re-read source); matched to the results by frame index. Returns the number of frames.
    """
    from tqdm import tqdm

    count = 0
    try:
        with tqdm(total=total, unit="frame", desc=description, disable=not progress, file=sys.stderr) as bar:
            for result in results:
                image = None
                if frames is not None:
                    frame = next(frames, None)
                    while frame is not None and frame.index < result.index:
                        frame = next(frames, None)
                    if frame is None or frame.index != result.index:
                        raise ValueError(f"frame {result.index} could not be read again for drawing")
                    image = frame.image
                for writer in writers:
                    if isinstance(writer, RenderedVideoWriter):
                        writer.write(result, image=image)
                    else:
                        writer.write(result)
                count += 1
                bar.update(1)
    finally:
        for writer in writers:
            writer.close()
    return count
