"""Interchange: our per-person results to and from the formats other tools read.

- COCO keypoint results JSON (``image_id``, ``category_id``, flat ``keypoints`` [x, y, score] * K, ``score``; plus
  ``bbox`` and, on video, ``track_id``): :func:`to_coco_results` and back with :func:`from_coco_results`;
- OpenPose JSON (``people[].pose_keypoints_2d``, read by ControlNet preprocessors and biomechanics tools):
  :func:`to_openpose` and back with :func:`from_openpose`;
- `supervision <https://supervision.roboflow.com>`_ ``KeyPoints``: :func:`to_supervision` (optional dependency,
  ``pip install 'vitpose-hf[supervision]'``). The image processor's ``post_process_pose_estimation`` output also
  goes straight into ``supervision.KeyPoints.from_transformers``, as transformers' ViTPose output does.

"Our" results are the pose pipeline's person dicts (see :mod:`vitpose_hf.inference.pipeline`)::

    {"box": [x, y, w, h], "box_format": "xywh", "box_score": 0.98 | None, "label": "person" | None,
     "dataset": "coco", "keypoints": [{"name": "nose", "x": 398.1, "y": 181.8, "score": 0.87}, ...],
     "track_id": 3}                                     # track_id: video results only

OpenPose layouts: ``"coco18"`` is OpenPose's COCO body model (nose, neck, right then left arm, right then left leg,
eyes, ears; the neck is the shoulders' midpoint, scored with the lower of their scores), the layout ControlNet's
OpenPose conditioning uses; for COCO-WholeBody people the hands (21 points, OpenPose's hand order) and the 68 face
points are written too. ``"native"`` writes the dataset's own keypoint order (as Pose2Sim does for COCO-17).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vitpose_hf.boxes import check_box_format, convert_boxes
from vitpose_hf.evaluation.metrics import rescore_poses
from vitpose_hf.evaluation.metrics import to_coco_results as _coco_entries
from vitpose_hf.inference.drawing import person_arrays, person_box
from vitpose_hf.keypoint_metadata import get_dataset_info

__all__ = [
    "OPENPOSE_COCO18",
    "OPENPOSE_LAYOUTS",
    "from_coco_results",
    "from_openpose",
    "read_openpose",
    "to_coco_results",
    "to_openpose",
    "to_supervision",
    "write_coco_results",
    "write_openpose",
]

# OpenPose's COCO body model, by our COCO keypoint names ("neck" is made from the shoulders)
OPENPOSE_COCO18 = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
)
OPENPOSE_LAYOUTS = ("coco18", "native")
OPENPOSE_VERSION = 1.3


def _person_info(person: Mapping[str, Any], dataset: str | dict | None, k: int, where: str) -> dict:
    name = dataset if dataset is not None else person.get("dataset")
    if name is None:
        name = {17: "coco", 133: "wholebody", 14: "aic", 16: "mpii"}.get(k)
        if name is None:
            raise ValueError(f"{where}: cannot tell the dataset of a person with {k} keypoints; pass dataset=...")
    info = get_dataset_info(name)
    if info["num_keypoints"] != k:
        raise ValueError(f"{where} has {k} keypoints but the dataset {info['name']!r} has {info['num_keypoints']}")
    return info


def _arrays(person: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(person, Mapping):
        raise TypeError(f"{where} must be a person dict, got {type(person).__name__}")
    xy, scores = person_arrays(dict(person), where)
    if not (np.isfinite(xy).all() and np.isfinite(scores).all()):
        raise ValueError(f"{where} has NaN or infinite keypoints or scores")
    return xy, scores


def _our_person(
    points: np.ndarray, info: dict, box: list[float] | None, box_score: float | None, label: str | None
) -> dict[str, Any]:
    """A person dict in our format from ``(K, 3)`` [x, y, score] points; no ``box``: the extent of the points that
    score above 0 (xywh)."""
    if box is None:
        seen = points[points[:, 2] > 0] if (points[:, 2] > 0).any() else points
        (x1, y1), (x2, y2) = seen[:, :2].min(0), seen[:, :2].max(0)
        box = [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]
    return {
        "box": box,
        "box_format": "xywh",
        "box_score": box_score,
        "label": label,
        "dataset": info["name"],
        "keypoints": [
            {"name": name, "x": float(x), "y": float(y), "score": float(s)}
            for name, (x, y, s) in zip(info["keypoint_names"], points)
        ],
    }


def _frames(results: Any) -> list[tuple[Any, Sequence[Mapping[str, Any]]]]:
    """(image_id, people) pairs from a mapping image_id -> people, or a sequence of per-image people lists."""
    if isinstance(results, Mapping):
        return list(results.items())
    if isinstance(results, (list, tuple)):
        if results and isinstance(results[0], Mapping):
            raise TypeError(
                "results must hold one list of people per image (or map image ids to them), got a list of dicts"
            )
        return list(enumerate(results))
    raise TypeError(f"results must be a mapping image_id -> people or a list of people lists, got {type(results)}")


# ----------------------------------------------------------------------------------------------------------------
# COCO keypoint results
# ----------------------------------------------------------------------------------------------------------------
def to_coco_results(
    results: Mapping[Any, Sequence[Mapping]] | Sequence[Sequence[Mapping]],
    category_id: int = 1,
    rescore: bool = True,
    vis_thr: float = 0.2,
) -> list[dict[str, Any]]:
    """Our results -> COCO keypoint results entries (JSON-ready), one per person.

    Args:
        results: ``{image_id: people}``, or a list with one people list per image (its index is the ``image_id``;
            for video, the frame index).
        category_id: the COCO category of every entry (1, person, by default).
        rescore: ``score`` by the official top-down rule, ``box_score * mean(keypoint scores > vis_thr)``
            (:func:`vitpose_hf.evaluation.metrics.rescore_poses`); with False, ``score`` is the ``box_score``.
        vis_thr: the keypoint score threshold of the rescoring.

    Each entry also carries ``bbox`` (xywh) and ``track_id`` when the person has them. A missing ``box_score``
    counts as 1.
    """
    poses = []
    extras = []
    for image_id, people in _frames(results):
        for n, person in enumerate(people):
            where = f"results[{image_id!r}][{n}]"
            xy, scores = _arrays(person, where)
            box_score = person.get("box_score")
            pose = {
                "image_id": image_id,
                "category_id": category_id,
                "keypoints": xy,
                "scores": scores,
                "box_score": 1.0 if box_score is None else float(box_score),
            }
            poses.append(pose)
            box = person_box(dict(person), None)
            extra: dict[str, Any] = {}
            if box is not None:
                extra["bbox"] = [float(v) for v in convert_boxes(box, "xyxy", "xywh")]
            if person.get("track_id") is not None:
                extra["track_id"] = int(person["track_id"])
            extras.append(extra)
    if rescore:
        poses = rescore_poses(poses, vis_thr=vis_thr)
    else:
        poses = [{**p, "score": p["box_score"]} for p in poses]
    return [{**entry, **extra} for entry, extra in zip(_coco_entries(poses, category_id=category_id), extras)]


def write_coco_results(path: str | os.PathLike, results: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """Write :func:`to_coco_results` of ``results`` to a JSON file (its folder is made); returns the entries."""
    entries = to_coco_results(results, **kwargs)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(entries, f)
    return entries


def from_coco_results(
    results: str | os.PathLike | Sequence[Mapping[str, Any]],
    dataset: str | dict = "coco",
    box_format: str = "xywh",
) -> dict[Any, list[dict[str, Any]]]:
    """COCO keypoint results (a JSON path or the loaded list) -> ``{image_id: people}`` in our format.

    ``box_score`` is the entry's ``score``; ``box`` is its ``bbox`` when given, else the extent of the keypoints
    that score above 0; ``track_id`` is kept when present. Keypoint names come from ``dataset``.
    """
    box_format = check_box_format(box_format)
    if isinstance(results, (str, os.PathLike)):
        try:
            with open(results, encoding="utf-8") as f:
                results = json.load(f)
        except FileNotFoundError:
            raise ValueError(f"no COCO results file at {os.fspath(results)!r}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{os.fspath(results)!r} is not valid JSON ({exc})") from None
    if not isinstance(results, (list, tuple)):
        raise TypeError(f"COCO results are a list of entries, got {type(results).__name__}")
    info = get_dataset_info(dataset)
    k = info["num_keypoints"]
    out: dict[Any, list[dict[str, Any]]] = {}
    for n, entry in enumerate(results):
        if not isinstance(entry, Mapping) or "image_id" not in entry or "keypoints" not in entry:
            raise ValueError(f"COCO results entry {n} needs 'image_id' and 'keypoints', got {entry!r}"[:300])
        flat = np.asarray(entry["keypoints"], dtype=np.float64).reshape(-1)
        if flat.size != 3 * k:
            raise ValueError(
                f"COCO results entry {n} has {flat.size} keypoint values; the dataset {info['name']!r} needs {3 * k}"
            )
        points = flat.reshape(k, 3)
        box = [float(v) for v in entry["bbox"]] if "bbox" in entry else None
        label = "person" if int(entry.get("category_id", 1)) == 1 else str(entry.get("category_id"))
        person = _our_person(points, info, box, None if entry.get("score") is None else float(entry["score"]), label)
        person["box"], person["box_format"] = convert_boxes(person["box"], "xywh", box_format), box_format
        if entry.get("track_id") is not None:
            person["track_id"] = int(entry["track_id"])
        out.setdefault(entry["image_id"], []).append(person)
    return out


# ----------------------------------------------------------------------------------------------------------------
# OpenPose JSON
# ----------------------------------------------------------------------------------------------------------------
def _flat(points: np.ndarray, scores: np.ndarray) -> list[float]:
    return [float(v) for v in np.concatenate([points, scores[:, None]], axis=1).reshape(-1)]


def _coco18(xy: np.ndarray, scores: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    index = {name: i for i, name in enumerate(names)}
    missing = [name for name in OPENPOSE_COCO18 if name != "neck" and name not in index]
    if missing:
        raise ValueError(f"the OpenPose coco18 layout needs the COCO body keypoints; missing {missing}")
    left, right = index["left_shoulder"], index["right_shoulder"]
    points, point_scores = [], []
    for name in OPENPOSE_COCO18:
        if name == "neck":
            points.append((xy[left] + xy[right]) / 2)
            point_scores.append(min(scores[left], scores[right]))
        else:
            points.append(xy[index[name]])
            point_scores.append(scores[index[name]])
    return np.asarray(points), np.asarray(point_scores)


def to_openpose(
    people: Sequence[Mapping[str, Any]],
    layout: str = "coco18",
    dataset: str | dict | None = None,
    canvas_size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """One image's people -> an OpenPose JSON document (``{"version": 1.3, "people": [...]}``).

    Each person has ``person_id`` (``[track_id]``, or ``[-1]`` as OpenPose writes when there is no id),
    ``pose_keypoints_2d`` (x, y, confidence per keypoint, in ``layout``) and, for COCO-WholeBody people in the
    ``coco18`` layout, ``face_keypoints_2d``, ``hand_left_keypoints_2d``, ``hand_right_keypoints_2d``.
    ``canvas_size`` ``(width, height)`` adds ``canvas_width`` / ``canvas_height`` (ControlNet's OpenPose editor reads
    them).
    """
    if layout not in OPENPOSE_LAYOUTS:
        raise ValueError(f"layout must be one of {OPENPOSE_LAYOUTS}, got {layout!r}")
    if isinstance(people, Mapping):
        people = [people]
    out_people = []
    for n, person in enumerate(people):
        where = f"people[{n}]"
        xy, scores = _arrays(person, where)
        info = _person_info(person, dataset, len(xy), where)
        entry: dict[str, Any] = {"person_id": [int(person["track_id"]) if person.get("track_id") is not None else -1]}
        if layout == "native":
            entry["pose_keypoints_2d"] = _flat(xy, scores)
        else:
            entry["pose_keypoints_2d"] = _flat(*_coco18(xy, scores, info["keypoint_names"]))
            parts = info.get("parts") or {}
            for part, key in (("face", "face"), ("left_hand", "hand_left"), ("right_hand", "hand_right")):
                if part in parts:
                    start, end = parts[part]
                    entry[f"{key}_keypoints_2d"] = _flat(xy[start:end], scores[start:end])
                else:
                    entry[f"{key}_keypoints_2d"] = []
        for key in ("pose_keypoints_3d", "face_keypoints_3d", "hand_left_keypoints_3d", "hand_right_keypoints_3d"):
            entry[key] = []
        out_people.append(entry)
    document: dict[str, Any] = {"version": OPENPOSE_VERSION, "people": out_people}
    if canvas_size is not None:
        document["canvas_width"], document["canvas_height"] = int(canvas_size[0]), int(canvas_size[1])
    return document


def from_openpose(
    document: Mapping[str, Any], layout: str = "coco18", dataset: str | dict = "coco"
) -> list[dict[str, Any]]:
    """An OpenPose JSON document -> our people (``track_id`` from ``person_id`` unless it is -1).

    ``layout`` and ``dataset`` say how ``pose_keypoints_2d`` is ordered (see :func:`to_openpose`; ``coco18`` reads
    back COCO-17 people, dropping the neck, and COCO-WholeBody people when ``dataset="wholebody"`` and the document
    has the hands and face). ``box`` is the extent of the keypoints with confidence above 0 (OpenPose has no boxes);
    ``box_score`` is None.
    """
    if layout not in OPENPOSE_LAYOUTS:
        raise ValueError(f"layout must be one of {OPENPOSE_LAYOUTS}, got {layout!r}")
    if not isinstance(document, Mapping) or not isinstance(document.get("people"), list):
        raise ValueError("an OpenPose JSON document is an object with a 'people' list")
    info = get_dataset_info(dataset)
    names, k = info["keypoint_names"], info["num_keypoints"]
    out = []
    for n, entry in enumerate(document["people"]):
        pose = np.asarray(entry.get("pose_keypoints_2d", []), dtype=np.float64).reshape(-1)
        want = 3 * (k if layout == "native" else len(OPENPOSE_COCO18))
        if pose.size != want:
            raise ValueError(f"people[{n}]: pose_keypoints_2d has {pose.size} values, the {layout} layout needs {want}")
        points = pose.reshape(-1, 3)
        if layout == "native":
            full = points
        else:
            full = np.zeros((k, 3))
            body = {name: points[i] for i, name in enumerate(OPENPOSE_COCO18)}
            for i, name in enumerate(names):
                if name in body and name != "neck":
                    full[i] = body[name]
            parts = info.get("parts") or {}
            for part, key in (("face", "face"), ("left_hand", "hand_left"), ("right_hand", "hand_right")):
                if part in parts:
                    start, end = parts[part]
                    values = np.asarray(entry.get(f"{key}_keypoints_2d", []), dtype=np.float64).reshape(-1, 3)
                    if len(values) != end - start:
                        raise ValueError(f"people[{n}]: {key}_keypoints_2d needs {end - start} points")
                    full[start:end] = values
            covered = {name for name in names if name in body}
            for part in ("face", "left_hand", "right_hand"):
                if part in parts:
                    covered.update(names[parts[part][0] : parts[part][1]])
            if len(covered) < k:
                raise ValueError(
                    f"the coco18 layout does not hold the {k - len(covered)} other keypoints of {info['name']!r} "
                    "(e.g. feet); use layout='native'"
                )
        person = _our_person(full, info, None, None, None)
        ids = entry.get("person_id", [-1])
        track_id = ids[0] if isinstance(ids, list) and ids else ids
        if isinstance(track_id, (int, float)) and track_id != -1:
            person["track_id"] = int(track_id)
        out.append(person)
    return out


def write_openpose(
    folder: str | os.PathLike,
    results: Mapping[Any, Sequence[Mapping]] | Sequence[Sequence[Mapping]] | Iterable,
    stem: str = "frame",
    layout: str = "coco18",
    canvas_size: tuple[int, int] | None = None,
) -> list[Path]:
    """Write one OpenPose JSON per frame, ``folder/<stem>_<frame:012d>_keypoints.json`` (OpenPose's naming).

    ``results``: ``{frame_index: people}`` or a list of people lists (index = frame). Returns the written paths.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for frame, people in _frames(results):
        path = folder / f"{stem}_{int(frame):012d}_keypoints.json"
        with open(path, "w", encoding="utf-8") as f:
            json.dump(to_openpose(people, layout=layout, canvas_size=canvas_size), f)
        paths.append(path)
    return paths


def read_openpose(
    folder: str | os.PathLike, layout: str = "coco18", dataset: str | dict = "coco"
) -> dict[int, list[dict[str, Any]]]:
    """Read the ``*_keypoints.json`` files of a folder (as :func:`write_openpose` or OpenPose write them) ->
    ``{frame_index: people}``, the frame index taken from the number before ``_keypoints``."""
    out: dict[int, list[dict[str, Any]]] = {}
    files = sorted(Path(folder).glob("*_keypoints.json"))
    if not files:
        raise ValueError(f"no OpenPose *_keypoints.json files in {os.fspath(folder)!r}")
    for path in files:
        number = path.name[: -len("_keypoints.json")].rsplit("_", 1)[-1]
        if not number.isdigit():
            raise ValueError(f"{path.name}: expected <name>_<frame number>_keypoints.json")
        with open(path, encoding="utf-8") as f:
            out[int(number)] = from_openpose(json.load(f), layout=layout, dataset=dataset)
    return out


# ----------------------------------------------------------------------------------------------------------------
# supervision
# ----------------------------------------------------------------------------------------------------------------
def to_supervision(people: Sequence[Mapping[str, Any]]) -> Any:
    """One image's people -> a ``supervision.KeyPoints`` (``xy`` ``(N, K, 2)``, per-keypoint confidence ``(N, K)``,
    ``class_id`` 0, ``detection_confidence`` from ``box_score`` when every person has one, ``data["track_id"]``
    when every person has one). Needs ``pip install 'vitpose-hf[supervision]'``."""
    try:
        import supervision as sv
    except ImportError:
        raise ImportError(
            "to_supervision needs the supervision package: pip install 'vitpose-hf[supervision]'"
        ) from None
    if isinstance(people, Mapping):
        people = [people]
    arrays = [_arrays(person, f"people[{n}]") for n, person in enumerate(people)]
    if not arrays:
        return sv.KeyPoints.empty()
    k = arrays[0][0].shape[0]
    if any(xy.shape[0] != k for xy, _ in arrays):
        raise ValueError("supervision.KeyPoints needs the same number of keypoints for every person")
    xy = np.stack([a[0] for a in arrays]).astype(np.float32)
    confidence = np.stack([a[1] for a in arrays]).astype(np.float32)
    box_scores = [p.get("box_score") for p in people]
    track_ids = [p.get("track_id") for p in people]
    data = {"track_id": np.asarray(track_ids, dtype=int)} if all(t is not None for t in track_ids) else {}
    kwargs: dict[str, Any] = {
        "xy": xy,
        "class_id": np.zeros(len(people), dtype=int),
        "data": data,
    }
    if all(s is not None for s in box_scores):
        kwargs["detection_confidence"] = np.asarray(box_scores, dtype=np.float32)
    return sv.KeyPoints(keypoint_confidence=confidence, **kwargs)
