"""Token merging and keeping for CenterCLIP's reducers: bipartite soft matching (ToMe), uniform keep.

Pure tensor functions with no model code (docs/design.md, "Other reducers"). Shapes: B rows (frames, segments or
groups of frames), N tokens per row, D features, R tokens merged away per row.

Every token carries a size `s` (how many input patches it stands for, 1 at the start); a merge is the size-weighted
mean `sum(s * x) / sum(s)` and sizes add up. A token mask (`mask [B, N]`, False = padding from padded frames)
keeps padding apart from real tokens: padding is merged away first, never contributes to a real token, and a
real token merged into padding (only when nothing else is left) is dropped, so padding content changes nothing
and padding fills a budget only when there are too few real tokens. A row with no real token at all is computed
as if every token were real (`merge_to_budget` still marks its output as padding).

The first `protected` tokens of every row ([CLS] tokens) are never merged and keep their places. Every other
token keeps its relative order: a merged token sits where its destination (the B-side token) was. Matching
runs in fp32 under `torch.no_grad()`; gradients flow through the size-weighted merge. Ties go to the lowest
index, so results are identical across runs and batch splits.

Output shapes depend only on input shapes and arguments, never on values, so every function here traces into one
`torch.compile(fullgraph=True)` graph; the eager shortcuts for unpadded input (`known_all`) are skipped there.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F

class Merged(NamedTuple):
    """A reduced token set and where every input token went."""

    tokens: torch.Tensor  # [B, M, D]
    sizes: torch.Tensor  # [B, M] float, input patches each output token stands for
    mask: torch.Tensor | None  # [B, M] bool, False for padding; None when every token is real
    destination: torch.Tensor  # [B, N] int64, output slot of every input token (-1: padding left out)
    kept: torch.Tensor  # [B, M] int64, input index of each output token's representative (ascending)


def known_all(mask: torch.Tensor) -> bool:
    """True when every entry of the bool tensor `mask` is True, read from the data in eager mode (one host sync
    that lets a caller skip the padded path's work); always False while compiling or exporting, where the general
    path runs instead: the same result, with no sync and no graph break."""
    return not torch.compiler.is_compiling() and bool(mask.all())


def real_rows(mask: torch.Tensor | None) -> torch.Tensor | None:
    """The mask with rows that hold no real token made all real (they are computed as if unpadded)."""
    if mask is None:
        return None
    mask = mask.bool()
    return mask | ~mask.any(dim=1, keepdim=True)


def bipartite_soft_matching(
    metric: torch.Tensor,
    num_merged: int | torch.Tensor,
    *,
    protected: int = 0,
    lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One round of ToMe's bipartite soft matching: which R tokens merge into which.

    The unprotected tokens split alternately into A (even positions after the protected ones) and B (odd);
    every A token's edge goes to its most similar B token (cosine of `metric`); the R best edges merge their A
    token into its B partner, several A tokens may share one.

    Args:
        metric: `[B, N, C]` similarity features (hidden states or keys).
        num_merged: R, at most the number of B tokens, `(N - protected) // 2`; or `[B]` int64, one R per row
            (at most that row's B tokens among its first `lengths`).
        protected: leading tokens never merged.
        lengths: `[B]` int64; only the first `lengths[b]` tokens of row b take part, as if the row ended there:
            the others are neither merged nor merged into (static shapes for rows of different lengths).

    Returns:
        `(destination [B, N], keep [B, N])`: destination is the input index each token ends in (itself unless
        merged), keep is True for the `N - R` tokens that stay.
    """
    batch, num_tokens, _ = metric.shape
    a_idx = torch.arange(protected, num_tokens, 2, device=metric.device)
    b_idx = torch.arange(protected + 1, num_tokens, 2, device=metric.device)
    per_row = isinstance(num_merged, torch.Tensor)
    if not per_row and not 0 <= num_merged <= len(b_idx):
        raise ValueError(
            f"num_merged={num_merged}: one round merges at most {len(b_idx)} of the {num_tokens - protected} "
            "unprotected tokens"
        )
    destination = torch.arange(num_tokens, device=metric.device).expand(batch, -1).clone()
    keep = torch.ones(batch, num_tokens, dtype=torch.bool, device=metric.device)
    if not per_row and num_merged == 0:
        return destination, keep
    with torch.no_grad(), torch.autocast(metric.device.type, enabled=False):
        unit = F.normalize(metric.detach().float(), dim=-1, eps=1e-6).contiguous()
        scores = unit[:, a_idx] @ unit[:, b_idx].transpose(1, 2)  # [B, A, B]
        if lengths is not None:  # tokens past a row's length: never a partner, never chosen (-inf sorts last)
            scores = scores.masked_fill((b_idx[None, :] >= lengths[:, None])[:, None, :], float("-inf"))
        best, partner = scores.max(dim=2)  # ties: lowest B index
        if lengths is not None:
            best = best.masked_fill(a_idx[None, :] >= lengths[:, None], float("-inf"))
        order = _descending_order(best)  # ties: lowest A index
        # The first R A tokens of each row's order merge; the others' entries rewrite what they already hold.
        rank = torch.arange(len(a_idx), device=metric.device).expand(batch, -1)
        chosen = rank < (num_merged[:, None] if per_row else num_merged)  # [B, A]
        merged_a = a_idx[order]  # [B, A] input indices
        destination.scatter_(1, merged_a, torch.where(chosen, b_idx[partner.gather(1, order)], merged_a))
        keep.scatter_(1, merged_a, ~chosen)
    return destination, keep


def _descending_order(values: torch.Tensor) -> torch.Tensor:
    """`values.sort(dim=1, descending=True, stable=True).indices` from pairwise comparisons (`[B, A, A]`, small for
    the A side of one matching round): ONNX has no stable sort, and the rank of each value is what decides.
    NaN sorts first, as in `sort` (padding may hold anything)."""
    index = torch.arange(values.shape[1], device=values.device)
    nan = values.isnan()
    v_i, v_j, nan_i, nan_j = values[:, :, None], values[:, None, :], nan[:, :, None], nan[:, None, :]
    greater = (nan_j & ~nan_i) | (v_j > v_i)  # [B, i, j]: j is larger than i
    equal = (nan_j & nan_i) | (v_j == v_i)
    rank = (greater | (equal & (index[None, :] < index[:, None]))).sum(dim=2)  # how many sort before i
    # Ranks are distinct, but a compiler may recompute `values` per use with other rounding: argsort, not a
    # scatter into empty memory, keeps every index valid whatever it does.
    return rank.argsort(dim=1)


def merge_into(
    tokens: torch.Tensor, sizes: torch.Tensor, destination: torch.Tensor, keep: torch.Tensor, num_out: int
) -> Merged:
    """Size-weighted merge of every token into `destination` (an input index whose token is kept).

    Args:
        tokens: `[B, N, D]`; sizes: `[B, N]`; destination: `[B, N]` int64, -1 for a token dropped (it goes
            nowhere); keep: `[B, N]` bool with the same count `num_out` (M) in every row (passed, not counted, so
            the output shape is static).

    Returns:
        `Merged` with M tokens in input order (mask None); dropped tokens' destination stays -1.
    """
    batch, num_tokens, dim = tokens.shape
    slot = keep.long().cumsum(dim=1) - 1  # output slot of each kept token
    dropped = destination < 0
    out_slot = slot.gather(1, destination.clamp_min(0))  # [B, N]
    spill = out_slot.masked_fill(dropped, num_out)  # dropped tokens go to a spare slot, cut off below
    weights = sizes.to(tokens.dtype)
    summed = tokens.new_zeros(batch, num_out + 1, dim).scatter_add(
        1, spill[:, :, None].expand(-1, -1, dim), weights[:, :, None] * tokens
    )[:, :num_out]
    new_sizes = weights.new_zeros(batch, num_out + 1).scatter_add(1, spill, weights)[:, :num_out]
    positions = torch.arange(num_tokens, device=tokens.device)
    kept = torch.where(keep, positions, num_tokens + positions).sort(dim=1).values[:, :num_out]  # kept, ascending
    return Merged(summed / new_sizes[:, :, None], new_sizes.to(sizes.dtype), None, out_slot.masked_fill(dropped, -1), kept)


def bipartite_merge(
    tokens: torch.Tensor,
    num_merged: int,
    *,
    sizes: torch.Tensor | None = None,
    protected: int = 0,
    metric: torch.Tensor | None = None,
) -> Merged:
    """One round of bipartite soft matching and the size-weighted merge: `[B, N, D]` -> `[B, N - R, D]`.

    `metric` defaults to the tokens themselves; `sizes` to ones.
    """
    if sizes is None:
        sizes = tokens.new_ones(tokens.shape[:2], dtype=torch.float32)
    destination, keep = bipartite_soft_matching(tokens if metric is None else metric, num_merged, protected=protected)
    return merge_into(tokens, sizes, destination, keep, tokens.shape[1] - num_merged)


def merge_to_budget(
    tokens: torch.Tensor,
    budget: int,
    *,
    sizes: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    protected: int = 0,
) -> Merged:
    """Rounds of bipartite merging until exactly `budget` tokens are left (protected ones included).

    Each round merges `min(N - budget, (N - protected) // 2)` tokens, the most one round allows. `destination`
    and `kept` refer to the input tokens, composed over the rounds.

    With a `mask`, padding takes no part: each row's real unprotected tokens are merged alone, as if the padding
    were not there, and padding tokens (zeroed) fill the budget only when a row has too few real ones; the
    padding left out gets destination -1. Protected tokens stay whether real or not. A row with no real token is
    merged as if all were real but stays padding (mask False, zeros), so a later join never counts it as real.
    Rows of different real counts are merged together in static shapes (`_merge_real_tokens`): no host sync,
    one graph when compiled.
    """
    batch, num_tokens, dim = tokens.shape
    if not (protected < budget <= num_tokens or budget == num_tokens):
        raise ValueError(f"budget={budget}: must be in [{protected + 1}, {num_tokens}] ({protected} protected)")
    if sizes is None:
        sizes = tokens.new_ones(tokens.shape[:2], dtype=torch.float32)
    if mask is not None and known_all(mask[:, protected:]):
        merged = _merge_rounds(tokens, sizes, budget, protected)
        return merged._replace(mask=mask.bool().gather(1, merged.kept))
    if mask is not None:
        return _merge_real_tokens(tokens, budget, sizes, mask.bool(), protected)
    return _merge_rounds(tokens, sizes, budget, protected)


def _merge_rounds(tokens, sizes, budget, protected, lengths=None) -> Merged:
    """The rounds of `merge_to_budget` (no mask). With `lengths [B]`, row b's own tokens are its first
    `lengths[b]` (at least `budget`, or fewer: left as they are); each round merges `min(n - budget,
    (n - protected) // 2)` of a row's n own tokens, as if the row were alone, and drops what the static width
    no longer holds of the rest (filler: its destination -1)."""
    batch, width, _ = tokens.shape
    index = torch.arange(width, device=tokens.device).expand(batch, -1)
    merged = Merged(tokens, sizes, None, index, index)
    while width > budget:
        most = min(width - budget, (width - protected) // 2)  # the longest row's merges; the width left: the same
        if lengths is None:
            step = bipartite_merge(merged.tokens, most, sizes=merged.sizes, protected=protected)
        else:
            num_merged = torch.minimum(lengths - budget, (lengths - protected) // 2).clamp_min(0)  # [B]
            destination, keep = bipartite_soft_matching(merged.tokens, num_merged, protected=protected, lengths=lengths)
            # Each row keeps its n - R own tokens (at most `width - most`: the round's size is monotone in n)
            # and fills the rest of the width with its first filler tokens; the filler past it is dropped.
            dropped = torch.arange(width, device=tokens.device) >= width - most + num_merged[:, None]
            destination, keep = destination.masked_fill(dropped, -1), keep & ~dropped
            step = merge_into(merged.tokens, merged.sizes, destination, keep, width - most)
            # A row merging nothing keeps its tokens as they were (not (s * x) / s).
            idle = (num_merged == 0)[:, None, None]
            step = step._replace(tokens=torch.where(idle, merged.tokens[:, : width - most], step.tokens))
            lengths = lengths - num_merged
        earlier = merged.destination
        destination = step.destination.gather(1, earlier.clamp_min(0)).masked_fill(earlier < 0, -1)
        merged = Merged(step.tokens, step.sizes, None, destination, merged.kept.gather(1, step.kept))
        width -= most
    return merged


def _merge_real_tokens(tokens, budget, sizes, mask, protected) -> Merged:
    """`merge_to_budget` on rows with padding, in static shapes: each row's protected and real tokens are moved to
    its front (in order) and merged there as if alone (`_merge_rounds` with `lengths`); a row with fewer than
    `budget` of them keeps them all and its first padding tokens instead."""
    batch, num_tokens, dim = tokens.shape
    positions = torch.arange(num_tokens, device=tokens.device)
    own = real_rows(mask) | (positions < protected)
    # Protected tokens, then real ones, then padding, each in input order.
    order = torch.sort((~own).long() * num_tokens + positions, dim=1).indices
    count = own.sum(dim=1)  # [B]
    front = positions < count[:, None]  # [B, N]: the entries of `order` that are a row's own tokens
    packed = torch.where(front[:, :, None], tokens.gather(1, order[:, :, None].expand(-1, -1, dim)), 0)
    merged = _merge_rounds(packed, torch.where(front, sizes.gather(1, order), 1), budget, protected, lengths=count)
    few = order[:, :budget].sort(dim=1).values  # too few own tokens: all of them, then the first padding tokens
    enough = count >= budget
    unplaced = positions.new_full((batch, num_tokens), -1)
    kept = _select_rows(enough, order.gather(1, merged.kept), few)
    destination = _select_rows(
        enough,
        unplaced.scatter(1, order, merged.destination.masked_fill(~front, -1)),
        unplaced.scatter(1, few, torch.arange(budget, device=tokens.device).expand(batch, -1)),
    )
    out_tokens = _select_rows(enough, merged.tokens, tokens.gather(1, few[:, :, None].expand(-1, -1, dim)))
    out_sizes = _select_rows(enough, merged.sizes, sizes.gather(1, few))
    kept_real = mask.gather(1, kept)
    out_tokens = torch.where(kept_real[:, :, None], out_tokens, 0)  # 0: masked keys, but 0 * NaN leaks
    return Merged(out_tokens, out_sizes, kept_real, destination, kept)


def _select_rows(rows: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """`new` in the rows where the bool `rows [B]` is True, `old` elsewhere (bool tensors by logic: ONNX Runtime
    has no bool `Where`)."""
    rows = rows.view(-1, *[1] * (new.dim() - 1))
    return (rows & new) | (~rows & old) if new.dtype == torch.bool else torch.where(rows, new, old)


def uniform_keep(
    num_tokens: int, budget: int, mask: torch.Tensor | None = None, batch: int = 1, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`budget` evenly spaced tokens of each row, and the kept token nearest to every token.

    With a mask, the evenly spaced tokens are taken among the real tokens (padding fills in only when a row
    has fewer real tokens than the budget); the i-th of n is token `floor((i + 0.5) * n / budget)`.

    Returns:
        `(kept [B, K] ascending, assignment [B, N])`: assignment is the index into `kept` of the nearest kept token
        by position (ties: the earlier one), -1 for padding.
    """
    if not 1 <= budget <= num_tokens:
        raise ValueError(f"budget={budget}: must be in [1, {num_tokens}]")
    mask = real_rows(mask)
    if mask is None:
        mask = torch.ones(batch, num_tokens, dtype=torch.bool, device=device)
    positions = torch.arange(num_tokens, device=mask.device)
    # Real tokens first, each group in order: the first n entries of `order` are the real tokens.
    order = torch.sort((~mask).long() * num_tokens + positions, dim=1).indices
    real = mask.sum(dim=1, keepdim=True)
    steps = torch.arange(budget, device=mask.device)
    picks = torch.where(real >= budget, ((2 * steps + 1) * real) // (2 * budget), steps)  # [B, K]
    kept = order.gather(1, picks).sort(dim=1).values
    distance = (positions[None, :, None] - kept[:, None, :]).abs()  # [B, N, K]
    assignment = distance.argmin(dim=2).masked_fill(~mask, -1)
    return kept, assignment


def cluster_sizes(sizes: torch.Tensor, assignment: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Total size `[B, K]` of each cluster's tokens (`assignment [B, N]`, -1 = padding, counted nowhere);
    an empty cluster (a padding medoid) gets size 1."""
    summed = sizes.new_zeros(sizes.shape[0], num_clusters + 1).scatter_add(
        1, torch.where(assignment < 0, num_clusters, assignment), sizes
    )[:, :num_clusters]
    return torch.where(summed > 0, summed, 1)


def attention_bias(
    mask: torch.Tensor | None, sizes: torch.Tensor | None, proportional: bool, dtype: torch.dtype
) -> torch.Tensor | None:
    """Additive attention mask `[B, 1, 1, N]` for CLIP's attention: padding keys at the dtype's minimum and,
    with proportional attention, `log(size)` of every key; None when it would be all zeros."""
    bias = None
    if proportional and sizes is not None and not known_all(sizes == 1):
        bias = sizes.to(dtype).log()
    mask = real_rows(mask)
    if mask is not None and not known_all(mask):
        base = torch.zeros(mask.shape, dtype=dtype, device=mask.device) if bias is None else bias
        bias = base.masked_fill(~mask, torch.finfo(dtype).min)
    return None if bias is None else bias[:, None, None, :]


__all__ = [
    "Merged",
    "attention_bias",
    "bipartite_merge",
    "bipartite_soft_matching",
    "cluster_sizes",
    "known_all",
    "merge_into",
    "merge_to_budget",
    "real_rows",
    "uniform_keep",
]
