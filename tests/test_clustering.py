"""k-medoids and spectral clustering against the specification in docs/design.md."""

import pytest
import torch
from clustering_cases import masked_case, random_cases
from torch.utils._python_dispatch import TorchDispatchMode

from modeling_centerclip.clustering import TIE_RTOL, kmedoids, pairwise_distance, spectral_clustering


def brute_force_kmedoids(tokens, dist, k: int, max_iters: int = 100):
    """One sample: tokens `[N, D]` and their distances `[N, N]`, as literally as the spec reads (Python loops).

    Distances come from the tested `pairwise_distance` (checked against exact differences below), so this
    checks the algorithm -- initialisation, updates, tie rules -- on bit-identical inputs.
    """
    dist = dist.tolist()
    n = len(dist)

    def d(i, j):  # every token is strictly nearer to itself than to any other token
        return -1.0 if i == j else dist[i][j]

    def near_max(values, top):  # the near-tie rule: within TIE_RTOL of the best counts as tied
        return values >= top - abs(top) * TIE_RTOL

    def near_min(values, least):
        return values <= least + abs(least) * TIE_RTOL

    norms = tokens.float().norm(dim=-1).tolist()
    medoids = [min(i for i in range(n) if near_max(norms[i], max(norms)))]  # largest norm, (near-)ties: lowest index
    while len(medoids) < k:
        candidates = [i for i in range(n) if i not in medoids]
        far = max(min(d(i, m) for m in medoids) for i in candidates)
        medoids.append(min(i for i in candidates if near_max(min(d(i, m) for m in medoids), far)))

    def assign(meds):
        meds = sorted(meds)
        out = []
        for i in range(n):
            best = min(d(i, m) for m in meds)
            out.append(next(c for c, m in enumerate(meds) if near_min(d(i, m), best)))
        return out

    medoids = sorted(medoids)
    for _ in range(max_iters):
        labels = assign(medoids)
        new = []
        for c in range(k):
            members = [i for i in range(n) if labels[i] == c]
            # The spec's cost: sum of distances to the members (d(i, i) counts 0 here: the sum is a real cost).
            costs = [sum(dist[i][j] for j in members) for i in members]
            new.append(next(i for i, cost in zip(members, costs) if near_min(cost, min(costs))))
        new = sorted(new)
        if new == medoids:
            break
        medoids = new
    return assign(medoids), medoids


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_kmedoids_matches_brute_force(distance):
    for tokens, k in random_cases(seed=0 if distance == "euclidean" else 1):
        assignment, medoids = kmedoids(tokens, k, distance=distance)
        dist = pairwise_distance(tokens, distance)
        for b in range(tokens.shape[0]):
            ref_assignment, ref_medoids = brute_force_kmedoids(tokens[b], dist[b], k)
            assert medoids[b].tolist() == ref_medoids, (tokens.shape, k)
            assert assignment[b].tolist() == ref_assignment


def test_kmedoids_output_contract():
    tokens = torch.randn(5, 30, 8)
    assignment, medoids = kmedoids(tokens, 7)
    assert assignment.dtype == medoids.dtype == torch.int64
    assert assignment.shape == (5, 30) and medoids.shape == (5, 7)
    assert torch.all(medoids[:, 1:] > medoids[:, :-1]), "medoids sorted and distinct"
    # Each medoid belongs to its own cluster, every cluster is non-empty.
    assert torch.equal(assignment.gather(1, medoids), torch.arange(7).expand(5, 7))


def test_kmedoids_duplicates_never_give_empty_clusters():
    frame = torch.randn(1, 6, 4)
    tokens = frame.repeat(1, 3, 1)  # three identical frames: only 6 distinct tokens
    assignment, medoids = kmedoids(tokens, 10)
    assert len(set(medoids[0].tolist())) == 10
    assert set(assignment[0].tolist()) == set(range(10))


def test_kmedoids_k_equals_n_keeps_every_token():
    tokens = torch.randn(2, 9, 3)
    assignment, medoids = kmedoids(tokens, 9)
    assert torch.equal(medoids, torch.arange(9).expand(2, 9))
    assert torch.equal(assignment, torch.arange(9).expand(2, 9))


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_kmedoids_deterministic_across_runs_and_batch_splits(distance):
    tokens = torch.randn(8, 60, 16)
    tokens[:, 30:] = tokens[:, :30]  # duplicates are where tie rules matter most
    first = kmedoids(tokens, 12, distance=distance)
    again = kmedoids(tokens.clone(), 12, distance=distance)
    split = [kmedoids(part, 12, distance=distance) for part in tokens.split(3)]
    single = [kmedoids(part, 12, distance=distance) for part in tokens.split(1)]
    for i in range(2):
        assert torch.equal(first[i], again[i])
        assert torch.equal(first[i], torch.cat([s[i] for s in split]))
        assert torch.equal(first[i], torch.cat([s[i] for s in single]))


def test_kmedoids_sparse_convergence_checks_change_nothing():
    """The accelerator path checks convergence only every few rounds; results must be identical."""
    for tokens, k in random_cases(seed=2):
        eager = kmedoids(tokens, k, check_every=1)
        lazy = kmedoids(tokens, k, check_every=8)
        assert torch.equal(eager[0], lazy[0]) and torch.equal(eager[1], lazy[1])


def test_pairwise_distance_matches_exact_differences():
    tokens = torch.randn(2, 20, 64) * 5
    exact = (tokens[:, :, None] - tokens[:, None, :]).norm(dim=-1)
    torch.testing.assert_close(pairwise_distance(tokens), exact, atol=1e-4, rtol=1e-5)
    assert torch.all(pairwise_distance(tokens).diagonal(dim1=1, dim2=2) == 0)
    unit = torch.nn.functional.normalize(tokens, dim=-1)
    torch.testing.assert_close(pairwise_distance(tokens, "cosine").diagonal(dim1=1, dim2=2), torch.zeros(2, 20))
    torch.testing.assert_close(pairwise_distance(tokens, "cosine")[0, 0, 1], 1 - unit[0, 0] @ unit[0, 1])
    with pytest.raises(ValueError, match="distance"):
        pairwise_distance(tokens, "manhattan")


def test_kmedoids_fp32_and_gradient_free_under_autocast():
    tokens = torch.randn(2, 20, 8, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assignment, medoids = kmedoids(tokens, 5)
    reference = kmedoids(tokens.detach().float(), 5)
    assert not assignment.requires_grad and not medoids.requires_grad
    assert torch.equal(medoids, reference[1]) and torch.equal(assignment, reference[0])


class LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("algo", ["kmedoids", "spectral"])
def test_no_batch_by_clusters_by_tokens_squared_tensor(algo):
    b, n, k = 2, 64, 16
    tokens = torch.randn(b, n, 8)
    with LargestTensor() as probe:
        if algo == "kmedoids":
            kmedoids(tokens, k)
        else:
            spectral_clustering(tokens, k, knn=8)
    assert probe.largest <= b * n * n < b * k * n * n


def test_kmedoids_rejects_bad_cluster_count():
    with pytest.raises(ValueError, match="num_clusters"):
        kmedoids(torch.randn(1, 5, 2), 6)
    with pytest.raises(ValueError, match="num_clusters"):
        spectral_clustering(torch.randn(1, 5, 2), 0)


def blobs(seed: int, num_blobs: int = 4, per_blob: int = 15, dim: int = 16):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_blobs, dim, generator=g) * 20
    points = centers.repeat_interleave(per_blob, 0) + 0.1 * torch.randn(num_blobs * per_blob, dim, generator=g)
    order = torch.randperm(num_blobs * per_blob, generator=g)
    return points[order], torch.arange(num_blobs).repeat_interleave(per_blob)[order]


def test_spectral_recovers_well_separated_blobs():
    data = [blobs(seed) for seed in range(3)]
    tokens = torch.stack([points for points, _ in data])
    assignment, medoids = spectral_clustering(tokens, 4, sigma=2.0, knn=8)
    for b, (_, truth) in enumerate(data):
        # Same partition up to relabelling: each blob maps to exactly one cluster and vice versa.
        pairs = set(zip(truth.tolist(), assignment[b].tolist()))
        assert len(pairs) == 4 and len({c for _, c in pairs}) == 4
        assert torch.all(medoids[b, 1:] > medoids[b, :-1])
        assert 0 <= medoids[b].min() and medoids[b].max() < tokens.shape[1]
        # The medoids select one original token per blob.
        assert sorted(truth[medoids[b]].tolist()) == [0, 1, 2, 3]


def test_spectral_is_deterministic_and_gradient_free():
    tokens = torch.randn(3, 40, 8, requires_grad=True)
    first = spectral_clustering(tokens, 6)
    second = spectral_clustering(tokens, 6)
    assert torch.equal(first[1], second[1]) and not first[1].requires_grad


def test_kmedoids_matches_brute_force_at_vit_b32_segment_size():
    """One ViT-B/32 segment (3 frames x 49 patches, K = 49), the last frame padding (a repeat)."""
    g = torch.Generator().manual_seed(3)
    frames = torch.randn(2, 3, 49, 64, generator=g) + torch.randn(2, 1, 49, 64, generator=g) * 3
    frames[1, 2] = frames[1, 1]
    tokens = frames.flatten(1, 2)
    assignment, medoids = kmedoids(tokens, 49)
    dist = pairwise_distance(tokens)
    for b in range(2):
        ref_assignment, ref_medoids = brute_force_kmedoids(tokens[b], dist[b], 49)
        assert medoids[b].tolist() == ref_medoids and assignment[b].tolist() == ref_assignment


# --- masked tokens (padded frames) -----------------------------------------------------------------------


@pytest.mark.parametrize("cluster", ["kmedoids", "spectral"])
def test_masked_tokens_change_nothing_whatever_they_hold(cluster):
    function = kmedoids if cluster == "kmedoids" else lambda *a, **kw: spectral_clustering(*a, knn=6, **kw)
    tokens, mask = masked_case()
    mask[2, :] = True  # (a row without real tokens has no invariance to check)
    reference = function(tokens, 5, mask=mask)
    for fill in [0.0, 1e3, float("nan"), float("inf")]:
        other = tokens.masked_fill(~mask[:, :, None], fill)
        assignment, medoids = function(other, 5, mask=mask)
        assert torch.equal(medoids, reference[1]) and torch.equal(assignment, reference[0])
    assignment, medoids = reference
    assert mask.gather(1, medoids).all(), "medoids are real tokens while enough real tokens exist"
    assert (assignment[~mask] == -1).all() and (assignment[mask] >= 0).all()


def test_masked_kmedoids_equals_kmedoids_on_the_real_tokens_alone():
    tokens, mask = masked_case(seed=1)
    for row in [0, 1]:
        real = mask[row].nonzero().flatten()
        _, alone = kmedoids(tokens[row : row + 1, real], 6)
        _, masked = kmedoids(tokens, 6, mask=mask)
        assert torch.equal(real[alone[0]], masked[row])


def test_fewer_real_tokens_than_centers_keeps_every_real_token_first():
    tokens, mask = masked_case(seed=2)
    assignment, medoids = kmedoids(tokens, 24, mask=mask)  # row 0 has 20 real tokens
    kept_real = mask[0, medoids[0]]
    assert kept_real.sum() == 20 and torch.equal(medoids[0][kept_real], torch.arange(20))
    assert torch.equal(assignment[0, :20], torch.arange(20))  # each real token is its own cluster
    assert (assignment[0, 20:] == -1).all()


def test_mask_of_the_wrong_shape_is_refused():
    tokens, mask = masked_case()
    with pytest.raises(ValueError, match="mask has shape"):
        kmedoids(tokens, 3, mask=mask.t())
