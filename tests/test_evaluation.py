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


# ------------------------------------------------------- numbers people can publish: bad weights, caches, CLI errors


def _poison(name: str, value: float):
    def apply(model):
        with torch.no_grad():
            dict(model.named_parameters())[name].view(-1)[0] = value
        return model

    return apply


def _nan_on_call(module_name: str, call: int):
    """A forward hook making the output of the `call`-th call of a module NaN (with batch size 1: one video)."""

    def apply(model):
        calls = []

        def hook(module, args, output):
            calls.append(1)
            return output * float("nan") if len(calls) == call + 1 else output

        getattr(model, module_name).register_forward_hook(hook)
        return model

    return apply


# (name, cluster_algo, what is done to the model, expected error): every path from a model to a report
NON_FINITE_MODELS = [
    ("NaN visual_projection weight, kmedoids", "kmedoids", _poison("visual_projection.weight", float("nan")),
     r"5 of 5 videos \('clip0', 'clip1', 'clip2', 'clip4', 'clip5'\)"),
    ("NaN visual_projection weight, cluster_algo none", "none", _poison("visual_projection.weight", float("nan")),
     r"5 of 5 videos"),
    ("NaN in the last vision layer (after the cluster layer)", "kmedoids",
     _poison("vision_model.encoder.layers.3.mlp.fc2.weight", float("nan")), r"5 of 5 videos"),
    ("inf text_projection weight", "kmedoids", _poison("text_projection.weight", float("inf")), r"7 of 7 captions"),
    ("one NaN video (the third encoded)", "kmedoids", _nan_on_call("visual_projection", 2), r"1 of 5 videos \('clip2'\)"),
    ("one NaN video, cluster_algo none", "none", _nan_on_call("visual_projection", 4), r"1 of 5 videos \('clip4'\)"),
]  # fmt: skip


@pytest.mark.parametrize("name, algo, poison, match", NON_FINITE_MODELS, ids=[case[0] for case in NON_FINITE_MODELS])
def test_evaluate_model_refuses_non_finite_embeddings(name, algo, poison, match, saved_model, test_rows, tmp_path):
    from transformers import AutoModel, AutoProcessor

    from training.evaluate import NonFiniteEmbeddingsError

    model = poison(AutoModel.from_pretrained(saved_model, cluster_algo=algo).eval())
    processor = AutoProcessor.from_pretrained(saved_model)
    with pytest.raises(NonFiniteEmbeddingsError, match=match):
        evaluate_model(model, processor, _split(test_rows), batch_size=1, show_progress=False,
                       save_embeddings_to=str(tmp_path / "emb"))  # fmt: skip
    assert not (tmp_path / "emb").exists()  # nothing saved from NaN


@pytest.fixture(scope="module")
def videofolder(tmp_path_factory, test_rows):
    """The decodable test videos as a `videofolder` corpus (split `test`)."""
    import shutil

    folder = tmp_path_factory.mktemp("corpus")
    with open(folder / "metadata.jsonl", "w", encoding="utf-8") as handle:
        for row in test_rows:
            if row["video_id"] != "clip3":
                shutil.copy(row["video"], folder / Path(row["video"]).name)
                handle.write(json.dumps({"file_name": Path(row["video"]).name, "caption": row["caption"],
                                         "split": "test"}) + "\n")  # fmt: skip
    return str(folder)


def one_line_error(capsys, *argv: str) -> str:
    """Run `evaluate.py` as the command does (`run_cli`); it must exit with status 2 and one `evaluate.py: error:`
    line, no traceback."""
    from training.cli_errors import run_cli
    from training.evaluate import main

    with pytest.raises(SystemExit) as exit_info:
        run_cli("evaluate.py", main, list(argv))
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and "Traceback" not in captured.err
    error = captured.err.strip().splitlines()[-1]
    assert error.startswith("evaluate.py: error: "), captured.err
    assert "R@1" not in captured.out
    return error


def test_evaluate_cli_on_an_all_nan_model_prints_no_score(saved_model, videofolder, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    nan_model = tmp_path / "nan_model"
    shutil.copytree(saved_model, nan_model)
    weights = load_file(nan_model / "model.safetensors")
    weights["visual_projection.weight"][0, 0] = float("nan")
    save_file(weights, nan_model / "model.safetensors", metadata={"format": "pt"})
    error = one_line_error(capsys, "--model", str(nan_model), "--corpus", videofolder, "--device", "cpu",
                           "--num_workers", "0")  # fmt: skip
    assert "non-finite (NaN or inf) embeddings of 5 of 5 videos" in error


def test_embedding_cache_carries_provenance_into_the_report(saved_model, videofolder, tmp_path, capsys):
    from search.models import fingerprint
    from training.evaluate import main

    report = main(["--model", saved_model, "--corpus", videofolder, "--device", "cpu", "--num_workers", "0",
                   "--save_embeddings", str(tmp_path / "emb")])  # fmt: skip
    from transformers import AutoProcessor

    expected = fingerprint(Path(saved_model).resolve(), {}, AutoProcessor.from_pretrained(saved_model))
    capsys.readouterr()
    again = main(["--from_embeddings", str(tmp_path / "emb")])
    for key in ("t2v", "v2t", "v2t_clip4clip", "headline", "num_videos", "num_captions"):
        assert again[key] == report[key], key
    provenance = again["provenance"]
    assert provenance["model_fingerprint"] == expected == report["provenance"]["model_fingerprint"]
    assert (provenance["model"], provenance["corpus"], provenance["split"]) == (saved_model, videofolder, "test")
    assert (provenance["num_videos"], provenance["num_captions"], provenance["dim"]) == (5, 7, 16)
    main(["--from_embeddings", str(tmp_path / "emb"), "--metric_convention", "clip4clip"])
    printed = capsys.readouterr().out
    # MSVD-like (several captions per video): the headline is CLIP4Clip's video->text protocol, by name
    assert printed.splitlines()[1].startswith("headline v2t (CLIP4Clip protocol): R@1")
    assert "(clip4clip metric convention)" in printed
    assert printed.splitlines()[-1] == f"embeddings of model {saved_model} (fingerprint {expected}), corpus {videofolder}, split test"


def _cache(folder: Path, num_videos: int, seed: int = 0, nan_video: int | None = None) -> Path:
    from training.embedding_cache import save_embeddings

    generator = torch.Generator().manual_seed(seed)
    videos = torch.nn.functional.normalize(torch.randn(num_videos, 8, generator=generator), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(num_videos, 8, generator=generator), dim=-1)
    if nan_video is not None:
        videos[nan_video] = float("nan")
    save_embeddings(str(folder), texts, videos, torch.arange(num_videos), [f"v{i}" for i in range(num_videos)],
                    [f"caption {i}" for i in range(num_videos)], [], {"model": "m", "model_fingerprint": "f" * 16,
                    "corpus": "c", "split": "test"})  # fmt: skip
    return folder


def _mixed(tmp, other_videos: int, other_seed: int) -> Path:
    import shutil

    _cache(tmp / "small", 10)
    shutil.copy(tmp / "small" / "ids.json", _cache(tmp / "big", other_videos, other_seed) / "ids.json")
    return tmp / "big"


def _rewrite(folder: Path, name: str, edit) -> Path:
    path = folder / name
    edit(path)
    return folder


def _save_tensors(tmp, tensors: dict) -> Path:
    from safetensors.torch import save_file

    folder = _cache(tmp / "emb", 4)
    save_file(tensors, folder / "embeddings.safetensors", metadata={"centerclip.provenance": "{}"})
    return folder


def _without_provenance(path: Path) -> None:
    ids = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in ids.items() if k not in ("provenance", "embeddings_sha256")}))


# (name, the cache folder it builds, expected one-line error)
BAD_CACHES = [
    ("ids.json of a 10-video run beside a 40-video run's embeddings", lambda tmp: _mixed(tmp, 40, 0),
     r"big/ids\.json lists 10 videos but .*big/embeddings\.safetensors holds 40 video embeddings: the two files come "
     r"from different runs"),
    ("ids.json of another run with the same counts", lambda tmp: _mixed(tmp, 10, 1),
     r"ids\.json was written with other embeddings than those in .*embeddings\.safetensors"),
    ("truncated embeddings.safetensors", lambda tmp: _rewrite(_cache(tmp / "emb", 4), "embeddings.safetensors",
     lambda p: p.write_bytes(p.read_bytes()[:100])), r"embeddings\.safetensors: not a readable safetensors file"),
    ("missing ids.json", lambda tmp: _rewrite(_cache(tmp / "emb", 4), "ids.json", Path.unlink),
     r"--from_embeddings .*emb: no ids\.json \(write it with --save_embeddings\)"),
    ("corrupt ids.json", lambda tmp: _rewrite(_cache(tmp / "emb", 4), "ids.json", lambda p: p.write_text("{oops")),
     r"emb/ids\.json: not valid JSON"),
    ("ids.json of an older version (no provenance)", lambda tmp: _rewrite(_cache(tmp / "emb", 4), "ids.json",
     _without_provenance), r"ids\.json: no provenance, embeddings_sha256"),
    ("wrong tensor names", lambda tmp: _save_tensors(tmp, {"text": torch.zeros(4, 8), "video": torch.zeros(4, 8)}),
     r"embeddings\.safetensors: no tensor text_embeds, video_embeds, text_to_video \(it holds \['text', 'video'\]"),
    ("mismatched widths", lambda tmp: _save_tensors(tmp, {"text_embeds": torch.zeros(4, 8), "video_embeds":
     torch.zeros(4, 6), "text_to_video": torch.arange(4)}), r"text_embeds \(4, 8\) and video_embeds \(4, 6\) must be"),
    ("a NaN video embedding in the cache", lambda tmp: _cache(tmp / "emb", 10, nan_video=3),
     r"--from_embeddings .*emb: non-finite \(NaN or inf\) embeddings of 1 of 10 videos \('v3'\)"),
    ("a folder that does not exist", lambda tmp: tmp / "nowhere", r"--from_embeddings .*nowhere: no such folder"),
]  # fmt: skip


@pytest.mark.parametrize("name, build, match", BAD_CACHES, ids=[case[0] for case in BAD_CACHES])
def test_bad_embedding_caches_are_one_line_errors_naming_the_file(name, build, match, tmp_path, capsys):
    import re

    folder = build(tmp_path)
    assert re.search(match, one_line_error(capsys, "--from_embeddings", str(folder))), name


def _frame_store(tmp) -> str:
    from training.frame_store import STORE_FILE

    (tmp / "store").mkdir()
    (tmp / "store" / STORE_FILE).write_text("{}")
    return str(tmp / "store")


def _plain_folder(tmp) -> str:
    (tmp / "plain").mkdir()
    (tmp / "plain" / "a.mp4").write_bytes(b"")
    return str(tmp / "plain")


# (name, arguments after --model, expected one-line error)
BAD_EVALUATE_ARGUMENTS = [
    ("--corpus missing", lambda tmp, corpus: [], r"--corpus is required with --model"),
    ("--corpus a plain folder", lambda tmp, corpus: ["--corpus", _plain_folder(tmp)],
     r"plain: no metadata\.jsonl or metadata\.csv"),
    ("--corpus msrvtt without its files", lambda tmp, corpus: ["--corpus", "msrvtt"],
     r"corpus msrvtt needs --video_dir"),
    ("--corpus unknown", lambda tmp, corpus: ["--corpus", "webvid"], r"unknown corpus 'webvid'"),
    ("a frame store given with --video_dir", lambda tmp, corpus: ["--corpus", _frame_store(tmp), "--video_dir", "v"],
     r"store is a frame store: corpus options \['video_dir'\] do not apply"),
    ("a videofolder given with --video_dir", lambda tmp, corpus: ["--corpus", corpus, "--video_dir", "v"],
     r"corpus .*: --video_dir do\(es\) not apply to it"),
    ("--split the corpus lacks", lambda tmp, corpus: ["--corpus", corpus, "--split", "nope"],
     r"--split 'nope': corpus .* has splits \['test'\]"),
    ("--num_workers negative", lambda tmp, corpus: ["--corpus", corpus, "--num_workers", "-1"],
     r"--num_workers -1: must be >= 0"),
]  # fmt: skip


@pytest.mark.parametrize("name, extra, match", BAD_EVALUATE_ARGUMENTS, ids=[c[0] for c in BAD_EVALUATE_ARGUMENTS])
def test_bad_evaluate_arguments_are_one_line_errors(name, extra, match, videofolder, tmp_path, capsys):
    import re

    error = one_line_error(capsys, "--model", "org/model", "--device", "cpu", *extra(tmp_path, videofolder))
    assert re.search(match, error), (name, error)


# (name, captions per video, the report key of the published video->text protocol, its label)
HEADLINE_CASES = [
    ("one caption per video (MSR-VTT, LSMDC, ActivityNet)", [1, 1, 1, 1], "v2t", "v2t"),
    ("several captions per video (MSVD)", [2, 1, 3, 2], "v2t_clip4clip", "v2t (CLIP4Clip protocol)"),
]


@pytest.mark.parametrize("name, counts, key, label", HEADLINE_CASES, ids=[case[0] for case in HEADLINE_CASES])
def test_training_log_and_model_card_use_the_published_protocol_by_name(name, counts, key, label, caplog):
    from accelerate import PartialState

    from modeling_centerclip import CenterCLIPConfig
    from training.evaluate import headline_results, ranking_report
    from training.model_card import render_model_card
    from training.train import _log_evaluation

    generator = torch.Generator().manual_seed(0)
    text_to_video = torch.tensor([v for v, count in enumerate(counts) for _ in range(count)])
    texts = torch.randn(len(text_to_video), 4, generator=generator)
    videos = torch.randn(len(counts), 4, generator=generator)
    report = ranking_report(texts, videos, text_to_video)
    if key == "v2t_clip4clip":
        assert report["v2t"] != report["v2t_clip4clip"]  # the all-captions protocol would report another number
    headline = headline_results(report)
    assert headline == {**{f"t2v {k}": v for k, v in report["t2v"].items()},
                        **{f"{label} {k}": v for k, v in report[key].items()}}  # fmt: skip

    class Recorder:
        logged = {}

        def log(self, values, step):
            self.logged.update(values)

    PartialState()
    with caplog.at_level(logging.INFO, logger="training.train"):
        _log_evaluation(Recorder(), [], 7, report)
    assert f"step 7: t2v R@1 {report['t2v']['R@1']:.1f}, {label} R@1 {report[key]['R@1']:.1f}" in caplog.text
    assert Recorder.logged[f"eval/{key}_R@1"] == report[key]["R@1"]
    card = render_model_card(CenterCLIPConfig(), results={"MSVD": headline})
    assert f"{label} R@1" in card and (key == "v2t" or "| v2t R@1" not in card)


def test_float16_overflow_is_an_error_not_a_score(saved_model, test_rows):
    """Under float16 autocast a projection whose outputs exceed 65504 overflows to inf: the evaluation stops."""
    from transformers import AutoModel, AutoProcessor

    from training.evaluate import NonFiniteEmbeddingsError

    model = AutoModel.from_pretrained(saved_model).eval()
    with torch.no_grad():
        model.visual_projection.weight.mul_(1e6)
    processor = AutoProcessor.from_pretrained(saved_model)
    evaluate_model(model, processor, _split(test_rows), show_progress=False)  # float32: large but finite
    with torch.autocast("cpu", dtype=torch.float16), pytest.raises(NonFiniteEmbeddingsError, match="5 of 5 videos"):
        evaluate_model(model, processor, _split(test_rows), show_progress=False)
