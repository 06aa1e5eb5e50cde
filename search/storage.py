"""On-disk layout of an index folder, and the rules that keep it readable at every moment.

    INDEX_DIR/
      manifest.json        model, fingerprint, dim, metric, counts, skipped files, index settings, live parts
      parts/*.parquet      one row per video: path, video_id, size, mtime_ns, caption, metadata (JSON), embedding
      index-<run>.faiss    the FAISS index over the rows of the live parts, in manifest order
      .lock                held (flock) by the one process writing

Every file is written under a temporary name and renamed into place, so a killed run leaves whole files or
none. A part also records, in its parquet schema metadata, the model fingerprint and the videos of its chunk
that could not be decoded, so a resumed run neither re-encodes nor re-tries anything a finished part covers.
`manifest.json` is written last: searches read only what it lists, so a run killed before its end leaves the
previous state searchable.

Nothing read from the folder is trusted for paths: the manifest may name only `parts/<name>.parquet` and
`index-<run>.faiss` entries that resolve inside the folder (`inside`); what a run deletes is found by listing
the folder, never taken from the manifest. Temporary files are created exclusively (`mkstemp`, never through a
planted link) and any left by a killed run are removed by the next commit (`remove_leftovers`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "manifest.json"
PARTS = "parts"
LOCK = ".lock"
FINGERPRINT_KEY = b"centerclip.fingerprint"
SKIPPED_KEY = b"centerclip.skipped"
# `file_stat` ("inode:size:mtime_ns" of the file at `path` when it was listed) tells whether the file there now is
# still the one indexed (a replaced file or a repointed link is not); "" in parts written before it existed.
ROW_COLUMNS = ("path", "video_id", "size", "mtime_ns", "caption", "metadata", "file_stat")
# A run's index files: `index-<run>.faiss`, and any companion `index-<run>.<ext>` an index kind writes beside it.
INDEX_FILE = re.compile(r"index-[A-Za-z0-9_-]+(\.[A-Za-z0-9_]+)+")
# What a manifest's `index.file` may name: a run's FAISS file, or the compressed kind's folder (search/compressed.py).
IVFPQ_PREFIX = "ivfpq-"  # search.compressed's on-disk index: a folder named by this and a key of its inputs
IVFPQ_FOLDER = re.compile(IVFPQ_PREFIX + r"[0-9a-f]+")
INDEX_PATH = re.compile(INDEX_FILE.pattern + "|" + IVFPQ_FOLDER.pattern + r"/index\.faiss")
PART_FILE = re.compile(r"parts/[A-Za-z0-9_-]+\.parquet")
REPAIR_HINT = "run `centerclip index SOURCE --model MODEL --output {dir} --rebuild` to repair it (good parts are kept)"

logger = logging.getLogger(__name__)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class IndexLockedError(RuntimeError):
    """Another process is writing to the index."""


class CorruptIndexError(ValueError):
    """A file of the index folder cannot be read or breaks the folder's rules; the message names it."""


def inside(index_dir: Path, relative: str, pattern: re.Pattern) -> Path:
    """`index_dir / relative` for a name the manifest gave, refused unless it has the form `pattern` and resolves
    (links followed) inside `index_dir`: a tampered manifest can make the tool read or write nothing else."""
    index_dir = Path(index_dir).resolve()
    if not isinstance(relative, str) or not pattern.fullmatch(relative):
        raise CorruptIndexError(f"{index_dir / MANIFEST}: entry {relative!r} is not a file of this index; "
                                + REPAIR_HINT.format(dir=index_dir))  # fmt: skip
    path = (index_dir / relative).resolve()
    if not path.is_relative_to(index_dir):
        raise CorruptIndexError(f"{index_dir / MANIFEST}: entry {relative!r} leads outside the index folder "
                                f"(to {path}); " + REPAIR_HINT.format(dir=index_dir))  # fmt: skip
    return path


@contextlib.contextmanager
def _temporary(path: Path):
    """A fresh temporary file beside `path` (created exclusively: a planted link is never written through); it
    is renamed onto `path` if the block succeeds and removed if it fails."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    os.fchmod(fd, 0o666 & ~_UMASK)  # as open() would have made it, not mkstemp's 0600
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(error, OSError) and not error.filename:  # e.g. a full disk: name the file being written
            raise OSError(error.errno, f"cannot write {path} ({error.strerror or error})") from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with _temporary(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, ensure_ascii=False).encode())


def write_faiss(path: Path, index) -> None:
    import faiss

    with _temporary(path) as tmp:
        faiss.write_index(index, tmp)


# A manifest's required fields and their types (anything else is informative).
_MANIFEST_FIELDS = {"model": dict, "dim": int, "index": dict, "parts": list}


def read_manifest(index_dir: str | os.PathLike) -> dict:
    """The manifest, checked: a missing, unreadable, non-JSON or incomplete one is a named error."""
    path = Path(index_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{index_dir}: no {MANIFEST}; is this an index built by `centerclip index`?")
    hint = REPAIR_HINT.format(dir=index_dir)
    try:
        manifest = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptIndexError(f"{path}: not valid JSON ({error}); {hint}") from None
    if not isinstance(manifest, dict):
        raise CorruptIndexError(f"{path}: expected a JSON object, got {type(manifest).__name__}; {hint}")
    for key, kind in _MANIFEST_FIELDS.items():
        if not isinstance(manifest.get(key), kind):
            raise CorruptIndexError(f"{path}: field {key!r} is missing or not a {kind.__name__}; {hint}")
    for key, kind in {("model", "fingerprint"): str, ("model", "name"): str, ("index", "file"): str,
                      ("index", "kind"): str}.items():  # fmt: skip
        if not isinstance(manifest[key[0]].get(key[1]), kind):
            raise CorruptIndexError(f"{path}: field {'.'.join(key)!r} is missing or not a {kind.__name__}; {hint}")
    inside(Path(index_dir), manifest["index"]["file"], INDEX_PATH)  # raise if it names anything but our files
    for part in manifest["parts"]:
        inside(Path(index_dir), part, PART_FILE)
    return manifest


def remove_leftovers(index_dir: Path, keep_index: str) -> list[str]:
    """Remove what killed or failed runs left: temporary files, and the indexes of other runs than `keep_index`'s
    (`index-<run>.*` files, `ivfpq-<key>/` folders of finished or abandoned builds of older inputs). Only the
    folder's own entries are listed and removed (a link is unlinked, never followed). Call with the lock."""
    removed = []
    keep_run = keep_index.split(".")[0] + "."
    keep_folder = keep_index.split("/")[0] if "/" in keep_index else None
    for folder, leftover in ((index_dir, lambda n: n.startswith(".") and ".tmp" in n or
                              (INDEX_FILE.fullmatch(n) is not None and not n.startswith(keep_run))),
                             (index_dir / PARTS, lambda n: n.startswith(".") and ".tmp" in n)):  # fmt: skip
        if not folder.is_dir() or folder.is_symlink():
            continue
        with os.scandir(folder) as entries:
            for entry in entries:
                stale_build = folder == index_dir and IVFPQ_FOLDER.fullmatch(entry.name) and entry.name != keep_folder
                if stale_build and entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                elif (leftover(entry.name) or stale_build) and (entry.is_symlink() or entry.is_file(follow_symlinks=False)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                else:
                    continue
                removed.append(entry.name)
    if removed:
        logger.info("removed %d leftover(s) of earlier runs: %s", len(removed), ", ".join(sorted(removed)[:5]))
    return removed


def parts_folder(index_dir: Path) -> Path:
    """`INDEX_DIR/parts`, created if needed; refused when it is a link or leads outside the folder."""
    folder = Path(index_dir) / PARTS
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise CorruptIndexError(f"{folder} is not a plain folder of this index (a link or a file); remove it")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_part(path: Path, videos: list, embeddings: np.ndarray, skipped: list[dict], fingerprint: str, dim: int):
    """One chunk as a parquet part: the rows of `videos` (`LibraryVideo`) with their float32 embeddings."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32).reshape(len(videos), dim)
    columns = {
        "path": pa.array([v.path for v in videos], pa.string()),
        "video_id": pa.array([v.video_id for v in videos], pa.string()),
        "size": pa.array([v.size for v in videos], pa.int64()),
        "mtime_ns": pa.array([v.mtime_ns for v in videos], pa.int64()),
        "caption": pa.array([v.caption for v in videos], pa.string()),
        "metadata": pa.array([json.dumps(v.metadata, ensure_ascii=False) for v in videos], pa.string()),
        "file_stat": pa.array([v.file_stat for v in videos], pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1), pa.float32()), dim),
    }
    table = pa.table(columns).replace_schema_metadata(
        {FINGERPRINT_KEY: fingerprint.encode(), SKIPPED_KEY: json.dumps(skipped, ensure_ascii=False).encode()}
    )
    with _temporary(path) as tmp:
        pq.write_table(table, tmp)


def list_parts(index_dir: Path) -> list[Path]:
    """The finished parts on disk (temporary files of a killed writer are not listed)."""
    folder = index_dir / PARTS
    return sorted(folder.glob("[!.]*.parquet")) if folder.is_dir() else []


def _read_table(path: Path, columns: list[str]) -> pa.Table:
    """`columns` of a part (`file_stat` "" where a part predates it); an unreadable part is a named error."""
    try:
        names = pq.read_schema(path).names
        table = pq.read_table(path, columns=[c for c in columns if c in names])
    except (OSError, pa.ArrowException) as error:  # pyarrow reports a bad footer as OSError/ArrowInvalid
        raise CorruptIndexError(f"{path}: not a readable index part ({error}); "
                                + REPAIR_HINT.format(dir=Path(path).parent.parent)) from None  # fmt: skip
    if "file_stat" in columns and "file_stat" not in names:
        table = table.add_column(table.num_columns, "file_stat", pa.array([""] * len(table), pa.string()))
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise CorruptIndexError(f"{path}: index part lacks columns {missing}; "
                                + REPAIR_HINT.format(dir=Path(path).parent.parent))  # fmt: skip
    return table.select(columns)


def read_part_summary(path: Path) -> dict:
    """A part's fingerprint, row states `(path, size, mtime_ns, file_stat)` and skipped records, without its
    embeddings. An unreadable part raises `CorruptIndexError` naming it."""
    table = _read_table(path, ["path", "size", "mtime_ns", "file_stat"])
    metadata = table.schema.metadata or {}
    try:
        skipped = json.loads(metadata.get(SKIPPED_KEY, b"[]"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptIndexError(f"{path}: its record of skipped files is not JSON ({error})") from None
    return {
        "fingerprint": metadata.get(FINGERPRINT_KEY, b"").decode(errors="replace"),
        "states": [tuple(s) for s in zip(*(table.column(c).to_pylist() for c in ("path", "size", "mtime_ns", "file_stat")))],
        "skipped": skipped,
    }


def read_rows(paths: list[Path], with_embeddings: bool = True) -> tuple[pa.Table, np.ndarray | None]:
    """The rows of `paths` in order (without `embedding`), and their embeddings `[N, dim]` float32."""
    columns = list(ROW_COLUMNS) + (["embedding"] if with_embeddings else [])
    tables = [_read_table(path, columns) for path in paths]
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in ROW_COLUMNS}), None
    try:
        table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables])
    except pa.ArrowInvalid as error:  # e.g. parts of different embedding widths
        raise CorruptIndexError(f"{paths[0].parent}: the parts do not agree ({error}); "
                                + REPAIR_HINT.format(dir=paths[0].parent.parent)) from None  # fmt: skip
    embeddings = None
    if with_embeddings:
        column = table.column("embedding").combine_chunks()
        dim = column.type.list_size
        embeddings = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)
        table = table.drop_columns(["embedding"])
    return table, embeddings


class IndexLock:
    """An exclusive `flock` on `INDEX_DIR/.lock`: a second writer is refused; the kernel frees it when the holder
    dies (even by SIGKILL), so a killed run never leaves a stale lock."""

    def __init__(self, index_dir: Path):
        self.path = Path(index_dir) / LOCK
        self.handle = None

    def __enter__(self) -> IndexLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:  # never through a planted link: the lock file is truncated below
            handle = os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644), "r+")
        except OSError as error:
            raise CorruptIndexError(f"{self.path}: cannot open the lock file ({error.strerror}); it must be a "
                                    "plain file of the index folder") from None  # fmt: skip
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise IndexLockedError(
                f"{self.path.parent} is being written by another process ({holder}); wait for it to finish "
                f"(only one `centerclip index` may write to an index at a time)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
        self.handle = None
