"""The token reducers of modeling_centerclip.merging against brute-force references on small tensors."""

import pytest
import torch

from modeling_centerclip.merging import (
    attention_bias,
    bipartite_merge,
    cluster_sizes,
    merge_to_budget,
    uniform_keep,
)


def brute_force_round(tokens, sizes, r, protected=0):
    """ToMe's round written out with Python loops, one row at a time: (tokens, sizes, kept indices, destination)."""
    out_tokens, out_sizes, out_kept, out_dest = [], [], [], []
    for b in range(tokens.shape[0]):
        x, s = tokens[b].double(), sizes[b].double()
        n = x.shape[0]
        edges = []
        for a in range(protected, n, 2):
            best, partner = None, None
            for j in range(protected + 1, n, 2):
                score = float(torch.dot(x[a], x[j]) / (x[a].norm().clamp_min(1e-6) * x[j].norm().clamp_min(1e-6)))
                if best is None or score > best + 1e-9:
                    best, partner = score, j
            edges.append((best, a, partner))
        merged = sorted(edges, key=lambda e: -e[0])[:r]  # Python's sort is stable: ties keep A order
        dest = list(range(n))
        for _, a, partner in merged:
            dest[a] = partner
        kept = [i for i in range(n) if dest[i] == i]
        rows, row_sizes = [], []
        for k in kept:
            members = [i for i in range(n) if dest[i] == k]
            weight = sum(float(s[i]) for i in members)
            rows.append(sum(float(s[i]) * x[i] for i in members) / weight)
            row_sizes.append(weight)
        out_tokens.append(torch.stack(rows))
        out_sizes.append(torch.tensor(row_sizes))
        out_kept.append(kept)
        out_dest.append([kept.index(d) for d in dest])
    return torch.stack(out_tokens).float(), torch.stack(out_sizes).float(), torch.tensor(out_kept), torch.tensor(out_dest)


def random_tokens(batch=3, n=11, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, n, dim, generator=g)
    tokens[:, 5] = tokens[:, 2]  # exact duplicates tie with each other
    sizes = torch.randint(1, 4, (batch, n), generator=g).float()
    return tokens, sizes


@pytest.mark.parametrize("protected, r", [(0, 1), (0, 5), (1, 3), (1, 5), (2, 4)])
def test_bipartite_round_matches_brute_force(protected, r):
    tokens, sizes = random_tokens()
    merged = bipartite_merge(tokens, r, sizes=sizes, protected=protected)
    ref_tokens, ref_sizes, ref_kept, ref_dest = brute_force_round(tokens, sizes, r, protected)
    assert merged.tokens.shape == (3, 11 - r, 6)
    assert torch.equal(merged.kept, ref_kept) and torch.equal(merged.destination, ref_dest)
    torch.testing.assert_close(merged.sizes, ref_sizes)
    torch.testing.assert_close(merged.tokens, ref_tokens)
    assert (merged.kept.diff(dim=1) > 0).all()  # kept tokens stay in input order


@pytest.mark.parametrize("budget", [3, 6, 9])
def test_padding_takes_no_part_in_merging(budget):
    """A padded row merges exactly as its real tokens would alone; padding fills in only below the budget."""
    tokens, sizes = random_tokens(batch=4, n=12)
    mask = torch.ones(4, 12, dtype=torch.bool)
    mask[0, 8:] = False  # a padded frame's tokens
    mask[1, 2::3] = False  # scattered padding
    mask[2, 1:] = False  # only the protected token and nothing else real
    garbage = torch.where(mask[:, :, None], tokens, torch.full_like(tokens, float("nan")))
    merged = merge_to_budget(garbage, budget, sizes=sizes, mask=mask, protected=1)
    assert merged.tokens.shape == (4, budget, 6) and torch.isfinite(merged.tokens).all()
    for row in range(4):
        real = mask[row].nonzero().flatten()
        alone = merge_to_budget(tokens[row : row + 1, real], min(budget, len(real)), sizes=sizes[row : row + 1, real], protected=1)
        out_real = merged.mask[row]
        assert int(out_real.sum()) == alone.tokens.shape[1]
        assert torch.equal(merged.kept[row, out_real], real[alone.kept[0]])
        torch.testing.assert_close(merged.tokens[row, out_real], alone.tokens[0])
        torch.testing.assert_close(merged.sizes[row, out_real], alone.sizes[0])
        assert (merged.tokens[row, ~out_real] == 0).all()  # padding kept to fill the budget holds zeros
        assert (merged.kept[row].diff() > 0).all()
        slots = merged.destination[row, ~mask[row]]
        assert ((slots == -1) | ~out_real[slots.clamp_min(0)]).all()  # padding never lands in a real token
    assert merged.mask[3].all()  # a row without padding is untouched


@pytest.mark.parametrize("protected", [0, 1, 2])
def test_rows_of_every_real_count_merge_together_as_each_alone(protected):
    """One batch holds rows of many real counts (every count from none to all, padding anywhere, protected tokens
    padded or not); at every budget each row equals its own tokens merged alone: the static-shape path (every
    row's rounds at once, no grouping by count) is exact, choices included."""
    n = 15
    g = torch.Generator().manual_seed(protected)
    tokens, sizes = random_tokens(batch=n + 1, n=n, seed=protected)
    mask = torch.rand(n + 1, n, generator=g).argsort(dim=1) < torch.arange(n + 1)[:, None]  # row i: i real tokens
    counted = mask | ~mask.any(dim=1, keepdim=True)  # a row with no real token is merged as if all were real
    garbage = torch.where(counted[:, :, None], tokens, torch.full_like(tokens, float("nan")))
    for budget in range(protected + 1, n + 1):
        merged = merge_to_budget(garbage, budget, sizes=sizes, mask=mask, protected=protected)
        assert merged.tokens.shape == (n + 1, budget, 6) and torch.isfinite(merged.tokens).all()
        for row in range(n + 1):
            own = counted[row] | (torch.arange(n) < protected)
            real = own.nonzero().flatten()
            alone = merge_to_budget(tokens[row : row + 1, real], min(budget, len(real)), sizes=sizes[row : row + 1, real], protected=protected)
            placed = merged.kept[row].unsqueeze(1) == real[alone.kept[0]].unsqueeze(0)  # [budget, kept alone]
            assert placed.any(dim=0).all() and (merged.kept[row].diff() > 0).all(), (budget, row)
            slots = placed.float().argmax(dim=0)  # where each of the alone result's tokens sits
            torch.testing.assert_close(merged.sizes[row, slots], alone.sizes[0])
            real_out = merged.mask[row, slots]
            torch.testing.assert_close(merged.tokens[row, slots][real_out], alone.tokens[0][real_out])
            assert torch.equal(merged.destination[row, real], slots[alone.destination[0]]), (budget, row)
            if not mask[row].any():  # merged as if real, but still padding: a later join must not count it
                assert not merged.mask[row].any() and (merged.tokens[row] == 0).all()
            assert (merged.destination[row, ~own] == -1).sum() >= n - len(real) - max(0, budget - len(real))


def test_protected_cls_is_never_merged():
    for seed in range(5):
        tokens, sizes = random_tokens(n=15, seed=seed)
        tokens[:, 0] = tokens[:, 1]  # the [CLS] is the most similar token there is to its neighbour
        merged = merge_to_budget(tokens, 2, sizes=sizes, protected=1)
        torch.testing.assert_close(merged.tokens[:, 0], tokens[:, 0])  # (s * x) / s: equal up to rounding
        assert torch.equal(merged.sizes[:, 0], sizes[:, 0])
        assert (merged.destination[:, 1:] > 0).all() and (merged.kept[:, 0] == 0).all()


@pytest.mark.parametrize("protected", [0, 1, 3])
def test_merge_to_budget_reaches_every_budget_exactly(protected):
    tokens, sizes = random_tokens(n=13)
    for budget in range(protected + 1, 14):
        merged = merge_to_budget(tokens, budget, sizes=sizes, protected=protected)
        assert merged.tokens.shape[1] == merged.sizes.shape[1] == budget
        torch.testing.assert_close(merged.sizes.sum(dim=1), sizes.sum(dim=1))  # sizes add up
        # The composed destination says it all: each output is the size-weighted mean of what went into it.
        expected = torch.zeros(3, budget, 6).index_put_(
            (torch.arange(3)[:, None].expand(-1, 13), merged.destination), sizes[:, :, None] * tokens, accumulate=True
        )
        torch.testing.assert_close(merged.tokens, expected / merged.sizes[:, :, None])
        assert torch.equal(merged.destination.gather(1, merged.kept), torch.arange(budget).expand(3, -1))
    with pytest.raises(ValueError, match="budget"):
        merge_to_budget(tokens, protected, protected=protected)


def brute_force_uniform(n, budget, real):
    positions = [i for i in range(n) if real[i]] or list(range(n))
    m = len(positions)
    if m >= budget:
        kept = [positions[int((i + 0.5) * m / budget)] for i in range(budget)]
    else:
        kept = sorted(positions + [i for i in range(n) if i not in positions][: budget - m])
    assignment = [min(range(budget), key=lambda k: (abs(i - kept[k]), k)) if real[i] or m == n else -1 for i in range(n)]
    return kept, assignment


def test_uniform_keep_matches_brute_force():
    mask = torch.ones(4, 12, dtype=torch.bool)
    mask[1, 6:] = False
    mask[2, ::2] = False
    mask[3, 2:] = False  # fewer real tokens than the budget: padding fills in
    for budget in [1, 3, 4, 5, 12]:
        kept, assignment = uniform_keep(12, budget, mask)
        for row in range(4):
            ref_kept, ref_assignment = brute_force_uniform(12, budget, mask[row].tolist())
            assert kept[row].tolist() == ref_kept, (budget, row)
            assert assignment[row].tolist() == ref_assignment, (budget, row)
    assert uniform_keep(12, 4)[0].tolist() == [[1, 4, 7, 10]]


def test_cluster_sizes_sum_members_and_skip_padding():
    sizes = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert cluster_sizes(sizes, torch.tensor([[0, 1, 0, -1]]), 3).tolist() == [[4.0, 2.0, 1.0]]


def test_attention_bias_holds_log_sizes_and_masks_padding():
    sizes = torch.tensor([[1.0, 2.0, 4.0]])
    mask = torch.tensor([[True, True, False]])
    assert attention_bias(None, sizes, False, torch.float32) is None
    assert attention_bias(None, torch.ones(1, 3), True, torch.float32) is None
    torch.testing.assert_close(attention_bias(None, sizes, True, torch.float32)[0, 0, 0], sizes[0].log())
    bias = attention_bias(mask, sizes, True, torch.float32)[0, 0, 0]
    assert bias[1] == torch.tensor(2.0).log() and bias[2] == torch.finfo(torch.float32).min
    assert attention_bias(torch.zeros(1, 3, dtype=torch.bool), sizes, False, torch.float32) is None
