"""Retrieval ranks and metrics on hand-made similarity matrices (training/evaluate.py, training/metrics/retrieval)."""

import evaluate
import numpy as np
import pytest
import torch

from training.evaluate import METRIC_PATH, best_positive_ranks, group_captions, ranking_report, retrieval_ranks


@pytest.fixture(scope="module")
def metric(monkeypatch_module):
    return evaluate.load(METRIC_PATH, keep_in_memory=True)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:  # the metric is a local folder: nothing may touch the network
        patch.setenv("HF_EVALUATE_OFFLINE", "1")
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield patch


def one_hot_embeddings(order: list[int], dim: int) -> torch.Tensor:
    return torch.eye(dim)[order]


def test_perfect_retrieval_ranks_everything_first(metric):
    t2v, v2t = retrieval_ranks(torch.eye(4), torch.eye(4), torch.arange(4))
    assert t2v.tolist() == [1, 1, 1, 1] and v2t.tolist() == [1, 1, 1, 1]
    assert metric.compute(ranks=t2v.tolist()) == {"R@1": 100.0, "R@5": 100.0, "R@10": 100.0, "MdR": 1.0, "MnR": 1.0}


def test_reversed_similarity_ranks_ground_truth_last(metric):
    # Score of text i for video j is -(|i - j|): the ground truth is best. Reversing the sign makes it worst
    # except that the farthest videos now win: text 0 -> video 11 first, its own video 0 last.
    n = 12
    scores = -(torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs().float()
    positives = torch.eye(n, dtype=torch.bool)
    assert best_positive_ranks(scores, positives).tolist() == [1] * n
    assert best_positive_ranks(-scores, positives).tolist() == [n] * n
    result = metric.compute(ranks=[n] * n)
    assert result == {"R@1": 0.0, "R@5": 0.0, "R@10": 0.0, "MdR": 12.0, "MnR": 12.0}


def test_ties_count_against_the_model():
    scores = torch.tensor([[0.5, 0.5, 0.5, 0.1], [0.2, 0.9, 0.2, 0.2], [0.3, 0.3, 0.7, 0.7]])
    positives = torch.eye(3, 4, dtype=torch.bool)
    # row 0: two other candidates tie with the ground truth -> 3; row 1: clear winner -> 1;
    # row 2: one candidate ties with the ground truth (0.7) -> 2.
    assert best_positive_ranks(scores, positives).tolist() == [3, 1, 2]
    # a model that scores everything equally is ranked last, never first
    assert best_positive_ranks(torch.zeros(5, 5), torch.eye(5, dtype=torch.bool)).tolist() == [5] * 5


def test_multi_caption_video_to_text_takes_the_best_caption(metric):
    # 3 videos; captions 0,1 -> video 0, caption 2 -> video 1, captions 3,4,5 -> video 2 (MSVD-style)
    text_to_video = torch.tensor([0, 0, 1, 2, 2, 2])
    video_embeds = torch.eye(3)
    text_embeds = torch.tensor(
        [
            [0.1, 0.9, 0.0],  # caption of video 0 that looks like video 1
            [0.8, 0.0, 0.2],  # caption of video 0, correct
            [0.0, 0.6, 0.4],  # caption of video 1, correct
            [0.0, 0.0, 0.3],  # captions of video 2: the middle one is its best
            [0.0, 0.0, 0.95],
            [0.7, 0.0, 0.5],  # looks more like video 0
        ]
    )
    t2v, v2t = retrieval_ranks(text_embeds, video_embeds, text_to_video)
    assert t2v.tolist() == [2, 1, 1, 1, 1, 2]
    # video 0 scores texts [.1 .8 0 0 0 .7]: best own caption .8 is first; video 1: [.9 0 .6 0 0 0] -> own .6
    # is 2nd; video 2: [0 .2 .4 .3 .95 .5] -> own best .95 is first.
    assert v2t.tolist() == [1, 2, 1]
    assert metric.compute(ranks=v2t.tolist())["MnR"] == pytest.approx(4 / 3)


def test_chunked_equals_unchunked():
    generator = torch.Generator().manual_seed(0)
    # small integers: every dot product is exact, so chunking cannot change a tie
    text_embeds = torch.randint(-3, 4, (37, 8), generator=generator).float()
    video_embeds = torch.randint(-3, 4, (23, 8), generator=generator).float()
    text_to_video = torch.cat([torch.arange(23), torch.randint(0, 23, (14,), generator=generator)])
    full = retrieval_ranks(text_embeds, video_embeds, text_to_video, chunk_size=10_000)
    for chunk_size in (1, 5, 16):
        chunked = retrieval_ranks(text_embeds, video_embeds, text_to_video, chunk_size=chunk_size)
        assert torch.equal(chunked[0], full[0]) and torch.equal(chunked[1], full[1])
    # and the chunked ranks match a brute-force full-matrix computation
    scores = text_embeds @ video_embeds.t()
    expected_t2v = [(scores[i] >= scores[i, text_to_video[i]]).sum().item() for i in range(37)]
    assert full[0].tolist() == expected_t2v


def test_recall_median_and_mean_rank(metric):
    ranks = [1, 2, 5, 6, 10, 11, 100]
    result = metric.compute(ranks=ranks)
    assert result["R@1"] == pytest.approx(100 / 7)
    assert result["R@5"] == pytest.approx(300 / 7)
    assert result["R@10"] == pytest.approx(500 / 7)
    assert result["MdR"] == 6.0
    assert result["MnR"] == pytest.approx(sum(ranks) / 7)
    assert metric.compute(ranks=[1, 4], recall_at=[2])["R@2"] == 50.0


def test_bad_inputs_are_named(metric):
    with pytest.raises(ValueError, match="ranks start at 1"):
        metric.compute(ranks=[0, 1])
    with pytest.raises(ValueError, match="no caption"):
        retrieval_ranks(torch.eye(2), torch.eye(3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="text_to_video"):
        retrieval_ranks(torch.eye(2), torch.eye(2), torch.tensor([0, 2]))


def test_group_captions_encodes_each_video_once():
    from datasets import Dataset

    split = Dataset.from_dict(
        {"video_id": ["a", "b", "a"], "video": ["a.mp4", "b.mp4", "a.mp4"], "caption": ["a one", "b one", "a two"]}
    )
    ids, paths, captions, text_to_video = group_captions(split)
    assert ids == ["a", "b"] and paths == ["a.mp4", "b.mp4"]
    assert captions == ["a one", "b one", "a two"] and text_to_video == [0, 1, 0]
    listed = Dataset.from_dict({"video_id": ["x", "y"], "video": ["x.mp4", "y.mp4"], "caption": [["x1", "x2"], ["y1"]]})
    assert group_captions(listed, max_videos=1) == (["x"], ["x.mp4"], ["x1", "x2"], [0, 0])


# --- CLIP4Clip's metric convention, against a transcription of its metrics.py (the published definition) ------


def clip4clip_compute_metrics(x: np.ndarray) -> dict:
    """CLIP4Clip's `compute_metrics` on a square similarity matrix whose diagonal holds the ground truths: every
    position of the sorted row equal to the ground truth's score is one entry of the rank list."""
    sx = np.sort(-x, axis=1)
    d = np.diag(-x)[:, np.newaxis]
    ind = np.where(sx - d == 0)[1]
    return {"R@1": float(np.sum(ind == 0)) * 100 / len(ind), "R@5": float(np.sum(ind < 5)) * 100 / len(ind),
            "R@10": float(np.sum(ind < 10)) * 100 / len(ind), "MdR": float(np.median(ind) + 1),
            "MnR": float(np.mean(ind) + 1)}  # fmt: skip


def clip4clip_text_to_video_metrics(sim_tensor: torch.Tensor) -> dict:
    """CLIP4Clip's `tensor_text_to_video_metrics` on `[videos, max captions, videos]` (padding -inf): double argsort
    (stable: tied videos in index order), invalid (padding) rows dropped, `torch.median` (the lower middle)."""
    stacked = sim_tensor.permute(1, 0, 2)
    first = torch.argsort(stacked, dim=-1, descending=True, stable=True)
    second = torch.argsort(first, dim=-1, descending=False)
    ranks = torch.flatten(torch.diagonal(second, dim1=1, dim2=2))
    original = torch.flatten(torch.diagonal(sim_tensor, dim1=0, dim2=2))
    valid = ranks[~torch.logical_or(torch.isinf(original), torch.isnan(original))]
    result = {f"R@{k}": float(torch.sum(valid < k) * 100 / len(valid)) for k in (1, 5, 10)}
    result.update(MdR=float(torch.median(valid + 1)), MnR=float(np.mean(valid.numpy() + 1)))
    return result


def clip4clip_video_to_text_sim(sim_tensor: torch.Tensor) -> torch.Tensor:
    """CLIP4Clip's `tensor_video_to_text_sim`: each video's best caption against every video, transposed."""
    values, _ = torch.max(sim_tensor, dim=1, keepdim=True)
    return torch.squeeze(values).T


def clip4clip_reference(text_embeds, video_embeds, text_to_video) -> dict:
    """What CLIP4Clip's evaluation prints for the same embeddings (its `eval_epoch`, both paths)."""
    sim = (text_embeds @ video_embeds.t()).numpy()
    num_videos = video_embeds.shape[0]
    if len(text_to_video) == num_videos:  # one caption per video: reorder so caption i is of video i
        order = torch.argsort(text_to_video)
        square = sim[order.numpy()]
        return {"t2v": clip4clip_compute_metrics(square), "v2t": clip4clip_compute_metrics(square.T)}
    groups = [sim[(text_to_video == v).numpy()] for v in range(num_videos)]
    longest = max(len(g) for g in groups)
    padded = np.full((num_videos, longest, num_videos), -np.inf, dtype=sim.dtype)
    for video, group in enumerate(groups):
        padded[video, : len(group)] = group
    sim_tensor = torch.from_numpy(padded)
    return {"t2v": clip4clip_text_to_video_metrics(sim_tensor),
            "v2t_clip4clip": clip4clip_compute_metrics(clip4clip_video_to_text_sim(sim_tensor).numpy())}  # fmt: skip


def tied_problem(num_videos: int, captions_per_video: list[int], seed: int, duplicate_captions: bool = False):
    """Embeddings of small integers (every dot product exact, so ties are real ties), ties guaranteed."""
    generator = torch.Generator().manual_seed(seed)
    text_to_video = torch.tensor([v for v, count in enumerate(captions_per_video) for _ in range(count)])
    text_to_video = text_to_video[torch.randperm(len(text_to_video), generator=generator)]
    videos = torch.randint(-1, 2, (num_videos, 5), generator=generator).float()
    texts = torch.randint(-1, 2, (len(text_to_video), 5), generator=generator).float()
    if duplicate_captions:  # identical sentences of different videos, as MSR-VTT 1k-A's four groups
        texts[1] = texts[0]
        texts[3] = texts[2]
    videos[1] = videos[0]  # two identical videos: text->video ties too
    return texts, videos, text_to_video


# (name, problem, chunk_size); each row is ranked with ranking_report(convention="clip4clip") and compared with
# the reference numbers for every metric
CLIP4CLIP_CASES = [
    ("one caption per video, ties", tied_problem(12, [1] * 12, seed=0), 1024),
    ("one caption per video, identical sentences", tied_problem(12, [1] * 12, seed=1, duplicate_captions=True), 5),
    ("one caption per video, every score equal", (torch.ones(6, 3), torch.ones(6, 3), torch.arange(6)), 4),
    ("several captions, even count (MSVD-like)", tied_problem(7, [2, 1, 3, 2, 4, 1, 3], seed=2), 1024),
    ("several captions, even count, chunked", tied_problem(7, [2, 1, 3, 2, 4, 1, 3], seed=3, duplicate_captions=True), 3),
    ("several captions, odd count", tied_problem(5, [2, 1, 3, 1, 2], seed=4), 1024),
]  # fmt: skip


@pytest.mark.parametrize("name, problem, chunk_size", CLIP4CLIP_CASES, ids=[case[0] for case in CLIP4CLIP_CASES])
def test_clip4clip_convention_reproduces_its_metrics(name, problem, chunk_size):
    texts, videos, text_to_video = problem
    report = ranking_report(texts, videos, text_to_video, chunk_size, convention="clip4clip")
    expected = clip4clip_reference(texts, videos, text_to_video)
    assert set(expected) < set(report) and report["metric_convention"] == "clip4clip"
    for key, values in expected.items():
        # abs 1e-5: the reference divides in float32 (`torch.sum(...) * 100 / len`), the metric module in float64
        assert report[key] == pytest.approx(values, abs=1e-5), (key, report[key], values)
    if len(text_to_video) > len(videos):
        assert "v2t" not in report and report["headline"] == {"t2v": "t2v", "v2t": "v2t_clip4clip"}


def test_the_conventions_differ_where_the_issue_says():
    # ties: strict counts them against the model, CLIP4Clip adds a rank per tied position
    # captions 0 and 1 are the same sentence (of videos 0 and 1); caption 1 scores 0 against every video
    texts, videos = torch.eye(3)[[0, 0, 2]], torch.eye(3)
    strict = ranking_report(texts, videos, torch.arange(3))
    clip4clip = ranking_report(texts, videos, torch.arange(3), convention="clip4clip")
    # video->text: strict ranks 2, 3, 1; CLIP4Clip's rows 1, 2 | 1, 2, 3 | 1
    assert strict["v2t"] == pytest.approx({"R@1": 100 / 3, "R@5": 100.0, "R@10": 100.0, "MdR": 2.0, "MnR": 2.0})
    assert clip4clip["v2t"] == pytest.approx({"R@1": 50.0, "R@5": 100.0, "R@10": 100.0, "MdR": 1.5, "MnR": 10 / 6})
    assert (strict["metric_convention"], clip4clip["metric_convention"]) == ("strict", "clip4clip")
    # an even caption count: multi-caption text->video MdR is the lower middle rank under clip4clip
    videos = torch.eye(3)
    text_to_video = torch.tensor([0, 1, 1, 2, 2, 2])  # ranks 1, 3, 1, 1, 3, 2 -> sorted 1 1 1 2 3 3
    texts = torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 0, 1], [0.9, 0.1, 0], [0.2, 0.5, 0.3]])
    strict = ranking_report(texts, videos, text_to_video)
    clip4clip = ranking_report(texts, videos, text_to_video, convention="clip4clip")
    assert (strict["t2v"]["MdR"], clip4clip["t2v"]["MdR"]) == (1.5, 1.0)


def test_metric_module_lower_median(metric):
    assert metric.compute(ranks=[1, 2, 3, 4])["MdR"] == 2.5
    assert metric.compute(ranks=[4, 2, 3, 1], lower_median=True)["MdR"] == 2.0
    assert metric.compute(ranks=[5, 1, 3], lower_median=True)["MdR"] == 3.0


# --- non-finite embeddings: an error naming them, never a score --------------------------------------------------


def _poisoned(where: str, value: float, rows):
    generator = torch.Generator().manual_seed(0)
    texts = torch.nn.functional.normalize(torch.randn(10, 4, generator=generator), dim=-1)
    videos = torch.nn.functional.normalize(torch.randn(8, 4, generator=generator), dim=-1)
    target = videos if where == "videos" else texts
    target[rows] = value
    return texts, videos


# (name, which embeddings, value, rows, expected message)
NON_FINITE_CASES = [
    ("one NaN video", "videos", float("nan"), [3], r"1 of 8 videos \('video3'\)"),
    ("all NaN videos", "videos", float("nan"), slice(None), r"8 of 8 videos \('video0', .* and 3 more\)"),
    ("one inf video", "videos", float("inf"), [7], r"1 of 8 videos \('video7'\)"),
    ("one -inf caption", "captions", float("-inf"), [0], r"1 of 10 captions \('caption 0'\)"),
    ("all NaN captions", "captions", float("nan"), slice(None), r"10 of 10 captions"),
    ("all inf captions", "captions", float("inf"), slice(None), r"10 of 10 captions"),
]  # fmt: skip


@pytest.mark.parametrize("convention", ["strict", "clip4clip"])
@pytest.mark.parametrize("name, where, value, rows, match", NON_FINITE_CASES, ids=[c[0] for c in NON_FINITE_CASES])
def test_non_finite_embeddings_are_an_error_naming_them(name, where, value, rows, match, convention):
    from training.evaluate import NonFiniteEmbeddingsError

    texts, videos = _poisoned(where, value, rows)
    text_to_video = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 0, 1])
    names = [f"video{i}" for i in range(8)]
    captions = [f"caption {i}" for i in range(10)]
    with pytest.raises(NonFiniteEmbeddingsError, match=match):
        ranking_report(texts, videos, text_to_video, convention=convention, video_names=names, captions=captions)
    with pytest.raises(NonFiniteEmbeddingsError, match=r"non-finite \(NaN or inf\)"):  # without names: indices
        ranking_report(texts, videos, text_to_video, post_process="dsl")


def test_overflowing_finite_embeddings_are_an_error():
    from training.evaluate import NonFiniteEmbeddingsError

    huge = torch.full((3, 2), 1e30)
    with pytest.raises(NonFiniteEmbeddingsError, match="L2-normalised"):
        ranking_report(huge, huge, torch.arange(3))
