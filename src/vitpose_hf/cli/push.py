"""`vitpose-hf push`: write (and with `--push`, upload) one Hub-ready folder per requested size and variant.

    vitpose-hf push --sizes b --variants classic simple --source vitpose-b=ViTPose_base_coco_256x192.pth \\
        --source vitpose-b-simple=usyd-community/vitpose-base-simple --out releases/ --dry-run
    vitpose-hf push --sizes b --variants plus plus-dense --source vitpose-plus-b=vitpose+_base.pth --push

Each `--source KEY=SRC` gives the model a group of releases is cut from: KEY is a preset name (`vitpose-b`,
`vitpose-b-simple`, `vitpose-plus-b`, ...), SRC an official `.pth`, a transformers `vitpose` checkpoint or one of
our folders. Without one, `vitpose-b` and `vitpose-b-simple` default to the usyd-community transformers checkpoints;
the ViTPose++ releases need the official `.pth` (transformers' copies kept the COCO head only).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vitpose_hf.configuration_vitpose_hf import PRESET_SIZES

__all__ = ["add_arguments", "main", "run"]


def _source_map(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise SystemExit(f"--source takes KEY=SRC (e.g. vitpose-b=ViTPose_base_coco_256x192.pth), got {item!r}")
        out[key] = value
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vitpose_hf.release.folder import DEFAULT_MAX_SHARD_SIZE
    from vitpose_hf.release.variants import DEFAULT_OWNER, VARIANTS

    parser.add_argument("--sizes", nargs="+", default=list(PRESET_SIZES), choices=list(PRESET_SIZES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--source", action="append", metavar="KEY=SRC", help="the model of a preset (repeatable)")
    parser.add_argument("--no-transformers-copies", action="store_true", help="skip the transformers-format copies")
    parser.add_argument("--owner", default=DEFAULT_OWNER, help="Hub user or organisation of the repos")
    parser.add_argument("--out", default="releases", help="folder that receives one sub-folder per release")
    parser.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, help="weights above it are sharded")
    parser.add_argument("--num-attention-heads", type=int, help="for official files of widths with no official model")
    parser.add_argument(
        "--any-shape", action="store_true", help="accept sources whose shape differs from the preset (tests, custom)"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="write the folders only (the default)")
    mode.add_argument("--push", action="store_true", help="also upload each folder (create_repo + upload_folder)")
    parser.add_argument("--private", action="store_true", help="create private repos")
    parser.add_argument("--token", help="Hugging Face token (default: the logged-in one or HF_TOKEN)")


def run(args: argparse.Namespace) -> int:
    from vitpose_hf.release.folder import PushError, check_source_shape, load_source, push_folder, write_release_folder
    from vitpose_hf.release.variants import TRANSFORMERS_SOURCES, list_releases

    sources = {**TRANSFORMERS_SOURCES, **_source_map(args.source)}
    releases = list_releases(args.sizes, args.variants, transformers_copies=not args.no_transformers_copies)
    missing = sorted({r.source for r in releases} - set(sources))
    if missing:
        print(f"error: no --source for {', '.join(missing)} (give KEY=official.pth or a checkpoint)", file=sys.stderr)
        return 2
    out = Path(args.out)
    models = {}
    for release in releases:
        if release.source not in models:
            overrides = {"num_attention_heads": args.num_attention_heads} if args.num_attention_heads else {}
            models[release.source] = load_source(sources[release.source], official_overrides=overrides)
        model = models[release.source]
        if not args.any_shape:
            check_source_shape(model, release)
        src = sources[release.source]
        folder = write_release_folder(
            model,
            release,
            out / release.name,
            owner=args.owner,
            max_shard_size=args.max_shard_size,
            source=src,
            base_model=src if src in TRANSFORMERS_SOURCES.values() else None,
        )
        print(f"wrote {folder}")
        if args.push:
            try:
                url = push_folder(folder, release.repo_id(args.owner), token=args.token, private=args.private)
            except PushError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            print(f"pushed {release.repo_id(args.owner)}: {url}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vitpose-hf push", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
