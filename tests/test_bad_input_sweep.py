"""The bad-input sweep of issue #13 as a table: one row per input, what must happen, and a fragment of the message.

A row's `run(env)` builds its input under `env.tmp` (fixtures through `env.fixture(name)`) and calls the code
under test. With `raises` set, it must raise that type with a message matching `match` (a regex); without, it
must succeed. `check(env, outcome)`, if given, must then hold for the return value or the exception.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import coded_frames, pixel_values_to_rgb, read_frame_codes, write_video
from modeling_centerclip import CenterCLIPProcessor
from modeling_centerclip.processing_centerclip import VideoDecodeError, candidate_frame_indices
from training.corpora import load_msrvtt, load_videofolder
from training.publish import convert_clip_checkpoint, load_hub_config
from training.publish import main as publish_main


@dataclass(frozen=True)
class Env:
    tmp: Path
    fixture: Callable[[str], object]  # pytest's request.getfixturevalue


@dataclass(frozen=True)
class Case:
    id: str
    run: Callable[[Env], object]
    raises: type[BaseException] | None = None
    match: str = ""
    check: Callable[[Env, object], bool] | None = None


CASES: list[Case] = []


# --- corpora, processor and decoding ---


def videofolder(env: Env, metadata_name: str, content: str | bytes):
    """`load_videofolder` on a folder holding `a.mp4` and the given metadata file."""
    (env.tmp / "a.mp4").write_bytes(env.fixture("tiny_video_bytes"))
    data = content.encode() if isinstance(content, str) else content
    (env.tmp / metadata_name).write_bytes(data)
    return load_videofolder(env.tmp)


def outside_video(env: Env) -> Path:
    """A real video next to (not inside) the corpus folder `env.tmp / corpus`."""
    path = env.tmp / "elsewhere.mp4"
    path.write_bytes(env.fixture("tiny_video_bytes"))
    (env.tmp / "corpus").mkdir()
    return path


def videofolder_naming(env: Env, file_name: str):
    (env.tmp / "corpus" / "metadata.jsonl").write_text(json.dumps({"file_name": file_name, "caption": "x"}) + "\n")
    return load_videofolder(env.tmp / "corpus")


def symlinked_videofolder(env: Env):
    target = outside_video(env)
    (env.tmp / "corpus" / "clip.mp4").symlink_to(target)
    return videofolder_naming(env, "clip.mp4")


def msrvtt(env: Env, data_json: str, bom: bytes = b""):
    """`load_msrvtt` on two train ids and one test id, every file starting with `bom`."""
    for video_id in ("video0", "video1", "video7020"):
        (env.tmp / f"{video_id}.mp4").write_bytes(env.fixture("tiny_video_bytes"))
    files = {
        "MSRVTT_train.9k.csv": "video_id\nvideo0\nvideo1\n",
        "MSRVTT_JSFUSION_test.csv": "key,vid_key,video_id,sentence\nret0,msr7020,video7020,a man sings\n",
        "MSRVTT_data.json": data_json,
    }
    for name, text in files.items():
        (env.tmp / name).write_bytes(bom + text.encode())
    return load_msrvtt(env.tmp, env.tmp)


SENTENCES = [{"video_id": "video0", "caption": "a dog"}, {"caption": "no id"}, {"video_id": "video1", "caption": "c"}]


# 20 frames 10 ms apart, then 20 frames 100 ms apart: 40 frames in 2.1 s, an average of about 19 fps.
VFR_TIMES = [k * 0.01 for k in range(20)] + [0.2 + k * 0.1 for k in range(20)]


def vfr_frame_codes(env: Env) -> list[int]:
    path = write_video(env.tmp / "vfr.mp4", coded_frames(40, 32, 32), times=VFR_TIMES)
    processor = CenterCLIPProcessor(tokenizer=env.fixture("tiny_tokenizer"), num_frames=11, image_size=32, fps=5)
    return read_frame_codes(pixel_values_to_rgb(processor(videos=[path])["pixel_values"][0], processor)).tolist()


def hub_config_folder(env: Env, config: dict, sidecar: dict) -> Path:
    folder = env.tmp / "hub"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "hub.json").write_text(json.dumps(sidecar))
    return folder


def convert_with_hub_config(env: Env, config: dict, sidecar: dict):
    """`publish convert` with a checkpoint that does not exist: an error about the hub configuration shows that
    it was checked before the checkpoint was touched."""
    folder = hub_config_folder(env, config, sidecar)
    publish_main(["convert", "--clip", str(env.tmp / "no-checkpoint"), "--hub_config", str(folder),
                  "--output_dir", str(env.tmp / "out")])  # fmt: skip


def nothing_written(env: Env, _) -> bool:
    return not (env.tmp / "out").exists()


def bad_video(kind: str) -> Callable[[Env], str]:
    return lambda env: str(env.fixture("bad_videos")[kind])


def names(path_of: Callable[[Env], str]) -> Callable[[Env, object], bool]:
    """A check that the message names the file."""
    return lambda env, error: path_of(env) in str(error)


CASES += [
    # Paths outside the corpus folder are refused; a symlink inside it is the user's choice.
    Case("videofolder-parent-path", lambda env: videofolder(
        env, "metadata.jsonl", '{"file_name": "../../etc/passwd", "caption": "x"}\n'),
        ValueError, r"metadata.jsonl:1: record 1 file_name '../../etc/passwd' leaves the corpus folder"),
    Case("videofolder-absolute-path-outside", lambda env: videofolder_naming(env, str(outside_video(env))),
         ValueError, r"metadata.jsonl:1: record 1 file_name '/.*elsewhere.mp4' leaves the corpus folder"),
    Case("videofolder-symlink-inside-allowed", symlinked_videofolder,
         check=lambda env, corpus: corpus["train"]["video"] == [str(env.tmp / "corpus" / "clip.mp4")]),
    # Corpus files: a BOM is read through; other problems name file, line and what is wrong.
    Case("csv-with-bom", lambda env: videofolder(
        env, "metadata.csv", codecs.BOM_UTF8 + b"file_name,caption\na.mp4,x\n"),
         check=lambda env, corpus: corpus["train"]["caption"] == ["x"]),
    Case("csv-row-with-extra-field", lambda env: videofolder(
        env, "metadata.csv", "file_name,caption\na.mp4,a man, a plan\n"),
        ValueError, r"metadata.csv:2: 3 fields, but the header has 2 \(file_name, caption\); quote fields"),
    Case("csv-latin-1", lambda env: videofolder(
        env, "metadata.csv", "file_name,caption\na.mp4,café\n".encode("latin-1")),
         ValueError, r"metadata.csv:2: not UTF-8 text \(byte 0xe9\); save the file as UTF-8"),
    Case("jsonl-line-is-a-list", lambda env: videofolder(env, "metadata.jsonl", '["a.mp4", "x"]\n'),
         ValueError, r"metadata.jsonl:1: expected a JSON object .*got a list"),
    Case("msrvtt-data-json-is-a-list", lambda env: msrvtt(env, json.dumps(SENTENCES)),
         ValueError, r"MSRVTT_data.json: expected a JSON object with a 'sentences' list, got a list"),
    Case("msrvtt-sentence-without-video-id", lambda env: msrvtt(env, json.dumps({"sentences": SENTENCES})),
         ValueError, r"MSRVTT_data.json: sentences\[1\] has no 'video_id'"),
    Case("msrvtt-files-with-bom", lambda env: msrvtt(env, json.dumps({"sentences": SENTENCES[::2]}), codecs.BOM_UTF8),
         check=lambda env, corpus: (corpus["train"]["video_id"], corpus["test"]["caption"])
         == (["video0", "video1"], ["a man sings"])),
    # Processor inputs.
    Case("processor-empty-videos", lambda env: env.fixture("processor")(videos=[]),
         ValueError, r"videos is empty: pass at least one video"),
    Case("processor-empty-text", lambda env: env.fixture("processor")(text=[]),
         ValueError, r"text is an empty list: pass at least one caption"),
    # Decoding.
    Case("mp4-with-only-audio", lambda env: env.fixture("processor")(videos=[bad_video("audio_only")(env)]),
         VideoDecodeError, r"audio_only.mp4: no video stream", names(bad_video("audio_only"))),
    # 40 frames announced, the data cut at 2/3: the frame named is where the data ends, not the first or last.
    Case("mp4-failing-mid-decode", lambda env: env.fixture("processor")(videos=[bad_video("truncated_data")(env)]),
         VideoDecodeError,
         r"truncated_data.mp4: decoding failed at frame ([2-9]|[1-3]\d) of 40 \(truncated or corrupt\)",
         names(bad_video("truncated_data"))),
    # Variable frame rate at fps=5: the frame on screen every 0.2 s (frame 20 at 0.2 s, then every 2nd), not
    # every 3.7th frame by index at the average rate ([0, 3, 7, 11, ...]).
    Case("vfr-video-sampled-by-timestamps", vfr_frame_codes,
         check=lambda env, codes: codes == [0, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38]),
    # Timestamps that cannot place frames (all equal, as missing ones read) fall back to the average rate.
    Case("vfr-unusable-timestamps", lambda env: candidate_frame_indices(
        10, native_fps=10, target_fps=2, timestamps=np.zeros((10, 2))).tolist(),
        check=lambda env, indices: indices == [0, 5]),
    # Hub configuration typos fail before any work, naming key, file and valid keys.
    Case("hub-config-json-typo", lambda env: convert_with_hub_config(env, {"num_centres": 16}, {}),
         ValueError,
         r"config.json: unknown key 'num_centres' \(did you mean 'num_centers'\?\); valid keys: .*num_centers",
         nothing_written),
    Case("hub-sidecar-processor-typo", lambda env: convert_with_hub_config(env, {}, {"processor": {"fsp": 3}}),
         ValueError, r"hub.json: unknown key 'processor.fsp' \(did you mean 'fps'\?\); valid processor keys: .*fps",
         nothing_written),
    Case("hub-sidecar-top-level-typo", lambda env: load_hub_config(hub_config_folder(env, {}, {"licence": "mit"})),
         ValueError, r"hub.json: unknown key 'licence' \(did you mean 'license'\?\); valid keys: license, processor"),
    Case("publish-overrides-typo", lambda env: convert_clip_checkpoint(
        env.tmp / "no-checkpoint", "centerclip-vitb32", env.tmp / "out", overrides={"num_centres": 16}),
        ValueError, r"overrides: unknown key 'num_centres' \(did you mean 'num_centers'\?\)", nothing_written),
    Case("hub-settings-nested-typo", lambda env: load_hub_config({"vision_config": {"patch_sise": 16}}),
         ValueError, r"hub configuration: unknown key 'vision_config.patch_sise' \(did you mean 'patch_size'\?\)"),
]  # fmt: skip


# --- the one test every row goes through ---


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, tmp_path, request):
    env = Env(tmp_path, request.getfixturevalue)
    if case.raises is None:
        outcome = case.run(env)
    else:
        with pytest.raises(case.raises, match=case.match) as caught:
            case.run(env)
        outcome = caught.value
    if case.check is not None:
        assert case.check(env, outcome), outcome
