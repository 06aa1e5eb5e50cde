"""Saved evaluation embeddings: `evaluate.py --save_embeddings DIR` writes them, `--from_embeddings DIR` reranks.

    DIR/embeddings.safetensors   text_embeds [Nt, D] float32, video_embeds [Nv, D], text_to_video [Nt] int64;
                                 its metadata holds the provenance (JSON)
    DIR/ids.json                 video_ids, captions, left_out, provenance, embeddings_sha256

The provenance says what the numbers are of: the model as given and its fingerprint (the search index's,
`search.models.fingerprint`: weights, config and processor settings), the corpus, split and dtype, and the counts.
The two files are written together; reading checks that they still belong together (the counts, the sha256 of the
tensors that ids.json records, the same provenance in both) and refuses a mismatch naming the file, so a report
can never pair one run's ids with another run's embeddings.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import NamedTuple

import torch

EMBEDDINGS_FILE, IDS_FILE = "embeddings.safetensors", "ids.json"
EMBEDDING_TENSORS = ("text_embeds", "video_embeds", "text_to_video")
PROVENANCE_KEY = "centerclip.provenance"  # safetensors metadata key
IDS_KEYS = ("video_ids", "captions", "left_out", "provenance", "embeddings_sha256")
_REMEDY = "write both files again with one --save_embeddings run"


class SavedEmbeddings(NamedTuple):
    text_embeds: torch.Tensor  # [Nt, D]
    video_embeds: torch.Tensor  # [Nv, D]
    text_to_video: torch.Tensor  # [Nt] int64
    video_ids: list[str]
    captions: list[str]
    left_out: list[str]
    provenance: dict


def embeddings_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the cache's tensors (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name in EMBEDDING_TENSORS:
        tensor = tensors[name].contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy() if tensor.numel() else b"")
    return digest.hexdigest()


def save_embeddings(folder: str, text_embeds, video_embeds, text_to_video, video_ids, captions, left_out,
                    provenance: dict | None = None) -> dict:  # fmt: skip
    """Write the cache; returns the provenance recorded (`provenance` plus the counts and the width)."""
    from safetensors.torch import save_file

    tensors = {"text_embeds": text_embeds.contiguous(), "video_embeds": video_embeds.contiguous(),
               "text_to_video": torch.as_tensor(text_to_video, dtype=torch.long)}  # fmt: skip
    provenance = {**(provenance or {}), "num_videos": len(video_ids), "num_captions": len(captions),
                  "dim": int(video_embeds.shape[1])}  # fmt: skip
    os.makedirs(folder, exist_ok=True)
    save_file(tensors, os.path.join(folder, EMBEDDINGS_FILE), metadata={PROVENANCE_KEY: json.dumps(provenance)})
    ids = {"video_ids": video_ids, "captions": captions, "left_out": left_out, "provenance": provenance,
           "embeddings_sha256": embeddings_digest(tensors)}  # fmt: skip
    with open(os.path.join(folder, IDS_FILE), "w", encoding="utf-8") as handle:
        json.dump(ids, handle, indent=1)
    return provenance


def _read_tensors(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error}); {_REMEDY}") from None
    missing = [name for name in EMBEDDING_TENSORS if name not in tensors]
    if missing:
        raise ValueError(f"{path}: no tensor {', '.join(missing)} (it holds {sorted(tensors)}; an embedding cache "
                         f"holds {', '.join(EMBEDDING_TENSORS)}); {_REMEDY}")  # fmt: skip
    text, video, text_to_video = (tensors[name] for name in EMBEDDING_TENSORS)
    if text.ndim != 2 or video.ndim != 2 or text.shape[1] != video.shape[1]:
        raise ValueError(f"{path}: text_embeds {tuple(text.shape)} and video_embeds {tuple(video.shape)} must be "
                         f"[count, width] of one width; {_REMEDY}")  # fmt: skip
    if text_to_video.shape != (text.shape[0],) or text_to_video.dtype.is_floating_point:
        raise ValueError(f"{path}: text_to_video must be [{text.shape[0]}] integers (one video index per caption), "
                         f"got {tuple(text_to_video.shape)} {text_to_video.dtype}; {_REMEDY}")  # fmt: skip
    try:
        provenance = json.loads(metadata[PROVENANCE_KEY])
    except (KeyError, json.JSONDecodeError):
        raise ValueError(f"{path}: no provenance in its metadata (written by an older version or another "
                         f"program); {_REMEDY}") from None  # fmt: skip
    return tensors, provenance


def _read_ids(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            ids = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}); {_REMEDY}") from None
    if not isinstance(ids, dict):
        raise ValueError(f"{path}: expected a JSON object with {', '.join(IDS_KEYS)}; {_REMEDY}")
    missing = [key for key in IDS_KEYS if key not in ids]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)} (written by an older version or another program); "
                         f"{_REMEDY}")  # fmt: skip
    for key in ("video_ids", "captions", "left_out"):
        if not isinstance(ids[key], list):
            raise ValueError(f"{path}: {key} must be a list; {_REMEDY}")
    return ids


def load_embeddings(folder: str) -> SavedEmbeddings:
    """Read a cache written by `save_embeddings`, checking that its two files belong together.

    Raises `FileNotFoundError` for a missing file and `ValueError` naming the file for anything unreadable,
    malformed or mismatched."""
    tensors_path, ids_path = os.path.join(folder, EMBEDDINGS_FILE), os.path.join(folder, IDS_FILE)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--from_embeddings {folder}: no such folder")
    for path in (tensors_path, ids_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--from_embeddings {folder}: no {os.path.basename(path)} (write it with "
                                    "--save_embeddings)")  # fmt: skip
    tensors, provenance = _read_tensors(tensors_path)
    ids = _read_ids(ids_path)
    counts = {"videos": (len(ids["video_ids"]), tensors["video_embeds"].shape[0]),
              "captions": (len(ids["captions"]), tensors["text_embeds"].shape[0])}  # fmt: skip
    for what, (listed, held) in counts.items():
        if listed != held:
            raise ValueError(f"{ids_path} lists {listed} {what} but {tensors_path} holds {held} {what[:-1]} "
                             f"embeddings: the two files come from different runs; {_REMEDY}")  # fmt: skip
    if ids["embeddings_sha256"] != embeddings_digest(tensors):
        raise ValueError(f"{ids_path} was written with other embeddings than those in {tensors_path} (their sha256 "
                         f"differs): the two files come from different runs; {_REMEDY}")  # fmt: skip
    if ids["provenance"] != provenance:
        raise ValueError(f"{ids_path} and {tensors_path} record different provenance ({ids['provenance']} vs "
                         f"{provenance}); {_REMEDY}")  # fmt: skip
    return SavedEmbeddings(tensors["text_embeds"], tensors["video_embeds"], tensors["text_to_video"].long(),
                           ids["video_ids"], ids["captions"], ids["left_out"], provenance)  # fmt: skip


__all__ = ["SavedEmbeddings", "embeddings_digest", "load_embeddings", "save_embeddings"]
