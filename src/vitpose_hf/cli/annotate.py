"""``vitpose-hf annotate``: pose annotations of a whole image dataset, as Parquet shards, across processes.

    vitpose-hf annotate user/photos --split train --detector PekingU/rtdetr_r50vd --output-dir poses/
    vitpose-hf annotate my_saved_dataset/ --box-column objects.bbox --output-dir poses/ --push-to-hub user/poses
    vitpose-hf annotate val2017/ --boxes detections.json --output-dir poses/            # a folder of images
    accelerate launch -m vitpose_hf.cli annotate user/photos --detector ... --output-dir poses/   # N processes

The input is a Hub dataset id, a ``save_to_disk`` folder or a folder of images. Boxes come from ``--box-column``,
from ``--boxes`` (COCO detections, matched by image id or file name), from ``--detector``, or else the whole image
is one box. Each process writes its own shards (``data/shard-*.parquet``, loadable with
``datasets.load_dataset("parquet", data_dir=OUT/"data")``). A killed run, started again with the same arguments,
keeps its complete shards and redoes the rest; other arguments are refused (``--overwrite`` starts over).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from vitpose_hf.boxes import BOX_FORMATS

__all__ = ["add_arguments", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``vitpose-hf annotate``."""
    from vitpose_hf.inference.pipeline import DEFAULT_MODEL

    parser.add_argument("input", help="Hub dataset id, save_to_disk folder, or folder of images")
    parser.add_argument("--output-dir", required=True, help="folder for data/*.parquet and the resume state")
    parser.add_argument("--split", default=None, help="split to annotate (default: the only one)")
    parser.add_argument("--config-name", default=None, help="Hub dataset configuration")
    parser.add_argument("--revision", default=None, help="Hub dataset revision")
    parser.add_argument("--image-column", default=None, help="image column (default: the only Image column)")
    parser.add_argument(
        "--image-root", default=None, help="folder that relative paths of a string image column start in"
    )
    parser.add_argument("--id-column", default=None, help="image id column (default: image_id or id, when present)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"pose checkpoint (default: {DEFAULT_MODEL})")
    parser.add_argument("--dataset", default=None, help="head of a ViTPose++ checkpoint: coco, aic, mpii, ap10k, ...")
    boxes = parser.add_argument_group("boxes (at most one source; none: the whole image is one box)")
    boxes.add_argument("--box-column", default=None, help="column with a list of boxes per row (or list.field)")
    boxes.add_argument("--box-score-column", default=None, help="column with one score per box of --box-column")
    boxes.add_argument(
        "--box-format", choices=BOX_FORMATS, default="xywh", help="format of --box-column boxes (default: xywh)"
    )
    boxes.add_argument("--boxes", default=None, metavar="FILE.json", help="COCO detections / annotations file")
    boxes.add_argument("--detector", default=None, metavar="MODEL", help="transformers object-detection model")
    boxes.add_argument(
        "--box-threshold",
        type=float,
        default=None,
        metavar="S",
        help="drop boxes scoring below S (all box sources with scores)",
    )
    parser.add_argument("--flip-test", action="store_true", help="average with the mirrored crops")
    parser.add_argument("--shard-size", type=int, default=1000, metavar="N", help="input rows per shard (default 1000)")
    parser.add_argument("--max-samples", type=int, default=None, metavar="N", help="annotate only the first N rows")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="crops per forward pass (default 32)")
    parser.add_argument(
        "--images-per-call", type=int, default=8, metavar="N", help="images whose crops share a pipeline call"
    )
    parser.add_argument(
        "--decode-workers", type=int, default=4, metavar="N", help="threads decoding the next images (0: none)"
    )
    parser.add_argument("--device", default=None, help="default: this process's Accelerate device")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even with GPUs")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("auto", "float32", "bf16", "fp16"),
        help="precision of the pose model (default float32; auto: bf16 on CUDA and native-bf16 CPUs)",
    )
    parser.add_argument("--overwrite", action="store_true", help="delete a previous run in --output-dir first")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="upload the shards as a Hub dataset")
    parser.add_argument("--private", action="store_true", help="create the Hub dataset as private")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar and no throughput lines")


def run(args: argparse.Namespace, on_shard_written: Callable[[int], None] | None = None) -> int:
    """Run ``vitpose-hf annotate``; bad inputs print one error line and return 2.

    ``on_shard_written(shard)`` is called after each shard this process completes.
    """
    from vitpose_hf.annotation.inputs import InputError
    from vitpose_hf.annotation.runner import IncompleteRunError, annotate, format_summary
    from vitpose_hf.inference.hub import HubUnreachableError

    try:
        summary = annotate(args, on_shard_written=on_shard_written)
    except HubUnreachableError as exc:
        print(f"vitpose-hf annotate: error: {exc}", file=sys.stderr)
        return 1
    except (InputError, ValueError, TypeError) as exc:
        print(f"vitpose-hf annotate: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, IncompleteRunError) as exc:
        print(f"vitpose-hf annotate: error: {exc}", file=sys.stderr)
        return 1
    if summary is not None:
        print(format_summary(summary, args.output_dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m vitpose_hf.cli.annotate ...`` (the same as ``vitpose-hf annotate ...``)."""
    parser = argparse.ArgumentParser(prog="vitpose-hf annotate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
