"""COCO OKS keypoint AP/AR as an `evaluate` metric (ships with vitpose-hf).

Load it offline with ``evaluate.load(vitpose_hf.evaluation.metrics.METRIC_PATH)``. The numbers come from
``vitpose_hf.evaluation.metrics.coco_keypoint_metrics`` (pycocotools COCOeval; xtcocotools for CrowdPose).
"""

from __future__ import annotations

import datasets
import evaluate

from vitpose_hf.evaluation.metrics import coco_keypoint_metrics, per_image_to_coco

_DESCRIPTION = """\
COCO keypoint evaluation: average precision and recall over object keypoint similarity (OKS) thresholds
0.50:0.95, with the dataset's per-keypoint OKS sigmas (COCO-17, AIC, AP-10K/APT-36K, OCHuman, CrowdPose,
COCO-WholeBody-133). Inputs are given per image; AP/AR are computed over the whole set of images at compute().
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: one dict per image:
        image_id (int),
        keypoints: list over people of K x [x, y, score],
        scores: list over people of the instance score,
        category_ids (optional): list over people (default 1).
    references: one dict per image (every evaluated image, also those without people):
        image_id (int),
        keypoints: list over people of K x [x, y, v] (v > 0 = labelled),
        bboxes: list over people of [x, y, w, h],
        areas (optional): list over people (None / NaN / negative = unknown: 0.53 * box area is used),
        iscrowd (optional): list over people of 0/1,
        category_ids (optional): list over people (default 1).
    dataset: keypoint dataset name or info dict (default "coco").
    use_area: OKS scale from the areas (default: the official setting of the dataset).
    sigmas: optional per-keypoint OKS sigmas overriding the dataset's.
Returns:
    dict with AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl (fractions; -1 = undefined).
    CrowdPose: AP, AP50, AP75, AR, AR50, AR75 (+ AP_easy/medium/hard with crowdIndex, not available here).
    COCO-WholeBody: whole-body values plus "<part>/AP" etc. for body, foot, face, left_hand, right_hand.
Example:
    >>> metric = evaluate.load(METRIC_PATH)
    >>> metric.compute(predictions=[{"image_id": 1, "keypoints": [kps], "scores": [0.9]}],
    ...                references=[{"image_id": 1, "keypoints": [gt_kps], "bboxes": [[10, 20, 50, 120]]}])
"""

_CITATION = """\
@inproceedings{lin2014microsoft,
  title={Microsoft COCO: Common Objects in Context},
  author={Lin, Tsung-Yi and Maire, Michael and Belongie, Serge and others},
  booktitle={ECCV},
  year={2014}
}
"""

_POINTS = datasets.List(datasets.List(datasets.List(datasets.Value("float64"))))
_FEATURES = datasets.Features(
    {
        "predictions": {
            "image_id": datasets.Value("int64"),
            "keypoints": _POINTS,
            "scores": datasets.List(datasets.Value("float64")),
            "category_ids": datasets.List(datasets.Value("int64")),
        },
        "references": {
            "image_id": datasets.Value("int64"),
            "keypoints": _POINTS,
            "bboxes": datasets.List(datasets.List(datasets.Value("float64"))),
            "areas": datasets.List(datasets.Value("float64")),
            "iscrowd": datasets.List(datasets.Value("int64")),
            "category_ids": datasets.List(datasets.Value("int64")),
        },
    }
)


def _fill_optional(items, column):
    if items is None:
        return None
    keys = _FEATURES[column].keys()
    return [{key: item.get(key) for key in keys} if isinstance(item, dict) else item for item in items]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CocoKeypoints(evaluate.Metric):
    """COCO OKS keypoint AP/AR."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=_FEATURES,
            homepage="https://cocodataset.org/#keypoints-eval",
            reference_urls=["https://cocodataset.org/#keypoints-eval"],
        )

    # evaluate's input check needs every feature key: fill the optional ones with None.
    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of per-image predictions and references (optional keys may be left out)."""
        return super().add_batch(
            predictions=_fill_optional(predictions, "predictions"),
            references=_fill_optional(references, "references"),
            **kwargs,
        )

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one image's prediction and reference (optional keys may be left out)."""
        return super().add(
            prediction=_fill_optional([prediction], "predictions")[0] if prediction is not None else None,
            reference=_fill_optional([reference], "references")[0] if reference is not None else None,
            **kwargs,
        )

    def _compute(self, predictions, references, dataset="coco", use_area=None, sigmas=None):
        ground_truth, results = per_image_to_coco(predictions, references)
        return coco_keypoint_metrics(ground_truth, results, dataset, sigmas=sigmas, use_area=use_area)
