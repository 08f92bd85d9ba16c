"""``vitpose-hf predict VIDEO --track``: the video options of ``predict`` and the tracked run.

``vitpose_hf.cli.predict`` adds these options with :func:`add_track_arguments` and, when ``--track`` is given, hands
its inputs and its pipeline to :func:`run_track`::

    vitpose-hf predict clip.mp4 --detector PekingU/rtdetr_r50vd --track --detect-every 3 --smooth one-euro \\
        --out tracked/ --coco-results tracked/results.json --openpose tracked/openpose/

Outputs, for each input video (or folder of frames):

- ``--out DIR``: the rendered video ``DIR/<name>.mp4`` (``--video-format``) and one JSON per frame with track ids in
  ``DIR/<name>/frame_000123.json``;
- ``--json FILE``: every frame's results in one JSON file (``-`` prints it);
- ``--coco-results FILE``: COCO keypoint results with ``track_id`` (``image_id`` = frame index; one input only);
- ``--openpose DIR``: OpenPose JSON per frame, ``DIR/<name>_000000000123_keypoints.json``.

``--batch-size``, ``--score-threshold``, ``--video-stride``, ``--box-threshold``, ``--no-progress``, ``--out`` and
``--json`` are predict's own options, read from the same namespace.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from vitpose_hf.video.smoothing import SMOOTHERS
from vitpose_hf.video.tracking import TRACK_METRICS

__all__ = ["TRACK_OPTIONS", "add_track_arguments", "run_track"]

DEFAULT_OUT = "vitpose-hf-output"

# the option names this module adds (predict must not define them)
TRACK_OPTIONS = (
    "--track",
    "--detect-every",
    "--smooth",
    "--track-metric",
    "--track-threshold",
    "--max-age",
    "--min-cutoff",
    "--beta",
    "--savgol-window",
    "--fps",
    "--coco-results",
    "--openpose",
    "--video-format",
)


def add_track_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--track`` options (see the module docstring) to predict's parser."""
    group = parser.add_argument_group("video tracking (--track)")
    group.add_argument(
        "--track", action="store_true", help="videos: batched poses with track ids (needs --detector), see --smooth"
    )
    group.add_argument(
        "--detect-every", type=int, default=1, metavar="N", help="run the detector on every N-th frame (default 1)"
    )
    group.add_argument("--smooth", choices=SMOOTHERS, default=None, help="one-euro (online) or savgol (offline)")
    group.add_argument("--track-metric", choices=TRACK_METRICS, default="iou", help="match people by box IoU or OKS")
    group.add_argument(
        "--track-threshold", type=float, default=0.3, metavar="S", help="minimum IoU / OKS to continue a track"
    )
    group.add_argument(
        "--max-age", type=int, default=30, metavar="FRAMES", help="frames a lost track waits for its person (30)"
    )
    group.add_argument("--min-cutoff", type=float, default=1.0, metavar="HZ", help="one-euro cut-off when still (1 Hz)")
    group.add_argument("--beta", type=float, default=0.0, metavar="S/PX", help="one-euro speed coefficient (0)")
    group.add_argument("--savgol-window", type=int, default=9, metavar="FRAMES", help="savgol window (odd, 9)")
    group.add_argument("--fps", type=float, default=None, help="frame rate of a folder of frames (default 30)")
    group.add_argument("--coco-results", metavar="FILE", default=None, help="COCO keypoint results with track_id")
    group.add_argument("--openpose", metavar="DIR", default=None, help="OpenPose JSON per frame")
    group.add_argument(
        "--video-format", choices=("mp4", "avi"), default="mp4", help="container of the rendered video (mp4)"
    )


def _check(args: argparse.Namespace, inputs: list[str]) -> None:
    if args.detect_every < 1:
        raise ValueError(f"--detect-every must be at least 1, got {args.detect_every}")
    if args.max_age < 0:
        raise ValueError(f"--max-age must be at least 0, got {args.max_age}")
    if not 0 <= args.track_threshold <= 1:
        raise ValueError(f"--track-threshold must be in [0, 1], got {args.track_threshold}")
    if args.savgol_window < 3 or args.savgol_window % 2 == 0:
        raise ValueError(f"--savgol-window must be an odd number >= 3, got {args.savgol_window}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not inputs:
        raise ValueError("--track needs a video file or a folder of frames")
    if args.coco_results and len(inputs) > 1:
        raise ValueError("--coco-results holds one video's frames (image_id = frame index): pass one input")
    if getattr(args, "boxes", None):
        raise ValueError("--track finds people with --detector; --boxes is for images")


def _stem(path: str, used: set[str]) -> str:
    stem = Path(path).stem or Path(path).name or "video"
    candidate, n = stem, 1
    while candidate in used:
        candidate, n = f"{stem}_{n}", n + 1
    used.add(candidate)
    return candidate


def run_track(args: argparse.Namespace, pipe: Any, inputs: list[str] | None = None) -> int:
    """Run ``--track`` on ``inputs`` (default ``args.inputs``) with predict's pipeline ``pipe``; returns 0.

    Bad inputs raise ValueError (:class:`~vitpose_hf.video.sources.VideoSourceError` for a video that cannot be
    opened), which predict's ``run`` prints as one error line.
    """
    from vitpose_hf.video.estimator import VideoPoseEstimator
    from vitpose_hf.video.sources import open_source
    from vitpose_hf.video.tracking import PoseTracker
    from vitpose_hf.video.writers import (
        CocoResultsWriter,
        FrameJsonWriter,
        OpenPoseWriter,
        RenderedVideoWriter,
        write_results,
    )

    inputs = list(args.inputs if inputs is None else inputs)
    _check(args, inputs)
    if getattr(pipe, "detector", None) is None:
        raise ValueError("--track finds people on video frames with a detector: pass --detector MODEL")
    options: dict[str, Any] = {}
    if args.smooth == "one-euro":
        options = {"min_cutoff": args.min_cutoff, "beta": args.beta}
    elif args.smooth == "savgol":
        options = {"window": args.savgol_window}
    stride = getattr(args, "video_stride", 1) or 1
    sources = [open_source(path, fps=args.fps, stride=stride) for path in inputs]  # open all first: early errors
    json_path = getattr(args, "json", None)
    out = getattr(args, "out", None)
    if out is None and json_path is None and not args.coco_results and not args.openpose:
        out = DEFAULT_OUT  # as predict: with no output named, drawings go to ./vitpose-hf-output
    out_dir = Path(out) if out is not None else None
    documents, used, summary = [], set(), []
    for path, source in zip(inputs, sources):
        stem = _stem(path, used)
        offline = args.smooth == "savgol"
        estimator = VideoPoseEstimator(
            pipe,
            batch_size=args.batch_size,
            detect_every=args.detect_every,
            tracker=PoseTracker(args.track_metric, args.track_threshold, args.max_age),
            smooth=args.smooth,
            smooth_options=options,
            keypoint_threshold=args.score_threshold,
            detector_threshold=getattr(args, "box_threshold", None),
            keep_images=not (offline and source.reiterable),
            pose_kwargs={"dataset": args.dataset} if getattr(args, "dataset", None) is not None else None,
        )
        writers: list[Any] = []
        if out_dir is not None:
            writers.append(
                RenderedVideoWriter(out_dir / f"{stem}.{args.video_format}", source.fps, args.score_threshold)
            )
            writers.append(FrameJsonWriter(out_dir / stem, source=str(path)))
        if args.coco_results:
            writers.append(CocoResultsWriter(args.coco_results))
        if args.openpose:
            writers.append(OpenPoseWriter(args.openpose, stem=stem))
        records: list[dict] = []
        results = estimator.run(source)
        if json_path is not None:
            results = _recording(results, records)
        frames = iter(source) if offline and source.reiterable and out_dir is not None else None
        count = write_results(
            results,
            writers,
            total=source.total,
            progress=not getattr(args, "no_progress", False),
            frames=frames,
            description=stem,
        )
        tracks = estimator.tracker.next_id - 1 if estimator.tracker is not None else 0
        skipped = f", {source.skipped} unreadable frame(s) skipped" if source.skipped else ""
        summary.append(f"{path}: {count} frame(s), {tracks} track(s){skipped}")
        if json_path is not None:
            documents.append({"file": str(path), "fps": source.fps, "frames": records})
    if json_path is not None:
        payload = {"model": str(getattr(args, "model", "")), "videos": documents}
        if json_path == "-":
            json.dump(payload, sys.stdout, indent=1)
            sys.stdout.write("\n")
        else:
            Path(json_path).parent.mkdir(parents=True, exist_ok=True)
            with open(json_path, "w", encoding="utf-8") as f:
                json.dump(payload, f, indent=1)
    print("\n".join(summary), file=sys.stderr if json_path == "-" else sys.stdout)
    return 0


def _recording(results: Any, records: list[dict]) -> Any:
    for result in results:
        records.append(result.to_json())
        yield result
