"""Index a video library: plan what to encode, encode it in chunks (one parquet part each), then commit.

Under `accelerate launch`, the main process takes the lock and plans; every process encodes its share of the
videos to encode (`todo[rank::world]`) into its own parts; the main process then commits: it drops rows of
deleted or changed files, builds the FAISS index and writes `manifest.json` last.

- Incremental: a video whose `(path, size, mtime_ns)` is already in a part made with the same model fingerprint
  (encoded, or recorded as undecodable) is not touched again.
- Resumable: parts are whole files (temp + rename), so a run killed at any moment resumes from its finished
  parts; only the chunks in flight are encoded again.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from pathlib import Path

import faiss
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from modeling_centerclip.processing_centerclip import VideoDecodeError
from training.data import SkippedVideo
from training.evaluate import video_embeddings
from training.frame_store import load_frame_store, row_model_inputs

from . import __version__
from .ann import FP16_ABOVE, build_index, check_kind
from .compressed import remove_stale
from .library import LibraryVideo, list_library
from .models import ModelMismatchError, ModelSpec
from .storage import (PARTS, IndexLock, list_parts, read_manifest, read_part_summary, read_rows, write_json,
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


def _plan(output: Path, spec: ModelSpec, source: str, corpus_options: dict, rebuild: bool, kind: str = "flat") -> dict:
    """What the run must encode: the library listing minus what finished parts of this model already cover."""
    if (output / "manifest.json").is_file() and not rebuild:
        previous = read_manifest(output)["model"]
        if previous["fingerprint"] != spec.fingerprint:
            raise ModelMismatchError(
                f"{output} was indexed with model {previous['name']!r} (fingerprint {previous['fingerprint']}); "
                f"{spec.name!r} has fingerprint {spec.fingerprint}. Pass --rebuild to re-encode the library "
                f"with the new model, or choose another --output."
            )
    videos, root = list_library(source, **corpus_options)
    check_kind(kind, len(videos))  # before encoding anything
    covered = set()
    for part in list_parts(output):
        summary = read_part_summary(part)
        if summary["fingerprint"] == spec.fingerprint:
            covered.update(tuple(state) for state in summary["states"])
            covered.update((s["path"], s["size"], s["mtime_ns"]) for s in summary["skipped"])
    todo = [video for video in videos if video.state not in covered]
    return {"videos": videos, "todo": todo, "root": root, "run_id": run_id()}


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
    for batch in loader:
        for item in batch["skipped"]:
            video = videos[item.index]
            logger.warning("skipping %s: %s", video.path, item.reason)
            skipped.append({"path": video.path, "size": video.size, "mtime_ns": video.mtime_ns, "reason": item.reason})
        if batch["index"]:
            embeddings.append(video_embeddings(model, spec.processor, batch["pixel_values"], batch["video_mask"]))
            kept.extend(videos[i] for i in batch["index"])
            encoded += len(batch["index"])
        progress.update(len(batch["index"]) + len(batch["skipped"]))
        if len(kept) + len(skipped) >= chunk_size:
            flush()
    if kept or skipped:
        flush()
    progress.close()
    return encoded


def _commit(output: Path, spec: ModelSpec, plan: dict, kind: str, source: str, corpus_options: dict,
            encoded: int) -> dict:
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
                if current.get(state[0]) == tuple(state) and state[0] not in taken]  # fmt: skip
        taken.update(summary["states"][i][0] for i in keep)
        part_skipped = [s for s in summary["skipped"]
                        if current.get(s["path"]) == (s["path"], s["size"], s["mtime_ns"]) and s["path"] not in taken]  # fmt: skip
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
        count, queries = len(vectors), None
        if count and (kind != "flat" or count > FP16_ABOVE):  # tuned on what people type, across the modality gap
            queries, source = text_like_queries(spec, table.column("caption").to_pylist(), vectors)
        index, settings = build_index(vectors, kind if count else "flat", queries=queries)
        if queries is not None:
            settings["tuning_queries_from"] = source
        index_file = f"index-{run_id}.faiss"
        tmp = output / f".{index_file}.tmp"
        faiss.write_index(index, str(tmp))
        os.replace(tmp, output / index_file)
    previous_index = None
    if (output / "manifest.json").is_file():
        previous_index = read_manifest(output).get("index", {}).get("file")
    root = plan["root"]
    manifest = {
        "format_version": 1,
        "package_version": __version__,
        "model": {**spec.describe(), "path": str(spec.model_dir)},
        "dim": dim,
        "metric": "inner_product",
        "normalized": True,
        "library_root": root,
        "source": source,
        "corpus_options": corpus_options,
        "counts": {"videos": count, "skipped": len(skipped), "listed": len(plan["videos"]),
                   "encoded_this_run": encoded, "parts": len(live)},  # fmt: skip
        "skipped": [{"path": s["path"], "file_name": os.path.relpath(s["path"], root) if os.path.isdir(root)
                     else os.path.basename(s["path"]), "reason": s["reason"]} for s in sorted(skipped.values(), key=lambda s: s["path"])],  # fmt: skip
        "index": {**settings, "file": index_file},
        "parts": [str(part.relative_to(output)) for part in live],
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(output / "manifest.json", manifest)  # the commit point
    for part in obsolete:
        part.unlink(missing_ok=True)
    if previous_index and previous_index != index_file:
        (output / previous_index).unlink(missing_ok=True)
    remove_stale(output, Path(index_file).parent.name if kind == "ivfpq" and live else None)
    return manifest


def index_library(source: str, model: str, output: str | os.PathLike, *, kind: str = "flat",
                  overrides: dict | None = None, corpus_options: dict | None = None, batch_size: int = 16,
                  num_workers: int = 2, chunk_size: int = 256, rebuild: bool = False, show_progress: bool = True) -> dict:
    """Index (or update) the library `source` with `model` into the folder `output`; returns the manifest.

    Runs in every process of an `accelerate launch`; each encodes its share, the main process commits.
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
    corpus_options = dict(corpus_options or {})
    spec = ModelSpec(model, overrides)
    lock = IndexLock(output)
    message = [None]
    if state.is_main_process:
        try:
            lock.__enter__()
            (output / PARTS).mkdir(parents=True, exist_ok=True)
            plan = _plan(output, spec, source, corpus_options, rebuild, kind)
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
            manifest = _commit(output, spec, plan, kind, source, corpus_options, sum(counts))
        state.wait_for_everyone()
        return manifest if manifest is not None else read_manifest(output)
    finally:
        if state.is_main_process:
            lock.__exit__(None, None, None)
