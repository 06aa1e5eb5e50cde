"""Corpus loaders on the real split files (shipped in training/splits) with small generated stand-in videos."""

import csv
import gzip
import json
import logging
import os
import pickle

import pytest
from datasets import DatasetDict

from training.corpora import (
    index_videos,
    load_activitynet,
    load_corpus,
    load_lsmdc,
    load_msrvtt,
    load_msvd,
    load_videofolder,
    read_msvd_captions,
)


def place_videos(folder, names, content: bytes):
    """Copy one tiny video under each relative name (`a.mp4`, `movie/clip.avi`, ...)."""
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def missing_warnings(caplog):
    return [r.getMessage() for r in caplog.records if "not found under" in r.getMessage()]


def check_columns(corpus: DatasetDict):
    for split in corpus.values():
        assert {"video_id", "video", "caption"} <= set(split.column_names)
        for row in split:
            assert row["video"].endswith(tuple(f"{row['video_id']}{ext}" for ext in (".mp4", ".avi", ".webm", ".mkv")))


# ---------------------------------------------------------------------------------------------------- MSR-VTT


@pytest.fixture(scope="module")
def msrvtt(splits_dir, tmp_path_factory, tiny_video_bytes):
    """Stand-in videos for 3 train and 3 test ids, and a stand-in MSRVTT_data.json covering every train video."""
    root = tmp_path_factory.mktemp("msrvtt")
    train_ids = [r["video_id"] for r in csv.DictReader(open(splits_dir / "msrvtt" / "MSRVTT_train.9k.csv"))]
    test_rows = list(csv.DictReader(open(splits_dir / "msrvtt" / "MSRVTT_JSFUSION_test.csv")))
    sentences = [{"video_id": v, "caption": f"caption {k} of {v}", "sen_id": 0} for v in train_ids for k in range(2)]
    (root / "MSRVTT_data.json").write_text(json.dumps({"videos": [], "sentences": sentences}))
    present = train_ids[:3] + [r["video_id"] for r in test_rows[:3]]
    place_videos(root / "videos", [f"{v}.mp4" for v in present], tiny_video_bytes)
    return root, train_ids, test_rows


def test_msrvtt_builds_train_and_1k_a_test_and_reports_missing_videos(msrvtt, splits_dir, caplog):
    root, train_ids, test_rows = msrvtt
    assert len(train_ids) == 9000 and len(test_rows) == 1000
    with caplog.at_level(logging.WARNING, logger="training.corpora"):
        corpus = load_msrvtt(root / "videos", splits_dir / "msrvtt", data_json=root / "MSRVTT_data.json")
    assert set(corpus) == {"train", "test"}
    assert corpus["train"]["video_id"] == train_ids[:3]
    assert corpus["train"][0]["caption"] == [f"caption 0 of {train_ids[0]}", f"caption 1 of {train_ids[0]}"]
    assert corpus["test"]["video_id"] == [r["video_id"] for r in test_rows[:3]]
    assert corpus["test"]["caption"] == [r["sentence"] for r in test_rows[:3]]  # 1k-A: one caption per video
    check_columns(corpus)
    warnings = missing_warnings(caplog)
    assert any("msrvtt train: 8997 of 9000 videos" in w and train_ids[3] in w for w in warnings)
    assert any("msrvtt test: 997 of 1000 videos" in w and test_rows[3]["video_id"] in w for w in warnings)


def test_msrvtt_7k_list_and_test_only_without_captions_file(msrvtt, splits_dir, caplog):
    root, _, _ = msrvtt
    with caplog.at_level(logging.WARNING, logger="training.corpora"):
        corpus = load_msrvtt(root / "videos", splits_dir / "msrvtt", data_json=root / "MSRVTT_data.json", train_list="7k")
    assert any("msrvtt train: " in w and "of 7010 videos" in w for w in missing_warnings(caplog))
    assert set(corpus["train"]["video_id"]) <= {"video0", "video1", "video2"}
    test_only = load_msrvtt(root / "videos", splits_dir / "msrvtt", data_json=root / "absent.json")
    assert set(test_only) == {"test"} and len(test_only["test"]) == 3
    with pytest.raises(ValueError, match="train_list"):
        load_msrvtt(root / "videos", splits_dir / "msrvtt", train_list="8k")


def test_missing_videos_raise_on_request_and_when_none_exist(msrvtt, splits_dir, tmp_path):
    root, _, _ = msrvtt
    with pytest.raises(FileNotFoundError, match="8997 of 9000 videos not found"):
        load_msrvtt(root / "videos", splits_dir / "msrvtt", data_json=root / "MSRVTT_data.json", on_missing="error")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="none of its 10000 videos was found"):
        load_msrvtt(tmp_path / "empty", splits_dir / "msrvtt", data_json=root / "MSRVTT_data.json")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_msrvtt(tmp_path / "nowhere", splits_dir / "msrvtt")


# ------------------------------------------------------------------------------------------------------- MSVD


def msvd_ids(splits_dir, name):
    return [line.strip() for line in open(splits_dir / "msvd" / name) if line.strip()]


@pytest.mark.parametrize("captions_format", ["pkl", "json", "txt"])
def test_msvd_reads_every_captions_format_and_the_three_splits(splits_dir, tmp_path, tiny_video_bytes, captions_format):
    lists = {s: msvd_ids(splits_dir, f) for s, f in (("train", "train_list.txt"), ("validation", "val_list.txt"),
                                                       ("test", "test_list.txt"))}
    assert [len(v) for v in lists.values()] == [1200, 100, 670]
    all_ids = [v for ids in lists.values() for v in ids]
    captions = {v: [f"{v} is shown", f"someone films {v}"] for v in all_ids}
    path = tmp_path / f"captions.{captions_format}"
    if captions_format == "pkl":  # CLIP4Clip's raw-captions.pkl holds word lists
        path.write_bytes(pickle.dumps({v: [c.split() for c in caps] for v, caps in captions.items()}))
    elif captions_format == "json":
        path.write_text(json.dumps(captions))
    else:  # AllVideoDescriptions.txt style
        path.write_text("# MSVD descriptions\n" + "".join(f"{v} {c}\n" for v, caps in captions.items() for c in caps))
    assert read_msvd_captions(path) == captions
    present = [ids[i] for ids in lists.values() for i in (0, 5)]
    place_videos(tmp_path / "YouTubeClips", [f"{v}.avi" for v in present], tiny_video_bytes)
    corpus = load_msvd(tmp_path / "YouTubeClips", splits_dir / "msvd", path)
    assert {s: corpus[s]["video_id"] for s in corpus} == {s: [ids[0], ids[5]] for s, ids in lists.items()}
    assert corpus["test"][1]["caption"] == captions[lists["test"][5]]  # every caption, for evaluation
    check_columns(corpus)


# ------------------------------------------------------------------------------------------------------ LSMDC


def test_lsmdc_parses_the_tab_separated_test_csv(splits_dir, tmp_path, tiny_video_bytes, caplog):
    rows = [line.rstrip("\n").split("\t") for line in open(splits_dir / "lsmdc" / "LSMDC16_challenge_1000_publictect.csv")]
    assert len(rows) == 1000 and all(len(r) == 6 for r in rows)
    # Clips live in one folder per movie: <movie>/<clip_id>.avi
    present = [rows[i][0] for i in (0, 1, 999)]
    place_videos(tmp_path / "clips", [f"{c.rsplit('_', 1)[0]}/{c}.avi" for c in present], tiny_video_bytes)
    with caplog.at_level(logging.WARNING, logger="training.corpora"):
        corpus = load_lsmdc(tmp_path / "clips", splits_dir / "lsmdc")
    assert set(corpus) == {"test"}  # only the split files present are built
    assert corpus["test"]["video_id"] == present
    assert corpus["test"]["caption"] == [rows[i][5] for i in (0, 1, 999)]
    assert any("lsmdc test: 997 of 1000 videos" in w for w in missing_warnings(caplog))
    check_columns(corpus)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "LSMDC16_annos_training.csv").write_text("clip_a\t0\t1\n")
    with pytest.raises(ValueError, match="LSMDC16_annos_training.csv:1: expected 6 tab-separated fields"):
        load_lsmdc(tmp_path / "clips", bad)


# ------------------------------------------------------------------------------------------------ ActivityNet


def test_activitynet_builds_paragraphs_and_finds_ids_with_or_without_prefix(splits_dir, tmp_path, tiny_video_bytes):
    train = json.loads(gzip.decompress((splits_dir / "activitynet" / "train.json.gz").read_bytes()))
    val_1 = json.loads(gzip.decompress((splits_dir / "activitynet" / "val_1.json.gz").read_bytes()))
    assert len(train) == 10009 and len(val_1) == 4917
    train_ids, test_ids = list(train)[:2], list(val_1)[:2]
    names = [f"{train_ids[0]}.mp4", f"{train_ids[1][2:]}.mkv", f"{test_ids[0]}.webm", f"{test_ids[1]}.mp4"]
    place_videos(tmp_path / "videos", names, tiny_video_bytes)
    corpus = load_activitynet(tmp_path / "videos", splits_dir / "activitynet")
    assert set(corpus) == {"train", "test"}  # val_1 is the evaluation split
    assert corpus["train"]["video_id"] == train_ids and corpus["test"]["video_id"] == test_ids
    assert corpus["train"]["video"][1].endswith(f"{train_ids[1][2:]}.mkv")  # found without the v_ prefix
    first = corpus["test"][0]
    assert first["caption"] == " ".join(s.strip() for s in val_1[test_ids[0]]["sentences"])
    assert "  " not in first["caption"] and first["duration"] == pytest.approx(val_1[test_ids[0]]["duration"])
    # A user's own folder of plain JSON reads the same; a truncated gzip file is an error naming it.
    own = tmp_path / "own_splits"
    own.mkdir()
    (own / "val_1.json").write_text(json.dumps(val_1))
    assert load_activitynet(tmp_path / "videos", own)["test"]["video_id"] == test_ids
    (own / "train.json.gz").write_bytes(gzip.compress(b'{"v_x": {}}')[:-9])
    with pytest.raises(ValueError, match=r"train\.json\.gz: not a complete gzip file"):
        load_activitynet(tmp_path / "videos", own)


def test_benchmark_loaders_default_to_the_shipped_split_files(splits_dir, tmp_path, tiny_video_bytes):
    """No `splits_dir`: every benchmark reads the split files that ship with the package (a fresh clone or an
    installed package has them), through `load_corpus` as the command lines call it."""
    from training.corpora import SPLITS_DIR

    assert os.path.samefile(SPLITS_DIR, splits_dir)
    test_ids = [r["video_id"] for r in csv.DictReader(open(splits_dir / "msrvtt" / "MSRVTT_JSFUSION_test.csv"))]
    msvd_test = msvd_ids(splits_dir, "test_list.txt")
    lsmdc_test = [line.split("\t")[0] for line in open(splits_dir / "lsmdc" / "LSMDC16_challenge_1000_publictect.csv")]
    val_1 = json.loads(gzip.decompress((splits_dir / "activitynet" / "val_1.json.gz").read_bytes()))
    place_videos(tmp_path / "videos", [f"{v}.mp4" for v in (test_ids[:2] + msvd_test[:2] + lsmdc_test[:2]
                                                              + list(val_1)[:2])], tiny_video_bytes)  # fmt: skip
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({v: ["a caption"] for v in msvd_test}))
    videos = str(tmp_path / "videos")
    assert load_corpus("msrvtt", video_dir=videos)["test"]["video_id"] == test_ids[:2]  # no MSRVTT_data.json: test
    assert load_corpus("msvd", video_dir=videos, captions_file=str(captions))["test"]["video_id"] == msvd_test[:2]
    assert load_corpus("lsmdc", video_dir=videos)["test"]["video_id"] == lsmdc_test[:2]
    assert load_corpus("activitynet", video_dir=videos)["test"]["video_id"] == list(val_1)[:2]
    with pytest.raises(ValueError, match="captions_file is required"):
        load_corpus("msvd", video_dir=videos)


# ------------------------------------------------------------------------------------------------ videofolder


def test_videofolder_jsonl_with_splits_lists_and_extra_columns(tmp_path, tiny_video_bytes, caplog):
    place_videos(tmp_path, ["clips/a.mp4", "clips/b.mp4", "clips/c.webm"], tiny_video_bytes)
    records = [
        {"file_name": "clips/a.mp4", "caption": "a dog runs", "split": "train", "score": 1},
        {"file_name": "clips/b.mp4", "caption": ["a cat sleeps", "a cat naps"], "split": "test", "score": 2},
        {"file_name": "clips/c.webm", "caption": "a bird sings", "split": "train", "score": 3},
        {"file_name": "clips/gone.mp4", "caption": "nothing", "split": "train", "score": 4},
    ]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with caplog.at_level(logging.WARNING, logger="training.corpora"):
        corpus = load_videofolder(tmp_path)
    assert corpus["train"]["video_id"] == ["a", "c"] and corpus["test"]["video_id"] == ["b"]
    assert corpus["train"]["caption"] == [["a dog runs"], ["a bird sings"]]  # one list column when any is a list
    assert corpus["train"]["score"] == [1, 3]
    assert corpus["test"][0]["video"] == str(tmp_path / "clips" / "b.mp4")
    assert any("videofolder train: 1 of 3 videos not found" in w and "gone" in w for w in missing_warnings(caplog))
    assert load_corpus(str(tmp_path))["test"]["video_id"] == ["b"]  # the dispatcher takes folders too


def test_videofolder_csv_and_split_subfolders(tmp_path, tiny_video_bytes):
    flat = tmp_path / "flat"
    place_videos(flat, ["x.mp4", "y.mp4"], tiny_video_bytes)
    (flat / "metadata.csv").write_text('file_name,caption\nx.mp4,"a man, a plan"\ny.mp4,a canal\n')
    corpus = load_videofolder(flat)
    assert set(corpus) == {"train"} and corpus["train"]["caption"] == ["a man, a plan", "a canal"]
    nested = tmp_path / "nested"
    for split in ("train", "test"):
        place_videos(nested / split, ["clip.mp4"], tiny_video_bytes)
        (nested / split / "metadata.jsonl").write_text(json.dumps({"file_name": "clip.mp4", "caption": split}) + "\n")
    corpus = load_videofolder(nested)
    assert corpus["train"]["video_id"] == ["train/clip"] and corpus["test"]["video_id"] == ["test/clip"]  # names repeat


def test_videofolder_rejects_bad_metadata(tmp_path, tiny_video_bytes):
    place_videos(tmp_path, ["a.mp4"], tiny_video_bytes)
    with pytest.raises(FileNotFoundError, match="no metadata.jsonl or metadata.csv"):
        load_videofolder(tmp_path)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.mp4"}) + "\n")
    with pytest.raises(ValueError, match="record 1 has no 'caption'"):
        load_videofolder(tmp_path)
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.mp4", "caption": "x"}\n{"file_name": "a.mp4", "caption": "y"}\n')
    with pytest.raises(ValueError, match="'a' appears twice"):
        load_videofolder(tmp_path)
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.mp4", "caption": "x"}\nnot json\n')
    with pytest.raises(ValueError, match="metadata.jsonl:2: not valid JSON"):
        load_videofolder(tmp_path)
    with pytest.raises(ValueError, match="unknown corpus 'kinetics'"):
        load_corpus("kinetics")


def test_index_prefers_mp4_and_searches_subfolders(tmp_path, tiny_video_bytes):
    place_videos(tmp_path, ["v1.avi", "v1.mp4", "deep/er/v2.webm", "notes.txt"], tiny_video_bytes)
    index = index_videos(tmp_path)
    assert index == {"v1": str(tmp_path / "v1.mp4"), "v2": str(tmp_path / "deep" / "er" / "v2.webm")}
