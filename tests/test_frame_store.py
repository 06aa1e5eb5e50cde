"""Frame stores (training.prepare_frames / training.frame_store): the frames a store row samples are the ones its
video samples, pixels stay within the JPEG bound, interrupted builds resume, bad videos are listed, and training
and evaluation read a store end to end."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import coded_frames, pixel_values_to_rgb, read_frame_codes, write_video

from modeling_centerclip import CenterCLIPProcessor
from training import prepare_frames as prepare_module
from training.cli_errors import run_cli
from training.corpora import load_corpus
from training.frame_store import SUMMARY_FILE, is_frame_store, load_frame_store, row_model_inputs
from training.prepare_frames import prepare_frames

# Candidate frames at 3 fps: clip30fps (60 frames @ 30 fps) -> 0, 10, ..., 50; clip10fps (40 @ 10) -> 0, 3, 6, 10,
# 13, 16, 20, 23, 26, 30, 33, 36; short (5 @ 10) -> 0, 3, fewer than T = 4, so padded.
CLIPS = {"clip30fps": (60, 30, "test"), "clip10fps": (40, 10, "test"), "short": (5, 10, "test"),
         "train_a": (30, 10, "train"), "train_b": (45, 15, "train")}  # fmt: skip


def textured_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """Smooth noise panning right: edges and colour, unlike the flat coded frames."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (height // 4 + 1, (width + num_frames) // 4 + 1, 3), dtype=np.uint8)
    texture = np.kron(coarse, np.ones((4, 4, 1), dtype=np.uint8))
    return np.stack([texture[:height, t : t + width] for t in range(num_frames)])


@pytest.fixture(scope="module")
def corpus_folder(tmp_path_factory):
    """A videofolder of coded clips (frame k encodes k), one textured clip and one corrupt file in train."""
    folder = tmp_path_factory.mktemp("coded_corpus")
    records = []
    for name, (frames, fps, split) in CLIPS.items():
        write_video(folder / f"{name}.mp4", coded_frames(frames, 48, 64), fps=fps)
        records.append({"file_name": f"{name}.mp4", "caption": f"the clip {name}", "split": split})
    write_video(folder / "textured.mp4", textured_frames(30, 48, 64), fps=10)
    records.append({"file_name": "textured.mp4", "caption": "a textured clip", "split": "test"})
    (folder / "broken.mp4").write_bytes(b"this is not a video" * 50)
    records.insert(1, {"file_name": "broken.mp4", "caption": "a broken clip", "split": "train"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


@pytest.fixture(scope="module")
def store(corpus_folder, tmp_path_factory):
    output = tmp_path_factory.mktemp("store") / "frames"
    prepare_frames(str(corpus_folder), str(output), fps=3, size=32, shard_size=2, show_progress=False)
    return output


@pytest.fixture(scope="module")
def sampler(tiny_tokenizer):
    """4 frames of 32 px at 3 fps: videos decode the frames the store keeps."""
    return CenterCLIPProcessor(tokenizer=tiny_tokenizer, num_frames=4, image_size=32, fps=3)


def rows_by_id(split):
    return {row["video_id"]: row for row in split}


def test_store_keeps_splits_timestamps_and_lists_the_corrupt_video(store, corpus_folder):
    assert is_frame_store(store)
    corpus = load_corpus(str(store))
    assert {name: sorted(split["video_id"]) for name, split in corpus.items()} == {
        "train": ["train_a", "train_b"], "test": ["clip10fps", "clip30fps", "short", "textured"]}
    row = rows_by_id(corpus["test"])["clip30fps"]
    assert row["caption"] == "the clip clip30fps" and row["video"] == str(corpus_folder / "clip30fps.mp4")
    np.testing.assert_allclose(row["timestamps"], [0, 1 / 3, 2 / 3, 1, 4 / 3, 5 / 3], atol=1e-3)
    assert row["duration"] == pytest.approx(2.0, abs=0.05)
    summary = json.loads((store / SUMMARY_FILE).read_text())
    assert summary["splits"] == {"train": {"videos": 2, "failed": 1}, "test": {"videos": 4, "failed": 0}}
    [failed] = summary["failed"]
    assert failed["video_id"] == "broken" and failed["video"] == str(corpus_folder / "broken.mp4")
    assert "corrupt, truncated or not a video" in failed["reason"]


def test_evaluation_takes_the_chunk_centers_the_video_gives(store, corpus_folder, sampler):
    split = rows_by_id(load_corpus(str(store))["test"])
    expected = {"clip30fps": ([0, 10, 30, 40], [True] * 4),  # chunks of [0,10,..,50]: {0} {10,20} {30} {40,50}
                "clip10fps": ([3, 13, 23, 33], [True] * 4),
                "short": ([0, 3, 3, 3], [True, True, False, False])}  # fmt: skip
    for video_id, (codes, mask) in expected.items():
        pixels, video_mask = row_model_inputs(sampler, split[video_id])
        assert read_frame_codes(pixel_values_to_rgb(pixels, sampler)).tolist() == codes, video_id
        assert video_mask.tolist() == mask
        from_video, video_mask_of_file = sampler.load_video(str(corpus_folder / f"{video_id}.mp4"))
        assert read_frame_codes(pixel_values_to_rgb(from_video, sampler)).tolist() == codes
        assert video_mask_of_file.tolist() == mask


def test_training_draws_every_frame_of_its_chunk_and_nothing_else(store, sampler):
    row = rows_by_id(load_corpus(str(store))["test"])["clip10fps"]
    chunks = [{0, 3, 6}, {10, 13, 16}, {20, 23, 26}, {30, 33, 36}]
    seen = [set() for _ in chunks]
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        pixels, mask = row_model_inputs(sampler, row, training=True, generator=generator)
        for position, code in enumerate(read_frame_codes(pixel_values_to_rgb(pixels, sampler))):
            seen[position].add(int(code))
        assert mask.all()
    assert seen == chunks


def test_store_pixels_stay_within_the_jpeg_bound_of_the_video(store, corpus_folder, sampler):
    """Stated bound at the default quality (0..255 levels): mean absolute error < 3, maximum < 32, on a textured
    clip of random colour blocks (the hardest case for JPEG) as on the flat coded one."""
    split = rows_by_id(load_corpus(str(store))["test"])
    for video_id in ("clip30fps", "textured"):
        from_store, _ = row_model_inputs(sampler, split[video_id])
        from_video, _ = sampler.load_video(str(corpus_folder / f"{video_id}.mp4"))
        error = np.abs(pixel_values_to_rgb(from_store, sampler) - pixel_values_to_rgb(from_video, sampler))
        print(video_id, error.mean(), error.max())
        assert error.mean() < 3 and error.max() < 32, (video_id, error.mean(), error.max())
    assert error.max() > 0  # the textured clip does lose something to JPEG: the comparison is not vacuous


def test_interrupted_build_resumes_without_redoing_finished_shards(corpus_folder, tmp_path, monkeypatch):
    output = tmp_path / "frames"
    calls = []
    decode = prepare_module.decode_task

    def interrupted_after_three(task):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(task[0])
        return decode(task)

    monkeypatch.setattr(prepare_module, "decode_task", interrupted_after_three)
    with pytest.raises(KeyboardInterrupt):
        prepare_frames(str(corpus_folder), str(output), fps=3, size=32, shard_size=2, show_progress=False)
    # test (the first split of the metadata) has shards of 2 + 2: the first is written, the second was being decoded.
    assert sorted(os.listdir(output / "data")) == ["test-00000-of-00002.arrow"]
    with pytest.raises(ValueError, match="incomplete"):
        load_corpus(str(output))

    calls.clear()
    monkeypatch.setattr(prepare_module, "decode_task", lambda task: calls.append(task[0]) or decode(task))
    prepare_frames(str(corpus_folder), str(output), fps=3, size=32, shard_size=2, show_progress=False)
    assert len(calls) == 2 + 3  # the unfinished test shard and the train split, not the finished shard
    assert sorted(os.listdir(output / "data")) == ["test-00000-of-00002.arrow", "test-00001-of-00002.arrow",
                                                   "train-00000-of-00002.arrow", "train-00001-of-00002.arrow"]
    resumed = load_corpus(str(output))
    assert {name: sorted(split["video_id"]) for name, split in resumed.items()} == {
        "train": ["train_a", "train_b"], "test": ["clip10fps", "clip30fps", "short", "textured"]}

    with pytest.raises(ValueError, match="other settings.*fps 3 there, 2 now"):
        prepare_frames(str(corpus_folder), str(output), fps=2, size=32, shard_size=2, show_progress=False)
    # The same source spelled relative to another working directory is the same store: nothing is decoded again.
    monkeypatch.chdir(corpus_folder.parent)
    calls.clear()
    prepare_frames(os.path.join(".", corpus_folder.name, ""), str(output), fps=3, size=32, shard_size=2,
                   show_progress=False)
    assert calls == []


def test_parallel_build_matches_the_serial_one(store, corpus_folder, tmp_path):
    output = tmp_path / "frames"
    summary = prepare_frames(str(corpus_folder), str(output), fps=3, size=32, shard_size=2, num_proc=2,
                             show_progress=False)
    assert summary["splits"]["test"] == {"videos": 4, "failed": 0}
    serial, parallel = load_frame_store(store), load_frame_store(output)
    for name in serial:
        assert serial[name]["video_id"] == parallel[name]["video_id"]
        assert serial[name]["frames"] == parallel[name]["frames"]


def test_datasets_load_the_store_and_its_failed_list_stays_out_of_the_rows(store, tmp_path):
    """`datasets.load_dataset(STORE_DIR)` -- the call any `datasets` user makes -- gives the splits and rows."""
    from datasets import load_dataset

    loaded = load_dataset(str(store), cache_dir=str(tmp_path / "cache"))
    ours = load_corpus(str(store))
    assert set(loaded) == {"train", "test"}
    for name in ours:
        assert loaded[name]["video_id"] == ours[name]["video_id"]
        assert loaded[name]["timestamps"] == ours[name]["timestamps"]
    first = loaded["test"][0]["frames"][0]
    assert first.size == (32, 32)  # a PIL image: it decodes like any image dataset
    assert (store / "failed" / "train-00000-of-00002.json").is_file()  # broken.mp4's shard lists it
    assert "broken" not in loaded["train"]["video_id"]


@pytest.fixture(scope="module")
def fake_hub(store, tmp_path_factory):
    """`--push_to_hub` into a local folder laid out as the dataset repository, and `snapshot_download` of
    "someone/frames" answering with that folder (no test reaches the Hub)."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    repo = tmp_path_factory.mktemp("hub") / "someone--frames"
    calls = []

    def upload_folder(self, *, folder_path, repo_id, repo_type, ignore_patterns=None, **kwargs):
        calls.append((repo_id, repo_type))
        names = [os.path.relpath(os.path.join(root, name), folder_path).replace(os.sep, "/")
                 for root, _, names in os.walk(folder_path) for name in names]  # fmt: skip
        for name in filter_repo_objects(names, ignore_patterns=ignore_patterns):  # as huggingface_hub filters
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(os.path.join(folder_path, name), repo / name)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", kw["repo_type"])))
        patch.setattr(HfApi, "upload_folder", upload_folder)
        (store / "data" / ".tmp-test-00000-of-00002.arrow-1").write_bytes(b"half a shard")  # a killed run's leftover
        prepare_module.push_store_to_hub(str(store), "someone/frames")
        (store / "data" / ".tmp-test-00000-of-00002.arrow-1").unlink()
    assert calls == [("create", "dataset"), ("someone/frames", "dataset")]

    def snapshot_download(repo_id, repo_type=None, **kwargs):
        if repo_id != "someone/frames" or repo_type != "dataset":
            raise FileNotFoundError(f"no dataset repository {repo_id}")
        return str(repo)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("huggingface_hub.snapshot_download", snapshot_download)
        yield repo


def test_push_to_hub_uploads_a_store_that_loads_back_by_its_id(store, fake_hub, tmp_path):
    from datasets import load_dataset

    local = sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file())
    assert sorted(p.relative_to(fake_hub).as_posix() for p in fake_hub.rglob("*") if p.is_file()) == local
    assert {"README.md", "frame_store.json", "summary.json"} <= set(local)
    pulled = load_dataset(str(fake_hub), cache_dir=str(tmp_path / "cache"))  # what load_dataset("someone/frames") reads
    by_id = load_corpus("someone/frames")
    for name, split in load_corpus(str(store)).items():
        assert pulled[name]["video_id"] == split["video_id"] == by_id[name]["video_id"]
        assert by_id[name]["frames"] == split["frames"]
    with pytest.raises(FileNotFoundError, match="someone/other.*could not be fetched"):
        load_corpus("someone/other")


def test_a_store_pulled_from_the_hub_trains_evaluates_and_indexes_like_the_local_one(store, fake_hub, tmp_path):
    """Same seed, same frames: training (weights), evaluation (saved embeddings) and indexing (stored rows) from
    "someone/frames" equal those from the local folder, to 1e-6 (the same computation on the same bytes)."""
    from accelerate.state import AcceleratorState, GradientState
    from safetensors.torch import load_file
    from test_training import write_config

    from search.indexer import index_library
    from search.storage import read_manifest, read_rows
    from training.evaluate import main as evaluate_main
    from training.train import main as train_main

    results = {}
    for name, corpus in (("local", str(store)), ("hub", "someone/frames")):
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        run = tmp_path / name
        run.mkdir()
        config = write_config(run, corpus, max_train_steps=2, per_device_train_batch_size=2, eval_split="none")
        train_main(["--config", config, "--output_dir", str(run / "out"), "--fps", "3"])
        final = run / "out" / "final"
        AcceleratorState._reset_state(True)
        evaluate_main(["--model", str(final), "--corpus", corpus, "--split", "test", "--output",
                       str(run / "eval.json"), "--save_embeddings", str(run / "embeddings")])
        index_library(corpus, str(final), run / "index", batch_size=2, num_workers=0, chunk_size=2,
                      show_progress=False)  # fmt: skip
        table, vectors = read_rows([run / "index" / p for p in read_manifest(run / "index")["parts"]])
        results[name] = (load_file(final / "model.safetensors"), load_file(run / "embeddings" / "embeddings.safetensors"),
                         dict(zip(table.column("video_id").to_pylist(), vectors)))  # fmt: skip
    (weights, embeddings, index), (hub_weights, hub_embeddings, hub_index) = results["local"], results["hub"]
    assert weights.keys() == hub_weights.keys()
    for key in weights:
        torch.testing.assert_close(hub_weights[key], weights[key], rtol=0, atol=1e-6)
    for key in ("text_embeds", "video_embeds"):
        torch.testing.assert_close(hub_embeddings[key], embeddings[key], rtol=0, atol=1e-6)
    assert sorted(hub_index) == sorted(index) == ["clip10fps", "clip30fps", "short", "textured", "train_a", "train_b"]
    for video_id, vector in index.items():
        np.testing.assert_allclose(hub_index[video_id], vector, rtol=0, atol=1e-6)


def test_a_store_at_another_fps_or_size_than_the_run_is_refused_naming_both(store, tmp_path, capsys):
    from accelerate.state import AcceleratorState, GradientState
    from test_training import write_config

    from training.train import main as train_main

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    config = write_config(tmp_path, str(store), max_train_steps=1, per_device_train_batch_size=2)
    with pytest.raises(ValueError, match=r"holds frames at 3 fps, the run .* samples at 1 fps: pass --fps 3"):
        train_main(["--config", config, "--output_dir", str(tmp_path / "run"), "--fps", "1", "--dry_run"])
    from training.frame_store import check_store_settings

    with pytest.raises(ValueError, match=r"holds frames of 32x32 px, the model m takes 224x224 px"):
        check_store_settings(str(store), 3.0, 224, "the model m")
    assert check_store_settings(str(store), 3.0, 32, "the model m")["fps"] == 3
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    plan = train_main(["--config", config, "--output_dir", str(tmp_path / "run"), "--fps", "3", "--dry_run"])
    assert plan["plan"]["fps"] == 3


def test_a_store_from_a_relative_source_indexes_from_any_working_directory(corpus_folder, tmp_path, monkeypatch):
    """Rows name their videos by absolute path: from another folder the rows are the same videos."""
    from search.library import list_library

    monkeypatch.chdir(corpus_folder.parent)
    prepare_frames(corpus_folder.name, str(tmp_path / "frames"), fps=3, size=32, shard_size=4, show_progress=False)
    here = list_library(str(tmp_path / "frames")).videos
    monkeypatch.chdir(tmp_path)
    there = list_library("frames").videos
    assert [video.state for video in here] == [video.state for video in there]
    assert all(os.path.isfile(video.path) for video in there) and len(there) == 6


@pytest.mark.parametrize("case", ["output_is_source", "plain_folder", "negative_fps", "corrupt_settings",
                                  "other_settings"])
def test_prepare_frames_refuses_bad_input_in_one_line(case, corpus_folder, tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "clip.mp4").write_bytes((corpus_folder / "short.mp4").read_bytes())
    output = tmp_path / "frames"
    args = {"output_is_source": [str(corpus_folder), "--output_dir", str(corpus_folder)],
            "plain_folder": [str(plain), "--output_dir", str(output)],
            "negative_fps": [str(corpus_folder), "--output_dir", str(output), "--fps", "-1"],
            "corrupt_settings": [str(corpus_folder), "--output_dir", str(output)],
            "other_settings": [str(corpus_folder), "--output_dir", str(output), "--size", "16"]}[case]  # fmt: skip
    named = {"output_is_source": "is the source folder", "plain_folder": "metadata", "negative_fps": "fps",
             "corrupt_settings": "frame_store.json: not valid JSON", "other_settings": "size 32 there, 16 now"}[case]
    if case == "corrupt_settings":
        output.mkdir()
        (output / "frame_store.json").write_text('{"version": 2, "settings"')
    if case == "other_settings":
        prepare_frames(str(corpus_folder), str(output), fps=3, size=32, shard_size=100, show_progress=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli("prepare_frames", prepare_module.main, args)
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(error.splitlines()) == 1 and "Traceback" not in error
    assert error.startswith("prepare_frames: error:") and named in error, error
    assert not (corpus_folder / "frame_store.json").exists()


def test_training_and_evaluation_read_the_store(store, corpus_folder, tmp_path, sampler):
    """Two training steps and an evaluation from the store; its video embeddings match the videos' up to JPEG."""
    from accelerate.state import AcceleratorState, GradientState
    from test_training import write_config

    from training.evaluate import encode_videos, group_captions
    from training.evaluate import main as evaluate_main
    from training.frame_store import videos_to_encode
    from training.train import main as train_main

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    config = write_config(tmp_path, str(store), max_train_steps=2, per_device_train_batch_size=2, eval_split="test")
    summary = train_main(["--config", config, "--output_dir", str(tmp_path / "run"), "--fps", "3"])
    assert summary["steps"] == 2
    final = tmp_path / "run" / "final"
    report = evaluate_main(["--model", str(final), "--corpus", str(store), "--split", "test",
                            "--output", str(tmp_path / "eval.json")])
    assert report["num_videos"] == 4 and 0 <= report["t2v"]["R@1"] <= 100

    from transformers import AutoModel, AutoProcessor

    model, processor = AutoModel.from_pretrained(final), AutoProcessor.from_pretrained(final)
    split = load_corpus(str(store))["test"]
    video_ids, _, _, _ = group_captions(split)
    paths = [str(corpus_folder / f"{video_id}.mp4") for video_id in video_ids]
    from_store, decoded, _ = encode_videos(model, processor, videos_to_encode(split, video_ids, paths), show_progress=False)
    from_videos, _, _ = encode_videos(model, processor, paths, show_progress=False)
    assert decoded.all()
    assert (from_store * from_videos).sum(-1).min() > 0.99  # cosine similarity of unit vectors


def test_data_benchmark_reads_the_frame_store_next_to_the_videos(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import benchmark_data

    results = benchmark_data.main(["--quick", "--workers", "0", "--store_num_proc", "1", "--video_dir",
                                   str(tmp_path / "videos"), "--output", str(tmp_path / "data.json")])
    store = results["frame_store"]
    assert [run["source"] for run in results["runs"]] == ["video"] and store["runs"][0]["clips_per_s"] > 0
    assert store["bytes_per_video"] > 0 and 0 < store["pixel_mean_abs_error"] < 3
    assert json.loads((tmp_path / "data.json").read_text())["frame_store"]["msrvtt_estimate_gb"] > 0
