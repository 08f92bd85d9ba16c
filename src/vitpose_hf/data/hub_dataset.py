"""The Hub dataset schema for keypoint data, COCO json -> `datasets.Dataset` conversion, and instance explosion.

Schema (one row per image, parquet / Arrow; `keypoint_features()`):

- ``image``: ``datasets.Image()`` (the original encoded bytes, not re-encoded)
- ``image_id``: int64, ``file_name``: string, ``width`` / ``height``: int32 (pixels)
- ``objects``: a list with one entry per annotated instance, each
  ``{"id": int64, "category_id": int64, "bbox": [x, y, w, h] float32 (COCO xywh, pixels), "keypoints": K x [x, y, v]
  float32 (v: 0 unlabelled, 1 labelled but hidden, 2 visible), "iscrowd": int32, "area": float32 or null}``

The keypoint layout (names, flip pairs, skeleton, OKS sigmas, ...; see `keypoint_metadata`) is not a column: it is
written next to the data as ``keypoint_info.json`` (``save_to_disk`` folder or Hub dataset repo), or named on the
training command line (``--dataset_layout coco``).

Training is top-down: one sample per person instance. `explode_instances` turns image rows into instance rows
(every non-crowd annotation with at least one labelled keypoint) and gives each candidate a ``status``; bad
annotations are skipped and counted, never fatal:

- ``malformed``: a bbox that is not 4 numbers, keypoints or area that are not numbers;
- ``non_finite``: NaN or infinite bbox / keypoint / area values;
- ``wrong_num_keypoints``: not K keypoints for the dataset's layout;
- ``zero_area``: the box clipped to the image (as the official COCO loader does) has no area, or ``area`` is 0;
- ``keypoints_outside_image``: a labelled keypoint more than 1 px outside ``[0, width] x [0, height]``.

Crowd regions (``crowd``) and instances without labelled keypoints (``no_keypoints``) are counted too, but they are
normal COCO content (evaluation uses them), not errors.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vitpose_hf.boxes import clip_box_to_image
from vitpose_hf.images import read_image_size
from vitpose_hf.keypoint_metadata import get_dataset_info, infer_flip_pairs, match_builtin_dataset

__all__ = [
    "BAD_STATUSES",
    "KEYPOINT_INFO_FILE",
    "add_arguments",
    "check_instance",
    "coco_to_dataset",
    "explode_batch",
    "explode_instances",
    "find_layout",
    "format_counts",
    "infer_layout",
    "instance_features",
    "keypoint_features",
    "load_image_split",
    "log_counts",
    "read_layout",
    "run",
    "write_layout",
]

logger = logging.getLogger(__name__)

KEYPOINT_INFO_FILE = "keypoint_info.json"
# statuses of candidate instances that are malformed (skipped and counted as bad annotations)
BAD_STATUSES = ("malformed", "non_finite", "wrong_num_keypoints", "zero_area", "keypoints_outside_image")
# statuses of annotations that are valid COCO content but not training instances
UNUSED_STATUSES = ("crowd", "no_keypoints")
# a labelled keypoint may sit this far (px) outside the image before the instance counts as bad
OUTSIDE_TOLERANCE = 1.0


# ---------------------------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------------------------
def _object_feature() -> dict:
    from datasets import Sequence, Value

    return {
        "id": Value("int64"),
        "category_id": Value("int64"),
        "bbox": Sequence(Value("float32"), length=4),
        "keypoints": Sequence(Sequence(Value("float32"), length=3)),
        "iscrowd": Value("int32"),
        "area": Value("float32"),
    }


def keypoint_features():
    """`datasets.Features` of the image-level schema (see the module docstring)."""
    from datasets import Features, Image, Value

    return Features(
        {
            "image": Image(),
            "image_id": Value("int64"),
            "file_name": Value("string"),
            "width": Value("int32"),
            "height": Value("int32"),
            # a python list of a dict = a list of structs (each instance one dict), in datasets 3.x and 4+
            "objects": [_object_feature()],
        }
    )


def instance_features():
    """`datasets.Features` of exploded instance rows (no image: ``row`` points back into the image dataset)."""
    from datasets import Features, Sequence, Value

    return Features(
        {
            "row": Value("int64"),
            "image_id": Value("int64"),
            "object_index": Value("int32"),
            "instance_id": Value("int64"),
            "bbox": Sequence(Value("float32"), length=4),
            "keypoints": Sequence(Sequence(Value("float32"), length=3)),
            "area": Value("float32"),
            "width": Value("int32"),
            "height": Value("int32"),
            "status": Value("string"),
        }
    )


# ---------------------------------------------------------------------------------------------------------------
# Checking one annotation
# ---------------------------------------------------------------------------------------------------------------
def _as_float_array(value: Any) -> np.ndarray | None:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None


def check_instance(
    obj: Mapping[str, Any], num_keypoints: int, width: float | None, height: float | None
) -> tuple[str, list[float] | None, np.ndarray | None]:
    """Classify one annotation as a top-down training instance.

    Args:
        obj: ``{"bbox": [x, y, w, h], "keypoints": (K, 3) or flat 3K, "iscrowd", "area"}``.
        num_keypoints: K of the dataset layout.
        width, height: image size in pixels (None: unknown, no clipping or outside check).

    Returns:
        ``(status, clean_bbox, keypoints)``: status ``"ok"`` or a reason from `BAD_STATUSES` / ``"crowd"`` /
        ``"no_keypoints"``; the box clipped to the image as the official loader does (xywh) and the ``(K, 3)``
        keypoints when the status is ``"ok"``, else None.
    """
    kps = _as_float_array(obj.get("keypoints"))
    box = _as_float_array(obj.get("bbox"))
    area = obj.get("area")
    area_value = None if area is None else _as_float_array(area)
    if (
        kps is None
        or box is None
        or box.shape != (4,)
        or (area is not None and (area_value is None or area_value.ndim))
    ):
        return "malformed", None, None
    if kps.ndim == 1 and kps.size % 3 == 0:
        kps = kps.reshape(-1, 3)
    if kps.ndim != 2 or kps.shape != (num_keypoints, 3):
        return "wrong_num_keypoints", None, None
    if not (np.isfinite(kps).all() and np.isfinite(box).all()) or (area is not None and not np.isfinite(area_value)):
        return "non_finite", None, None
    if obj.get("iscrowd"):
        return "crowd", None, None
    labelled = kps[:, 2] > 0
    if not labelled.any():
        return "no_keypoints", None, None
    # official COCO loader: clip the box to the image, keep it only with a positive size and area
    clean = clip_box_to_image(box.tolist(), width, height)
    if clean is None or (area is not None and float(area_value) <= 0):
        return "zero_area", None, None
    if width is not None and height is not None:
        xy = kps[labelled, :2]
        tol = OUTSIDE_TOLERANCE
        if (xy < -tol).any() or (xy[:, 0] > width + tol).any() or (xy[:, 1] > height + tol).any():
            return "keypoints_outside_image", None, None
    return "ok", clean, kps


def format_counts(counts: Mapping[str, int]) -> str:
    """``"non_finite=1, zero_area=2"`` (sorted, zero counts left out); ``"none"`` when empty."""
    parts = [f"{k}={v}" for k, v in sorted(counts.items()) if v]
    return ", ".join(parts) if parts else "none"


# ---------------------------------------------------------------------------------------------------------------
# Instance explosion
# ---------------------------------------------------------------------------------------------------------------
def explode_batch(batch: Mapping[str, list], indices: Sequence[int], num_keypoints: int) -> dict[str, list]:
    """Batched-map function: image rows -> one row per candidate instance, with its ``status``.

    ``batch`` holds ``objects`` and optionally ``image_id``, ``width``, ``height``; ``indices`` are the rows' indices
    in the image dataset. Columns of the output: `instance_features`.
    """
    out: dict[str, list] = {name: [] for name in instance_features()}
    n_rows = len(batch["objects"])
    image_ids = batch.get("image_id") or list(indices)
    widths = batch.get("width") or [None] * n_rows
    heights = batch.get("height") or [None] * n_rows
    empty_kps = [[0.0, 0.0, 0.0]] * num_keypoints
    for r in range(n_rows):
        for j, obj in enumerate(batch["objects"][r] or []):
            status, box, kps = check_instance(obj, num_keypoints, widths[r], heights[r])
            out["row"].append(int(indices[r]))
            out["image_id"].append(int(image_ids[r]) if image_ids[r] is not None else int(indices[r]))
            out["object_index"].append(j)
            out["instance_id"].append(int(obj["id"]) if obj.get("id") is not None else -1)
            out["bbox"].append(box if box is not None else [0.0, 0.0, 0.0, 0.0])
            out["keypoints"].append(kps.tolist() if kps is not None else empty_kps)
            area = obj.get("area")
            out["area"].append(float(area) if status == "ok" and area is not None else None)
            out["width"].append(widths[r])
            out["height"].append(heights[r])
            out["status"].append(status)
    return out


def explode_instances(images, num_keypoints: int, num_proc: int | None = None, name: str = "dataset"):
    """Instance rows of an image-level `datasets.Dataset` and the count of every skip reason.

    Args:
        images: a `datasets.Dataset` in the schema of `keypoint_features` (the ``image`` column is not read).
        num_keypoints: K of the layout.
        num_proc: worker processes for the batched map (large datasets).
        name: used in the log line.

    Returns:
        ``(instances, counts)``: a `datasets.Dataset` in memory with the ``"ok"`` instances (columns of
        `instance_features`), and a `Counter` of the statuses of all candidates (``"ok"`` included).
    """
    columns = [c for c in ("image_id", "width", "height", "objects") if c in images.column_names]
    if "objects" not in columns:
        raise ValueError(f"{name}: the dataset has no 'objects' column (columns: {images.column_names})")
    meta = images.select_columns(columns)
    exploded = meta.map(
        explode_batch,
        batched=True,
        with_indices=True,
        remove_columns=columns,
        features=instance_features(),
        fn_kwargs={"num_keypoints": num_keypoints},
        keep_in_memory=True,  # small (no images); never write cache files next to a read-only dataset
        num_proc=num_proc,
        desc=f"exploding {name} into instances",
    )
    status = np.asarray(exploded["status"], dtype=object)
    counts = Counter(status.tolist())
    ok = np.flatnonzero(status == "ok")
    instances = exploded.select(ok, keep_in_memory=True).flatten_indices(keep_in_memory=True)
    log_counts(name, counts)
    return instances, counts


def log_counts(name: str, counts: Mapping[str, int]) -> None:
    """One log line: usable instances, bad annotations skipped, unused annotations."""
    bad = {k: counts.get(k, 0) for k in BAD_STATUSES if counts.get(k, 0)}
    unused = {k: counts.get(k, 0) for k in UNUSED_STATUSES if counts.get(k, 0)}
    message = (
        f"{name}: {counts.get('ok', 0)} instances; skipped {sum(bad.values())} bad annotations "
        f"({format_counts(bad)}); not instances: {format_counts(unused)}"
    )
    (logger.warning if bad else logger.info)(message)


# ---------------------------------------------------------------------------------------------------------------
# COCO json -> Dataset
# ---------------------------------------------------------------------------------------------------------------
def infer_layout(coco: Mapping[str, Any], name: str | None = None) -> dict:
    """Keypoint layout of a COCO keypoint json, from its categories' ``keypoints`` names.

    A built-in layout (coco, aic, ap10k, ...) is returned when the names match it; otherwise a custom layout
    with the json's names, its 1-based ``skeleton`` made 0-based, flip pairs found from left/right names, no
    OKS sigmas (set them in a layout json to get COCO AP) and no half-body split.
    """
    categories = [c for c in coco.get("categories") or [] if c.get("keypoints")]
    if not categories:
        raise ValueError("the json has no category with a 'keypoints' list: pass the layout explicitly")
    names = list(categories[0]["keypoints"])
    builtin = match_builtin_dataset(names)
    if builtin is not None:
        return get_dataset_info(builtin)
    flips = infer_flip_pairs(names)
    skeleton = []
    for link in categories[0].get("skeleton") or []:
        a, b = int(link[0]) - 1, int(link[1]) - 1
        if 0 <= a < len(names) and 0 <= b < len(names) and a != b and [a, b] not in skeleton and [b, a] not in skeleton:
            skeleton.append([a, b])
    return get_dataset_info(
        {
            "name": name or str(categories[0].get("name") or "custom"),
            "keypoint_names": names,
            "flip_pairs": flips,
            "skeleton": skeleton,
        }
    )


def _parse_annotation(ann: Mapping[str, Any], num_keypoints: int) -> tuple[str, dict | None]:
    """(status, object row) for the converter: only unusable structure is dropped here."""
    box = _as_float_array(ann.get("bbox"))
    kps = _as_float_array(ann.get("keypoints"))
    if box is None or box.shape != (4,) or kps is None or kps.ndim != 1 or kps.size % 3:
        return "malformed", None
    if kps.size // 3 != num_keypoints:
        return "wrong_num_keypoints", None
    area = ann.get("area")
    area = None if area is None else _as_float_array(area)
    if not (np.isfinite(box).all() and np.isfinite(kps).all()) or (area is not None and not np.isfinite(area).all()):
        return "non_finite", None
    return "ok", {
        "id": int(ann["id"]) if ann.get("id") is not None else None,
        "category_id": int(ann.get("category_id", 1)),
        "bbox": box.tolist(),
        "keypoints": kps.reshape(-1, 3).tolist(),
        "iscrowd": int(bool(ann.get("iscrowd", 0))),
        "area": None if area is None else float(area),
    }


def _generate_rows(records: list[dict]) -> Iterator[dict]:
    for rec in records:
        with open(rec["path"], "rb") as f:
            data = f.read()
        yield {
            "image": {"bytes": data, "path": rec["file_name"]},
            "image_id": rec["image_id"],
            "file_name": rec["file_name"],
            "width": rec["width"],
            "height": rec["height"],
            "objects": rec["objects"],
        }


def coco_to_dataset(
    annotations: str | os.PathLike | Mapping[str, Any],
    images: str | os.PathLike | None = None,
    layout: str | Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike | None = None,
    name: str | None = None,
):
    """Convert a COCO keypoint json and its image folder into the Hub schema.

    Every image of the json becomes one row (images without annotations too: they are negatives for
    evaluation), with all its annotations as ``objects``. Annotations are kept as they are (crowd regions, zero
    keypoints, zero area: evaluation needs them), except unusable ones, which are dropped and counted:
    malformed fields, NaN/inf values, and the wrong number of keypoints. Images missing on disk are skipped and
    counted.

    Args:
        annotations: json path or already loaded dict.
        images: image folder (``file_name`` is relative to it); default: the json's folder.
        layout: keypoint layout (built-in name, info dict or json file); default: inferred from the categories.
        cache_dir: where `datasets` writes the Arrow files (its default cache otherwise).
        name: name for a custom inferred layout and the log.

    Returns:
        ``(dataset, layout_info, counts)``: a `datasets.Dataset` with `keypoint_features`, the layout info dict,
        and a `Counter` with ``images``, ``annotations`` (kept) and every drop reason.
    """
    import datasets

    if isinstance(annotations, Mapping):
        coco, base = annotations, None
    else:
        path = Path(annotations)
        if not path.is_file():
            raise ValueError(f"annotations file not found: {str(path)!r}")
        with open(path, encoding="utf-8") as f:
            coco = json.load(f)
        base = path.parent
    if not isinstance(coco, Mapping) or "images" not in coco or "annotations" not in coco:
        raise ValueError("not a COCO keypoint json: it needs 'images' and 'annotations'")
    folder = Path(images) if images is not None else base
    if folder is None or not folder.is_dir():
        raise ValueError(f"image folder not found: {str(folder)!r}")
    info = read_layout(layout) if layout is not None else infer_layout(coco, name)
    k = info["num_keypoints"]

    counts: Counter = Counter()
    by_image: dict[Any, list[dict]] = {}
    image_ids = {img.get("id") for img in coco["images"]}
    for ann in coco["annotations"]:
        if ann.get("image_id") not in image_ids:
            counts["unknown_image"] += 1
            continue
        status, obj = _parse_annotation(ann, k)
        if obj is None:
            counts[status] += 1
            continue
        by_image.setdefault(ann["image_id"], []).append(obj)
    next_id = max([o["id"] for objs in by_image.values() for o in objs if o["id"] is not None] + [0]) + 1
    records = []
    for img in coco["images"]:
        file_path = folder / img["file_name"]
        objs = by_image.get(img["id"], [])
        if not file_path.is_file():
            counts["missing_image"] += 1
            counts["annotations_of_missing_images"] += len(objs)
            continue
        width, height = img.get("width"), img.get("height")
        if width is None or height is None:
            height, width = read_image_size(file_path)  # the header only; EXIF-oriented, as decoded
        for obj in objs:
            if obj["id"] is None:
                obj["id"], next_id = next_id, next_id + 1
        records.append(
            {
                "path": str(file_path),
                "file_name": img["file_name"],
                "image_id": int(img["id"]),
                "width": int(width),
                "height": int(height),
                "objects": objs,
            }
        )
        counts["images"] += 1
        counts["annotations"] += len(objs)
    if not records:
        raise ValueError(f"no image of the json was found under {str(folder)!r}")
    # the cache key covers the annotations and each image file's size and mtime: editing either reconverts
    digest = hashlib.sha256(json.dumps(records, sort_keys=True).encode())
    for rec in records:
        stat = os.stat(rec["path"])
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    dataset = datasets.Dataset.from_generator(
        _generate_rows,
        features=keypoint_features(),
        gen_kwargs={"records": records},
        cache_dir=str(cache_dir) if cache_dir is not None else None,
        fingerprint=digest.hexdigest()[:32],
    )
    dropped = {key: v for key, v in counts.items() if key not in ("images", "annotations")}
    (logger.warning if dropped else logger.info)(
        f"{name or info['name']}: converted {counts['images']} images, {counts['annotations']} annotations; "
        f"dropped: {format_counts(dropped)}"
    )
    return dataset, info, counts


# ---------------------------------------------------------------------------------------------------------------
# Layout files and loading
# ---------------------------------------------------------------------------------------------------------------
def read_layout(layout: str | os.PathLike | Mapping[str, Any]) -> dict:
    """A layout from a built-in name, an info dict, a json file, or a dataset folder holding `KEYPOINT_INFO_FILE`."""
    if isinstance(layout, Mapping):
        return get_dataset_info(dict(layout))
    text = str(layout)
    if os.path.isdir(text):
        text = os.path.join(text, KEYPOINT_INFO_FILE)
    if os.path.isfile(text):
        with open(text, encoding="utf-8") as f:
            return get_dataset_info(json.load(f))
    return get_dataset_info(text)


def write_layout(info: Mapping[str, Any], folder: str | os.PathLike) -> str:
    """Write the layout as `KEYPOINT_INFO_FILE` in ``folder``; returns the path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(str(folder), KEYPOINT_INFO_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(dict(info), f, indent=2)
    return path


def find_layout(name_or_path: str) -> dict | None:
    """The layout stored with a dataset (local folder or Hub dataset repo), or None."""
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, KEYPOINT_INFO_FILE)
        return read_layout(path) if os.path.isfile(path) else None
    try:
        from huggingface_hub import hf_hub_download

        return read_layout(hf_hub_download(name_or_path, KEYPOINT_INFO_FILE, repo_type="dataset"))
    except Exception:  # offline, no such file, private repo: the caller asks for --dataset_layout
        return None


def load_image_split(name_or_path: str, split: str, streaming: bool = False, cache_dir: str | None = None):
    """One split of an image-level keypoint dataset, or None when the split does not exist.

    ``name_or_path``: a ``save_to_disk`` folder (Dataset or DatasetDict; a plain Dataset counts as ``train``), a
    folder of parquet files, or a Hub dataset id. With ``streaming`` a `datasets.IterableDataset` is returned.
    """
    import datasets

    if os.path.isdir(name_or_path) and (
        os.path.isfile(os.path.join(name_or_path, "dataset_dict.json"))
        or os.path.isfile(os.path.join(name_or_path, "state.json"))
    ):
        loaded = datasets.load_from_disk(name_or_path)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                return None
            ds = loaded[split]
        else:
            if split != "train":
                return None
            ds = loaded
        if streaming:
            shards = max(1, min(64, ds.num_rows // 64))
            ds = ds.to_iterable_dataset(num_shards=shards)
        return ds
    from vitpose_hf.inference.hub import check_local_path, hub_reachable, unreachable_error

    check_local_path(name_or_path, "dataset", "--dataset-name")
    if os.path.isdir(name_or_path) or not hub_reachable():
        # a folder of data files, or a Hub name that only the cache can serve: no network round trips
        try:
            return datasets.load_dataset(name_or_path, split=split, streaming=streaming, cache_dir=cache_dir)
        except ValueError as exc:  # "Unknown split"
            if "split" in str(exc).lower():
                return None
            raise
        except Exception as exc:  # noqa: BLE001 - datasets' many "not cached / no connection" errors
            if os.path.isdir(name_or_path):
                raise
            raise unreachable_error(name_or_path, "dataset", "--dataset-name") from exc
    try:
        return datasets.load_dataset(name_or_path, split=split, streaming=streaming, cache_dir=cache_dir)
    except ValueError as exc:  # "Unknown split"
        if "split" in str(exc).lower():
            return None
        raise


# ---------------------------------------------------------------------------------------------------------------
# Command line: vitpose-hf convert-dataset / scripts/coco_to_hub_dataset.py
# ---------------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vitpose-hf convert-dataset`."""
    parser.add_argument(
        "--annotations",
        action="append",
        required=True,
        help="COCO keypoint json; repeat with --split for several splits",
    )
    parser.add_argument(
        "--images", action="append", help="image folder of each --annotations (default: the json's folder)"
    )
    parser.add_argument("--split", action="append", help="split name of each --annotations (default: train)")
    parser.add_argument(
        "--output", required=True, help="folder for save_to_disk (a DatasetDict); must not exist, see --overwrite"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --output folder (the new dataset is written beside it, then swapped in)",
    )
    parser.add_argument(
        "--layout",
        help="keypoint layout: built-in name (coco, aic, ap10k, ...) or a layout json; "
        "default: inferred from the json's categories",
    )
    parser.add_argument("--name", help="name of an inferred custom layout (default: from the json's category)")
    parser.add_argument(
        "--cache-dir", help="datasets cache folder used while converting (default: the Hugging Face cache)"
    )
    parser.add_argument(
        "--push-to-hub", metavar="REPO_ID", help="also push the dataset (and its layout) to this Hub repo"
    )
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")


def _replace_folder(new: str, target: str) -> None:
    """Swap the finished folder ``new`` in at ``target``: the old folder (if any) is renamed away first, so that
    ``target`` never holds a mix of old and new splits, and deleted only when the new one is in place."""
    old = None
    if os.path.exists(target):
        old = f"{target}.old-{os.getpid()}"
        os.replace(target, old)
    try:
        os.replace(new, target)
    except OSError:
        if old is not None:
            os.replace(old, target)  # put the old dataset back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    """Run `vitpose-hf convert-dataset`; bad options raise :class:`vitpose_hf_cli.CommandError` (one line)."""
    import datasets

    from vitpose_hf_cli import CommandError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    n = len(args.annotations)
    images = args.images or [None] * n
    splits = args.split or (["train"] if n == 1 else [])
    if len(images) != n or len(splits) != n:
        raise CommandError(
            f"give one --images and one --split per --annotations ({n}), got {len(images)} and {len(splits)}"
        )
    if len(set(splits)) != n:
        raise CommandError(f"split names must be unique, got {splits}")
    output = os.path.normpath(args.output)
    if os.path.exists(output) and not getattr(args, "overwrite", False):
        raise CommandError(
            f"--output {args.output!r} already exists; pass --overwrite to replace it (the whole folder: stale "
            "splits do not survive), or choose another folder"
        )
    for ann in args.annotations:
        if not os.path.isfile(ann):
            raise CommandError(f"--annotations {ann!r}: no such file")
    parts, layout = {}, None
    for ann, img, split in zip(args.annotations, images, splits):
        print(f"{split}: reading {ann} and its images ...", file=sys.stderr, flush=True)
        try:
            ds, info, counts = coco_to_dataset(ann, img, args.layout, cache_dir=args.cache_dir, name=args.name)
        except ValueError as exc:
            raise CommandError(f"{split}: {exc}") from exc
        if layout is not None and info["keypoint_names"] != layout["keypoint_names"]:
            raise CommandError(f"split {split!r} has another keypoint layout than the previous splits")
        layout = info
        parts[split] = ds
        print(
            f"{split}: {counts['images']} images, {counts['annotations']} annotations "
            f"(dropped: {format_counts({k: v for k, v in counts.items() if k not in ('images', 'annotations')})})"
        )
    dataset = datasets.DatasetDict(parts)
    staging = f"{output}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        dataset.save_to_disk(staging)
        write_layout(layout, staging)
        _replace_folder(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(
        f"saved {', '.join(f'{k}: {v.num_rows} rows' for k, v in dataset.items())} to {args.output} "
        f"(layout {layout['name']!r}, {layout['num_keypoints']} keypoints)"
    )
    if args.push_to_hub:
        from huggingface_hub import HfApi

        dataset.push_to_hub(args.push_to_hub, private=args.private)
        HfApi().upload_file(
            path_or_fileobj=os.path.join(args.output, KEYPOINT_INFO_FILE),
            path_in_repo=KEYPOINT_INFO_FILE,
            repo_id=args.push_to_hub,
            repo_type="dataset",
        )
        print(f"pushed to https://huggingface.co/datasets/{args.push_to_hub}")
    return 0


def main(argv: Iterable[str] | None = None) -> int:
    """`scripts/coco_to_hub_dataset.py`: the same as `vitpose-hf convert-dataset`."""
    from vitpose_hf_cli import main as cli_main

    return cli_main(["convert-dataset", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
