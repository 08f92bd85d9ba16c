"""Frame sources for video pose estimation: a video file, a folder of frames, an iterator of images, a camera.

Every source yields :class:`Frame` objects (RGB ``(H, W, 3)`` uint8 pixels, the frame's index in the stream and its
time in seconds) and knows its frame rate. Frames that cannot be read are skipped and counted (``source.skipped``,
with the reasons in ``source.skip_reasons``), never passed on as garbage; a video that cannot be opened raises
:class:`VideoSourceError` naming it.

OpenCV (the optional ``video`` extra) is needed for video files and cameras only; it is imported when one is opened.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitpose_hf.images import load_image, to_rgb_array

__all__ = [
    "DEFAULT_FPS",
    "FRAME_EXTENSIONS",
    "VIDEO_FILE_EXTENSIONS",
    "CameraSource",
    "Frame",
    "FrameSource",
    "FolderSource",
    "IteratorSource",
    "VideoFileSource",
    "VideoSourceError",
    "open_source",
    "require_cv2",
]

logger = logging.getLogger(__name__)

DEFAULT_FPS = 30.0  # folders and iterators carry no frame rate
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VIDEO_FILE_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
_MAX_BAD_IN_A_ROW = 25  # a video whose frames keep failing is broken, not noisy: stop instead of spinning


class VideoSourceError(ValueError):
    """A frame source that cannot be opened or read (missing file, not a video, no OpenCV, camera unavailable)."""


@dataclass
class Frame:
    """One frame: ``index`` in the stream (0-based, counting skipped frames), ``time`` in seconds, RGB pixels."""

    index: int
    time: float
    image: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``."""
        return int(self.image.shape[1]), int(self.image.shape[0])


def require_cv2(what: str) -> Any:
    """Import OpenCV, or raise :class:`VideoSourceError` saying that ``what`` needs the ``video`` extra."""
    try:
        import cv2
    except ImportError:
        raise VideoSourceError(
            f"{what} needs OpenCV, in the optional `video` extra: pip install 'vitpose-hf[video]' "
            "(or extract the frames into a folder and pass the folder)"
        ) from None
    return cv2


def _check_fps(fps: Any) -> float | None:
    if fps is None:
        return None
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return float(fps)


def _check_stride(stride: Any) -> int:
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    return stride


class FrameSource:
    """Base class: iterate it for :class:`Frame` objects.

    Attributes:
        name: what the frames come from (a path, ``camera 0``, ``iterator``).
        fps: frames per second of the yielded frames (``native_fps / stride``); ``Frame.time`` is
            ``index / native_fps``.
        total: number of frames that will be yielded, when known (else ``None``).
        skipped: frames that could not be read in the last pass; ``skip_reasons`` says why.
        reiterable: True when iterating again reads the same frames again (files and folders).
    """

    name: str = "frames"
    native_fps: float = DEFAULT_FPS
    fps: float = DEFAULT_FPS
    total: int | None = None
    reiterable: bool = False

    def __init__(self, stride: int = 1) -> None:
        self.stride = _check_stride(stride)
        self.skipped = 0
        self.skip_reasons: list[str] = []

    def _skip(self, reason: str) -> None:
        self.skipped += 1
        if len(self.skip_reasons) < 100:
            self.skip_reasons.append(reason)
        logger.warning("%s: skipped a frame: %s", self.name, reason)

    def __iter__(self) -> Iterator[Frame]:  # pragma: no cover - abstract
        raise NotImplementedError


class VideoFileSource(FrameSource):
    """Frames of a video file, read with OpenCV. Raises :class:`VideoSourceError` if it cannot be opened."""

    reiterable = True

    def __init__(self, path: str | os.PathLike, stride: int = 1, fps: float | None = None) -> None:
        super().__init__(stride)
        self.path = Path(path)
        self.name = str(self.path)
        if not self.path.is_file():
            raise VideoSourceError(f"no such video file: {self.name!r}")
        cv2 = require_cv2(f"reading the video {self.name!r}")
        capture = self._open(cv2)
        try:
            native = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            ok, first = capture.read()
        finally:
            capture.release()
        if not ok or first is None:
            raise VideoSourceError(f"OpenCV opened {self.name!r} but cannot decode any frame: not a readable video")
        self.native_fps = _check_fps(fps) or (native if native > 0 else DEFAULT_FPS)
        self.fps = self.native_fps / self.stride
        self.total = (count + self.stride - 1) // self.stride if count > 0 else None

    def _open(self, cv2: Any) -> Any:
        capture = cv2.VideoCapture(self.name)
        if not capture.isOpened():
            capture.release()
            raise VideoSourceError(f"OpenCV cannot open the video {self.name!r} (not a video, or an unknown codec)")
        return capture

    def __iter__(self) -> Iterator[Frame]:
        cv2 = require_cv2(f"reading the video {self.name!r}")
        capture = self._open(cv2)
        self.skipped, self.skip_reasons = 0, []
        index, bad_in_a_row = 0, 0
        try:
            while True:
                if not capture.grab():  # end of the stream
                    break
                if index % self.stride == 0:
                    ok, frame = capture.retrieve()
                    if not ok or frame is None or frame.ndim != 3:
                        self._skip(f"frame {index} cannot be decoded")
                        bad_in_a_row += 1
                        if bad_in_a_row >= _MAX_BAD_IN_A_ROW:
                            raise VideoSourceError(f"{self.name!r}: {bad_in_a_row} frames in a row cannot be decoded")
                    else:
                        bad_in_a_row = 0
                        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                        yield Frame(index, index / self.native_fps, rgb)
                index += 1
        finally:
            capture.release()


class CameraSource(FrameSource):
    """Frames of a camera (OpenCV device index) until ``max_frames`` or the camera stops."""

    def __init__(self, index: int, stride: int = 1, fps: float | None = None, max_frames: int | None = None) -> None:
        super().__init__(stride)
        self.index = index
        self.name = f"camera {index}"
        self.max_frames = max_frames
        cv2 = require_cv2(f"reading {self.name}")
        self._capture = cv2.VideoCapture(index)
        if not self._capture.isOpened():
            self._capture.release()
            raise VideoSourceError(f"OpenCV cannot open {self.name} (no such device, or it is busy)")
        native = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.native_fps = _check_fps(fps) or (native if native > 0 else DEFAULT_FPS)
        self.fps = self.native_fps / self.stride
        self.total = None if max_frames is None else (max_frames + stride - 1) // stride

    def __iter__(self) -> Iterator[Frame]:
        cv2 = require_cv2(f"reading {self.name}")
        index = 0
        try:
            while self.max_frames is None or index < self.max_frames:
                ok, frame = self._capture.read()
                if not ok or frame is None:
                    break
                if index % self.stride == 0:
                    yield Frame(index, index / self.native_fps, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                index += 1
        finally:
            self._capture.release()


class FolderSource(FrameSource):
    """Image files of a folder, in name order, as frames; unreadable files are skipped and counted."""

    reiterable = True

    def __init__(self, path: str | os.PathLike, stride: int = 1, fps: float | None = None) -> None:
        super().__init__(stride)
        self.path = Path(path)
        self.name = str(self.path)
        if not self.path.is_dir():
            raise VideoSourceError(f"no such folder of frames: {self.name!r}")
        self.files = sorted(p for p in self.path.iterdir() if p.is_file() and p.suffix.lower() in FRAME_EXTENSIONS)
        if not self.files:
            raise VideoSourceError(f"the folder {self.name!r} holds no frames ({', '.join(FRAME_EXTENSIONS)})")
        self.files = self.files[:: self.stride]
        self.native_fps = _check_fps(fps) or DEFAULT_FPS
        self.fps = self.native_fps / self.stride
        self.total = len(self.files)

    def __iter__(self) -> Iterator[Frame]:
        self.skipped, self.skip_reasons = 0, []
        for n, file in enumerate(self.files):
            try:
                image = np.ascontiguousarray(to_rgb_array(load_image(file)), dtype=np.uint8)
            except (ValueError, TypeError) as exc:
                self._skip(str(exc))
                continue
            yield Frame(n * self.stride, n * self.stride / self.native_fps, image)


class IteratorSource(FrameSource):
    """Frames from any iterable of images (PIL images, ``(H, W, 3)`` RGB arrays, ``(3, H, W)`` tensors, paths).

    ``None`` items (a dropped frame) and paths that cannot be read are skipped and counted; an item of an unsupported
    type raises a TypeError naming its position.
    """

    def __init__(self, images: Iterable[Any], fps: float | None = None, stride: int = 1) -> None:
        super().__init__(stride)
        self._images = images
        self.name = "iterator"
        self.native_fps = _check_fps(fps) or DEFAULT_FPS
        self.fps = self.native_fps / self.stride
        self.total = len(images) if hasattr(images, "__len__") else None  # type: ignore[arg-type]
        if self.total is not None:
            self.total = (self.total + stride - 1) // stride
        self.reiterable = isinstance(images, (list, tuple))

    def __iter__(self) -> Iterator[Frame]:
        self.skipped, self.skip_reasons = 0, []
        for index, item in enumerate(self._images):
            if index % self.stride:
                continue
            if item is None:
                self._skip(f"frame {index} is None")
                continue
            try:
                image = load_image(item) if isinstance(item, (str, os.PathLike)) else item
            except ValueError as exc:
                self._skip(f"frame {index}: {exc}")
                continue
            rgb = to_rgb_array(image, where=f"frame {index}")  # TypeError for an unsupported item
            yield Frame(index, index / self.native_fps, np.ascontiguousarray(rgb, dtype=np.uint8))


def open_source(source: Any, fps: float | None = None, stride: int = 1) -> FrameSource:
    """Any frame source: a :class:`FrameSource` as is; an ``int`` is a camera index; a folder path is a folder of
    frames; another path a video file; anything else iterable is an iterator of images.

    ``fps`` overrides the input's frame rate (needed for time-based smoothing when a folder or iterator is not at
    30 fps); ``stride`` keeps every ``stride``-th frame.
    """
    if isinstance(source, FrameSource):
        return source
    if isinstance(source, int) and not isinstance(source, bool):
        return CameraSource(source, stride=stride, fps=fps)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return FolderSource(path, stride=stride, fps=fps)
        if not path.exists():
            raise VideoSourceError(f"no such video file or folder: {os.fspath(source)!r}")
        return VideoFileSource(path, stride=stride, fps=fps)
    if isinstance(source, Iterable) and not isinstance(source, (bytes, np.ndarray, dict)):
        return IteratorSource(source, fps=fps, stride=stride)
    raise TypeError(
        "a frame source is a video file, a folder of frames, a camera index or an iterable of images, got "
        f"{type(source).__name__}"
    )
