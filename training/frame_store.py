"""Frame stores: a corpus decoded once into JPEG frames, read by training, evaluation and indexing instead of
the videos. `python -m training.prepare_frames` writes them; `load_corpus(folder or Hub id)` reads them.

A store folder is a `datasets` dataset in the Hub's layout, so `datasets.load_dataset(folder)` loads it with its
splits, and the same files pushed to a dataset repository load with `load_dataset("org/name")`:

    README.md                                  dataset card; its YAML `configs:` maps each split to its shards
    data/<split>-00000-of-00042.arrow          Arrow shards of up to `shard_size` videos, each written to a hidden
                                               temporary file and renamed (a shard is there whole or not at all)
    frame_store.json                           settings (fps, size, quality, source) and the shards of each split
    failed/<split>-00000-of-00042.json         the videos of that shard that failed to decode, with their reason
    summary.json                               counts, failed videos, disk size (written when complete)

`datasets` reads only `data/` (the card's `configs:` and its own `data/<split>-NNNNN-of-NNNNN.*` pattern say so),
so the sidecar JSON files travel with the store without getting in the loaders' way. Here the shards are
memory-mapped as they are (`Dataset.from_file`: nothing is copied or converted, unlike `load_dataset`).

Each row is one video: `video_id`, `caption` (a string or a list, as in the corpus), `frames` (JPEG images at the
store's fps, shorter side resized to `size` and center cropped), `timestamps` (seconds of each frame in the
source), `duration` (seconds of the source) and `video` (the absolute path of the source file, its identity).

A row samples exactly like its video: the processor takes `row["frames"]` as a list of encoded frames and
splits the stored frames into equal chunks (chunk centers at evaluation, a random frame per chunk in training,
the same padding and mask), and the stored frames are the ones the processor would sample from at that fps.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence

from datasets import Dataset, DatasetDict, Features, Image, List, Value, concatenate_datasets

STORE_FILE = "frame_store.json"
SUMMARY_FILE = "summary.json"
CARD_FILE = "README.md"
STORE_VERSION = 2
FRAMES = "frames"
# A Hub repository id (`org/name`): what `--corpus` takes besides corpus names and folders.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


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
    """Path of a shard relative to the store folder (the Hub's `data/<split>-NNNNN-of-NNNNN` layout)."""
    return f"data/{split}-{index:05d}-of-{count:05d}.arrow"


def failed_path(split: str, index: int, count: int) -> str:
    """Path of a shard's list of failed videos, relative to the store folder (outside `data/`)."""
    return f"failed/{split}-{index:05d}-of-{count:05d}.json"


def is_frame_store(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(os.fspath(path), STORE_FILE))


def read_manifest(path: str | os.PathLike) -> dict:
    """The store's `frame_store.json`; a file that is not one raises a ValueError naming it."""
    file = os.path.join(os.fspath(path), STORE_FILE)
    try:
        with open(file, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{file}: not valid JSON ({error}); delete the store folder and prepare it again") from None
    if not isinstance(manifest, dict) or not {"settings", "splits"} <= manifest.keys():
        raise ValueError(f"{file}: not a frame store manifest (no 'settings' and 'splits'); delete the store folder "
                         "and prepare it again")  # fmt: skip
    if manifest.get("version") != STORE_VERSION:
        raise ValueError(f"{file}: a frame store of format version {manifest.get('version')}, this version reads "
                         f"{STORE_VERSION}; prepare it again (python -m training.prepare_frames)")  # fmt: skip
    return manifest


def resolve_store(name: str | os.PathLike) -> str | None:
    """The local folder of a frame store given as a folder or a Hub dataset id (`org/name`, downloaded once into
    the Hub cache with its settings); None when `name` is neither a store folder nor a Hub id."""
    name = os.fspath(name)
    if is_frame_store(name):
        return name
    if os.path.exists(name) or not HUB_ID.fullmatch(name):
        return None
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(name, repo_type="dataset")
    except Exception as error:  # offline, no such repository, no access: one line, not a traceback
        raise FileNotFoundError(f"{name!r} is no local folder, and the Hub dataset {name} could not be fetched "
                                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None  # fmt: skip
    if not is_frame_store(folder):
        raise ValueError(f"Hub dataset {name} is not a frame store (no {STORE_FILE}; push stores with "
                         "python -m training.prepare_frames --push_to_hub)")  # fmt: skip
    return folder


def load_frame_store(path: str | os.PathLike, decode: bool = False, **unexpected) -> DatasetDict:
    """The splits of a complete store (a folder or a Hub dataset id), memory-mapped (nothing is copied).

    `decode=False` (what training and evaluation read) leaves the frames encoded, so the processor decodes only
    the frames it samples; `decode=True` gives PIL images (for looking at a store).
    """
    name = os.fspath(path)
    if unexpected:
        raise ValueError(f"{name} is a frame store: corpus options {sorted(unexpected)} do not apply to it")
    path = resolve_store(name)
    if path is None:
        raise FileNotFoundError(f"{name}: not a frame store (no {STORE_FILE})")
    manifest = read_manifest(path)
    splits = {}
    for split, layout in manifest["splits"].items():
        shards = [os.path.join(path, shard_path(split, i, layout["shards"])) for i in range(layout["shards"])]
        missing = [shard for shard in shards if not os.path.isfile(shard)]
        if missing:
            raise ValueError(
                f"frame store {name} is incomplete: {len(missing)} of {len(shards)} shards of split {split!r} are "
                f"missing (first: {missing[0]}); rerun training.prepare_frames with the same arguments to finish it"
            )
        features = store_features(layout["caption_is_list"], decode=decode)
        parts = [part for part in map(Dataset.from_file, shards) if len(part)]  # memory-mapped
        if not parts:  # every video of the split failed
            splits[split] = Dataset.from_dict({key: [] for key in features}, features=features, split=split)
            continue
        dataset = concatenate_datasets(parts)
        # Same Arrow data, other decoding: rebuilding the Dataset costs nothing, unlike cast(), which rewrites.
        info = dataset.info.copy()
        info.features = features
        splits[split] = Dataset(dataset.data, info=info, split=split)
    return DatasetDict(splits)


def store_settings(name: str | os.PathLike) -> dict | None:
    """The settings (`fps`, `size`, `quality`, `source`, ...) of a frame store folder or Hub id; None otherwise."""
    path = resolve_store(name)
    return None if path is None else read_manifest(path)["settings"]


def check_store_settings(name: str | os.PathLike, fps: float | None, image_size: int, what: str) -> dict | None:
    """Refuse a store whose frames are not the ones `what` (the run, the model) samples: another fps than
    `fps`, or another frame size than `image_size` (a store kept at its decoded size, `size` 0, fits any).
    Returns the store's settings (None when `name` is not a store)."""
    settings = store_settings(name)
    if settings is None:
        return None
    stored_fps, size = settings["fps"], settings["size"]
    if (stored_fps is None) != (fps is None) or (fps is not None and abs(stored_fps - fps) > 1e-6):
        shown = "every frame" if stored_fps is None else f"{stored_fps:g} fps"
        raise ValueError(f"frame store {name} holds frames at {shown}, {what} samples at "
                         f"{'every frame' if fps is None else f'{fps:g} fps'}: pass --fps "
                         f"{0 if stored_fps is None else f'{stored_fps:g}'}, or prepare a store at that fps")  # fmt: skip
    if size and size != image_size:
        raise ValueError(f"frame store {name} holds frames of {size}x{size} px, {what} takes {image_size}x"
                         f"{image_size} px: prepare a store with --size {image_size} (or --size 0)")  # fmt: skip
    return settings


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
