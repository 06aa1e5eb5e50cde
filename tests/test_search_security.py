"""Search integrity and security, one table row per case: the real server (uvicorn on 127.0.0.1, started here)
for what a client can do, the `centerclip` CLI for what a library or a damaged index folder can do."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from test_search import running, save_model, write_clip

SECRET = b"root:$6$not-a-video:19000:0:99999:7:::\n"


# ------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return save_model(tmp_path_factory.mktemp("model"), tiny_tokenizer, seed=0)


def _save_broken_model(folder: Path, tokenizer, change: Callable) -> Path:
    """A tiny model saved after `change(model)` (NaN weights, another embedding width)."""
    from modeling_centerclip import CenterCLIPModel, CenterCLIPProcessor
    from tiny_models import tiny_centerclip_config

    torch.manual_seed(0)
    config = tiny_centerclip_config()
    config.text_config.update(dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))  # fmt: skip
    config = change(config) or config
    model = CenterCLIPModel(config)
    if getattr(config, "_nan", False):
        with torch.no_grad():
            model.visual_projection.weight.fill_(float("nan"))
    model.save_pretrained(folder)
    CenterCLIPProcessor(tokenizer=tokenizer, num_frames=4, image_size=32, max_length=16).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def nan_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return _save_broken_model(tmp_path_factory.mktemp("nan_model"), tiny_tokenizer, lambda c: setattr(c, "_nan", True))


@pytest.fixture(scope="module")
def wide_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return _save_broken_model(tmp_path_factory.mktemp("wide_model"), tiny_tokenizer,
                              lambda c: setattr(c, "projection_dim", 24))  # fmt: skip


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Source clips to copy into each case's library (rendering is the slow part)."""
    folder = tmp_path_factory.mktemp("clips")
    for number in range(5):
        write_clip(folder / f"c{number}.mp4", seed=number)
    return folder


def plain_library(root: Path, clips: Path, count: int = 3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        shutil.copy(clips / f"c{number}.mp4", root / f"clip{number}.mp4")
    return root


# ------------------------------------------------------------------------------------------- the CLI rows


def cli(capsys, *argv) -> tuple[int, str, str]:
    from search.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def index_args(source, model, output, *extra):
    return ["index", source, "--model", model, "--output", output, "--batch_size", 2, "--num_workers", 0,
            "--chunk_size", 1, *extra]  # fmt: skip


def manifest_of(output: Path) -> dict:
    return json.loads((output / "manifest.json").read_text())


@dataclass
class Ctx:
    tmp: Path
    lib: Path
    idx: Path
    model: Path
    clips: Path
    nan_model: Path
    wide_model: Path
    capsys: object
    monkeypatch: object
    victim: Path = None
    notes: dict = field(default_factory=dict)

    def index(self, *extra, source=None, model=None):
        return cli(self.capsys, *index_args(source or self.lib, model or self.model, self.idx, *extra))

    def search(self, *argv):
        return cli(self.capsys, "search", self.idx, *argv)


@dataclass
class Row:
    """One case: `setup(ctx)` damages or reshapes things, `run(ctx)` gives (exit code, stdout, stderr) that must
    match `code` and `message` (stderr, one line), then `check(ctx, out)` asserts what must hold."""

    name: str
    setup: Callable
    run: Callable
    code: int
    message: str = ""
    check: Callable = lambda ctx, out: None


def _tamper(ctx: Ctx, **changes):
    manifest = manifest_of(ctx.idx)
    for dotted, value in changes.items():
        target = manifest
        *path, last = dotted.split("__")
        for key in path:
            target = target[key]
        target[last] = value
    (ctx.idx / "manifest.json").write_text(json.dumps(manifest))


def _victim(ctx: Ctx) -> Path:
    ctx.victim = ctx.tmp / "elsewhere" / "victim.txt"
    ctx.victim.parent.mkdir()
    ctx.victim.write_bytes(SECRET)
    return ctx.victim


def _victim_intact(ctx: Ctx, out=None):
    assert ctx.victim.read_bytes() == SECRET


def _loop_library(ctx: Ctx):
    (ctx.lib / "self").symlink_to(".")
    (ctx.lib / "a").mkdir()
    write_clip(ctx.lib / "a" / "inner.mp4", seed=9)
    (ctx.lib / "a" / "up").symlink_to("..")


def _dangling(ctx: Ctx):
    (ctx.lib / "gone.mp4").symlink_to(ctx.tmp / "no-such-file.mp4")


def _videofolder(ctx: Ctx):
    (ctx.lib / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    shutil.copy(ctx.clips / "c3.mp4", ctx.lib / "v10.mp4")  # unlisted and decodable
    records = [{"file_name": "clip0.mp4", "caption": "zero"}, {"file_name": "clip1.mp4", "caption": "one"},
               {"file_name": "missing.mp4", "caption": "listed, never there"}]  # fmt: skip
    (ctx.lib / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _two_stems(ctx: Ctx):
    shutil.copy(ctx.clips / "c3.mp4", ctx.lib / "bikes.mp4")
    shutil.copy(ctx.clips / "c4.mp4", ctx.lib / "bikes.webm")  # ffmpeg goes by the content, not the extension


def _check_videofolder(ctx: Ctx, out):
    manifest = manifest_of(ctx.idx)
    assert manifest["counts"]["videos"] == 4 and manifest["counts"]["skipped"] == 2, manifest["counts"]
    reasons = {s["file_name"]: s["reason"] for s in manifest["skipped"]}
    assert sorted(reasons) == ["broken.mp4", "missing.mp4"] and reasons["missing.mp4"].startswith("listed in"), reasons
    assert "skipped" in out and "broken.mp4" in out and "missing.mp4" in out, out  # the summary lists both
    from search import VideoIndex

    index = VideoIndex.load(ctx.idx)
    unlisted = index.search(row=index.row_of(ctx.lib / "v10.mp4"), k=1)[0]
    assert unlisted.caption == "" and unlisted.metadata["listed"] is False


def _check_two_stems(ctx: Ctx, out):
    from search import VideoIndex

    ids = VideoIndex.load(ctx.idx).video_ids
    assert len(ids) == len(set(ids)) == 5 and {"bikes.mp4", "bikes.webm"} <= set(ids), ids


def _second_library(ctx: Ctx) -> Path:
    return plain_library(ctx.tmp / "big", ctx.clips, count=2)


def _rows_by_library(ctx: Ctx) -> set[str]:
    from search import VideoIndex

    return {Path(p).parent.name for p in VideoIndex.load(ctx.idx).paths}


def _replace_indexed(ctx: Ctx):
    from search import VideoIndex

    index = VideoIndex.load(ctx.idx)
    ctx.notes["stored"] = index.embedding(index.row_of(ctx.lib / "clip0.mp4")).copy()
    shutil.copy(ctx.clips / "c4.mp4", ctx.lib / "clip0.mp4")  # another video at the indexed path
    shutil.copy(ctx.clips / "c4.mp4", ctx.tmp / "fresh.mp4")


def _check_reencoded(ctx: Ctx, out):
    from search import VideoIndex

    index = VideoIndex.load(ctx.idx)
    query = index.encode_video(str(ctx.lib / "clip0.mp4"))[0]
    assert index._video_model is not None  # encoded, not answered from the stored row
    assert float(query @ ctx.notes["stored"]) < 0.999
    np.testing.assert_allclose(query, index.encode_video(str(ctx.tmp / "fresh.mp4"))[0], atol=1e-5)
    results = json.loads(out)
    assert results[0]["path"] != str(ctx.lib / "clip0.mp4") or results[0]["score"] < 0.999


def _corrupt_part(ctx: Ctx):
    part = ctx.idx / manifest_of(ctx.idx)["parts"][1]
    part.write_bytes(b"PAR1 garbage, no footer")
    ctx.notes["part"] = part.name


def _leftovers(ctx: Ctx):
    for name in ("index-20250101-000000-deadbeef.faiss", ".manifest.json.tmp-123", ".index-x.faiss.tmp-9"):
        (ctx.idx / name).write_bytes(b"")
    (ctx.idx / "parts" / ".20250101-r000-00000.parquet.tmp-77").write_bytes(b"")
    (ctx.idx / "ivfpq-0123abcd" / "blocks").mkdir(parents=True)  # an abandoned compressed build of older inputs
    (ctx.idx / "ivfpq-0123abcd" / "blocks" / "block-000000.faiss").write_bytes(b"")
    (ctx.idx / "ivfpq-00ff").symlink_to(_victim(ctx).parent, target_is_directory=True)  # unlinked, not followed
    ctx.notes["before"] = sorted(p.name for p in ctx.idx.rglob("*"))


def _no_leftovers(ctx: Ctx, out=None):
    manifest = manifest_of(ctx.idx)
    files = sorted(str(p.relative_to(ctx.idx)) for p in ctx.idx.rglob("*") if p.is_file())
    assert files == sorted([".lock", "manifest.json", manifest["index"]["file"], *manifest["parts"]]), files


def _disk_full(ctx: Ctx):
    import pyarrow.parquet as pq

    def full(table, where, *args, **kwargs):
        Path(where).write_bytes(b"")  # what a full disk leaves: a 0-byte file
        raise OSError(28, "No space left on device")

    shutil.copy(ctx.clips / "c4.mp4", ctx.lib / "new.mp4")
    ctx.monkeypatch.setattr(pq, "write_table", full)


def _check_after_disk_full(ctx: Ctx, out):
    ctx.monkeypatch.undo()
    assert not [p for p in ctx.idx.rglob(".*tmp*")], "the failed write left its temporary file"
    assert manifest_of(ctx.idx)["counts"]["videos"] == 3  # the previous state is still searchable
    assert ctx.index()[0] == 0 and manifest_of(ctx.idx)["counts"]["videos"] == 4


def _reindex_ok(extra=()):
    return lambda ctx: ctx.index(*extra)


CLI_ROWS = [
    Row("tampered manifest: index.file names a file outside -> refused, victim kept",
        lambda c: (_victim(c), _tamper(c, index__file=str(c.victim))), _reindex_ok(), 2, "manifest.json",
        _victim_intact),
    Row("tampered manifest repaired by --rebuild, victim kept",
        lambda c: (_victim(c), _tamper(c, index__file=str(c.victim))), _reindex_ok(["--rebuild"]), 0, "",
        lambda c, out: (_victim_intact(c), _no_leftovers(c))),
    Row("tampered manifest: a part '../' outside -> search refused naming it",
        lambda c: (_victim(c), _tamper(c, parts=["parts/../../elsewhere/victim.txt"])), lambda c: c.search("a dog"), 2,
        "not a file of this index", _victim_intact),
    Row("tampered manifest: a 'sources' entry that is not a library -> refused naming it",
        lambda c: _tamper(c, sources=[{"source": "/", "corpus_options": {"evil": 1}}]), _reindex_ok(), 2,
        "manifest.json: entry .* of 'sources'"),
    Row("planted .lock link -> refused, victim not truncated",
        lambda c: (_victim(c), (c.idx / ".lock").unlink(), (c.idx / ".lock").symlink_to(c.victim)), _reindex_ok(), 2,
        ".lock", _victim_intact),
    Row("another source into the index -> refused, naming --add and --rebuild",
        lambda c: None, lambda c: c.index(source=_second_library(c)), 2, "--add",
        lambda c, out: (c.notes.update(videos=manifest_of(c.idx)["counts"]["videos"]),
                        _rows_by_library(c) == {"lib"} or pytest.fail("old rows lost"))),
    Row("another source with --add -> both libraries' rows",
        lambda c: None, lambda c: c.index("--add", source=_second_library(c)), 0, "",
        lambda c, out: (_rows_by_library(c) == {"lib", "big"} or pytest.fail(str(_rows_by_library(c))),
                        len(manifest_of(c.idx)["sources"]) == 2 or pytest.fail("sources"))),
    Row("another source with --rebuild -> the new library only",
        lambda c: None, lambda c: c.index("--rebuild", source=_second_library(c)), 0, "",
        lambda c, out: _rows_by_library(c) == {"big"} or pytest.fail(str(_rows_by_library(c)))),
    Row("symlink loops (self -> ., a/up -> ..) -> each clip once, no hang",
        _loop_library, _reindex_ok(["--rebuild"]), 0, "",
        lambda c, out: manifest_of(c.idx)["counts"]["videos"] == 4 or pytest.fail(str(manifest_of(c.idx)["counts"]))),
    Row("a dangling symlink -> skipped and listed, the rest indexed",
        _dangling, _reindex_ok(), 0, "",
        lambda c, out: (manifest_of(c.idx)["counts"]["videos"] == 3 or pytest.fail("videos"),
                        "skipped" in out and "gone.mp4" in out and "dangling" in out or pytest.fail(out),
                        [s["file_name"] for s in manifest_of(c.idx)["skipped"]] == ["gone.mp4"] or pytest.fail("skipped"))),
    Row("a FIFO named like a video -> skipped as not a regular file, no hang",
        lambda c: os.mkfifo(c.lib / "pipe.mp4"), _reindex_ok(), 0, "",
        lambda c, out: [(s["file_name"], s["reason"]) for s in manifest_of(c.idx)["skipped"]]
        == [("pipe.mp4", "not a regular file")] or pytest.fail(out)),
    Row("a model of another embedding width with --rebuild -> the index is re-encoded at that width",
        lambda c: None, lambda c: c.index("--rebuild", model=c.wide_model), 0, "",
        lambda c, out: (manifest_of(c.idx)["dim"] == 24 or pytest.fail("dim"), c.search("a dog", "--model", c.wide_model)[0] == 0
                        or pytest.fail("search"))),
    Row("videofolder: unlisted files indexed uncaptioned, corrupt and missing ones in skipped + summary",
        _videofolder, _reindex_ok(["--rebuild"]), 0, "",
        lambda c, out: _check_videofolder(c, out)),
    Row("videofolder with --split: unlisted files skipped with the reason",
        _videofolder, _reindex_ok(["--rebuild", "--split", "train"]), 0, "",
        lambda c, out: any(s["file_name"] == "v10.mp4" and "no split" in s["reason"] for s in manifest_of(c.idx)["skipped"])
        or pytest.fail(str(manifest_of(c.idx)["skipped"]))),
    Row("two files with one stem (bikes.mp4, bikes.webm) -> two video_ids",
        _two_stems, _reindex_ok(), 0, "", _check_two_stems),
    Row("a model with NaN weights -> refused naming the file",
        lambda c: None, lambda c: c.index("--rebuild", model=c.nan_model), 2, "clip0.mp4: model .* NaN or inf"),
    Row("--video on an indexed path whose file was replaced -> encoded again",
        _replace_indexed, lambda c: c.search("--video", c.lib / "clip0.mp4", "--json", "-k", 3), 0, "", _check_reencoded),
    Row("a query model of another embedding width -> one-line error",
        lambda c: None, lambda c: c.search("a dog", "--model", c.wide_model, "--allow-model-mismatch"), 2, "width 16"),
    Row("--split on a plain folder -> refused", lambda c: None, _reindex_ok(["--split", "test"]), 2, "no splits"),
    Row("an empty query (CLI) -> 'empty query', as on the page", lambda c: None, lambda c: c.search("   "), 2,
        "empty query"),
    Row("an oversized query (CLI) -> refused", lambda c: None, lambda c: c.search("x" * 20_000), 2, "limit is 1000"),
    Row("non-UTF-8 query bytes -> one-line error", lambda c: None,
        lambda c: c.search(b"caf\xe9 \xff".decode("utf-8", "surrogateescape")), 2, "not valid UTF-8"),
    Row("a truncated manifest -> search names it", lambda c: (c.idx / "manifest.json").write_text('{"model": {'),
        lambda c: c.search("a dog"), 2, "manifest.json: not valid JSON"),
    Row("a truncated manifest -> index --rebuild repairs it keeping every part",
        lambda c: (c.idx / "manifest.json").write_text('{"model": {'), _reindex_ok(["--rebuild"]), 0, "",
        lambda c, out: (manifest_of(c.idx)["counts"]["encoded_this_run"] == 0 or pytest.fail("re-encoded"),
                        _no_leftovers(c))),
    Row("manifest {} -> names the missing field", lambda c: (c.idx / "manifest.json").write_text("{}"),
        lambda c: c.search("a dog"), 2, "field 'model' is missing"),
    Row("a garbage part -> index names it", _corrupt_part, _reindex_ok(), 2, r"parts/.*\.parquet: not a readable"),
    Row("a garbage part -> --rebuild re-encodes only its video, keeps the good parts",
        _corrupt_part, _reindex_ok(["--rebuild"]), 0, "",
        lambda c, out: (manifest_of(c.idx)["counts"]["encoded_this_run"] == 1 or pytest.fail(out),
                        manifest_of(c.idx)["counts"]["videos"] == 3 or pytest.fail(out), _no_leftovers(c))),
    Row("a missing FAISS file -> search names it", lambda c: (c.idx / manifest_of(c.idx)["index"]["file"]).unlink(),
        lambda c: c.search("a dog"), 2, r"index-.*\.faiss: the FAISS file"),
    Row("a garbage FAISS file -> search names it, a re-run rebuilds it",
        lambda c: (c.idx / manifest_of(c.idx)["index"]["file"]).write_bytes(b"garbage"),
        lambda c: c.search("a dog"), 2, r"index-.*\.faiss: not a readable FAISS index",
        lambda c, out: (c.index()[0] == 0 or pytest.fail("re-run"), c.search("a dog")[0] == 0 or pytest.fail("search"))),
    Row("leftovers of killed runs (tmp files, old FAISS files) -> removed by the next run",
        _leftovers, _reindex_ok(), 0, "", lambda c, out: (_no_leftovers(c), _victim_intact(c),
                                                          not (c.idx / "ivfpq-00ff").is_symlink() or pytest.fail(out))),
    Row("a full disk -> one line naming the part, nothing half-written left, previous state kept",
        _disk_full, _reindex_ok(), 2, r"cannot write .*parts/.*\.parquet \(No space left", _check_after_disk_full),
    Row("--output an existing file -> one-line error",
        lambda c: c.tmp.joinpath("afile").write_text("x"),
        lambda c: cli(c.capsys, *index_args(c.lib, c.model, c.tmp / "afile")), 2, "is a file, not an index folder"),
    Row("an --output that cannot be created (under a file; as a read-only disk) -> one-line error",
        lambda c: c.tmp.joinpath("afile").write_text("x"),
        lambda c: cli(c.capsys, *index_args(c.lib, c.model, c.tmp / "afile" / "idx")), 2, r"afile/idx: Not a directory"),
    Row("--port 70000 -> usage error", lambda c: None, lambda c: cli(c.capsys, "serve", c.idx, "--port", 70000), 2,
        "a port is a number from 1 to 65535"),
]  # fmt: skip


@pytest.fixture(scope="module")
def base_index(clips, model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A plain library of 3 clips and its index (3 parts), copied by each row."""
    root = tmp_path_factory.mktemp("base")
    lib = plain_library(root / "lib", clips)
    from search.indexer import index_library

    index_library(str(lib), str(model_dir), root / "idx", batch_size=2, num_workers=0, chunk_size=1,
                  show_progress=False)  # fmt: skip
    return lib, root / "idx"


@pytest.mark.parametrize("row", CLI_ROWS, ids=[row.name for row in CLI_ROWS])
def test_cli_case(row: Row, base_index, clips, model_dir, nan_model_dir, wide_model_dir, tmp_path, capsys, monkeypatch):
    lib, idx = tmp_path / "lib", tmp_path / "idx"
    shutil.copytree(base_index[0], lib, symlinks=True)
    shutil.copytree(base_index[1], idx)
    manifest = json.loads((idx / "manifest.json").read_text())  # the copy's rows name the copied library
    from search.indexer import source_entry

    manifest["sources"] = [source_entry(str(lib), {})]
    (idx / "manifest.json").write_text(json.dumps(manifest))
    _repoint_parts(idx, base_index[0], lib)
    ctx = Ctx(tmp_path, lib, idx, model_dir, clips, nan_model_dir, wide_model_dir, capsys, monkeypatch)
    row.setup(ctx)
    code, out, err = row.run(ctx)
    assert code == row.code, (out, err)
    if row.message:
        import re

        lines = [line for line in err.splitlines() if re.search(r"centerclip \w+: error:", line)]
        assert len(lines) == 1 and re.search(row.message, lines[0]), err  # one line, naming what is wrong
        assert "Traceback" not in err
    row.check(ctx, out)


def _repoint_parts(idx: Path, old: Path, new: Path) -> None:
    """Rewrite the copied parts' paths from the base library to this row's copy (states stay valid: copytree
    keeps mtimes; inodes differ, so `file_stat` is refreshed from the copies)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from search.library import file_stat

    for part in (idx / "parts").glob("*.parquet"):
        table = pq.read_table(part)
        paths = [p.replace(str(old), str(new)) for p in table.column("path").to_pylist()]
        stats = [file_stat(os.stat(p)) for p in paths]
        for name, values in (("path", paths), ("file_stat", stats)):
            table = table.set_column(table.column_names.index(name), name, pa.array(values, pa.string()))
        pq.write_table(table, part)


# ---------------------------------------------------------------------------------------- the server rows


@pytest.fixture(scope="module")
def served(clips, model_dir, tmp_path_factory):
    """An index over a library holding a symlink to a clip outside it, served by uvicorn on 127.0.0.1 as
    `centerclip serve` would (localhost Host names only)."""
    from search import VideoIndex
    from search.app import LOCAL_HOSTS, create_app
    from search.indexer import index_library

    root = tmp_path_factory.mktemp("served")
    lib = plain_library(root / "lib", clips, count=2)
    outside = root / "outside"
    outside.mkdir()
    shutil.copy(clips / "c2.mp4", outside / "real.mp4")
    (lib / "link_out.mp4").symlink_to(outside / "real.mp4")
    shutil.copy(clips / "c3.mp4", lib / "replaced.mp4")
    (outside / "shadow").write_bytes(SECRET * 64)
    index_library(str(lib), str(model_dir), root / "idx", batch_size=2, num_workers=0, show_progress=False)
    index = VideoIndex.load(root / "idx")
    app = create_app(index, allowed_hosts=list(LOCAL_HOSTS), max_upload_bytes=1 << 20)
    with running(app) as port:
        yield {"index": index, "port": port, "lib": lib, "outside": outside, "app": app, "clips": clips}
    assert not os.path.exists(app.state.temp_dir), "Gradio's temporary folder outlived the server"


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            chunked: bool = False, timeout: float = 60) -> tuple[int, dict, bytes]:
    """One HTTP request to 127.0.0.1 (never elsewhere)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if chunked:
            connection.putrequest(method, path)
            for key, value in (headers or {}).items():
                connection.putheader(key, value)
            connection.putheader("Transfer-Encoding", "chunked")
            connection.endheaders()
            try:
                for start in range(0, len(body), 1 << 16):
                    chunk = body[start : start + (1 << 16)]
                    connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                connection.send(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered and closed before the whole body was sent
        else:
            connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def row_of(served, name: str) -> int:
    return served["index"].row_of(served["lib"] / name)


def call_page(port: int, query: str, k: int = 3) -> str:
    """Run the page's text search through Gradio's HTTP API; returns its status line."""
    status, _, body = request(port, "POST", "/gradio_api/call/by_text", json.dumps({"data": [query, k]}).encode(),
                              {"Content-Type": "application/json"})  # fmt: skip
    assert status == 200, body[:300]
    event = json.loads(body)["event_id"]
    status, _, stream = request(port, "GET", f"/gradio_api/call/by_text/{event}")
    data = [line[6:] for line in stream.decode().splitlines() if line.startswith("data: ")]
    return json.loads(data[-1])[0]


def _swap(link: Path, target: Path):
    link.unlink()
    link.symlink_to(target)


def _served_then_swapped(served, route: str):
    row = row_of(served, "link_out.mp4")
    first = request(served["port"], "GET", f"/{route}/{row}")
    assert first[0] == 200 and (route != "video" or first[2] == (served["outside"] / "real.mp4").read_bytes())
    _swap(served["lib"] / "link_out.mp4", served["outside"] / "shadow")  # serving has started: now repoint it
    try:
        return request(served["port"], "GET", f"/{route}/{row}")
    finally:
        _swap(served["lib"] / "link_out.mp4", served["outside"] / "real.mp4")


def _replaced(served):
    row = row_of(served, "replaced.mp4")
    assert request(served["port"], "GET", f"/video/{row}")[0] == 200
    path = served["lib"] / "replaced.mp4"
    stat = path.stat()
    path.unlink()
    path.write_bytes(SECRET * 64)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even the old mtime does not make it the same file
    return request(served["port"], "GET", f"/video/{row}")


def upload(port: int, size: int):
    """POST one file of `size` zero bytes to Gradio's upload route."""
    boundary = "centerclipboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.mp4\"\r\n"
            f"Content-Type: video/mp4\r\n\r\n").encode() + b"\0" * size + f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
    return request(port, "POST", "/gradio_api/upload", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def _upload(served, size: int):
    reply = upload(served["port"], size)
    leftovers = [p for p in Path(served["app"].state.temp_dir).rglob("*") if p.is_file()]
    assert not leftovers, leftovers
    return reply


def _page_query(served, query: str):
    return 200, {}, call_page(served["port"], query).encode()


FOREIGN = {"Origin": "http://attacker.example"}


@dataclass
class ServerRow:
    name: str
    run: Callable  # served -> (status, headers, body)
    status: int
    check: Callable = lambda headers, body: None


def _no_cors(headers, body):
    assert "access-control-allow-origin" not in headers and "access-control-allow-credentials" not in headers, headers


SERVER_ROWS = [
    ServerRow("an indexed video is served", lambda s: request(s["port"], "GET", f"/video/{row_of(s, 'clip0.mp4')}"), 200,
              lambda h, b: b[4:8] == b"ftyp" or pytest.fail("not the mp4")),
    ServerRow("a Range request is answered from the checked file",
              lambda s: request(s["port"], "GET", f"/video/{row_of(s, 'clip0.mp4')}", headers={"Range": "bytes=4-7"}),
              206, lambda h, b: b == b"ftyp" or pytest.fail(str(b))),
    ServerRow("symlink repointed at a secret after serving started -> 410", lambda s: _served_then_swapped(s, "video"),
              410, lambda h, b: SECRET not in b or pytest.fail("secret served")),
    ServerRow("symlink repointed -> its poster 410 too", lambda s: _served_then_swapped(s, "poster"), 410),
    ServerRow("an indexed file replaced (same path, same mtime) -> 410", _replaced, 410,
              lambda h, b: SECRET not in b or pytest.fail("replacement served")),
    ServerRow("a row that is not indexed -> 404", lambda s: request(s["port"], "GET", "/video/999"), 404),
    ServerRow("an oversized query on the page -> error, not echoed", lambda s: _page_query(s, "x" * 20_000), 200,
              lambda h, b: (b"limit is 1000" in b and b"x" * 100 not in b) or pytest.fail(b[:300].decode())),
    ServerRow("an empty query on the page -> 'empty query', as in the CLI", lambda s: _page_query(s, "   "), 200,
              lambda h, b: b"empty query" in b or pytest.fail(b.decode())),
    ServerRow("a query at the limit on the page is answered", lambda s: _page_query(s, "a red 3 " * 125), 200,
              lambda h, b: b"results for" in b or pytest.fail(b.decode())),
    ServerRow("an oversized body (Content-Length) -> 413",
              lambda s: request(s["port"], "POST", "/gradio_api/call/by_text", b"{" + b" " * (2 << 20) + b"}",
                                {"Content-Type": "application/json"}), 413),
    ServerRow("an oversized chunked body (no Content-Length) -> 413",
              lambda s: request(s["port"], "POST", "/gradio_api/call/by_text", b"{" + b" " * (2 << 20) + b"}",
                                {"Content-Type": "application/json"}, chunked=True), 413),
    ServerRow("an upload over the cap (1 MiB here) -> 413, nothing stored", lambda s: _upload(s, 5 << 20), 413),
    ServerRow("a foreign Origin gets no CORS headers nor credentials",
              lambda s: request(s["port"], "GET", "/config", headers=FOREIGN), 200, _no_cors),
    ServerRow("a foreign Origin's preflight gets no CORS headers",
              lambda s: request(s["port"], "OPTIONS", "/gradio_api/queue/join",
                                headers={**FOREIGN, "Access-Control-Request-Method": "POST"}), 403, _no_cors),
    ServerRow("a foreign Origin's POST is refused",
              lambda s: request(s["port"], "POST", "/gradio_api/call/by_text", json.dumps({"data": ["a", 3]}).encode(),
                                {**FOREIGN, "Content-Type": "application/json"}), 403, _no_cors),
    ServerRow("DNS rebinding: a foreign Host name -> 400",
              lambda s: request(s["port"], "GET", "/", headers={"Host": "attacker.example:7860"}), 400, _no_cors),
    ServerRow("a same-origin POST still works",
              lambda s: request(s["port"], "POST", "/gradio_api/call/by_text", json.dumps({"data": ["a", 3]}).encode(),
                                {"Origin": f"http://127.0.0.1:{s['port']}", "Content-Type": "application/json"}), 200),
]  # fmt: skip


@pytest.mark.parametrize("row", SERVER_ROWS, ids=[row.name for row in SERVER_ROWS])
def test_server_case(row: ServerRow, served):
    status, headers, body = row.run(served)
    assert status == row.status, body[:300]
    row.check(headers, body)


def test_uploads_are_refused_when_the_page_has_no_upload_control(served, monkeypatch):
    """The upload policy for pages without an upload component: every upload is refused (403), even a tiny one,
    and nothing is stored; the search page itself takes uploads within its cap (the rows above)."""
    from search import app as app_module

    original = app_module.build_blocks

    def without_upload(index, max_upload_bytes):
        blocks = original(index, max_upload_bytes)
        for key, block in list(blocks.blocks.items()):
            if type(block).__name__ == "File":
                block.interactive = False  # shown, but no longer an upload control
        return blocks

    monkeypatch.setattr(app_module, "build_blocks", without_upload)
    app = app_module.create_app(served["index"], max_upload_bytes=1 << 20)
    with running(app) as port:
        assert upload(port, 10)[0] == 403
        assert upload(port, 5 << 20)[0] in (403, 413)
        assert not [p for p in Path(app.state.temp_dir).rglob("*") if p.is_file()]
    assert not os.path.exists(app.state.temp_dir)


@pytest.mark.timeout(300)
def test_readers_never_see_a_half_committed_index(base_index, clips, model_dir, tmp_path):
    """A reader looping on load + search while commits replace parts and FAISS files: no error, ever."""
    from search import VideoIndex
    from search.indexer import index_library

    lib, idx = tmp_path / "lib", tmp_path / "idx"
    shutil.copytree(base_index[0], lib)
    errors, loads, stop = [], [0], threading.Event()
    index_library(str(lib), str(model_dir), idx, batch_size=2, num_workers=0, chunk_size=1, show_progress=False)

    def reader():
        while not stop.is_set():
            try:
                index = VideoIndex.load(idx)
                index.search_embeddings(np.ones((1, 16), np.float32) / 4, k=2)
                loads[0] += 1
            except Exception as error:  # noqa: BLE001 -- any failure is the finding
                errors.append(repr(error))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for number in range(3):  # each run rewrites a part, the FAISS file and the manifest, and removes the old
            shutil.copy(clips / f"c{(number + 3) % 5}.mp4", lib / "clip0.mp4")
            index_library(str(lib), str(model_dir), idx, batch_size=2, num_workers=0, chunk_size=1, show_progress=False)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors, errors[:3]
    assert loads[0] > 3
