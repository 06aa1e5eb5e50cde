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
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "manifest.json"
PARTS = "parts"
LOCK = ".lock"
FINGERPRINT_KEY = b"centerclip.fingerprint"
SKIPPED_KEY = b"centerclip.skipped"
ROW_COLUMNS = ("path", "video_id", "size", "mtime_ns", "caption", "metadata")


class IndexLockedError(RuntimeError):
    """Another process is writing to the index."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, ensure_ascii=False).encode())


def read_manifest(index_dir: str | os.PathLike) -> dict:
    path = Path(index_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{index_dir}: no {MANIFEST}; is this an index built by `centerclip index`?")
    return json.loads(path.read_text())


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
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1), pa.float32()), dim),
    }
    table = pa.table(columns).replace_schema_metadata(
        {FINGERPRINT_KEY: fingerprint.encode(), SKIPPED_KEY: json.dumps(skipped, ensure_ascii=False).encode()}
    )
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def list_parts(index_dir: Path) -> list[Path]:
    """The finished parts on disk (temporary files of a killed writer are not listed)."""
    folder = index_dir / PARTS
    return sorted(folder.glob("[!.]*.parquet")) if folder.is_dir() else []


def read_part_summary(path: Path) -> dict:
    """A part's fingerprint, row states `(path, size, mtime_ns)` and skipped records, without its embeddings."""
    metadata = pq.read_schema(path).metadata or {}
    table = pq.read_table(path, columns=["path", "size", "mtime_ns"])
    states = list(zip(*(table.column(c).to_pylist() for c in ("path", "size", "mtime_ns"))))
    return {
        "fingerprint": metadata.get(FINGERPRINT_KEY, b"").decode(),
        "states": states,
        "skipped": json.loads(metadata.get(SKIPPED_KEY, b"[]")),
    }


def read_rows(paths: list[Path], with_embeddings: bool = True) -> tuple[pa.Table, np.ndarray | None]:
    """The rows of `paths` in order (without `embedding`), and their embeddings `[N, dim]` float32."""
    columns = list(ROW_COLUMNS) + (["embedding"] if with_embeddings else [])
    tables = [pq.read_table(path, columns=columns) for path in paths]
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in ROW_COLUMNS}), None
    table = pa.concat_tables(tables)
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
        handle = open(self.path, "a+")
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
