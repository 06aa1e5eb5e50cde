"""The built-in demo corpus: deterministic, captions that say what the frames show, time-reversed twins."""

import json

import decord
import numpy as np
import pytest

from training.corpora import load_corpus, load_videofolder
from training.demo_corpus import COLORS, DIRECTIONS, ClipSpec, generate_demo_corpus, main, render_clip

SMALL = dict(num_train=12, num_test=6, num_frames=8, size=32, fps=8, pair_fraction=0.5, show_progress=False)


def decode_all(folder, records):
    return [decord.VideoReader(str(folder / r["file_name"]), num_threads=1).get_batch(list(range(8))).asnumpy()
            for r in records]


def read_records(folder):
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    generate_demo_corpus(folder, seed=7, **SMALL)
    return folder


def test_same_seed_gives_identical_metadata_and_frames(demo, tmp_path):
    generate_demo_corpus(tmp_path, seed=7, **SMALL)
    assert (tmp_path / "metadata.jsonl").read_text() == (demo / "metadata.jsonl").read_text()
    records = read_records(demo)
    for first, second in zip(decode_all(demo, records), decode_all(tmp_path, records)):
        assert np.array_equal(first, second)
    other = tmp_path / "other"
    generate_demo_corpus(other, seed=8, **SMALL)
    assert [r["caption"] for r in read_records(other)] != [r["caption"] for r in records]


def test_corpus_layout_loads_as_a_videofolder(demo):
    corpus = load_videofolder(demo)
    assert {name: len(split) for name, split in corpus.items()} == {"train": 12, "test": 6}
    captions = list(corpus["train"]["caption"]) + list(corpus["test"]["caption"])
    assert len(set(captions)) == len(captions)  # unique: retrieval is well posed
    frames = decord.VideoReader(corpus["test"][0]["video"])
    assert len(frames) == 8 and frames[0].shape == (32, 32, 3) and frames.get_avg_fps() == 8
    settings = json.loads((demo / "generation.json").read_text())
    assert settings["seed"] == 7 and settings["num_frames"] == 8


def test_captions_name_object_colour_direction_and_event(demo):
    for record in read_records(demo):
        caption = record["caption"]
        assert caption.startswith(f"a {record['color']} {record['object']} moves {record['direction']}")
        if record["event"] == "none":
            assert "then" not in caption
        elif record["event"] == "turns":
            assert ", then it turns " in caption
        else:
            assert caption.endswith(record["event"])


def test_time_reversed_twins_hold_the_same_frames_in_reverse_order(demo):
    records = read_records(demo)
    by_id = {r["file_name"].split("/")[1][:-4]: r for r in records}
    twins = [(r, by_id[r["twin"]]) for r in records if r["twin"] and r["file_name"] < by_id[r["twin"]]["file_name"]]
    assert twins, "this seed has no twins"
    for first, second in twins:
        assert second["direction"] == {"left": "right", "right": "left", "up": "down", "down": "up"}[first["direction"]]
        assert second["caption"] != first["caption"]
        frames_first, frames_second = decode_all(demo, [first, second])
        # Same frames (up to H.264 noise), opposite order: no single frame tells the two captions apart.
        assert np.abs(frames_first[::-1].astype(int) - frames_second.astype(int)).mean() < 2.0
        assert np.abs(frames_first.astype(int) - frames_second.astype(int)).mean() > 2.0


def centroid(mask):
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize("event", ["none", "appears", "disappears", "turns"])
@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_rendered_frames_show_what_the_caption_says(event, direction):
    spec = ClipSpec("3" if direction in ("left", "up") else "circle", "red", direction, event,
                    None if event in ("none", "turns") else "square", None if event == "none" else "blue")
    frames = render_clip(spec, num_frames=10, size=64, rng=np.random.default_rng(0))
    assert frames.shape == (10, 64, 64, 3) and frames.dtype == np.uint8
    red = (frames == COLORS["red"]).all(-1)
    blue = (frames == COLORS["blue"]).all(-1)
    moving = red | blue if event == "turns" else red
    shift = centroid(moving[-1]) - centroid(moving[0])
    assert np.dot(shift, DIRECTIONS[direction]) > 15  # it moves the stated way...
    assert abs(shift[0 if DIRECTIONS[direction][1] else 1]) < 1  # ...and only that way
    blue_frames = blue.any(axis=(1, 2))
    expected_blue = {"none": [False] * 10, "appears": [False] * 5 + [True] * 5,
                     "disappears": [True] * 5 + [False] * 5, "turns": [False] * 5 + [True] * 5}[event]
    assert blue_frames.tolist() == expected_blue
    if event in ("appears", "disappears"):  # the second object stays put
        shown = [centroid(blue[t]) for t in range(10) if blue_frames[t]]
        assert np.allclose(shown, shown[0])


def test_cli_and_corpus_dispatcher(tmp_path, capsys):
    main(["--output_dir", str(tmp_path / "cli"), "--num_train", "4", "--num_test", "2", "--num_frames", "6",
          "--size", "32"])
    assert "6 clips in" in capsys.readouterr().out
    assert len(read_records(tmp_path / "cli")) == 6
    corpus = load_corpus("demo", folder=str(tmp_path / "auto"), num_train=4, num_test=2, num_frames=6, size=32,
                         show_progress=False)  # generated on first use
    assert {name: len(split) for name, split in corpus.items()} == {"train": 4, "test": 2}
    with pytest.raises(ValueError, match="size"):
        generate_demo_corpus(tmp_path / "bad", size=16)
