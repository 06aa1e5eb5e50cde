"""FAISS indexes over L2-normalised embeddings (inner product = cosine), and their automatic tuning.

- `flat`: exact inner product (`IndexFlatIP`); above `FP16_ABOVE` vectors the same scan over fp16 storage
  (`IndexScalarQuantizer` QT_fp16, half the memory traffic), accepted only at recall@10 >= the target.
- `ivf`: IVF-Flat, about sqrt(N) lists trained on 64 vectors per list; `nprobe` is raised until recall@10 reaches the target.
- `hnsw`: HNSW-Flat (M=32); `efSearch` is raised until recall@10 reaches the target. Refused above `HNSW_MAX`
  vectors (`IndexTooLargeError`): at 1M it stops at recall@10 0.927 (efSearch 4096, 25 ms), below the target.
- `ivfpq`: the compressed kind for libraries beyond RAM (`search.compressed`): product-quantised codes alone
  rank text queries badly (the modality gap), so its candidates are re-ranked with the exact vectors from disk.

Recall is measured against exact search on tuning queries, with the settings stored in the manifest:
text-like queries when the caller gives them (`search.tuning`: the library's captions through the text tower,
or stored vectors shifted by the text-video offset), else stored vectors plus noise, renormalised.
"""

from __future__ import annotations

import logging
import math
import time

import faiss
import numpy as np

logger = logging.getLogger(__name__)

KINDS = ("flat", "ivf", "hnsw", "ivfpq")
TARGET_RECALL = 0.95
FP16_ABOVE = 262_144
HNSW_M = 32
TUNING_QUERIES = 200
HNSW_MAX = 500_000


class IndexTooLargeError(ValueError):
    """The index kind is not offered at this library size."""


def check_kind(kind: str, count: int) -> None:
    """Refuse a kind that cannot serve `count` vectors, before any work is done."""
    if kind not in KINDS:
        raise ValueError(f"index kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "hnsw" and count > HNSW_MAX:
        raise IndexTooLargeError(f"--index hnsw is offered up to {HNSW_MAX:,} videos (at 1M it misses recall@10 "
                                 f"0.95); this library has {count:,}: use --index ivfpq (compressed, on disk) or ivf")  # fmt: skip


def tuning_queries(vectors: np.ndarray, count: int = TUNING_QUERIES, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """Queries near the data: random stored vectors plus Gaussian noise (|noise| about 1.1 for 512 dims),
    renormalised, so the query is not its own nearest neighbour by a wide margin."""
    rng = np.random.default_rng(seed)
    picks = vectors[rng.integers(0, len(vectors), size=min(count, max(len(vectors), 1)))]
    queries = picks + rng.normal(0, noise, size=picks.shape).astype(np.float32)
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean share of each query's true top k that appears in the found top k."""
    k = min(k, truth.shape[1])
    hits = [len(set(f[:k].tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]
    return float(np.mean(hits)) if hits else 1.0


def set_search_param(index, kind: str, value: int | None) -> None:
    if kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = int(value)
    elif kind == "hnsw":
        index.hnsw.efSearch = int(value)


def _construct(kind: str, vectors: np.ndarray, fp16: bool):
    count, dim = vectors.shape
    if kind == "flat":
        if fp16:
            return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT), {}
        return faiss.IndexFlatIP(dim), {}
    if kind == "ivf":
        nlist = max(1, min(int(math.sqrt(count)), count // 39))  # faiss wants >= 39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 0
        index.cp.max_points_per_centroid = 64  # k-means on a sample: minutes saved at a million vectors
        index.train(vectors)
        return index, {"nlist": nlist}
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        return index, {"M": HNSW_M, "efConstruction": index.hnsw.efConstruction}
    raise ValueError(f"index kind must be one of {', '.join(KINDS)}, got {kind!r}")


def _tune(index, kind: str, vectors: np.ndarray, k: int, target: float, queries: np.ndarray | None) -> tuple[dict, float]:
    """The smallest search parameter reaching `target` recall@k against exact search (and that recall)."""
    queries = tuning_queries(vectors) if queries is None else np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(vectors))
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth = exact.search(queries, k)
    if kind == "flat":
        return {}, recall_at_k(index.search(queries, k)[1], truth, k)
    name, limit = ("nprobe", faiss.extract_index_ivf(index).nlist) if kind == "ivf" else ("efSearch", 4096)
    value, recall = 1 if kind == "ivf" else 16, 0.0
    while True:
        set_search_param(index, kind, value)
        recall = recall_at_k(index.search(queries, k)[1], truth, k)
        if recall >= target or value >= limit:
            return {name: value}, recall
        value = min(value * 2, limit)


def build_index(vectors: np.ndarray, kind: str = "flat", k: int = 10, target: float = TARGET_RECALL,
                queries: np.ndarray | None = None):  # fmt: skip
    """A FAISS index over `vectors` `[N, dim]` (float32, L2-normalised) and its settings for the manifest:
    `{"kind", "ntotal", <build/search parameters>, "recall_at_10", "build_s"}`, tuned on `queries` (default:
    stored vectors plus noise). In memory: `ivfpq` is built on disk by `search.compressed`."""
    check_kind(kind, len(vectors))
    if kind == "ivfpq":
        raise ValueError("the ivfpq kind is built on disk: use search.compressed.build_compressed")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    start = time.perf_counter()
    fp16 = kind == "flat" and len(vectors) > FP16_ABOVE
    index, settings = _construct(kind, vectors, fp16)
    index.add(vectors)
    build_s = time.perf_counter() - start
    exact = kind == "flat" and not fp16  # float32 exact search has recall 1 by definition: nothing to tune
    search_params, recall = _tune(index, kind, vectors, k, target, queries) if len(vectors) and not exact else ({}, 1.0)
    if fp16 and recall < target:  # fp16 storage not good enough for this library: store float32
        index, settings, fp16 = faiss.IndexFlatIP(vectors.shape[1]), {}, False
        index.add(vectors)
        recall = 1.0
    if recall < target:  # the tuning hit its limit: say so rather than hand out a worse index silently
        logger.warning("%s index: recall@10 %.3f stays below the target %.2f at %s; use --index ivf or flat",
                       kind, recall, target, search_params)
    settings.update(search_params)
    return index, {"kind": kind, "storage": "fp16" if fp16 else "float32", "ntotal": int(index.ntotal),
                   **settings, "recall_at_10": recall, "target_recall_at_10": target, "build_s": build_s}  # fmt: skip


def open_index(index_dir, settings: dict):
    """The index of a manifest's `index` settings, opened for search with its tuned parameters."""
    from pathlib import Path

    if settings["kind"] == "ivfpq":
        from .compressed import open_compressed

        return open_compressed(Path(index_dir), settings)
    index = faiss.read_index(str(Path(index_dir) / settings["file"]))
    apply_settings(index, settings)
    return index


def apply_settings(index, settings: dict) -> None:
    """Restore the tuned search parameter of a loaded index."""
    if settings["kind"] == "ivf":
        set_search_param(index, "ivf", settings["nprobe"])
        faiss.extract_index_ivf(index).make_direct_map()  # `reconstruct` for "more like this"
    elif settings["kind"] == "hnsw":
        set_search_param(index, "hnsw", settings["efSearch"])
