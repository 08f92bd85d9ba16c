"""`vitpose-hf eval`: run a model over a keypoint dataset with the official top-down protocol and score it.

Data: a COCO-format keypoint json with its image folder, or a Hub ``datasets`` split saved with ``save_to_disk``
(columns ``image``, ``image_id``, ``width``, ``height``, ``objects`` = list of ``{id, bbox (xywh), keypoints
(K x 3), iscrowd, area}``). Person boxes: the ground-truth boxes, or detections from ``--bbox-file`` (COCO
results json). Each pose is rescored (box score x mean keypoint score above 0.2), OKS-NMS'ed at 0.9 per image,
exported as COCO results and scored with :func:`vitpose_hf.evaluation.metrics.coco_keypoint_metrics`.

A bottom-up checkpoint (associative embedding) is run on the whole images instead, with no boxes (``--boxes`` is
refused), and its people are scored by the same COCO OKS AP code.

User errors (a missing file, images that are not in the ``--images`` folder, a ``--boxes`` file that is not a COCO
results list, an unknown ``--dataset``) are found before the model is loaded and end the command with one line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitpose_hf_cli import DTYPES, CommandError, add_alias, dataset_name_or_index, dtype_name, user_errors

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vitpose-hf eval`."""
    parser.add_argument("model_path", nargs="?", metavar="MODEL", help=argparse.SUPPRESS)  # the old positional
    parser.add_argument("--model", help="vitpose_hf or transformers ViTPose checkpoint: folder or Hub id (required)")
    data = parser.add_argument_group("data (one of --annotations or --hub-dataset)")
    data.add_argument("--annotations", help="COCO-format keypoint json (ground truth)")
    data.add_argument("--images", help="image folder for --annotations (default: the json's folder)")
    data.add_argument("--hub-dataset", help="a `datasets` folder written by save_to_disk (Dataset or DatasetDict)")
    data.add_argument("--split", help="split of a DatasetDict (default: validation, else the only split)")
    data.add_argument("--max-images", type=int, help="evaluate only the first N images (quick checks)")
    boxes = parser.add_argument_group("person boxes")
    box_file = boxes.add_argument(
        "--boxes",
        dest="bbox_file",
        metavar="FILE.json",
        help="detections as a COCO results json list (image_id, category_id, bbox, score); "
        "default: the ground-truth boxes",
    )
    add_alias(boxes, box_file, "--bbox-file", "--bbox_file")  # the old, mmpose-style names
    threshold = boxes.add_argument(
        "--box-threshold",
        dest="det_score_thr",
        type=float,
        default=0.0,
        metavar="S",
        help="drop --boxes detections scoring below S",
    )
    add_alias(boxes, threshold, "--det-score-thr", "--det_score_thr")
    boxes.add_argument(
        "--det-category",
        type=int,
        default=1,
        help="COCO category_id of the --boxes detections to keep (1 = person; -1 keeps all); the number "
        "removed is printed",
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--dataset",
        type=dataset_name_or_index,
        metavar="NAME_OR_INDEX",
        help="dataset head to evaluate, by name or index (default: the model's first dataset)",
    )
    model.add_argument("--flip-test", action="store_true", help="average with the horizontally flipped crops")
    model.add_argument("--batch-size", type=int, default=32, help="crops per forward pass")
    model.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps ...")
    model.add_argument(
        "--dtype",
        type=dtype_name,
        choices=DTYPES,
        default="fp32",
        help="model precision (auto: bf16 on CUDA and on CPUs with native bf16, else fp32; "
        "float32 / bfloat16 / float16 are accepted too)",
    )
    protocol = parser.add_argument_group("protocol")
    protocol.add_argument("--vis-thr", type=float, default=0.2, help="keypoint score threshold for rescoring")
    protocol.add_argument("--oks-thr", type=float, default=0.9, help="OKS-NMS threshold")
    protocol.add_argument("--no-nms", action="store_true", help="skip OKS-NMS")
    out = parser.add_argument_group("output")
    out.add_argument(
        "--output",
        default="keypoint_results.json",
        help="COCO results json to write; a relative path is relative to the current folder "
        "(default: ./keypoint_results.json)",
    )
    out.add_argument("--metrics-output", help="metrics json (default: <output stem>_metrics.json beside --output)")
    out.add_argument("--no-progress", action="store_true", help="hide every progress bar (also the model loading bars)")


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class _Item:
    """One image to run: how to load it, and its person boxes (xywh)."""

    image_id: Any
    load: Callable[[], Any]
    boxes: list[list[float]] = field(default_factory=list)
    box_scores: list[float] = field(default_factory=list)
    category_ids: list[int] = field(default_factory=list)
    path: Path | None = None  # the image file (COCO-format data)


def _coco_source(args: argparse.Namespace) -> tuple[dict[str, Any], list[_Item]]:
    from vitpose_hf.images import load_image

    path = Path(args.annotations)
    if not path.is_file():
        raise ValueError(f"--annotations file not found: {str(path)!r}")
    with open(path, encoding="utf-8") as f:
        gt = json.load(f)
    if not isinstance(gt, dict) or "images" not in gt or "annotations" not in gt:
        raise ValueError(f"{str(path)!r} is not a COCO keypoint json (needs 'images' and 'annotations')")
    folder = Path(args.images) if args.images else path.parent
    if not folder.is_dir():
        raise ValueError(f"--images folder not found: {str(folder)!r}")

    def loader(file_name: str) -> Callable[[], Any]:
        def load() -> Any:  # EXIF orientation applied, as the training data and the pipeline
            return load_image(folder / file_name, f"image {file_name!r}")

        return load

    items = [_Item(img["id"], loader(img["file_name"]), path=folder / img["file_name"]) for img in gt["images"]]
    return gt, items


def _check_image_files(items: list[_Item], args: argparse.Namespace) -> None:
    """Every annotated image must be in the image folder: checked before the model is loaded."""
    missing = [item.path for item in items if item.path is not None and not item.path.is_file()]
    if not missing:
        return
    folder = Path(args.images) if args.images else Path(args.annotations).parent
    how = "--images" if args.images else "the folder of --annotations (pass --images FOLDER)"
    if len(missing) == len(items):
        raise CommandError(
            f"the image folder {str(folder)!r} ({how}) holds none of the {len(items)} annotated images "
            f"(the first is {missing[0].name!r})"
        )
    raise CommandError(
        f"{len(missing)} of the {len(items)} annotated images are not in the image folder {str(folder)!r} ({how}); "
        f"the first is {missing[0].name!r}"
    )


def _hub_source(args: argparse.Namespace) -> tuple[dict[str, Any], list[_Item]]:
    import datasets

    if not os.path.isdir(args.hub_dataset):
        raise ValueError(f"--hub-dataset folder not found: {args.hub_dataset!r} (a folder written by save_to_disk)")
    loaded = datasets.load_from_disk(args.hub_dataset)
    if isinstance(loaded, datasets.DatasetDict):
        if args.split:
            if args.split not in loaded:
                raise ValueError(f"--split {args.split!r} not in the dataset (splits: {list(loaded)})")
            ds = loaded[args.split]
        elif "validation" in loaded:
            ds = loaded["validation"]
        elif len(loaded) == 1:
            ds = next(iter(loaded.values()))
        else:
            raise ValueError(f"the dataset has splits {list(loaded)}: choose one with --split")
    else:
        ds = loaded
    missing = [c for c in ("image", "image_id", "objects") if c not in ds.column_names]
    if missing:
        raise ValueError(f"the Hub dataset lacks columns {missing} (has {ds.column_names})")
    meta = ds.remove_columns("image")  # ground truth without decoding images
    images, annotations, categories = [], [], set()
    for row in meta:
        image = {"id": row["image_id"]}
        for key in ("width", "height"):
            if row.get(key) is not None:
                image[key] = row[key]
        images.append(image)
        for obj in row["objects"] or []:
            kps = [float(v) for point in obj["keypoints"] for v in point]
            ann = {
                "id": obj.get("id"),
                "image_id": row["image_id"],
                "category_id": obj.get("category_id") or 1,
                "bbox": [float(v) for v in obj["bbox"]],
                "keypoints": kps,
                "num_keypoints": sum(1 for v in kps[2::3] if v > 0),
                "iscrowd": int(obj.get("iscrowd") or 0),
            }
            if obj.get("area") is not None and obj["area"] >= 0:
                ann["area"] = float(obj["area"])
            categories.add(ann["category_id"])
            annotations.append(ann)
    if any(a["id"] is None for a in annotations) or len({a["id"] for a in annotations}) != len(annotations):
        for n, ann in enumerate(annotations):
            ann["id"] = n + 1
    gt = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": str(c)} for c in sorted(categories)] or [{"id": 1, "name": "person"}],
    }

    def loader(index: int) -> Callable[[], Any]:
        def load() -> Any:  # datasets' Image feature applies the EXIF orientation; the processor makes it RGB
            return ds[index]["image"]

        return load

    items = [_Item(img["id"], loader(n)) for n, img in enumerate(images)]
    return gt, items


def _gt_boxes(gt: dict[str, Any], items: list[_Item]) -> None:
    """Ground-truth person boxes, selected and clipped to the image as the official top-down datasets do:
    no crowd regions, no instances without labelled keypoints, boxes of positive size only; box score 1."""
    from vitpose_hf.boxes import clip_box_to_image

    by_id = {item.image_id: item for item in items}
    sizes = {img["id"]: (img.get("width"), img.get("height")) for img in gt["images"]}
    for ann in gt["annotations"]:
        item = by_id.get(ann["image_id"])
        if item is None or ann.get("iscrowd") or "bbox" not in ann:
            continue
        kps = ann.get("keypoints") or []
        if not any(v > 0 for v in kps[2::3]) or ann.get("num_keypoints", 1) == 0:
            continue
        if ann.get("area") is not None and ann["area"] <= 0:
            continue
        box = clip_box_to_image(ann["bbox"], *sizes.get(ann["image_id"], (None, None)))
        if box is None:
            continue
        item.boxes.append(box)
        item.box_scores.append(1.0)
        item.category_ids.append(int(ann.get("category_id", 1)))


def _detection_boxes(path: str, items: list[_Item], score_thr: float, category: int) -> tuple[int, int]:
    """Boxes from a COCO detection results json; returns how many referred to images not evaluated, and how many
    the category filter removed."""
    if not Path(path).is_file():
        raise ValueError(f"--boxes file not found: {path!r}")
    try:
        with open(path, encoding="utf-8") as f:
            dets = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--boxes {path!r} is not valid JSON ({exc})") from None
    if isinstance(dets, dict):
        kind = (
            "a COCO annotation file (leave --boxes out to use its ground-truth boxes)"
            if "annotations" in dets
            else "a JSON object (the file name -> boxes mapping of `vitpose-hf predict`)"
        )
        raise ValueError(
            f"--boxes {path!r} is {kind}; eval's --boxes takes COCO detection results: a JSON list of "
            '{"image_id": ..., "category_id": 1, "bbox": [x, y, w, h], "score": ...}'
        )
    if not isinstance(dets, list):
        raise ValueError(f"--boxes {path!r} must hold a list of detections (COCO results format)")
    by_id = {item.image_id: item for item in items}
    skipped = removed = 0
    for n, det in enumerate(dets):
        if not isinstance(det, dict) or not {"image_id", "bbox", "score"} <= set(det):
            raise ValueError(f"--boxes entry {n} must have image_id, bbox and score, got {det!r}")
        if category >= 0 and det.get("category_id", 1) != category:
            removed += 1
            continue
        if det["score"] < score_thr:
            continue
        item = by_id.get(det["image_id"])
        if item is None:
            skipped += 1
            continue
        box = [float(v) for v in det["bbox"]]
        if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] <= 0 or box[3] <= 0:
            raise ValueError(f"--boxes entry {n} has an invalid box {det['bbox']!r} (expected x, y, w, h)")
        item.boxes.append(box)
        item.box_scores.append(float(det["score"]))
        item.category_ids.append(1 if category < 0 else category)
    return skipped, removed


def _restrict(gt: dict[str, Any], items: list[_Item], max_images: int | None) -> tuple[dict[str, Any], list[_Item]]:
    if max_images is None:
        return gt, items
    if max_images < 1:
        raise ValueError(f"--max-images must be positive, got {max_images}")
    items = items[:max_images]
    keep = {item.image_id for item in items}
    gt = {
        **gt,
        "images": [img for img in gt["images"] if img["id"] in keep],
        "annotations": [a for a in gt["annotations"] if a["image_id"] in keep],
    }
    return gt, items


def _groups(items: list[_Item], batch_size: int) -> Iterator[list[_Item]]:
    """Images grouped so that each group holds about `batch_size` crops."""
    group: list[_Item] = []
    crops = 0
    for item in items:
        if not item.boxes:
            continue
        group.append(item)
        crops += len(item.boxes)
        if crops >= batch_size:
            yield group
            group, crops = [], 0
    if group:
        yield group


# ---------------------------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------------------------
def _device(name: str) -> Any:
    import torch

    from vitpose_hf.inference.hub import check_device

    check_device(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def _load_model(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any], int, Any, Any]:
    from vitpose_hf.image_processing_vitpose_hf import ViTPoseImageProcessor
    from vitpose_hf.inference.hub import choose_dtype, hub_load, resolve_dtype
    from vitpose_hf.modeling_vitpose_hf import ViTPoseForPoseEstimation

    device = _device(args.device)
    dtype = choose_dtype("auto", device) if args.dtype == "auto" else resolve_dtype(args.dtype)
    model = hub_load(ViTPoseForPoseEstimation.from_pretrained, args.model, "model", "--model")
    model.to(device=device, dtype=dtype).eval()
    config = model.config
    names = config.dataset_names
    if args.dataset is None:
        index = 0
    else:
        try:
            index = config.dataset_to_index(args.dataset)
        except (ValueError, KeyError, IndexError) as exc:
            message = str(exc).strip("'\"")
            known = "" if all(name in message for name in names) else f" (this model has {names})"
            raise ValueError(f"--dataset {args.dataset!r}: {message}{known}") from None
    info = config.datasets[index]
    try:
        processor = ViTPoseImageProcessor.from_pretrained(args.model)
    except OSError:
        # No preprocessor_config.json: the model's input size and the dataset's official UDP setting.
        height, width = config.image_size
        processor = ViTPoseImageProcessor(
            size={"height": height, "width": width}, use_udp=None, dataset=list(config.datasets)
        )
    return model, processor, info, index, device, dtype


def _predict(
    model: Any,
    processor: Any,
    info: dict[str, Any],
    index: int,
    group: list[_Item],
    args: argparse.Namespace,
    device: Any,
    dtype: Any,
) -> list[dict[str, Any]]:
    """Per-person predictions (the records of :func:`vitpose_hf.evaluation.metrics.top_down_results`) for a group."""
    import torch

    images = [item.load() for item in group]
    inputs = processor(images, boxes=[item.boxes for item in group], box_format="xywh", dataset=info, device=device)
    pixel_values = inputs["pixel_values"]
    heatmaps, flipped = [], []
    with torch.inference_mode():
        for start in range(0, pixel_values.shape[0], args.batch_size):
            chunk = pixel_values[start : start + args.batch_size].to(device=device, dtype=dtype)
            heatmaps.append(model(chunk, dataset_index=index).heatmaps)
            if args.flip_test:
                flipped.append(model(processor.flip_pixel_values(chunk), dataset_index=index).heatmaps)
    outputs = torch.cat(heatmaps)
    flip_outputs = torch.cat(flipped) if flipped else None
    per_image = processor.post_process_pose_estimation(
        outputs, crop_metadata=inputs, flip_outputs=flip_outputs, dataset=info
    )
    # The official NMS uses the area of each (padded) crop box, in image pixels.
    scale = torch.as_tensor(inputs["scale"]).double().cpu()
    areas = (scale[:, 0] * 200.0 * scale[:, 1] * 200.0).tolist()
    poses, crop = [], 0
    for item, people in zip(group, per_image):
        for person, box_score, category_id in zip(people, item.box_scores, item.category_ids):
            poses.append(
                {
                    "image_id": item.image_id,
                    "keypoints": person["keypoints"].detach().float().cpu().numpy(),
                    "scores": person["scores"].detach().float().cpu().numpy(),
                    "box_score": box_score,
                    "area": areas[crop],
                    "category_id": category_id,
                }
            )
            crop += 1
    return poses


# ---------------------------------------------------------------------------------------------------------------
# command
# ---------------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """Run the evaluation; prints the metrics table, writes the results (and metrics) json. Returns 0.

    Bad options and data raise :class:`vitpose_hf_cli.CommandError` (a ValueError): one line on the command line.
    """
    from vitpose_hf.inference.hub import progress_bars

    with user_errors(), progress_bars(not args.no_progress):
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from vitpose_hf.evaluation.metrics import top_down_results

    if args.model and args.model_path and args.model != args.model_path:
        raise CommandError(f"give the model once: --model {args.model!r} or {args.model_path!r}, not both")
    args.model = args.model or args.model_path
    if not args.model:
        raise CommandError("give the model to evaluate: --model FOLDER_OR_HUB_ID")
    if (args.annotations is None) == (args.hub_dataset is None):
        raise CommandError(
            "give exactly one data source: --annotations COCO.json (with --images FOLDER) or --hub-dataset FOLDER"
        )
    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be positive, got {args.batch_size}")
    gt, items = _coco_source(args) if args.annotations else _hub_source(args)
    gt, items = _restrict(gt, items, args.max_images)
    _check_image_files(items, args)
    from vitpose_hf.inference.bottom_up import is_bottom_up_checkpoint

    if is_bottom_up_checkpoint(args.model):
        return _evaluate_bottom_up(args, gt, items)
    if args.bbox_file:
        skipped, removed = _detection_boxes(args.bbox_file, items, args.det_score_thr, args.det_category)
        if skipped:
            print(f"note: {skipped} detections refer to images outside the evaluated set; skipped", file=sys.stderr)
        if removed:
            print(
                f"note: --det-category {args.det_category} removed {removed} detection(s) of other categories "
                "(--det-category -1 keeps all)",
                file=sys.stderr,
            )
    else:
        _gt_boxes(gt, items)
    num_boxes = sum(len(item.boxes) for item in items)

    model, processor, info, index, device, dtype = _load_model(args)
    poses: list[dict[str, Any]] = []
    with tqdm(total=len(items), desc=f"eval {info['name']}", unit="img", disable=args.no_progress) as bar:
        bar.update(sum(1 for item in items if not item.boxes))
        for group in _groups(items, args.batch_size):
            poses.extend(_predict(model, processor, info, index, group, args, device, dtype))
            bar.update(len(group))

    results = top_down_results(poses, info, vis_thr=args.vis_thr, oks_thr=args.oks_thr, use_nms=not args.no_nms)
    title = (
        f"{info['name']}: {len(items)} images, {num_boxes} boxes "
        f"({'detections' if args.bbox_file else 'ground-truth boxes'}), flip test {'on' if args.flip_test else 'off'}"
    )
    return _score_and_write(args, gt, results, info, title, {"num_images": len(items), "num_boxes": num_boxes})


class _BottomUpRows:
    """The evaluated images as the Hub-schema rows (``image``, ``image_id``) that the bottom-up helpers read, loaded
    one at a time (with a progress bar)."""

    def __init__(self, items: list[_Item], bar: Any) -> None:
        self.items, self.bar = items, bar

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        row = {"image": item.load(), "image_id": item.image_id}
        self.bar.update(1)
        return row


def _evaluate_bottom_up(args: argparse.Namespace, gt: dict[str, Any], items: list[_Item]) -> int:
    """A bottom-up checkpoint: whole images, its own people, the same COCO OKS metrics and output files."""
    from tqdm.auto import tqdm

    from vitpose_hf.inference.bottom_up import BottomUpPoseEstimator
    from vitpose_hf.training.bottom_up import bottom_up_coco_results

    if args.bbox_file:
        raise CommandError("--boxes does not apply to a bottom-up model: it finds the people in the whole image itself")
    if args.dtype not in ("fp32", "auto"):
        raise CommandError(f"--dtype {args.dtype} is not supported for bottom-up models (they run in fp32)")
    device = _device(args.device)
    try:
        estimator = BottomUpPoseEstimator(
            args.model,
            flip_test=args.flip_test,
            dataset=0 if args.dataset is None else args.dataset,
            device=device,
            batch_size=args.batch_size,
        )
    except (KeyError, IndexError) as exc:  # an unknown --dataset head
        raise CommandError(f"--dataset {args.dataset!r}: {str(exc).strip(chr(39))}") from None
    info = estimator.model.config.datasets[estimator.dataset_index]
    with tqdm(total=len(items), desc=f"eval {info['name']} (bottom-up)", unit="img", disable=args.no_progress) as bar:
        results = bottom_up_coco_results(estimator, _BottomUpRows(items, bar))
    if not results:
        raise CommandError("the model found no people in any image; COCO AP is undefined without predictions")
    title = (
        f"{info['name']}: {len(items)} images, bottom-up ({len(results)} people found), "
        f"flip test {'on' if args.flip_test else 'off'}"
    )
    extra = {"paradigm": "bottom-up", "num_images": len(items), "num_people": len(results)}
    return _score_and_write(args, gt, results, info, title, extra)


def _score_and_write(
    args: argparse.Namespace,
    gt: dict[str, Any],
    results: list[dict[str, Any]],
    info: dict[str, Any],
    title: str,
    extra: dict[str, Any],
) -> int:
    """Write the COCO results, score them against ``gt``, print the table and write the metrics json."""
    from vitpose_hf.evaluation.metrics import coco_keypoint_metrics, format_metrics

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
        json.dump(results, f)
    metrics = coco_keypoint_metrics(gt, results, info)
    print(format_metrics(metrics, title=title))
    metrics_path = Path(args.metrics_output) if args.metrics_output else output.with_name(f"{output.stem}_metrics.json")
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    with open(metrics_path, "w", encoding="utf-8") as f:
        json.dump(
            {
                "dataset": info["name"],
                "model": str(args.model),
                **extra,
                "flip_test": bool(args.flip_test),
                "metrics": metrics,
            },
            f,
            indent=2,
        )
    print(f"results: {os.fspath(output)}\nmetrics: {os.fspath(metrics_path)}")
    return 0
