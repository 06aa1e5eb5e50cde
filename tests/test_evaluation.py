"""Evaluation protocols with hand-computed ranks (duplicate captions, CLIP4Clip video->text, dual softmax),
bad test videos, saved embeddings, and two-process evaluation matching one-process evaluation (float tolerance
for the embeddings, equal ranks)."""

import json
import logging
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from training.evaluate import evaluate_model, rank_saved_embeddings, retrieval_ranks

# Scores of 3 videos (rows) against 5 captions (columns); captions 0, 1 describe video 0, 2, 3 video 1, 4 video 2.
SCORES = torch.tensor([
    [0.90, 0.10, 0.95, 0.92, 0.50],
    [0.20, 0.30, 0.80, 0.10, 0.40],
    [0.00, 0.60, 0.70, 0.30, 0.90],
])  # fmt: skip
CAPTION_VIDEO = torch.tensor([0, 0, 1, 1, 2])


def as_embeddings(scores: torch.Tensor):
    """Video i = the i-th unit vector and caption t = column t, so video_i . caption_t = scores[i, t]."""
    return scores.t().contiguous(), torch.eye(scores.shape[0])


def test_duplicate_captions_are_no_competitors():
    # video 0 = (1, 0), video 1 = (0, 1); captions 0 and 1 are the same sentence about video 0
    videos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[0.6, 0.8], [0.6, 0.8], [0.0, 1.0]])
    t2v, v2t = retrieval_ranks(texts, videos, torch.tensor([0, 0, 1]))
    assert t2v.tolist() == [2, 2, 1]  # each duplicate scores video 1 (0.8) above video 0 (0.6)
    assert v2t.tolist() == [1, 1]  # video 0: its two tied captions come first, neither pushes the other down
    # ...but a tie with another video's caption still counts against the model
    t2v, v2t = retrieval_ranks(torch.cat([texts, texts[:1]]), videos, torch.tensor([0, 0, 1, 1]))
    assert v2t.tolist() == [2, 1] and t2v.tolist() == [2, 2, 1, 1]


def test_clip4clip_video_to_text_protocol_by_hand():
    texts, videos = as_embeddings(SCORES)
    t2v, all_captions = retrieval_ranks(texts, videos, CAPTION_VIDEO, chunk_size=2)
    _, clip4clip = retrieval_ranks(texts, videos, CAPTION_VIDEO, chunk_size=2, v2t_protocol="clip4clip")
    assert t2v.tolist() == [1, 3, 2, 3, 1]
    # video 0's best caption scores 0.9; captions 2 (0.95) and 3 (0.92) of video 1 beat it: rank 3 ...
    assert all_captions.tolist() == [3, 1, 1]
    # ... but under CLIP4Clip's protocol video 1 competes once, with its best caption (0.95): rank 2
    assert clip4clip.tolist() == [2, 1, 1]


def test_dual_softmax_by_hand_and_reported_beside_plain_numbers():
    # Video 1 is a "hub" that both captions like; caption 1 likes it more, so DSL takes it from caption 0.
    texts, videos = torch.tensor([[0.5, 0.6], [0.1, 0.7]]), torch.eye(2)
    t2v, v2t = retrieval_ranks(texts, videos, torch.tensor([0, 1]))
    assert t2v.tolist() == [2, 1] and v2t.tolist() == [1, 1]
    t2v, v2t = retrieval_ranks(texts, videos, torch.tensor([0, 1]), post_process="dsl", chunk_size=1)
    assert t2v.tolist() == [1, 1] and v2t.tolist() == [1, 1]
    # chunked DSL equals the direct formula on a random problem
    generator = torch.Generator().manual_seed(0)
    texts = torch.nn.functional.normalize(torch.randn(9, 4, generator=generator), dim=-1)
    videos = torch.nn.functional.normalize(torch.randn(5, 4, generator=generator), dim=-1)
    targets = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3])
    t2v, _ = retrieval_ranks(texts, videos, targets, chunk_size=2, post_process="dsl", dsl_temperature=10.0)
    scores = texts @ videos.t()
    rescored = scores * torch.softmax(10 * scores, dim=0)  # softmax over the captions, for each video
    expected = 1 + (rescored > rescored[torch.arange(9), targets][:, None]).sum(dim=1)
    assert expected.tolist() != (1 + (scores > scores[torch.arange(9), targets][:, None]).sum(dim=1)).tolist()
    assert t2v.tolist() == expected.tolist()


# ------------------------------------------------------------------------------ evaluation of a saved model


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tiny_tokenizer):
    from modeling_centerclip import CenterCLIPConfig, CenterCLIPModel, CenterCLIPProcessor
    from tiny_models import CLUSTER, TEXT, VISION

    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    text = {**TEXT, "vocab_size": len(tiny_tokenizer), "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    CenterCLIPModel(CenterCLIPConfig(text_config=text, vision_config=dict(VISION), projection_dim=16, **CLUSTER)).save_pretrained(folder)
    CenterCLIPProcessor(tiny_tokenizer, num_frames=4, image_size=32, max_length=16).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def test_rows(tmp_path_factory, make_video):
    """6 videos (the fourth is not a video), some with several captions."""
    folder = tmp_path_factory.mktemp("videos")
    rows = []
    for index in range(6):
        path = folder / f"clip{index}.mp4"
        if index == 3:
            path.write_bytes(b"not a video")
        else:
            make_video(path, 6 + index, size=32)
        captions = [f"a red {index} moves left", f"a blue square {index}"][: 1 + index % 2]
        rows.append({"video_id": f"clip{index}", "video": str(path), "caption": captions})
    return rows


def _split(rows):
    from datasets import Dataset

    return Dataset.from_list(rows)


def _load(folder):
    from transformers import AutoModel, AutoProcessor

    import modeling_centerclip  # noqa: F401

    return AutoModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def test_bad_video_is_left_out_with_its_captions_and_named(saved_model, test_rows, tmp_path, caplog):
    model, processor = _load(saved_model)
    with caplog.at_level(logging.WARNING, logger="training.evaluate"):
        report = evaluate_model(model, processor, _split(test_rows), batch_size=2, show_progress=False,
                                save_embeddings_to=str(tmp_path / "emb"), post_process="dsl")  # fmt: skip
    assert report["left_out"] == [test_rows[3]["video"]]
    assert report["num_videos"] == 5 and report["num_captions"] == 7  # 9 captions, 2 of them of the bad video
    assert f"1 of 6 videos could not be decoded and are left out with their 2 captions: {test_rows[3]['video']}" in caplog.text
    assert set(report) >= {"t2v", "v2t", "v2t_clip4clip", "dsl", "protocols"} and "v2t_clip4clip" in report["dsl"]
    assert "CLIP4Clip" in report["protocols"]["v2t_clip4clip"]
    # the ranking reruns from the saved embeddings without the model
    again = rank_saved_embeddings(str(tmp_path / "emb"), post_process="dsl")
    for key in ("t2v", "v2t", "v2t_clip4clip", "dsl", "num_videos", "num_captions", "left_out"):
        assert again[key] == report[key], key
    ids = json.loads((tmp_path / "emb" / "ids.json").read_text())
    assert ids["video_ids"] == ["clip0", "clip1", "clip2", "clip4", "clip5"]


def test_evaluate_cli_reruns_from_saved_embeddings(saved_model, test_rows, tmp_path, capsys):
    from training.evaluate import main

    model, processor = _load(saved_model)
    evaluate_model(model, processor, _split(test_rows[:3]), show_progress=False, save_embeddings_to=str(tmp_path / "emb"))
    report = main(["--from_embeddings", str(tmp_path / "emb"), "--post_process", "dsl", "--output", str(tmp_path / "r.json")])
    printed = capsys.readouterr().out
    assert "v2t_clip4clip R@1" in printed and "dsl t2v R@1" in printed
    assert json.loads((tmp_path / "r.json").read_text())["dsl"] == report["dsl"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _eval_worker(rank: int, world_size: int, port: int, model_dir: str, rows: list, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size), RANK=str(rank),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model, processor = _load(model_dir)
    report = evaluate_model(model, processor, _split(rows), batch_size=2, show_progress=False, accelerator=accelerator,
                            save_embeddings_to=os.path.join(out_dir, "emb"))  # fmt: skip
    with open(os.path.join(out_dir, f"report{rank}.json"), "w") as handle:
        json.dump({k: report[k] for k in ("t2v", "v2t", "v2t_clip4clip", "left_out", "num_videos")}, handle)
    accelerator.wait_for_everyone()
    accelerator.end_training()


# Two 1-thread processes and this (multi-thread) process run different kernels and summation orders, so their
# embeddings agree to float32 rounding, not bit for bit; ids and order are exact by construction.
EMBEDDING_TOLERANCE = dict(rtol=1e-4, atol=1e-5)


def _smallest_gap(scores: torch.Tensor) -> float:
    """The smallest difference between two scores that compete in a ranking: in a row (t2v) or a column (v2t)."""
    gaps = [(m[:, :, None] - m[:, None, :]).abs().masked_fill(torch.eye(m.shape[1], dtype=torch.bool), float("inf"))
            for m in (scores, scores.t())]  # fmt: skip
    return min(gap.min().item() for gap in gaps)


@pytest.mark.timeout(240)
def test_two_process_evaluation_matches_one_process_within_float_tolerance(saved_model, test_rows, tmp_path):
    from safetensors.torch import load_file

    model, processor = _load(saved_model)
    single = evaluate_model(model, processor, _split(test_rows), batch_size=2, show_progress=False,
                            save_embeddings_to=str(tmp_path / "single"))  # fmt: skip
    mp.start_processes(_eval_worker, args=(2, _free_port(), saved_model, test_rows, str(tmp_path)), nprocs=2,
                       join=True, start_method="spawn")  # fmt: skip
    one, two = load_file(tmp_path / "single" / "embeddings.safetensors"), load_file(tmp_path / "emb" / "embeddings.safetensors")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], **EMBEDDING_TOLERANCE, msg=lambda m: f"{name}: {m}")
    # The ranks are equal when no two competing scores are closer than the scores moved; this data has no such
    # near-tie (checked, so a fixture change cannot make the comparison flaky), so the reports must be equal.
    scores = {k: e["text_embeds"].float() @ e["video_embeds"].float().t() for k, e in (("one", one), ("two", two))}
    moved = (scores["one"] - scores["two"]).abs().max().item()
    gap = _smallest_gap(scores["one"])
    assert gap > 2 * moved, f"near-tied scores in the test data (gap {gap:.2e}, moved {moved:.2e}): ranks may differ"
    for rank in range(2):
        report = json.loads((tmp_path / f"report{rank}.json").read_text())
        for key in report:
            assert report[key] == single[key], (rank, key)
    assert Path(tmp_path / "emb" / "ids.json").read_text() == Path(tmp_path / "single" / "ids.json").read_text()
