"""Shared pytest fixtures. Keep each engineer's fixtures in their own clearly marked group."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

# =============================================================================================================
# Input side (processor, corpora, demo corpus): tiny tokenizer, generated videos of known content, split files
# =============================================================================================================

CAPTIONS = [
    "a red 3 moves left, then a blue square appears",
    "a green circle moves up",
    "a person is cooking in the kitchen",
    "a man plays the guitar on a stage",
    "a yellow 7 moves down, then it turns white",
]

SPLITS_DIR = Path(__file__).resolve().parents[1] / "training" / "splits"  # shipped with the package

# Frame k of a `make_video` clip spells k in grey levels (luma survives H.264 best): the top half is
# BASE + STEP * (k % 16), the bottom half BASE + STEP * (k // 16). Steps of 12 levels survive coding and resizing.
FRAME_CODE_BASE, FRAME_CODE_STEP = 20, 12


def coded_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """uint8 `[num_frames, height, width, 3]` grey frames whose halves encode the frame number."""
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for index in range(num_frames):
        frames[index, : height // 2] = FRAME_CODE_BASE + FRAME_CODE_STEP * (index % 16)
        frames[index, height // 2 :] = FRAME_CODE_BASE + FRAME_CODE_STEP * (index // 16)
    return frames


def read_frame_codes(rgb: np.ndarray) -> np.ndarray:
    """Frame numbers from frames `[T, H, W, 3]` (0..255 scale) made by `coded_frames` / `make_video`."""
    quarter = rgb.shape[1] // 4
    top = rgb[:, :quarter].reshape(rgb.shape[0], -1).mean(axis=1)
    bottom = rgb[:, -quarter:].reshape(rgb.shape[0], -1).mean(axis=1)
    low = np.round((top - FRAME_CODE_BASE) / FRAME_CODE_STEP)
    high = np.round((bottom - FRAME_CODE_BASE) / FRAME_CODE_STEP)
    return (high * 16 + low).astype(int)


def pixel_values_to_rgb(pixel_values, processor) -> np.ndarray:
    """Undo the CLIP normalisation of one video's `pixel_values` `[T, 3, S, S]` -> `[T, S, S, 3]` on 0..255."""
    mean = np.array(processor.image_mean).reshape(1, 3, 1, 1)
    std = np.array(processor.image_std).reshape(1, 3, 1, 1)
    return ((np.asarray(pixel_values) * std + mean) * 255.0).transpose(0, 2, 3, 1)


def write_video(path, frames: np.ndarray, fps: float = 10, codec: str = "libx264", faststart: bool = False,
                times=None) -> str:
    """Write uint8 RGB frames `[T, H, W, 3]` (H, W even) to a video file with PyAV; returns the path.

    `times` (seconds, one per frame) shows the frames at those times: a variable-frame-rate video."""
    import av

    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(path, "w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3] if len(frames) else (32, 32)
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "10", "preset": "ultrafast", "threads": "1"}
        if times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)  # milliseconds
        if not len(frames):
            container.start_encoding()  # no frames: still write the container header (a zero-length video)
        for index, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            if times is not None:
                picture.pts, picture.time_base = round(times[index] * 1000), Fraction(1, 1000)
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A CLIP BPE tokenizer trained on a handful of captions."""
    from training.tokenizer import train_clip_tokenizer

    return train_clip_tokenizer(CAPTIONS * 4, vocab_size=320)


@pytest.fixture(scope="session")
def make_video():
    """`make_video(path, num_frames, size=(height, width), fps=10)` writes an MP4 whose frame k encodes k."""

    def make(path, num_frames: int, size=(48, 64), fps: float = 10, **kwargs) -> str:
        height, width = (size, size) if isinstance(size, int) else size
        return write_video(path, coded_frames(num_frames, height, width), fps=fps, **kwargs)

    return make


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory, make_video):
    """A folder of coded clips: `clip30.mp4` (30 frames @ 10 fps, 48x64), `clip3.mp4` (3 frames),
    `clip60_30fps.mp4` (60 frames @ 30 fps)."""
    folder = tmp_path_factory.mktemp("videos")
    make_video(folder / "clip30.mp4", 30)
    make_video(folder / "clip3.mp4", 3)
    make_video(folder / "clip60_30fps.mp4", 60, fps=30)
    return folder


@pytest.fixture(scope="session")
def tiny_video_bytes(tmp_path_factory, make_video) -> bytes:
    """The bytes of a 4-frame 32x32 MP4, to copy under many names as stand-in corpus videos."""
    path = make_video(tmp_path_factory.mktemp("tiny") / "tiny.mp4", 4, size=32)
    return Path(path).read_bytes()


def write_audio(path) -> Path:
    """An MP4 holding only a short silent AAC audio stream."""
    import av

    with av.open(os.fspath(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for index in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, index * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


@pytest.fixture(scope="session")
def splits_dir() -> Path:
    """The real benchmark split files, shipped in `training/splits` (ActivityNet's gzipped)."""
    if not (SPLITS_DIR / "msrvtt" / "MSRVTT_JSFUSION_test.csv").is_file():
        pytest.fail(f"benchmark split files not found at {SPLITS_DIR}")
    return SPLITS_DIR


@pytest.fixture
def processor(tiny_tokenizer):
    """A CenterCLIPProcessor for 6 frames of 32 px."""
    from modeling_centerclip import CenterCLIPProcessor

    return CenterCLIPProcessor(tokenizer=tiny_tokenizer, num_frames=6, image_size=32)


# ====================================================================================== end of input-side group
