"""Fused k-medoids for CUDA: one Triton kernel launch runs KKZ seeding, every assign / update round with its
convergence test, and the final assignment, one program per segment, with no host sync.

It reproduces `clustering.kmedoids`' torch path exactly (same medoids, same assignment): it reads the same
distance matrix (finishing `pairwise_distance`'s last elementwise steps itself, with correctly rounded square
roots, as it loads the entries), norms and mask, and follows the same rules -- near-ties (within
`clustering.TIE_RTOL` of the best) to the lowest index, a token strictly nearest to itself, update costs summed
in float64 -- so a sum that rounds differently in its last bits cannot flip a choice. docs/fused_clustering.md
describes the phases. `kmedoids_fused` is the kernel as a `torch.library` custom op with a fake implementation, so
`torch.compile(fullgraph=True)` sees one opaque call.
Imported lazily by `clustering.py` only when the Triton backend is used, so the model loads without Triton.
Under `TRITON_INTERPRET=1` (set before this module is imported) the kernel runs on CPU tensors, which is how
the tests check the equality without a GPU.
"""

import re

import torch

try:  # guarded, so transformers' remote-code loader does not demand Triton from every user of the model
    import triton
    import triton.language as tl
except ImportError as error:
    raise ImportError("the fused clustering backend needs the triton package (pip install triton)") from error

from .clustering import TIE_RTOL

# Elements of one `[rows, tokens]` tile: enough work per step to hide memory latency, small enough for registers.
_TILE = 8192
RTOL: tl.constexpr = tl.constexpr(TIE_RTOL)


@triton.jit
def _first_max(values, offs, BLOCK_N: tl.constexpr):
    """Index of the largest value, near-ties (within RTOL of it) to the lowest index (clustering's rule)."""
    top = -tl.max(values, axis=0)
    threshold = top + tl.abs(top) * RTOL  # as clustering._first_near_min on the negated values
    return tl.min(tl.where(-values <= threshold, offs, BLOCK_N), axis=0)


@triton.jit
def _real_tokens(mask_ptr, index, N, HAS_MASK: tl.constexpr):
    """True for the tokens `mask` keeps (all when there is no mask), False past the end."""
    if HAS_MASK:
        real = tl.load(mask_ptr + index, mask=index < N, other=0) != 0
    else:
        real = index < N
    return real


@triton.jit
def _distances(dist, rows, cols, real_cols, mask, other, N, SQRT: tl.constexpr):
    """The torch path's distances at (rows, cols), `other` where `mask` is False: the unclamped entry clamped at
    0, square-rooted for Euclidean distances (IEEE-rounded, as torch's sqrt), 0 on the diagonal, and infinite
    towards a masked-out token."""
    d = tl.maximum(tl.load(dist + rows * N + cols, mask=mask, other=0.0), 0.0)
    if SQRT:
        d = tl.sqrt_rn(d)
    d = tl.where(rows == cols, 0.0, d)
    return tl.where(mask, tl.where(real_cols, d, float("inf")), other)


@triton.jit
def _assign_rows(
    dist, assign_out, is_medoid, real, offs, valid, N, SQRT: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_N: tl.constexpr
):
    """assign_out[i] = rank among the sorted medoids of i's nearest medoid (lowest index on ties)."""
    for start in range(0, N, BLOCK_I):
        rows = start + tl.arange(0, BLOCK_I)
        tile_mask = (rows < N)[:, None] & valid[None, :] & is_medoid[None, :]
        d = _distances(dist, rows[:, None], offs[None, :], real[None, :], tile_mask, float("inf"), N, SQRT)
        d = tl.where(tile_mask & (rows[:, None] == offs[None, :]), -1.0, d)  # a medoid is nearest to itself
        least = tl.min(d, axis=1)
        threshold = least + tl.abs(least) * RTOL  # near-ties: lowest index
        nearest = tl.min(tl.where(d <= threshold[:, None], offs[None, :], BLOCK_N), axis=1)
        rank = tl.sum((is_medoid[None, :] & (offs[None, :] < nearest[:, None])).to(tl.int32), axis=1)
        tl.store(assign_out + rows, rank.to(tl.int64), mask=rows < N)


@triton.jit
def _kmedoids_kernel(
    dist_ptr, norms_ptr, mask_ptr, assign_ptr, medoids_ptr, cost_ptr, flag_ptr, N, K, max_iters,
    SQRT: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_N: tl.constexpr,
):
    segment = tl.program_id(0)
    dist = dist_ptr + segment.to(tl.int64) * N * N
    assign_out = assign_ptr + segment * N  # also the working assignment between phases
    cost = cost_ptr + segment * N
    flag = flag_ptr + segment * N
    mask_ptr += segment * N
    offs = tl.arange(0, BLOCK_N)
    valid = offs < N
    real = _real_tokens(mask_ptr, offs, N, HAS_MASK)

    # KKZ: the largest-norm token, then repeatedly the token farthest from its nearest seed. Chosen tokens
    # hold -1 (below every distance), masked-out ones -0.5 (chosen only once no real token is left), lanes
    # past the end -inf.
    norms = tl.load(norms_ptr + segment * N + offs, mask=valid, other=float("-inf"))
    first = _first_max(tl.where(valid & ~real, -1.0, norms), offs, BLOCK_N)
    nearest = _distances(dist, first, offs, real, valid, float("-inf"), N, SQRT)
    nearest = tl.where(offs == first, -1.0, tl.where(valid & ~real, -0.5, nearest))
    is_medoid = offs == first
    for _ in range(1, K):
        chosen = _first_max(nearest, offs, BLOCK_N)
        row = _distances(dist, chosen, offs, real, valid, float("-inf"), N, SQRT)
        nearest = tl.where(offs == chosen, -1.0, tl.minimum(nearest, row))
        is_medoid = is_medoid | (offs == chosen)

    # Assign / update until the medoid set stops changing (the torch path's loop, check_every=1). Scratch
    # vectors pass between phases through global memory, so every phase ends at a barrier.
    changed = 1
    step = 0
    while (changed != 0) & (step < max_iters):
        _assign_rows(dist, assign_out, is_medoid, real, offs, valid, N, SQRT, BLOCK_I, BLOCK_N)
        tl.debug_barrier()
        labels = tl.load(assign_out + offs, mask=valid, other=-1, volatile=True)
        for start in range(0, N, BLOCK_I):  # cost of a real token: sum of distances to its cluster's real members
            rows = start + tl.arange(0, BLOCK_I)
            row_labels = tl.load(assign_out + rows, mask=rows < N, other=-2, volatile=True)
            same = (row_labels[:, None] == labels[None, :]) & real[None, :]
            d = _distances(dist, rows[:, None], offs[None, :], real[None, :], (rows < N)[:, None] & same, 0.0, N, SQRT)
            row_cost = tl.sum(d.to(tl.float64), axis=1)
            row_cost = tl.where(_real_tokens(mask_ptr, rows, N, HAS_MASK), row_cost, float("inf"))
            tl.store(cost + rows, row_cost, mask=rows < N)
        tl.debug_barrier()
        costs = tl.load(cost + offs, mask=valid, other=float("inf"), volatile=True)
        for start in range(0, N, BLOCK_I):  # new medoid: the member of least cost, lowest index on ties
            rows = start + tl.arange(0, BLOCK_I)
            row_labels = tl.load(assign_out + rows, mask=rows < N, other=-2, volatile=True)
            same = row_labels[:, None] == labels[None, :]
            best = tl.min(tl.where(same, costs[None, :], float("inf")), axis=1)
            threshold = best + tl.abs(best) * RTOL  # near-ties: lowest index
            winner = tl.min(tl.where(same & (costs[None, :] <= threshold[:, None]), offs[None, :], BLOCK_N), axis=1)
            tl.store(flag + rows, (winner == rows).to(tl.int32), mask=rows < N)
        tl.debug_barrier()
        new_medoid = tl.load(flag + offs, mask=valid, other=0, volatile=True) != 0
        changed = tl.sum((new_medoid != is_medoid).to(tl.int32), axis=0)
        is_medoid = new_medoid
        step += 1
        tl.debug_barrier()  # the next assign phase overwrites what this round's phases read

    _assign_rows(dist, assign_out, is_medoid, real, offs, valid, N, SQRT, BLOCK_I, BLOCK_N)
    if HAS_MASK:
        tl.debug_barrier()
        tl.store(assign_out + offs, -1, mask=valid & ~real)  # masked-out tokens belong to no cluster
    rank = tl.cumsum(is_medoid.to(tl.int32), axis=0) - 1
    tl.store(medoids_ptr + segment * K + rank, offs.to(tl.int64), mask=is_medoid)


# Hub remote code can import a second copy of this module under another name; each copy registers its own op.
_OP_NAME = "centerclip::" + re.sub(r"\W", "_", __name__) + "_kmedoids"


@torch.library.custom_op(_OP_NAME, mutates_args=())
def kmedoids_fused(
    dist: torch.Tensor,
    euclidean: bool,
    norms: torch.Tensor,
    mask: torch.Tensor | None,
    num_clusters: int,
    max_iters: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-medoids in one kernel launch, on token norms `[B, N]` and fp32 distances `[B, N, N]` as
    `clustering._unclamped_distance` returns them (squared if `euclidean`); `mask` `[B, N]` bool as
    `clustering.kmedoids` normalises it (a row without real tokens all True), or None.

    A `torch.library` custom op: `torch.compile` traces it as one opaque call (shapes from the fake below).
    Returns `(assignment [B, N], medoids [B, K])`, int64, exactly as `clustering.kmedoids`' torch path.
    """
    batch, num_tokens, _ = dist.shape
    dist, norms = dist.contiguous(), norms.contiguous()
    assignment = torch.empty(batch, num_tokens, dtype=torch.int64, device=dist.device)
    medoids = torch.empty(batch, num_clusters, dtype=torch.int64, device=dist.device)
    cost = torch.empty(batch, num_tokens, dtype=torch.float64, device=dist.device)
    flag = torch.empty(batch, num_tokens, dtype=torch.int32, device=dist.device)
    _kmedoids_kernel[(batch,)](
        dist, norms, norms if mask is None else mask.contiguous().view(torch.uint8), assignment, medoids, cost, flag,
        num_tokens, num_clusters, max_iters, SQRT=euclidean, HAS_MASK=mask is not None, **launch_config(num_tokens),
    )
    return assignment, medoids


@kmedoids_fused.register_fake
def _(dist, euclidean, norms, mask, num_clusters, max_iters):
    batch, num_tokens, _ = dist.shape
    return dist.new_empty(batch, num_tokens, dtype=torch.int64), dist.new_empty(batch, num_clusters, dtype=torch.int64)


def launch_config(num_tokens: int) -> dict:
    """Block sizes and warps for segments of `num_tokens` tokens: a whole row per tile, as many rows as fit.

    No floating-point contraction: nothing here multiplies, and exactness must not depend on a compiler default.
    """
    block_n = triton.next_power_of_2(num_tokens)
    block_i = max(1, min(block_n, _TILE // block_n))
    return {"BLOCK_I": block_i, "BLOCK_N": block_n, "num_warps": 8, "enable_fp_fusion": False}
