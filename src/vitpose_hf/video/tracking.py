"""Person identities across video frames: greedy matching of box IoU or keypoint OKS, with lost tracks kept for a while.

Each frame, the people found are matched to the tracks still alive, highest similarity first, as long as the
similarity reaches ``threshold``; a person left over starts a new track. A track that is not matched keeps its last
box and keypoints while it has missed at most ``max_age`` frames (counted in the stream's frame indices, so a
``stride`` does not change what a frame means) and is then dropped: a person who comes back later gets a new id.
Ids count up from 1 and are never reused by a tracker.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vitpose_hf.inference.drawing import person_arrays, person_box
from vitpose_hf.keypoint_metadata import get_dataset_info

__all__ = ["TRACK_METRICS", "PoseTracker", "Track", "box_iou", "keypoint_box", "keypoint_oks"]

TRACK_METRICS = ("iou", "oks")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, M)`` intersection over union of ``(N, 4)`` and ``(M, 4)`` xyxy boxes (0 where both are empty)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def keypoint_oks(
    xy_a: np.ndarray,
    scores_a: np.ndarray,
    xy_b: np.ndarray,
    scores_b: np.ndarray,
    areas: np.ndarray,
    sigmas: Sequence[float],
    score_threshold: float = 0.3,
) -> np.ndarray:
    """``(N, M)`` object keypoint similarity between poses ``a`` (``(N, K, 2)``) and ``b`` (``(M, K, 2)``).

    The COCO formula ``mean_k exp(-d_k^2 / (2 s^2 (2 sigma_k)^2))`` with ``s^2`` the area of ``a``'s box
    (``areas``, ``(N,)``), over the keypoints that score at least ``score_threshold`` in both poses; 0 when none do.
    """
    xy_a = np.asarray(xy_a, dtype=np.float64)
    xy_b = np.asarray(xy_b, dtype=np.float64)
    variances = (2.0 * np.asarray(sigmas, dtype=np.float64)) ** 2
    d2 = ((xy_a[:, None] - xy_b[None, :]) ** 2).sum(-1)  # (N, M, K)
    scale = np.maximum(np.asarray(areas, dtype=np.float64), np.spacing(1))[:, None, None]
    similarity = np.exp(-d2 / variances / scale / 2.0)
    both = (np.asarray(scores_a)[:, None] >= score_threshold) & (np.asarray(scores_b)[None, :] >= score_threshold)
    count = both.sum(-1)
    return np.where(count > 0, (similarity * both).sum(-1) / np.maximum(count, 1), 0.0)


def keypoint_box(
    xy: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    padding: float,
    width: float,
    height: float,
    min_keypoints: int,
) -> list[float] | None:
    """The xyxy box around the keypoints scoring at least ``threshold``, grown ``padding`` times about its centre
    and clipped to the image; ``None`` with fewer than ``min_keypoints`` such keypoints or an empty box."""
    keep = np.asarray(scores) >= threshold
    if int(keep.sum()) < max(1, min_keypoints):
        return None
    points = np.asarray(xy)[keep]
    (x1, y1), (x2, y2) = points.min(0), points.max(0)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half_w, half_h = (x2 - x1) * padding / 2, (y2 - y1) * padding / 2
    box = [
        max(0.0, cx - half_w),
        max(0.0, cy - half_h),
        min(float(width), cx + half_w),
        min(float(height), cy + half_h),
    ]
    if box[2] <= box[0] or box[3] <= box[1]:
        return None
    return [float(v) for v in box]


@dataclass
class Track:
    """A tracked person: its id, its last box (xyxy), keypoints and scores, and the frame it was last seen in."""

    track_id: int
    box: np.ndarray
    keypoints: np.ndarray
    scores: np.ndarray
    first_frame: int
    last_frame: int
    hits: int = 1


class PoseTracker:
    """Assigns a ``track_id`` to each person of each frame.

    Args:
        metric: ``"iou"`` (boxes) or ``"oks"`` (keypoints, with the dataset's OKS sigmas).
        threshold: minimum similarity for a person to continue a track.
        max_age: frames a lost track may miss and still continue; after that its person gets a new id.
        dataset: keypoint dataset for the OKS sigmas (default: each person's ``dataset``, else COCO).
        keypoint_threshold: keypoints scoring below it are left out of OKS.
    """

    def __init__(
        self,
        metric: str = "iou",
        threshold: float = 0.3,
        max_age: int = 30,
        dataset: str | dict | None = None,
        keypoint_threshold: float = 0.3,
    ) -> None:
        if metric not in TRACK_METRICS:
            raise ValueError(f"metric must be one of {TRACK_METRICS}, got {metric!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
        if isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 0:
            raise ValueError(f"max_age must be a non-negative integer (frames), got {max_age!r}")
        self.metric = metric
        self.threshold = float(threshold)
        self.max_age = max_age
        self.dataset = dataset
        self.keypoint_threshold = float(keypoint_threshold)
        self.tracks: list[Track] = []
        self.next_id = 1
        self._last_frame: int | None = None

    def reset(self) -> None:
        """Forget every track (for a new video); ids keep counting up, so they stay unique across videos."""
        self.tracks = []
        self._last_frame = None

    def _sigmas(self, people: Sequence[dict], k: int) -> np.ndarray:
        dataset = self.dataset or next((p.get("dataset") for p in people if p.get("dataset")), None) or "coco"
        sigmas = get_dataset_info(dataset)["sigmas"]
        if sigmas is None or len(sigmas) != k:
            raise ValueError(f"OKS tracking needs {k} OKS sigmas; the dataset {dataset!r} has none that fit")
        return np.asarray(sigmas, dtype=np.float64)

    def _similarity(self, people: Sequence[dict], boxes: np.ndarray, xy: list, scores: list) -> np.ndarray:
        if not self.tracks or not people:
            return np.zeros((len(self.tracks), len(people)))
        track_boxes = np.stack([t.box for t in self.tracks])
        if self.metric == "iou":
            return box_iou(track_boxes, boxes)
        k = xy[0].shape[0]
        if any(p.shape[0] != k for p in xy) or any(t.keypoints.shape[0] != k for t in self.tracks):
            raise ValueError("OKS tracking needs the same number of keypoints for every person")
        areas = (track_boxes[:, 2] - track_boxes[:, 0]) * (track_boxes[:, 3] - track_boxes[:, 1])
        return keypoint_oks(
            np.stack([t.keypoints for t in self.tracks]),
            np.stack([t.scores for t in self.tracks]),
            np.stack(xy),
            np.stack(scores),
            areas,
            self._sigmas(people, k),
            self.keypoint_threshold,
        )

    def update(self, people: Sequence[dict], frame_index: int) -> list[int]:
        """Match one frame's people (pipeline person dicts) to the tracks; sets and returns their ``track_id``.

        ``frame_index`` must increase from call to call (the stream's frame index).
        """
        if self._last_frame is not None and frame_index <= self._last_frame:
            raise ValueError(f"frame_index must increase: got {frame_index} after {self._last_frame}")
        self._last_frame = frame_index
        self.tracks = [t for t in self.tracks if frame_index - t.last_frame - 1 <= self.max_age]  # frames missed
        boxes, xy, scores = [], [], []
        for n, person in enumerate(people):
            points, point_scores = person_arrays(person, f"people[{n}]")
            box = person_box(person, None)
            if box is None:  # no box: the extent of the confident keypoints (of all, when none is)
                box = keypoint_box(points, point_scores, self.keypoint_threshold, 1.0, math.inf, math.inf, 1)
                if box is None:
                    box = [*points.min(0), *points.max(0)]
            boxes.append(np.asarray(box, dtype=np.float64))
            xy.append(points)
            scores.append(point_scores)
        boxes_array = np.stack(boxes) if boxes else np.zeros((0, 4))
        similarity = self._similarity(people, boxes_array, xy, scores)
        ids: list[int | None] = [None] * len(people)
        used_tracks: set[int] = set()
        if similarity.size:
            order = np.argsort(-similarity, axis=None, kind="stable")
            for flat in order:
                t, p = divmod(int(flat), similarity.shape[1])
                if similarity[t, p] < self.threshold or similarity[t, p] <= 0:
                    break
                if t in used_tracks or ids[p] is not None:
                    continue
                track = self.tracks[t]
                track.box, track.keypoints, track.scores = boxes_array[p], xy[p], scores[p]
                track.last_frame = frame_index
                track.hits += 1
                used_tracks.add(t)
                ids[p] = track.track_id
        for p in range(len(people)):
            if ids[p] is None:
                track = Track(self.next_id, boxes_array[p], xy[p], scores[p], frame_index, frame_index)
                self.next_id += 1
                self.tracks.append(track)
                ids[p] = track.track_id
        for person, track_id in zip(people, ids):
            if isinstance(person, dict):
                person["track_id"] = track_id
        return [int(i) for i in ids]  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return (
            f"PoseTracker(metric={self.metric!r}, threshold={self.threshold}, max_age={self.max_age}, "
            f"tracks={len(self.tracks)})"
        )
