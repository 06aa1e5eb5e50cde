"""Bad videos: the processor raises a clear error naming the file; the training data path skips and counts them."""

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_audio
from datasets import Dataset
from torch.utils.data import DataLoader

from modeling_centerclip.processing_centerclip import VideoDecodeError
from training.data import SkipCounter, SkippedVideo, VideoTextDataset, collate_video_text


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory, make_video):
    """One file per kind of bad input, plus a good clip to cut from."""
    folder = tmp_path_factory.mktemp("bad")
    good = Path(make_video(folder / "good.mp4", 12, size=32))
    faststart = Path(make_video(folder / "faststart.mp4", 40, size=32, faststart=True))  # index first, data after
    data = good.read_bytes()
    rng = np.random.default_rng(0)
    files = {
        "corrupt": (folder / "corrupt.mp4", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()),
        "empty": (folder / "empty.mp4", b""),
        "truncated": (folder / "truncated.mp4", data[: len(data) // 2]),
        "truncated_data": (folder / "truncated_data.mp4", faststart.read_bytes()[: faststart.stat().st_size * 2 // 3]),
        "not_a_video": (folder / "notes.mp4", b"these are meeting notes, not a video\n" * 20),
        "a_jpeg_header": (folder / "picture.avi", b"\xff\xd8\xff\xe0" + bytes(200)),
    }
    paths = {kind: path for kind, (path, content) in files.items()}
    for path, content in files.values():
        path.write_bytes(content)
    paths["zero_frames"] = Path(make_video(folder / "zero_frames.mp4", 0, size=32))  # no video track left
    paths["zero_frames_avi"] = Path(make_video(folder / "zero_frames.avi", 0, size=32, codec="mpeg4"))  # empty track
    assert paths["zero_frames"].stat().st_size > 0 and paths["zero_frames_avi"].stat().st_size > 0
    paths["audio_only"] = write_audio(folder / "audio_only.mp4")
    paths["missing"] = folder / "does_not_exist.mp4"
    paths["directory"] = folder
    return {"good": good, **paths}


BAD_KINDS = ["corrupt", "empty", "truncated", "truncated_data", "not_a_video", "a_jpeg_header", "zero_frames",
             "zero_frames_avi", "audio_only", "missing", "directory"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_processor_names_the_bad_file(processor, bad_videos, kind):
    path = str(bad_videos[kind])
    with pytest.raises(ValueError) as caught:  # VideoDecodeError is a ValueError
        processor(text=["a caption"], videos=[str(bad_videos["good"]), path])
    assert isinstance(caught.value, VideoDecodeError)
    assert path in str(caught.value) and caught.value.source == path
    assert caught.value.reason


def test_unreadable_paths_are_reported(processor, bad_videos, tmp_path):
    dangling = tmp_path / "dangling.mp4"
    dangling.symlink_to(tmp_path / "gone.mp4")
    under_a_file = bad_videos["good"] / "clip.mp4"  # a path whose "folder" is a file
    unreadable = [(dangling, "no such file"), (under_a_file, "no such file")]
    locked = tmp_path / "locked.mp4"
    locked.write_bytes(bad_videos["good"].read_bytes())
    locked.chmod(0)
    if not os.access(locked, os.R_OK):  # permissions only bite when the tests do not run as root
        unreadable.append((locked, "not readable"))
    for path, reason in unreadable:
        with pytest.raises(VideoDecodeError, match=reason) as caught:
            processor(videos=[str(path)])
        assert str(path) in str(caught.value)
    locked.chmod(0o644)


def test_bad_frame_arrays_name_their_position(processor):
    good = np.zeros((3, 16, 16, 3), np.uint8)
    cases = [np.zeros((3, 16, 16, 3), np.float32), np.zeros((16, 16, 3), np.uint8), np.zeros((0, 16, 16, 3), np.uint8),
             np.zeros((3, 3, 16, 16), np.uint8)]
    for array in cases:
        with pytest.raises(VideoDecodeError, match=r"videos\[1\]"):
            processor(videos=[good, array])
    with pytest.raises(VideoDecodeError, match=r"videos\[0\].*int"):
        processor(videos=[42])


@pytest.fixture
def mixed_split(bad_videos):
    """8 rows: good videos at even positions, every kind of bad one in between."""
    good = str(bad_videos["good"])
    bad = [str(bad_videos[k]) for k in ("corrupt", "empty", "truncated", "zero_frames")]
    videos = [good, bad[0], good, bad[1], good, bad[2], good, bad[3]]
    return Dataset.from_dict({"video_id": [f"v{i}" for i in range(8)], "video": videos,
                              "caption": [["a red 3", "a blue 4"] if i % 4 == 0 else [f"clip {i}"] for i in range(8)]})


def test_training_data_path_skips_counts_and_logs_bad_videos(processor, mixed_split, caplog):
    dataset = VideoTextDataset(mixed_split, processor, training=True)
    with caplog.at_level(logging.WARNING, logger="training.data"):
        items = [dataset[i] for i in range(len(dataset))]
        batch = collate_video_text(items)
    assert dataset.num_skipped == 4
    assert [type(item) for item in items] == [dict, SkippedVideo] * 4
    assert batch["pixel_values"].shape == (4, 6, 3, 32, 32) and batch["input_ids"].shape == (4, 32)
    assert batch["video_mask"].shape == (4, 6) and batch["index"].tolist() == [0, 2, 4, 6]
    assert batch["caption"][0] in ("a red 3", "a blue 4") and batch["caption"][1] == "clip 2"
    assert [s.video for s in batch["skipped"]] == mixed_split["video"][1::2]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for path in mixed_split["video"][1::2]:
        assert f"skipping video {path}" in logged
    assert collate_video_text([items[1], items[3]]) is None  # nothing left: no batch


def test_bad_videos_are_skipped_inside_dataloader_workers(processor, mixed_split):
    dataset = VideoTextDataset(mixed_split, processor, training=True, do_normalize=False)  # as training loads
    loader = DataLoader(dataset, batch_size=4, num_workers=1, collate_fn=collate_video_text)
    counter, sizes = SkipCounter(), []
    for batch in loader:  # the dataset, processor and tokenizer pickle into the worker
        counter.update(batch)
        sizes.append(batch["pixel_values"].shape[0])
        assert batch["pixel_values"].dtype == torch.uint8  # normalised on the device, after the transfer
    assert sizes == [2, 2] and counter.count == 4
    assert sorted(counter.videos) == sorted(mixed_split["video"][1::2])


def test_eval_mode_is_deterministic_and_takes_the_first_caption(processor, mixed_split):
    dataset = VideoTextDataset(mixed_split, processor, training=False)
    first, again = dataset[0], dataset[0]
    assert first["caption"] == "a red 3"
    assert torch.equal(first["pixel_values"], again["pixel_values"])
    with pytest.raises(ValueError, match="caption"):
        VideoTextDataset(mixed_split.remove_columns("caption"), processor)
