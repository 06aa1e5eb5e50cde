"""Video search with CenterCLIP: index a video library once, search it by text, by example video or by image.

    centerclip index SOURCE --model MODEL --output INDEX_DIR      # encode (incremental, resumable, multi-process)
    centerclip search INDEX_DIR "a dog catches a frisbee" -k 10    # or --video clip.mp4 / --image photo.jpg
    centerclip serve INDEX_DIR --port 7860                         # a local web page

Modules: `library` (what to index), `models` (fingerprint, text/image/video towers), `storage` (parts,
manifest, lock), `ann` (FAISS kinds and tuning), `compressed` (the on-disk `ivfpq` kind), `tuning` (text-like
tuning queries), `indexer` (the indexing run), `index` (`VideoIndex`, the back end), `app` (the Gradio page),
`cli`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("modeling-centerclip")
except PackageNotFoundError:  # run from a source tree that was not installed
    __version__ = "0+unknown"


def __getattr__(name: str):
    # Loaded on first use (torch, FAISS): `centerclip --help` and the CLI's argument errors answer at once.
    if name in ("SearchResult", "VideoIndex"):
        from . import index

        return getattr(index, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SearchResult", "VideoIndex", "__version__"]
