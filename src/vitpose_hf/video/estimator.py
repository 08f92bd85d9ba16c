"""``VideoPoseEstimator``: poses with identities on any frame source, person crops batched across frames.

    >>> import vitpose_hf
    >>> pose = vitpose_hf.pipeline("usyd-community/vitpose-base-simple", detector="PekingU/rtdetr_r50vd")
    >>> video = vitpose_hf.VideoPoseEstimator(pose, detect_every=3, smooth="one-euro")
    >>> for frame in video.run("clip.mp4"):
    ...     print(frame.index, [(p["track_id"], p["keypoints"][0]["x"]) for p in frame.people])

How a window of frames is processed:

1. **Detector cadence.** The detector runs on every ``detect_every``-th frame (all such frames of the window in one
   call). On the frames in between, each person's box is the box around their confident keypoints (score at least
   ``keypoint_threshold``) in the previous frame, grown by ``box_padding`` about its centre and clipped to the
   image; a person whose pose in such a box has fewer than ``min_keypoints`` confident keypoints is lost until the
   next detection, and of two such poses with OKS above 0.9 (two boxes that converged on one person) only the
   higher-scored is kept (:func:`vitpose_hf.evaluation.metrics.oks_nms`). A new person is found at the next
   detector frame.
2. **Batching.** Frames whose boxes are known go through the pose model together: the detector frames of the window
   at once, then the second frame of every detector interval, and so on, so that ``batch_size`` crops fill each
   forward pass even with few people per frame (the window holds about ``batch_size`` crops' worth of frames, at
   most ``max_window`` frames).
3. **Tracking** (:class:`~vitpose_hf.video.tracking.PoseTracker`) gives each person a ``track_id``, in frame order.
4. **Smoothing**: ``"one-euro"`` (online, times in seconds from the source's frame rate) or ``"savgol"`` (offline:
   results come once the whole source is read; a track missed on at most ``max_gap`` frames gets a person with
   ``"interpolated": True`` on those frames). See :mod:`vitpose_hf.video.smoothing`.

The pose step is the package's :class:`~vitpose_hf.inference.pipeline.PoseEstimationPipeline`, or any callable with
its call interface: ``pose(images, boxes=[(M_i, 4) per image], box_format="xyxy", box_scores=[...])`` returning one
list of person dicts per image. The detector is anything :func:`~vitpose_hf.inference.detection.load_detector`
accepts (an :class:`~vitpose_hf.inference.detection.ObjectDetector`, a transformers detector, a callable returning
``[{"box": [x1, y1, x2, y2], "score": s, "label": "person"}, ...]`` per image); by default the pipeline's own.
Boxes can also be given per frame (``run(source, boxes=...)``); frames without given boxes then get boxes from the
previous frame's keypoints.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vitpose_hf.boxes import convert_boxes, validate_boxes
from vitpose_hf.evaluation.metrics import oks_nms
from vitpose_hf.inference.detection import DEFAULT_DETECTOR_THRESHOLD, load_detector
from vitpose_hf.inference.drawing import person_arrays
from vitpose_hf.keypoint_metadata import get_dataset_info
from vitpose_hf.video.smoothing import SMOOTHERS, OneEuroSmoother, savgol_smooth
from vitpose_hf.video.sources import Frame, FrameSource, open_source
from vitpose_hf.video.tracking import PoseTracker, keypoint_box

__all__ = ["FrameResult", "VideoPoseEstimator"]

logger = logging.getLogger(__name__)


@dataclass
class FrameResult:
    """The poses of one frame: ``people`` are pipeline person dicts with ``track_id`` (when tracking).

    ``detected`` tells whether the frame's boxes came from the detector (or given boxes) rather than from the previous
    frame's keypoints. ``image`` is the frame's RGB pixels (``None`` once dropped, see ``keep_images``).
    """

    index: int
    time: float
    width: int
    height: int
    people: list[dict[str, Any]] = field(default_factory=list)
    detected: bool = True
    image: np.ndarray | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready record: ``frame``, ``time``, ``width``, ``height``, ``detected``, ``people``."""
        return {
            "frame": self.index,
            "time": self.time,
            "width": self.width,
            "height": self.height,
            "detected": self.detected,
            "people": self.people,
        }


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class VideoPoseEstimator:
    """Top-down pose estimation on video with identities and smoothing (see the module docstring).

    Args:
        pose: a :class:`PoseEstimationPipeline` or a callable with its call interface.
        detector: finds people on detector frames; default: the pipeline's ``detector``. Needed unless boxes are
            given to :meth:`run`.
        batch_size: crops per forward pass (the pipeline's ``batch_size``), and the crops a window aims at.
        detect_every: run the detector on every N-th frame (1: every frame).
        tracker: a :class:`PoseTracker`, ``"iou"`` / ``"oks"`` (a tracker with the defaults), or ``None`` (no
            ``track_id``; smoothing then needs tracking and is refused).
        smooth: ``None``, ``"one-euro"``, ``"savgol"``; ``smooth_options`` go to the smoother
            (one-euro: ``min_cutoff``, ``beta``, ``d_cutoff``; savgol: ``window``, ``order``, ``max_gap``).
        keypoint_threshold: confident keypoints (for the in-between boxes and for smoothing).
        box_padding: growth of the box around the confident keypoints.
        min_keypoints: confident keypoints a person needs to be followed without the detector.
        detector_threshold, detector_labels: the detector's score threshold and classes (default 0.5, the dataset's
            ``detector_labels`` or ``["person"]``).
        max_window: most frames held at once.
        keep_images: keep each frame's pixels on its :class:`FrameResult` (for drawing).
        pose_kwargs: more options for every pose call, e.g. ``{"dataset": "aic", "flip_test": True}`` for the
            pipeline (the dataset also picks the detector classes).
    """

    def __init__(
        self,
        pose: Callable[..., list],
        detector: Any = None,
        batch_size: int = 32,
        detect_every: int = 1,
        tracker: PoseTracker | str | None = "iou",
        smooth: str | None = None,
        smooth_options: Mapping[str, Any] | None = None,
        keypoint_threshold: float = 0.3,
        box_padding: float = 1.25,
        min_keypoints: int = 3,
        detector_threshold: float | None = None,
        detector_labels: Sequence[str] | None = None,
        max_window: int = 64,
        keep_images: bool = True,
        pose_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if not callable(pose):
            raise TypeError(f"pose must be a PoseEstimationPipeline or a callable, got {type(pose).__name__}")
        self.pose = pose
        if detector is None:
            detector = getattr(pose, "detector", None)
        self.detector = load_detector(detector, labels=None)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.detect_every = _check_int("detect_every", detect_every, 1)
        self.max_window = _check_int("max_window", max_window, 1)
        self.min_keypoints = _check_int("min_keypoints", min_keypoints, 1)
        if isinstance(tracker, str):
            tracker = PoseTracker(metric=tracker)
        if tracker is not None and not isinstance(tracker, PoseTracker):
            raise TypeError(f"tracker must be a PoseTracker, 'iou', 'oks' or None, got {type(tracker).__name__}")
        self.tracker = tracker
        if smooth is not None and smooth not in SMOOTHERS:
            raise ValueError(f"smooth must be one of {SMOOTHERS} or None, got {smooth!r}")
        if smooth is not None and tracker is None:
            raise ValueError("smoothing follows tracks: pass a tracker (tracker='iou' or 'oks')")
        self.smooth = smooth
        self.smooth_options = dict(smooth_options or {})
        if smooth == "one-euro":
            OneEuroSmoother(**self.smooth_options, score_threshold=keypoint_threshold)  # checks the options now
        elif smooth == "savgol":
            unknown = set(self.smooth_options) - {"window", "order", "max_gap"}
            if unknown:
                raise ValueError(f"unknown savgol options {sorted(unknown)} (window, order, max_gap)")
            savgol_smooth(np.zeros((1, 1)), **self.smooth_options)  # checks the options now
        if isinstance(keypoint_threshold, bool) or not isinstance(keypoint_threshold, (int, float)):
            raise ValueError(f"keypoint_threshold must be a number, got {keypoint_threshold!r}")
        self.keypoint_threshold = float(keypoint_threshold)
        if isinstance(box_padding, bool) or not isinstance(box_padding, (int, float)) or not box_padding >= 1:
            raise ValueError(f"box_padding must be a number >= 1, got {box_padding!r}")
        self.box_padding = float(box_padding)
        self.detector_threshold = DEFAULT_DETECTOR_THRESHOLD if detector_threshold is None else detector_threshold
        self.keep_images = keep_images
        self.pose_kwargs = dict(pose_kwargs or {})
        reserved = {"boxes", "box_format", "box_scores", "batch_size"} & set(self.pose_kwargs)
        if reserved:
            raise ValueError(f"pose_kwargs may not set {sorted(reserved)}: the estimator sets them")
        self.detector_labels = list(detector_labels) if detector_labels is not None else self._dataset_labels()
        self.stats = {"frames": 0, "detector_frames": 0, "pose_calls": 0, "crops": 0, "lost": 0}

    # ------------------------------------------------------------------------------------------------------------
    def _dataset_labels(self) -> list[str]:
        config = getattr(getattr(self.pose, "model", None), "config", None)
        if config is None or not getattr(config, "datasets", None):
            return ["person"]
        info = config.datasets[config.dataset_to_index(self.pose_kwargs.get("dataset", 0))]
        return list(info.get("detector_labels") or ["person"])

    def _run_pose(self, frames: list[Frame], boxes: list[np.ndarray], scores: list[list]) -> list[list[dict]]:
        from vitpose_hf.inference.pipeline import PoseEstimationPipeline

        self.stats["pose_calls"] += 1
        self.stats["crops"] += sum(len(b) for b in boxes)
        kwargs: dict[str, Any] = {**self.pose_kwargs, "boxes": boxes, "box_format": "xyxy", "box_scores": scores}
        if isinstance(self.pose, PoseEstimationPipeline):
            import torch

            kwargs["batch_size"] = self.batch_size
            with torch.inference_mode():
                results = self.pose([f.image for f in frames], **kwargs)
        else:
            results = self.pose([f.image for f in frames], **kwargs)
        if not isinstance(results, list) or len(results) != len(frames):
            raise ValueError(
                f"the pose step must return one list of people per image ({len(frames)}), got "
                f"{type(results).__name__} of length {len(results) if hasattr(results, '__len__') else '?'}"
            )
        return results

    def _given_boxes(self, boxes: Any, frame: Frame, box_format: str) -> tuple[np.ndarray, list] | None:
        if boxes is None:
            return None
        if callable(boxes):
            entry = boxes(frame.index)
        elif isinstance(boxes, Mapping):
            entry = boxes.get(frame.index)
        else:
            entry = boxes[frame.index] if frame.index < len(boxes) else None
        if entry is None:
            return None
        tensor = validate_boxes(entry, box_format, name=f"the boxes of frame {frame.index}")
        xyxy = np.asarray(convert_boxes(tensor.double().numpy(), box_format, "xyxy"), dtype=np.float64).reshape(-1, 4)
        return xyxy, [None] * len(xyxy)

    def _propagate(self, frame: Frame, previous: list[dict]) -> tuple[np.ndarray, list, list[dict]]:
        """Boxes for ``frame`` from the confident keypoints of the previous frame's people."""
        width, height = frame.size
        boxes, scores, sources = [], [], []
        for n, person in enumerate(previous):
            xy, point_scores = person_arrays(person, f"previous people[{n}]")
            box = keypoint_box(
                xy, point_scores, self.keypoint_threshold, self.box_padding, width, height, self.min_keypoints
            )
            if box is None:
                self.stats["lost"] += 1
                continue
            boxes.append(box)
            scores.append(person.get("box_score"))
            sources.append(person)
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), scores, sources

    def _confident(self, person: dict) -> bool:
        _, scores = person_arrays(person, "person")
        return int((scores >= self.keypoint_threshold).sum()) >= self.min_keypoints

    def _deduplicate(self, people: list[dict]) -> list[dict]:
        """Boxes from keypoints can converge on one person (after a crossing): keep one of poses with OKS > 0.9."""
        sigmas = get_dataset_info(people[0].get("dataset") or "coco").get("sigmas")
        if sigmas is None:
            return people
        poses = []
        for person in people:
            xy, scores = person_arrays(person, "person")
            if len(xy) != len(sigmas):
                return people
            x1, y1, x2, y2 = convert_boxes(person["box"], person.get("box_format", "xywh"), "xyxy")
            poses.append(
                {"keypoints": xy, "scores": scores, "score": float(scores.mean()), "area": (x2 - x1) * (y2 - y1)}
            )
        keep = oks_nms(poses, thr=0.9, sigmas=sigmas, vis_thr=self.keypoint_threshold)
        self.stats["lost"] += len(people) - len(keep)
        return [people[i] for i in sorted(keep)]

    def _window_size(self, people_per_frame: float) -> int:
        groups = max(1, math.ceil(self.batch_size / max(1.0, people_per_frame)))
        return max(
            self.detect_every, min(self.max_window, groups * self.detect_every) // self.detect_every * self.detect_every
        )

    def _process_window(self, window: list[Frame], boxes: Any, box_format: str) -> list[FrameResult]:
        """Poses for a window of frames; its first frame is a detector frame (windows hold whole intervals)."""
        n = len(window)
        people: list[list[dict] | None] = [None] * n
        detected = [False] * n
        # step 0: the detector frames (and every frame with given boxes)
        known: dict[int, tuple[np.ndarray, list]] = {}
        for i, frame in enumerate(window):
            given = self._given_boxes(boxes, frame, box_format)
            if given is not None:
                known[i] = given
        need_detector = [i for i in range(0, n, self.detect_every) if i not in known]
        if need_detector:
            if self.detector is None:
                if boxes is not None:
                    raise ValueError(
                        f"no boxes were given for frame {window[need_detector[0]].index} (a detector frame) and there "
                        "is no detector"
                    )
                raise ValueError(
                    "video pose estimation needs a detector (VideoPoseEstimator(detector=...) or a pipeline built "
                    "with detector=...) or boxes per frame (run(source, boxes=...))"
                )
            detections = self.detector(
                [window[i].image for i in need_detector], labels=self.detector_labels, threshold=self.detector_threshold
            )
            self.stats["detector_frames"] += len(need_detector)
            for i, det in zip(need_detector, detections):
                known[i] = (np.asarray(det.boxes, dtype=np.float64).reshape(-1, 4), [float(s) for s in det.scores])
        # then step by step through the detector intervals, the same step of every interval in one pose call
        for step in range(self.detect_every):
            batch = [i for i in range(step, n, self.detect_every)]
            frames, call_boxes, call_scores, from_previous = [], [], [], []
            for i in batch:
                if i in known:
                    b, s = known[i]
                    from_previous.append(False)
                elif i > 0 and people[i - 1] is not None:
                    b, s, _ = self._propagate(window[i], people[i - 1])
                    from_previous.append(True)
                else:  # pragma: no cover - step 0 frames are always known
                    b, s = np.zeros((0, 4)), []
                    from_previous.append(True)
                frames.append(window[i])
                call_boxes.append(b)
                call_scores.append(s)
            if not frames:
                continue
            results = self._run_pose(frames, call_boxes, call_scores)
            for i, found, propagated in zip(batch, results, from_previous):
                kept = [p for p in found if self._confident(p)] if propagated else list(found)
                if propagated and len(kept) > 1:
                    kept = self._deduplicate(kept)
                self.stats["lost"] += len(found) - len(kept)
                people[i] = kept
                detected[i] = not propagated
        out = []
        for i, frame in enumerate(window):
            width, height = frame.size
            out.append(
                FrameResult(
                    frame.index,
                    frame.time,
                    width,
                    height,
                    people[i] or [],
                    detected[i],
                    frame.image if self.keep_images else None,
                )
            )
        return out

    # ------------------------------------------------------------------------------------------------------------
    def _track_and_smooth(self, result: FrameResult, smoother: OneEuroSmoother | None) -> None:
        if self.tracker is None:
            return
        self.tracker.update(result.people, result.index)
        if smoother is None:
            return
        alive = {t.track_id for t in self.tracker.tracks}
        for track_id in list(smoother.filters):
            if track_id not in alive:
                smoother.forget(track_id)
        for person in result.people:
            xy, scores = person_arrays(person, "person")
            smoothed = smoother.smooth(person["track_id"], xy, scores, result.time)
            for keypoint, (x, y) in zip(person["keypoints"], smoothed):
                keypoint["x"], keypoint["y"] = float(x), float(y)

    def _savgol(self, results: list[FrameResult]) -> None:
        """Smooth every track over the whole video, and fill its gaps of at most ``max_gap`` frames."""
        max_gap = self.smooth_options.get("max_gap", 5)
        by_track: dict[int, list[tuple[int, dict]]] = {}
        for position, result in enumerate(results):
            for person in result.people:
                by_track.setdefault(person["track_id"], []).append((position, person))
        for entries in by_track.values():
            first, last = entries[0][0], entries[-1][0]
            k = len(entries[0][1]["keypoints"])
            values = np.full((last - first + 1, k, 2), np.nan)
            valid = np.zeros((last - first + 1, k), dtype=bool)
            for position, person in entries:
                xy, scores = person_arrays(person, "person")
                values[position - first] = xy
                valid[position - first] = scores >= self.keypoint_threshold
            smoothed, covered = savgol_smooth(values, valid[..., None], **self.smooth_options)
            for position, person in entries:
                row, row_covered = smoothed[position - first], covered[position - first]
                for j, keypoint in enumerate(person["keypoints"]):
                    if row_covered[j].all():
                        keypoint["x"], keypoint["y"] = float(row[j, 0]), float(row[j, 1])
            for (p0, before), (p1, after) in zip(entries, entries[1:]):
                if 1 < p1 - p0 <= max_gap + 1:
                    for q in range(p0 + 1, p1):
                        results[q].people.append(
                            self._gap_person(
                                before,
                                after,
                                (q - p0) / (p1 - p0),
                                values,
                                smoothed[q - first],
                                covered[q - first],
                                p0 - first,
                                p1 - first,
                            )
                        )

    @staticmethod
    def _gap_person(
        before: dict,
        after: dict,
        w: float,
        raw: np.ndarray,
        smoothed: np.ndarray,
        covered: np.ndarray,
        i0: int,
        i1: int,
    ) -> dict:
        """A person for a frame where the track was missed: smoothed keypoints where the smoother filled the gap,
        else the straight line between the neighbours; the box on the line between theirs; the lower scores of the
        two; ``"interpolated": True``."""
        line = raw[i0] + w * (raw[i1] - raw[i0])
        xy = np.where(covered.all(-1)[:, None], smoothed, line)
        _, s0 = person_arrays(before, "person")
        _, s1 = person_arrays(after, "person")
        box_format = before.get("box_format", "xywh")
        b0 = np.asarray(convert_boxes(before["box"], box_format, "xyxy"))
        b1 = np.asarray(convert_boxes(after["box"], after.get("box_format", "xywh"), "xyxy"))
        box_scores = [p.get("box_score") for p in (before, after)]
        person = {k: v for k, v in before.items() if k not in ("box", "box_score", "keypoints")}
        person.update(
            box=convert_boxes((b0 + w * (b1 - b0)).tolist(), "xyxy", box_format),
            box_score=None if None in box_scores else min(box_scores),
            keypoints=[
                {"name": kp["name"], "x": float(x), "y": float(y), "score": float(s)}
                for kp, (x, y), s in zip(before["keypoints"], xy, np.minimum(s0, s1))
            ],
            interpolated=True,
        )
        return person

    def run(
        self, source: Any, boxes: Any = None, box_format: str = "xyxy", fps: float | None = None
    ) -> Iterator[FrameResult]:
        """Estimate poses on every frame of ``source``; yields one :class:`FrameResult` per frame read, in order.

        Args:
            source: a video file, a folder of frames, a camera index, an iterable of images or a
                :class:`~vitpose_hf.video.sources.FrameSource` (see :func:`~vitpose_hf.video.sources.open_source`).
            boxes: optional boxes per frame: a list indexed by frame index, a mapping frame index -> boxes, or a
                callable ``boxes(frame_index)``; ``None`` entries (or missing frames) mean "not given".
            box_format: format of ``boxes`` (``"xyxy"`` or ``"xywh"``).
            fps: frame rate of a source that does not carry one (folders, iterators; default 30).

        Unreadable frames are skipped by the source and counted in ``source.skipped`` (the source is also
        ``self.source`` after the call starts).
        """
        frames = open_source(source, fps=fps)
        self.source: FrameSource = frames
        if self.tracker is not None:
            self.tracker.reset()
        smoother = None
        if self.smooth == "one-euro":
            smoother = OneEuroSmoother(**self.smooth_options, score_threshold=self.keypoint_threshold)
        offline: list[FrameResult] = []
        window: list[Frame] = []
        size = self._window_size(1.0)
        for frame in frames:
            window.append(frame)
            if len(window) < size:
                continue
            counts = yield from self._finish(window, boxes, box_format, smoother, offline)
            size = self._window_size(float(np.mean(counts)) if counts else 1.0)
            window = []
        if window:
            yield from self._finish(window, boxes, box_format, smoother, offline)
        if self.smooth == "savgol":
            self._savgol(offline)
            yield from offline

    def _finish(
        self,
        window: list[Frame],
        boxes: Any,
        box_format: str,
        smoother: OneEuroSmoother | None,
        offline: list[FrameResult],
    ) -> Iterator[FrameResult]:
        """Process, track and smooth one window; yields its results (unless offline) and returns people counts."""
        results = self._process_window(window, boxes, box_format)
        for result in results:
            self.stats["frames"] += 1
            self._track_and_smooth(result, smoother)
            if self.smooth == "savgol":
                offline.append(result)
            else:
                yield result
        return [len(r.people) for r in results]

    def __call__(self, source: Any, **kwargs: Any) -> list[FrameResult]:
        """All frames' results as a list (see :meth:`run`)."""
        return list(self.run(source, **kwargs))
