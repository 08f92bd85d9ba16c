"""The annotation run: shards of a dataset through the pose pipeline, on every Accelerate process, resumable.

:func:`annotate` is what ``vitpose-hf annotate`` runs. Each process (``accelerate.PartialState``) writes the shards
``i % num_processes == process_index`` of :class:`~vitpose_hf.annotation.shards.ShardPlan`, skipping those a
previous run with the same settings completed; at the end the main process writes ``summary.json`` and a dataset
card, and pushes the Parquet files to the Hub when asked.

Output columns (one row per annotated image; people in box order; boxes always COCO ``xywh`` pixels):

=====================  ==============================================================================
``index``              the row of the input split (int64)
``image_id``           the row's id column (``image_id`` / ``id`` / ``--id-column``), null without one
``file_name``          the image's file name (``file_name`` column, else the image file's name), or null
``width``, ``height``  image size in pixels (int32)
``num_people``         number of people (int32)
``boxes``              ``(num_people, 4)`` float64 xywh
``box_scores``         ``(num_people,)`` float32, null for boxes without a score
``box_labels``         detector class per box (null for given boxes)
``keypoints``          ``(num_people, K, 2)`` float32 ``(x, y)`` pixels of the input image
``keypoint_scores``    ``(num_people, K)`` float32
``dataset``            the keypoint layout (model head), e.g. ``coco``
``model``              the pose model (``--model``)
=====================  ==============================================================================

Rows whose image cannot be read are left out and counted as skips (``summary.json`` lists each with its reason);
rows missing from a ``--boxes`` file get no people and are counted as ``unmatched``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from vitpose_hf.annotation.inputs import BoxColumn, BoxFile, DatasetReader, InputError, open_dataset
from vitpose_hf.annotation.shards import OutputFolder, ShardPlan, atomic_write_bytes, atomic_write_json, fingerprint

__all__ = ["FORMAT_VERSION", "IncompleteRunError", "annotate", "format_summary", "output_schema", "settings_of"]

FORMAT_VERSION = 1
# arguments that do not change the output: they may differ between a run and its resumption
_RUN_ONLY = {
    "output_dir",
    "overwrite",
    "no_progress",
    "batch_size",
    "images_per_call",
    "decode_workers",
    "device",
    "push_to_hub",
    "private",
    "token",
    "cpu",
}


class IncompleteRunError(RuntimeError):
    """Shards are missing at the end of a run (a process failed, or the machines do not share --output-dir)."""


def output_schema(image_id_is_int: bool) -> Any:
    """The ``pyarrow`` schema of the output shards (see the module docstring)."""
    import pyarrow as pa

    f32 = pa.float32()
    return pa.schema(
        [
            ("index", pa.int64()),
            ("image_id", pa.int64() if image_id_is_int else pa.string()),
            ("file_name", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("num_people", pa.int32()),
            ("boxes", pa.list_(pa.list_(pa.float64(), 4))),
            ("box_scores", pa.list_(f32)),
            ("box_labels", pa.list_(pa.string())),
            ("keypoints", pa.list_(pa.list_(pa.list_(f32, 2)))),
            ("keypoint_scores", pa.list_(pa.list_(f32))),
            ("dataset", pa.string()),
            ("model", pa.string()),
        ]
    )


def _file_sha256(path: str) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def settings_of(args: argparse.Namespace, num_rows: int, columns: list[str]) -> dict[str, Any]:
    """The settings that decide the output (all arguments but the run-only ones), with the input's size."""
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in _RUN_ONLY and not k.startswith("_")}
    for key in ("input", "model", "boxes", "image_root", "detector"):
        value = settings.get(key)
        if isinstance(value, (str, os.PathLike)) and os.path.exists(value):
            settings[key] = os.path.abspath(value)  # the same folder named another way is the same run
        elif value is not None and not isinstance(value, str):  # an object given through the Python API
            settings[key] = f"{type(value).__module__}.{type(value).__qualname__}"
    if getattr(args, "boxes", None):
        settings["boxes_sha256"] = _file_sha256(args.boxes)  # the same file name with other boxes is another run
    settings["num_rows"] = num_rows
    settings["columns"] = columns
    settings["format_version"] = FORMAT_VERSION
    return settings


def _process_state(cpu: bool) -> Any:
    """Accelerate's process state; several processes without any GPU use the CPU (gloo)."""
    import torch
    from accelerate import PartialState

    many = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return PartialState(cpu=cpu or (many and not torch.cuda.is_available()))


def _build_pipeline(args: argparse.Namespace, device: Any) -> Any:
    from vitpose_hf.inference.hub import choose_dtype
    from vitpose_hf.inference.pipeline import PoseEstimationPipeline, load_pose_model

    dtype = None if args.dtype == "auto" else args.dtype  # float32 is explicit: a bf16 checkpoint is cast
    model = load_pose_model(args.model, torch_dtype=dtype)
    kwargs: dict[str, Any] = {"batch_size": args.batch_size, "box_format": "xywh", "flip_test": args.flip_test}
    if args.dataset is not None:
        kwargs["dataset"] = args.dataset
    if args.detector is not None and args.box_threshold is not None:
        kwargs["detector_threshold"] = args.box_threshold
    pipe = PoseEstimationPipeline(
        model=model, detector=args.detector, task="pose-estimation", torch_dtype=dtype, device=device, **kwargs
    )
    if args.dtype == "auto":
        pipe.model.to(choose_dtype("auto", pipe.device))
    return pipe


def _say(args: argparse.Namespace, text: str) -> None:
    """A progress line on stderr (each process its own), unless --no-progress."""
    if not args.no_progress:
        print(text, file=sys.stderr, flush=True)


def _check_args(args: argparse.Namespace) -> None:
    sources = [name for name in ("box_column", "boxes", "detector") if getattr(args, name, None)]
    if len(sources) > 1:
        raise InputError(f"give one box source, not {' and '.join('--' + s.replace('_', '-') for s in sources)}")
    for name in ("shard_size", "batch_size", "images_per_call"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.decode_workers < 0:
        raise InputError(f"--decode-workers must be at least 0, got {args.decode_workers}")
    if args.max_samples is not None and args.max_samples < 0:
        raise InputError(f"--max-samples must be at least 0, got {args.max_samples}")


class _ShardWriter:
    """Annotates the rows of one shard."""

    def __init__(
        self, args: argparse.Namespace, reader: DatasetReader, pipe: Any, box_source: Any, pool: Any = None
    ) -> None:
        self.args = args
        self.pool = pool
        self.reader = reader
        self.pipe = pipe
        self.box_source = box_source
        index = pipe.model.config.dataset_to_index(args.dataset if args.dataset is not None else 0)
        self.info = pipe.model.config.datasets[index]
        self.schema = output_schema(reader.id_is_int or reader.id_column is None)
        extra = box_source.columns if isinstance(box_source, BoxColumn) else []
        self.columns = [c for c in [reader.id_column, reader.file_column, *extra] if c]

    def _submit(self, part: range) -> tuple[range, dict[str, list], list[Any]]:
        """Read a chunk of rows and start decoding its images (on the pool's threads when there is one)."""
        batch = self.reader.read(part, self.columns)
        if self.pool is None:
            return part, batch, [self.reader.decode(batch, j) for j in range(len(part))]
        return part, batch, [self.pool.submit(self.reader.decode, batch, j) for j in range(len(part))]

    def run(self, rows: range, progress: Any) -> tuple[Any, dict[str, Any]]:
        """Annotate the rows of one shard: its Parquet table and its counts."""
        import pyarrow as pa
        import torch

        from vitpose_hf.images import image_size

        out: list[dict[str, Any]] = []
        skipped: list[dict[str, Any]] = []
        unmatched = 0
        people = 0
        step = self.args.images_per_call
        parts = iter([range(a, min(a + step, rows.stop)) for a in range(rows.start, rows.stop, step)])
        # the next chunk's images decode while the model runs on this one (order is kept: results are identical)
        pending = deque(self._submit(part) for part in itertools.islice(parts, 2))
        while pending:
            part, batch, decoding = pending.popleft()
            following = next(parts, None)
            if following is not None:
                pending.append(self._submit(following))
            images, metas, boxes, scores = [], [], [], []
            for j, row in enumerate(part):
                decoded = decoding[j] if self.pool is None else decoding[j].result()
                image_id = self.reader.image_id(batch, j)
                if decoded.error is not None:
                    skipped.append(
                        {"index": row, "image_id": image_id, "file_name": decoded.file_name, "reason": decoded.error}
                    )
                    continue
                if isinstance(self.box_source, BoxColumn):
                    b, s = self.box_source.boxes(batch, j, row)
                elif isinstance(self.box_source, BoxFile):
                    found = self.box_source.boxes(image_id, decoded.file_name)
                    if found is None:
                        unmatched += 1
                        found = (np.zeros((0, 4)), [])
                    b, s = found
                else:
                    b, s = None, None
                height, width = image_size(decoded.image)
                images.append(decoded.image)
                metas.append(
                    {
                        "index": row,
                        "image_id": image_id,
                        "file_name": decoded.file_name,
                        "width": width,
                        "height": height,
                    }
                )
                boxes.append(b)
                scores.append(s)
            if images:
                call: dict[str, Any] = {}
                if self.box_source is not None:  # else the pipeline's detector, or the whole image
                    call = {"boxes": boxes, "box_scores": scores}
                with torch.inference_mode():
                    results = self.pipe(images, **call)
                for meta, persons in zip(metas, results):
                    out.append(self._row(meta, persons))
                    people += len(persons)
            progress.update(len(part))
        table = pa.Table.from_pylist(out, schema=self.schema)
        return table, {"images": len(out), "people": people, "skipped": skipped, "unmatched": unmatched}

    def _row(self, meta: dict[str, Any], persons: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            **meta,
            "num_people": len(persons),
            "boxes": [p["box"] for p in persons],
            "box_scores": [p["box_score"] for p in persons],
            "box_labels": [p["label"] for p in persons],
            "keypoints": [[[k["x"], k["y"]] for k in p["keypoints"]] for p in persons],
            "keypoint_scores": [[k["score"] for k in p["keypoints"]] for p in persons],
            "dataset": self.info["name"],
            "model": str(self.args.model),
        }


def _card(args: argparse.Namespace, info: dict[str, Any], summary: dict[str, Any]) -> str:
    names = list(info.get("keypoint_names", []))
    skipped = len(summary["skipped"])
    return (
        "---\nconfigs:\n- config_name: default\n  data_files: data/*.parquet\ntags:\n- pose-estimation\n"
        "- keypoint-detection\n---\n\n"
        f"# Pose annotations of `{args.input}`\n\n"
        f"Keypoints by `{args.model}` (vitpose-hf annotate), layout `{info['name']}` with {len(names)} "
        f"keypoints: {', '.join(names)}.\n\n"
        f"{summary['images']} images, {summary['people']} people; {skipped} unreadable images skipped.\n\n"
        "Columns: index, image_id, file_name, width, height, num_people, boxes (xywh pixels), box_scores, box_labels, "
        "keypoints (num_people x K x [x, y] pixels), keypoint_scores, dataset, model.\n"
    )


def _push(args: argparse.Namespace, folder: OutputFolder) -> str:
    from huggingface_hub import HfApi

    api = HfApi(token=args.token)
    url = api.create_repo(args.push_to_hub, repo_type="dataset", private=args.private, exist_ok=True)
    api.upload_folder(
        repo_id=args.push_to_hub,
        repo_type="dataset",
        folder_path=str(folder.root),
        allow_patterns=["data/*.parquet", "README.md"],
        commit_message=f"vitpose-hf annotate: poses of {args.input} by {args.model}",
    )
    return str(url)


def annotate(args: argparse.Namespace, on_shard_written: Callable[[int], None] | None = None) -> dict[str, Any] | None:
    """Run (or resume) an annotation of ``args.input`` into ``args.output_dir`` on this process's shards.

    ``on_shard_written(shard)`` is called after each shard this process completes (e.g. to report progress).
    Returns the summary of the whole run on the main process, None on the others.
    """
    _check_args(args)
    state = _process_state(args.cpu)
    dataset = open_dataset(args.input, args.split, args.config_name, args.revision)
    reader = DatasetReader(dataset, args.image_column, args.id_column, args.image_root)
    num_rows = len(reader) if args.max_samples is None else min(len(reader), args.max_samples)
    box_source: Any = None
    if args.box_column:
        box_source = BoxColumn(args.box_column, args.box_format, args.box_score_column, args.box_threshold)
        box_source.check(reader.features)
    plan = ShardPlan(num_rows, args.shard_size)
    settings = settings_of(args, num_rows, list(reader.features))
    manifest = {"fingerprint": fingerprint(settings), "settings": settings, "num_shards": plan.num_shards}
    folder = OutputFolder(args.output_dir, plan)
    if not args.overwrite:
        folder.check_manifest(manifest)  # every process: all refuse alike, none waits for the others in vain
    if state.is_main_process:
        folder.prepare(manifest, args.overwrite)
    state.wait_for_everyone()

    pipe = _build_pipeline(args, args.device if args.device is not None else state.device)
    if args.boxes:
        index = pipe.model.config.dataset_to_index(args.dataset if args.dataset is not None else 0)
        labels = pipe.model.config.datasets[index].get("detector_labels") or ["person"]
        box_source = BoxFile(args.boxes, labels, args.box_threshold, args.box_format)
    pool = ThreadPoolExecutor(args.decode_workers, "annotate-decode") if args.decode_workers > 0 else None
    writer = _ShardWriter(args, reader, pipe, box_source, pool)
    mine = plan.shards_of(state.process_index, state.num_processes)
    todo = [s for s in mine if folder.completed(s, manifest["fingerprint"]) is None]
    if len(todo) < len(mine):
        _say(
            args,
            f"process {state.process_index + 1}/{state.num_processes}: {len(mine) - len(todo)} of its "
            f"{len(mine)} shards were complete already; doing the other {len(todo)}",
        )
    try:
        _write_shards(args, state, folder, plan, writer, todo, manifest["fingerprint"], on_shard_written)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    return _finish(args, folder, manifest, writer.info)


def _write_shards(
    args: argparse.Namespace,
    state: Any,
    folder: OutputFolder,
    plan: ShardPlan,
    writer: _ShardWriter,
    todo: list[int],
    fingerprint_: str,
    on_shard_written: Callable[[int], None] | None,
) -> None:
    """This process's remaining shards, one after the other, with a progress bar and a throughput line."""
    from tqdm.auto import tqdm

    totals = {"images": 0, "people": 0}
    started = time.perf_counter()
    with tqdm(
        total=sum(len(plan.rows(s)) for s in todo),
        unit="img",
        desc=f"annotate {state.process_index + 1}/{state.num_processes}",
        position=state.process_index,
        disable=args.no_progress,
        file=sys.stderr,
    ) as progress:
        for shard in todo:
            table, counts = writer.run(plan.rows(shard), progress)
            rows = plan.rows(shard)
            marker = {
                "shard": shard,
                "start": rows.start,
                "stop": rows.stop,
                "fingerprint": fingerprint_,
                "process": state.process_index,
                **counts,
            }
            folder.write_shard(shard, table, marker)
            totals["images"] += counts["images"]
            totals["people"] += counts["people"]
            seconds = max(time.perf_counter() - started, 1e-9)
            progress.set_postfix(
                images_per_s=f"{totals['images'] / seconds:.2f}", people_per_s=f"{totals['people'] / seconds:.2f}"
            )
            if on_shard_written is not None:
                on_shard_written(shard)
    seconds = max(time.perf_counter() - started, 1e-9)
    if todo:
        _say(
            args,
            f"process {state.process_index + 1}/{state.num_processes}: {totals['images']} images, {totals['people']} "
            f"people in {seconds:.1f} s ({totals['images'] / seconds:.2f} images/s, "
            f"{totals['people'] / seconds:.2f} people/s)",
        )


def _finish(args: argparse.Namespace, folder: OutputFolder, manifest: dict[str, Any], info: dict) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "images": 0,
        "people": 0,
        "skipped": [],
        "unmatched": 0,
        "shards": folder.plan.num_shards,
    }
    for shard in range(folder.plan.num_shards):
        marker = folder.completed(shard, manifest["fingerprint"])
        if marker is None:
            raise IncompleteRunError(
                f"shard {shard} is not complete after the run: run the same command again to redo it (on several "
                "machines, --output-dir must be a folder that every machine shares)"
            )
        summary["images"] += marker["images"]
        summary["people"] += marker["people"]
        summary["skipped"].extend(marker["skipped"])
        summary["unmatched"] += marker["unmatched"]
    summary["keypoint_names"] = list(info.get("keypoint_names", []))
    summary["dataset"] = info["name"]
    atomic_write_json(folder.summary_path, summary, folder.tmp)
    atomic_write_bytes(folder.root / "README.md", _card(args, info, summary).encode("utf-8"), folder.tmp)
    if args.push_to_hub:
        summary["hub_url"] = _push(args, folder)
    return summary


def format_summary(summary: dict[str, Any], output_dir: str) -> str:
    """One line (and the skipped images) for the terminal."""
    lines = [
        f"{summary['images']} image(s), {summary['people']} people in {summary['shards']} shard(s) under "
        f"{Path(output_dir) / 'data'}; {len(summary['skipped'])} unreadable image(s) skipped"
        + (f"; {summary['unmatched']} image(s) without an entry in --boxes (no people)" if summary["unmatched"] else "")
    ]
    for item in summary["skipped"][:10]:
        lines.append(f"  skipped row {item['index']}: {item['reason']}")
    if len(summary["skipped"]) > 10:
        lines.append(f"  ... and {len(summary['skipped']) - 10} more (see annotate_state/summary.json)")
    if "hub_url" in summary:
        lines.append(f"pushed to {summary['hub_url']}")
    return "\n".join(lines)
