"""Video search: index, search (CLI and Python), incremental updates, resume after SIGKILL, the lock, model
fingerprints, two processes, index kinds, and the web page in a real headless Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_models import tiny_centerclip_config

REPO = Path(__file__).resolve().parents[1]
NUM_CLIPS = 8
QUERY = "a red 3 moves left"
UPLOAD_CAP = 2 * 2**20
SERVER_TEMP_DIRS: list[str] = []


# ------------------------------------------------------------------------------------------------- fixtures


def save_model(folder: Path, tokenizer, seed: int) -> Path:
    from modeling_centerclip import CenterCLIPModel, CenterCLIPProcessor

    torch.manual_seed(seed)
    text = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    config = tiny_centerclip_config()
    config.text_config.update(text)
    CenterCLIPModel(config).save_pretrained(folder)
    CenterCLIPProcessor(tokenizer=tokenizer, num_frames=4, image_size=32, max_length=16).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return save_model(tmp_path_factory.mktemp("model"), tiny_tokenizer, seed=0)


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return save_model(tmp_path_factory.mktemp("other_model"), tiny_tokenizer, seed=1)


def write_clip(path: Path, seed: int) -> str:
    """A demo-corpus clip (coloured digit or shape moving) with its caption."""
    from training.demo_corpus import random_spec, render_clip, write_mp4

    rng = np.random.default_rng(seed)
    spec = random_spec(rng)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(str(path), render_clip(spec, num_frames=8, size=64, rng=rng), fps=8)
    return spec.caption


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """A videofolder: 8 clips (two under a folder name with a space and non-ASCII letters) and one corrupt file."""
    folder = tmp_path_factory.mktemp("library")
    records = []
    for number in range(NUM_CLIPS):
        name = f"clip {number}.mp4" if number < 6 else f"süb dir/vidéo {number}.mp4"
        records.append({"file_name": name, "caption": write_clip(folder / name, seed=number), "take": number})
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    records.append({"file_name": "broken.mp4", "caption": "a corrupt file", "take": -1})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return folder


@pytest.fixture(scope="module")
def built(library, model_dir, tmp_path_factory) -> Path:
    """The library indexed once through the CLI (in this process), shared by the tests."""
    from search.cli import main

    output = tmp_path_factory.mktemp("index") / "idx"
    main(["index", str(library), "--model", str(model_dir), "--output", str(output), "--batch_size", "3",
          "--num_workers", "1", "--chunk_size", "3"])  # fmt: skip
    return output


def stored_rows(index_dir: Path) -> dict[str, np.ndarray]:
    """path -> embedding of the rows an index's manifest lists."""
    from search.storage import read_manifest, read_rows

    table, vectors = read_rows([index_dir / p for p in read_manifest(index_dir)["parts"]])
    return dict(zip(table.column("path").to_pylist(), vectors))


def assert_same_rows(left: dict, right: dict) -> None:
    assert sorted(left) == sorted(right)
    for path in left:
        np.testing.assert_allclose(left[path], right[path], atol=1e-5, err_msg=path)


def run_cli(capsys, *argv) -> str:
    from search.cli import main

    capsys.readouterr()
    main([str(a) for a in argv])
    return capsys.readouterr().out


# --------------------------------------------------------------------------------------- index and search


def test_index_stores_rows_manifest_and_skips_the_corrupt_file(built, library, model_dir):
    import datasets

    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["counts"]["videos"] == NUM_CLIPS and manifest["counts"]["skipped"] == 1
    assert [s["file_name"] for s in manifest["skipped"]] == ["broken.mp4"]
    assert re.search("decod|corrupt", manifest["skipped"][0]["reason"])
    assert manifest["dim"] == 16 and manifest["metric"] == "inner_product"
    assert manifest["library_root"] == str(library) and manifest["model"]["path"] == str(model_dir)
    assert len(manifest["model"]["fingerprint"]) == 16 and manifest["index"]["recall_at_10"] == 1.0
    assert len(manifest["parts"]) == 3  # chunks of 3 videos: 3 + 3 + 2 encoded, the corrupt one recorded in one

    # the parts are ordinary parquet: metadata and a float32 L2-normalised embedding in the same row
    rows = datasets.load_dataset("parquet", data_files=[str(built / p) for p in manifest["parts"]], split="train")
    assert len(rows) == NUM_CLIPS
    captions = {json.loads(line)["file_name"]: json.loads(line)["caption"]
                for line in (library / "metadata.jsonl").read_text().splitlines()}  # fmt: skip
    for row in rows:
        assert row["caption"] == captions[os.path.relpath(row["path"], library)]
        assert json.loads(row["metadata"])["take"] >= 0
        assert np.linalg.norm(row["embedding"]) == pytest.approx(1.0, abs=1e-5)


def test_text_search_cli_json_matches_the_full_model(built, model_dir, capsys):
    from modeling_centerclip import CenterCLIPModel, CenterCLIPProcessor

    results = json.loads(run_cli(capsys, "search", built, QUERY, "-k", 5, "--json"))
    assert len(results) == 5 and all({"path", "score", "video_id", "caption", "metadata"} <= set(r) for r in results)
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)

    # the text tower alone (what a query loads) gives the full model's normalised text embedding
    model = CenterCLIPModel.from_pretrained(model_dir).eval()
    tokens = CenterCLIPProcessor.from_pretrained(model_dir)(text=[QUERY])
    with torch.no_grad():
        text = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    query = torch.nn.functional.normalize(text.pooler_output, dim=-1)[0].numpy()
    rows = stored_rows(built)
    expected = sorted(rows, key=lambda path: -float(rows[path] @ query))[:5]
    assert [r["path"] for r in results] == expected
    np.testing.assert_allclose([r["score"] for r in results], [rows[p] @ query for p in expected], atol=1e-5)

    table = run_cli(capsys, "search", built, QUERY, "-k", 2)
    assert results[0]["path"] in table and results[0]["caption"] in table


def test_python_api_search_by_text_and_by_example(built, library, tmp_path):
    from search import VideoIndex

    index = VideoIndex.load(built)
    assert len(index) == NUM_CLIPS
    by_text = index.search(text=QUERY, k=3)
    assert [r.rank for r in by_text] == [1, 2, 3] and by_text[0].score >= by_text[1].score >= by_text[2].score
    names = [name for name, _ in index._text_encoder.model.named_parameters()]  # a text query loads the text tower only
    assert names and not any("vision" in name or "visual" in name for name in names)

    example = library / "süb dir" / "vidéo 7.mp4"
    indexed = index.search(video=str(example), k=3)
    assert indexed[0].path == str(example) and indexed[0].score == pytest.approx(1.0, abs=1e-5)
    assert indexed[0].metadata["take"] == 7 and indexed[0].video_id == "vidéo 7"
    assert index._video_model is None  # an indexed example's stored embedding is used, no model loaded

    copy = tmp_path / "a copy.mp4"  # not indexed: decoded and encoded by the video tower
    shutil.copy(example, copy)
    encoded = index.search(video=copy, k=3)
    assert encoded[0].path == str(example) and encoded[0].score == pytest.approx(1.0, abs=1e-4)
    assert [r.path for r in encoded] == [r.path for r in indexed]

    with pytest.raises(ValueError, match="exactly one"):
        index.search(text=QUERY, video=str(example))


def test_video_search_cli_and_console_script(built, library, capsys):
    from importlib.metadata import entry_points

    example = library / "clip 2.mp4"
    results = json.loads(run_cli(capsys, "search", built, "--video", example, "-k", 3, "--json"))
    assert results[0]["path"] == str(example) and len(results) == 3
    # `centerclip` is installed as a console script running the same entry point (`python -m search` in the
    # SIGKILL test below runs it in a subprocess)
    assert entry_points(group="console_scripts")["centerclip"].value == "search.cli:main"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(capsys, "search", built, "-k", 3)  # neither a text nor --video
    assert exit_info.value.code == 2 and "text query, --video PATH or --image" in capsys.readouterr().err


def test_search_command_prints_results_and_no_third_party_noise(built, library, tmp_path):
    """`centerclip search` as a user runs it, by text and by a video outside the index (decoded): the results on
    stdout and nothing on stderr (no decord/ffmpeg lines, no weight-loading bar, no FAISS loader messages)."""
    outside = tmp_path / "outside.mp4"
    shutil.copy(library / "clip 2.mp4", outside)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for query in ([QUERY], ["--video", str(outside)]):
        done = subprocess.run([sys.executable, "-m", "search", "search", str(built), *query, "-k", "3"], env=env,
                              capture_output=True, text=True, timeout=240)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert len(done.stdout.strip().splitlines()) == 1 + 3  # the header and 3 results
        assert done.stderr == "", done.stderr[-3000:]


# ------------------------------------------------------------------------------- updates, resume, the lock


def index_folder(source: Path, model: Path, output: Path, **kwargs) -> dict:
    from search.indexer import index_library

    settings = dict(batch_size=2, num_workers=0, chunk_size=2, show_progress=False) | kwargs
    return index_library(str(source), str(model), output, **settings)


def test_incremental_reindex_encodes_only_new_and_changed_files_and_drops_deleted(library, model_dir, tmp_path):
    folder = tmp_path / "plain"  # a plain folder of videos (no metadata)
    shutil.copytree(library, folder)
    (folder / "metadata.jsonl").unlink()
    first = index_folder(folder, model_dir, tmp_path / "idx")
    assert first["counts"] == {**first["counts"], "videos": NUM_CLIPS, "skipped": 1, "encoded_this_run": NUM_CLIPS}

    from search.indexer import run_id

    assert run_id() != run_id()  # runs within one second (as here) never overwrite each other's parts
    again = index_folder(folder, model_dir, tmp_path / "idx")
    assert again["counts"]["encoded_this_run"] == 0 and again["counts"]["videos"] == NUM_CLIPS

    write_clip(folder / "new clip.mp4", seed=100)  # added
    write_clip(folder / "clip 1.mp4", seed=101)  # changed
    (folder / "clip 3.mp4").unlink()  # deleted
    updated = index_folder(folder, model_dir, tmp_path / "idx")
    assert updated["counts"]["encoded_this_run"] == 2
    assert updated["counts"]["videos"] == NUM_CLIPS and updated["counts"]["skipped"] == 1

    fresh = index_folder(folder, model_dir, tmp_path / "fresh")
    assert_same_rows(stored_rows(tmp_path / "idx"), stored_rows(tmp_path / "fresh"))
    parts_on_disk = sorted(p.name for p in (tmp_path / "idx" / "parts").iterdir())
    assert parts_on_disk == sorted(Path(p).name for p in updated["parts"])  # stale parts were removed
    assert fresh["counts"]["videos"] == NUM_CLIPS


def test_a_frame_store_indexes_like_its_videos(built, library, model_dir, tmp_path):
    from modeling_centerclip import CenterCLIPProcessor
    from training.prepare_frames import prepare_frames

    processor = CenterCLIPProcessor.from_pretrained(model_dir)
    store = tmp_path / "store"  # the frames the processor would sample, at its rate and size
    prepare_frames(str(library), str(store), fps=processor.fps, size=processor.image_size, show_progress=False)
    summary = index_folder(store, model_dir, tmp_path / "idx")
    from_store, from_videos = stored_rows(tmp_path / "idx"), stored_rows(built)
    assert sorted(from_store) == sorted(from_videos) and summary  # the corrupt file never reached the store
    for path, embedding in from_videos.items():
        assert 0.98 < float(from_store[path] @ embedding), path  # the same videos, up to the JPEG error
    assert any(not np.array_equal(from_store[p], e) for p, e in from_videos.items()), "frames came from the store"


def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(built, library, model_dir, tmp_path):
    output = tmp_path / "idx"
    env = {**os.environ, "_CENTERCLIP_PAUSE_AFTER_PART": "60", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "search", "index", str(library), "--model", str(model_dir), "--output",
               str(output), "--batch_size", "2", "--chunk_size", "2", "--num_workers", "0"]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((output / "parts").glob("[!.]*.parquet")) and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # killed while paused after its first part
    process.wait()
    finished = list((output / "parts").glob("[!.]*.parquet"))
    assert len(finished) == 1
    from search.storage import read_part_summary

    done = len(read_part_summary(finished[0])["states"])
    assert not (output / "manifest.json").exists()  # nothing half-done is searchable
    from search import VideoIndex

    with pytest.raises(FileNotFoundError, match="manifest.json"):
        VideoIndex.load(output)

    resumed = index_folder(library, model_dir, output)  # the kernel released the dead run's lock
    assert resumed["counts"]["encoded_this_run"] == NUM_CLIPS - done  # the finished part was not re-encoded
    assert resumed["counts"]["skipped"] == 1
    assert_same_rows(stored_rows(output), stored_rows(built))


def test_a_second_writer_is_refused(library, model_dir, tmp_path):
    from search.storage import IndexLock, IndexLockedError

    with IndexLock(tmp_path / "idx"):
        with pytest.raises(IndexLockedError, match=f"another process \\(pid {os.getpid()}"):
            index_folder(library, model_dir, tmp_path / "idx")
    assert index_folder(library, model_dir, tmp_path / "idx")["counts"]["videos"] == NUM_CLIPS  # free again


def test_model_mismatch_is_refused_naming_both(built, other_model_dir, library, capsys, tmp_path):
    from search.models import ModelMismatchError

    with pytest.raises(SystemExit) as exit_info:
        run_cli(capsys, "search", built, QUERY, "--model", other_model_dir)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["model"]["fingerprint"] in message and str(other_model_dir) in message
    assert "--allow-model-mismatch" in message

    forced = json.loads(run_cli(capsys, "search", built, QUERY, "--model", other_model_dir, "--allow-model-mismatch",
                                "--json", "-k", 2))  # fmt: skip
    assert len(forced) == 2

    copy = tmp_path / "idx"
    shutil.copytree(built, copy)
    with pytest.raises(ModelMismatchError, match="--rebuild"):
        index_folder(library, other_model_dir, copy)


# ------------------------------------------------------------------------------------------- index kinds


def test_fingerprint_follows_weights_overrides_and_saved_config_only(model_dir, tmp_path):
    from search.models import ModelSpec

    base = ModelSpec(str(model_dir)).fingerprint
    assert ModelSpec(str(model_dir)).fingerprint == base
    assert ModelSpec(str(model_dir), {"num_centers": 5}).fingerprint != base
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    assert ModelSpec(str(copy)).fingerprint == base  # where the folder lives does not matter
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "num_centers": 5}))
    assert ModelSpec(str(copy)).fingerprint == ModelSpec(str(model_dir), {"num_centers": 5}).fingerprint


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_are_tuned_to_the_recall_target(kind):
    from search.ann import build_index, recall_at_k, tuning_queries

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(20, 32))
    vectors = (centers[rng.integers(0, 20, 4000)] + 0.3 * rng.normal(size=(4000, 32))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index, settings = build_index(vectors, kind)
    assert settings["recall_at_10"] >= 0.95 and settings["ntotal"] == 4000
    assert ("nprobe" in settings) == (kind == "ivf") and ("efSearch" in settings) == (kind == "hnsw")

    queries = tuning_queries(vectors, seed=1)  # other queries than the tuning ones
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    assert recall_at_k(index.search(queries, 10)[1], truth) >= 0.9


def test_index_kind_is_stored_and_used(library, model_dir, tmp_path, capsys):
    manifest = index_folder(library, model_dir, tmp_path / "idx", kind="hnsw")
    assert manifest["index"]["kind"] == "hnsw" and manifest["index"]["efSearch"] >= 16
    results = json.loads(run_cli(capsys, "search", tmp_path / "idx", QUERY, "--json", "-k", 3))
    assert len(results) == 3


# ------------------------------------------------------------------------------------------ two processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_two_process_accelerate_launch_equals_one_process(built, library, model_dir, tmp_path):
    output = tmp_path / "idx"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), "-m", "search", "index", str(library), "--model",
               str(model_dir), "--output", str(output), "--batch_size", "2", "--chunk_size", "2", "--num_workers", "0"]  # fmt: skip
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=280)
    assert completed.returncode == 0, completed.stderr[-3000:]
    manifest = json.loads((output / "manifest.json").read_text())
    ranks = {Path(part).name.split("-r")[-1][:3] for part in manifest["parts"]}
    assert ranks == {"000", "001"}  # each process wrote its own parts
    assert manifest["counts"]["encoded_this_run"] == NUM_CLIPS and manifest["counts"]["skipped"] == 1
    assert_same_rows(stored_rows(output), stored_rows(built))


# --------------------------------------------------------------------------------------------- the library


def test_library_sources(library, tmp_path):
    from search.library import list_library

    videos, root, _ = vars(list_library(str(library))).values()
    assert root == str(library) and len(videos) == NUM_CLIPS + 1
    assert {v.caption for v in videos if v.video_id == "broken"} == {"a corrupt file"}
    plain = tmp_path / "plain"
    shutil.copytree(library, plain)
    (plain / "metadata.jsonl").unlink()
    (plain / "notes.txt").write_text("not a video")
    videos = list_library(str(plain)).videos
    assert [v.video_id for v in videos][-2:] == ["süb dir/vidéo 6", "süb dir/vidéo 7"] and len(videos) == NUM_CLIPS + 1
    with pytest.raises(FileNotFoundError, match="neither a folder nor a corpus"):
        list_library(str(tmp_path / "missing"))


# ------------------------------------------------------------------------------------------- the web page


@pytest.fixture(scope="module")
def server(built):
    from search import VideoIndex
    from search.app import create_app

    index = VideoIndex.load(built)
    app = create_app(index, max_upload_bytes=UPLOAD_CAP)
    SERVER_TEMP_DIRS.append(app.state.temp_dir)  # the app's own Gradio upload folder (removed at shutdown)
    with running(app) as port:
        yield index, f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def running(app):
    """`app` served by uvicorn on 127.0.0.1 in a thread (shut down, lifespan included, on exit); yields the port."""
    import uvicorn

    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.1)
    assert uv.started
    try:
        yield port
    finally:
        uv.should_exit = True
        thread.join(timeout=30)


def test_page_serves_indexed_videos_only(server, library, built):
    import urllib.error
    import urllib.request

    index, url = server

    def status(path: str) -> int:
        try:
            with urllib.request.urlopen(url + path, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    assert status("/video/0") == 200 and status("/poster/0") == 200
    assert status(f"/video/{len(index)}") == 404 and status("/video/-1") == 404
    assert status("/video/..%2F..%2Fetc%2Fpasswd") in (404, 422)
    for other in (library / "metadata.jsonl", library / "broken.mp4", built / "manifest.json", Path("/etc/passwd")):
        assert status(f"/gradio_api/file={other}") in (403, 404), other
        assert status(f"/file={other}") in (403, 404), other


@pytest.mark.timeout(180)
def test_web_page_in_headless_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    index, url = server
    expected = index.search(text=QUERY, k=8)
    external = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                  "--disable-domain-reliability", "--disable-sync", "--no-first-run", "--metrics-recording-only"],
        )  # fmt: skip
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("request", lambda r: None if r.url.startswith(("http://127.0.0.1", "data:", "blob:")) else external.append(r.url))
        page.goto(url, wait_until="load")
        page.wait_for_selector("#query textarea, #query input", timeout=60_000)
        page.locator("#query textarea, #query input").first.fill(QUERY)
        page.locator("#search").click()
        page.wait_for_function("() => { const v = document.querySelector('#result-0 video');"
                               " return v !== null && v.readyState >= 2; }", timeout=60_000)  # fmt: skip
        top = page.locator("#result-0 .result")
        assert top.get_attribute("data-row") == str(expected[0].row)
        assert page.locator("#result-0 .path").inner_text() == expected[0].path
        assert expected[0].caption in page.locator("#result-0 .caption").inner_text()
        assert "ms" in page.locator("#status").inner_text()
        shown = page.eval_on_selector_all(".result", "cards => cards.map(c => c.dataset.row)")
        assert shown == [str(r.row) for r in expected]
        page.wait_for_function("() => [...document.querySelectorAll('.result video')].every(v => v.readyState >= 2)",
                               timeout=60_000)  # fmt: skip
        # The README's screenshot: refreshed with UPDATE_SCREENSHOT=1, else written beside the test's files so a
        # plain test run leaves the working tree clean.
        shot = REPO / "docs" / "search_page.png" if os.environ.get("UPDATE_SCREENSHOT") == "1" else tmp_path / "page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000

        # "more like this" on the third result: that video comes first, with score 1
        third = expected[2]
        page.locator("#like-2").click()
        page.wait_for_function(f"() => document.querySelector('#result-0 .result')?.dataset.row === '{third.row}'",
                               timeout=30_000)  # fmt: skip
        assert "score 1.000" in page.locator("#result-0 .score").inner_text()
        # the text box no longer shows a query that did not run; the status says what did
        assert page.locator("#query textarea, #query input").first.input_value() == ""
        assert f"videos like {third.video_id}" in page.locator("#status").inner_text()
        assert "stored embedding" in page.locator("#status").inner_text()
        browser.close()
    assert not external, external


# --------------------------------------------------------------------------------- search by image or video


@pytest.fixture(scope="module")
def still(library, tmp_path_factory) -> Path:
    """A PNG of the middle frame of `clip 3.mp4`."""
    import decord
    from PIL import Image

    reader = decord.VideoReader(str(library / "clip 3.mp4"))
    path = tmp_path_factory.mktemp("images") / "a frame.png"
    Image.fromarray(reader[len(reader) // 2].asnumpy()).save(path)
    return path


def test_image_query_python_and_cli_through_get_image_features(built, model_dir, still, tmp_path, capsys):
    from PIL import Image

    from modeling_centerclip import CenterCLIPModel, CenterCLIPProcessor
    from search import VideoIndex

    index = VideoIndex.load(built)
    results = index.search(image=still, k=NUM_CLIPS)
    # independently: the processor's own video path on a one-frame video, CLIP's image tower, normalised
    model = CenterCLIPModel.from_pretrained(model_dir).eval()
    processor = CenterCLIPProcessor.from_pretrained(model_dir)
    frame = np.asarray(Image.open(still).convert("RGB"))[None]
    with torch.inference_mode():
        pixels = processor(videos=[frame], return_tensors="pt")["pixel_values"][0, :1]
        query = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)[0]
    rows = stored_rows(built)
    expected = sorted(rows, key=lambda p: -float(rows[p] @ query.numpy()))
    assert [r.path for r in results] == expected
    np.testing.assert_allclose([r.score for r in results], [rows[p] @ query.numpy() for p in expected], atol=1e-5)
    assert index.search(image=Image.open(still), k=3)[0].path == expected[0]  # a PIL image works too

    listed = json.loads(run_cli(capsys, "search", built, "--image", still, "-k", 3, "--json"))
    assert [r["path"] for r in listed] == expected[:3]

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    for path, reason in ((broken, "not a decodable image"), (tmp_path / "missing.jpg", "not found")):
        with pytest.raises(SystemExit) as exit_info:
            run_cli(capsys, "search", built, "--image", path)
        error = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(error.splitlines()) == 1 and str(path) in error and reason in error
    with pytest.raises(SystemExit):
        run_cli(capsys, "search", built, QUERY, "--image", still)  # two queries at once
    assert "one of them" in capsys.readouterr().err


def test_an_upload_is_decoded_searched_and_deleted(built, library, still, tmp_path):
    from search import VideoIndex
    from search.app import search_upload

    index = VideoIndex.load(built)
    uploads = tmp_path / "gradio"
    for source, what in ((still, "the image a frame.png"), (library / "clip 5.mp4", "the video clip 5.mp4")):
        path = uploads / "0123abcd" / source.name
        path.parent.mkdir(parents=True)
        shutil.copy(source, path)
        results, _, described = search_upload(index, str(path), 3, str(uploads))
        assert described == what and len(results) == 3
        assert not path.exists() and not path.parent.exists()  # deleted with its upload folder
    assert results[0].path == str(library / "clip 5.mp4") and results[0].score == pytest.approx(1.0, abs=1e-4)

    outside = tmp_path / "not an upload.png"  # only files inside the upload folder are ever deleted
    shutil.copy(still, outside)
    search_upload(index, str(outside), 3, str(uploads))
    assert outside.exists()
    for name, content, reason in (("big.png", b"0" * 2048, "larger than the upload limit"),
                                  ("notes.txt", b"hello", "not an image"),
                                  ("bad.mp4", b"\x00\x00\x00\x18ftypmp42 garbage", "Cannot read video bad.mp4")):  # fmt: skip
        path = uploads / "ffff" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        with pytest.raises(ValueError, match=reason) as error:
            search_upload(index, str(path), 3, str(uploads), max_bytes=1024)
        assert str(uploads) not in str(error.value) and not path.exists()


def _chromium(playwright):
    return playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--no-first-run",
                                      "--disable-background-networking", "--disable-component-update"])  # fmt: skip


@pytest.mark.timeout(240)
def test_page_searches_by_an_uploaded_image_or_video_and_deletes_it(server, library, still, tmp_path):
    from playwright.sync_api import sync_playwright

    index, url = server
    expected = index.search(image=still, k=8)
    uploads = Path(SERVER_TEMP_DIRS[-1])
    clip = tmp_path / "my clip.mp4"  # not an indexed path: encoded by the video tower
    shutil.copy(library / "clip 4.mp4", clip)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with sync_playwright() as playwright:
        browser = _chromium(playwright)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(url, wait_until="load")
        page.wait_for_selector("#upload input[type=file]", state="attached", timeout=60_000)
        box = page.locator("#query textarea, #query input").first
        box.fill("a query that is not run")

        def upload(path: Path, wait_for: str) -> str:
            page.locator("#upload input[type=file]").set_input_files(str(path))
            page.wait_for_function(f"() => document.querySelector('#status')?.innerText.includes({json.dumps(wait_for)})",
                                   timeout=60_000)  # fmt: skip
            return page.locator("#status").inner_text()

        status = upload(still, "the image a frame.png")
        assert box.input_value() == ""  # cleared: the page shows what it searched by
        # The status and the result cards are separate components: the cards may render a moment later.
        page.wait_for_function("n => document.querySelectorAll('.result').length === n", arg=len(expected),
                               timeout=30_000)  # fmt: skip
        shown = page.eval_on_selector_all(".result", "cards => cards.map(c => c.dataset.row)")
        assert shown == [str(r.row) for r in expected]
        assert f"{len(expected)} results" in status

        status = upload(clip, "the video my clip.mp4")
        page.wait_for_function("() => document.querySelector('#result-0 .result')?.dataset.row === "
                               f"'{index.row_of(library / 'clip 4.mp4')}'", timeout=30_000)  # fmt: skip
        assert "score 1.000" in page.locator("#result-0 .score").inner_text()

        status = upload(broken, "Error")
        assert "broken.png" in status and "not a decodable image" in status and str(uploads) not in status
        browser.close()
    left = [p for p in uploads.rglob("*") if p.is_file() and p.suffix in (".png", ".mp4")]
    assert not left, left  # every uploaded file was deleted after its query


def test_an_oversized_upload_is_refused(server):
    import urllib.error
    import urllib.request

    _, url = server
    body = b"--x\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n" \
           b"Content-Type: image/png\r\n\r\n" + b"0" * (UPLOAD_CAP + 1024) + b"\r\n--x--\r\n"  # fmt: skip
    request = urllib.request.Request(url + "/gradio_api/upload", data=body,
                                     headers={"Content-Type": "multipart/form-data; boundary=x"})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=30)
    assert error.value.code in (400, 413)
    uploads = Path(SERVER_TEMP_DIRS[-1])
    assert not [p for p in uploads.rglob("big.png")]
