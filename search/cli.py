"""`centerclip index | search | serve` (also `python -m search ...`, `accelerate launch -m search index ...`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from modeling_centerclip.configuration_centerclip import CLUSTER_ALGOS, CLUSTER_DISTANCES
from training.corpora import CORPUS_KEYS

from .ann import KINDS

# Errors a user can act on: printed as one line, exit status 2 (a traceback means a bug).
_USER_ERRORS = (FileNotFoundError, ValueError, RuntimeError)


# Cluster settings a query or index run may override (a stock CLIP checkpoint becomes CenterCLIP with them).
OVERRIDES = {"num_frames": dict(type=int), "cluster_algo": dict(choices=CLUSTER_ALGOS), "cluster_layer": dict(type=int),
             "num_segments": dict(type=int), "num_centers": dict(type=int),
             "cluster_distance": dict(choices=CLUSTER_DISTANCES)}  # fmt: skip


def _add_model_overrides(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster overrides (turn a stock CLIP checkpoint into CenterCLIP)")
    for key, options in OVERRIDES.items():
        group.add_argument(f"--{key}", **options)


def _overrides(args) -> dict | None:
    overrides = {key: getattr(args, key) for key in OVERRIDES if getattr(args, key, None) is not None}
    return overrides or None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="centerclip", description="Index a video library with CenterCLIP and "
                                     "search it by text or by example.")  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)

    index = commands.add_parser("index", help="encode a library of videos into an index folder (incremental)")
    index.add_argument("source", help="a folder of videos, a videofolder with metadata.jsonl, or a corpus name "
                       "(msrvtt, msvd, lsmdc, activitynet, demo) with the corpus options")  # fmt: skip
    index.add_argument("--model", required=True, help="a CenterCLIP folder or Hub id, or a stock CLIP checkpoint "
                       "with cluster overrides")  # fmt: skip
    index.add_argument("--output", required=True, help="the index folder (created or updated)")
    index.add_argument("--index", choices=KINDS, default="flat", help="exact inner product (default), IVF-Flat, "
                       "HNSW (up to 500k videos) or ivfpq (compressed, on disk, for libraries beyond RAM); search "
                       "parameters are tuned to recall@10 >= 0.95 against exact, on text-like queries")  # fmt: skip
    index.add_argument("--batch_size", type=int, default=16)
    index.add_argument("--num_workers", type=int, default=2, help="DataLoader processes decoding videos")
    index.add_argument("--chunk_size", type=int, default=256, help="videos per parquet part (the unit of resuming)")
    index.add_argument("--rebuild", action="store_true",
                       help="accept an index made with another model: its rows are dropped and the library re-encoded "
                       "(rows of the same model are reused: they would come out the same)")
    index.add_argument("--split", help="index only this split of a corpus or videofolder (default: all)")
    for key in CORPUS_KEYS:
        index.add_argument(f"--{key}", help="corpus option (as in training)")
    _add_model_overrides(index)

    search = commands.add_parser("search", help="search an index by text, an example video or an image")
    search.add_argument("index_dir")
    search.add_argument("text", nargs="?", help="the text query")
    search.add_argument("--video", help="search by this example video instead of text")
    search.add_argument("--image", help="search by this image (JPEG, PNG, ...) instead of text")
    search.add_argument("-k", type=int, default=10, help="results to show")
    search.add_argument("--json", action="store_true", help="print the results as a JSON list")
    _add_query_model(search)

    serve = commands.add_parser("serve", help="a local web page to search an index")
    serve.add_argument("index_dir")
    serve.add_argument("--port", type=int, default=7860)
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: this machine only)")
    _add_query_model(serve)
    return parser


def _add_query_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="query model (default: the index's own)")
    parser.add_argument("--allow-model-mismatch", action="store_true",
                        help="search even if the model's fingerprint differs from the index's")  # fmt: skip
    _add_model_overrides(parser)


def _open_index(args):
    from .index import VideoIndex

    return VideoIndex.load(args.index_dir, model=args.model, overrides=_overrides(args),
                           allow_model_mismatch=args.allow_model_mismatch)  # fmt: skip


def run_index(args) -> dict:
    from .indexer import index_library

    keys = (*CORPUS_KEYS, "split")
    corpus_options = {key: getattr(args, key) for key in keys if getattr(args, key) is not None}
    manifest = index_library(args.source, args.model, args.output, kind=args.index, overrides=_overrides(args),
                             corpus_options=corpus_options, batch_size=args.batch_size, num_workers=args.num_workers,
                             chunk_size=args.chunk_size, rebuild=args.rebuild)  # fmt: skip
    from accelerate import PartialState

    if PartialState().is_main_process:
        counts, settings = manifest["counts"], manifest["index"]
        tuned = {k: v for k, v in settings.items() if k in ("nlist", "nprobe", "M", "efSearch", "rerank")}
        print(f"{args.output}: {counts['videos']} videos indexed ({counts['encoded_this_run']} encoded in this run), "
              f"{counts['skipped']} skipped; index {settings['kind']} {tuned or ''} recall@10 "
              f"{settings['recall_at_10']:.3f}")  # fmt: skip
        for record in manifest["skipped"]:
            print(f"  skipped {record['path']}: {record['reason']}")
    return manifest


def run_search(args) -> list:
    if sum(q is not None for q in (args.text, args.video, args.image)) != 1:
        raise ValueError("give a text query, --video PATH or --image PATH (one of them)")
    index = _open_index(args)
    results = index.search(text=args.text, video=args.video, image=args.image, k=args.k)
    if args.json:
        print(json.dumps([result.to_dict() for result in results], ensure_ascii=False, indent=1))
        return results
    print(f"{'rank':>4}  {'score':>6}  path  |  caption")
    for result in results:
        print(f"{result.rank:>4}  {result.score:6.3f}  {result.path}  |  {result.caption}")
    return results


def run_serve(args) -> None:
    from .app import serve

    serve(_open_index(args), host=args.host, port=args.port)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.command == "index" else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
    commands = {"index": run_index, "search": run_search, "serve": run_serve}
    try:
        commands[args.command](args)
    except _USER_ERRORS as error:
        print(f"centerclip {args.command}: error: {error}", file=sys.stderr)
        sys.exit(2)
