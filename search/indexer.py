"""Index a video library: plan what to encode, encode it in chunks (one parquet part each), then commit.

Under `accelerate launch`, the main process takes the lock and plans; every process encodes its share of the
videos to encode (`todo[rank::world]`) into its own parts; the main process then commits: it drops rows of
deleted or changed files, builds the FAISS index and writes `manifest.json` last.

- Incremental: a video whose `(path, size, mtime_ns)` is already in a part made with the same model fingerprint
  (encoded, or recorded as undecodable) is not touched again.
- Resumable: parts are whole files (temp + rename), so a run killed at any moment resumes from its finished
  parts; only the chunks in flight are encoded again.
- One library per index unless said otherwise: a run with another source than the index's is refused unless
  `add=True` (both libraries are kept and updated from then on) or `rebuild=True` (the old rows are dropped).
- Repairable: `rebuild=True` ignores a corrupt or missing manifest, removes unreadable parts (their videos are
  encoded again) and keeps every good part of the model; each commit removes what earlier runs left behind.
- A model that embeds a video as NaN or inf stops the run naming the file: nothing non-finite is stored.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from modeling_centerclip.processing_centerclip import VideoDecodeError
from training.corpora import CORPUS_KEYS
from training.data import SkippedVideo
from training.evaluate import video_embeddings
from training.frame_store import check_store_settings, load_frame_store, row_model_inputs

from . import __version__
from .ann import FP16_ABOVE, build_index, check_kind
from .library import LibraryVideo, list_library, same_state, unique_ids
from .models import ModelMismatchError, ModelSpec
from .storage import (MANIFEST, PARTS, REPAIR_HINT, CorruptIndexError, IndexLock, list_parts, parts_folder,
                      read_manifest, read_part_summary, read_rows, remove_leftovers, write_faiss, write_json,
                      write_part)  # fmt: skip
from .tuning import text_like_queries

logger = logging.getLogger(__name__)

# Test hook: seconds to sleep after writing each part, so a test can kill a run between parts.
_PAUSE_ENV = "_CENTERCLIP_PAUSE_AFTER_PART"


class _DecodeVideos(Dataset):
    """Decodes library videos in DataLoader workers; an undecodable one becomes a `SkippedVideo`."""

    def __init__(self, videos: list[LibraryVideo], processor):
        self.videos, self.processor = videos, processor

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int):
        video = self.videos[index]
        path, store = video.path, video.metadata.get("frame_store")
        try:
            if store:  # a frame store row: its stored frames, sampled as the video's would be
                row = _store_split(store, video.metadata["split"])[video.metadata["store_row"]]
                pixel_values, video_mask = row_model_inputs(self.processor, row, do_normalize=False)
            else:  # uint8 frames: `video_embeddings` normalises them on the device
                pixel_values, video_mask = self.processor.load_video(path, name=path, do_normalize=False)
        except VideoDecodeError as error:
            return SkippedVideo(index, path, error.reason)
        except Exception as error:  # noqa: BLE001 -- one bad file must not stop a library of thousands
            return SkippedVideo(index, path, f"{type(error).__name__}: {error}")
        return index, pixel_values, video_mask


@functools.cache
def _store_split(store: str, split: str):
    """One split of a frame store, opened once per DataLoader worker (memory-mapped, frames still encoded)."""
    return load_frame_store(store)[split]


def _collate(items: list) -> dict:
    kept = [item for item in items if not isinstance(item, SkippedVideo)]
    return {
        "index": [item[0] for item in kept],
        "pixel_values": torch.stack([item[1] for item in kept]) if kept else None,
        "video_mask": torch.stack([item[2] for item in kept]) if kept else None,
        "skipped": [item for item in items if isinstance(item, SkippedVideo)],
    }


def run_id() -> str:
    """Names this run's files: sortable by time, unique even for two runs of one process in the same second."""
    return time.strftime("%Y%m%d-%H%M%S") + f"-{uuid.uuid4().hex[:8]}"


class NonFiniteEmbeddingError(ValueError):
    """The model embedded a video as NaN or inf (broken weights): refused, naming the file."""


def source_entry(source: str, corpus_options: dict) -> dict:
    """How a manifest records a library: a folder by its absolute path, a corpus by name, with its options."""
    source = os.fspath(source)
    return {"source": os.path.abspath(source) if os.path.isdir(source) else source, "corpus_options": corpus_options}


def _recorded_sources(output: Path, manifest: dict) -> list[dict]:
    """The manifest's libraries, checked: they are listed again, so a tampered entry is an error naming it."""
    if "sources" not in manifest:  # a manifest written before `sources`
        return [source_entry(str(manifest.get("source")), manifest.get("corpus_options") or {})]
    sources, allowed = manifest["sources"], {*CORPUS_KEYS, "split"}
    for entry in sources if isinstance(sources, list) else [None]:
        if not (isinstance(entry, dict) and isinstance(entry.get("source"), str)
                and isinstance(entry.get("corpus_options"), dict) and set(entry["corpus_options"]) <= allowed
                and all(isinstance(v, str) for v in entry["corpus_options"].values())):  # fmt: skip
            raise CorruptIndexError(f"{output / MANIFEST}: entry {entry!r} of 'sources' is not a library "
                                    "({'source': ..., 'corpus_options': {...}}); " + REPAIR_HINT.format(dir=output))  # fmt: skip
    return sources


def _describe(entry: dict) -> str:
    options = " ".join(f"--{k} {v}" for k, v in entry["corpus_options"].items())
    return f"{entry['source']}{' ' + options if options else ''}"


def _sources(output: Path, spec: ModelSpec, new: dict, rebuild: bool, add: bool) -> list[dict]:
    """The libraries this run indexes: the new one, with (`add`) or in place of (`rebuild`) the index's own."""
    previous = None
    if (output / MANIFEST).exists():
        try:
            previous = read_manifest(output)
        except CorruptIndexError:
            if not rebuild:
                raise
            logger.warning("%s is unreadable: rebuilding it from the parts and the source", output / MANIFEST)
    if previous is None:
        return [new]
    if not rebuild and previous["model"]["fingerprint"] != spec.fingerprint:
        recorded = previous["model"]
        raise ModelMismatchError(
            f"{output} was indexed with model {recorded['name']!r} (fingerprint {recorded['fingerprint']}); "
            f"{spec.name!r} has fingerprint {spec.fingerprint}. Pass --rebuild to re-encode the library "
            f"with the new model, or choose another --output."
        )
    recorded = _recorded_sources(output, previous)
    if new in recorded:
        return recorded
    if add:
        return [*recorded, new]
    if rebuild:
        return [new]
    raise ValueError(
        f"{output} indexes {'; '.join(_describe(e) for e in recorded)}, not {_describe(new)}. Pass --add to index "
        f"both (the old rows are kept and updated with each run), --rebuild to replace them (the old rows are "
        f"dropped), or choose another --output."
    )


def _read_summaries(output: Path, rebuild: bool) -> dict[Path, dict]:
    """Every finished part's summary; an unreadable part is an error naming it, or with `rebuild` removed (its
    videos are encoded again), as is a part holding a non-finite embedding."""
    summaries = {}
    for part in list_parts(output):
        try:
            summaries[part] = read_part_summary(part)
            if rebuild:
                _, vectors = read_rows([part])
                if not np.isfinite(vectors).all():
                    raise CorruptIndexError(f"{part}: holds non-finite embeddings")
        except CorruptIndexError as error:
            if not rebuild:
                raise
            logger.warning("removing %s (its videos are encoded again): %s", part, error)
            summaries.pop(part, None)
            part.unlink(missing_ok=True)
    return summaries


def _plan(output: Path, spec: ModelSpec, source: str, corpus_options: dict, rebuild: bool, add: bool,
          kind: str = "flat") -> dict:
    """What the run must encode: the libraries' listings minus what finished parts of this model already cover."""
    new = source_entry(source, corpus_options)
    # A store's frames must be the ones this model's processor samples (fps, frame size).
    check_store_settings(source, spec.processor.fps, spec.processor.image_size, f"the model {spec.name!r}")
    first = list_library(source, **corpus_options)  # a bad source fails first
    sources = _sources(output, spec, new, rebuild, add)
    videos, skipped, roots, seen = [], [], [], set()
    for entry in sources:
        listing = first if entry == new else list_library(entry["source"], **entry["corpus_options"])
        videos += [video for video in listing.videos if video.path not in seen]
        seen.update(video.path for video in listing.videos)
        skipped += listing.skipped
        roots.append(listing.root)
    if len(sources) > 1:
        videos = unique_ids(videos, "/")
    check_kind(kind, len(videos))  # before encoding anything
    covered: dict[str, list] = {}
    for summary in _read_summaries(output, rebuild).values():
        if summary["fingerprint"] == spec.fingerprint:
            for state in summary["states"]:
                covered.setdefault(state[0], []).append(state)
            for s in summary["skipped"]:
                covered.setdefault(s["path"], []).append(_skipped_state(s))
    todo = [video for video in videos if not any(same_state(s, video.state) for s in covered.get(video.path, ()))]
    return {"videos": videos, "todo": todo, "roots": roots, "sources": sources, "listing_skipped": skipped,
            "run_id": run_id()}  # fmt: skip


def _skipped_state(record: dict) -> tuple:
    return (record["path"], record["size"], record["mtime_ns"], record.get("file_stat", ""))


def _encode_share(output: Path, spec: ModelSpec, videos: list[LibraryVideo], run_id: str, rank: int,
                  device, batch_size: int, num_workers: int, chunk_size: int, show_progress: bool) -> int:
    """Encode `videos` into parts of about `chunk_size` videos. Returns how many were encoded."""
    from tqdm.auto import tqdm

    if not videos:
        return 0
    model = spec.load_video_model(device)
    loader = DataLoader(_DecodeVideos(videos, spec.processor), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate)  # fmt: skip
    dim = spec.config.projection_dim
    pause = float(os.environ.get(_PAUSE_ENV, 0))
    kept, embeddings, skipped, parts, encoded = [], [], [], 0, 0

    def flush():
        nonlocal kept, embeddings, skipped, parts
        name = f"{run_id}-r{rank:03d}-{parts:05d}.parquet"
        vectors = torch.cat(embeddings).numpy() if embeddings else np.zeros((0, dim), np.float32)
        write_part(output / PARTS / name, kept, vectors, skipped, spec.fingerprint, dim)
        kept, embeddings, skipped, parts = [], [], [], parts + 1
        if pause:
            time.sleep(pause)

    progress = tqdm(total=len(videos), unit="video", desc=f"indexing (process {rank})", disable=not show_progress)
    try:
        for batch in loader:
            for item in batch["skipped"]:
                video = videos[item.index]
                logger.warning("skipping %s: %s", video.path, item.reason)
                skipped.append({"path": video.path, "size": video.size, "mtime_ns": video.mtime_ns,
                                "file_stat": video.file_stat, "reason": item.reason})  # fmt: skip
            if batch["index"]:
                vectors = video_embeddings(model, spec.processor, batch["pixel_values"], batch["video_mask"])
                finite = torch.isfinite(vectors).all(dim=1).tolist()
                if not all(finite):
                    bad = [videos[i].path for i, ok in zip(batch["index"], finite) if not ok]
                    raise NonFiniteEmbeddingError(
                        f"{bad[0]}: model {spec.name!r} embeds it as NaN or inf{f' (and {len(bad) - 1} more)' if bad[1:] else ''}; "
                        "nothing non-finite is stored: check the model's weights"
                    )
                embeddings.append(vectors)
                kept.extend(videos[i] for i in batch["index"])
                encoded += len(batch["index"])
            progress.update(len(batch["index"]) + len(batch["skipped"]))
            if len(kept) + len(skipped) >= chunk_size:
                flush()
        if kept or skipped:
            flush()
    finally:  # also when a batch is refused
        progress.close()
    return encoded


def _root_of(path: str, roots: list[str]) -> str | None:
    return next((root for root in roots if os.path.isdir(root) and os.path.commonpath([root, path]) == root), None)


def _skipped_entry(path: str, reason: str, roots: list[str]) -> dict:
    root = _root_of(path, roots)
    return {"path": path, "file_name": os.path.relpath(path, root) if root else os.path.basename(path), "reason": reason}


def _current(path: str, current: dict, state) -> bool:
    return path in current and same_state(state, current[path])


def _commit(output: Path, spec: ModelSpec, plan: dict, kind: str, encoded: int) -> dict:
    """Keep the rows of current files (one per path), build the FAISS index, write the manifest, clean up."""
    current = {video.path: video.state for video in plan["videos"]}
    live, obsolete, taken, skipped = [], [], set(), {}
    run_id = plan["run_id"]
    for number, part in enumerate(list_parts(output)):
        summary = read_part_summary(part)
        if summary["fingerprint"] != spec.fingerprint:
            obsolete.append(part)
            continue
        keep = [i for i, state in enumerate(summary["states"])
                if _current(state[0], current, state) and state[0] not in taken]  # fmt: skip
        taken.update(summary["states"][i][0] for i in keep)
        part_skipped = [s for s in summary["skipped"]
                        if _current(s["path"], current, _skipped_state(s)) and s["path"] not in taken]  # fmt: skip
        for record in part_skipped:
            skipped[record["path"]] = record
            taken.add(record["path"])
        if len(keep) == len(summary["states"]) and len(part_skipped) == len(summary["skipped"]):
            live.append(part)
            continue
        obsolete.append(part)
        if keep or part_skipped:  # rewrite the part without its stale rows
            table, vectors = read_rows([part])
            videos = [LibraryVideo.from_row(row) for row in table.take(keep).to_pylist()]
            compacted = output / PARTS / f"{run_id}-compacted-{number:05d}.parquet"
            write_part(compacted, videos, vectors[keep], part_skipped, spec.fingerprint, spec.config.projection_dim)
            live.append(compacted)

    dim = spec.config.projection_dim
    if kind == "ivfpq" and live:  # on disk, in chunks: never every vector in memory
        from .compressed import build_from_parts

        settings = build_from_parts(output, spec, live)
        count, index_file = settings["ntotal"], settings.pop("file")
    else:
        table, vectors = read_rows(live)
        vectors = vectors if vectors is not None else np.zeros((0, dim), np.float32)
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():  # only a part written before this check could hold one
            path = table.column("path")[int(np.argmin(finite))].as_py()
            raise NonFiniteEmbeddingError(f"{path}: its stored embedding is NaN or inf; run again with --rebuild to "
                                          "re-encode it")  # fmt: skip
        count, queries = len(vectors), None
        if count and (kind != "flat" or count > FP16_ABOVE):  # tuned on what people type, across the modality gap
            queries, tuned_on = text_like_queries(spec, table.column("caption").to_pylist(), vectors)
        index, settings = build_index(vectors, kind if count else "flat", queries=queries)
        if queries is not None:
            settings["tuning_queries_from"] = tuned_on
        index_file = f"index-{run_id}.faiss"
        write_faiss(output / index_file, index)
    roots = plan["roots"]
    listed_skips = {r["path"]: r for r in plan["listing_skipped"] if r["path"] not in current}
    every_skip = [_skipped_entry(s["path"], s["reason"], roots) for s in skipped.values()]
    every_skip += [_skipped_entry(path, r["reason"], roots) for path, r in listed_skips.items() if path not in skipped]
    first = plan["sources"][0]
    manifest = {
        "format_version": 1,
        "package_version": __version__,
        "model": {**spec.describe(), "path": str(spec.model_dir)},
        "dim": dim,
        "metric": "inner_product",
        "normalized": True,
        "library_root": roots[0],
        "source": first["source"],
        "corpus_options": first["corpus_options"],
        "sources": plan["sources"],
        "counts": {"videos": count, "skipped": len(every_skip), "listed": len(plan["videos"]),
                   "encoded_this_run": encoded, "parts": len(live)},  # fmt: skip
        "skipped": sorted(every_skip, key=lambda s: s["path"]),
        "index": {**settings, "file": index_file},
        "parts": [str(part.relative_to(output)) for part in live],
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(output / MANIFEST, manifest)  # the commit point
    for part in obsolete:  # found by listing parts/, never named by a manifest
        part.unlink(missing_ok=True)
    remove_leftovers(output, keep_index=index_file)
    return manifest


def index_library(source: str, model: str, output: str | os.PathLike, *, kind: str = "flat",
                  overrides: dict | None = None, corpus_options: dict | None = None, batch_size: int = 16,
                  num_workers: int = 2, chunk_size: int = 256, rebuild: bool = False, add: bool = False,
                  show_progress: bool = True) -> dict:
    """Index (or update) the library `source` with `model` into the folder `output`; returns the manifest.

    `rebuild`: accept another model or source (the old rows are dropped) and repair a damaged folder; `add`:
    index `source` beside the libraries already in the index. Runs in every process of an `accelerate launch`;
    each encodes its share, the main process commits.
    """
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, parse_flag_from_env

    check_kind(kind, 0)
    if chunk_size < 1 or batch_size < 1:
        raise ValueError("--chunk_size and --batch_size must be positive")
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # as Accelerator() reads it
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and state.num_processes == 1:  # each process would index everything alone
        raise RuntimeError(f"{launched} processes were launched, but Accelerate set up none of them as distributed; "
                           "on CPUs launch with `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N`")  # fmt: skip
    output = Path(output).resolve()
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"--output {output} is a file, not an index folder")
    corpus_options = dict(corpus_options or {})
    spec = ModelSpec(model, overrides)
    lock = IndexLock(output)
    message = [None]
    if state.is_main_process:
        try:
            lock.__enter__()
            parts_folder(output)
            plan = _plan(output, spec, source, corpus_options, rebuild, add, kind)
            message = [plan]
        except Exception as error:
            message = [error]
    if state.num_processes > 1:
        broadcast_object_list(message)
    plan = message[0]
    if isinstance(plan, Exception):
        if state.is_main_process and lock.handle is not None:
            lock.__exit__(None, None, None)
        raise plan
    try:
        share = plan["todo"][state.process_index :: state.num_processes]
        if state.is_main_process:
            logger.info("%d videos listed, %d to encode over %d process(es)", len(plan["videos"]), len(plan["todo"]),
                        state.num_processes)
        encoded = _encode_share(output, spec, share, plan["run_id"], state.process_index, state.device, batch_size,
                                num_workers, chunk_size, show_progress and state.is_local_main_process)  # fmt: skip
        counts = [encoded]
        if state.num_processes > 1:
            import torch.distributed as dist

            counts = [None] * state.num_processes
            dist.all_gather_object(counts, encoded)
        manifest = None
        if state.is_main_process:
            manifest = _commit(output, spec, plan, kind, sum(counts))
        state.wait_for_everyone()
        return manifest if manifest is not None else read_manifest(output)
    finally:
        if state.is_main_process:
            lock.__exit__(None, None, None)
