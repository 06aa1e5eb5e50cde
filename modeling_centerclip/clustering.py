"""Token clustering for CenterCLIP: batched, deterministic k-medoids and spectral clustering.

Pure tensor functions with no model code, so they can be tested and reused on any token set.
Every function takes `tokens` of shape `[B, N, D]` and returns

    assignment  [B, N]  int64, the cluster of each token (an index into `medoids`)
    medoids     [B, K]  int64, token indices of the cluster centers, sorted ascending

The clustering runs in fp32 under `torch.no_grad()` whatever the autocast state: callers gather the
selected tokens themselves, so gradients flow through the kept tokens only.

Tokens can be masked out (`mask [B, N]`, False = padding): they neither become medoids while a real token is
left nor change which real tokens are chosen, whatever they hold (their assignment is -1).

Ties and near-ties (values within a relative `TIE_RTOL` of the best) always go to the lowest index, and nothing
is random, so results are identical across runs, devices, batch splits and summation orders (a sum or norm that
rounds differently in its last bits cannot flip a choice). No `[B, K, N, N]` tensor is ever built: the k-medoids
update is one masked `[B, N, N]` row sum. In eager mode convergence is checked on the host only every few
iterations on accelerators (running past convergence is a no-op, so the result does not depend on it); under
`torch.compile` / `torch.export` the loop is an in-graph `while_loop` that stops at the same fixed point, with no
host sync.

On CUDA the k-medoids iterations run by default as one fused Triton kernel (`clustering_triton.py`) that returns
exactly the torch path's result; the torch path issues hundreds of small kernels per call.
"""

import importlib.util
import os

import torch
import torch.nn.functional as F
from torch._higher_order_ops.while_loop import while_loop

# Resolved once: `importlib` calls inside a compiled function would break the graph.
_HAS_TRITON = importlib.util.find_spec("triton") is not None
# Near-tie tolerance of every choice (KKZ seeds, nearest medoid, least cost): values within TIE_RTOL * |best| of
# the best count as tied and the lowest index wins. A power of two, so the threshold is computed exactly alike by
# every backend; far above the last-bit differences of a sum in another order (fp32 distances: 2^-24 relative
# rounding; float64 cost sums: 2^-53), far below any real difference between two clusterings.
TIE_RTOL = 2.0**-20

# Distances of a token to itself are set below every real distance (also an exact duplicate's 0), so a token
# is always strictly nearest to itself: chosen medoids are never re-chosen and always keep their own cluster.
_SELF = -1.0
# KKZ "distance to the nearest seed" of a masked token: below every real token's, above a chosen one's, so masked
# tokens are seeded only once every real token is (when K exceeds the real tokens).
_MASKED = -0.5


# A squared distance from the Gram matrix is exact only up to rounding noise of about 2^-24 * (|x_i|^2 + |x_j|^2)
# (more for long sums), which differs between kernels, thread counts and compilers: an exact duplicate's distance
# would be that noise, and choices between duplicates would follow it. Entries below NOISE relative (1 - cos below
# NOISE) are set to exactly 0, so duplicates are exactly 0 apart everywhere.
_NOISE = 2.0**-16


def pairwise_distance(tokens: torch.Tensor, distance: str = "euclidean") -> torch.Tensor:
    """Distance matrix `[B, N, N]` of `tokens` `[B, N, D]`: Euclidean `||x_i - x_j||` or cosine `1 - cos`.

    The diagonal is exactly 0, and so is every distance within the Gram matrix's rounding noise (exact
    duplicates). Euclidean distances come from the Gram matrix (one batched matmul), which is much faster than
    pairwise differences and accurate to fp32 rounding.
    """
    dist = _unclamped_distance(tokens, distance).clamp_min(0)
    if distance == "euclidean":
        dist = dist.sqrt()
    # Out of place, no write through a diagonal view: the exported graph must be functional for ONNX.
    return dist.masked_fill(torch.eye(dist.shape[1], dtype=torch.bool, device=dist.device), 0.0)


def _unclamped_distance(tokens: torch.Tensor, distance: str) -> torch.Tensor:
    """`pairwise_distance` before its elementwise finish: squared Euclidean distances, or `1 - cos`.

    The fused backend finishes these entries itself as it reads them (saving four kernel launches per call).
    """
    if distance == "cosine":
        unit = F.normalize(tokens, dim=-1, eps=1e-6)
        dist = 1.0 - torch.bmm(unit, unit.transpose(1, 2))
        return dist.masked_fill(dist.abs() <= _NOISE, 0.0)
    if distance == "euclidean":
        tokens = tokens - tokens.mean(dim=1, keepdim=True)  # distances are shift-invariant; centring cuts rounding
        sq_norm = tokens.pow(2).sum(-1)
        scale = sq_norm[:, :, None] + sq_norm[:, None, :]
        dist = torch.baddbmm(scale, tokens, tokens.transpose(1, 2), alpha=-2)
        return dist.masked_fill(dist <= _NOISE * scale, 0.0)
    raise ValueError(f"distance={distance!r}: must be 'euclidean' or 'cosine'")


def _near_threshold(least: torch.Tensor) -> torch.Tensor:
    """The largest value that still ties with the minimum `least` (the near-tie rule): exact scaling by a power of
    two and one rounding in the sum, so both backends compute the same bound (inf stays inf)."""
    return least + least.abs() * TIE_RTOL


def _first_near_min(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Lowest index along `dim` whose value is within `TIE_RTOL * |min|` of the minimum (the near-tie rule)."""
    least = values.amin(dim=dim, keepdim=True)
    threshold = _near_threshold(least)
    index = torch.arange(values.shape[dim], device=values.device).view(-1, *([1] * (values.dim() - dim - 1)))
    first = torch.where(values <= threshold, index, values.shape[dim]).amin(dim=dim)
    # Never past the end: a compiler that recomputes `values` for the minimum with other rounding could leave no
    # value under the threshold; the plain argmin then decides.
    return torch.where(first < values.shape[dim], first, values.argmin(dim=dim))


def _first_near_max(values: torch.Tensor, dim: int) -> torch.Tensor:
    """`_first_near_min` for the maximum (negation is exact)."""
    return _first_near_min(-values, dim)


def _kkz_init(dist: torch.Tensor, norms: torch.Tensor, num_clusters: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """KKZ seeds `[B, K]`: the largest-norm token, then repeatedly the token farthest from its nearest seed."""
    if mask is not None:
        norms = norms.masked_fill(~mask, -1.0)
    first = _first_near_max(norms, 1)
    seeds = [first]
    nearest = dist.gather(1, first[:, None, None].expand(-1, 1, dist.shape[2])).squeeze(1)  # [B, N]
    if mask is not None:
        nearest = nearest.masked_fill(~mask, _MASKED)
    nearest.scatter_(1, first[:, None], _SELF)
    for _ in range(num_clusters - 1):
        nxt = _first_near_max(nearest, 1)
        seeds.append(nxt)
        row = dist.gather(1, nxt[:, None, None].expand(-1, 1, dist.shape[2])).squeeze(1)
        nearest = torch.minimum(nearest, row).scatter_(1, nxt[:, None], _SELF)
    return torch.stack(seeds, dim=1)


def _assign(dist: torch.Tensor, medoids: torch.Tensor) -> torch.Tensor:
    """Nearest medoid of each token `[B, N]`; `medoids` must be sorted so (near-)ties go to the lowest token index."""
    to_medoids = dist.gather(2, medoids[:, None, :].expand(-1, dist.shape[1], -1))  # [B, N, K]
    to_medoids = to_medoids.scatter(1, medoids[:, None, :], _SELF)  # a medoid is assigned to itself
    return _first_near_min(to_medoids, 2)


def _update(
    dist: torch.Tensor, assignment: torch.Tensor, num_clusters: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Each cluster's member with the smallest sum of distances to the cluster's members, sorted `[B, K]`.

    The sums accumulate fp32 distances in float64 (exact for realistic ranges); costs within `TIE_RTOL` of the
    cluster's least count as tied, so near-ties resolve identically in any summation order, on every device and
    batch split. Cost is O(B N^2), no `[B, N, K]`.
    Masked tokens count in no sum and never replace a medoid (a masked medoid keeps its singleton cluster).
    """
    batch, num_tokens = assignment.shape
    same_cluster = assignment[:, :, None] == assignment[:, None, :]  # [B, N, N]
    if mask is not None:
        same_cluster &= mask[:, None, :]
    cost = torch.where(same_cluster, dist, 0).sum(dim=2, dtype=torch.float64)  # [B, N]: to own cluster
    if mask is not None:
        cost.masked_fill_(~mask, float("inf"))
    best = cost.new_full((batch, num_clusters), float("inf")).scatter_reduce(1, assignment, cost, "amin")
    index = torch.arange(num_tokens, device=assignment.device).expand(batch, -1)
    candidates = torch.where(cost <= _near_threshold(best).gather(1, assignment), index, num_tokens)  # near-ties: lowest index
    medoids = assignment.new_full((batch, num_clusters), num_tokens).scatter_reduce(1, assignment, candidates, "amin")
    return medoids.sort(dim=1).values


def _check_inputs(tokens: torch.Tensor, num_clusters: int, mask: torch.Tensor | None) -> None:
    batch, num_tokens, _ = tokens.shape
    if not 1 <= num_clusters <= num_tokens:
        raise ValueError(f"num_clusters={num_clusters}: must be in [1, {num_tokens}] (the number of tokens)")
    if mask is not None and tuple(mask.shape) != (batch, num_tokens):
        raise ValueError(f"mask has shape {tuple(mask.shape)}; tokens [B, N, D] need [B, N] = {(batch, num_tokens)}")


BACKENDS = ("auto", "torch", "triton")


def _use_triton(backend: str, device: torch.device) -> bool:
    """Resolve `backend`: "auto" is Triton on CUDA tensors when Triton is installed, torch otherwise."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: must be one of {BACKENDS}")
    if backend == "auto":
        return device.type == "cuda" and _HAS_TRITON
    if backend == "triton":
        if not _HAS_TRITON:
            raise ImportError("backend='triton' needs the triton package (pip install triton)")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                f"backend='triton' needs CUDA tensors (got {device.type}), or TRITON_INTERPRET=1 set before start"
            )
    return backend == "triton"


@torch.no_grad()
def kmedoids(
    tokens: torch.Tensor,
    num_clusters: int,
    *,
    mask: torch.Tensor | None = None,
    distance: str = "euclidean",
    max_iters: int = 100,
    check_every: int | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched k-medoids with deterministic KKZ initialisation (see the project's docs/design.md).

    Args:
        tokens: `[B, N, D]` token features (any float dtype; computed in fp32).
        num_clusters: K, with `1 <= K <= N`.
        mask: `[B, N]` bool, False for padding tokens, which take no part: medoids are real tokens (padding
            fills the rest only when a row has fewer than K real tokens) and padding content changes nothing.
            A row with no real token at all is clustered as if unmasked.
        distance: `"euclidean"` or `"cosine"`.
        max_iters: maximum assignment / update rounds.
        check_every: rounds between host-side convergence checks in eager mode; default 1 on the CPU, 8 on
            accelerators. Iterating past convergence changes nothing, so this only trades syncs for spare rounds.
            Compiled or exported, the test runs in the graph every round (no host sync).
        backend: `"torch"`, `"triton"` (one fused kernel for seeding and iterations; identical results) or
            `"auto"`: Triton on CUDA tensors when it is installed, torch otherwise.

    Returns:
        `(assignment [B, N], medoids [B, K])`, int64, medoids sorted ascending; masked tokens are assigned -1.
    """
    _check_inputs(tokens, num_clusters, mask)
    fused = _use_triton(backend, tokens.device)
    if check_every is None:
        check_every = 1 if tokens.device.type == "cpu" else 8
    with torch.autocast(tokens.device.type, enabled=False):
        x = tokens.detach().float().contiguous()  # the matmul's rounding depends on the memory layout
        if mask is not None:
            mask = mask.bool() | ~mask.any(dim=1, keepdim=True)
            x = x.masked_fill(~mask[:, :, None], 0.0)  # padding content must not reach any real distance
        if fused:
            from .clustering_triton import kmedoids_fused  # a torch.library custom op: one opaque call when compiled

            unclamped = _unclamped_distance(x, distance)
            return kmedoids_fused(unclamped, distance == "euclidean", x.norm(dim=-1), mask, num_clusters, max_iters)
        dist = pairwise_distance(x, distance)
        if mask is not None:
            dist.masked_fill_(~mask[:, None, :], float("inf"))  # no token is near padding
        medoids = _kkz_init(dist, x.norm(dim=-1), num_clusters, mask).sort(dim=1).values
        if torch.compiler.is_compiling():
            medoids = _iterate_in_graph(dist, medoids, num_clusters, mask, max_iters)
        else:
            for step in range(max_iters):
                new_medoids = _update(dist, _assign(dist, medoids), num_clusters, mask)
                if (step + 1) % check_every == 0 and torch.equal(new_medoids, medoids):
                    break
                medoids = new_medoids
        assignment = _assign(dist, medoids)
        if mask is not None:
            assignment.masked_fill_(~mask, -1)
        return assignment, medoids


def _iterate_in_graph(dist, medoids, num_clusters: int, mask, max_iters: int) -> torch.Tensor:
    """The eager loop as a `while_loop`: update until the medoids stop changing or `max_iters` rounds ran.

    The convergence test stays a tensor, so a compiled or exported graph needs no host sync and no graph break.
    """

    def unfinished(step, medoids, changed):
        return (step < max_iters) & changed

    def update(step, medoids, changed):
        new_medoids = _update(dist, _assign(dist, medoids), num_clusters, mask)
        return step + 1, new_medoids, (new_medoids != medoids).any()

    start = (torch.zeros((), dtype=torch.int64, device=dist.device), medoids, torch.ones((), dtype=torch.bool, device=dist.device))
    return while_loop(unfinished, update, start)[1]


@torch.no_grad()
def spectral_clustering(
    tokens: torch.Tensor,
    num_clusters: int,
    *,
    mask: torch.Tensor | None = None,
    sigma: float = 2.0,
    knn: int | None = None,
    max_iters: int = 100,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spectral clustering: k-medoids on the row-normalised spectral embedding of a kNN affinity graph.

    Affinity `exp(-||x_i - x_j||^2 / (2 sigma^2))`, kept where j is among i's `knn` largest affinities or i
    among j's (self-loops stay); normalised Laplacian `I - D^-1/2 W D^-1/2`; eigenvectors of its K smallest
    eigenvalues, rows normalised, clustered by `kmedoids`. The medoids index the original tokens.

    Args:
        tokens: `[B, N, D]`.
        num_clusters: K, with `1 <= K <= N`.
        mask: `[B, N]` bool, False for padding tokens, as in `kmedoids`. Padding is cut out of the graph: its
            Laplacian rows become `3 * e_i`, above every real eigenvalue (at most 2), so the K smallest
            eigenvectors live on the real tokens.
        sigma: affinity bandwidth.
        knn: neighbours per token; `None` keeps `min(N, 10)` (CenterCLIPModel passes the paper's default).
        max_iters: k-medoids rounds.
        backend: the k-medoids backend (see `kmedoids`).

    Returns:
        `(assignment [B, N], medoids [B, K])`, int64, medoids sorted ascending; masked tokens are assigned -1.
    """
    _check_inputs(tokens, num_clusters, mask)
    batch, num_tokens, _ = tokens.shape
    knn = min(num_tokens, 10 if knn is None else knn)
    with torch.autocast(tokens.device.type, enabled=False):
        x = tokens.detach().float()
        if mask is not None:
            mask = mask.bool() | ~mask.any(dim=1, keepdim=True)
            x = x.masked_fill(~mask[:, :, None], 0.0)
            real_pair = mask[:, :, None] & mask[:, None, :]
        affinity = torch.exp(-pairwise_distance(x).pow(2) / (2 * sigma**2))
        if mask is not None:
            affinity = affinity * real_pair
        # Symmetric kNN graph: j in i's top-k OR i in j's top-k.
        top = torch.zeros_like(affinity, dtype=torch.bool).scatter_(2, affinity.topk(knn, dim=2).indices, True)
        keep = top | top.transpose(1, 2)
        keep.diagonal(dim1=1, dim2=2).fill_(True)
        affinity = affinity * keep
        inv_sqrt_degree = affinity.sum(-1).clamp_min(1e-12).rsqrt()
        eye = torch.eye(num_tokens, device=x.device)
        laplacian = eye - inv_sqrt_degree[:, :, None] * affinity * inv_sqrt_degree[:, None, :]
        if mask is not None:
            laplacian = torch.where(real_pair, laplacian, 3.0 * eye)
        _, eigenvectors = torch.linalg.eigh(laplacian)  # eigenvalues ascending
        embedding = F.normalize(eigenvectors[:, :, :num_clusters], dim=-1, eps=1e-6)
        return kmedoids(embedding, num_clusters, mask=mask, distance="euclidean", max_iters=max_iters, backend=backend)


__all__ = ["BACKENDS", "TIE_RTOL", "kmedoids", "pairwise_distance", "spectral_clustering"]
