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
    assert sorted(os.listdir(output / "test")) == ["shard-00000-of-00002"] and not (output / "train").exists()
    with pytest.raises(ValueError, match="incomplete"):
        load_corpus(str(output))

    calls.clear()
    monkeypatch.setattr(prepare_module, "decode_task", lambda task: calls.append(task[0]) or decode(task))
    prepare_frames(str(corpus_folder), str(output), fps=3, size=32, shard_size=2, show_progress=False)
    assert len(calls) == 2 + 3  # the unfinished test shard and the train split, not the finished shard
    assert sorted(os.listdir(output / "test")) == ["shard-00000-of-00002", "shard-00001-of-00002"]
    resumed = load_corpus(str(output))
    assert {name: sorted(split["video_id"]) for name, split in resumed.items()} == {
        "train": ["train_a", "train_b"], "test": ["clip10fps", "clip30fps", "short", "textured"]}

    with pytest.raises(ValueError, match="other settings"):
        prepare_frames(str(corpus_folder), str(output), fps=2, size=32, shard_size=2, show_progress=False)


def test_parallel_build_matches_the_serial_one(store, corpus_folder, tmp_path):
    output = tmp_path / "frames"
    summary = prepare_frames(str(corpus_folder), str(output), fps=3, size=32, shard_size=2, num_proc=2,
                             show_progress=False)
    assert summary["splits"]["test"] == {"videos": 4, "failed": 0}
    serial, parallel = load_frame_store(store), load_frame_store(output)
    for name in serial:
        assert serial[name]["video_id"] == parallel[name]["video_id"]
        assert serial[name]["frames"] == parallel[name]["frames"]


def test_push_to_hub_publishes_decodable_images_and_the_summary(store, monkeypatch):
    from datasets import DatasetDict
    from huggingface_hub import HfApi

    pushed, uploaded = {}, []
    monkeypatch.setattr(DatasetDict, "push_to_hub", lambda self, repo_id, **kw: pushed.update(repo=repo_id, data=self))
    monkeypatch.setattr(HfApi, "upload_file", lambda self, **kw: uploaded.append(kw))
    prepare_module.push_store_to_hub(str(store), "someone/frames")
    assert pushed["repo"] == "someone/frames" and set(pushed["data"]) == {"train", "test"}
    first = pushed["data"]["test"][0]["frames"][0]
    assert first.size == (32, 32)  # a PIL image: the Hub copy decodes like any image dataset
    assert uploaded[0]["repo_type"] == "dataset" and uploaded[0]["path_in_repo"] == SUMMARY_FILE


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
