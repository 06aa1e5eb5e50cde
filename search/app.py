"""The front end: a Gradio page over `VideoIndex`, served with two routes of its own.

- `/video/{row}` serves the file of an indexed row and `/poster/{row}` a JPEG of its middle frame. Files are
  addressed by row number, never by path, so nothing but indexed videos can be read from disk, and paths with
  spaces or non-ASCII characters never reach a URL. Gradio's own file route gets no allowed paths.
- Only the file indexed is served: it is opened, and the open file's `fstat` (inode, size, mtime) must be the
  row's, else 410 and a log line (a link repointed or a file replaced since indexing); the bytes sent are read
  from that same open file, so nothing can be swapped in between the check and the sending.
- What a client can send is bounded: request bodies (`max_body_bytes`), uploads (`max_upload_bytes`, Gradio's
  own `max_file_size`; refused with 403 when the page has no upload component), the query's length
  (`VideoIndex.max_query_chars`; tokens are cut to the model's maximum). Other origins get no CORS headers and
  no credentials (a CORS policy of our own, which replaces Gradio's), and a request whose `Origin` is not this
  server is refused unless it is a plain GET. Bound to localhost, any `Host` but localhost's is refused (DNS
  rebinding); bound beyond, `allowed_hosts` turns the same check on.
- Gradio's temporary folder is this app's own and is removed when the server shuts down.
- Offline: analytics off, Gradio's bundled frontend and local fonts, no CDN; binds to 127.0.0.1 by default.
- Search by upload: an image or a video file (at most `max_upload_bytes`, refused by Gradio's upload route
  above that) is decoded with the CLI's named errors, searched, and deleted from Gradio's temporary folder.
"""

from __future__ import annotations

import contextlib
import html
import io
import logging
import os
import shutil
import stat as stat_mode
import tempfile
from collections import OrderedDict
from urllib.parse import urlsplit

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

logger = logging.getLogger(__name__)

MAX_RESULTS = 24
MAX_BODY_BYTES = 1 << 20  # a query, k and the page's events: a few kilobytes
MAX_UPLOAD_BYTES = 64 << 20  # an example image or short video clip, for pages with an upload component
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
_UPLOAD_ROUTES = ("/gradio_api/upload", "/gradio_api/process_recording")
_UPLOAD_COMPONENTS = ("File", "UploadButton", "Image", "Video", "Audio", "Model3D", "Gallery", "MultimodalTextbox",
                      "ImageEditor", "ImageSlider", "Files")  # fmt: skip
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

    decord.logging.set_level(decord.logging.QUIET)  # ffmpeg's stderr lines
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
        try:  # the same refusals as the CLI's (empty, too long, not text), shown in the status line
            results, milliseconds = index.timed_search(text=query, k=int(k))
        except ValueError as error:
            return [f"error: {html.escape(str(error))}", [], *show([], 0.0, "")[2:]]
        shown = query.strip()
        shown = shown if len(shown) <= 80 else shown[:80] + "…"  # never echo a long query back
        return show(results, milliseconds, f"“{html.escape(shown)}”")

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
            query = gr.Textbox(label="Query", placeholder="a dog catches a frisbee", elem_id="query", scale=4,
                               max_length=index.max_query_chars)  # fmt: skip
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


def open_indexed(index, row: int) -> tuple[int, os.stat_result]:
    """An open file descriptor of row `row`'s video and its `fstat`, if the file there is still the one indexed.
    `LookupError` if no such row or file, `PermissionError` if another file sits at the path now."""
    if not 0 <= row < len(index):
        raise LookupError(f"no row {row}")
    path = index.paths[row]
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise LookupError(f"{path}: {error.strerror}") from None
    stat = os.fstat(fd)
    if not stat_mode.S_ISREG(stat.st_mode) or not index.is_unchanged(row, stat):
        os.close(fd)
        raise PermissionError(f"{path} is not the file indexed (replaced, or a link repointed, since indexing)")
    return fd, stat


def _indexed_file_response():
    """`FileResponse` (Range requests, as video players need) reading an already opened and checked file."""
    import anyio
    from starlette.responses import FileResponse

    class OpenFileResponse(FileResponse):
        def __init__(self, fd: int, stat: os.stat_result, path: str):
            super().__init__(path, stat_result=stat, media_type=None)
            self.fd = fd

        @contextlib.asynccontextmanager
        async def _open_file(self):
            file = anyio.wrap_file(os.fdopen(os.dup(self.fd), "rb"))  # the checked file, never the path again
            try:
                yield file
            finally:
                with anyio.CancelScope(shield=True):
                    await file.aclose()

        async def __call__(self, scope, receive, send):
            scope = {**scope, "extensions": {k: v for k, v in scope.get("extensions", {}).items()
                                             if k != "http.response.pathsend"}}  # fmt: skip
            try:
                await super().__call__(scope, receive, send)
            finally:
                os.close(self.fd)

    return OpenFileResponse


def has_uploads(blocks) -> bool:
    """Whether the page has a component a browser uploads files through."""
    return any(type(block).__name__ in _UPLOAD_COMPONENTS and getattr(block, "interactive", None) is not False
               for block in blocks.blocks.values())  # fmt: skip


class RequestLimits:
    """ASGI middleware: bounded request bodies, uploads only where the page takes them, no request from another
    origin but a plain GET (a cross-site form post, a DNS-rebound page). Gradio bounds upload files itself
    (`max_file_size`); it has no bound for other bodies nor an origin check for simple requests."""

    def __init__(self, app, max_body_bytes: int, max_upload_bytes: int, allowed_hosts: list[str] | None):
        self.app, self.max_body, self.max_upload = app, max_body_bytes, max_upload_bytes
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope, receive, send):
        from starlette.datastructures import Headers
        from starlette.responses import PlainTextResponse

        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        is_upload = scope["path"].rstrip("/").endswith(_UPLOAD_ROUTES)
        limit = (self.max_upload + (64 << 10) if self.max_upload else 0) if is_upload else self.max_body

        def refuse(status: int, text: str):
            logger.warning("refused %s %s: %s", scope["method"], scope["path"], text)
            return PlainTextResponse(text, status_code=status)(scope, receive, send)

        origin = headers.get("origin")
        if origin and scope["method"] not in ("GET", "HEAD") and not self._same_origin(origin, headers.get("host")):
            return await refuse(403, "requests from other origins are refused")
        if is_upload and not self.max_upload:
            return await refuse(403, "this page takes no uploads")
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await refuse(413, f"request body over the limit of {limit} bytes")
        received, refused, started = 0, False, False

        async def counted_receive():
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # a chunked body that outgrew the limit: answer 413, the app sees a disconnect
                    refused = True
                    if not started:
                        await PlainTextResponse(f"request body over the limit of {limit} bytes", status_code=413)(
                            scope, receive, send)  # fmt: skip
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted_receive, guarded_send)

    def _same_origin(self, origin: str, host: str | None) -> bool:
        netloc = urlsplit(origin).netloc.lower()
        if host and netloc == host.lower():
            return True
        return bool(self.allowed_hosts) and urlsplit(origin).hostname in self.allowed_hosts


def create_app(index, *, max_body_bytes: int = MAX_BODY_BYTES, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               allowed_hosts: list[str] | None = None):  # fmt: skip
    """A FastAPI app: the Gradio page at `/`, plus `/video/{row}` and `/poster/{row}` for indexed files only.

    `max_upload_bytes` bounds one uploaded file where the page has an upload component (none: uploads refused);
    `allowed_hosts` (None: any) are the `Host` names accepted (`serve` passes localhost's when bound there)."""
    for name, value in (("max_body_bytes", max_body_bytes), ("max_upload_bytes", max_upload_bytes)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative number of bytes, got {value!r}")
    import gradio as gr
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import Response
    from starlette.middleware.cors import CORSMiddleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    # Gradio's upload and cache folder is this app's own, removed at shutdown: every component reads the
    # variable when it is built, so it is set only while the page is built and mounted.
    temp_dir = tempfile.mkdtemp(prefix="centerclip-gradio-")
    previous_temp = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = temp_dir

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        try:
            yield
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)

    app = FastAPI(lifespan=lifespan)
    app.state.temp_dir = temp_dir
    # An empty CORS policy of our own: Gradio then adds none of its own (it would answer any origin with
    # credentials when the Host is not localhost, as under DNS rebinding), and same-origin pages need none.
    app.add_middleware(CORSMiddleware, allow_origins=[], allow_credentials=False)
    file_response = _indexed_file_response()

    def checked(row: int) -> tuple[int, os.stat_result]:
        try:
            return open_indexed(index, row)
        except LookupError:
            raise HTTPException(status_code=404, detail="no such indexed video") from None
        except PermissionError as error:
            logger.warning("refused to serve row %d: %s", row, error)
            raise HTTPException(status_code=410, detail="this video changed since it was indexed") from None

    @app.get("/video/{row}")
    def video(row: int):
        fd, stat = checked(row)
        return file_response(fd, stat, index.paths[row])

    posters: OrderedDict = OrderedDict()  # (row, inode, size, mtime) -> JPEG, the 1024 latest

    @app.get("/poster/{row}")
    def poster_route(row: int):
        fd, stat = checked(row)
        key = (row, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        try:
            if key not in posters:  # decord opens a path: the checked file's own /proc/self/fd entry
                posters[key] = poster_jpeg(f"/proc/self/fd/{fd}" if os.path.isdir("/proc/self/fd") else index.paths[row])
                while len(posters) > 1024:
                    posters.popitem(last=False)
            return Response(posters[key], media_type="image/jpeg")
        except Exception:  # noqa: BLE001 -- a video without a decodable frame simply has no poster
            raise HTTPException(status_code=404, detail="no poster frame") from None
        finally:
            os.close(fd)

    try:
        blocks = build_blocks(index, max_upload_bytes)
        uploads = has_uploads(blocks)
        app = gr.mount_gradio_app(app, blocks, path="", css=CSS, allowed_paths=[],
                                  max_file_size=max_upload_bytes if uploads else 0)  # fmt: skip
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    finally:
        if previous_temp is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous_temp
    app.add_middleware(RequestLimits, max_body_bytes=max_body_bytes, max_upload_bytes=max_upload_bytes if uploads else 0,
                       allowed_hosts=allowed_hosts)  # fmt: skip
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts, www_redirect=False)
    return app


def serve(index, host: str = "127.0.0.1", port: int = 7860, allowed_hosts: list[str] | None = None,
          max_upload_bytes: int = MAX_UPLOAD_BYTES) -> None:
    """Serve the page. Bound to localhost, only localhost's names are accepted as `Host` (a page of another site
    rebinding its name to 127.0.0.1 is refused); bound beyond, give `allowed_hosts` to check them likewise."""
    import uvicorn

    if not 0 < port < 65536:
        raise ValueError(f"--port must be 1..65535, got {port}")
    if allowed_hosts is None and host in LOCAL_HOSTS:
        allowed_hosts = list(LOCAL_HOSTS)
    elif allowed_hosts is None:
        logger.warning("serving on %s with no Host check: pass --allowed-host NAME (the names clients use) to "
                       "refuse requests for other names", host)  # fmt: skip
    app = create_app(index, max_upload_bytes=max_upload_bytes, allowed_hosts=allowed_hosts)
    print(f"serving {index.path} ({len(index)} videos) at http://{host}:{port}", flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        shutil.rmtree(app.state.temp_dir, ignore_errors=True)
