"""Video search benchmark: indexing throughput, query latency, and FAISS index kinds at library scale.

1. Indexing throughput (videos/s, decoding in DataLoader workers included, `centerclip index` end to end) on
   the same H.264 files: CenterCLIP (B/32 shapes, 12 frames at 224 px, k-medoids 4x49 after layer 6) against
   stock CLIP mean pooling (`cluster_algo="none"`, every frame through the tower), same random weights.
2. Query latency on that index: text query (tokenizer + text tower) + search, p50 / p99.
3. Synthetic L2-normalised embeddings with cluster structure at several library sizes (default 10k, 100k and
   1M x 512): for `flat`, `ivf` and `hnsw` as `centerclip index --index` builds them (search parameters tuned to
   recall@10 >= 0.95): build time, index memory, single-query and batch-of-64 latency p50 / p99, recall@10
   against exact float32 search on queries not used for tuning.

4. The compressed kind (`ivfpq`) at 1M and 10M synthetic vectors with a modality gap, each size in its own
   process (its peak resident memory measured): the vectors are generated in blocks and never all held; text
   queries sit across the gap; recall@10 against exact float32 search by a chunked scan; build time, disk
   bytes per vector, latency p50 / p99. Flat and IVF run beside it, on the same text queries, up to
   `--in_ram_max` vectors.

    python benchmarks/benchmark_search.py                       # 1-3 (about 15 min on 2 cores)
    python benchmarks/benchmark_search.py --only compressed     # 4 (about 30 min at 10M; 12 GB of disk)
    python benchmarks/benchmark_search.py --quick               # tiny shapes, seconds (used by the tests)

Prints tables; writes `search.json` and `search_latency.png` (1-3), `search_compressed.json` (4) to
`--output_dir` (default `docs/`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_data import make_test_video  # noqa: E402

from modeling_centerclip import CenterCLIPConfig, CenterCLIPModel, CenterCLIPProcessor  # noqa: E402
from search import VideoIndex  # noqa: E402
from search.ann import HNSW_MAX, KINDS, build_index, recall_at_k, tuning_queries  # noqa: E402

IN_MEMORY_KINDS = tuple(kind for kind in KINDS if kind != "ivfpq")  # ivfpq is built on disk: --only compressed
from search.compressed import CompressedIndex, build_compressed, exact_top_k  # noqa: E402
from search.indexer import index_library  # noqa: E402
from training.tokenizer import train_clip_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUERIES = ["a dog catches a frisbee", "a man plays the guitar on a stage", "a red car drives down a street",
           "people dance at a party", "a cat sleeps on a sofa", "someone is cooking in the kitchen"]  # fmt: skip


def save_random_model(folder: Path, quick: bool) -> Path:
    """Random weights: the B/32 hub configuration (or a tiny one with --quick) and a small trained tokenizer."""
    torch.manual_seed(0)
    tokenizer = train_clip_tokenizer(QUERIES * 4, vocab_size=300)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if quick:
        config = CenterCLIPConfig(
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             vocab_size=len(tokenizer), max_position_embeddings=32, **ids),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
                               image_size=32, patch_size=8),
            projection_dim=16, num_frames=4, num_segments=2, num_centers=6, cluster_layer=2)  # fmt: skip
    else:
        config = CenterCLIPConfig.from_pretrained(REPO / "hub_configs" / "centerclip-vitb32", attn_implementation="sdpa")
        config.text_config.update(ids)
    CenterCLIPModel(config).save_pretrained(folder)
    CenterCLIPProcessor(tokenizer, num_frames=config.num_frames, image_size=config.vision_config.image_size).save_pretrained(folder)
    return folder


def measure_indexing(videos: Path, model: Path, work: Path, args) -> dict:
    """videos/s of `index_library` for both models, interleaved, best of `--repeats` fresh indexes each."""
    cases = {"stock CLIP mean pooling": {"cluster_algo": "none"}, "CenterCLIP k-medoids": None}
    best: dict[str, float] = {}
    for repeat in range(args.repeats):
        for name, overrides in cases.items():
            output = work / f"index-{repeat}-{name.split()[0]}"
            start = time.perf_counter()
            manifest = index_library(str(videos), str(model), output, overrides=overrides, batch_size=args.batch_size,
                                     num_workers=args.num_workers, show_progress=False)  # fmt: skip
            rate = manifest["counts"]["videos"] / (time.perf_counter() - start)
            print(f"  {name}: {rate:.2f} videos/s", flush=True)
            best[name] = max(best.get(name, 0.0), rate)
    stock, centerclip = best["stock CLIP mean pooling"], best["CenterCLIP k-medoids"]
    return {"stock_videos_per_s": stock, "centerclip_videos_per_s": centerclip, "speedup": centerclip / stock,
            "index_dir": str(output)}  # fmt: skip


def percentiles(values: list[float]) -> dict:
    return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99))}


def measure_queries(index_dir: str, repeats: int) -> dict:
    index = VideoIndex.load(index_dir)
    index.search(text=QUERIES[0], k=10)  # loads the text tower
    total, encode = [], []
    for i in range(repeats):
        query = QUERIES[i % len(QUERIES)]
        start = time.perf_counter()
        embedding = index.encode_text([query])
        encode.append((time.perf_counter() - start) * 1000)
        index.search_embeddings(embedding, 10)
        total.append((time.perf_counter() - start) * 1000)
    return {"text_query_total": percentiles(total), "text_encode": percentiles(encode), "library_videos": len(index)}


def clustered_embeddings(count: int, dim: int, seed: int = 0, clusters: int = 1000) -> np.ndarray:
    """Unit vectors around `clusters` random centers (spread like embeddings of related videos)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim), dtype=np.float32)
    vectors = np.empty((count, dim), np.float32)
    for start in range(0, count, 100_000):  # in blocks: bounded temporary memory
        stop = min(start + 100_000, count)
        block = centers[rng.integers(0, clusters, stop - start)] + 0.9 * rng.standard_normal((stop - start, dim), dtype=np.float32)
        vectors[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return vectors


def index_bytes(index) -> int:
    with tempfile.NamedTemporaryFile(suffix=".faiss") as handle:
        faiss.write_index(index, handle.name)
        return os.path.getsize(handle.name)


def measure_kind(vectors: np.ndarray, kind: str, queries: np.ndarray, truth: np.ndarray, single: int) -> dict:
    start = time.perf_counter()
    index, settings = build_index(vectors, kind)
    build_s = time.perf_counter() - start  # including the tuning searches
    singles = []
    for query in queries[:single]:
        t = time.perf_counter()
        index.search(query[None], 10)
        singles.append((time.perf_counter() - t) * 1000)
    batches = []
    for b in range(0, min(len(queries), 5 * 64), 64):
        t = time.perf_counter()
        index.search(queries[b : b + 64], 10)
        batches.append((time.perf_counter() - t) * 1000)
    found = index.search(queries, 10)[1]
    return {"kind": kind, "count": len(vectors), "storage": settings["storage"], "build_s": build_s,
            "params": {k: settings[k] for k in ("nlist", "nprobe", "M", "efSearch") if k in settings},
            "memory_mb": index_bytes(index) / 2**20, "single": percentiles(singles), "batch64": percentiles(batches),
            "recall_at_10": recall_at_k(found, truth), "tuned_recall_at_10": settings["recall_at_10"]}  # fmt: skip


def measure_ann(sizes: list[int], dim: int, single: int, hnsw_max: int) -> list[dict]:
    rows = []
    for count in sizes:
        vectors = clustered_embeddings(count, dim)
        queries = tuning_queries(vectors, count=320, seed=1)  # not the tuning queries (seed 0)
        exact = faiss.IndexFlatIP(dim)
        exact.add(vectors)
        truth = exact.search(queries, 10)[1]
        del exact
        for kind in IN_MEMORY_KINDS:
            if kind == "hnsw" and count > hnsw_max:
                print(f"  {count:>9,}  hnsw: skipped (above --hnsw_max {hnsw_max:,})", flush=True)
                continue
            row = measure_kind(vectors, kind, queries, truth, single)
            print(f"  {count:>9,} {kind:>5} ({row['storage']}): build {row['build_s']:.1f} s, "
                  f"{row['memory_mb']:.0f} MB, p50 {row['single']['p50_ms']:.2f} ms, "
                  f"recall@10 {row['recall_at_10']:.3f} {row['params']}", flush=True)  # fmt: skip
            rows.append(row)
        del vectors
    return rows


GEN_BLOCK = 100_000


class GapLibrary:
    """Synthetic embeddings with CLIP's modality gap, generated block by block (never all in memory).

    Videos: `normalize(0.7 mu_video + c_j + 0.9 n)` around `clusters` random unit centers `c_j` (n: Gaussian
    noise of norm about 1); text queries: `normalize(0.7 mu_text + c_j + 0.9 n)`, the same clusters seen from
    the other tower's cone (mu_video and mu_text: two random unit directions). A query's best videos score
    about 0.4 while videos score about 0.7 with each other, as with CLIP text and video embeddings.
    """

    def __init__(self, count: int, dim: int, clusters: int = 4096, seed: int = 0):
        self.count, self.dim, self.seed = count, dim, seed
        rng = np.random.default_rng(seed)
        unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
        self.centers = unit(rng.standard_normal((clusters, dim), dtype=np.float32))
        self.mu_video, self.mu_text = unit(rng.standard_normal((2, dim), dtype=np.float32))

    def _draw(self, rng, rows: int, mean: np.ndarray) -> np.ndarray:
        block = rng.standard_normal((rows, self.dim), dtype=np.float32)
        block *= 0.9 / np.sqrt(self.dim)
        block += self.centers[rng.integers(0, len(self.centers), rows)]
        block += 0.7 * mean
        faiss.normalize_L2(block)  # in place, in blocks: bounded temporary memory
        return block

    def block(self, number: int) -> np.ndarray:
        start = number * GEN_BLOCK
        rows = min(GEN_BLOCK, self.count - start)
        return self._draw(np.random.default_rng([self.seed, 1, number]), rows, self.mu_video)

    def blocks(self):
        for number, start in enumerate(range(0, self.count, GEN_BLOCK)):
            yield start, min(start + GEN_BLOCK, self.count), lambda number=number: self.block(number)

    def text_queries(self, count: int, seed: int) -> np.ndarray:
        return self._draw(np.random.default_rng([self.seed, 2, seed]), count, self.mu_text)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_queries(search, queries: np.ndarray) -> dict:
    times = []
    for query in queries:
        start = time.perf_counter()
        search(query[None])
        times.append((time.perf_counter() - start) * 1000)
    return percentiles(times)


def measure_compressed(count: int, dim: int, work: Path, single: int, in_ram_max: int) -> dict:
    """One size of part 4, in this process (the parent reads its peak resident memory)."""
    faiss.omp_set_num_threads(1)  # 7 people share 2 cores: spinning OpenMP threads made everything 4x slower
    library = GapLibrary(count, dim)
    tuning = library.text_queries(200, seed=0)
    queries = library.text_queries(max(single, 300), seed=1)  # not the tuning queries
    heap, spent = faiss.ResultHeap(len(queries), 10, keep_max=True), {"generate": 0.0, "truth": 0.0}

    def blocks():  # each block generated once: written by the build and scanned for the exact ground truth
        for start, stop, load in library.blocks():
            def generate_and_scan(start=start, load=load):
                t0 = time.perf_counter()
                block = load()
                t1 = time.perf_counter()
                scores, rows = faiss.knn(queries, block, 10, metric=faiss.METRIC_INNER_PRODUCT)
                heap.add_result(scores, rows + start)
                spent["generate"] += t1 - t0
                spent["truth"] += time.perf_counter() - t1
                return block
            yield start, stop, generate_and_scan

    folder = work / "ivfpq-benchmark"
    start = time.perf_counter()
    settings = build_compressed(folder, count, dim, blocks, tuning)
    build_s = time.perf_counter() - start - spent["generate"] - spent["truth"]  # written, trained, encoded, merged, tuned
    heap.finalize()
    truth, truth_s = heap.I, spent["truth"]
    index = CompressedIndex(folder, settings)
    found = index.search(queries, 10)[1]
    latency = time_queries(lambda q: index.search(q, 10), queries[:single])
    disk = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    row = {"kind": "ivfpq", "count": count, "build_s": build_s, "disk_bytes_per_vector": disk / count,
           "params": {k: settings[k] for k in ("nlist", "m", "nbits", "nprobe", "rerank")},
           "single": latency, "recall_at_10": recall_at_k(found, truth), "tuned_recall_at_10": settings["recall_at_10"],
           "exact_ground_truth_s": truth_s}  # fmt: skip
    rows = [row]
    print(f"  {count:>11,} ivfpq: build {build_s:.0f} s, {row['disk_bytes_per_vector']:.0f} B/vector on disk, "
          f"p50 {latency['p50_ms']:.2f} ms, recall@10 {row['recall_at_10']:.3f} {row['params']}", flush=True)  # fmt: skip
    del index
    shutil.rmtree(folder)
    if count <= in_ram_max:  # flat and IVF-Flat as `centerclip index` builds them, on the same text queries
        vectors = np.concatenate([load() for _, _, load in library.blocks()])
        for kind in ("flat", "ivf"):
            start = time.perf_counter()
            built, settings = build_index(vectors, kind)
            build_s = time.perf_counter() - start
            found = built.search(queries, 10)[1]
            rows.append({"kind": kind, "count": count, "build_s": build_s, "storage": settings["storage"],
                         "memory_bytes_per_vector": index_bytes(built) / count,
                         "params": {k: settings[k] for k in ("nlist", "nprobe") if k in settings},
                         "single": time_queries(lambda q: built.search(q, 10), queries[:single]),
                         "recall_at_10": recall_at_k(found, truth), "tuned_recall_at_10": settings["recall_at_10"]})  # fmt: skip
            print(f"  {count:>11,} {kind}: build {build_s:.0f} s, p50 {rows[-1]['single']['p50_ms']:.2f} ms, "
                  f"recall@10 on text queries {rows[-1]['recall_at_10']:.3f}", flush=True)  # fmt: skip
            del built
    return {"count": count, "rows": rows, "peak_rss_mb": peak_rss_mb(), "load_average_at_end": os.getloadavg()}


def run_compressed(sizes: list[int], dim: int, single: int, in_ram_max: int, work_dir: str | None) -> list[dict]:
    """Part 4: each size in a child process of its own, so its peak resident memory is its own."""
    results = []
    for count in sizes:
        with tempfile.TemporaryDirectory(prefix="benchmark-ivfpq-", dir=work_dir) as work:
            out = Path(work) / "result.json"
            command = [sys.executable, __file__, "--_child", str(count), "--dim", str(dim), "--single_queries",
                       str(single), "--in_ram_max", str(in_ram_max), "--output_dir", work]  # fmt: skip
            subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            results.append(json.loads(out.read_text()))
        print(f"  {count:>11,} peak resident memory {results[-1]['peak_rss_mb']:.0f} MB", flush=True)
    return results


def project(results: list[dict]) -> dict:
    """100M and 1B figures from the largest measured size's per-vector costs (disk and build time linear in
    N; the IVF assignment grows with the list count, about sqrt(N), so build time is also given scaled so)."""
    largest = max(results, key=lambda r: r["count"])
    row = next(r for r in largest["rows"] if r["kind"] == "ivfpq")
    per_vector_s = row["build_s"] / row["count"]
    projections = {}
    for target in (100_000_000, 1_000_000_000):
        growth = math.sqrt(target / row["count"])
        projections[f"{target:,}"] = {
            "disk_gb": row["disk_bytes_per_vector"] * target / 1e9,
            "list_codes_gb": target * (row["params"]["m"] * row["params"]["nbits"] / 8 + 8) / 1e9,
            "build_hours_linear": per_vector_s * target / 3600,
            "build_hours_sqrt_lists": per_vector_s * target * growth / 3600,
        }
    return {"from_count": row["count"], "per_vector_build_ms": per_vector_s * 1000, "projections": projections}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for kind in KINDS:
        points = sorted((r["count"], r["single"]["p50_ms"]) for r in rows if r["kind"] == kind)
        if points:
            axis.plot(*zip(*points), marker="o", label=kind)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("library size (videos)")
    axis.set_ylabel("single query p50 (ms), k=10")
    axis.set_title("Search latency, 512-d embeddings, 2 CPU cores")
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes and sizes: a smoke run")
    parser.add_argument("--videos", type=int, default=32, help="library size for the indexing throughput")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each test video (320x240, 30 fps)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--single_queries", type=int, default=100)
    parser.add_argument("--hnsw_max", type=int, default=HNSW_MAX,
                        help="skip HNSW above this size (default: the largest library HNSW is offered for)")
    parser.add_argument("--output_dir", default=str(REPO / "docs"))
    parser.add_argument("--only", choices=["kinds", "compressed"], default="kinds",
                        help="kinds: parts 1-3 (search.json); compressed: part 4 (search_compressed.json)")
    parser.add_argument("--compressed_sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--in_ram_max", type=int, default=1_000_000, help="run flat and IVF beside ivfpq up to this size")
    parser.add_argument("--work_dir", help="where part 4 writes its index (default: the temporary folder)")
    parser.add_argument("--_child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.videos, args.seconds, args.repeats, args.sizes, args.dim, args.single_queries = 4, 1.0, 1, [2000], 32, 20
        args.compressed_sizes, args.in_ram_max = [20_000], 20_000

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if args._child:
        result = measure_compressed(args._child, args.dim, output_dir, args.single_queries, args.in_ram_max)
        (output_dir / "result.json").write_text(json.dumps(result))
        return result
    if args.only == "compressed":
        return main_compressed(args, output_dir)
    with tempfile.TemporaryDirectory(prefix="benchmark-search-") as work:
        work = Path(work)
        print(f"writing {args.videos} test videos ({args.seconds:g} s, 320x240, 30 fps) ...", flush=True)
        (work / "videos").mkdir()
        for number in range(args.videos):
            make_test_video(str(work / "videos" / f"clip{number:03d}.mp4"), args.seconds, 320, 240, 30, seed=number)
        model = save_random_model(work / "model", args.quick)
        print("indexing throughput (decoding included):", flush=True)
        indexing = measure_indexing(work / "videos", model, work, args)
        print("query latency:", flush=True)
        queries = measure_queries(indexing.pop("index_dir"), repeats=20 if args.quick else 100)
    print("index kinds on synthetic clustered embeddings:", flush=True)
    ann = measure_ann(args.sizes, args.dim, args.single_queries, args.hnsw_max)

    report = {
        "indexing": {**indexing, "videos": args.videos, "video": f"{args.seconds:g} s 320x240 30 fps H.264",
                     "model": "tiny" if args.quick else "B/32 random weights, 12 frames at 224 px, k-medoids 4x49 "
                     "after layer 6 vs cluster_algo none", "batch_size": args.batch_size, "num_workers": args.num_workers},
        "queries": queries,
        "ann": ann,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "faiss": faiss.__version__, "load_average_at_end": os.getloadavg()},
    }  # fmt: skip
    (output_dir / "search.json").write_text(json.dumps(report, indent=2))
    plot(ann, output_dir / "search_latency.png")

    print(f"\nindexing: stock {indexing['stock_videos_per_s']:.2f} videos/s, CenterCLIP "
          f"{indexing['centerclip_videos_per_s']:.2f} videos/s: {indexing['speedup']:.2f}x")  # fmt: skip
    print(f"text query (encode + search, {queries['library_videos']} videos): p50 "
          f"{queries['text_query_total']['p50_ms']:.1f} ms, p99 {queries['text_query_total']['p99_ms']:.1f} ms")  # fmt: skip
    print("\n| size | kind | storage | params | build s | memory MB | single p50 / p99 ms | batch-64 p50 ms | recall@10 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in ann:
        params = ", ".join(f"{k} {v}" for k, v in r["params"].items())
        print(f"| {r['count']:,} | {r['kind']} | {r['storage']} | {params} | {r['build_s']:.1f} | {r['memory_mb']:.0f} | "
              f"{r['single']['p50_ms']:.2f} / {r['single']['p99_ms']:.2f} | {r['batch64']['p50_ms']:.1f} | "
              f"{r['recall_at_10']:.3f} |")  # fmt: skip
    print(f"\nwrote {output_dir / 'search.json'} and {output_dir / 'search_latency.png'}")
    return report


def main_compressed(args, output_dir: Path) -> dict:
    print(f"compressed kind on synthetic modality-gap embeddings ({args.dim}-d):", flush=True)
    start = time.perf_counter()
    results = run_compressed(args.compressed_sizes, args.dim, args.single_queries, args.in_ram_max, args.work_dir)
    report = {"sizes": results, **project(results), "dim": args.dim, "wall_s": time.perf_counter() - start,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "faiss": faiss.__version__,
                          "omp_threads": faiss.omp_get_max_threads(), "load_average_at_end": os.getloadavg()}}  # fmt: skip
    (output_dir / "search_compressed.json").write_text(json.dumps(report, indent=2))
    print("\n| videos | kind | params | build s | peak RSS MB | disk (ivfpq) or RAM B/vector | p50 / p99 ms | recall@10 (text queries) |")
    print("|---|---|---|---|---|---|---|---|")
    for result in results:
        for r in result["rows"]:
            per_vector = r.get("disk_bytes_per_vector", r.get("memory_bytes_per_vector"))
            params = ", ".join(f"{k} {v}" for k, v in r["params"].items())
            rss = f"{result['peak_rss_mb']:.0f}" if r["kind"] == "ivfpq" else "(same process)"
            print(f"| {r['count']:,} | {r['kind']} | {params} | {r['build_s']:.0f} | {rss} | {per_vector:.0f} | "
                  f"{r['single']['p50_ms']:.2f} / {r['single']['p99_ms']:.2f} | {r['recall_at_10']:.3f} |")  # fmt: skip
    for size, figures in report["projections"].items():
        print(f"projected {size}: {figures['disk_gb']:.0f} GB on disk ({figures['list_codes_gb']:.0f} GB of lists), "
              f"build {figures['build_hours_linear']:.1f}-{figures['build_hours_sqrt_lists']:.1f} h on this machine")  # fmt: skip
    print(f"load average at end {report['machine']['load_average_at_end']}; wrote {output_dir / 'search_compressed.json'}")
    return report


if __name__ == "__main__":
    main()
