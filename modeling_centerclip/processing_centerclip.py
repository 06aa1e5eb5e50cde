"""CenterCLIPProcessor: a CLIP tokenizer plus video decoding, frame sampling and CLIP pixel preprocessing.

Frame sampling (the CLIP4Clip / CenterCLIP recipe): the candidate frames of a video (all of them, or those at a
target fps) are split into `num_frames` equal chunks; evaluation takes the center frame of each chunk, training a
random frame of each. A video with fewer candidate frames than `num_frames` repeats its last frame and the copies
are masked out in `video_mask`. Pixels: resize the shorter side to `image_size`, center crop, CLIP mean/std.

Videos are decoded with decord, imported only when a file is decoded, so this module imports without it.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

try:  # the fast JPEG decoder for frame stores (the `video` extra); Pillow decodes the same pixels without it
    import simplejpeg as _simplejpeg
except ImportError:
    _simplejpeg = None


PAPER_FPS = 3.0  # the paper decodes videos at 3 frames per second


class VideoDecodeError(ValueError):
    """A video could not be read or decoded; the message names the file (or `videos[i]` for an array)."""

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"Cannot read video {source}: {reason}")


def candidate_frame_indices(
    num_video_frames: int,
    *,
    native_fps: float | None = None,
    target_fps: float | None = None,
    timestamps: np.ndarray | None = None,
) -> np.ndarray:
    """Indices of the frames that sampling chooses from: every frame, or the frame on screen every
    `1 / target_fps` seconds.

    `timestamps` (`[num_video_frames, 2]` start and end seconds, as decord's `get_frame_timestamp` gives) place
    the frames of a variable-frame-rate video in time; without them frames are taken `1 / native_fps` apart.
    Resampling only lowers the rate: a target fps at or above the native (average) fps, or an unknown native
    fps, keeps every frame. Returns a sorted int64 array of length >= 1.
    """
    if num_video_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_video_frames}")
    all_frames = np.arange(num_video_frames, dtype=np.int64)
    if target_fps is None or not native_fps or not math.isfinite(native_fps) or target_fps >= native_fps:
        return all_frames
    if target_fps <= 0:
        raise ValueError(f"target_fps must be positive, got {target_fps}")
    times = None if timestamps is None else np.asarray(timestamps, dtype=np.float64).reshape(num_video_frames, 2)
    if times is None or not np.isfinite(times).all() or (np.diff(times[:, 0]) <= 0).any():
        # No usable timestamps (none, or missing/out-of-order ones read as repeats): assume a constant rate.
        times = np.stack([all_frames / native_fps, (all_frames + 1) / native_fps], axis=1)
    starts = times[:, 0] - times[0, 0]
    # One tick every 1 / target_fps seconds before the last frame ends; each takes the frame on screen then (the
    # last one starting at or before it; the tolerances absorb float32 timestamps).
    num_ticks = int(np.floor((times[-1, 1] - times[0, 0]) * target_fps - 1e-6)) + 1
    ticks = np.arange(max(num_ticks, 1)) / target_fps
    indices = np.searchsorted(starts, ticks + 1e-4, side="right") - 1
    return np.unique(np.clip(indices, 0, num_video_frames - 1))


def sample_frame_indices(
    num_video_frames: int,
    num_frames: int,
    *,
    native_fps: float | None = None,
    target_fps: float | None = None,
    timestamps: np.ndarray | None = None,
    training: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Choose `num_frames` frame indices of a `num_video_frames`-frame video.

    The candidates (see `candidate_frame_indices`) are split into `num_frames` equal chunks of consecutive
    frames; evaluation (`training=False`) takes each chunk's center frame, training a uniformly random frame of
    each chunk (drawn from `generator`, or torch's global RNG, which DataLoader workers seed per worker). With
    fewer candidates than `num_frames`, every candidate is taken once and the last one repeats.

    Returns:
        indices: int64 array `[num_frames]`, non-decreasing.
        mask: bool array `[num_frames]`, False for the repeated padding frames.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    candidates = candidate_frame_indices(
        num_video_frames, native_fps=native_fps, target_fps=target_fps, timestamps=timestamps
    )
    n = len(candidates)
    mask = np.ones(num_frames, dtype=bool)
    if n < num_frames:
        positions = np.concatenate([np.arange(n), np.full(num_frames - n, n - 1)])
        mask[n:] = False
        return candidates[positions], mask
    # Chunk i holds candidates [starts[i], ends[i]); every chunk is non-empty because n >= num_frames.
    bounds = (np.arange(num_frames + 1) * n) // num_frames
    starts, ends = bounds[:-1], bounds[1:]
    if training:
        offsets = torch.rand(num_frames, generator=generator, dtype=torch.float64).numpy()
        positions = starts + np.minimum((offsets * (ends - starts)).astype(np.int64), ends - starts - 1)
    else:
        positions = starts + (ends - starts - 1) // 2
    return candidates[positions], mask


def open_video(path: str | os.PathLike, num_threads: int = 1):
    """Check a video file and open it with decord: a `decord.VideoReader` with at least one frame.

    Raises `VideoDecodeError` (a `ValueError`) naming the file when it is missing, empty or undecodable.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoDecodeError(path, "no such file")
    if not os.path.isfile(path):
        raise VideoDecodeError(path, "not a regular file")
    if not os.access(path, os.R_OK):
        raise VideoDecodeError(path, "the file is not readable (permission denied)")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "the file is empty (0 bytes)")
    import decord  # lazily: the model files must import without decord

    decord.logging.set_level(decord.logging.QUIET)  # ffmpeg's stderr lines; a failure raises with its reason
    with decord_errors(path):
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads)
        if len(reader) < 1:
            raise VideoDecodeError(path, "the video has no frames")
    return reader


@contextlib.contextmanager
def decord_errors(path: str):
    """Turn decord's errors inside the block into a `VideoDecodeError` naming `path`."""
    try:
        yield
    except VideoDecodeError:
        raise
    except Exception as error:  # decord raises RuntimeError / DECORDError with ffmpeg's message
        raise VideoDecodeError(path, _decord_failure_reason(path, error)) from error


def read_video_frames(
    path: str | os.PathLike,
    num_frames: int,
    *,
    target_fps: float | None = None,
    training: bool = False,
    generator: torch.Generator | None = None,
    num_threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode the sampled frames of a video file with decord.

    Returns `(frames, mask)`: uint8 `[num_frames, H, W, 3]` RGB and bool `[num_frames]`.
    Raises `VideoDecodeError` (a `ValueError`) naming the file when it is missing, empty or undecodable.
    """
    path = os.fspath(path)
    reader = open_video(path, num_threads)
    with decord_errors(path):
        indices, mask = sample_frame_indices(
            len(reader),
            num_frames,
            native_fps=reader.get_avg_fps(),
            target_fps=target_fps,
            timestamps=reader.get_frame_timestamp(np.arange(len(reader))) if target_fps else None,
            training=training,
            generator=generator,
        )
        frames = reader.get_batch(indices.tolist()).asnumpy()
    if frames.ndim != 4 or frames.shape[0] != num_frames or frames.shape[-1] != 3:
        raise VideoDecodeError(path, f"decoded frames have unexpected shape {tuple(frames.shape)}")
    return frames, mask


def decode_images(images: Sequence, name: str = "video") -> np.ndarray:
    """Encoded frames -> uint8 `[N, H, W, 3]` RGB. Each is the bytes of an image file (JPEG, PNG, ...), a
    `{"bytes": ..., "path": ...}` dict (as `datasets.Image(decode=False)` gives) or a PIL image.

    JPEG bytes are decoded by simplejpeg straight into the output array when it is installed (the `video`
    extra): the same libjpeg-turbo decode as Pillow's, bit for bit, without Pillow's per-image object and two
    copies, which made up a third of a frame store's read time. Anything else goes through Pillow.
    """
    from PIL import Image  # lazily, like decord

    frames = None
    for position, image in enumerate(images):
        try:
            if isinstance(image, dict):
                image = image.get("bytes") or image.get("path")
            if isinstance(image, (bytes, bytearray)) and _simplejpeg is not None and image[:2] == b"\xff\xd8":
                height, width, colorspace, _ = _simplejpeg.decode_jpeg_header(image)
                frames = _frame_buffer(frames, len(images), (height, width), name)
                if colorspace in ("YCbCr", "Gray"):  # Pillow converts CMYK / YCCK to RGB its own way
                    with contextlib.suppress(ValueError):  # damaged: Pillow says why (or decodes what it can)
                        _simplejpeg.decode_jpeg(image, colorspace="RGB", buffer=frames[position])
                        continue
            if isinstance(image, (bytes, bytearray)):
                image = Image.open(io.BytesIO(image))
            elif isinstance(image, (str, os.PathLike)):
                image = Image.open(image)
            frames = _frame_buffer(frames, len(images), (image.height, image.width), name)
            frames[position] = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        except VideoDecodeError:
            raise
        except Exception as error:
            raise VideoDecodeError(f"{name} frame {position}", f"not a decodable image ({error})") from error
    if frames is None:
        raise VideoDecodeError(name, "the frame list is empty")
    return frames


def _frame_buffer(frames: np.ndarray | None, count: int, size: tuple[int, int], name: str) -> np.ndarray:
    """The `[count, H, W, 3]` output of `decode_images`, allocated at the first frame; later frames must match."""
    if frames is None:
        return np.empty((count, *size, 3), dtype=np.uint8)
    if frames.shape[1:3] != size:
        raise VideoDecodeError(name, f"frames differ in size: {frames.shape[1:3]} and {size} (height, width)")
    return frames


def _decord_failure_reason(path: str, error: Exception) -> str:
    """decord's error in plain words: its internal checks and ffmpeg's error numbers mean little to users."""
    # Keep ffmpeg's/decord's own words, without decord's "[time] source.cc:line:" prefix.
    message = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    reason = re.sub(r"^\[[\d:]+\]\s+\S+:\d+:\s*", "", message)
    if "cannot find video stream" in reason:
        return "no video stream (the file holds only audio, or no track at all)"
    if "av_read_frame failed" in reason:  # ffmpeg could not read a packet: the data ends early or is damaged
        counts = _readable_frame_count(path)
        where = f" at frame {counts[0] + 1} of {counts[1]}" if counts and counts[1] > counts[0] else ""
        return f"decoding failed{where} (truncated or corrupt)"
    if reason.startswith("Error reading"):  # decord's whole message when ffmpeg cannot open the file
        return "ffmpeg cannot open it: corrupt, truncated or not a video"
    return f"decord could not decode it ({reason})"


def _readable_frame_count(path: str) -> tuple[int, int] | None:
    """(frames readable before the damage, frames the container announces), or None when PyAV cannot tell.

    decord gives up on the whole file at the first bad packet without saying where; PyAV's demuxer, which only
    reads packets (no decoding), counts how far the file is intact.
    """
    try:
        import av
    except ImportError:
        return None
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            readable = 0
            try:
                for packet in container.demux(stream):
                    readable += packet.size > 0  # the final flush packet is empty
            except av.error.FFmpegError:
                pass  # the damage: `readable` frames came before it
            return readable, stream.frames
    except (av.error.FFmpegError, IndexError):
        return None


def resize_and_center_crop(frames: torch.Tensor, size: int, resample: str = "bicubic") -> torch.Tensor:
    """Resize the shorter side to `size` (antialiased) and center crop: `[T, 3, H, W]` -> `[T, 3, size, size]`.

    uint8 frames stay uint8 (rounded and clamped like an 8-bit image, as CLIP's own preprocessing does), which
    also takes torch's fast uint8 resampling path (about 20x faster than float on CPU); float frames on the
    0..255 scale are clamped after bicubic overshoot.
    """
    height, width = frames.shape[-2:]
    scale = size / min(height, width)
    new_height, new_width = max(size, round(height * scale)), max(size, round(width * scale))
    if (new_height, new_width) != (height, width):
        frames = F.interpolate(frames, size=(new_height, new_width), mode=resample, align_corners=False, antialias=True)
        if frames.is_floating_point():
            frames = frames.clamp_(0, 255)
    top, left = int(round((new_height - size) / 2.0)), int(round((new_width - size) / 2.0))
    return frames[..., top : top + size, left : left + size]


class CenterCLIPProcessor(ProcessorMixin):
    r"""
    Tokenizes captions with a [`CLIPTokenizer`] and turns videos into the `pixel_values` / `video_mask` that
    [`CenterCLIPModel`] takes.

    Args:
        tokenizer ([`CLIPTokenizer`]):
            The text tokenizer.
        num_frames (`int`, defaults to 12):
            Frames per video (T).
        image_size (`int`, defaults to 224):
            Side of the square frames after resizing the shorter side and center cropping.
        max_length (`int`, defaults to 32):
            Text length in tokens; captions are padded and truncated to it.
        fps (`float`, *optional*):
            Decode at this frame rate before sampling (the paper uses 3); `None` samples from every frame.
        image_mean / image_std (`list[float]`, defaults to CLIP's):
            Per-channel normalisation of pixels scaled to [0, 1].
        resample (`str`, defaults to `"bicubic"`):
            `torch.nn.functional.interpolate` mode for resizing (`"bicubic"` or `"bilinear"`).
        decode_threads (`int`, defaults to 1):
            ffmpeg threads per decoded video (1 suits DataLoader workers; 0 lets ffmpeg choose).
    """

    model_input_names = ["input_ids", "attention_mask", "pixel_values", "video_mask"]

    @classmethod
    def get_processor_dict(cls, pretrained_model_name_or_path, **kwargs):
        # A stock CLIP checkpoint has no video settings: decode at the paper's frame rate. A saved
        # CenterCLIPProcessor always records `fps` (null = every frame), which is kept as it is.
        processor_dict, instantiation_kwargs = super().get_processor_dict(pretrained_model_name_or_path, **kwargs)
        if "fps" not in processor_dict:
            processor_dict = {**processor_dict, "fps": PAPER_FPS}
        return processor_dict, instantiation_kwargs

    def __init__(
        self,
        tokenizer=None,
        num_frames: int = 12,
        image_size: int = 224,
        max_length: int = 32,
        fps: float | None = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        resample: str = "bicubic",
        decode_threads: int = 1,
        **kwargs,
    ):
        self.num_frames = int(num_frames)
        self.image_size = int(image_size)
        self.max_length = int(max_length)
        self.fps = None if fps is None else float(fps)
        self.image_mean = [float(x) for x in (OPENAI_CLIP_MEAN if image_mean is None else image_mean)]
        self.image_std = [float(x) for x in (OPENAI_CLIP_STD if image_std is None else image_std)]
        self.resample = resample
        self.decode_threads = int(decode_threads)
        self._check_settings()
        super().__init__(tokenizer, **kwargs)

    def _check_settings(self):
        def fail(field, message):
            raise ValueError(f"CenterCLIPProcessor.{field}={getattr(self, field)!r}: {message}")

        for field in ("num_frames", "image_size", "max_length"):
            if getattr(self, field) < 1:
                fail(field, "must be a positive integer")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            fail("fps", "must be a positive number or None")
        for field in ("image_mean", "image_std"):
            if len(getattr(self, field)) != 3:
                fail(field, "needs one value per RGB channel")
        if any(s <= 0 for s in self.image_std):
            fail("image_std", "values must be positive")
        if self.resample not in ("bicubic", "bilinear"):
            fail("resample", "must be 'bicubic' or 'bilinear'")
        if self.decode_threads < 0:
            fail("decode_threads", "must be >= 0")

    def __call__(
        self,
        text: str | list[str] | None = None,
        videos=None,
        return_tensors: str | None = "pt",
        training: bool = False,
        generator: torch.Generator | None = None,
        padding: bool | str = "max_length",
        truncation: bool = True,
        max_length: int | None = None,
        do_normalize: bool = True,
        **kwargs,
    ) -> BatchFeature:
        """Tokenize `text` and/or load `videos`.

        Args:
            text: a caption or a list of captions.
            videos: a video or a list of videos; each a file path (decoded with decord), a uint8 frame array
                `[frames, H, W, 3]` (numpy or torch, RGB) or a list of encoded frames (see `decode_images`; only
                the sampled ones are decoded); arrays and lists are sampled like a file's frames, without fps.
            return_tensors: `"pt"` (default) or `"np"`.
            training: random frame per chunk instead of the chunk center.
            generator: a `torch.Generator` for the training-time frame choice.
            do_normalize: `False` returns the resized, cropped frames as uint8 (no rescaling or normalisation),
                for `normalize` to finish on the accelerator: a quarter of the bytes through DataLoader workers
                and to the device.

        Returns:
            `BatchFeature` with `input_ids` / `attention_mask` `[num_texts, max_length]` when text is given, and
            `pixel_values` float32 (uint8 without `do_normalize`) `[num_videos, num_frames, 3, image_size,
            image_size]` and `video_mask` bool `[num_videos, num_frames]` when videos are given.
        """
        if text is None and videos is None:
            raise ValueError("CenterCLIPProcessor needs `text`, `videos` or both")
        if return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}")
        data = {}
        if text is not None:
            if isinstance(text, str):
                text = [text]
            if not isinstance(text, (list, tuple)) or not all(isinstance(t, str) for t in text):
                raise ValueError("text must be a string or a list of strings")
            if not text:
                raise ValueError("text is an empty list: pass at least one caption, or leave text out (None)")
            encoding = self.tokenizer(
                list(text),
                padding=padding,
                truncation=truncation,
                max_length=self.max_length if max_length is None else max_length,
                return_tensors="pt",
                **kwargs,
            )
            data["input_ids"] = encoding["input_ids"]
            data["attention_mask"] = encoding["attention_mask"]
        if videos is not None:
            single = isinstance(videos, (str, os.PathLike, np.ndarray, torch.Tensor))
            videos = [videos] if single else list(videos)
            if not videos:
                raise ValueError("videos is empty: pass at least one video (a file path or a frame array), or "
                                 "leave videos out (None)")
            pixel_values, video_mask = [], []
            for position, video in enumerate(videos):
                name = f"videos[{position}]"
                pixels, mask = self.load_video(
                    video, training=training, generator=generator, name=name, do_normalize=do_normalize
                )
                pixel_values.append(pixels)
                video_mask.append(mask)
            # One video (a DataLoader item) needs no copy: a 7 MB stack per clip was a tenth of a store's read time.
            data["pixel_values"] = pixel_values[0][None] if len(videos) == 1 else torch.stack(pixel_values)
            data["video_mask"] = torch.stack(video_mask)
        if return_tensors == "np":
            data = {key: value.numpy() for key, value in data.items()}
        return BatchFeature(data=data, tensor_type=return_tensors)

    def load_video(
        self,
        video,
        *,
        training: bool = False,
        generator: torch.Generator | None = None,
        name: str = "video",
        do_normalize: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One video (path, uint8 array or encoded frames) -> `pixel_values` `[T, 3, S, S]` float32 (uint8 without
        `do_normalize`), `video_mask` `[T]` bool."""
        if isinstance(video, (str, os.PathLike)):
            frames, mask = read_video_frames(
                video,
                self.num_frames,
                target_fps=self.fps,
                training=training,
                generator=generator,
                num_threads=self.decode_threads,
            )
            frames = torch.from_numpy(frames)
        elif isinstance(video, (np.ndarray, torch.Tensor)):
            array = torch.as_tensor(video)
            if array.dtype != torch.uint8 or array.ndim != 4 or array.shape[-1] != 3:
                raise VideoDecodeError(
                    name,
                    f"a frame array must be uint8 [frames, H, W, 3] RGB, got {array.dtype} {tuple(array.shape)}",
                )
            if array.shape[0] < 1 or array.shape[1] < 1 or array.shape[2] < 1:
                raise VideoDecodeError(name, f"the frame array is empty {tuple(array.shape)}")
            indices, mask = sample_frame_indices(
                array.shape[0], self.num_frames, training=training, generator=generator
            )
            frames = array[torch.from_numpy(indices)]
        elif isinstance(video, (list, tuple)):  # encoded frames, e.g. a frame store row: decode the chosen ones
            if not video:
                raise VideoDecodeError(name, "the frame list is empty")
            indices, mask = sample_frame_indices(len(video), self.num_frames, training=training, generator=generator)
            chosen, positions = np.unique(indices, return_inverse=True)  # padding repeats a frame: decode it once
            frames = decode_images([video[i] for i in chosen], name)
            frames = torch.from_numpy(frames if np.array_equal(chosen, indices) else frames[positions])
        else:
            raise VideoDecodeError(
                name, f"expected a file path, a frame array or a list of encoded frames, got {type(video).__name__}"
            )
        return self.preprocess_frames(frames, do_normalize=do_normalize), torch.from_numpy(mask)

    def preprocess_frames(self, frames: torch.Tensor, do_normalize: bool = True) -> torch.Tensor:
        """uint8 `[T, H, W, 3]` -> normalised float32 `[T, 3, image_size, image_size]` (uint8 without
        `do_normalize`)."""
        # [T, H, W, 3] -> [T, 3, H, W] is a channels-last view, the layout torch's uint8 resize is fastest on.
        pixels = resize_and_center_crop(frames.permute(0, 3, 1, 2), self.image_size, self.resample)
        pixels = pixels.contiguous()  # contiguous before the cast: the cheap order on CPU
        return self.normalize(pixels) if do_normalize else pixels

    def normalize(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """uint8 pixel values `[..., 3, S, S]` (as `do_normalize=False` gives) -> the model's float32 input, on
        their own device: the same arithmetic as the processor's own normalisation, bit for bit on the CPU."""
        if pixel_values.dtype != torch.uint8 or pixel_values.ndim < 3 or pixel_values.shape[-3] != 3:
            raise ValueError(
                f"normalize takes uint8 pixel values [..., 3, H, W] (do_normalize=False), got {pixel_values.dtype} "
                f"{tuple(pixel_values.shape)}"
            )
        shape = (3, 1, 1)
        std = torch.tensor(self.image_std, device=pixel_values.device).view(shape) * 255.0
        mean = torch.tensor(self.image_mean, device=pixel_values.device).view(shape) * 255.0
        return pixel_values.float().mul_(1.0 / std).add_(-mean / std)


__all__ = ["CenterCLIPProcessor", "VideoDecodeError", "sample_frame_indices", "read_video_frames", "decode_images"]
