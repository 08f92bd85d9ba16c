"""vitpose_hf.evaluation.metrics against pycocotools / xtcocotools run directly, and hand-computed PCKh / PCK."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from vitpose_hf.evaluation.metrics import (
    COCO_METRIC_NAMES,
    CROWDPOSE_METRIC_NAMES,
    METRIC_PATH,
    coco_keypoint_metrics,
    evaluate_top_down,
    format_metrics,
    oks_nms,
    pck,
    pckh,
    per_image_to_coco,
    rescore_poses,
    to_coco_results,
    top_down_results,
)
from vitpose_hf.keypoint_metadata import get_dataset_info

TOL = 1e-9
WB_PARTS = [  # our part name, xtcocotools iouType, annotation key
    ("body", "keypoints_body", "keypoints"),
    ("foot", "keypoints_foot", "foot_kpts"),
    ("face", "keypoints_face", "face_kpts"),
    ("left_hand", "keypoints_lefthand", "lefthand_kpts"),
    ("right_hand", "keypoints_righthand", "righthand_kpts"),
]
# dataset -> (GT file, official use_area)
DATASET_FILES = {
    "coco": ("mmpose/coco/test_coco.json", True),
    "crowdpose": ("mmpose/crowdpose/test_crowdpose.json", False),
    "ochuman": ("mmpose/ochuman/test_ochuman.json", True),
    "aic": ("mmpose/aic/test_aic.json", False),
    "ap10k": ("mmpose/ap10k/test_ap10k.json", True),
}


# ------------------------------------------------------------------------------------------------------------------
# the reference tools, run directly
# ------------------------------------------------------------------------------------------------------------------
def _sigmas(dataset):
    return np.array(get_dataset_info(dataset)["sigmas"], dtype=np.float64)


def xtcoco_stats(gt_path, preds, iou_type, sigmas, use_area=True):
    from xtcocotools.coco import COCO
    from xtcocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        coco_dt = coco_gt.loadRes(copy.deepcopy(preds))
        ev = COCOeval(coco_gt, coco_dt, iou_type, np.asarray(sigmas), use_area=use_area)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats, dtype=np.float64)


def pycoco_stats(gt_path, preds, sigmas):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        coco_dt = coco_gt.loadRes(copy.deepcopy(preds))
        ev = COCOeval(coco_gt, coco_dt, "keypoints")
        ev.params.kpt_oks_sigmas = np.asarray(sigmas)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats, dtype=np.float64)


def as_array(metrics, names, prefix=""):
    return np.array([metrics[f"{prefix}{n}"] for n in names], dtype=np.float64)


def load(shared_data, rel):
    with open(shared_data / rel) as f:
        return json.load(f)


def perturbed_predictions(gt, seed, sigmas, *, noise=0.7, extra=True):
    """Predictions derived from the GT: jittered points (about `noise` OKS standard deviations, so AP lands
    between 0 and 1), random scores, a few dropped instances and a few shifted duplicates."""
    rng = np.random.default_rng(seed)
    preds = []
    for ann in gt["annotations"]:
        kps = np.array(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
        if not np.any(kps[:, 2] > 0) or rng.random() < 0.1:
            continue
        x, y, w, h = ann["bbox"]
        size = math.sqrt(max(0.53 * w * h, 1.0))
        std = noise * 2 * np.asarray(sigmas)[: len(kps), None] * size
        out = kps.copy()
        out[:, :2] += rng.normal(0, 1, size=(len(kps), 2)) * std
        unlabelled = kps[:, 2] == 0
        out[unlabelled, :2] = [x + w / 2, y + h / 2]
        out[:, 2] = rng.uniform(0.05, 1.0, size=len(kps))
        preds.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "keypoints": out.reshape(-1).tolist(),
                "score": float(rng.uniform(0.3, 1.0)),
            }
        )
        if extra and rng.random() < 0.4:
            dup = out.copy()
            dup[:, :2] += rng.normal(0, 1, size=(len(kps), 2)) * 3 * std
            preds.append(
                {
                    "image_id": ann["image_id"],
                    "category_id": ann["category_id"],
                    "keypoints": dup.reshape(-1).tolist(),
                    "score": float(rng.uniform(0.0, 0.5)),
                }
            )
    return preds


# ------------------------------------------------------------------------------------------------------------------
# COCO OKS AP
# ------------------------------------------------------------------------------------------------------------------
def test_xtcocoapi_example_predictions_match_both_tools(shared_data):
    gt_path = shared_data / "mmpose/coco/test_coco.json"
    preds = load(shared_data, "xtcocoapi/annotations/example_coco_preds.json")
    ours = coco_keypoint_metrics(gt_path, preds, "coco")
    assert list(ours) == list(COCO_METRIC_NAMES)
    ref_py = pycoco_stats(gt_path, preds, _sigmas("coco"))
    ref_xt = xtcoco_stats(gt_path, preds, "keypoints", _sigmas("coco"))
    np.testing.assert_allclose(as_array(ours, COCO_METRIC_NAMES), ref_py, atol=TOL, rtol=0)
    np.testing.assert_allclose(as_array(ours, COCO_METRIC_NAMES), ref_xt, atol=TOL, rtol=0)
    assert 0.5 < ours["AP"] < 1.0
    # path and dict inputs, and json-file predictions, give the same numbers
    gt_dict = load(shared_data, "mmpose/coco/test_coco.json")
    before = copy.deepcopy(gt_dict)
    assert coco_keypoint_metrics(gt_dict, preds) == ours
    assert gt_dict == before  # the caller's ground truth is not modified
    assert coco_keypoint_metrics(gt_path, shared_data / "xtcocoapi/annotations/example_coco_preds.json") == ours


@pytest.mark.parametrize("dataset", sorted(DATASET_FILES))
@pytest.mark.parametrize("seed", [0, 1])
def test_perturbed_predictions_match_tools(shared_data, dataset, seed):
    rel, use_area = DATASET_FILES[dataset]
    gt_path = shared_data / rel
    gt = load(shared_data, rel)
    preds = perturbed_predictions(gt, seed, _sigmas(dataset))
    ours = coco_keypoint_metrics(gt_path, preds, dataset)
    if dataset == "crowdpose":
        ref = xtcoco_stats(gt_path, preds, "keypoints_crowd", _sigmas(dataset), use_area=False)
        assert list(ours) == list(CROWDPOSE_METRIC_NAMES)
        np.testing.assert_allclose(as_array(ours, CROWDPOSE_METRIC_NAMES), ref, atol=TOL, rtol=0)
        return
    ref_xt = xtcoco_stats(gt_path, preds, "keypoints", _sigmas(dataset), use_area=use_area)
    np.testing.assert_allclose(as_array(ours, COCO_METRIC_NAMES), ref_xt, atol=TOL, rtol=0)
    if use_area:  # these files have 'area' and 'iscrowd', which pycocotools needs
        ref_py = pycoco_stats(gt_path, preds, _sigmas(dataset))
        np.testing.assert_allclose(as_array(ours, COCO_METRIC_NAMES), ref_py, atol=TOL, rtol=0)
    assert 0.0 < ours["AP"] < 1.0


@pytest.mark.parametrize("dataset", sorted(DATASET_FILES))
def test_ground_truth_as_predictions_gives_ap_one(shared_data, dataset):
    rel, _ = DATASET_FILES[dataset]
    gt = load(shared_data, rel)
    preds = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "keypoints": a["keypoints"], "score": 1.0}
        for a in gt["annotations"]
        if any(v > 0 for v in a["keypoints"][2::3])
    ]
    ours = coco_keypoint_metrics(shared_data / rel, preds, dataset)
    assert ours["AP"] == pytest.approx(1.0, abs=TOL)
    assert ours["AR"] == pytest.approx(1.0, abs=TOL)


def test_use_area_override_and_defaults(shared_data):
    rel, _ = DATASET_FILES["coco"]
    gt_path = shared_data / rel
    preds = perturbed_predictions(load(shared_data, rel), 3, _sigmas("coco"))
    ours = coco_keypoint_metrics(gt_path, preds, "coco", use_area=False)
    ref = xtcoco_stats(gt_path, preds, "keypoints", _sigmas("coco"), use_area=False)
    np.testing.assert_allclose(as_array(ours, COCO_METRIC_NAMES), ref, atol=TOL, rtol=0)
    assert ours != coco_keypoint_metrics(gt_path, preds, "coco")
    # APT-36K shares AP-10K's keypoints and sigmas
    gt10k = shared_data / DATASET_FILES["ap10k"][0]
    preds10k = perturbed_predictions(load(shared_data, DATASET_FILES["ap10k"][0]), 4, _sigmas("ap10k"))
    assert coco_keypoint_metrics(gt10k, preds10k, "apt36k") == coco_keypoint_metrics(gt10k, preds10k, "ap10k")


def test_predictions_without_positive_scores_are_dropped_like_xtcocotools(shared_data):
    rel, _ = DATASET_FILES["coco"]
    gt_path = shared_data / rel
    preds = perturbed_predictions(load(shared_data, rel), 5, _sigmas("coco"))
    zero = copy.deepcopy(preds[0])
    zero["keypoints"][2::3] = [0.0] * 17
    zero["score"] = 5.0  # would rank first if it were kept
    preds.append(zero)
    ours = coco_keypoint_metrics(gt_path, preds, "coco")
    ref = xtcoco_stats(gt_path, preds, "keypoints", _sigmas("coco"))
    np.testing.assert_allclose(as_array(ours, COCO_METRIC_NAMES), ref, atol=TOL, rtol=0)


def test_empty_predictions_give_zero(shared_data):
    out = coco_keypoint_metrics(shared_data / DATASET_FILES["coco"][0], [], "coco")
    assert out["AP"] == 0.0 and out["AR"] == 0.0


def test_crowdpose_without_crowd_index_reports_plain_values(shared_data):
    gt = load(shared_data, "mmpose/crowdpose/test_crowdpose.json")
    preds = perturbed_predictions(gt, 2, _sigmas("crowdpose"))
    full = coco_keypoint_metrics(gt, preds, "crowdpose")
    for img in gt["images"]:
        del img["crowdIndex"]
    plain = coco_keypoint_metrics(gt, preds, "crowdpose")
    assert list(plain) == list(CROWDPOSE_METRIC_NAMES[:6])
    assert plain == {k: full[k] for k in plain}


def test_crowdpose_needs_xtcocotools(shared_data, monkeypatch):
    monkeypatch.setitem(sys.modules, "xtcocotools.coco", None)
    with pytest.raises(ImportError, match=r"pip install vitpose-hf\[crowdpose\]"):
        coco_keypoint_metrics(shared_data / "mmpose/crowdpose/test_crowdpose.json", [], "crowdpose")


# ------------------------------------------------------------------------------------------------------------------
# COCO-WholeBody
# ------------------------------------------------------------------------------------------------------------------
def _flat_wholebody(entry):
    return (
        entry["keypoints"] + entry["foot_kpts"] + entry["face_kpts"] + entry["lefthand_kpts"] + entry["righthand_kpts"]
    )


def _check_wholebody(ours, gt_path, preds):
    sigmas = _sigmas("wholebody")
    parts = get_dataset_info("wholebody")["parts"]
    for part, iou_type, _ in WB_PARTS:
        start, end = parts[part]
        ref = xtcoco_stats(gt_path, preds, iou_type, sigmas[start:end])
        np.testing.assert_allclose(as_array(ours, COCO_METRIC_NAMES, f"{part}/"), ref, atol=TOL, rtol=0, err_msg=part)
    ref = xtcoco_stats(gt_path, preds, "keypoints_wholebody", sigmas)
    np.testing.assert_allclose(as_array(ours, COCO_METRIC_NAMES), ref, atol=TOL, rtol=0)


@pytest.mark.filterwarnings("ignore:.*not found, use 'score' instead")
def test_wholebody_example_matches_xtcocotools(shared_data):
    gt_path = shared_data / "xtcocoapi/annotations/example_wholebody_val.json"
    preds = load(shared_data, "xtcocoapi/annotations/example_wholebody_preds.json")
    ours = coco_keypoint_metrics(gt_path, preds, "wholebody")
    _check_wholebody(ours, gt_path, preds)
    # the same predictions with all 133 keypoints in one flat list
    flat = [
        {
            "image_id": p["image_id"],
            "category_id": p["category_id"],
            "keypoints": _flat_wholebody(p),
            "score": p["score"],
        }
        for p in preds
    ]
    assert coco_keypoint_metrics(gt_path, flat, "coco_wholebody") == ours


@pytest.mark.filterwarnings("ignore:.*not found, use 'score' instead")
def test_wholebody_part_scores_and_flat_ground_truth(shared_data):
    split_path = shared_data / "mmpose/coco/test_coco_wholebody.json"
    gt = load(shared_data, "mmpose/coco/test_coco_wholebody.json")
    rng = np.random.default_rng(7)
    body = perturbed_predictions(gt, 8, _sigmas("coco"), extra=False)
    preds = []
    # derive every part from the GT instance the body prediction came from (same order, same image)
    anns = [a for a in gt["annotations"] if any(v > 0 for v in a["keypoints"][2::3])]
    for pred in body:
        ann = next(a for a in anns if a["image_id"] == pred["image_id"])
        anns.remove(ann)
        entry = dict(pred)
        for _part, _, key in WB_PARTS[1:]:
            kps = np.array(ann[key], dtype=np.float64).reshape(-1, 3)
            kps[:, :2] += rng.normal(0, 2.0, size=(len(kps), 2))
            kps[:, 2] = rng.uniform(0.05, 1.0, size=len(kps))
            entry[key] = kps.reshape(-1).tolist()
            entry[f"{key.split('_')[0]}_score"] = float(rng.uniform(0.1, 1.0))
        entry["wholebody_score"] = float(rng.uniform(0.1, 1.0))
        preds.append(entry)
    ours = coco_keypoint_metrics(split_path, preds, "wholebody")
    _check_wholebody(ours, split_path, preds)
    # the same annotations with 133 keypoints concatenated in one list give the same numbers
    flat_gt = shared_data / "mmpose/coco/test_keypoint_partition_metric.json"
    assert coco_keypoint_metrics(flat_gt, preds, "wholebody") == ours


# ------------------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------------------
def test_bad_predictions_raise_clear_errors(shared_data):
    gt_path = shared_data / DATASET_FILES["coco"][0]
    good = load(shared_data, "xtcocoapi/annotations/example_coco_preds.json")[:3]

    unknown = copy.deepcopy(good)
    unknown[1]["image_id"] = 123456789
    with pytest.raises(ValueError, match="123456789"):
        coco_keypoint_metrics(gt_path, unknown)

    wrong_k = copy.deepcopy(good)
    wrong_k[0]["keypoints"] = wrong_k[0]["keypoints"][:42]
    with pytest.raises(ValueError, match=r"14 keypoints .*K=17"):
        coco_keypoint_metrics(gt_path, wrong_k)
    with pytest.raises(ValueError, match="K=14"):
        coco_keypoint_metrics(gt_path, good, "aic")  # the COCO GT has 17 keypoints, AIC 14

    nan = copy.deepcopy(good)
    nan[2]["keypoints"][4] = float("nan")
    with pytest.raises(ValueError, match=r"predictions\[2\].*NaN"):
        coco_keypoint_metrics(gt_path, nan)

    nan_score = copy.deepcopy(good)
    nan_score[0]["score"] = float("nan")
    with pytest.raises(ValueError, match="non-finite 'score'"):
        coco_keypoint_metrics(gt_path, nan_score)

    no_score = copy.deepcopy(good)
    del no_score[0]["score"]
    with pytest.raises(ValueError, match="no 'score'"):
        coco_keypoint_metrics(gt_path, no_score)

    with pytest.raises(TypeError):
        coco_keypoint_metrics(gt_path, {"image_id": 785})
    with pytest.raises(ValueError, match="no OKS sigmas"):
        coco_keypoint_metrics(gt_path, good, "mpii")
    with pytest.raises(ValueError, match="unknown keypoint dataset"):
        coco_keypoint_metrics(gt_path, good, "not-a-dataset")
    with pytest.raises(ValueError, match="not found"):
        coco_keypoint_metrics(shared_data / "missing.json", good)


# ------------------------------------------------------------------------------------------------------------------
# top-down protocol: rescoring + OKS-NMS vs an independent implementation
# ------------------------------------------------------------------------------------------------------------------
def ref_rescore(keypoint_scores, box_score, thr=0.2):
    total, count = 0.0, 0
    for s in keypoint_scores:
        if s > thr:
            total += s
            count += 1
    return box_score * (total / count if count else 0.0)


def ref_oks_nms(points, scores, areas, sigmas, thr):
    """Greedy NMS written independently: visit poses by score, suppress any remaining pose too similar."""
    order = sorted(range(len(points)), key=lambda i: (-scores[i], i))
    alive = set(order)
    keep = []
    for i in order:
        if i not in alive:
            continue
        keep.append(i)
        alive.discard(i)
        for j in list(alive):
            mean_area = (areas[i] + areas[j]) / 2
            total = 0.0
            for k, sigma in enumerate(sigmas):
                d2 = (points[i][k][0] - points[j][k][0]) ** 2 + (points[i][k][1] - points[j][k][1]) ** 2
                total += math.exp(-d2 / (2 * mean_area * (2 * sigma) ** 2))
            if total / len(sigmas) > thr:
                alive.discard(j)
    return keep


def random_poses(seed, num_images=3, per_image=8, k=17):
    rng = np.random.default_rng(seed)
    poses = []
    for image_id in (785, 40083, 196141)[:num_images]:
        centres = rng.uniform(50, 400, size=(3, 2))
        people = centres[:, None, :] + rng.normal(0, 25, size=(3, k, 2))
        for _ in range(per_image):
            person = rng.integers(3)
            base = centres[person]
            # near-duplicates of a few "people" so that NMS has something to suppress
            pts = people[person] + rng.normal(0, rng.choice([0.5, 3.0, 15.0]), size=(k, 2))
            w, h = rng.uniform(60, 200, size=2)
            poses.append(
                {
                    "image_id": image_id,
                    "keypoints": pts,
                    "scores": rng.uniform(0.0, 1.0, size=k),
                    "box_score": float(rng.uniform(0.2, 1.0)),
                    "bbox": [float(base[0] - w / 2), float(base[1] - h / 2), float(w), float(h)],
                }
            )
    return poses


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rescoring_and_oks_nms_match_independent_implementation(seed):
    poses = random_poses(seed)
    sigmas = get_dataset_info("coco")["sigmas"]
    rescored = rescore_poses(poses)
    for pose, new in zip(poses, rescored):
        assert new["score"] == pytest.approx(ref_rescore(pose["scores"], pose["box_score"]), abs=1e-12)
        assert "score" not in pose  # inputs untouched
    total_kept = 0
    for image_id in (785, 40083, 196141):
        group = [p for p in rescored if p["image_id"] == image_id]
        pts = [p["keypoints"].tolist() for p in group]
        scores = [p["score"] for p in group]
        areas = [p["bbox"][2] * p["bbox"][3] for p in group]
        for thr in (0.9, 0.5):
            keep = oks_nms(group, thr=thr, sigmas=sigmas)
            assert keep == ref_oks_nms(pts, scores, areas, sigmas, thr)
        total_kept += len(oks_nms(group, thr=0.9))
    assert total_kept < len(poses)  # something was suppressed


def test_oks_nms_details():
    pose = {"keypoints": np.zeros((17, 3)), "score": 0.5, "area": 100.0}
    assert oks_nms([]) == []
    assert oks_nms([pose]) == [0]
    # identical poses: only the higher score survives; ties keep the first
    assert oks_nms([pose, {**pose, "score": 0.9}]) == [1]
    assert oks_nms([pose, dict(pose)]) == [0]
    with pytest.raises(ValueError, match="run rescore_poses first"):
        oks_nms([{"keypoints": np.zeros((17, 3))}])
    with pytest.raises(ValueError, match="14 OKS sigmas for 17"):
        oks_nms([pose], sigmas="aic")
    with pytest.raises(ValueError, match="NaN"):
        rescore_poses([{"keypoints": np.full((17, 2), np.nan), "scores": np.ones(17)}])
    # keypoint score threshold is strict (> 0.2), and no keypoint above it gives score 0
    scores = np.array([0.2] * 16 + [0.6])
    assert rescore_poses([{"keypoints": np.zeros((17, 2)), "scores": scores, "box_score": 0.5}])[0]["score"] == 0.3
    assert rescore_poses([{"keypoints": np.zeros((17, 2)), "scores": np.full(17, 0.2)}])[0]["score"] == 0.0


def test_top_down_pipeline_and_export(shared_data, tmp_path):
    poses = random_poses(4)
    results = top_down_results(poses, "coco")
    # the same thing step by step
    expected = []
    for image_id in (785, 40083, 196141):
        group = rescore_poses([p for p in poses if p["image_id"] == image_id])
        keep = ref_oks_nms(
            [p["keypoints"].tolist() for p in group],
            [p["score"] for p in group],
            [p["bbox"][2] * p["bbox"][3] for p in group],
            get_dataset_info("coco")["sigmas"],
            0.9,
        )
        expected += to_coco_results([group[i] for i in keep])
    assert results == expected
    entry = results[0]
    assert set(entry) == {"image_id", "category_id", "keypoints", "score"}
    assert len(entry["keypoints"]) == 51 and entry["category_id"] == 1
    json.dumps(results)  # JSON-ready: plain floats and ints
    out = tmp_path / "sub" / "results.json"
    gt_path = shared_data / DATASET_FILES["coco"][0]
    metrics = evaluate_top_down(gt_path, poses, "coco", results_file=out)
    assert json.loads(out.read_text()) == results
    assert metrics == coco_keypoint_metrics(gt_path, results, "coco")
    assert len(top_down_results(poses, "coco", use_nms=False)) == len(poses)


def test_top_down_on_ground_truth_boxes_gives_ap_one(shared_data):
    gt = load(shared_data, DATASET_FILES["coco"][0])
    poses = []
    for ann in gt["annotations"]:
        kps = np.array(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
        if ann["num_keypoints"] == 0:
            continue
        poses.append(
            {
                "image_id": ann["image_id"],
                "keypoints": kps[:, :2],
                "scores": np.where(kps[:, 2] > 0, 0.9, 0.1),
                "box_score": 1.0,
                "bbox": ann["bbox"],
                "area": ann["area"],
            }
        )
    metrics = evaluate_top_down(shared_data / DATASET_FILES["coco"][0], poses)
    assert metrics["AP"] == pytest.approx(1.0, abs=TOL)


# ------------------------------------------------------------------------------------------------------------------
# PCKh / PCK on hand-computed cases
# ------------------------------------------------------------------------------------------------------------------
def _mpii_case():
    names = get_dataset_info("mpii")["keypoint_names"]
    idx = {n: i for i, n in enumerate(names)}
    gt = np.zeros((2, 16, 2)) + 100.0
    pred = gt.copy()
    vis = np.zeros((2, 16))
    # person 0, head size 10 -> radius 5 at PCKh@0.5
    vis[0, [idx["head_top"], idx["left_wrist"], idx["right_wrist"], idx["pelvis"]]] = 1
    pred[0, idx["head_top"]] += [3, 4]  # distance 5 -> correct (<=)
    pred[0, idx["left_wrist"]] += [6, 0]  # 6 > 5 -> wrong
    pred[0, idx["right_wrist"]] += [0, 1]  # correct
    pred[0, idx["pelvis"]] += [50, 0]  # wrong, excluded from the official mean
    # person 1, head size 20 -> radius 10
    vis[1, [idx["head_top"], idx["left_wrist"], idx["thorax"]]] = 1
    pred[1, idx["head_top"]] += [0, 11]  # wrong
    pred[1, idx["left_wrist"]] += [6, 8]  # 10 -> correct
    pred[1, idx["left_knee"]] += [1000, 0]  # invisible: ignored
    return names, idx, pred, gt, vis


def test_pckh_hand_computed():
    names, idx, pred, gt, vis = _mpii_case()
    out = pckh(pred, gt, vis, head_sizes=[10.0, 20.0])
    assert out["per_joint"]["head_top"] == 0.5
    assert out["per_joint"]["left_wrist"] == 0.5
    assert out["per_joint"]["right_wrist"] == 1.0
    assert out["per_joint"]["pelvis"] == 0.0
    assert out["per_joint"]["thorax"] == 1.0
    assert math.isnan(out["per_joint"]["left_knee"])
    assert out["counts"]["head_top"] == 2 and out["counts"]["left_knee"] == 0
    # official mean: pelvis and thorax left out -> head 1/2 + l-wrist 1/2 + r-wrist 1/1 = 3 / 5
    assert out["PCKh"] == pytest.approx(3 / 5)
    assert out["Head"] == 0.5 and out["Wrist"] == 0.75
    assert math.isnan(out["Knee"])
    # every joint in the mean: + pelvis 0/1 + thorax 1/1 = 4 / 7
    assert pckh(pred, gt, vis, [10.0, 20.0], exclude_from_mean=())["PCKh"] == pytest.approx(4 / 7)
    # visibility from a third column, and head sizes from MPII head boxes (0.6 x diagonal)
    gt3 = np.concatenate([gt, vis[..., None]], axis=-1)
    boxes = np.array([[0, 0, 6, 8], [10, 10, 22, 26]])
    sizes = 0.6 * np.array([10.0, 20.0])
    same = json.dumps(pckh(pred, gt3, head_boxes=boxes)) == json.dumps(pckh(pred, gt3, head_sizes=sizes))
    assert same  # (json: NaN values compare equal)
    # PCKh@0.1 is stricter
    assert pckh(pred, gt, vis, [10.0, 20.0], threshold=0.1)["PCKh"] == pytest.approx(1 / 5)


def test_pckh_missing_head_size():
    _, idx, pred, gt, vis = _mpii_case()
    with pytest.raises(ValueError, match="head size"):
        pckh(pred, gt, vis)  # no head sizes at all
    with pytest.raises(ValueError, match=r"people \[1\]"):
        pckh(pred, gt, vis, head_sizes=[10.0, float("nan")])
    with pytest.raises(ValueError, match=r"people \[0\]"):
        pckh(pred, gt, vis, head_sizes=[0.0, 20.0])
    out = pckh(pred, gt, vis, head_sizes=[10.0, float("nan")], missing_head_size="skip")
    assert out["num_skipped"] == 1 and out["num_people"] == 2
    assert out["per_joint"]["head_top"] == 1.0 and out["counts"]["head_top"] == 1
    assert out["PCKh"] == pytest.approx(2 / 3)  # person 0 only: head, l-wrist, r-wrist
    with pytest.raises(ValueError, match="shape"):
        pckh(pred, gt, vis, head_sizes=[10.0])
    bad = pred.copy()
    bad[0, idx["head_top"], 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pckh(bad, gt, vis, head_sizes=[10.0, 20.0])
    with pytest.raises(ValueError, match="K=16"):
        pckh(pred[:, :15], gt[:, :15], vis[:, :15], head_sizes=[10.0, 20.0])


def test_pck_hand_computed():
    gt = np.zeros((2, 3, 3))
    gt[..., 2] = 1
    gt[1, 2, 2] = 0  # invisible
    pred = gt[..., :2].copy()
    boxes = np.array([[0, 0, 100, 50], [0, 0, 40, 200]])  # xywh, max side 100 and 200
    pred[0, 0] += [4.9, 0]  # 0.049 < 0.05 -> correct
    pred[0, 1] += [5, 0]  # 0.05 is not < 0.05 -> wrong
    pred[1, 0] += [0, 12]  # 0.06 -> wrong
    pred[1, 1] += [6, 8]  # 0.05 -> wrong
    pred[1, 2] += [500, 0]  # invisible
    out = pck(pred, gt, boxes=boxes, threshold=0.05)
    assert out["per_joint"] == {"0": 0.5, "1": 0.0, "2": 1.0}
    assert out["counts"] == {"0": 2, "1": 2, "2": 1}
    assert out["PCK"] == pytest.approx(0.5)  # mean of the per-joint values
    xyxy = boxes.copy()
    xyxy[:, 2:] += xyxy[:, :2] + 7
    xyxy[:, :2] += 7
    assert pck(pred, gt, boxes=xyxy, box_format="xyxy") == out
    assert pck(pred, gt, norm_sizes=[100, 200]) == out
    assert pck(pred, gt, boxes=boxes, threshold=0.2)["PCK"] == 1.0
    with pytest.raises(ValueError, match="boxes"):
        pck(pred, gt)
    with pytest.raises(ValueError, match="normalising size"):
        pck(pred, gt, norm_sizes=[100, 0])


# ------------------------------------------------------------------------------------------------------------------
# the `evaluate` module
# ------------------------------------------------------------------------------------------------------------------
def _per_image(gt, preds, k):
    refs, per_pred = [], []
    for img in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == img["id"]]
        refs.append(
            {
                "image_id": img["id"],
                "keypoints": [np.reshape(a["keypoints"], (k, 3)).tolist() for a in anns],
                "bboxes": [a["bbox"] for a in anns],
                "areas": [a.get("area", -1.0) for a in anns],
                "iscrowd": [a.get("iscrowd", 0) for a in anns],
                "category_ids": [a["category_id"] for a in anns],
            }
        )
        mine = [p for p in preds if p["image_id"] == img["id"]]
        per_pred.append(
            {
                "image_id": img["id"],
                "keypoints": [np.reshape(p["keypoints"], (k, 3)).tolist() for p in mine],
                "scores": [p["score"] for p in mine],
                "category_ids": [p["category_id"] for p in mine],
            }
        )
    return per_pred, refs


@pytest.mark.parametrize("dataset", ["coco", "aic", "ap10k"])
def test_evaluate_module_matches_library(shared_data, dataset):
    import evaluate

    assert (Path(METRIC_PATH) / "coco_keypoints.py").is_file()
    rel, _ = DATASET_FILES[dataset]
    gt = load(shared_data, rel)
    preds = perturbed_predictions(gt, 11, _sigmas(dataset))
    k = get_dataset_info(dataset)["num_keypoints"]
    per_pred, refs = _per_image(gt, preds, k)
    expected = coco_keypoint_metrics(shared_data / rel, preds, dataset)
    gt_doc, results = per_image_to_coco(per_pred, refs)
    assert coco_keypoint_metrics(gt_doc, results, dataset) == pytest.approx(expected, abs=TOL)

    metric = evaluate.load(METRIC_PATH, keep_in_memory=True)
    out = metric.compute(predictions=per_pred, references=refs, dataset=dataset)
    assert out == pytest.approx(expected, abs=TOL)
    if dataset == "coco":
        # optional keys may be left out; add()/add_batch() then compute()
        short_refs = [{k: r[k] for k in ("image_id", "keypoints", "bboxes", "areas")} for r in refs]
        short_preds = [{k: p[k] for k in ("image_id", "keypoints", "scores")} for p in per_pred]
        metric.add(prediction=short_preds[0], reference=short_refs[0])
        metric.add_batch(predictions=short_preds[1:], references=short_refs[1:])
        assert metric.compute() == pytest.approx(expected, abs=TOL)


def test_format_metrics_table():
    table = format_metrics({"AP": 0.75, "AR": 0.8, "per_joint": {"a": 1.0}}, title="coco")
    lines = table.splitlines()
    assert lines[0] == "coco" and "0.7500" in lines[3] and "per_joint" not in table


# ------------------------------------------------------------------------------------------------------------------
# `vitpose-hf eval` end to end (tiny random model: the values mean nothing, the files and formats do)
# ------------------------------------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    import torch

    from vitpose_hf import ViTPoseConfig, ViTPoseForPoseEstimation

    torch.manual_seed(0)
    config = ViTPoseConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=(64, 48),
        patch_size=8,
        deconv_channels=16,
    )
    path = tmp_path_factory.mktemp("tiny_vitpose")
    ViTPoseForPoseEstimation(config).save_pretrained(path)
    return path


def _check_results_file(path, gt, k=17, max_entries=None):
    results = json.loads(Path(path).read_text())
    assert isinstance(results, list) and results
    image_ids = {img["id"] for img in gt["images"]}
    for entry in results:
        assert set(entry) == {"image_id", "category_id", "keypoints", "score"}
        assert entry["image_id"] in image_ids and entry["category_id"] == 1
        assert len(entry["keypoints"]) == 3 * k and all(math.isfinite(v) for v in entry["keypoints"])
        assert math.isfinite(entry["score"])
    if max_entries is not None:
        assert len(results) <= max_entries
    return results


def test_eval_cli_end_to_end_with_detections(shared_data, tiny_model_dir, tmp_path, capsys):
    from vitpose_hf.cli import main

    coco = shared_data / "mmpose/coco"
    out = tmp_path / "out" / "results.json"
    rc = main(
        [
            "eval",
            str(tiny_model_dir),
            "--annotations",
            str(coco / "test_coco.json"),
            "--bbox-file",
            str(coco / "test_coco_det_AP_H_56.json"),
            "--flip-test",
            "--batch-size",
            "128",
            "--device",
            "cpu",
            "--output",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    gt = load(shared_data, "mmpose/coco/test_coco.json")
    results = _check_results_file(out, gt, max_entries=118)  # 118 detections, fewer after OKS-NMS
    saved = json.loads((tmp_path / "out" / "results_metrics.json").read_text())
    assert saved["num_boxes"] == 118 and saved["flip_test"] is True
    assert set(saved["metrics"]) == set(COCO_METRIC_NAMES)
    # the written results re-score to the printed / saved metrics
    assert coco_keypoint_metrics(coco / "test_coco.json", results) == saved["metrics"]
    printed = capsys.readouterr().out
    assert "AP50" in printed and str(out) in printed


def test_eval_annotations_apply_exif_orientation(shared_data, tiny_model_dir, tmp_path):
    """Bug 6: `eval --annotations` read the stored pixels of an image saved on its side with an EXIF orientation
    tag, while training, the pipeline and `eval --hub-dataset` show it upright. Both files must score the same."""
    import PIL.Image

    from vitpose_hf.cli import main

    gt = load(shared_data, "mmpose/coco/test_coco.json")
    image = next(img for img in gt["images"] if img["file_name"] == "000000000785.jpg")
    with PIL.Image.open(shared_data / "mmpose/coco" / image["file_name"]) as photo:
        upright = np.asarray(photo.convert("RGB"))
    assert (image["height"], image["width"]) == upright.shape[:2]
    PIL.Image.fromarray(upright).save(tmp_path / "upright.png")
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the pixels are stored turned anticlockwise
    PIL.Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(tmp_path / "rotated.png", exif=exif)
    results = {}
    for name in ("upright", "rotated"):
        annotations = {
            **gt,
            "images": [{**image, "file_name": f"{name}.png"}],
            "annotations": [a for a in gt["annotations"] if a["image_id"] == image["id"]],
        }
        (tmp_path / f"{name}.json").write_text(json.dumps(annotations))
        out = tmp_path / f"{name}_results.json"
        assert (
            main(
                [
                    "eval",
                    str(tiny_model_dir),
                    "--annotations",
                    str(tmp_path / f"{name}.json"),
                    "--device",
                    "cpu",
                    "--output",
                    str(out),
                    "--no-progress",
                ]
            )
            == 0
        )
        results[name] = json.loads(out.read_text())
    assert results["upright"] and results["rotated"] == results["upright"]


def _hub_dataset_from_coco(shared_data, folder):
    import datasets

    gt = load(shared_data, "mmpose/coco/test_coco.json")
    rows = {"image": [], "image_id": [], "width": [], "height": [], "objects": []}
    for img in gt["images"]:
        rows["image"].append(str(shared_data / "mmpose/coco" / img["file_name"]))
        rows["image_id"].append(img["id"])
        rows["width"].append(img["width"])
        rows["height"].append(img["height"])
        rows["objects"].append(
            [
                {
                    "id": a["id"],
                    "bbox": a["bbox"],
                    "keypoints": np.reshape(a["keypoints"], (17, 3)).tolist(),
                    "iscrowd": a["iscrowd"],
                    "area": a["area"],
                }
                for a in gt["annotations"]
                if a["image_id"] == img["id"]
            ]
        )
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("int64"),
            "width": datasets.Value("int32"),
            "height": datasets.Value("int32"),
            "objects": datasets.List(
                {
                    "id": datasets.Value("int64"),
                    "bbox": datasets.List(datasets.Value("float32"), length=4),
                    "keypoints": datasets.List(datasets.List(datasets.Value("float32"), length=3)),
                    "iscrowd": datasets.Value("int8"),
                    "area": datasets.Value("float32"),
                }
            ),
        }
    )
    ds = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"validation": ds}).save_to_disk(str(folder))
    return gt


def test_eval_script_on_hub_dataset_with_gt_boxes(shared_data, tiny_model_dir, tmp_path):
    import importlib.util
    import shutil

    from vitpose_hf.image_processing_vitpose_hf import ViTPoseImageProcessor

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    ViTPoseImageProcessor(size={"height": 64, "width": 48}).save_pretrained(model_dir)
    gt = _hub_dataset_from_coco(shared_data, tmp_path / "hub")

    spec = importlib.util.spec_from_file_location("evaluate_script", REPO / "scripts" / "evaluate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "hub_results.json"
    metrics_out = tmp_path / "m" / "metrics.json"
    rc = script.main(
        [
            str(model_dir),
            "--hub-dataset",
            str(tmp_path / "hub"),
            "--dataset",
            "coco",
            "--device",
            "cpu",
            "--output",
            str(out),
            "--metrics-output",
            str(metrics_out),
            "--no-progress",
            "--max-images",
            "3",
        ]
    )
    assert rc == 0
    kept = {img["id"] for img in gt["images"][:3]}
    gt3 = {"images": [i for i in gt["images"] if i["id"] in kept]}
    with_kps = [a for a in gt["annotations"] if a["image_id"] in kept and a["num_keypoints"] > 0]
    _check_results_file(out, gt3, max_entries=len(with_kps))
    saved = json.loads(metrics_out.read_text())
    assert saved["num_images"] == 3 and saved["num_boxes"] == len(with_kps)


def test_eval_cli_argument_errors(tiny_model_dir, tmp_path, capsys):
    from vitpose_hf.cli import main

    assert main(["eval", str(tiny_model_dir), "--output", str(tmp_path / "r.json")]) == 2  # no data source
    assert "give exactly one data source" in capsys.readouterr().err
    assert main(["eval", str(tiny_model_dir), "--annotations", str(tmp_path / "missing.json")]) == 2
    assert "not found" in capsys.readouterr().err
