"""Keypoint evaluation: COCO OKS AP/AR, COCO-WholeBody part AP, CrowdPose AP, MPII PCKh, bbox-normalised PCK,
and the official top-down test protocol (rescoring, OKS-NMS, COCO results export).

OKS AP/AR always goes through a COCO evaluation library: pycocotools ``COCOeval`` for COCO-style datasets
(COCO, AIC, OCHuman, AP-10K, APT-36K, COCO-WholeBody, custom ones) and xtcocotools for CrowdPose (its
easy/medium/hard split only exists there). The official ViTPose numbers were produced with xtcocotools; the
inputs handed to pycocotools are prepared so that both give the same numbers:

- a ground-truth instance is ignored when it has no labelled keypoint (``v > 0``), counted from the keypoints
  rather than read from ``num_keypoints``;
- a prediction whose keypoint scores are all ``<= 0`` is dropped;
- a missing ``iscrowd`` counts as 0;
- with ``use_area=False`` (the official AIC and CrowdPose setting), or when a ground-truth ``area`` is missing,
  the OKS scale and the medium/large split use ``0.53 * bbox_w * bbox_h``;
- COCO-WholeBody parts are evaluated with the part's keypoints and sigmas, the part score when given
  (``foot_score``, ``face_score``, ``lefthand_score``, ``righthand_score``, ``wholebody_score``, else
  ``score``), the whole-body GT area, and a prediction area from its 17 body keypoints.

Values are fractions (AP 0.758, not 75.8); COCOeval reports -1 where a value is undefined (for example APm
when the ground truth has no medium-sized instance).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import numbers
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vitpose_hf.boxes import convert_boxes
from vitpose_hf.keypoint_metadata import get_dataset_info

__all__ = [
    "METRIC_PATH",
    "COCO_METRIC_NAMES",
    "CROWDPOSE_METRIC_NAMES",
    "coco_keypoint_metrics",
    "pckh",
    "pck",
    "rescore_poses",
    "oks_nms",
    "to_coco_results",
    "top_down_results",
    "evaluate_top_down",
    "per_image_to_coco",
    "format_metrics",
]

# Folder of the `evaluate` metric module: `evaluate.load(METRIC_PATH)`.
METRIC_PATH: str = str(Path(__file__).resolve().parents[1] / "metrics" / "coco_keypoints")

COCO_METRIC_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
CROWDPOSE_METRIC_NAMES: tuple[str, ...] = (
    "AP",
    "AP50",
    "AP75",
    "AR",
    "AR50",
    "AR75",
    "AP_easy",
    "AP_medium",
    "AP_hard",
)

# Official ViTPose/mmpose settings: OKS scale from the GT 'area' (True) or from 0.53 x bbox area (False).
_USE_AREA_DEFAULT = {"aic": False, "crowdpose": False}
_BBOX_AREA_FACTOR = 0.53
# COCO-WholeBody parts -> (annotation key, per-part score key), as in the COCO-WholeBody files and xtcocotools.
_WHOLEBODY_KEYS = {
    "body": ("keypoints", "score"),
    "foot": ("foot_kpts", "foot_score"),
    "face": ("face_kpts", "face_score"),
    "left_hand": ("lefthand_kpts", "lefthand_score"),
    "right_hand": ("righthand_kpts", "righthand_score"),
}
_WHOLE_SCORE_KEY = "wholebody_score"
_CROWDPOSE_INSTALL = "pip install vitpose-hf[crowdpose]"
# MPII summary groups (official table): name -> joints averaged.
_MPII_GROUPS = {
    "Head": ("head_top",),
    "Shoulder": ("left_shoulder", "right_shoulder"),
    "Elbow": ("left_elbow", "right_elbow"),
    "Wrist": ("left_wrist", "right_wrist"),
    "Hip": ("left_hip", "right_hip"),
    "Knee": ("left_knee", "right_knee"),
    "Ankle": ("left_ankle", "right_ankle"),
}
# The official MPII mean leaves out pelvis and thorax.
_MPII_EXCLUDED = ("pelvis", "thorax")


# ---------------------------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet(verbose: bool):
    # pycocotools/xtcocotools print progress and tables on stdout.
    if verbose:
        yield
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def _to_numpy(value: Any, what: str) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensors (numpy has no bfloat16: those go through float32)
        value = value.detach().cpu()
        try:
            value = value.numpy()
        except TypeError:
            value = value.float().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be numeric array-like, got {type(value).__name__}: {exc}") from None


def _resolve_dataset(dataset: str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(dataset, Mapping) and not isinstance(dataset, dict):
        dataset = dict(dataset)
    return get_dataset_info(dataset)


def _resolve_sigmas(sigmas: Any, info: dict[str, Any] | None, num_keypoints: int) -> np.ndarray:
    """OKS sigmas as a float array of length K: explicit values, a dataset name/dict, or the dataset's own."""
    if isinstance(sigmas, (str, Mapping)):
        sig_info = _resolve_dataset(sigmas)
        sigmas = sig_info["sigmas"]
        if sigmas is None:
            raise ValueError(f"dataset {sig_info['name']!r} defines no OKS sigmas")
    elif sigmas is None:
        if info is None:
            info = get_dataset_info("coco")
        sigmas = info["sigmas"]
        if sigmas is None:
            raise ValueError(
                f"dataset {info['name']!r} defines no OKS sigmas, so OKS AP / OKS-NMS are undefined for it; "
                "pass sigmas=... (or use pckh()/pck() for this dataset)"
            )
    arr = _to_numpy(sigmas, "sigmas").reshape(-1)
    if arr.size != num_keypoints:
        raise ValueError(f"got {arr.size} OKS sigmas for {num_keypoints} keypoints")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"OKS sigmas must be finite and positive, got {arr.tolist()}")
    return arr


def _load_json_like(obj: Any, what: str) -> Any:
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if not path.is_file():
            raise ValueError(f"{what} file not found: {str(path)!r}")
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return obj


def _as_id(value: Any) -> Any:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _bbox_area(bbox: Any, where: str) -> float:
    box = _to_numpy(bbox, f"{where} bbox").reshape(-1)
    if box.size != 4 or not np.all(np.isfinite(box)):
        raise ValueError(f"{where} has an invalid bbox {list(np.asarray(bbox).reshape(-1))!r} (expected x, y, w, h)")
    return float(box[3] * box[2] * _BBOX_AREA_FACTOR)


def _split_format_keypoints(entry: Mapping[str, Any], info: dict[str, Any], where: str) -> np.ndarray | None:
    """(K, 3) keypoints from the COCO-WholeBody split format (keypoints + foot_kpts + ...), or None."""
    parts = info.get("parts")
    if not parts or not any(_WHOLEBODY_KEYS.get(p, (f"{p}_kpts",))[0] in entry for p in parts if p != "body"):
        return None
    out = np.zeros((info["num_keypoints"], 3), dtype=np.float64)
    covered = np.zeros(info["num_keypoints"], dtype=bool)
    for part, (start, end) in parts.items():
        key = _WHOLEBODY_KEYS.get(part, (f"{part}_kpts",))[0]
        if key not in entry:
            raise ValueError(f"{where} is in the split COCO-WholeBody format but has no {key!r} ({part} keypoints)")
        arr = _to_numpy(entry[key], f"{where} {key!r}").reshape(-1)
        if arr.size != 3 * (end - start):
            raise ValueError(
                f"{where}: {key!r} has {arr.size} values, expected {3 * (end - start)} "
                f"({end - start} {part} keypoints x 3)"
            )
        out[start:end] = arr.reshape(-1, 3)
        covered[start:end] = True
    if not covered.all():
        raise ValueError(f"{where}: the dataset parts do not cover all {info['num_keypoints']} keypoints")
    return out


def _entry_keypoints(entry: Mapping[str, Any], info: dict[str, Any], where: str) -> np.ndarray:
    """(K, 3) keypoints of a GT annotation or prediction: flat 3K list, (K, 3) array, or WholeBody split format."""
    k = info["num_keypoints"]
    split = _split_format_keypoints(entry, info, where)
    if split is not None:
        return split
    if "keypoints" not in entry:
        raise ValueError(f"{where} has no 'keypoints'")
    arr = _to_numpy(entry["keypoints"], f"{where} keypoints")
    if arr.ndim == 2 and arr.shape[1] == 3:
        arr = arr.reshape(-1)
    if arr.ndim != 1 or arr.size % 3 != 0:
        raise ValueError(
            f"{where}: 'keypoints' must be a flat [x, y, v] * K list or a (K, 3) array, got shape {arr.shape}"
        )
    if arr.size != 3 * k:
        raise ValueError(
            f"{where} has {arr.size // 3} keypoints but dataset {info['name']!r} has K={k} (expected {3 * k} values)"
        )
    return arr.reshape(k, 3)


# ---------------------------------------------------------------------------------------------------------------
# input validation / normalisation
# ---------------------------------------------------------------------------------------------------------------
def _normalise_ground_truth(ground_truth: Any, info: dict[str, Any]) -> tuple[dict[str, Any], list[np.ndarray]]:
    """A fresh COCO ground-truth dict (the caller's object is never modified) and each annotation's (K, 3)."""
    gt = _load_json_like(ground_truth, "ground-truth")
    if not isinstance(gt, Mapping):
        raise TypeError(f"ground_truth must be a COCO json path or dict, got {type(gt).__name__}")
    for key in ("images", "annotations"):
        if key not in gt or not isinstance(gt[key], (list, tuple)):
            raise ValueError(f"ground truth is not COCO format: missing list {key!r} (has {sorted(gt)})")
    images = [dict(img) for img in gt["images"]]
    for n, img in enumerate(images):
        if "id" not in img:
            raise ValueError(f"ground-truth images[{n}] has no 'id'")
        img["id"] = _as_id(img["id"])
    image_ids = {img["id"] for img in images}
    if len(image_ids) != len(images):
        raise ValueError("ground-truth image ids are not unique")

    annotations, keypoints = [], []
    ids = [ann.get("id") for ann in gt["annotations"]]
    # COCOeval treats a matched GT id of 0 as "no match", so ids must be positive and unique.
    valid_ids = all(isinstance(i, numbers.Integral) and i > 0 for i in ids) and len(set(ids)) == len(ids)
    for n, ann in enumerate(gt["annotations"]):
        where = f"ground-truth annotation {ann.get('id', n)!r}"
        new = dict(ann)
        new["id"] = int(ann["id"]) if valid_ids else n + 1
        if "image_id" not in ann:
            raise ValueError(f"{where} has no 'image_id'")
        new["image_id"] = _as_id(ann["image_id"])
        if new["image_id"] not in image_ids:
            raise ValueError(f"{where} refers to image_id {new['image_id']!r}, which is not in 'images'")
        if "bbox" not in ann:
            raise ValueError(f"{where} has no 'bbox' (COCO keypoint evaluation needs it)")
        kps = _entry_keypoints(ann, info, where)
        labelled = kps[:, 2] > 0
        if not np.all(np.isfinite(kps[labelled])):
            raise ValueError(f"{where} has non-finite labelled keypoints")
        new.setdefault("category_id", 1)
        new["category_id"] = _as_id(new["category_id"])
        if new.get("iscrowd") is None:
            new["iscrowd"] = 0
        annotations.append(new)
        keypoints.append(kps)

    categories = [dict(c) for c in gt.get("categories") or []]
    if not categories:
        categories = [{"id": c, "name": str(c)} for c in sorted({a["category_id"] for a in annotations})] or [
            {"id": 1, "name": "person"}
        ]
    out = {k: v for k, v in gt.items() if k not in ("images", "annotations", "categories")}
    out.update(images=images, annotations=annotations, categories=categories)
    return out, keypoints


def _normalise_predictions(
    predictions: Any, info: dict[str, Any], gt: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """Clean COCO results entries (image_id, category_id, score, part scores, bbox if given) and their (K, 3)."""
    preds = _load_json_like(predictions, "predictions")
    if isinstance(preds, Mapping) or not isinstance(preds, (list, tuple)):
        raise TypeError(
            "predictions must be a list of COCO results entries (image_id, category_id, keypoints, score) "
            f"or a path to such a json, got {type(preds).__name__}"
        )
    image_ids = {img["id"] for img in gt["images"]}
    cat_ids = [c["id"] for c in gt["categories"]]
    unknown: list[Any] = []
    entries, keypoints = [], []
    score_keys = [_WHOLE_SCORE_KEY] + [v[1] for v in _WHOLEBODY_KEYS.values() if v[1] != "score"]
    for n, pred in enumerate(preds):
        if not isinstance(pred, Mapping):
            raise TypeError(f"predictions[{n}] must be a dict, got {type(pred).__name__}")
        where = f"predictions[{n}]"
        if "image_id" not in pred:
            raise ValueError(f"{where} has no 'image_id'")
        image_id = _as_id(pred["image_id"])
        if image_id not in image_ids:
            unknown.append(image_id)
            continue
        category_id = pred.get("category_id")
        if category_id is None:
            if len(cat_ids) != 1:
                raise ValueError(f"{where} has no 'category_id' and the ground truth has {len(cat_ids)} categories")
            category_id = cat_ids[0]
        category_id = _as_id(category_id)
        if category_id not in cat_ids:
            raise ValueError(
                f"{where} has category_id {category_id!r}, not one of the ground-truth categories {cat_ids}"
            )
        kps = _entry_keypoints(pred, info, f"{where} (image_id={image_id})")
        if not np.all(np.isfinite(kps)):
            bad = sorted({int(i) for i in np.nonzero(~np.isfinite(kps))[0]})
            raise ValueError(f"{where} (image_id={image_id}) has NaN/inf keypoint values at keypoints {bad}")
        if "score" not in pred:
            raise ValueError(f"{where} (image_id={image_id}) has no 'score'")
        entry: dict[str, Any] = {"image_id": image_id, "category_id": category_id}
        for key in ["score"] + score_keys:
            if key in pred:
                value = float(_to_numpy(pred[key], f"{where} {key!r}"))
                if not math.isfinite(value):
                    raise ValueError(f"{where} (image_id={image_id}) has a non-finite {key!r}: {value}")
                entry[key] = value
        if "bbox" in pred:
            entry["bbox"] = [float(v) for v in _to_numpy(pred["bbox"], f"{where} bbox").reshape(-1)]
        entries.append(entry)
        keypoints.append(kps)
    if unknown:
        shown = sorted(set(unknown), key=str)[:10]
        raise ValueError(
            f"{len(unknown)} predictions refer to image ids that are not in the ground truth: {shown}"
            + (" ..." if len(set(unknown)) > 10 else "")
        )
    return entries, keypoints


# ---------------------------------------------------------------------------------------------------------------
# COCOeval runs
# ---------------------------------------------------------------------------------------------------------------
def _gt_doc(gt: dict[str, Any], keypoints: list[np.ndarray], part: slice, use_area: bool) -> dict[str, Any]:
    anns = []
    for ann, kps in zip(gt["annotations"], keypoints):
        sub = kps[part]
        new = {k: v for k, v in ann.items() if not k.endswith("_kpts")}
        new["keypoints"] = sub.reshape(-1).tolist()
        new["num_keypoints"] = int(np.count_nonzero(sub[:, 2] > 0))
        if not use_area or "area" not in ann:
            new["area"] = _bbox_area(ann["bbox"], f"ground-truth annotation {ann['id']}")
        anns.append(new)
    return {**gt, "annotations": anns}


def _run_pycocotools(
    gt_doc: dict[str, Any],
    dts: list[dict[str, Any]],
    sigmas: np.ndarray,
    dt_areas: list[float] | None,
    verbose: bool,
) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with _quiet(verbose):
        coco_gt = COCO()
        coco_gt.dataset = gt_doc
        coco_gt.createIndex()
        if dts:
            # loadRes takes results with a 'bbox' as box results (area = box area); keep that as the tools do.
            has_bbox = "bbox" in dts[0]
            coco_dt = coco_gt.loadRes(dts)
            if dt_areas is not None and not has_bbox:
                # loadRes numbers results 1..N in input order.
                for n, area in enumerate(dt_areas):
                    coco_dt.anns[n + 1]["area"] = area
        else:  # loadRes cannot take an empty list
            coco_dt = COCO()
            coco_dt.dataset = {
                "images": list(gt_doc["images"]),
                "categories": copy.deepcopy(gt_doc["categories"]),
                "annotations": [],
            }
            coco_dt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_dt, "keypoints")
        coco_eval.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return np.asarray(coco_eval.stats, dtype=np.float64)


def _part_results(
    entries: list[dict[str, Any]],
    keypoints: list[np.ndarray],
    part: slice,
    score_key: str,
    area_part: slice | None,
) -> tuple[list[dict[str, Any]], list[float] | None]:
    dts, areas = [], []
    for entry, kps in zip(entries, keypoints):
        sub = kps[part]
        if not np.any(sub[:, 2] > 0):
            continue  # the official tool drops predictions without a positive keypoint score
        dt = {k: entry[k] for k in ("image_id", "category_id")}
        dt["keypoints"] = sub.reshape(-1).tolist()
        dt["score"] = entry.get(score_key, entry["score"])
        if "bbox" in entry:
            dt["bbox"] = list(entry["bbox"])
        dts.append(dt)
        if area_part is not None:
            ref = kps[area_part]
            areas.append(float((ref[:, 0].max() - ref[:, 0].min()) * (ref[:, 1].max() - ref[:, 1].min())))
    return dts, (areas if area_part is not None else None)


def _stats_dict(stats: np.ndarray, names: Sequence[str], prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{name}": float(value) for name, value in zip(names, stats)}


def _crowdpose_metrics(
    gt: dict[str, Any],
    keypoints: list[np.ndarray],
    entries: list[dict[str, Any]],
    pred_keypoints: list[np.ndarray],
    sigmas: np.ndarray,
    use_area: bool,
    verbose: bool,
) -> dict[str, float]:
    try:
        from xtcocotools.coco import COCO as XCOCO
        from xtcocotools.cocoeval import COCOeval as XCOCOeval
    except ImportError:
        raise ImportError(
            f"CrowdPose evaluation uses xtcocotools (the CrowdPose tool), which is not installed: {_CROWDPOSE_INSTALL}"
        ) from None
    anns = []
    for ann, kps in zip(gt["annotations"], keypoints):
        new = dict(ann)
        new["keypoints"] = kps.reshape(-1).tolist()
        # CrowdPose's own 'num_keypoints' counts only v=2 and decides "ignore"; fill it only when absent.
        new.setdefault("num_keypoints", int(np.count_nonzero(kps[:, 2] > 0)))
        anns.append(new)
    doc = {**gt, "annotations": anns}
    dts = []
    for entry, kps in zip(entries, pred_keypoints):
        dt = {k: v for k, v in entry.items() if k in ("image_id", "category_id", "score", "bbox")}
        dt["keypoints"] = kps.reshape(-1).tolist()
        dts.append(dt)
    has_crowd_index = bool(doc["images"]) and all("crowdIndex" in img for img in doc["images"])
    with tempfile.TemporaryDirectory() as tmp, _quiet(verbose):
        # The easy/medium/hard split re-reads the ground truth from its file path.
        gt_path = os.path.join(tmp, "ground_truth.json")
        with open(gt_path, "w", encoding="utf-8") as f:
            json.dump(doc, f)
        coco_gt = XCOCO(gt_path)
        if dts:
            coco_dt = coco_gt.loadRes(dts)
        else:
            coco_dt = XCOCO()
            coco_dt.dataset = {
                "images": list(doc["images"]),
                "categories": copy.deepcopy(doc["categories"]),
                "annotations": [],
            }
            coco_dt.createIndex()
        coco_eval = XCOCOeval(
            coco_gt, coco_dt, "keypoints_crowd", np.asarray(sigmas, dtype=np.float64), use_area=use_area
        )
        if not has_crowd_index:
            # Without per-image crowdIndex the easy/medium/hard split is undefined: report the other values.
            coco_eval.get_type_result = lambda *args, **kwargs: [float("nan")] * 3
        coco_eval.params.useSegm = None
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    names = CROWDPOSE_METRIC_NAMES if has_crowd_index else CROWDPOSE_METRIC_NAMES[:6]
    return _stats_dict(np.asarray(coco_eval.stats, dtype=np.float64), names)


def coco_keypoint_metrics(
    ground_truth: str | os.PathLike | Mapping[str, Any],
    predictions: str | os.PathLike | Sequence[Mapping[str, Any]],
    dataset: str | Mapping[str, Any] = "coco",
    *,
    sigmas: Sequence[float] | np.ndarray | None = None,
    use_area: bool | None = None,
    verbose: bool = False,
) -> dict[str, float]:
    """COCO OKS keypoint AP/AR through pycocotools ``COCOeval`` (xtcocotools for CrowdPose).

    Args:
        ground_truth: COCO keypoint json path or dict (``images``, ``annotations`` with ``bbox``, flat
            ``keypoints`` [x, y, v] * K, optional ``area``/``iscrowd``; COCO-WholeBody may use the split
            ``foot_kpts``/``face_kpts``/``lefthand_kpts``/``righthand_kpts`` format). Not modified.
        predictions: COCO results list or json path: ``image_id``, ``category_id`` (optional with one category),
            ``keypoints`` (flat [x, y, score] * K or (K, 3); split format for WholeBody), ``score``.
        dataset: built-in dataset name (coco, aic, ap10k, apt36k, ochuman, crowdpose, wholebody) or info dict;
            gives K and the OKS sigmas.
        sigmas: override the dataset's per-keypoint OKS sigmas (length K).
        use_area: OKS scale from the GT ``area`` (True) or from ``0.53 * bbox area`` (False). Default: the
            official setting (False for aic and crowdpose, True otherwise).
        verbose: let the COCO tools print their tables.

    Returns:
        ``{"AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"}`` as floats in [0, 1] (-1 where
        undefined). CrowdPose: ``AP, AP50, AP75, AR, AR50, AR75`` plus ``AP_easy, AP_medium, AP_hard`` when the
        images carry ``crowdIndex``. COCO-WholeBody: whole-body values under the plain keys and each part's under
        ``"body/AP"``, ``"foot/AP"``, ``"face/AP"``, ``"left_hand/AP"``, ``"right_hand/AP"`` etc.

    Raises:
        ValueError: predictions for image ids not in the ground truth, a wrong number of keypoints, NaN/inf
            values, missing fields. ImportError: CrowdPose without xtcocotools.
    """
    info = _resolve_dataset(dataset)
    name = info["name"]
    k = info["num_keypoints"]
    sig = _resolve_sigmas(sigmas, info, k)
    if use_area is None:
        use_area = _USE_AREA_DEFAULT.get(name, True)
    gt, gt_keypoints = _normalise_ground_truth(ground_truth, info)
    entries, pred_keypoints = _normalise_predictions(predictions, info, gt)

    if name == "crowdpose":
        return _crowdpose_metrics(gt, gt_keypoints, entries, pred_keypoints, sig, use_area, verbose)

    whole = slice(0, k)
    parts = info.get("parts") or {}
    if not parts:
        gt_doc = _gt_doc(gt, gt_keypoints, whole, use_area)
        dts, _ = _part_results(entries, pred_keypoints, whole, "score", None)
        return _stats_dict(_run_pycocotools(gt_doc, dts, sig, None, verbose), COCO_METRIC_NAMES)

    # Part-wise evaluation (COCO-WholeBody): every part with its own sigmas, then the whole body.
    body = parts.get("body")
    area_part = slice(*body) if body is not None else None
    metrics: dict[str, float] = {}
    for part, (start, end) in parts.items():
        part_slice = slice(start, end)
        score_key = _WHOLEBODY_KEYS.get(part, (None, f"{part}_score"))[1]
        gt_doc = _gt_doc(gt, gt_keypoints, part_slice, use_area)
        dts, areas = _part_results(entries, pred_keypoints, part_slice, score_key, area_part)
        stats = _run_pycocotools(gt_doc, dts, sig[part_slice], areas, verbose)
        metrics.update(_stats_dict(stats, COCO_METRIC_NAMES, prefix=f"{part}/"))
    gt_doc = _gt_doc(gt, gt_keypoints, whole, use_area)
    dts, areas = _part_results(entries, pred_keypoints, whole, _WHOLE_SCORE_KEY, area_part)
    whole_metrics = _stats_dict(_run_pycocotools(gt_doc, dts, sig, areas, verbose), COCO_METRIC_NAMES)
    return {**whole_metrics, **metrics}


# ---------------------------------------------------------------------------------------------------------------
# PCKh / PCK
# ---------------------------------------------------------------------------------------------------------------
def _pck_inputs(predictions: Any, ground_truth: Any, visible: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred = _to_numpy(predictions, "predictions")
    gt = _to_numpy(ground_truth, "ground_truth")
    if pred.ndim != 3 or pred.shape[-1] not in (2, 3):
        raise ValueError(f"predictions must have shape (N, K, 2) or (N, K, 3), got {pred.shape}")
    if gt.ndim != 3 or gt.shape[-1] not in (2, 3):
        raise ValueError(f"ground_truth must have shape (N, K, 2) or (N, K, 3), got {gt.shape}")
    if pred.shape[:2] != gt.shape[:2]:
        raise ValueError(f"predictions {pred.shape[:2]} and ground_truth {gt.shape[:2]} differ in (N, K)")
    if visible is None:
        if gt.shape[-1] != 3:
            raise ValueError("pass visible=(N, K) or give ground_truth a third (visibility) column")
        vis = gt[..., 2] > 0
    else:
        vis = _to_numpy(visible, "visible")
        if vis.shape != gt.shape[:2]:
            raise ValueError(f"visible must have shape {gt.shape[:2]}, got {vis.shape}")
        vis = vis > 0
    pred, gt = pred[..., :2], gt[..., :2]
    if not np.all(np.isfinite(gt[vis])):
        raise ValueError("ground_truth has NaN/inf coordinates at visible joints")
    bad = np.argwhere(vis & ~np.all(np.isfinite(pred), axis=-1))
    if len(bad):
        raise ValueError(f"predictions have NaN/inf at (person, joint) {bad[:10].tolist()}")
    return pred, gt, vis


def _joint_names(dataset: str | Mapping[str, Any] | None, k: int) -> tuple[list[str], str | None]:
    if dataset is None:
        return [str(i) for i in range(k)], None
    info = _resolve_dataset(dataset)
    if info["num_keypoints"] != k:
        raise ValueError(f"dataset {info['name']!r} has K={info['num_keypoints']} keypoints but the inputs have {k}")
    return list(info["keypoint_names"]), info["name"]


def pckh(
    predictions: Any,
    ground_truth: Any,
    visible: Any = None,
    head_sizes: Any = None,
    *,
    head_boxes: Any = None,
    threshold: float = 0.5,
    dataset: str | Mapping[str, Any] | None = "mpii",
    exclude_from_mean: Sequence[str] | None = None,
    missing_head_size: str = "error",
) -> dict[str, Any]:
    """PCKh@threshold (MPII): a joint is correct when ``||pred - gt|| <= threshold * head_size``.

    Args:
        predictions: (N, K, 2) or (N, K, 3) predicted points (x, y); a third column is ignored.
        ground_truth: (N, K, 2) or (N, K, 3) points; a third column is the visibility when ``visible`` is None.
        visible: (N, K) which ground-truth joints count.
        head_sizes: (N,) normaliser per person (MPII: 0.6 x the head-box diagonal).
        head_boxes: (N, 4) head boxes ``x1, y1, x2, y2`` (MPII ``headboxes_src``), used when ``head_sizes`` is None.
        threshold: 0.5 for PCKh@0.5.
        dataset: gives the joint names (``None``: "0".."K-1"); ``"mpii"`` adds the official
            Head/Shoulder/Elbow/Wrist/Hip/Knee/Ankle columns.
        exclude_from_mean: joint names left out of the mean (default for MPII: pelvis and thorax, as in the
            official table; otherwise none).
        missing_head_size: ``"error"`` raises on NaN / non-positive head sizes, ``"skip"`` leaves those people out.

    Returns:
        ``{"PCKh": mean, "per_joint": {name: value}, "counts": {name: visible joints}, "num_people", "num_skipped"}``
        (+ MPII groups); values are fractions, NaN for a joint never visible. The mean weights joints by their
        visible counts (correct / visible over the included joints), as the official MPII evaluation does.
    """
    pred, gt, vis = _pck_inputs(predictions, ground_truth, visible)
    n, k = vis.shape
    names, ds_name = _joint_names(dataset, k)
    if missing_head_size not in ("error", "skip"):
        raise ValueError(f"missing_head_size must be 'error' or 'skip', got {missing_head_size!r}")
    if head_sizes is None and head_boxes is None:
        raise ValueError(
            "PCKh needs each person's head size: pass head_sizes=(N,) or head_boxes=(N, 4) x1, y1, x2, y2 "
            "(MPII keeps them in mpii_gt_val.mat 'headboxes_src'); without them use pck() with person boxes"
        )
    if head_sizes is None:
        boxes = _to_numpy(head_boxes, "head_boxes")
        if boxes.shape != (n, 4):
            raise ValueError(f"head_boxes must have shape ({n}, 4), got {boxes.shape}")
        sizes = 0.6 * np.linalg.norm(boxes[:, 2:] - boxes[:, :2], axis=1)
    else:
        sizes = _to_numpy(head_sizes, "head_sizes").reshape(-1)
        if sizes.shape != (n,):
            raise ValueError(f"head_sizes must have shape ({n},), got {sizes.shape}")
    bad = ~np.isfinite(sizes) | (sizes <= 0)
    if bad.any() and missing_head_size == "error":
        raise ValueError(
            f"missing or non-positive head size for people {np.nonzero(bad)[0][:10].tolist()}: "
            "PCKh is undefined for them (pass missing_head_size='skip' to leave them out)"
        )
    vis = vis & ~bad[:, None]
    safe = np.where(bad, 1.0, sizes)
    dist = np.linalg.norm(pred - gt, axis=-1) / safe[:, None]
    correct = (dist <= threshold) & vis
    counts = vis.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_joint = correct.sum(axis=0) / counts
    if exclude_from_mean is None:
        exclude_from_mean = _MPII_EXCLUDED if ds_name == "mpii" else ()
    unknown = [j for j in exclude_from_mean if j not in names]
    if unknown:
        raise ValueError(f"exclude_from_mean names unknown joints {unknown}; joints are {names}")
    keep = np.array([nm not in exclude_from_mean for nm in names])
    total = counts[keep].sum()
    result: dict[str, Any] = {
        "PCKh": float(correct[:, keep].sum() / total) if total else float("nan"),
        "per_joint": {nm: float(v) for nm, v in zip(names, per_joint)},
        "counts": {nm: int(c) for nm, c in zip(names, counts)},
        "num_people": int(n),
        "num_skipped": int(bad.sum()),
    }
    if ds_name == "mpii":
        for group, joints in _MPII_GROUPS.items():
            result[group] = float(np.mean([result["per_joint"][j] for j in joints]))
    return result


def pck(
    predictions: Any,
    ground_truth: Any,
    visible: Any = None,
    boxes: Any = None,
    *,
    threshold: float = 0.05,
    box_format: str = "xywh",
    norm_sizes: Any = None,
    dataset: str | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Bbox-normalised PCK@threshold (animal-pose / AP-10K style): correct when
    ``||pred - gt|| / max(box_w, box_h) < threshold``.

    Args:
        predictions: (N, K, 2) or (N, K, 3); ground_truth: (N, K, 2) or (N, K, 3) (third column = visibility
            when ``visible`` is None); visible: (N, K).
        boxes: (N, 4) person boxes in ``box_format`` ("xywh" or "xyxy"); or give ``norm_sizes`` (N,) directly.
        threshold: 0.05 for PCK@0.05.
        dataset: optional, for joint names.

    Returns:
        ``{"PCK": mean of the per-joint values over joints seen at least once, "per_joint", "counts", "num_people"}``.
    """
    pred, gt, vis = _pck_inputs(predictions, ground_truth, visible)
    n, k = vis.shape
    names, _ = _joint_names(dataset, k)
    if norm_sizes is None:
        if boxes is None:
            raise ValueError("pck() needs boxes=(N, 4) or norm_sizes=(N,) to normalise the distances")
        b = _to_numpy(boxes, "boxes")
        if b.shape != (n, 4):
            raise ValueError(f"boxes must have shape ({n}, 4), got {b.shape}")
        sizes = convert_boxes(b, box_format, "xywh")[:, 2:].max(axis=1)
    else:
        sizes = _to_numpy(norm_sizes, "norm_sizes").reshape(-1)
        if sizes.shape != (n,):
            raise ValueError(f"norm_sizes must have shape ({n},), got {sizes.shape}")
    bad = ~np.isfinite(sizes) | (sizes <= 0)
    if bad.any():
        raise ValueError(f"non-positive or non-finite normalising size for people {np.nonzero(bad)[0][:10].tolist()}")
    dist = np.linalg.norm(pred - gt, axis=-1) / sizes[:, None]
    correct = (dist < threshold) & vis
    counts = vis.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_joint = correct.sum(axis=0) / counts
    seen = counts > 0
    return {
        "PCK": float(per_joint[seen].mean()) if seen.any() else float("nan"),
        "per_joint": {nm: float(v) for nm, v in zip(names, per_joint)},
        "counts": {nm: int(c) for nm, c in zip(names, counts)},
        "num_people": int(n),
    }


# ---------------------------------------------------------------------------------------------------------------
# Top-down test protocol
# ---------------------------------------------------------------------------------------------------------------
def _pose_arrays(pose: Mapping[str, Any], where: str) -> tuple[np.ndarray, np.ndarray]:
    """(K, 2) points and (K,) scores of a per-person prediction."""
    if not isinstance(pose, Mapping):
        raise TypeError(f"{where} must be a dict, got {type(pose).__name__}")
    if "keypoints" not in pose:
        raise ValueError(f"{where} has no 'keypoints'")
    kps = _to_numpy(pose["keypoints"], f"{where} keypoints")
    if kps.ndim == 1 and kps.size % 3 == 0 and "scores" not in pose:
        kps = kps.reshape(-1, 3)
    if kps.ndim != 2 or kps.shape[1] not in (2, 3):
        raise ValueError(f"{where}: 'keypoints' must be (K, 2) with 'scores' (K,), or (K, 3), got shape {kps.shape}")
    if "scores" in pose:
        scores = _to_numpy(pose["scores"], f"{where} scores").reshape(-1)
        if scores.size != kps.shape[0]:
            raise ValueError(f"{where}: {scores.size} scores for {kps.shape[0]} keypoints")
    elif kps.shape[1] == 3:
        scores = kps[:, 2]
    else:
        raise ValueError(f"{where}: (K, 2) keypoints need per-keypoint 'scores'")
    if not np.all(np.isfinite(kps[:, :2])) or not np.all(np.isfinite(scores)):
        raise ValueError(f"{where} (image_id={pose.get('image_id')!r}) has NaN/inf keypoints or scores")
    return kps[:, :2], scores


def _box_score(pose: Mapping[str, Any]) -> float:
    value = pose.get("box_score", pose.get("bbox_score", 1.0))
    return float(_to_numpy(value, "box_score"))


def _pose_area(pose: Mapping[str, Any], xy: np.ndarray, where: str) -> float:
    if pose.get("area") is not None:
        area = float(_to_numpy(pose["area"], f"{where} area"))
    elif pose.get("bbox") is not None:
        box = _to_numpy(pose["bbox"], f"{where} bbox").reshape(-1)
        area = float(box[2] * box[3])
    else:
        area = float(np.ptp(xy[:, 0]) * np.ptp(xy[:, 1]))
    if not math.isfinite(area) or area < 0:
        raise ValueError(f"{where} has an invalid area {area}")
    return area


def rescore_poses(poses: Sequence[Mapping[str, Any]], vis_thr: float = 0.2) -> list[dict[str, Any]]:
    """Official top-down rescoring: ``score = box_score * mean(keypoint scores > vis_thr)`` (0 when none pass).

    Each pose is a dict with ``keypoints`` (K, 2) + ``scores`` (K,), or ``keypoints`` (K, 3) with the score in
    the last column, and ``box_score`` (or ``bbox_score``; default 1.0). Returns shallow copies with ``"score"``.
    """
    out = []
    for n, pose in enumerate(poses):
        _, scores = _pose_arrays(pose, f"poses[{n}]")
        passed = scores[scores > vis_thr]
        kpt_score = float(passed.mean()) if passed.size else 0.0
        new = dict(pose)
        new["score"] = _box_score(pose) * kpt_score
        out.append(new)
    return out


def oks_nms(
    poses: Sequence[Mapping[str, Any]],
    thr: float = 0.9,
    sigmas: Sequence[float] | np.ndarray | str | None = None,
    vis_thr: float | None = None,
) -> list[int]:
    """Greedy OKS non-maximum suppression over the poses of ONE image.

    Highest ``score`` first (ties: earlier pose first); a pose is dropped when its OKS with a kept pose is
    ``> thr``. OKS between two poses uses their mean ``area`` (``area`` key, else ``bbox`` w*h, else the
    keypoint extent): ``mean_k exp(-d_k^2 / (2 * mean_area * (2 sigma_k)^2))``; with ``vis_thr`` only joints
    scored above it in both poses count. ``sigmas``: K values or a dataset name (default COCO-17).

    Returns:
        Indices into ``poses`` of the kept poses, highest score first.
    """
    if len(poses) == 0:
        return []
    arrays = [_pose_arrays(p, f"poses[{n}]") for n, p in enumerate(poses)]
    k = arrays[0][0].shape[0]
    for n, (xy, _) in enumerate(arrays):
        if xy.shape[0] != k:
            raise ValueError(f"poses[{n}] has {xy.shape[0]} keypoints, poses[0] has {k}")
    sig = _resolve_sigmas(sigmas, None, k)
    variances = (2.0 * sig) ** 2
    scores = []
    for n, pose in enumerate(poses):
        if pose.get("score") is None:
            raise ValueError(f"poses[{n}] has no 'score' (run rescore_poses first)")
        scores.append(float(_to_numpy(pose["score"], f"poses[{n}] score")))
    xy = np.stack([a[0] for a in arrays])  # (P, K, 2)
    kscores = np.stack([a[1] for a in arrays])  # (P, K)
    areas = np.array([_pose_area(p, a[0], f"poses[{n}]") for n, (p, a) in enumerate(zip(poses, arrays))])
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        if rest.size == 0:
            break
        d2 = ((xy[rest] - xy[i]) ** 2).sum(axis=-1)  # (R, K)
        scale = (areas[i] + areas[rest]) / 2 + np.spacing(1)
        e = d2 / variances[None, :] / scale[:, None] / 2
        if vis_thr is None:
            oks = np.exp(-e).mean(axis=1)
        else:
            mask = (kscores[i] > vis_thr)[None, :] & (kscores[rest] > vis_thr)
            num = mask.sum(axis=1)
            oks = np.where(num > 0, (np.exp(-e) * mask).sum(axis=1) / np.maximum(num, 1), 0.0)
        order = rest[oks <= thr]
    return keep


def to_coco_results(poses: Sequence[Mapping[str, Any]], category_id: int = 1) -> list[dict[str, Any]]:
    """COCO keypoint results entries: ``image_id``, ``category_id`` (the pose's own, else ``category_id``),
    flat ``keypoints`` [x, y, score] * K, ``score`` (the pose's ``score``, else its box score). JSON-ready."""
    results = []
    for n, pose in enumerate(poses):
        xy, scores = _pose_arrays(pose, f"poses[{n}]")
        if "image_id" not in pose:
            raise ValueError(f"poses[{n}] has no 'image_id'")
        score = pose.get("score")
        score = _box_score(pose) if score is None else float(_to_numpy(score, f"poses[{n}] score"))
        flat = np.concatenate([xy, scores[:, None]], axis=1).reshape(-1)
        results.append(
            {
                "image_id": _as_id(pose["image_id"]),
                "category_id": _as_id(pose.get("category_id", category_id)),
                "keypoints": [float(v) for v in flat],
                "score": float(score),
            }
        )
    return results


def top_down_results(
    poses: Sequence[Mapping[str, Any]],
    dataset: str | Mapping[str, Any] = "coco",
    *,
    vis_thr: float = 0.2,
    oks_thr: float = 0.9,
    use_nms: bool = True,
    sigmas: Sequence[float] | np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """The official top-down protocol on per-person predictions: rescoring, per-image OKS-NMS, COCO results.

    ``poses``: one dict per person box (see :func:`rescore_poses`) with ``image_id``, optional ``box_score``,
    ``area`` (the official protocol uses the area of the person's crop box), ``category_id``.
    """
    info = _resolve_dataset(dataset)
    sig = _resolve_sigmas(sigmas, info, info["num_keypoints"]) if use_nms else None
    by_image: dict[Any, list[Mapping[str, Any]]] = {}
    for n, pose in enumerate(poses):
        if not isinstance(pose, Mapping) or "image_id" not in pose:
            raise ValueError(f"poses[{n}] must be a dict with an 'image_id'")
        by_image.setdefault(_as_id(pose["image_id"]), []).append(pose)
    results: list[dict[str, Any]] = []
    for image_poses in by_image.values():
        rescored = rescore_poses(image_poses, vis_thr=vis_thr)
        keep = oks_nms(rescored, thr=oks_thr, sigmas=sig) if use_nms else range(len(rescored))
        results.extend(to_coco_results([rescored[i] for i in keep]))
    return results


def evaluate_top_down(
    ground_truth: str | os.PathLike | Mapping[str, Any],
    poses: Sequence[Mapping[str, Any]],
    dataset: str | Mapping[str, Any] = "coco",
    *,
    vis_thr: float = 0.2,
    oks_thr: float = 0.9,
    use_nms: bool = True,
    results_file: str | os.PathLike | None = None,
    use_area: bool | None = None,
    verbose: bool = False,
) -> dict[str, float]:
    """Run the whole top-down protocol (rescoring, OKS-NMS, export, COCO keypoint AP) on per-person predictions;
    writes the COCO results json to ``results_file`` when given. Returns :func:`coco_keypoint_metrics`' dict."""
    results = top_down_results(poses, dataset, vis_thr=vis_thr, oks_thr=oks_thr, use_nms=use_nms)
    if results_file is not None:
        Path(results_file).parent.mkdir(parents=True, exist_ok=True)
        with open(results_file, "w", encoding="utf-8") as f:
            json.dump(results, f)
    return coco_keypoint_metrics(ground_truth, results, dataset, use_area=use_area, verbose=verbose)


# ---------------------------------------------------------------------------------------------------------------
# per-image format (evaluate module) and printing
# ---------------------------------------------------------------------------------------------------------------
def per_image_to_coco(
    predictions: Sequence[Mapping[str, Any]], references: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Turn per-image predictions/references (the `evaluate` module format) into a COCO GT dict + results list.

    references[i]: ``image_id``, ``keypoints`` (P, K, 3) [x, y, v], ``bboxes`` (P, 4) xywh, optional ``areas``
    (P,) (None, NaN or negative = unknown -> 0.53 x bbox area), ``iscrowd`` (P,), ``category_ids`` (P,).
    predictions[i]: ``image_id``, ``keypoints`` (P, K, 3) [x, y, score], ``scores`` (P,), optional
    ``category_ids`` (P,).
    """
    images, annotations, categories = [], [], set()
    seen: set[Any] = set()
    for n, ref in enumerate(references):
        if not isinstance(ref, Mapping) or "image_id" not in ref:
            raise ValueError(f"references[{n}] must be a dict with an 'image_id'")
        image_id = _as_id(ref["image_id"])
        if image_id in seen:
            raise ValueError(f"references[{n}]: image_id {image_id!r} appears more than once")
        seen.add(image_id)
        images.append({"id": image_id})
        kps = ref.get("keypoints") or []
        boxes = ref.get("bboxes") or []
        if len(boxes) != len(kps):
            raise ValueError(f"references[{n}] has {len(kps)} keypoint sets but {len(boxes)} bboxes")
        extras = {}
        for key in ("areas", "iscrowd", "category_ids"):
            values = ref.get(key)
            if values is not None and len(values) != len(kps):
                raise ValueError(f"references[{n}] has {len(kps)} instances but {len(values)} {key!r}")
            extras[key] = values
        for p in range(len(kps)):
            ann: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": _as_id(extras["category_ids"][p]) if extras["category_ids"] is not None else 1,
                "keypoints": _to_numpy(kps[p], f"references[{n}] keypoints[{p}]").reshape(-1).tolist(),
                "bbox": [float(v) for v in _to_numpy(boxes[p], f"references[{n}] bboxes[{p}]").reshape(-1)],
                "iscrowd": int(extras["iscrowd"][p]) if extras["iscrowd"] is not None else 0,
            }
            if extras["areas"] is not None and extras["areas"][p] is not None:
                area = float(extras["areas"][p])
                if math.isfinite(area) and area >= 0:
                    ann["area"] = area
            categories.add(ann["category_id"])
            annotations.append(ann)
    results = []
    for n, pred in enumerate(predictions):
        if not isinstance(pred, Mapping) or "image_id" not in pred:
            raise ValueError(f"predictions[{n}] must be a dict with an 'image_id'")
        kps = pred.get("keypoints") or []
        scores = pred.get("scores")
        if scores is None or len(scores) != len(kps):
            raise ValueError(f"predictions[{n}] needs 'scores' with one value per person ({len(kps)})")
        cats = pred.get("category_ids")
        if cats is not None and len(cats) != len(kps):
            raise ValueError(f"predictions[{n}] has {len(kps)} people but {len(cats)} 'category_ids'")
        for p in range(len(kps)):
            entry = {
                "image_id": _as_id(pred["image_id"]),
                "category_id": _as_id(cats[p]) if cats is not None else 1,
                "keypoints": _to_numpy(kps[p], f"predictions[{n}] keypoints[{p}]").reshape(-1).tolist(),
                "score": float(scores[p]),
            }
            categories.add(entry["category_id"])
            results.append(entry)
    gt = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": str(c)} for c in sorted(categories, key=str)] or [{"id": 1, "name": "1"}],
    }
    return gt, results


def format_metrics(metrics: Mapping[str, Any], title: str | None = None) -> str:
    """A plain-text two-column table of a metrics dict (floats with 4 decimals)."""
    rows = [
        (str(k), f"{v:.4f}" if isinstance(v, float) else str(v))
        for k, v in metrics.items()
        if not isinstance(v, Mapping)
    ]
    width = max([len(r[0]) for r in rows] + [6])
    value_width = max([len(r[1]) for r in rows] + [5])
    lines = [title] if title else []
    lines.append(f"{'metric':<{width}} | {'value':>{value_width}}")
    lines.append(f"{'-' * width}-+-{'-' * value_width}")
    lines += [f"{name:<{width}} | {value:>{value_width}}" for name, value in rows]
    return "\n".join(lines)
