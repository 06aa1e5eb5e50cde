"""`centerclip index | search | serve` (also `python -m search ...`, `accelerate launch -m search index ...`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

# Light imports only: `centerclip --help` answers before torch, Transformers and FAISS load.
from training.cli_errors import add_debug_flag, run_cli
from training.cli_parsers import (CLUSTER_ALGOS, CLUSTER_DISTANCES, CORPUS_KEYS, CORPUS_NAMES, INDEX_KINDS,
                                  HelpFormatter, add_corpus_options, new_parser)


def _user_errors() -> tuple:
    """Errors a user can act on besides ValueError and OSError (`training.cli_errors`): another process holds
    the index. Imported only when an error is reported."""
    from .storage import IndexLockedError

    return (IndexLockedError,)


def _megabytes(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 1 << 20:
        raise argparse.ArgumentTypeError(f"a size in MB from 0 to 1048576, got {text!r}")
    return int(value * (1 << 20))


# Cluster settings a query or index run may override (a stock CLIP checkpoint becomes CenterCLIP with them).
OVERRIDES = {"num_frames": dict(type=int, help="frames per video"),
             "cluster_algo": dict(choices=CLUSTER_ALGOS, help="token reducer"),
             "cluster_layer": dict(type=int, help="vision layers run per frame before clustering"),
             "num_segments": dict(type=int, help="segments of consecutive frames"),
             "num_centers": dict(type=int, help="tokens kept per segment"),
             "cluster_distance": dict(choices=CLUSTER_DISTANCES, help="k-medoids distance")}  # fmt: skip


def _add_model_overrides(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster overrides (turn a stock CLIP checkpoint into CenterCLIP; default: "
                                      "the model's settings)")
    for key, options in OVERRIDES.items():
        group.add_argument(f"--{key}", **options)


def _overrides(args) -> dict | None:
    overrides = {key: getattr(args, key) for key in OVERRIDES if getattr(args, key, None) is not None}
    return overrides or None


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(prog="centerclip", description="Index a video library with CenterCLIP and search it by "
                        "text or by example.")  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)
        add_debug_flag(sub)
        return sub

    index = command("index", "encode a library of videos into an index folder (incremental)")
    index.add_argument("source", help="a folder of videos, a videofolder with metadata.jsonl, a frame store "
                       f"(python -m training.prepare_frames; its folder or Hub dataset id), or a corpus name ({CORPUS_NAMES}) with the corpus "
                       "options")  # fmt: skip
    index.add_argument("--model", required=True, help="a CenterCLIP folder or Hub id, or a stock CLIP checkpoint "
                       "with cluster overrides")  # fmt: skip
    index.add_argument("--output", required=True, help="the index folder (created or updated)")
    index.add_argument("--index", choices=INDEX_KINDS, default="flat", help="exact inner product, IVF-Flat, HNSW (up "
                       "to 500k videos) or ivfpq (compressed, on disk, for libraries beyond RAM); search parameters are "
                       "tuned to recall@10 >= 0.95 against exact, on text-like queries")  # fmt: skip
    index.add_argument("--batch_size", type=int, default=16, help="videos per encoding batch")
    index.add_argument("--num_workers", type=int, default=2, help="DataLoader processes decoding videos")
    index.add_argument("--chunk_size", type=int, default=256, help="videos per parquet part (the unit of resuming)")
    index.add_argument("--rebuild", action="store_true",
                       help="accept an index made with another model or source (its rows are dropped and the library "
                       "re-encoded; rows of the same model are reused: they would come out the same), and repair a "
                       "damaged index folder (corrupt or missing manifest, parts or FAISS file; good parts are kept)")
    index.add_argument("--add", action="store_true",
                       help="index SOURCE beside the libraries already in the index (their rows are kept, and updated "
                       "by each later run); without it another source is refused")
    index.add_argument("--split", help="index only this split of a corpus or videofolder (default: all)")
    add_corpus_options(index.add_argument_group("corpus options (as in training)"))
    _add_model_overrides(index)

    search = command("search", "search an index by text, an example video or an image")
    search.add_argument("index_dir", help="a folder written by centerclip index")
    search.add_argument("text", nargs="?", help="the text query")
    search.add_argument("--video", help="search by this example video instead of text")
    search.add_argument("--image", help="search by this image (JPEG, PNG, ...) instead of text")
    search.add_argument("-k", type=int, default=10, help="results to show")
    search.add_argument("--json", action="store_true", help="print the results as a JSON list")
    _add_query_model(search)

    serve = command("serve", "a local web page to search an index")
    serve.add_argument("index_dir", help="a folder written by centerclip index")
    serve.add_argument("--port", type=_port, default=7860, help="TCP port of the page (1-65535)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1, this machine only; "
                       "then only localhost names are accepted in the Host header)")  # fmt: skip
    serve.add_argument("--allowed-host", action="append", dest="allowed_hosts", metavar="NAME",
                       help="a host name clients use to reach the page (repeatable); requests naming another Host are "
                       "refused. Give it when binding beyond localhost (--host 0.0.0.0)")  # fmt: skip
    serve.add_argument("--max-upload-mb", type=_megabytes, default="64", dest="max_upload_bytes", metavar="MB",
                       help="largest file a query upload may be, where the page has an upload control")
    _add_query_model(serve)
    return parser


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"a port is a number from 1 to 65535, got {text!r}")
    return int(text)


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
                             chunk_size=args.chunk_size, rebuild=args.rebuild, add=args.add)  # fmt: skip
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

    serve(_open_index(args), host=args.host, port=args.port, allowed_hosts=args.allowed_hosts,
          max_upload_bytes=args.max_upload_bytes)


def _run(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.command == "index" else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader logs every CPU variant it tries
    if args.command != "index":  # results only: no weight-loading bar (read by Transformers when it loads)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    {"index": run_index, "search": run_search, "serve": run_serve}[args.command](args)


def main(argv: list[str] | None = None) -> None:
    """The `centerclip` command: a user error is one line and exit status 2 (`training.cli_errors`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((word for word in argv if not word.startswith("-")), "")
    prog = f"centerclip {command}" if command in ("index", "search", "serve") else "centerclip"
    run_cli(prog, _run, argv, user_errors=_user_errors)
