"""What to index: the videos of a source, each with its file state (size, mtime) and metadata.

A source is
- a folder of videos (searched recursively for the extensions in `training.corpora.VIDEO_EXTENSIONS`);
- a videofolder (`metadata.jsonl` / `metadata.csv`): its captions and other fields become the metadata;
- a corpus name (`msrvtt`, `msvd`, `lsmdc`, `activitynet`, `demo`) with the options training takes;
- a frame store (`python -m training.prepare_frames`, its folder or Hub dataset id): its stored frames are
  encoded, not the video files, and a row counts as changed when the store is prepared again.

Every file is accounted for: folders are walked following links but each real folder once (a link loop ends),
and what cannot be indexed -- a dangling link, an unreadable folder, a videofolder row whose file is missing, a
file the metadata does not list when a `--split` is asked for -- is returned in `Listing.skipped` with the
reason. A videofolder's unlisted files are indexed without a caption otherwise. `video_id` is unique per file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from dataclasses import dataclass, field

from training.corpora import CORPORA, METADATA_NAMES, VIDEO_EXTENSIONS, _metadata_sources, _read_metadata, load_corpus
from training.frame_store import FRAMES, STORE_FILE, resolve_store


@dataclass(frozen=True)
class LibraryVideo:
    """One video to index. `path` is absolute; `size` and `mtime_ns` tell whether it changed since indexing, and
    `file_stat` (see `file_stat`) which file sits at `path`: what the server may serve for this row."""

    path: str
    video_id: str
    size: int
    mtime_ns: int
    caption: str = ""
    metadata: dict = field(default_factory=dict, hash=False, compare=False)
    file_stat: str = ""

    @classmethod
    def from_row(cls, row: dict) -> LibraryVideo:
        """From a stored part row (`metadata` as JSON text)."""
        return cls(row["path"], row["video_id"], row["size"], row["mtime_ns"], row["caption"], json.loads(row["metadata"]),
                   row.get("file_stat") or "")  # fmt: skip

    @property
    def state(self) -> tuple[str, int, int, str]:
        return (self.path, self.size, self.mtime_ns, self.file_stat)


def file_stat(stat: os.stat_result) -> str:
    """"inode:size:mtime_ns" of a file: another file put at the same path (or a link repointed) differs."""
    return f"{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}"


def same_state(recorded, current) -> bool:
    """Whether a stored row state `(path, size, mtime_ns, file_stat)` is still the file's `current` one; a part
    written before `file_stat` was recorded ("") is judged on the first three."""
    return tuple(recorded[:3]) == tuple(current[:3]) and (not recorded[3] or recorded[3] == current[3])


def _stat(path: str) -> tuple[int, int, str]:
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns, file_stat(stat)


@dataclass
class Listing:
    """What `list_library` found: `videos` sorted by path, the library `root`, and the `skipped` files
    (`{"path", "reason"}`: dangling links, unreadable folders, missing files the metadata lists...)."""

    videos: list[LibraryVideo]
    root: str
    skipped: list[dict] = field(default_factory=list)


def _caption_text(caption) -> str:
    if caption is None:
        return ""
    return caption if isinstance(caption, str) else " | ".join(caption)


def _is_videofolder(folder: str) -> bool:
    if any(os.path.isfile(os.path.join(folder, name)) for name in METADATA_NAMES):
        return True
    return any(os.path.isfile(os.path.join(folder, sub, name))
               for sub in os.listdir(folder) if os.path.isdir(os.path.join(folder, sub)) for name in METADATA_NAMES)  # fmt: skip


def _from_corpus(corpus, split_name: str | None) -> tuple[list[LibraryVideo], list[dict]]:
    if split_name is not None and split_name not in corpus:
        raise ValueError(f"split {split_name!r} not in the corpus; it has {', '.join(corpus)}")
    videos: dict[str, LibraryVideo] = {}
    skipped = []
    for split_name, split in corpus.items() if split_name is None else [(split_name, corpus[split_name])]:
        for row in split:
            path = os.path.abspath(row["video"])
            if path in videos:
                continue
            try:
                size, mtime, stat = _stat(path)
            except OSError as error:  # gone since the corpus was listed
                skipped.append({"path": path, "reason": f"cannot read it: {error.strerror}"})
                continue
            metadata = {k: v for k, v in row.items() if k not in ("video",) and v is not None}
            metadata["split"] = split_name
            videos[path] = LibraryVideo(path, str(row["video_id"]), size, mtime, _caption_text(row["caption"]),
                                        json.loads(json.dumps(metadata, default=str)), stat)  # fmt: skip
    return list(videos.values()), skipped


def _from_store(folder: str, split_name: str | None) -> list[LibraryVideo]:
    """The rows of a frame store; `metadata["frame_store"]` tells the decoder where their frames are."""
    corpus = load_corpus(folder)
    if split_name is not None and split_name not in corpus:
        raise ValueError(f"split {split_name!r} not in the frame store; it has {', '.join(corpus)}")
    _, mtime, _ = _stat(os.path.join(folder, STORE_FILE))
    videos: dict[str, LibraryVideo] = {}
    for name, split in corpus.items() if split_name is None else [(split_name, corpus[split_name])]:
        for number, row in enumerate(split.select_columns([c for c in split.column_names if c != FRAMES])):
            path = os.path.abspath(row["video"])
            metadata = {k: v for k, v in row.items() if k != "video" and v is not None}
            metadata.update(split=name, frame_store=os.path.abspath(folder), store_row=number)
            try:  # the served file is the source video, if it is still there
                stat = file_stat(os.stat(path))
            except OSError:
                stat = "missing"
            videos.setdefault(path, LibraryVideo(path, str(row["video_id"]), 0, mtime, _caption_text(row["caption"]),
                                                 json.loads(json.dumps(metadata, default=str)), stat))  # fmt: skip
    return list(videos.values())


def _is_video_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def _walk(folder: str) -> tuple[list[str], list[dict]]:
    """The video files under `folder` (links followed, each real folder visited once, so a link loop ends) and
    the skipped entries: dangling links and non-regular files with a video name, folders that cannot be listed."""
    files, skipped, seen = [], [], set()
    stack = [os.path.abspath(folder)]
    while stack:
        directory = stack.pop()
        try:
            stat = os.stat(directory)
            if (stat.st_dev, stat.st_ino) in seen:  # a link back to a folder already walked (a loop or an alias)
                continue
            seen.add((stat.st_dev, stat.st_ino))
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as error:
            skipped.append({"path": directory, "reason": f"cannot list this folder: {error.strerror}"})
            continue
        subfolders = []
        for entry in entries:
            if entry.is_symlink() and not os.path.exists(entry.path):  # dangling, or a loop of links
                target = os.readlink(entry.path)
                if _is_video_name(entry.name) or _is_video_name(target):
                    skipped.append({"path": entry.path, "reason": f"dangling symlink (to {target})"})
                continue
            try:
                is_folder = entry.is_dir()
            except OSError:
                is_folder = False
            if is_folder:
                subfolders.append(entry.path)
            elif _is_video_name(entry.name) and entry.is_file():
                files.append(entry.path)
            elif _is_video_name(entry.name):  # a FIFO or device would block the decoder forever
                skipped.append({"path": entry.path, "reason": "not a regular file"})
        stack.extend(reversed(subfolders))
    return files, skipped


def _from_folder(folder: str, files: list[str]) -> tuple[list[LibraryVideo], list[dict]]:
    videos, skipped = [], []
    for path in files:
        relative = os.path.relpath(path, folder)
        try:
            size, mtime, stat = _stat(path)
        except OSError as error:
            skipped.append({"path": path, "reason": f"cannot read it: {error.strerror}"})
            continue
        video_id = os.path.splitext(relative)[0].replace(os.sep, "/")
        videos.append(LibraryVideo(path, video_id, size, mtime, "", {"file_name": relative}, stat))
    return videos, skipped


def _from_videofolder(folder: str, split: str | None) -> tuple[list[LibraryVideo], list[dict]]:
    """The metadata's rows, the files it lists that are missing (skipped), and the video files it does not list:
    indexed without a caption, or skipped when a `split` is asked for (they belong to none)."""
    corpus = load_corpus(folder)
    videos, skipped = _from_corpus(corpus, split)
    for metadata_path, folder_split in _metadata_sources(folder):
        for line, record in _read_metadata(metadata_path):
            path = os.path.abspath(os.path.join(os.path.dirname(metadata_path), str(record.get("file_name", ""))))
            record_split = record.get("split") or folder_split or "train"
            if (split is None or record_split == split) and not os.path.isfile(path):
                what = "a dangling symlink" if os.path.islink(path) else "not found"
                skipped.append({"path": path, "reason": f"listed in {metadata_path}:{line} but {what}"})
    listed = {os.path.realpath(row["video"]) for name in corpus for row in corpus[name].select_columns(["video"])}
    files, walk_skipped = _walk(folder)
    for video in _from_folder(folder, [f for f in files if os.path.realpath(f) not in listed])[0]:
        if split is None:
            videos.append(dataclasses.replace(video, metadata={**video.metadata, "listed": False}))
        else:
            skipped.append({"path": video.path, "reason": "not listed in the metadata, so in no split"})
    return videos, skipped + walk_skipped


def unique_ids(videos: list[LibraryVideo], root: str) -> list[LibraryVideo]:
    """Give files that share a `video_id` (`clip.mp4`, `clip.webm`) their path with extension instead, then a
    counter if that is still not unique."""
    counts = Counter(video.video_id for video in videos)
    if max(counts.values(), default=0) < 2:
        return videos
    unique, taken = [], set(counts)
    for video in videos:
        if counts[video.video_id] > 1:
            base = os.path.relpath(video.path, root).replace(os.sep, "/") if os.path.isdir(root) else video.path
            video_id, number = base, 1
            while video_id in taken:
                number += 1
                video_id = f"{base}#{number}"
            taken.add(video_id)
            video = dataclasses.replace(video, video_id=video_id)
        unique.append(video)
    return unique


def list_library(source: str, split: str | None = None, **corpus_options) -> Listing:
    """The videos of `source` (of one `split` of a corpus or videofolder, else all), sorted by path, the library
    root (a folder, or the corpus' `video_dir`) and the files skipped while listing."""
    source = os.fspath(source)
    skipped = []
    if source in CORPORA:
        videos, skipped = _from_corpus(load_corpus(source, **corpus_options), split)
        root = corpus_options.get("video_dir") or corpus_options.get("folder") or source
    elif (store := resolve_store(source)) is not None:  # a store folder, or its Hub dataset id
        root = store
        videos = _from_store(store, split)
    elif os.path.isdir(source):
        root = source
        if _is_videofolder(source):
            videos, skipped = _from_videofolder(source, split)
        elif split is not None:
            raise ValueError(f"--split {split}: {source} is a plain folder of videos (no {' or '.join(METADATA_NAMES)}), "
                             "it has no splits")  # fmt: skip
        else:
            files, skipped = _walk(source)
            videos, unreadable = _from_folder(source, files)
            skipped += unreadable
    else:
        raise FileNotFoundError(f"source {source!r} is neither a folder nor a corpus name ({', '.join(CORPORA)})")
    if not videos:
        raise ValueError(f"source {source!r} holds no video file ({', '.join(VIDEO_EXTENSIONS)})")
    root = os.path.abspath(root) if os.path.exists(root) else root
    videos = unique_ids(sorted(videos, key=lambda video: video.path), root)
    return Listing(videos, root, sorted(skipped, key=lambda record: record["path"]))
