"""What to index: the videos of a source, each with its file state (size, mtime) and metadata.

A source is
- a folder of videos (searched recursively for the extensions in `training.corpora.VIDEO_EXTENSIONS`);
- a videofolder (`metadata.jsonl` / `metadata.csv`): its captions and other fields become the metadata;
- a corpus name (`msrvtt`, `msvd`, `lsmdc`, `activitynet`, `demo`) with the options training takes;
- a frame store (`python -m training.prepare_frames`, its folder or Hub dataset id): its stored frames are
  encoded, not the video files, and a row counts as changed when the store is prepared again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from training.corpora import CORPORA, METADATA_NAMES, VIDEO_EXTENSIONS, load_corpus
from training.frame_store import FRAMES, STORE_FILE, resolve_store


@dataclass(frozen=True)
class LibraryVideo:
    """One video to index. `path` is absolute; `size` and `mtime_ns` tell whether it changed since indexing."""

    path: str
    video_id: str
    size: int
    mtime_ns: int
    caption: str = ""
    metadata: dict = field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def from_row(cls, row: dict) -> LibraryVideo:
        """From a stored part row (`metadata` as JSON text)."""
        return cls(row["path"], row["video_id"], row["size"], row["mtime_ns"], row["caption"], json.loads(row["metadata"]))

    @property
    def state(self) -> tuple[str, int, int]:
        return (self.path, self.size, self.mtime_ns)


def _stat(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def _caption_text(caption) -> str:
    if caption is None:
        return ""
    return caption if isinstance(caption, str) else " | ".join(caption)


def _is_videofolder(folder: str) -> bool:
    if any(os.path.isfile(os.path.join(folder, name)) for name in METADATA_NAMES):
        return True
    return any(os.path.isfile(os.path.join(folder, sub, name))
               for sub in os.listdir(folder) if os.path.isdir(os.path.join(folder, sub)) for name in METADATA_NAMES)  # fmt: skip


def _from_corpus(corpus, split_name: str | None) -> list[LibraryVideo]:
    if split_name is not None and split_name not in corpus:
        raise ValueError(f"split {split_name!r} not in the corpus; it has {', '.join(corpus)}")
    videos: dict[str, LibraryVideo] = {}
    for split_name, split in corpus.items() if split_name is None else [(split_name, corpus[split_name])]:
        for row in split:
            path = os.path.abspath(row["video"])
            if path in videos or not os.path.isfile(path):
                continue
            metadata = {k: v for k, v in row.items() if k not in ("video",) and v is not None}
            metadata["split"] = split_name
            size, mtime = _stat(path)
            videos[path] = LibraryVideo(path, str(row["video_id"]), size, mtime, _caption_text(row["caption"]),
                                        json.loads(json.dumps(metadata, default=str)))  # fmt: skip
    return list(videos.values())


def _from_store(folder: str, split_name: str | None) -> list[LibraryVideo]:
    """The rows of a frame store; `metadata["frame_store"]` tells the decoder where their frames are."""
    corpus = load_corpus(folder)
    if split_name is not None and split_name not in corpus:
        raise ValueError(f"split {split_name!r} not in the frame store; it has {', '.join(corpus)}")
    _, mtime = _stat(os.path.join(folder, STORE_FILE))
    videos: dict[str, LibraryVideo] = {}
    for name, split in corpus.items() if split_name is None else [(split_name, corpus[split_name])]:
        for number, row in enumerate(split.select_columns([c for c in split.column_names if c != FRAMES])):
            path = os.path.abspath(row["video"])
            metadata = {k: v for k, v in row.items() if k != "video" and v is not None}
            metadata.update(split=name, frame_store=os.path.abspath(folder), store_row=number)
            videos.setdefault(path, LibraryVideo(path, str(row["video_id"]), 0, mtime, _caption_text(row["caption"]),
                                                 json.loads(json.dumps(metadata, default=str))))  # fmt: skip
    return list(videos.values())


def _from_folder(folder: str) -> list[LibraryVideo]:
    videos = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() not in VIDEO_EXTENSIONS:
                continue
            path = os.path.abspath(os.path.join(root, name))
            video_id = os.path.splitext(os.path.relpath(path, folder))[0].replace(os.sep, "/")
            size, mtime = _stat(path)
            videos.append(LibraryVideo(path, video_id, size, mtime, "", {"file_name": os.path.relpath(path, folder)}))
    return videos


def list_library(source: str, split: str | None = None, **corpus_options) -> tuple[list[LibraryVideo], str]:
    """The videos of `source` (of one `split` of a corpus or videofolder, else all), sorted by path, and the
    library root (a folder, or the corpus' `video_dir`)."""
    source = os.fspath(source)
    if source in CORPORA:
        videos = _from_corpus(load_corpus(source, **corpus_options), split)
        root = corpus_options.get("video_dir") or corpus_options.get("folder") or source
    elif (store := resolve_store(source)) is not None:  # a store folder, or its Hub dataset id
        root = store
        videos = _from_store(store, split)
    elif os.path.isdir(source):
        root = source
        videos = _from_corpus(load_corpus(source), split) if _is_videofolder(source) else _from_folder(source)
    else:
        raise FileNotFoundError(f"source {source!r} is neither a folder nor a corpus name ({', '.join(CORPORA)})")
    if not videos:
        raise ValueError(f"source {source!r} holds no video file ({', '.join(VIDEO_EXTENSIONS)})")
    root = os.path.abspath(root) if os.path.exists(root) else root
    return sorted(videos, key=lambda video: video.path), root
