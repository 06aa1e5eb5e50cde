"""The back end: `VideoIndex`, an index folder loaded for searching by text, by example video, or by row.

    index = VideoIndex.build("videos/", model="outputs/demo/centerclip/final", output="my_index")
    index = VideoIndex.load("my_index")
    index.search(text="a dog catches a frisbee", k=10)   # [SearchResult(rank, score, path, video_id, ...)]
    index.search(video="clip.mp4", k=10)
    index.search(image="photo.jpg", k=10)                  # a still image, through CLIP's image tower

Loading reads the manifest, the rows' metadata and the FAISS index; the model is loaded on the first query
that needs it, and only the part it needs: the tokenizer and text tower for text, the full model for an image
or a video that is not in the index (an indexed video's stored embedding is used as is).
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
from .models import ModelSpec, image_embedding, load_image
from .storage import read_manifest, read_rows


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
        self.manifest = read_manifest(self.path)
        table, _ = read_rows([self.path / part for part in self.manifest["parts"]], with_embeddings=False)
        self.paths: list[str] = table.column("path").to_pylist()
        self.video_ids: list[str] = table.column("video_id").to_pylist()
        self.captions: list[str] = table.column("caption").to_pylist()
        self._metadata: list[str] = table.column("metadata").to_pylist()
        self._row_of = {path: row for row, path in enumerate(self.paths)}
        self.index = open_index(self.path, self.manifest["index"])  # a faiss index, or `CompressedIndex`
        if self.index.ntotal != len(self.paths):
            raise ValueError(f"{self.path}: the FAISS index holds {self.index.ntotal} vectors but the parts "
                             f"{len(self.paths)} rows; re-run `centerclip index` to rebuild it")  # fmt: skip
        self._model_request = (model, overrides, allow_model_mismatch)
        self._spec = self._text_encoder = self._video_model = None

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
        """An indexed video's stored embedding, or the model's embedding of any other file."""
        row = self.row_of(video)
        if row is not None:
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
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(self)))
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
