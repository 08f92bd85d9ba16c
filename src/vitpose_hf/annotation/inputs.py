"""What ``vitpose-hf annotate`` reads: the image dataset, its image column, and the person boxes of each row.

Datasets: a Hub dataset id, a ``save_to_disk`` folder, or a plain folder of images (``datasets``' ``imagefolder``,
whose ``metadata.jsonl`` / ``metadata.csv`` columns, boxes included, come along). Rows are read with the image
column undecoded, so that each image is decoded on its own and an unreadable one is a counted skip, not a crash.

Boxes of a row come from one of

- a column (``--box-column``) holding a list of boxes per row, ``[[x, y, w, h], ...]`` in ``--box-format``; a dotted
  name such as ``objects.bbox`` reads a field of a list of structs (the project's Hub schema);
- a boxes file (``--boxes``): COCO detection results, a COCO annotation file or a file name -> boxes mapping (see
  ``vitpose-hf predict``), matched to rows by image id (``--id-column``) or file name;
- a detector, or the whole image, in the pose pipeline.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from vitpose_hf.boxes import convert_boxes, short_repr, validate_boxes
from vitpose_hf.cli.predict import COCO_CATEGORY_NAMES, BoxTable, InputError, load_boxes_file
from vitpose_hf.images import load_image

__all__ = [
    "BoxColumn",
    "BoxFile",
    "DatasetReader",
    "InputError",
    "RowImage",
    "find_image_column",
    "open_dataset",
]

_SAVED_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")


# ----------------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------------
def open_dataset(
    source: str, split: str | None = None, config_name: str | None = None, revision: str | None = None
) -> Any:
    """One split of a Hub dataset, a ``save_to_disk`` folder or an image folder, as a ``datasets.Dataset``.

    ``split`` may be omitted when there is only one. Raises :class:`InputError` for a missing folder or split.
    """
    import datasets

    path = Path(source)
    if path.is_dir():
        if any((path / name).is_file() for name in _SAVED_MARKERS):
            loaded = datasets.load_from_disk(str(path))
        elif any(p.suffix == ".parquet" for p in path.rglob("*.parquet")):
            loaded = datasets.load_dataset("parquet", data_dir=str(path))
        else:
            try:
                loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
            except (ValueError, FileNotFoundError) as exc:
                raise InputError(
                    f"the folder {source!r} is no save_to_disk dataset and holds no images ({exc})"
                ) from None
    elif source.startswith((".", "/", "~")) or os.sep in source.strip("/").replace("/", "", 1):
        raise InputError(f"no such dataset folder: {source!r}")
    else:
        try:
            # only the split asked for is downloaded
            loaded = datasets.load_dataset(source, name=config_name, split=split, revision=revision)
        except ValueError as exc:
            if "split" in str(exc).lower():  # datasets' "Unknown split"
                raise InputError(f"{source!r} has no split {split!r} ({exc})") from None
            raise
        except (FileNotFoundError, ConnectionError) as exc:  # datasets' DatasetNotFoundError is a FileNotFoundError
            raise InputError(f"cannot load the Hub dataset {source!r} (nor is it a local folder): {exc}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split is None:
            if len(loaded) != 1:
                raise InputError(f"{source!r} has the splits {sorted(loaded)}: choose one with --split")
            split = next(iter(loaded))
        if split not in loaded:
            raise InputError(f"{source!r} has no split {split!r}; its splits are {sorted(loaded)}")
        return loaded[split]
    if split is not None and split != "train" and split != str(getattr(loaded, "split", None) or ""):
        raise InputError(f"{source!r} is a single dataset, not a dataset with the split {split!r}")
    return loaded


def find_image_column(features: Mapping[str, Any], requested: str | None = None) -> str:
    """The column that holds the images: ``requested``, else the only ``datasets.Image`` column.

    An image column is a ``datasets.Image`` feature or a string column of file paths (``requested`` only).
    """
    import datasets

    columns = list(features)
    if requested is not None:
        if requested not in features:
            raise InputError(f"--image-column {requested!r} is not a column of the dataset (columns: {columns})")
        feature = features[requested]
        if not (isinstance(feature, datasets.Image) or getattr(feature, "dtype", None) in ("string", "large_string")):
            raise InputError(
                f"--image-column {requested!r} is a {feature!r} column; it must be an Image column or a string "
                "column of image paths"
            )
        return requested
    found = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
    if not found:
        raise InputError(
            f"the dataset has no image column (columns: {columns}); name a column of image paths with --image-column"
        )
    if len(found) > 1:
        raise InputError(f"the dataset has several image columns {found}: choose one with --image-column")
    return found[0]


@dataclass
class RowImage:
    """One decoded row image, or the reason it could not be read."""

    image: Any = None
    error: str | None = None
    file_name: str | None = None


def _first_of(features: Mapping[str, Any], names: Sequence[str], kinds: tuple[str, ...]) -> str | None:
    for name in names:
        if name in features and getattr(features[name], "dtype", None) in kinds:
            return name
    return None


_INT_KINDS = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
_STRING_KINDS = ("string", "large_string")


class DatasetReader:
    """Reads the rows of a dataset: decoded images (one at a time), ids, file names and raw column values."""

    def __init__(
        self,
        dataset: Any,
        image_column: str | None = None,
        id_column: str | None = None,
        image_root: str | os.PathLike | None = None,
    ) -> None:
        import datasets

        features = dataset.features
        self.image_column = find_image_column(features, image_column)
        self.is_image_feature = isinstance(features[self.image_column], datasets.Image)
        if self.is_image_feature:
            # undecoded: {"bytes", "path"} per row; decoding each image by itself turns a bad one into a skip
            dataset = dataset.cast_column(self.image_column, datasets.Image(decode=False))
        self.decoder = datasets.Image() if self.is_image_feature else None
        if id_column is not None and id_column not in features:
            raise InputError(f"--id-column {id_column!r} is not a column of the dataset (columns: {list(features)})")
        self.id_column = id_column or _first_of(features, ("image_id", "id"), _INT_KINDS)
        id_kind = getattr(features[self.id_column], "dtype", None) if self.id_column else None
        self.id_is_int = id_kind in _INT_KINDS
        self.file_column = _first_of(features, ("file_name", "filename", "file"), _STRING_KINDS)
        self.image_root = Path(image_root) if image_root is not None else None
        self.dataset = dataset
        self.features = features
        self._views: dict[tuple[str, ...], Any] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, rows: range, columns: Sequence[str]) -> dict[str, list]:
        """The raw values of ``columns`` (and the image column, undecoded) for a range of rows."""
        wanted = tuple(c for c in dict.fromkeys([self.image_column, *columns]) if c is not None)
        view = self._views.get(wanted)
        if view is None:
            view = self._views[wanted] = self.dataset.select_columns(list(wanted))
        return view[rows.start : rows.stop]

    def image_id(self, batch: Mapping[str, list], j: int) -> Any:
        """The row's image id (int, or str for a string id column), or None without an id column."""
        if self.id_column is None:
            return None
        value = batch[self.id_column][j]
        if value is None:
            return None
        return int(value) if self.id_is_int else str(value)

    def decode(self, batch: Mapping[str, list], j: int) -> RowImage:
        """Decode the image of row ``j`` of ``batch``; a missing or unreadable image gives ``error``."""
        value = batch[self.image_column][j]
        file_name = batch[self.file_column][j] if self.file_column else None
        if value is None:
            return RowImage(error="no image (null)", file_name=file_name)
        if self.is_image_feature:
            path = value.get("path")
            if file_name is None and path:
                file_name = os.path.basename(path)
            try:
                image = self.decoder.decode_example(value)
            except (OSError, ValueError, SyntaxError, TypeError, PIL.Image.DecompressionBombError) as exc:
                return RowImage(error=f"cannot read the image {path or '(embedded bytes)'}: {exc}", file_name=file_name)
            return RowImage(image=image, file_name=file_name)
        path = Path(value)
        if self.image_root is not None and not path.is_absolute():
            path = self.image_root / path
        try:
            image = load_image(path)
        except (ValueError, PIL.Image.DecompressionBombError) as exc:
            return RowImage(error=str(exc), file_name=file_name or path.name)
        return RowImage(image=image, file_name=file_name or path.name)


# ----------------------------------------------------------------------------------------------------------------
# Boxes
# ----------------------------------------------------------------------------------------------------------------
def _list_depth(feature: Any) -> tuple[int, list[int], Any]:
    """Nesting of list features: (depth, fixed lengths (-1 = any), leaf feature)."""
    import datasets

    depth, lengths = 0, []
    while True:
        if isinstance(feature, (datasets.List, datasets.LargeList)):
            lengths.append(getattr(feature, "length", -1))
            feature = feature.feature
        elif isinstance(feature, list) and len(feature) == 1:  # the old [feature] spelling
            lengths.append(-1)
            feature = feature[0]
        else:
            return depth, lengths, feature
        depth += 1


_NUMBER_KINDS = {"float16", "float32", "float64", "double", "float", *_INT_KINDS}


@dataclass
class BoxColumn:
    """Boxes from a column: a list of ``[x, y, w, h]`` (``box_format``) per row, or ``struct_list.field``."""

    name: str
    box_format: str = "xywh"
    score_column: str | None = None
    threshold: float | None = None  # keeps boxes whose score (from score_column) reaches it
    column: str = field(init=False)
    struct_field: str | None = field(init=False, default=None)

    def check(self, features: Mapping[str, Any]) -> None:
        """Refuse, before any work, a missing column or one whose type cannot hold a list of 4-number boxes."""
        import datasets

        self.column, self.struct_field = self.name, None
        if self.name not in features and "." in self.name:
            self.column, self.struct_field = self.name.split(".", 1)
        if self.column not in features:
            raise InputError(f"--box-column {self.name!r} is not a column of the dataset (columns: {list(features)})")
        feature = features[self.column]
        if self.struct_field is not None:
            depth, _, leaf = _list_depth(feature)
            if depth != 1 or not isinstance(leaf, dict) or self.struct_field not in leaf:
                raise InputError(
                    f"--box-column {self.name!r}: {self.column!r} must be a list of structs with a field "
                    f"{self.struct_field!r}, got {feature!r}"
                )
            feature = [leaf[self.struct_field]]
        if isinstance(feature, datasets.Array2D):
            ok = feature.shape[-1] == 4
        else:
            depth, lengths, leaf = _list_depth(feature)
            ok = depth == 2 and lengths[1] in (-1, 4) and getattr(leaf, "dtype", None) in _NUMBER_KINDS
        if not ok:
            raise InputError(
                f"--box-column {self.name!r} must hold a list of boxes per row ([[x, y, w, h], ...], shape (M, 4)), "
                f"but its type is {feature!r}"
                + (
                    " (one flat list per row: wrap a single box as [[x, y, w, h]])"
                    if _list_depth(feature)[0] == 1
                    else ""
                )
            )
        if self.score_column is not None and self.score_column not in features:
            raise InputError(f"--box-score-column {self.score_column!r} is not a column of the dataset")
        if self.threshold is not None and self.score_column is None:
            raise InputError("--box-threshold with --box-column needs the scores: give --box-score-column")

    @property
    def columns(self) -> list[str]:
        """The dataset columns to read."""
        return [self.column] + ([self.score_column] if self.score_column else [])

    def boxes(self, batch: Mapping[str, list], j: int, row: int) -> tuple[np.ndarray, list[float | None]]:
        """The row's boxes as ``(M, 4)`` float64 xywh and their scores; ValueError naming the row when malformed."""
        value = batch[self.column][j]
        if value is not None and self.struct_field is not None:
            value = [item.get(self.struct_field) if isinstance(item, Mapping) else item for item in value]
        if value is None:
            value = []
        name = f"--box-column {self.name!r} at row {row}"
        try:
            validate_boxes(value, self.box_format, name=name)
        except (ValueError, TypeError) as exc:
            raise InputError(f"{exc} (value {short_repr(value)})") from None
        boxes = np.asarray(value, dtype=np.float64).reshape(-1, 4)
        boxes = np.asarray(convert_boxes(boxes, self.box_format, "xywh")).reshape(-1, 4)
        scores: list[float | None] = [None] * len(boxes)
        if self.score_column is not None:
            raw = batch[self.score_column][j] or []
            if len(raw) != len(boxes):
                raise InputError(
                    f"--box-score-column {self.score_column!r} at row {row} has {len(raw)} scores for "
                    f"{len(boxes)} boxes"
                )
            scores = [None if s is None else float(s) for s in raw]
            if self.threshold is not None:
                keep = [s is None or s >= self.threshold for s in scores]
                boxes, scores = boxes[np.asarray(keep, dtype=bool)], [s for s, k in zip(scores, keep) if k]
        return boxes, scores


class BoxFile:
    """Boxes from a ``--boxes`` file, matched to rows by image id, else by file name."""

    def __init__(
        self, path: str | os.PathLike, keep_labels: Sequence[str], threshold: float | None, box_format: str = "xywh"
    ) -> None:
        self.path = os.fspath(path)
        self.table: BoxTable = load_boxes_file(path, box_format)
        self.keep = {label.lower() for label in keep_labels}
        self.threshold = threshold

    def boxes(self, image_id: Any, file_name: str | None) -> tuple[np.ndarray, list[float | None]] | None:
        """``(M, 4)`` float64 xywh boxes and scores of one image, or None when the file has no entry for it."""
        entries = self.table.by_id.get(image_id) if isinstance(image_id, int) else None
        if entries is None and file_name:
            entries = self.table.lookup(Path(file_name))
        if entries is None:
            return None
        boxes, scores = [], []
        for box, score, category in entries:
            if category is not None and COCO_CATEGORY_NAMES.get(int(category), "").lower() not in self.keep:
                continue
            if self.threshold is not None and score is not None and score < self.threshold:
                continue
            boxes.append(convert_boxes(box, self.table.box_format, "xywh"))
            scores.append(score)
        array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        validate_boxes(array, "xywh", name=f"the --boxes of {file_name or image_id}")
        return array, scores
