"""Decode a corpus once into a frame store (`training.frame_store`), so training and evaluation stop decoding video.

    python -m training.prepare_frames msrvtt --video_dir videos/ --splits_dir splits/msrvtt --output_dir frames/msrvtt
    python -m training.prepare_frames data/my_videofolder --output_dir frames/mine --num_proc 8
    python training/train.py --corpus frames/msrvtt ...          # then read it like any corpus

Each video is decoded once (in `--num_proc` processes, with a progress bar) at `--fps` (the frames the processor
would sample from at that rate), resized (shorter side to `--size`, center crop, as the processor does) and
stored as JPEG (`--quality`). Splits are written in shards of `--shard_size` videos, each atomically, so an
interrupted run resumes where it stopped when started again with the same arguments (the same source, however
its path is spelled). Videos that fail to decode are skipped and listed with their reason in `summary.json`; the
run still succeeds. The store is a `datasets` dataset (`load_dataset(output_dir)`); `--push_to_hub org/name`
uploads it whole, settings included, and `--corpus org/name` reads it back anywhere.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

if __name__ == "__main__":  # --help and a mistyped flag answer before numpy and datasets load
    from training.cli_parsers import build_prepare_frames_parser

    build_prepare_frames_parser().parse_args()

import numpy as np
from datasets import List
from datasets.arrow_writer import ArrowWriter

from training.cli_parsers import build_prepare_frames_parser
from training.corpora import CORPORA, CORPUS_KEYS, CORPUS_PATH_KEYS, load_corpus
from training.frame_store import (
    CARD_FILE,
    STORE_FILE,
    STORE_VERSION,
    SUMMARY_FILE,
    failed_path,
    read_manifest,
    shard_path,
    store_features,
)

logger = logging.getLogger(__name__)

DECODE_BATCH = 32  # frames decoded at a time: bounds memory on long, large videos


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    # 4:4:4: the source's chroma was subsampled at its own resolution already; halving it again after the
    # downscale costs 3x the error (mean 10 vs 2.5 levels on the benchmark's textured clips) for 40% less disk.
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


def decode_video(path: str, fps: float | None, size: int, quality: int) -> dict:
    """The frames the processor samples from at `fps`, resized and JPEG-encoded, with their timestamps.

    Returns `{"frames": [{"bytes": ...}], "timestamps": [s], "duration": s}`; raises `VideoDecodeError`.
    """
    import torch

    from modeling_centerclip.processing_centerclip import (
        candidate_frame_indices,
        decord_errors,
        open_video,
        resize_and_center_crop,
    )

    reader = open_video(path)
    with decord_errors(path):
        times = reader.get_frame_timestamp(np.arange(len(reader)))  # [frames, 2]: start and end seconds
        # The processor's own choice of candidates (by timestamp, so variable-frame-rate videos match too).
        indices = candidate_frame_indices(len(reader), native_fps=reader.get_avg_fps(), target_fps=fps,
                                          timestamps=times if fps else None)
        duration = float(times[-1, 1])
        frames = []
        for start in range(0, len(indices), DECODE_BATCH):
            batch = torch.from_numpy(reader.get_batch(indices[start : start + DECODE_BATCH].tolist()).asnumpy())
            if size:  # the processor's own resize, on uint8 frames as it does it
                batch = resize_and_center_crop(batch.permute(0, 3, 1, 2), size).permute(0, 2, 3, 1)
            frames.extend({"bytes": encode_jpeg(frame, quality), "path": None} for frame in batch.contiguous().numpy())
    return {"frames": frames, "timestamps": times[indices, 0].astype(np.float32).tolist(), "duration": duration}


def decode_task(task: tuple) -> tuple[dict | None, str | None]:
    """Worker entry point: `(result, None)` or `(None, reason)`; never raises, so one bad video stops nothing."""
    path, fps, size, quality = task
    from modeling_centerclip.processing_centerclip import VideoDecodeError

    try:
        return decode_video(path, fps, size, quality), None
    except VideoDecodeError as error:
        return None, error.reason
    except Exception as error:  # e.g. a frame PIL cannot encode: still only this video's problem
        return None, f"{type(error).__name__}: {error}"


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core already; also keeps a forked worker out of OpenMP's pool


def plan_store(corpus, settings: dict, shard_size: int) -> dict:
    """The manifest: settings and, per split, its rows and shards."""
    splits = {}
    for name, split in corpus.items():
        caption_is_list = isinstance(split.features["caption"], List)
        splits[name] = {"videos": len(split), "shards": max(1, -(-len(split) // shard_size)),
                        "shard_size": shard_size, "caption_is_list": caption_is_list}
    return {"version": STORE_VERSION, "settings": settings, "splits": splits}


def _write_json_atomically(path: str, data) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
    os.replace(temporary, path)


def open_store(output_dir: str, manifest: dict) -> None:
    """Create the store folder, or check that the one there was started with the same settings and corpus."""
    os.makedirs(output_dir, exist_ok=True)
    if os.path.isfile(os.path.join(output_dir, STORE_FILE)):
        existing = read_manifest(output_dir)
        if existing != manifest:
            there = existing["settings"]
            shown = "; ".join(f"{key} {there.get(key)!r} there, {value!r} now" for key, value in
                              manifest["settings"].items() if there.get(key) != value) or "another corpus"  # fmt: skip
            raise ValueError(f"{output_dir} holds a frame store made with other settings ({shown}): use another "
                             "--output_dir, or delete it")  # fmt: skip
        return
    _write_json_atomically(os.path.join(output_dir, STORE_FILE), manifest)
    write_card(output_dir, manifest)


def write_card(output_dir: str, manifest: dict) -> None:
    """The dataset card: YAML `configs:` mapping each split to its shards (what `load_dataset` and the Hub read),
    and the settings in words."""
    settings = manifest["settings"]
    files = "".join(f"  - split: {split}\n    path: data/{split}-*.arrow\n" for split in manifest["splits"])
    rows = "".join(f"| {split} | {layout['videos']} | {layout['shards']} |\n" for split, layout in manifest["splits"].items())
    fps = "every frame" if settings["fps"] is None else f"{settings['fps']:g} fps"
    size = "the decoded size" if not settings["size"] else f"{settings['size']}x{settings['size']} px (shorter side resized, center crop)"
    card = (f"---\nconfigs:\n- config_name: default\n  data_files:\n{files}tags:\n- video\n- centerclip-frame-store\n---\n\n"
            f"# Frame store of {os.path.basename(str(settings['source']))}\n\n"
            f"Videos decoded once by `python -m training.prepare_frames` (CenterCLIP): frames at {fps}, {size}, "
            f"JPEG quality {settings['quality']}. One row per video: `video_id`, `caption`, `frames`, `timestamps` "
            "(seconds), `duration` (seconds), `video` (the source file).\n\n"
            "```python\nfrom datasets import load_dataset\nstore = load_dataset(\"THIS_REPO_OR_FOLDER\")\n```\n\n"
            "Training, evaluation and `centerclip index` read it with `--corpus THIS_REPO_OR_FOLDER`; the settings "
            f"travel in `{STORE_FILE}`, the videos that failed to decode are listed in `{SUMMARY_FILE}`.\n\n"
            "| split | videos planned | shards |\n|---|---|---|\n" + rows)  # fmt: skip
    temporary = os.path.join(output_dir, f".{CARD_FILE}.tmp-{os.getpid()}")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(card)
    os.replace(temporary, os.path.join(output_dir, CARD_FILE))


def write_shard(output_dir: str, index: tuple[str, int, int], rows: list[dict], failed: list[dict],
                caption_is_list: bool) -> None:  # fmt: skip
    """Write one shard `(split, number, count)`: its failed list, then its rows to a hidden temporary file renamed
    into place, so a shard is there whole or not at all (and `datasets` never sees a half-written one)."""
    _write_json_atomically(os.path.join(output_dir, failed_path(*index)), failed)
    final = os.path.join(output_dir, shard_path(*index))
    temporary = os.path.join(os.path.dirname(final), f".tmp-{os.path.basename(final)}-{os.getpid()}")
    os.makedirs(os.path.dirname(final), exist_ok=True)
    features = store_features(caption_is_list)
    columns = {key: [row[key] for row in rows] for key in features}
    # A shard whose videos all failed is an empty table with the store's schema: every shard file exists.
    with ArrowWriter(features=features, path=temporary) as writer:
        if rows:
            writer.write_batch(columns)
        writer.finalize()
    os.replace(temporary, final)


def _folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


def summarize(output_dir: str, manifest: dict, seconds: float) -> dict:
    """Counts, failed videos and disk size of a complete store -> `summary.json`."""
    failed, splits = [], {}
    for split, layout in manifest["splits"].items():
        split_failed = []
        for index in range(layout["shards"]):
            with open(os.path.join(output_dir, failed_path(split, index, layout["shards"])), encoding="utf-8") as handle:
                split_failed += [{"split": split, **entry} for entry in json.load(handle)]
        splits[split] = {"videos": layout["videos"] - len(split_failed), "failed": len(split_failed)}
        failed += split_failed
    stored = sum(s["videos"] for s in splits.values())
    size = _folder_bytes(os.path.join(output_dir, "data"))
    summary = {"splits": splits, "failed": failed, "bytes": size, "bytes_per_video": size / max(1, stored),
               "seconds_this_run": seconds, "settings": manifest["settings"]}
    _write_json_atomically(os.path.join(output_dir, SUMMARY_FILE), summary)
    return summary


def prepare_frames(
    source: str,
    output_dir: str,
    fps: float | None = 3.0,
    size: int = 224,
    quality: int = 95,
    num_proc: int = 1,
    shard_size: int = 100,
    show_progress: bool = True,
    **corpus_options,
) -> dict:
    """Build (or finish) the frame store of a corpus; returns the summary (also in `output_dir/summary.json`)."""
    from tqdm.auto import tqdm

    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive (or None for every frame), got {fps}")
    if size < 0 or not 1 <= quality <= 100 or num_proc < 1 or shard_size < 1:
        raise ValueError(f"need size >= 0, 1 <= quality <= 100, num_proc >= 1, shard_size >= 1; got "
                         f"size={size}, quality={quality}, num_proc={num_proc}, shard_size={shard_size}")
    source, output_dir = os.fspath(source), os.fspath(output_dir)
    if os.path.isdir(source) and os.path.exists(output_dir) and os.path.samefile(source, output_dir):
        raise ValueError(f"--output_dir {output_dir} is the source folder {source}: write the store to a folder of "
                         "its own")  # fmt: skip
    start = time.perf_counter()
    corpus = load_corpus(source, **corpus_options)
    # Paths are recorded absolute: a resume that spells the source another way is the same store, and rows keep
    # their identity (`video`) from any working directory.
    settings = {"source": source if source in CORPORA else os.path.abspath(source),
                "corpus_options": {key: os.path.abspath(value) if key in CORPUS_PATH_KEYS else value
                                   for key, value in corpus_options.items()},
                "fps": fps, "size": size, "quality": quality}  # fmt: skip
    manifest = plan_store(corpus, settings, shard_size)
    open_store(output_dir, manifest)

    pending = []  # (split, shard index, rows of the corpus split)
    for split, layout in manifest["splits"].items():
        for index in range(layout["shards"]):
            if not os.path.isfile(os.path.join(output_dir, shard_path(split, index, layout["shards"]))):
                rows = range(index * shard_size, min((index + 1) * shard_size, layout["videos"]))
                pending.append((split, index, rows))
    total = sum(len(rows) for _, _, rows in pending)
    done = sum(layout["videos"] for layout in manifest["splits"].values()) - total
    if done:
        logger.info("%s: resuming, %d videos already stored, %d to decode", output_dir, done, total)
    tasks = [(corpus[split][row]["video"], fps, size, quality) for split, _, rows in pending for row in rows]

    pool = None
    if num_proc > 1:  # forked where that is safe, as DataLoader workers are (spawning re-imports for seconds)
        context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        pool = ProcessPoolExecutor(num_proc, context, initializer=_init_worker)
    try:
        # A decoder crash (not an error: a dead process) raises BrokenProcessPool; finished shards are kept.
        results = pool.map(decode_task, tasks) if pool else map(decode_task, tasks)
        with tqdm(total=total, desc="decoding videos", unit="video", disable=not show_progress) as progress:
            for split, index, rows in pending:
                layout = manifest["splits"][split]
                stored, failed = [], []
                for row in rows:
                    record = corpus[split][row]
                    video = os.path.abspath(record["video"])
                    result, reason = next(results)
                    progress.update()
                    if result is None:
                        logger.warning("skipping %s: %s", video, reason)
                        failed.append({"video_id": record["video_id"], "video": video, "reason": reason})
                    else:
                        stored.append({"video_id": record["video_id"], "caption": record["caption"],
                                       "video": video, **result})
                write_shard(output_dir, (split, index, layout["shards"]), stored, failed, layout["caption_is_list"])
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    summary = summarize(output_dir, manifest, time.perf_counter() - start)
    if summary["failed"]:
        logger.warning("%d videos could not be decoded and are not in the store; see %s",
                       len(summary["failed"]), os.path.join(output_dir, SUMMARY_FILE))
    return summary


def push_store_to_hub(output_dir: str, repo_id: str, private: bool = False) -> None:
    """Publish a complete store as a dataset repository: the folder as it is (card, shards, settings, failed
    lists, summary), so `load_dataset(repo_id)` and `--corpus repo_id` read it like the local folder."""
    from huggingface_hub import HfApi

    if not os.path.isfile(os.path.join(output_dir, SUMMARY_FILE)):
        raise ValueError(f"{output_dir} is not a complete frame store (no {SUMMARY_FILE}); finish it first")
    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(folder_path=output_dir, repo_id=repo_id, repo_type="dataset", ignore_patterns=[".*", "**/.*"],
                      commit_message="Upload frame store (training.prepare_frames)")  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    args = build_prepare_frames_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    corpus_options = {key: getattr(args, key) for key in CORPUS_KEYS if getattr(args, key)}
    summary = prepare_frames(args.source, args.output_dir, fps=None if args.fps == 0 else args.fps, size=args.size,
                             quality=args.quality, num_proc=args.num_proc, shard_size=args.shard_size,
                             **corpus_options)
    counts = ", ".join(f"{name} {s['videos']} videos ({s['failed']} failed)" for name, s in summary["splits"].items())
    print(f"{args.output_dir}: {counts}; {summary['bytes'] / 2**20:.1f} MiB, "
          f"{summary['bytes_per_video'] / 2**10:.0f} KiB per video")
    if args.push_to_hub:
        push_store_to_hub(args.output_dir, args.push_to_hub, args.private)
        print(f"pushed to https://huggingface.co/datasets/{args.push_to_hub}")
    return summary


if __name__ == "__main__":
    from training.cli_errors import run_cli

    run_cli("python -m training.prepare_frames", main)
