"""The bad-input sweep (issue #13): one row per case, each an input and what it must give.

A row's `run(tmp_path)` feeds one bad input; `raises` is the exception it must raise (None: it must succeed,
and `check` may inspect the result) and `match` a fragment of the message, which names the field, file or
argument at fault. Keep the list in sections by area.
"""

from __future__ import annotations

import codecs
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import coded_frames, pixel_values_to_rgb, read_frame_codes, write_audio, write_video
from tiny_models import tiny_centerclip_config

from modeling_centerclip import CenterCLIPModel, CenterCLIPProcessor, NonFiniteTokensError
from modeling_centerclip.processing_centerclip import VideoDecodeError, candidate_frame_indices
from training.corpora import load_msrvtt, load_videofolder
from training.publish import convert_clip_checkpoint, load_hub_config
from training.publish import main as publish_main
from training.tokenizer import train_clip_tokenizer


@dataclass
class Case:
    id: str
    run: Callable[[Path], Any]
    raises: type[BaseException] | None
    match: str = ""
    check: Callable[[Any], None] | None = None


CASES: list[Case] = []

# --- model and configuration ----------------------------------------------------------------------------


def tiny_model(**overrides) -> CenterCLIPModel:
    torch.manual_seed(0)
    return CenterCLIPModel(tiny_centerclip_config(**overrides)).eval()


def videos(batch=2, frames=4):
    return torch.randn(batch, frames, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def texts(count=2):
    return torch.randint(1, 97, (count, 7), generator=torch.Generator().manual_seed(0))


def nan_pixel(algo):
    pixels = videos()
    pixels[1, 3, 0, 5, 5] = float("nan")
    return tiny_model(cluster_algo=algo).get_video_features(pixels)


def nan_in_padded_frame(_):
    pixels = videos()
    pixels[0, 3] = float("nan")  # frame 3 of video 0 is padding
    return tiny_model().get_video_features(pixels, torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]))


def finite_embedding(out):
    assert torch.isfinite(out.pooler_output).all()


def changed_config(_):
    model = tiny_model()
    model.config.num_segments = 3  # 4 frames do not split into 3 segments
    return model.get_video_features(videos())


CASES += [
    Case("video_mask transposed [T, B]", lambda _: tiny_model().get_video_features(videos(), torch.ones(4, 2, dtype=torch.bool)),
         ValueError, r"video_mask has shape \(4, 2\) but pixel_values \(2, 4, 3, 32, 32\)"),
    Case("video_mask [1, T] for two videos", lambda _: tiny_model().get_video_features(videos(), torch.ones(1, 4, dtype=torch.bool)),
         ValueError, r"video_mask has shape \(1, 4\)"),
    Case("video_mask row without a real frame", lambda _: tiny_model().get_video_features(videos(), torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])),
         ValueError, r"no real frame .* batch index \[1\]"),
    Case("NaN pixel reaching k-medoids", lambda _: nan_pixel("kmedoids"), NonFiniteTokensError, r"vision layer 2 .* batch positions \[1\]"),
    Case("NaN pixel reaching spectral clustering", lambda _: nan_pixel("spectral"), NonFiniteTokensError, r"batch positions \[1\]"),
    Case("NaN pixel in a padded frame is ignored", nan_in_padded_frame, None, check=finite_embedding),
    Case("forward with no videos", lambda _: tiny_model()(input_ids=texts(), pixel_values=videos(batch=0)), ValueError, "no video"),
    Case("forward without pixel_values", lambda _: tiny_model()(input_ids=texts()), ValueError, "pixel_values is required"),
    Case("return_loss with 2 texts and 3 videos", lambda _: tiny_model()(input_ids=texts(2), pixel_values=videos(3), return_loss=True),
         ValueError, "2 texts and 3 videos"),
    Case("config changed after construction", changed_config, ValueError, "num_segments"),
    Case("spectral_sigma NaN", lambda _: tiny_centerclip_config(spectral_sigma=float("nan")), ValueError, "spectral_sigma=nan: must be a finite"),
    Case("spectral_sigma inf", lambda _: tiny_centerclip_config(spectral_sigma=float("inf")), ValueError, "spectral_sigma=inf"),
    Case("logit_scale_init_value NaN", lambda _: tiny_centerclip_config(logit_scale_init_value=float("nan")), ValueError, "logit_scale_init_value"),
]


# --- corpora, processor and decoding ----------------------------------------------------------------------


def place_video(path: Path) -> None:
    """A 4-frame 32 px MP4 (stand-in corpus video)."""
    write_video(path, coded_frames(4, 32, 32))


@functools.cache
def processor(num_frames: int = 6, fps: float | None = None) -> CenterCLIPProcessor:
    tokenizer = train_clip_tokenizer(["a red 3 moves left", "a green circle moves up"] * 4, vocab_size=300)
    return CenterCLIPProcessor(tokenizer=tokenizer, num_frames=num_frames, image_size=32, fps=fps)


def same(pair):
    assert pair[0] == pair[1], pair


def videofolder(tmp: Path, metadata_name: str, content: str | bytes):
    """`load_videofolder` on a folder holding `a.mp4` and the given metadata file."""
    place_video(tmp / "a.mp4")
    (tmp / metadata_name).write_bytes(content.encode() if isinstance(content, str) else content)
    return load_videofolder(tmp)


def videofolder_naming(tmp: Path, file_name) -> tuple[Path, object]:
    """A corpus folder `tmp/corpus` whose one record names `file_name` (a callable of the folder, or a str);
    a video `tmp/elsewhere.mp4` lies outside it."""
    place_video(tmp / "elsewhere.mp4")
    folder = tmp / "corpus"
    folder.mkdir()
    name = file_name(folder) if callable(file_name) else file_name
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": name, "caption": "x"}) + "\n")
    return folder, load_videofolder(folder)


def symlink_inside(folder: Path) -> str:
    (folder / "clip.mp4").symlink_to(folder.parent / "elsewhere.mp4")
    return "clip.mp4"


def symlinked_videofolder(tmp: Path):
    folder, corpus = videofolder_naming(tmp, symlink_inside)
    return corpus["train"]["video"], [str(folder / "clip.mp4")]


def msrvtt(tmp: Path, data_json: str, bom: bytes = b""):
    """`load_msrvtt` on two train ids and one test id, every file starting with `bom`."""
    for video_id in ("video0", "video1", "video7020"):
        place_video(tmp / f"{video_id}.mp4")
    files = {
        "MSRVTT_train.9k.csv": "video_id\nvideo0\nvideo1\n",
        "MSRVTT_JSFUSION_test.csv": "key,vid_key,video_id,sentence\nret0,msr7020,video7020,a man sings\n",
        "MSRVTT_data.json": data_json,
    }
    for name, text in files.items():
        (tmp / name).write_bytes(bom + text.encode())
    return load_msrvtt(tmp, tmp)


SENTENCES = [{"video_id": "video0", "caption": "a dog"}, {"caption": "no id"}, {"video_id": "video1", "caption": "c"}]


def truncated_mp4(tmp: Path) -> str:
    """40 frames announced in the index at the front, the data cut at 2/3."""
    whole = Path(write_video(tmp / "whole.mp4", coded_frames(40, 32, 32), faststart=True)).read_bytes()
    (tmp / "truncated.mp4").write_bytes(whole[: len(whole) * 2 // 3])
    return str(tmp / "truncated.mp4")


# 20 frames 10 ms apart, then 20 frames 100 ms apart: 40 frames in 2.1 s, an average of about 19 fps.
VFR_TIMES = [k * 0.01 for k in range(20)] + [0.2 + k * 0.1 for k in range(20)]


def vfr_frame_codes(tmp: Path) -> list[int]:
    path = write_video(tmp / "vfr.mp4", coded_frames(40, 32, 32), times=VFR_TIMES)
    fps5 = processor(num_frames=11, fps=5)
    return read_frame_codes(pixel_values_to_rgb(fps5(videos=[path])["pixel_values"][0], fps5)).tolist()


def hub_config_folder(tmp: Path, config: dict, sidecar: dict) -> Path:
    folder = tmp / "hub"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "hub.json").write_text(json.dumps(sidecar))
    return folder


def convert_with_hub_config(tmp: Path, config: dict, sidecar: dict):
    """`publish convert` from a checkpoint that does not exist: an error about the hub configuration shows that
    it was checked before the checkpoint was touched."""
    folder = hub_config_folder(tmp, config, sidecar)
    publish_main(["convert", "--clip", str(tmp / "no-checkpoint"), "--hub_config", str(folder),
                  "--output_dir", str(tmp / "out")])  # fmt: skip


CASES += [
    # Paths outside the corpus folder are refused; a symlink inside it is the user's choice.
    Case("videofolder file_name ../../etc/passwd", lambda tmp: videofolder(
        tmp, "metadata.jsonl", '{"file_name": "../../etc/passwd", "caption": "x"}\n'),
        ValueError, r"metadata.jsonl:1: record 1 file_name '../../etc/passwd' leaves the corpus folder"),
    Case("videofolder absolute file_name outside", lambda tmp: videofolder_naming(tmp, str(tmp / "elsewhere.mp4")),
         ValueError, r"metadata.jsonl:1: record 1 file_name '/.*elsewhere.mp4' leaves the corpus folder"),
    Case("videofolder symlink inside to a video outside", symlinked_videofolder, None, check=same),
    # Corpus files: a BOM is read through; other problems name file, line and what is wrong.
    Case("CSV with a BOM", lambda tmp: (videofolder(
        tmp, "metadata.csv", codecs.BOM_UTF8 + b"file_name,caption\na.mp4,x\n")["train"]["caption"], ["x"]),
        None, check=same),
    Case("CSV row with an extra field", lambda tmp: videofolder(
        tmp, "metadata.csv", "file_name,caption\na.mp4,a man, a plan\n"),
        ValueError, r"metadata.csv:2: 3 fields, but the header has 2 \(file_name, caption\); quote fields"),
    Case("latin-1 CSV", lambda tmp: videofolder(
        tmp, "metadata.csv", "file_name,caption\na.mp4,café\n".encode("latin-1")),
        ValueError, r"metadata.csv:2: not UTF-8 text \(byte 0xe9\); save the file as UTF-8"),
    Case("JSONL line that is a list", lambda tmp: videofolder(tmp, "metadata.jsonl", '["a.mp4", "x"]\n'),
         ValueError, r"metadata.jsonl:1: expected a JSON object .*got a list"),
    Case("MSR-VTT data_json that is a list", lambda tmp: msrvtt(tmp, json.dumps(SENTENCES)),
         ValueError, r"MSRVTT_data.json: expected a JSON object with a 'sentences' list, got a list"),
    Case("MSR-VTT sentence without video_id", lambda tmp: msrvtt(tmp, json.dumps({"sentences": SENTENCES})),
         ValueError, r"MSRVTT_data.json: sentences\[1\] has no 'video_id'"),
    Case("MSR-VTT files with a BOM", lambda tmp: (
        [(split, corpus["video_id"], corpus["caption"])
         for split, corpus in msrvtt(tmp, json.dumps({"sentences": SENTENCES[::2]}), codecs.BOM_UTF8).items()],
        [("train", ["video0", "video1"], [["a dog"], ["c"]]), ("test", ["video7020"], ["a man sings"])]),
        None, check=same),
    # Processor inputs.
    Case("processor(videos=[])", lambda _: processor()(videos=[]), ValueError, r"videos is empty: pass at least one"),
    Case("processor(text=[])", lambda _: processor()(text=[]), ValueError, r"text is an empty list: pass at least one"),
    # Decoding: plain words instead of decord's internal checks and ffmpeg's error numbers.
    Case("MP4 with only an audio stream", lambda tmp: processor()(videos=[str(write_audio(tmp / "audio.mp4"))]),
         VideoDecodeError, r"Cannot read video /\S+/audio.mp4: no video stream"),
    # The frame named is where the data ends, neither the first nor the last.
    Case("MP4 failing mid-decode", lambda tmp: processor()(videos=[truncated_mp4(tmp)]), VideoDecodeError,
         r"/\S+/truncated.mp4: decoding failed at frame ([2-9]|[1-3]\d) of 40 \(truncated or corrupt\)"),
    # Variable frame rate at fps=5: the frame on screen every 0.2 s (frame 20 at 0.2 s, then every 2nd), not
    # every 3.7th frame by index at the average rate ([0, 3, 7, 11, ...]).
    Case("variable-frame-rate video with fps", lambda tmp: (
        vfr_frame_codes(tmp), [0, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38]), None, check=same),
    # Timestamps that cannot place frames (all equal, as missing ones read) fall back to the average rate.
    Case("frame timestamps all equal", lambda _: (candidate_frame_indices(
        10, native_fps=10, target_fps=2, timestamps=np.zeros((10, 2))).tolist(), [0, 5]), None, check=same),
    # Hub configuration typos fail before any work, naming key, file and valid keys.
    Case("hub config.json typo num_centres", lambda tmp: convert_with_hub_config(tmp, {"num_centres": 16}, {}),
         ValueError,
         r"config.json: unknown key 'num_centres' \(did you mean 'num_centers'\?\); valid keys: .*num_centers"),
    Case("hub.json processor typo", lambda tmp: convert_with_hub_config(tmp, {}, {"processor": {"fsp": 3}}),
         ValueError, r"hub.json: unknown key 'processor.fsp' \(did you mean 'fps'\?\); valid processor keys: .*fps"),
    Case("hub.json top-level typo", lambda tmp: load_hub_config(hub_config_folder(tmp, {}, {"licence": "mit"})),
         ValueError, r"hub.json: unknown key 'licence' \(did you mean 'license'\?\); valid keys: license, processor"),
    Case("convert overrides typo", lambda tmp: convert_clip_checkpoint(
        tmp / "no-checkpoint", "centerclip-vitb32", tmp / "out", overrides={"num_centres": 16}),
        ValueError, r"overrides: unknown key 'num_centres' \(did you mean 'num_centers'\?\)"),
    Case("hub settings nested typo", lambda _: load_hub_config({"vision_config": {"patch_sise": 16}}),
         ValueError, r"hub configuration: unknown key 'vision_config.patch_sise' \(did you mean 'patch_size'\?\)"),
]  # fmt: skip


# --- training and evaluation CLI ---------------------------------------------------------------------------


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def train_args(tmp: Path, *extra: str):
    from training.config import parse_args

    return parse_args(["--corpus", "demo", "--output_dir", str(tmp / "out"), *extra])


def tiny_model_config(tmp: Path) -> str:
    return write(tmp / "tiny_model.json", '{"num_frames": 4}')


def clip_without_tokenizer(tmp: Path) -> str:
    """A stock CLIP folder (weights and config) whose tokenizer files were not copied."""
    from tiny_models import tiny_clip_config
    from transformers import CLIPModel

    CLIPModel(tiny_clip_config()).save_pretrained(tmp / "clip")
    return str(tmp / "clip")


def cli_error(main, *argv: str):
    """Run a CLI's `main`; an argparse error (exit status 2) is re-raised as `SystemExit(<its message>)`."""
    import contextlib
    import io

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return main(list(argv))
    except SystemExit as error:
        raise SystemExit(stderr.getvalue() or str(error)) from None


def evaluate_cli(*argv: str):
    from training.cli_errors import run_cli
    from training.evaluate import main

    return cli_error(lambda args: run_cli("evaluate.py", main, args), *argv)


def global_batch_remainder(tmp):
    from training.config import per_device_batch_size

    args = train_args(tmp, "--model_config", tiny_model_config(tmp), "--global_batch_size", "128",
                      "--gradient_accumulation_steps", "3")
    return per_device_batch_size(args, num_processes=1)


def resume(tmp, folder: str):
    from training.checkpoints import find_checkpoint

    (tmp / "out" / "checkpoints" / "step_7").mkdir(parents=True)  # killed while saving (an older version)
    (tmp / "elsewhere").mkdir()
    return find_checkpoint(str(tmp / folder), str(tmp / "out"))


def empty_tokenizer(_):
    from transformers import CLIPTokenizer

    from training.tokenizer import check_tokenizer

    return check_tokenizer(CLIPTokenizer(), "my_tokenizer", "pass a real one")  # what Transformers 5 builds


def starts_fresh(checkpoint):
    assert checkpoint is None, checkpoint  # the incomplete step_7 is passed over: nothing to resume from


def cuda_without_cuda(tmp):
    from unittest import mock

    with mock.patch("torch.cuda.is_available", return_value=False):
        return evaluate_cli("--model", clip_without_tokenizer(tmp), "--corpus", "demo", "--device", "cuda")


CASES += [
    Case("train --config with a YAML syntax error", lambda tmp: train_args(
        tmp, "--config", write(tmp / "broken.yaml", "corpus: demo\nlearning_rate: [1e-4\nseed: 0\n")),
         ValueError, r"broken\.yaml, line 3: not valid YAML"),
    Case("train --output_dir that is a file", lambda tmp: (write(tmp / "out", "a file"), train_args(
        tmp, "--model_config", tiny_model_config(tmp))), ValueError, r"config key 'output_dir'=.*is a file"),
    Case("model_config typo (inline)", lambda tmp: train_args(
        tmp, "--config", write(tmp / "run.yaml", "model_config: {num_frames: 4, cluster_algorithm: spectral}\n")),
         ValueError, r"config key 'cluster_algorithm' \(model_config in .*run\.yaml\): not a CenterCLIPConfig field; "
         r"valid keys: .*cluster_algo"),
    Case("model_config typo (its JSON file)", lambda tmp: train_args(
        tmp, "--model_config", write(tmp / "model.json", '{"num_frames": 4, "num_centres": 8}')),
         ValueError, r"config key 'num_centres' \(.*model\.json\).*valid keys: .*num_centers"),
    Case("train on a CLIP folder without tokenizer files", lambda tmp: train_args(
        tmp, "--model_name_or_path", clip_without_tokenizer(tmp)), ValueError,
         r"clip: no tokenizer files \(it needs tokenizer\.json, or vocab\.json and merges\.txt\); copy the tokenizer"),
    Case("convert a CLIP folder without tokenizer files", lambda tmp: convert_clip_checkpoint(
        clip_without_tokenizer(tmp), {"num_frames": 4, "num_segments": 2, "num_centers": 6, "cluster_layer": 2},
        tmp / "converted"), ValueError, r"clip: no tokenizer files .*--tokenizer"),
    Case("an empty CLIPTokenizer", empty_tokenizer, ValueError, r"my_tokenizer: the tokenizer has no usable vocabulary"),
    Case("global batch that does not divide", global_batch_remainder, ValueError,
         r"'global_batch_size'=128: not divisible by 1 process\(es\) x gradient_accumulation_steps=3"),
    Case("--resume an incomplete checkpoint", lambda tmp: resume(tmp, "out/checkpoints/step_7"), ValueError,
         r"step_7: this checkpoint is incomplete.*'latest'"),
    Case("--resume a folder that is no run", lambda tmp: resume(tmp, "elsewhere"), ValueError,
         r"elsewhere: neither a checkpoint folder \(step_N\) nor a run's output_dir"),
    Case("--resume <output_dir> whose only checkpoint is incomplete", lambda tmp: resume(tmp, "out"), None,
         check=starts_fresh),
    Case("evaluate --chunk_size 0", lambda tmp: evaluate_cli("--model", "m", "--corpus", "demo", "--chunk_size", "0"),
         SystemExit, r"--chunk_size: must be a positive integer, got 0"),
    Case("evaluate --device cuda without CUDA", cuda_without_cuda, SystemExit,
         r"--device cuda: this torch .* has no usable CUDA device; use --device cpu"),
    Case("evaluate a folder without processor files", lambda tmp: evaluate_cli(
        "--model", clip_without_tokenizer(tmp), "--corpus", "demo", "--device", "cpu"), SystemExit,
         r"--model .*clip: no processor_config\.json"),
    Case("evaluate --from_embeddings of a folder without them", lambda tmp: (tmp / "emb").mkdir() or evaluate_cli(
        "--from_embeddings", str(tmp / "emb")), SystemExit,
         r"evaluate.py: error: --from_embeddings .*emb: no embeddings\.safetensors \(write it with --save_embeddings\)"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_input(case: Case, tmp_path):
    if case.raises is None:
        result = case.run(tmp_path)
        if case.check is not None:
            case.check(result)
        return
    with pytest.raises(case.raises, match=case.match):
        case.run(tmp_path)
