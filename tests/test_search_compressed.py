"""The compressed `ivfpq` index kind: recall on text-like queries across a modality gap, on-disk lists and
vectors, a build from two processes' parts, a killed merge that resumes, and HNSW refused at scale."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from test_search import NUM_CLIPS, QUERY, free_port, save_model, write_clip

REPO = Path(__file__).resolve().parents[1]


def gap_data(count: int, dim: int, queries: int, seed: int):
    """Clustered unit vectors on one side of a modality gap, text-like queries of the same clusters on the other."""
    rng = np.random.default_rng(seed)
    unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)  # noqa: E731
    centers, (video, text) = unit(rng.normal(size=(64, dim))), unit(rng.normal(size=(2, dim)))

    def draw(n, mean):
        return unit(0.7 * mean + centers[rng.integers(0, 64, n)] + 0.9 * rng.normal(size=(n, dim)) / np.sqrt(dim))

    return draw(count, video), draw(queries, text), draw(queries, text)


def test_recall_on_text_queries_meets_the_target_with_lists_and_vectors_on_disk(tmp_path):
    from search.ann import recall_at_k
    from search.compressed import CompressedIndex, build_compressed

    vectors, tuning, queries = gap_data(6000, 64, 200, seed=0)
    blocks = lambda: ((s, min(s + 1000, len(vectors)), lambda s=s: vectors[s : s + 1000]) for s in range(0, 6000, 1000))  # noqa: E731
    settings = build_compressed(tmp_path / "ivfpq-x", len(vectors), 64, blocks, tuning)
    assert settings["recall_at_10"] >= 0.95 and settings["m"] == 8 and settings["nbits"] == 8

    index = CompressedIndex(tmp_path / "ivfpq-x", settings)
    truth = faiss.knn(queries, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]  # exact float32
    recall = recall_at_k(index.search(queries, 10)[1], truth)
    assert recall >= 0.95, recall  # unseen text-like queries
    index.set_params(settings["nprobe"], 10)  # the codes alone, without re-ranking: the modality gap shows
    assert recall_at_k(index.search(queries, 10)[1], truth) < recall
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index.index).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists) and lists.read_only
    np.testing.assert_allclose(index.reconstruct(5), vectors[5], atol=1e-3)  # float16 on disk
    assert not (tmp_path / "ivfpq-x" / "blocks").exists()
    assert build_compressed(tmp_path / "ivfpq-x", len(vectors), 64, blocks, tuning) == settings  # built: reused


# --------------------------------------------------------------------------- on a library, through the CLI


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("library")
    records = [{"file_name": f"clip {n}.mp4", "caption": write_clip(folder / f"clip {n}.mp4", seed=n)}
               for n in range(NUM_CLIPS)]  # fmt: skip
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return save_model(tmp_path_factory.mktemp("model"), tiny_tokenizer, seed=0)


def command(library: Path, model: Path, output: Path) -> list[str]:
    return ["-m", "search", "index", str(library), "--model", str(model), "--output", str(output), "--index",
            "ivfpq", "--batch_size", "2", "--chunk_size", "2", "--num_workers", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def one_process(library, model_dir, tmp_path_factory) -> Path:
    from search.cli import main

    output = tmp_path_factory.mktemp("one") / "idx"
    main(command(library, model_dir, output)[2:])
    return output


def results(index_dir: Path, library: Path) -> list:
    from search import VideoIndex

    index = VideoIndex.load(index_dir)
    found = [index.search(text=QUERY, k=5), index.search(video=library / "clip 3.mp4", k=5), index.search(row=index.row_of(library / "clip 1.mp4"), k=5)]
    return [[(r.path, round(r.score, 4)) for r in hits] for hits in found]


def test_the_library_index_is_ivfpq_tuned_on_its_captions(one_process, library, capfd):
    from search.cli import main

    capfd.readouterr()
    main(["search", str(one_process), QUERY, "-k", "3", "--json"])
    assert len(json.loads(capfd.readouterr().out)) == 3  # nothing faiss prints reaches stdout
    manifest = json.loads((one_process / "manifest.json").read_text())
    settings = manifest["index"]
    assert settings["kind"] == "ivfpq" and settings["tuning_queries_from"] == "captions"
    assert settings["file"].startswith("ivfpq-") and (one_process / settings["file"]).is_file()
    assert manifest["counts"]["videos"] == NUM_CLIPS
    found = results(one_process, library)
    assert found[1][0][0] == str(library / "clip 3.mp4")  # an indexed video finds itself first
    assert found[1][0][1] == pytest.approx(1.0, abs=1e-3)  # (its vector stored as float16)
    assert [p for p, _ in found[2]][0] == str(library / "clip 1.mp4")


@pytest.mark.timeout(300)
def test_two_process_parts_build_equals_one_process(one_process, library, model_dir, tmp_path):
    output = tmp_path / "idx"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(free_port()), *command(library, model_dir, output)]  # fmt: skip
    completed = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=280)
    assert completed.returncode == 0, completed.stderr[-3000:]
    manifest = json.loads((output / "manifest.json").read_text())
    assert {Path(p).name.split("-r")[-1][:3] for p in manifest["parts"]} == {"000", "001"}
    assert results(output, library) == results(one_process, library)


@pytest.mark.timeout(300)
def test_a_killed_merge_resumes_from_its_finished_blocks(one_process, library, model_dir, tmp_path, caplog):
    from search.cli import main

    output = tmp_path / "idx"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "_CENTERCLIP_ADD_CHUNK": "3",
           "_CENTERCLIP_PAUSE_AFTER_BLOCK": "60"}  # fmt: skip
    process = subprocess.Popen([sys.executable, *command(library, model_dir, output)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 240
    while not list(output.glob("ivfpq-*/blocks/block-000000.faiss")) and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it was killed"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    folder = next(output.glob("ivfpq-*"))
    assert not (output / "manifest.json").exists() and not (folder / "index.faiss").exists()
    trained = (folder / "trained.faiss").stat().st_mtime_ns

    os.environ["_CENTERCLIP_ADD_CHUNK"] = "3"
    try:
        with caplog.at_level(logging.INFO, logger="search.compressed"):
            main(command(library, model_dir, output)[2:])
    finally:
        del os.environ["_CENTERCLIP_ADD_CHUNK"]
    encoded = [r.getMessage() for r in caplog.records if "encoded" in r.getMessage()]
    assert not any("block 0 " in m for m in encoded) and any("block 1 " in m for m in encoded), encoded
    assert not any("writing exact vectors" in r.getMessage() for r in caplog.records)  # all rows were on disk
    assert (folder / "trained.faiss").stat().st_mtime_ns == trained  # not trained again
    assert json.loads((output / "manifest.json").read_text())["index"]["file"].startswith(folder.name)
    assert results(output, library) == results(one_process, library)


def test_hnsw_is_refused_above_its_size_before_any_encoding(library, model_dir, tmp_path, monkeypatch):
    from search import ann
    from search.indexer import index_library

    monkeypatch.setattr(ann, "HNSW_MAX", NUM_CLIPS - 1)
    with pytest.raises(ann.IndexTooLargeError, match="--index ivfpq"):
        index_library(str(library), str(model_dir), tmp_path / "idx", kind="hnsw", show_progress=False)
    assert not list((tmp_path / "idx").rglob("*.parquet"))  # refused before encoding anything
