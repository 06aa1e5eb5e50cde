"""`ivfpq`: the compressed index kind, for libraries larger than RAM.

IVF with product-quantised codes (`IndexIVFPQ`, 8 bits per sub-vector of 8 dimensions: 64 bytes for 512-d)
finds candidates; the candidates are re-ranked with the exact vectors, read row by row from a float16 file
on disk (`pread`, through the page cache). Product quantisation alone ranks text queries badly: they sit
across the modality gap from every video, where all scores are close and the code error is as large as their
differences. Re-ranking the
top `rerank` candidates by their exact vectors removes that error, so only the candidate list has to be
right, and `nprobe` and `rerank` are tuned together to recall@10 >= the target on text-like queries.

Text queries are routed across the modality gap: their own nearest lists hold few of their best videos
(at 300k synthetic vectors, IVF-Flat at nprobe 16 finds 0.60 of the true top 10). The build measures the
text-video offset (mean tuning query minus mean stored vector, `offset.npy`); a search probes, in turn, the
lists nearest to the query shifted by that offset (0.95 at nprobe 16) and those nearest to the query itself,
so image and video queries, which sit on the videos' side, are routed as well. Codes are scored with the
query itself.

The inverted lists live on disk (`OnDiskInvertedLists`, memory-mapped read-only), as do the exact vectors:
a search touches only the lists it probes and the rows it re-ranks, so the index need not fit in RAM.

The build never holds every vector at once and resumes where a killed one stopped. Its folder
(`ivfpq-<key>/`, the key naming its input) fills in steps, each a whole file or none:

    vectors.f16       exact vectors [N, dim] float16, written in chunks (`vectors.rows`: rows done)
    trained.faiss     IVF centroids and PQ codebooks, trained on a sample of at most `train_size` rows
    blocks/*.faiss    the codes of `add_chunk` rows each (add these from several processes or machines)
    index.faiss       the merged index, its lists in `lists.ivfdata`
    offset.npy        the measured text-video offset
    tuning.json       nprobe and rerank, and the recall they reach: the build is complete
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import faiss
import numpy as np

from .storage import IVFPQ_PREFIX, write_faiss, write_json

logger = logging.getLogger(__name__)

KIND = "ivfpq"
PREFIX = IVFPQ_PREFIX
ADD_CHUNK = 200_000
RERANK_STEPS = (10, 20, 50, 100, 200, 500, 1000)
# 200 tuning queries measure recall@10 with a standard error of about 0.01: tune that much above the target,
# so that unseen queries stay at or above it.
TUNE_MARGIN = 0.01
TRAIN_PER_LIST = 64
PQ_TRAIN = 65_536
GT_CHUNK = 200_000
# Test hooks: rows per block, and seconds to sleep after each block, so a test can kill a merge midway.
_ADD_CHUNK_ENV = "_CENTERCLIP_ADD_CHUNK"
_PAUSE_ENV = "_CENTERCLIP_PAUSE_AFTER_BLOCK"

# A block of rows `[start, stop)` of the input, loaded on demand as float32 `[stop - start, dim]`.
Block = tuple[int, int, Callable[[], np.ndarray]]


@contextlib.contextmanager
def _quiet_stdout():
    """faiss prints file notices on the C stdout; keep it clean for `--json` output."""
    import ctypes
    import sys

    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        libc.fflush(None)  # C stdio buffers what faiss printed: out to /dev/null before fd 1 comes back
        os.dup2(saved, 1)
        os.close(saved)


def layout(count: int, dim: int) -> dict:
    """Lists, sub-quantisers and bits for `count` vectors: about sqrt(N) lists (at least 39 training rows
    each), sub-vectors of 8 dimensions (or fewer for narrow models), 8 bits (fewer below 256 rows)."""
    nlist = max(1, min(int(math.sqrt(count)), count // 39))
    m = next(m for m in range(max(1, dim // 8), 0, -1) if dim % m == 0)
    nbits = min(8, max(1, int(math.log2(max(count, 2)))))
    return {"nlist": nlist, "m": m, "nbits": nbits}


def read_rows_f16(path: Path, dim: int, start: int, stop: int) -> np.ndarray:
    """Rows `[start, stop)` of a float16 vector file as float32, read (not mapped: no resident pages stay)."""
    with open(path, "rb") as handle:
        handle.seek(start * dim * 2)
        data = np.fromfile(handle, dtype=np.float16, count=(stop - start) * dim)
    return data.reshape(stop - start, dim).astype(np.float32)


def gather_rows(fd: int, dim: int, rows: np.ndarray) -> np.ndarray:
    """Rows of a float16 vector file as float32 `[len(rows), dim]`, by `pread` (a memory map would count every
    page the kernel maps around a touched one in this process's resident memory: 10.4 GB at 10M rows)."""
    size = dim * 2
    data = b"".join(os.pread(fd, size, int(row) * size) for row in rows)
    return np.frombuffer(data, dtype=np.float16).reshape(len(rows), dim).astype(np.float32)


def exact_top_k(path: Path, count: int, dim: int, queries: np.ndarray, k: int, chunk: int = GT_CHUNK,
                blocks: Iterable[Block] | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Exact inner-product top `k` of `queries` by a scan in chunks (the float16 file, or `blocks` if given)."""
    heap = faiss.ResultHeap(len(queries), min(k, count), keep_max=True)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if blocks is None:
        blocks = ((s, min(s + chunk, count), lambda s=s: read_rows_f16(path, dim, s, min(s + chunk, count)))
                  for s in range(0, count, chunk))  # fmt: skip
    for start, _, load in blocks:
        scores, ids = faiss.knn(queries, load(), min(k, count), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, ids + start)
    heap.finalize()
    return heap.D, heap.I


class CompressedIndex:
    """A built `ivfpq` folder opened for search: IVF-PQ candidates re-ranked by exact float16 vectors."""

    def __init__(self, folder: Path, settings: dict):
        self.folder = Path(folder)
        with _quiet_stdout():  # lists mapped read-only from the folder the index file is in, wherever it moved
            self.index = faiss.read_index(str(self.folder / "index.faiss"),
                                          faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)  # fmt: skip
        self.ntotal, self.d = int(self.index.ntotal), int(self.index.d)
        self._vectors_fd = os.open(self.folder / "vectors.f16", os.O_RDONLY)  # read by row: see `gather_rows`
        offset = self.folder / "offset.npy"
        self.offset = np.load(offset).astype(np.float32) if offset.is_file() else None
        self.centroids = self.index.quantizer.reconstruct_n(0, self.index.nlist)
        self.set_params(settings["nprobe"], settings["rerank"])

    def set_params(self, nprobe: int, rerank: int) -> None:
        self.index.nprobe, self.rerank = int(nprobe), int(rerank)

    def route(self, queries: np.ndarray) -> np.ndarray:
        """The `nprobe` lists to scan per query: alternately the nearest to the gap-shifted query and to the
        query itself, each list once."""
        nprobe = self.index.nprobe
        own = self.index.quantizer.search(queries, nprobe)[1]
        if self.offset is None:
            return own
        shifted = queries - self.offset
        shifted /= np.linalg.norm(shifted, axis=1, keepdims=True)
        across = self.index.quantizer.search(shifted, nprobe)[1]
        both = np.stack([across, own], axis=2).reshape(len(queries), -1)
        return np.array([list(dict.fromkeys(row.tolist()))[:nprobe] for row in both], dtype=np.int64)

    def candidates(self, queries: np.ndarray, depth: int) -> np.ndarray:
        """Up to `depth` rows per query, best first by their code scores (-1 pads)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        lists = self.route(queries)
        coarse = np.einsum("qd,qpd->qp", queries, self.centroids[lists]).astype(np.float32)  # scored with the query
        return self.index.search_preassigned(queries, min(depth, self.ntotal), lists, coarse)[1]

    def exact_scores(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Exact inner products of `query` with `rows` (-inf for padding rows -1), in the order given."""
        scores = np.full(len(rows), -np.inf, np.float32)
        valid = np.flatnonzero(rows >= 0)
        order = valid[np.argsort(rows[valid])]  # the memory map is read in file order
        scores[order] = gather_rows(self._vectors_fd, self.d, rows[order]) @ query.astype(np.float32)
        return scores

    def rerank_rows(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top `k` of each query's candidate rows by exact inner product (rows -1 are padding)."""
        scores = np.full((len(queries), k), -np.inf, np.float32)
        rows = np.full((len(queries), k), -1, np.int64)
        for q, (query, found) in enumerate(zip(queries, candidates)):
            exact = self.exact_scores(query, found)
            top = np.argsort(-exact, kind="stable")[:k]
            top = top[found[top] >= 0]
            scores[q, : len(top)], rows[q, : len(top)] = exact[top], found[top]
        return scores, rows

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss-style `(scores, rows)` `[Q, k]`, best first."""
        return self.rerank_rows(queries, self.candidates(queries, max(self.rerank, k)), k)

    def reconstruct(self, row: int) -> np.ndarray:
        return gather_rows(self._vectors_fd, self.d, [row])[0]

    def __del__(self):
        if getattr(self, "_vectors_fd", None) is not None:
            os.close(self._vectors_fd)


def open_compressed(index_dir: Path, settings: dict) -> CompressedIndex:
    folder = Path(settings["file"]).parent
    if folder.name != str(folder) or not folder.name.startswith(PREFIX):  # manifest paths stay in the folder
        raise ValueError(f"{index_dir}/manifest.json: index file {settings['file']!r} is not an {KIND} folder")
    return CompressedIndex(Path(index_dir) / folder, settings)


def _tune(index: CompressedIndex, queries: np.ndarray, truth: np.ndarray, k: int, target: float) -> dict:
    """The cheapest (nprobe, rerank) reaching `target` recall@k: the smallest nprobe that reaches it with
    the deepest re-ranking, then the smallest rerank depth at that nprobe."""
    from .ann import recall_at_k

    nlist, deepest = index.index.nlist, min(RERANK_STEPS[-1], index.ntotal)
    steps = sorted({min(max(step, k), index.ntotal) for step in RERANK_STEPS})
    nprobe, best = 1, None
    while True:
        index.index.nprobe = nprobe
        found = index.candidates(queries, deepest)  # best first by code score: a prefix is a shallower search
        exact = np.stack([index.exact_scores(query, rows) for query, rows in zip(queries, found)])
        recalls = {}
        for depth in steps:
            order = np.argsort(-exact[:, :depth], axis=1, kind="stable")[:, :k]
            recalls[depth] = recall_at_k(np.take_along_axis(found[:, :depth], order, axis=1), truth, k)
        passing = [depth for depth in steps if recalls[depth] >= min(target + TUNE_MARGIN, 1.0)]
        best = {"nprobe": nprobe, "rerank": passing[0] if passing else deepest,
                "recall_at_10": recalls[passing[0]] if passing else recalls[deepest]}  # fmt: skip
        if passing or nprobe >= nlist:
            return best
        nprobe = min(nprobe * 2, nlist)


def build_compressed(folder: Path, count: int, dim: int, blocks: Callable[[], Iterable[Block]],
                     queries: np.ndarray, k: int = 10, target: float = 0.95, train_size: int | None = None,
                     add_chunk: int | None = None, seed: int = 0) -> dict:  # fmt: skip
    """Build (or resume building) an `ivfpq` index in `folder` over `count` vectors delivered by `blocks()`
    (float32, L2-normalised, in row order), tuned on `queries`. Returns its settings for the manifest."""
    folder = Path(folder)
    done = folder / "tuning.json"
    if done.is_file():
        logger.info("%s: already built", folder)
        return json.loads(done.read_text())
    start_time = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    shape = layout(count, dim)
    vectors = folder / "vectors.f16"

    # 1. the exact vectors, in chunks; a resumed build skips the chunks already on disk
    progress = folder / "vectors.rows"
    written = json.loads(progress.read_text())["rows"] if progress.is_file() and vectors.is_file() else 0
    if written < count:
        logger.info("%s: writing exact vectors (%d of %d rows already on disk)", folder.name, written, count)
        with open(vectors, "r+b" if written else "wb") as handle:
            for start, stop, load in blocks():
                if stop <= written:
                    continue
                block = load()
                if block.shape != (stop - start, dim) or not np.isfinite(block).all():
                    raise ValueError(f"{folder}: rows {start}-{stop} are not finite [{stop - start}, {dim}] vectors")
                handle.seek(start * dim * 2)
                handle.write(block.astype(np.float16).tobytes())
                handle.flush()
                os.fsync(handle.fileno())
                write_json(progress, {"rows": stop})

    # 2. train on a sample
    trained = folder / "trained.faiss"
    if not trained.is_file():
        wanted = train_size or max(TRAIN_PER_LIST * shape["nlist"], PQ_TRAIN)
        rng = np.random.default_rng(seed)
        picks = np.sort(rng.choice(count, size=min(count, wanted), replace=False))
        fd = os.open(vectors, os.O_RDONLY)
        try:
            sample = gather_rows(fd, dim, picks)
        finally:
            os.close(fd)
        if len(sample) < 2 ** shape["nbits"]:  # a tiny library: k-means needs as many points as centroids
            sample = np.tile(sample, (math.ceil(2 ** shape["nbits"] / len(sample)), 1))
        logger.info("%s: training %d lists, PQ %dx%d bits on %d rows", folder.name, shape["nlist"], shape["m"],
                    shape["nbits"], len(sample))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, shape["nlist"], shape["m"], shape["nbits"], faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.cp.niter = 10
        index.cp.max_points_per_centroid = TRAIN_PER_LIST
        index.pq.cp.seed = seed
        index.do_polysemous_training = False
        index.train(sample)
        write_faiss(trained, index)
        del sample, index

    # 3. codes in blocks: each block a file, so a killed build keeps the blocks it finished
    chunk = int(os.environ.get(_ADD_CHUNK_ENV, 0)) or add_chunk or ADD_CHUNK
    index_file = folder / "index.faiss"
    (folder / "blocks").mkdir(exist_ok=True)
    names = []
    for number, start in enumerate(range(0, count, chunk)):
        path = folder / "blocks" / f"block-{number:06d}.faiss"
        names.append(str(path))
        if path.is_file() or index_file.is_file():
            continue
        index = faiss.read_index(str(trained))
        stop = min(start + chunk, count)
        index.add_with_ids(read_rows_f16(vectors, dim, start, stop), np.arange(start, stop, dtype=np.int64))
        write_faiss(path, index)
        logger.info("%s: block %d (rows %d-%d) encoded", folder.name, number, start, stop)
        if os.environ.get(_PAUSE_ENV):
            time.sleep(float(os.environ[_PAUSE_ENV]))

    # 4. merge the blocks into on-disk lists (redone whole if killed midway: it is the cheap step)
    if not index_file.is_file():
        from faiss.contrib.ondisk import merge_ondisk

        (folder / "lists.ivfdata").unlink(missing_ok=True)
        index = faiss.read_index(str(trained))
        with _quiet_stdout():
            merge_ondisk(index, names, str(folder / "lists.ivfdata"))
        write_faiss(index_file, index)
        del index
    shutil.rmtree(folder / "blocks", ignore_errors=True)
    build_s = time.perf_counter() - start_time

    # 5. measure the text-video offset; tune nprobe and the re-ranking depth against exact search
    if len(queries):
        sample = read_rows_f16(vectors, dim, 0, min(count, 65_536))
        np.save(folder / "offset.npy", queries.mean(0) - sample.mean(0))
    truth = exact_top_k(vectors, count, dim, queries, k)[1] if len(queries) else np.zeros((0, k), np.int64)
    opened = CompressedIndex(folder, {"nprobe": 1, "rerank": k})
    tuned = _tune(opened, queries, truth, min(k, count), target) if len(queries) else \
        {"nprobe": shape["nlist"], "rerank": min(RERANK_STEPS[-1], count), "recall_at_10": 1.0}  # fmt: skip
    if tuned["recall_at_10"] < target:
        logger.warning("%s: recall@10 %.3f stays below the target %.2f at nprobe %d, rerank %d", folder.name,
                       tuned["recall_at_10"], target, tuned["nprobe"], tuned["rerank"])
    disk = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    settings = {"kind": KIND, "storage": "pq+float16", "ntotal": count, **shape, **tuned,
                "target_recall_at_10": target, "tuning_queries": len(queries), "build_s": build_s,
                "disk_bytes": disk, "file": f"{folder.name}/index.faiss"}  # fmt: skip
    write_json(done, settings)  # the build is complete
    return settings


def build_from_parts(index_dir: Path, spec, parts: list[Path], target: float = 0.95) -> dict:
    """The `ivfpq` index of an index folder's live parquet parts (in manifest order), read one part at a time,
    tuned on text-like queries (`search.tuning`). Its folder is named by the parts and the model, so a run
    killed while building resumes it, and a changed library starts a new one."""
    import hashlib

    import pyarrow.parquet as pq

    from .storage import read_rows
    from .tuning import text_like_queries

    sizes = [pq.read_metadata(part).num_rows for part in parts]
    offsets = np.cumsum([0, *sizes])
    dim = spec.config.projection_dim

    def blocks():
        for part, start, stop in zip(parts, offsets[:-1], offsets[1:]):
            if stop > start:
                yield int(start), int(stop), lambda part=part: read_rows([part])[1]

    key = hashlib.sha256(json.dumps([spec.fingerprint, [p.name for p in parts], layout(int(offsets[-1]), dim)])
                         .encode()).hexdigest()[:16]  # fmt: skip
    folder = Path(index_dir) / f"{PREFIX}{key}"
    captions = []
    for part in parts:  # captions only: a column of short strings
        captions.extend(pq.read_table(part, columns=["caption"]).column("caption").to_pylist())
    rng = np.random.default_rng(0)
    picks = np.sort(rng.choice(len(captions), size=min(len(captions), 4096), replace=False))
    sample = np.concatenate([read_rows([parts[i]])[1][picks[(picks >= s) & (picks < e)] - s]
                             for i, (s, e) in enumerate(zip(offsets[:-1], offsets[1:]))
                             if ((picks >= s) & (picks < e)).any()])  # fmt: skip
    queries, source = text_like_queries(spec, captions, sample)
    settings = build_compressed(folder, int(offsets[-1]), dim, blocks, queries, target=target)
    return {**settings, "tuning_queries_from": source}
