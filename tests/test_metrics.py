"""Retrieval ranks and metrics on hand-made similarity matrices (training/evaluate.py, training/metrics/retrieval)."""

import evaluate
import pytest
import torch

from training.evaluate import METRIC_PATH, best_positive_ranks, group_captions, retrieval_ranks


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
