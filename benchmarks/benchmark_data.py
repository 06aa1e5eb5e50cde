"""Throughput of the input side: decoding + preprocessing clips/s with 0, 1 and 2 DataLoader workers, from the
videos and from a frame store of the same clips (`training.prepare_frames`).

Generates H.264 test videos (default 32 clips of 10 s, 320x240 at 30 fps, textured and moving so they do not
compress to nothing), then runs `training.data.VideoTextDataset` + `collate_video_text` through a torch
`DataLoader` exactly as training does (random frame per chunk, 12 frames, 224 px; uint8 batches, CLIP
normalisation in the main process, where training runs it on its device).
Steady-state clips/s counts from the first batch on (worker start-up is reported separately), over at least
`--epochs` passes and `--min_seconds` seconds. The frame store is built from the same videos (3 fps, 224 px,
default JPEG quality) and read the same way; its disk size per video gives the estimate for MSR-VTT (10k videos
of 15 s on average), and its pixels are compared with the videos' (chunk centers, 0..255 levels).

    python benchmarks/benchmark_data.py                 # full run, prints a table, writes JSON
    python benchmarks/benchmark_data.py --quick         # seconds-long smoke run (used by the tests)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from modeling_centerclip import CenterCLIPProcessor
from modeling_centerclip.processing_centerclip import read_video_frames
from training.data import VideoTextDataset, collate_video_text
from training.demo_corpus import write_mp4
from training.frame_store import load_frame_store
from training.prepare_frames import prepare_frames
from training.tokenizer import train_clip_tokenizer


def make_test_video(path: str, seconds: float, width: int, height: int, fps: int, seed: int) -> None:
    """A panning smooth-noise texture with a moving bright square: realistic enough for the H.264 decoder."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2 + int(seconds * fps), 3), dtype=np.uint8)
    texture = np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8))  # blocky texture, wider than a frame to pan over
    frames = np.stack([texture[:height, t : t + width] for t in range(int(seconds * fps))])
    for t, frame in enumerate(frames):
        x = (7 * t) % (width - 40)
        frame[height // 3 : height // 3 + 40, x : x + 40] = 255
    # Typical web video: moderate quality and a keyframe every 2 s.
    write_mp4(path, frames, fps, options={"crf": "23", "preset": "veryfast", "g": str(2 * fps)})


def measure_loader(dataset, batch_size: int, num_workers: int, epochs: int, min_seconds: float = 0.0) -> dict:
    """Clips/s through a DataLoader plus the normalisation training does on its device (here the CPU); the clock
    starts when the first batch arrives (steady state) and runs for at least `epochs` passes and `min_seconds` (a
    fast source needs more passes for a steady figure)."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_video_text,
                        shuffle=False, persistent_workers=num_workers > 0)
    start = time.perf_counter()
    first_batch_s, clips, steady_start, passes = None, 0, None, 0
    while passes < epochs or time.perf_counter() - steady_start < min_seconds:
        for batch in loader:
            if first_batch_s is None:
                first_batch_s = time.perf_counter() - start
                steady_start = time.perf_counter()
                continue  # the first batch pays for worker start-up
            clips += dataset.processor.normalize(batch["pixel_values"]).shape[0]
        passes += 1
    steady = time.perf_counter() - steady_start
    return {"num_workers": num_workers, "clips_per_s": clips / steady, "clips_timed": clips, "seconds_timed": steady,
            "passes": passes, "first_batch_s": first_batch_s, "batch_shape": list(batch["pixel_values"].shape)}


def measure_stages(paths: list[str], processor: CenterCLIPProcessor) -> dict:
    """Mean milliseconds per clip for decoding alone and for resize + crop + normalise alone (one process)."""
    frames, _ = read_video_frames(paths[0], processor.num_frames, target_fps=processor.fps)
    processor.preprocess_frames(torch.from_numpy(frames))  # warm-up, untimed
    decode_s = preprocess_s = 0.0
    for path in paths:
        start = time.perf_counter()
        frames, _ = read_video_frames(path, processor.num_frames, target_fps=processor.fps, training=True)
        decode_s += time.perf_counter() - start
        start = time.perf_counter()
        processor.preprocess_frames(torch.from_numpy(frames))
        preprocess_s += time.perf_counter() - start
    count = len(paths)
    return {"decode_ms_per_clip": 1000 * decode_s / count, "preprocess_ms_per_clip": 1000 * preprocess_s / count}


def measure_frame_store(args, workdir: str, paths: list[str], captions: list[str], tokenizer) -> dict:
    """Build the store of the clips (timed), then clips/s reading it, disk size and pixel error against the videos."""
    with open(os.path.join(workdir, "metadata.jsonl"), "w", encoding="utf-8") as handle:
        for path, caption in zip(paths, captions):
            handle.write(json.dumps({"file_name": os.path.basename(path), "caption": caption}) + "\n")
    store_dir = os.path.join(workdir, "frame_store")
    shutil.rmtree(store_dir, ignore_errors=True)
    start = time.perf_counter()
    summary = prepare_frames(workdir, store_dir, fps=args.store_fps, size=args.image_size,
                             num_proc=args.store_num_proc, show_progress=False)
    build_s = time.perf_counter() - start
    processor = CenterCLIPProcessor(tokenizer=tokenizer, num_frames=args.num_frames, image_size=args.image_size,
                                    fps=args.store_fps)
    store_split = load_frame_store(store_dir)["train"]
    errors = []
    for row in store_split.select(range(min(8, len(store_split)))):
        from_store, _ = processor.load_video(row["frames"])
        from_video, _ = processor.load_video(row["video"])
        errors.append((from_store - from_video).abs() * torch.tensor(processor.image_std).view(1, 3, 1, 1) * 255)
    error = torch.stack(errors)
    dataset = VideoTextDataset(store_split, processor, training=True, do_normalize=False)
    runs = []
    for workers in args.workers:
        stats = measure_loader(dataset, args.batch_size, workers, args.epochs, args.min_seconds)
        row = {"source": "frame store", "decode_fps": args.store_fps, **stats}
        runs.append(row)
        print(f"frame store  workers={workers}  {row['clips_per_s']:7.1f} clips/s  "
              f"(first batch {row['first_batch_s']:.2f} s)", flush=True)
    per_video = summary["bytes"] / len(store_split)
    return {"runs": runs, "build_s": build_s, "build_videos_per_s": len(paths) / build_s,
            "build_num_proc": args.store_num_proc, "bytes_per_video": per_video,
            "bytes_per_video_second": per_video / args.seconds,
            "msrvtt_estimate_gb": per_video / args.seconds * 15 * 10_000 / 1e9,
            "pixel_mean_abs_error": float(error.mean()), "pixel_max_abs_error": float(error.max())}


def run(args) -> dict:
    workdir = args.video_dir or tempfile.mkdtemp(prefix="centerclip_bench_")
    os.makedirs(workdir, exist_ok=True)
    paths = [os.path.join(workdir, f"clip{i:03d}.mp4") for i in range(args.num_videos)]
    start = time.perf_counter()
    for i, path in enumerate(paths):
        if not os.path.exists(path):
            make_test_video(path, args.seconds, args.width, args.height, args.fps, seed=i)
    generation_s = time.perf_counter() - start
    captions = [f"clip number {i} shows a moving square" for i in range(args.num_videos)]
    tokenizer = train_clip_tokenizer(captions, vocab_size=300)
    split = Dataset.from_dict({"video_id": [os.path.basename(p) for p in paths], "video": paths, "caption": captions})
    results = {"settings": {k: v for k, v in vars(args).items() if k != "output"}, "generation_s": generation_s,
               "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "python": sys.version.split()[0], "platform": platform.platform()},
               "runs": []}
    for fps in args.decode_fps:
        processor = CenterCLIPProcessor(tokenizer=tokenizer, num_frames=args.num_frames, image_size=args.image_size,
                                        fps=fps if fps > 0 else None)
        stages = measure_stages(paths[: min(8, len(paths))], processor)
        dataset = VideoTextDataset(split, processor, training=True, do_normalize=False)
        for workers in args.workers:
            loader_stats = measure_loader(dataset, args.batch_size, workers, args.epochs, args.min_seconds)
            row = {"decode_fps": fps if fps > 0 else None, **loader_stats, **stages}
            results["runs"].append({"source": "video", **row})
            print(f"fps={row['decode_fps'] or 'native':>6}  workers={workers}  {row['clips_per_s']:7.1f} clips/s  "
                  f"(first batch {row['first_batch_s']:.2f} s)", flush=True)
    if args.store_fps:
        results["frame_store"] = measure_frame_store(args, workdir, paths, captions, tokenizer)
    return results


def print_table(results: dict) -> None:
    s = results["settings"]
    print(f"\n{s['num_videos']} videos of {s['seconds']} s, {s['width']}x{s['height']} @ {s['fps']} fps -> "
          f"{s['num_frames']} frames at {s['image_size']} px, batch {s['batch_size']}, "
          f"{results['machine']['cpus']} CPUs")
    print("| source | frames from | workers | clips/s | decode ms/clip | preprocess ms/clip |")
    print("|---|---|---|---|---|---|")
    store = results.get("frame_store")
    for row in results["runs"] + (store["runs"] if store else []):
        fps = f"{row['decode_fps']:g} fps" if row["decode_fps"] else "native fps"
        timed = "decode_ms_per_clip" in row  # stage timings exist for video runs only
        stages = f"{row['decode_ms_per_clip']:.0f} | {row['preprocess_ms_per_clip']:.0f}" if timed else "- | -"
        print(f"| {row['source']} | {fps} | {row['num_workers']} | {row['clips_per_s']:.1f} | {stages} |")
    if store:
        video = {r["num_workers"]: r["clips_per_s"] for r in results["runs"] if r["decode_fps"] == s["store_fps"]}
        speedups = ", ".join(f"{r['clips_per_s'] / video[r['num_workers']]:.1f}x with {r['num_workers']} workers"
                             for r in store["runs"] if r["num_workers"] in video)
        print(f"\nframe store vs decoding at {s['store_fps']:g} fps: {speedups or 'no matching video run'}")
        print(f"frame store: {store['bytes_per_video'] / 2**10:.0f} KiB per {s['seconds']:g} s video "
              f"({store['bytes_per_video_second'] / 2**10:.0f} KiB per second of video) -> MSR-VTT (10k videos, "
              f"15 s on average) about {store['msrvtt_estimate_gb']:.1f} GB; built at "
              f"{store['build_videos_per_s']:.1f} videos/s with {store['build_num_proc']} processes; pixels vs the "
              f"video: mean abs error {store['pixel_mean_abs_error']:.2f}, max {store['pixel_max_abs_error']:.0f} "
              f"(0..255)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: 4 short small videos")
    parser.add_argument("--num_videos", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--num_frames", type=int, default=12)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2, help="passes over the clips, at least")
    parser.add_argument("--min_seconds", type=float, default=8.0, help="steady-state seconds timed, at least")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--decode_fps", type=float, nargs="+", default=[0, 3], help="0 = every frame (native)")
    parser.add_argument("--store_fps", type=float, default=3.0, help="frame store fps (0: no frame store)")
    parser.add_argument("--store_num_proc", type=int, default=os.cpu_count(), help="processes building the store")
    parser.add_argument("--torch_threads", type=int, default=1,
                        help="torch threads of the main process; 1, as in DataLoader workers, so that 0 workers "
                             "measures one core's work (2 threads on 2 shared cores slowed preprocessing ~10x)")
    parser.add_argument("--video_dir", help="reuse / keep the generated videos here")
    parser.add_argument("--output", default="outputs/benchmark_data.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_videos, args.seconds, args.width, args.height = 4, 1.0, 160, 120
        args.batch_size, args.epochs, args.min_seconds, args.decode_fps = 2, 1, 0.0, [0]
    threads = torch.get_num_threads()
    torch.set_num_threads(args.torch_threads or threads)
    try:
        results = run(args)
    finally:
        torch.set_num_threads(threads)  # main() also runs inside other processes (the tests)
    print_table(results)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
    print(f"wrote {args.output}")
    return results


if __name__ == "__main__":
    main()
