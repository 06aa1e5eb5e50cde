"""The back end: `VideoIndex`, an index folder loaded for searching by text, by example video, or by row.

    index = VideoIndex.build("videos/", model="outputs/demo/centerclip/final", output="my_index")
    index = VideoIndex.load("my_index")
    index.search(text="a dog catches a frisbee", k=10)   # [SearchResult(rank, score, path, video_id, ...)]
    index.search(video="clip.mp4", k=10)
    index.search(image="photo.jpg", k=10)                  # a still image, through CLIP's image tower

Loading reads the manifest, the rows' metadata and the FAISS index; the model is loaded on the first query
that needs it, and only the part it needs: the tokenizer and text tower for text, the full model for an image
or a video that is not in the index (an indexed video's stored embedding is used as is, if the file there is still the one
indexed: a replaced file is encoded again).

Loading never sees a half-committed index: if a file the manifest lists vanishes while it is read (a writer
committed and removed it), the new manifest is read again. A text query is stripped; an empty one, one longer
than `max_query_chars` or not valid text is refused (`ValueError`); tokens beyond the model's `max_length` are
cut by the tokenizer.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from training.evaluate import video_embeddings

from .ann import open_index
from .library import file_stat
from .models import ModelSpec, image_embedding, load_image
from .storage import INDEX_PATH, MANIFEST, PART_FILE, REPAIR_HINT, CorruptIndexError, inside, read_manifest, read_rows

MAX_QUERY_CHARS = 1000  # a query is cut to the model's max_length tokens anyway (77 for CLIP): far fewer
_LOAD_TRIES = 5


def check_query(text, max_chars: int = MAX_QUERY_CHARS) -> str:
    """The query stripped, or a `ValueError`: not text, empty, longer than `max_chars`, or not valid UTF-8 (a
    byte string the shell could not decode arrives with surrogates)."""
    if not isinstance(text, str):
        raise ValueError(f"the query must be text, got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise ValueError("empty query: give some words to search for")
    if len(text) > max_chars:
        raise ValueError(f"the query is {len(text)} characters long; the limit is {max_chars}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the query is not valid UTF-8 text") from None
    return text


@dataclass
class SearchResult:
    rank: int
    score: float
    path: str
    video_id: str
    caption: str
    row: int
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class VideoIndex:
    """A searchable index folder (see `search.storage` for its layout)."""

    def __init__(self, path: str | os.PathLike, model: str | None = None, overrides: dict | None = None,
                 allow_model_mismatch: bool = False):  # fmt: skip
        self.path = Path(path).resolve()
        self.max_query_chars = MAX_QUERY_CHARS
        for attempt in range(_LOAD_TRIES):
            manifest_bytes = self._manifest_bytes()
            try:
                self._read(read_manifest(self.path))
                break
            except (FileNotFoundError, CorruptIndexError):
                # a writer committed meanwhile and removed what the manifest we read listed: read the new one
                if attempt + 1 == _LOAD_TRIES or self._manifest_bytes() == manifest_bytes:
                    raise
        self._model_request = (model, overrides, allow_model_mismatch)
        self._spec = self._text_encoder = self._video_model = None

    def _manifest_bytes(self) -> bytes | None:
        try:
            return (self.path / MANIFEST).read_bytes()
        except OSError:
            return None

    def _read(self, manifest: dict) -> None:
        parts = [inside(self.path, part, PART_FILE) for part in manifest["parts"]]
        index_file = inside(self.path, manifest["index"]["file"], INDEX_PATH)
        table, _ = read_rows(parts, with_embeddings=False)
        self.manifest = manifest
        self.paths: list[str] = table.column("path").to_pylist()
        self.video_ids: list[str] = table.column("video_id").to_pylist()
        self.captions: list[str] = table.column("caption").to_pylist()
        self._metadata: list[str] = table.column("metadata").to_pylist()
        self._states = list(zip(*(table.column(c).to_pylist() for c in ("size", "mtime_ns", "file_stat"))))
        self._row_of = {path: row for row, path in enumerate(self.paths)}
        if not index_file.is_file():
            raise FileNotFoundError(f"{index_file}: the FAISS file the manifest names is missing; "
                                    + REPAIR_HINT.format(dir=self.path))  # fmt: skip
        try:
            # a faiss index, or `CompressedIndex` (ivfpq: its folder in the index folder)
            self.index = open_index(self.path, manifest["index"])
        except RuntimeError as error:  # faiss reports a bad file as a RuntimeError with its C++ trace
            reason = str(error).strip().splitlines()[-1][:200] if str(error).strip() else "unreadable"
            raise CorruptIndexError(f"{index_file}: not a readable FAISS index ({reason}); "
                                    + REPAIR_HINT.format(dir=self.path)) from None  # fmt: skip
        if self.index.ntotal != len(self.paths) or self.index.d != manifest["dim"]:
            raise CorruptIndexError(f"{index_file}: holds {self.index.ntotal} vectors of width {self.index.d}, but "
                                    f"the parts {len(self.paths)} rows of width {manifest['dim']}; "
                                    + REPAIR_HINT.format(dir=self.path))  # fmt: skip

    @classmethod
    def load(cls, path: str | os.PathLike, **kwargs) -> VideoIndex:
        """Open an index folder. `model`/`overrides` choose the query model (default: the index's own);
        a model with another fingerprint is refused unless `allow_model_mismatch=True`."""
        return cls(path, **kwargs)

    @classmethod
    def build(cls, source: str, model: str, output: str | os.PathLike, **kwargs) -> VideoIndex:
        """Index (or update) `source` into `output` (see `search.indexer.index_library` for the options)."""
        from .indexer import index_library

        index_library(source, model, output, **kwargs)
        return cls.load(output)

    def __len__(self) -> int:
        return len(self.paths)

    # ------------------------------------------------------------------------------------------- query models

    @property
    def spec(self) -> ModelSpec:
        if self._spec is None:
            model, overrides, allow = self._model_request
            recorded = self.manifest["model"]
            if model is None:  # the index's own model, from where it was read if that folder is still there
                model = recorded["path"] if os.path.isdir(recorded.get("path", "")) else recorded["name"]
                overrides = recorded["overrides"] if overrides is None else overrides
            self._spec = ModelSpec(model, overrides)
            self._spec.check_matches(recorded, allow)
        return self._spec

    def encode_text(self, texts: list[str]) -> np.ndarray:
        if self._text_encoder is None:
            self._text_encoder = self.spec.load_text_encoder()
        return self._text_encoder(texts).numpy()

    def encode_video(self, video: str) -> np.ndarray:
        """An indexed video's stored embedding (if the file is still the one indexed), or the model's embedding
        of any other file."""
        row = self.row_of(video)
        if row is not None and self.is_unchanged(row, os.stat(self.paths[row])):
            return self.embedding(row)[None]
        processor = self.spec.processor
        pixel_values, video_mask = processor.load_video(video, name=os.fspath(video), do_normalize=False)
        return video_embeddings(self.video_model, processor, pixel_values[None], video_mask[None]).numpy()

    def encode_image(self, image) -> np.ndarray:
        """An image (file path, encoded bytes or PIL image) through the model's `get_image_features`."""
        frames = load_image(image)  # decoded first: a bad file fails before any model is loaded
        return image_embedding(self.video_model, self.spec.processor, frames).numpy()

    @property
    def video_model(self):
        """The full model (both towers), loaded on the first image or unindexed video query."""
        if self._video_model is None:
            self._video_model = self.spec.load_video_model()
        return self._video_model

    def row_of(self, video: str | os.PathLike) -> int | None:
        """The row of `video` if it is an indexed file (by absolute path), else None."""
        path = os.path.abspath(os.fspath(video))
        return self._row_of.get(path)

    def is_unchanged(self, row: int, stat: os.stat_result) -> bool:
        """Whether `stat` (of the file at the row's path, links followed; or `os.fstat` of it opened) is the
        file indexed: same inode, size and mtime (size and mtime for rows of indexes made before inodes were
        recorded). Frame-store rows recorded the source video's."""
        size, mtime_ns, recorded = self._states[row]
        if recorded:
            return recorded == file_stat(stat)
        return (size, mtime_ns) == (stat.st_size, stat.st_mtime_ns)

    def embedding(self, row: int) -> np.ndarray:
        return self.index.reconstruct(int(row))

    # ------------------------------------------------------------------------------------------------- search

    def search(self, text: str | None = None, video: str | os.PathLike | None = None, row: int | None = None,
               k: int = 10, image=None) -> list[SearchResult]:  # fmt: skip
        """The `k` best videos for one query: a `text`, an example `video` file, an `image` (path, bytes or PIL
        image), or an indexed `row`."""
        if sum(q is not None for q in (text, video, image, row)) != 1:
            raise ValueError("search needs exactly one of text=..., video=..., image=... or row=...")
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        if text is not None:
            text = check_query(text, self.max_query_chars)
        if row is not None and not 0 <= int(row) < len(self):
            raise ValueError(f"row {row} is not in the index (0..{len(self) - 1})")
        with torch.inference_mode():
            if text is not None:
                query = self.encode_text([text])
            elif video is not None:
                query = self.encode_video(video)
            elif image is not None:
                query = self.encode_image(image)
            else:
                query = self.embedding(row)[None]
        return self.search_embeddings(query, k)[0]

    def search_embeddings(self, queries: np.ndarray, k: int = 10) -> list[list[SearchResult]]:
        """Search with L2-normalised query embeddings `[Q, dim]`."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.index.d:
            raise ValueError(f"query embeddings have shape {queries.shape}, but {self.path} holds embeddings of width "
                             f"{self.index.d} (a model with another embedding width cannot search this index)")  # fmt: skip
        if not np.isfinite(queries).all():
            raise ValueError("the query embedding is NaN or inf: check the query model's weights")
        if len(self) == 0:
            return [[] for _ in queries]
        scores, rows = self.index.search(queries, min(k, len(self)))
        return [[self.result(int(r), float(s), rank) for rank, (s, r) in enumerate(zip(score, row), 1) if r >= 0]
                for score, row in zip(scores, rows)]  # fmt: skip

    def result(self, row: int, score: float, rank: int) -> SearchResult:
        return SearchResult(rank, score, self.paths[row], self.video_ids[row], self.captions[row], row,
                            json.loads(self._metadata[row]))  # fmt: skip

    def timed_search(self, **query) -> tuple[list[SearchResult], float]:
        """`search(**query)` and its wall time in milliseconds (query encoding included)."""
        start = time.perf_counter()
        results = self.search(**query)
        return results, (time.perf_counter() - start) * 1000
