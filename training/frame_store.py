"""Frame stores: a corpus decoded once into JPEG frames, read by training, evaluation and indexing instead of
the videos. `python -m training.prepare_frames` writes them; `load_corpus(folder)` reads them.

A store folder holds

    frame_store.json                  settings (fps, size, quality, source) and the shards of each split
    <split>/shard-00000-of-00042/     `Dataset.save_to_disk` folders of up to `shard_size` videos, each written
                                      atomically, with the videos that failed in `failed.json`
    summary.json                      counts, failed videos and their reasons, disk size (written when complete)

and each row is one video: `video_id`, `caption` (a string or a list, as in the corpus), `frames` (JPEG images
at the store's fps, shorter side resized to `size` and center cropped), `timestamps` (seconds of each frame in
the source), `duration` (seconds of the source) and `video` (the source file, for messages).

A row samples exactly like its video: the processor takes `row["frames"]` as a list of encoded frames and
splits the stored frames into equal chunks (chunk centers at evaluation, a random frame per chunk in training,
the same padding and mask), and the stored frames are the ones the processor would sample from at that fps.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from datasets import Dataset, DatasetDict, Features, Image, List, Value, concatenate_datasets, load_from_disk

STORE_FILE = "frame_store.json"
SUMMARY_FILE = "summary.json"
FAILED_FILE = "failed.json"
SAVED_FILE = "state.json"  # written by save_to_disk: a shard with at least one video
FRAMES = "frames"


def store_features(caption_is_list: bool, decode: bool = True) -> Features:
    """Columns of a store split; `decode=False` leaves frames as `{"bytes", "path"}` for the processor."""
    return Features({
        "video_id": Value("string"),
        "caption": List(Value("string")) if caption_is_list else Value("string"),
        FRAMES: List(Image(decode=decode)),
        "timestamps": List(Value("float32")),
        "duration": Value("float32"),
        "video": Value("string"),
    })


def shard_path(split: str, index: int, count: int) -> str:
    """Path of a shard relative to the store folder."""
    return f"{split}/shard-{index:05d}-of-{count:05d}"


def is_frame_store(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(os.fspath(path), STORE_FILE))


def read_manifest(path: str | os.PathLike) -> dict:
    with open(os.path.join(os.fspath(path), STORE_FILE), encoding="utf-8") as handle:
        return json.load(handle)


def load_frame_store(path: str | os.PathLike, decode: bool = False, **unexpected) -> DatasetDict:
    """The splits of a complete store, memory-mapped (nothing is copied).

    `decode=False` (what training and evaluation read) leaves the frames encoded, so the processor decodes only
    the frames it samples; `decode=True` gives PIL images (for looking at a store, or publishing it).
    """
    path = os.fspath(path)
    if unexpected:
        raise ValueError(f"{path} is a frame store: corpus options {sorted(unexpected)} do not apply to it")
    manifest = read_manifest(path)
    splits = {}
    for split, layout in manifest["splits"].items():
        shards = [os.path.join(path, shard_path(split, i, layout["shards"])) for i in range(layout["shards"])]
        missing = [shard for shard in shards if not os.path.isdir(shard)]
        if missing:
            raise ValueError(
                f"frame store {path} is incomplete: {len(missing)} of {len(shards)} shards of split {split!r} are "
                f"missing (first: {missing[0]}); rerun training.prepare_frames with the same arguments to finish it"
            )
        features = store_features(layout["caption_is_list"], decode=decode)
        parts = [load_from_disk(shard) for shard in shards if os.path.isfile(os.path.join(shard, SAVED_FILE))]
        if not parts:  # every video of the split failed
            splits[split] = Dataset.from_dict({key: [] for key in features}, features=features, split=split)
            continue
        dataset = concatenate_datasets(parts)
        # Same Arrow data, other decoding: rebuilding the Dataset costs nothing, unlike cast(), which rewrites.
        info = dataset.info.copy()
        info.features = features
        splits[split] = Dataset(dataset.data, info=info, split=dataset.split)
    return DatasetDict(splits)


def video_input(row: dict):
    """What the processor takes for a corpus row: a store row's encoded frames, else the video file."""
    return row[FRAMES] if FRAMES in row else row["video"]


def row_model_inputs(processor, row: dict, *, training: bool = False, generator=None, do_normalize: bool = True):
    """A corpus or store row -> `(pixel_values [T, 3, S, S], video_mask [T])` through `processor`."""
    return processor.load_video(video_input(row), training=training, generator=generator, name=str(row["video"]),
                                do_normalize=do_normalize)


class StoredVideos(Sequence):
    """The encoded frames of chosen videos of a store split, read one row at a time (nothing held in memory)."""

    def __init__(self, split: Dataset, video_ids: list[str]):
        first_row: dict[str, int] = {}
        for row, video_id in enumerate(split["video_id"]):
            first_row.setdefault(video_id, row)
        self.split, self.rows = split, [first_row[video_id] for video_id in video_ids]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int | slice):
        if isinstance(index, slice):  # a process's block of the videos in multi-process evaluation
            block = StoredVideos.__new__(StoredVideos)
            block.split, block.rows = self.split, self.rows[index]
            return block
        return self.split[self.rows[index]][FRAMES]


def videos_to_encode(split, video_ids: list[str], paths: list[str]) -> Sequence:
    """The videos of `video_ids` as the processor takes them: store frames for a store split, else the paths."""
    return StoredVideos(split, video_ids) if FRAMES in split.column_names else paths
