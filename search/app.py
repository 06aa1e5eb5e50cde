"""The front end: a Gradio page over `VideoIndex`, served with two routes of its own.

- `/video/{row}` serves the file of an indexed row and `/poster/{row}` a JPEG of its middle frame. Files are
  addressed by row number, never by path, so nothing but indexed videos can be read from disk, and paths with
  spaces or non-ASCII characters never reach a URL. Gradio's own file route gets no allowed paths.
- Offline: analytics off, Gradio's bundled frontend and local fonts, no CDN; binds to 127.0.0.1 by default.
- Search by upload: an image or a video file (at most `max_upload_bytes`, refused by Gradio's upload route
  above that) is decoded with the CLI's named errors, searched, and deleted from Gradio's temporary folder.
"""

from __future__ import annotations

import contextlib
import html
import io
import os
import tempfile
from functools import lru_cache

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

MAX_RESULTS = 24
MAX_UPLOAD_BYTES = 50 * 2**20
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
COLUMNS = 4
CSS = """
.result video { width: 100%; aspect-ratio: 4 / 3; background: #111; border-radius: 6px; }
.result .score { font-weight: 600; }
.result .path { font-family: monospace; font-size: 0.8em; word-break: break-all; color: #555; }
.result .caption { font-size: 0.9em; }
"""


def _card(result) -> str:
    return (
        f'<div class="result" data-rank="{result.rank}" data-row="{result.row}">'
        f'<video controls muted playsinline preload="auto" poster="/poster/{result.row}" '
        f'src="/video/{result.row}"></video>'
        f'<div class="score">#{result.rank} &middot; score {result.score:.3f}</div>'
        f'<div class="path" title="{html.escape(result.path)}">{html.escape(result.path)}</div>'
        f'<div class="caption">{html.escape(result.caption or result.video_id)}</div></div>'
    )


def poster_jpeg(path: str, size: int = 320) -> bytes:
    """The middle frame of a video as JPEG bytes (shorter side at most `size` pixels)."""
    import decord
    from PIL import Image

    reader = decord.VideoReader(path, num_threads=1)
    image = Image.fromarray(reader[len(reader) // 2].asnumpy())
    image.thumbnail((size * 4, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def search_upload(index, path: str, k: int, temp_root: str | None, max_bytes: int = MAX_UPLOAD_BYTES):
    """Search by an uploaded image or video file; the file is deleted afterwards (when it lies in `temp_root`,
    Gradio's upload folder). Returns `(results, milliseconds, what)`; user errors raise `ValueError`."""
    from training.corpora import VIDEO_EXTENSIONS

    name = os.path.basename(path)
    try:
        suffix = os.path.splitext(name)[1].lower()
        if os.path.getsize(path) > max_bytes:
            raise ValueError(f"{name}: larger than the upload limit of {max_bytes / 2**20:.0f} MB")
        if suffix in IMAGE_EXTENSIONS:
            results, milliseconds = index.timed_search(image=path, k=k)
            return results, milliseconds, f"the image {name}"
        if suffix in VIDEO_EXTENSIONS:
            results, milliseconds = index.timed_search(video=path, k=k)
            return results, milliseconds, f"the video {name}"
        raise ValueError(f"{name}: not an image ({', '.join(IMAGE_EXTENSIONS)}) or a video "
                         f"({', '.join(VIDEO_EXTENSIONS)})")  # fmt: skip
    except ValueError as error:  # a decode error names Gradio's temporary path: name the file as uploaded
        raise ValueError(str(error).replace(path, name)) from None
    finally:
        _delete_upload(path, temp_root)


def _delete_upload(path: str, temp_root: str | None) -> None:
    """Remove an uploaded file and its per-upload folder, only inside Gradio's upload folder."""
    if not temp_root:
        return
    real, root = os.path.realpath(path), os.path.realpath(temp_root)
    if os.path.commonpath([real, root]) != root or real == root:
        return
    with contextlib.suppress(OSError):
        os.unlink(real)
        if os.path.dirname(real) != root:
            os.rmdir(os.path.dirname(real))  # only if empty


def build_blocks(index, max_upload_bytes: int = MAX_UPLOAD_BYTES):
    """The page: query box, k, search button, an image/video upload, latency line, and a grid of result cards
    with "more like this"."""
    import gradio as gr

    from training.corpora import VIDEO_EXTENSIONS

    model = index.manifest["model"]["name"]

    def show(results, milliseconds: float, what: str, query=gr.update()):
        status = f"{len(results)} results for {what} in {milliseconds:.0f} ms (query encoding + search)"
        updates = [gr.update(visible=i < len(results)) for i in range(MAX_RESULTS)]
        cards = [_card(results[i]) if i < len(results) else "" for i in range(MAX_RESULTS)]
        return [status, [r.row for r in results], query, *updates, *cards]

    def by_upload(path: str | None, k: int):
        if not path:
            return show([], 0.0, "no file")
        try:
            results, milliseconds, what = search_upload(index, path, int(k), upload.GRADIO_CACHE, max_upload_bytes)
        except (ValueError, FileNotFoundError) as error:
            return [f"Error: {html.escape(str(error))}", [], "", *show([], 0.0, "")[3:]]
        return show(results, milliseconds, html.escape(what), query="")  # the text box shows what ran: nothing

    def by_text(query: str, k: int):
        if not query or not query.strip():
            return show([], 0.0, "an empty query")
        results, milliseconds = index.timed_search(text=query.strip(), k=int(k))
        return show(results, milliseconds, f"“{html.escape(query.strip())}”")

    def more_like(position: int):
        def handler(rows: list[int], k: int):
            row = rows[position]
            results, milliseconds = index.timed_search(row=row, k=int(k))
            what = f"videos like {html.escape(index.video_ids[row])} (by its stored embedding, not the text box)"
            return show(results, milliseconds, what, query="")

        return handler

    with gr.Blocks(title="CenterCLIP video search") as blocks:
        gr.Markdown(f"## CenterCLIP video search\n{len(index)} videos indexed with `{model}` "
                    f"({index.manifest['index']['kind']} index)")  # fmt: skip
        with gr.Row():
            query = gr.Textbox(label="Query", placeholder="a dog catches a frisbee", elem_id="query", scale=4)
            k = gr.Slider(1, MAX_RESULTS, value=min(8, MAX_RESULTS), step=1, label="k", elem_id="k", scale=1)
            button = gr.Button("Search", variant="primary", elem_id="search", scale=1)
        upload = gr.File(label=f"…or search by an image or a video (up to {max_upload_bytes / 2**20:.0f} MB)",
                         file_types=[*IMAGE_EXTENSIONS, *VIDEO_EXTENSIONS], type="filepath", elem_id="upload",
                         height=110)  # fmt: skip
        status = gr.Markdown(elem_id="status")
        rows = gr.State([])
        columns, cards, likes = [], [], []
        for start in range(0, MAX_RESULTS, COLUMNS):
            with gr.Row(equal_height=False):
                for position in range(start, start + COLUMNS):
                    with gr.Column(visible=False, min_width=200, elem_classes=["result-column"]) as column:
                        cards.append(gr.HTML(elem_id=f"result-{position}"))
                        likes.append(gr.Button("More like this", size="sm", elem_id=f"like-{position}"))
                    columns.append(column)
        outputs = [status, rows, query, *columns, *cards]
        button.click(by_text, [query, k], outputs)
        query.submit(by_text, [query, k], outputs)
        upload.upload(by_upload, [upload, k], outputs).then(lambda: None, None, upload)  # the file is gone
        for position, like in enumerate(likes):
            like.click(more_like(position), [rows, k], outputs)
    return blocks


def create_app(index, max_upload_bytes: int = MAX_UPLOAD_BYTES):
    """A FastAPI app: the Gradio page at `/`, plus `/video/{row}` and `/poster/{row}` for indexed files only."""
    os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="centerclip-gradio-"))  # its cache, not /tmp/gradio
    import gradio as gr
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import FileResponse, Response
    app = FastAPI()

    def indexed_file(row: int) -> str:
        if not 0 <= row < len(index) or not os.path.isfile(index.paths[row]):
            raise HTTPException(status_code=404, detail="no such indexed video")
        return index.paths[row]

    @app.get("/video/{row}")
    def video(row: int):
        return FileResponse(indexed_file(row))  # answers Range requests, as video players need

    poster = lru_cache(maxsize=1024)(poster_jpeg)

    @app.get("/poster/{row}")
    def poster_route(row: int):
        try:
            return Response(poster(indexed_file(row)), media_type="image/jpeg")
        except HTTPException:
            raise
        except Exception:  # noqa: BLE001 -- a video without a decodable frame simply has no poster
            raise HTTPException(status_code=404, detail="no poster frame") from None

    return gr.mount_gradio_app(app, build_blocks(index, max_upload_bytes), path="", css=CSS, allowed_paths=[],
                               max_file_size=max_upload_bytes)  # fmt: skip


def serve(index, host: str = "127.0.0.1", port: int = 7860) -> None:
    import uvicorn

    print(f"serving {index.path} ({len(index)} videos) at http://{host}:{port}", flush=True)
    uvicorn.run(create_app(index), host=host, port=port, log_level="warning")
