"""CenterCLIPProcessor: frame sampling, decoding, pixel preprocessing, text, save/load."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import coded_frames, pixel_values_to_rgb, read_frame_codes
from transformers import AutoProcessor

from modeling_centerclip import CenterCLIPProcessor
from modeling_centerclip import processing_centerclip
from modeling_centerclip.processing_centerclip import (
    VideoDecodeError,
    candidate_frame_indices,
    decode_images,
    resize_and_center_crop,
    sample_frame_indices,
)

# ---------------------------------------------------------------------------------------------- frame sampling


def test_eval_sampling_takes_the_center_of_each_equal_chunk():
    indices, mask = sample_frame_indices(120, 12)
    assert indices.tolist() == [4 + 10 * i for i in range(12)]  # chunk [10i, 10i+10) -> center 10i+4
    assert mask.all()
    indices, _ = sample_frame_indices(12, 12)
    assert indices.tolist() == list(range(12))
    indices, _ = sample_frame_indices(25, 4)  # chunks [0,6) [6,12) [12,18) [18,25)
    assert indices.tolist() == [2, 8, 14, 21]


def test_training_sampling_draws_one_random_frame_inside_each_chunk():
    generator = torch.Generator().manual_seed(0)
    draws = np.stack([sample_frame_indices(120, 12, training=True, generator=generator)[0] for _ in range(200)])
    chunk = np.arange(12) * 10
    assert ((draws >= chunk) & (draws < chunk + 10)).all()
    assert all(len(np.unique(draws[:, i])) == 10 for i in range(12))  # every frame of a chunk gets drawn
    again = sample_frame_indices(120, 12, training=True, generator=torch.Generator().manual_seed(0))[0]
    assert again.tolist() == draws[0].tolist()  # the generator makes it reproducible


def test_short_video_repeats_its_last_frame_and_masks_the_copies():
    for training in (False, True):
        indices, mask = sample_frame_indices(5, 8, training=training)
        assert indices.tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
        assert mask.tolist() == [True] * 5 + [False] * 3


def test_target_fps_subsamples_the_candidates():
    assert candidate_frame_indices(60, native_fps=30, target_fps=3).tolist() == [0, 10, 20, 30, 40, 50]
    assert candidate_frame_indices(10, native_fps=25, target_fps=10).tolist() == [0, 2, 5, 7]  # 0, 2.5, 5, 7.5
    assert candidate_frame_indices(7, native_fps=10, target_fps=30).tolist() == list(range(7))  # never upsample
    assert candidate_frame_indices(7, native_fps=None, target_fps=3).tolist() == list(range(7))  # unknown fps
    indices, mask = sample_frame_indices(60, 3, native_fps=30, target_fps=3)
    assert indices.tolist() == [0, 20, 40] and mask.all()  # 6 candidates, chunks of 2, centers take the first
    indices, mask = sample_frame_indices(60, 8, native_fps=30, target_fps=3)
    assert indices.tolist() == [0, 10, 20, 30, 40, 50, 50, 50] and mask.sum() == 6


def test_sampling_rejects_impossible_requests():
    with pytest.raises(ValueError, match="at least one frame"):
        sample_frame_indices(0, 4)
    with pytest.raises(ValueError, match="num_frames"):
        sample_frame_indices(10, 0)


# ---------------------------------------------------------------------------------------------- decoded videos


def test_processor_shapes_masks_and_frames_of_a_known_video(processor, video_dir):
    out = processor(text=["a red 3 moves left", "a green circle"], videos=[str(video_dir / "clip30.mp4"),
                                                                          str(video_dir / "clip3.mp4")])
    assert out["pixel_values"].shape == (2, 6, 3, 32, 32) and out["pixel_values"].dtype == torch.float32
    assert out["video_mask"].dtype == torch.bool
    assert out["video_mask"].tolist() == [[True] * 6, [True] * 3 + [False] * 3]
    assert out["input_ids"].shape == out["attention_mask"].shape == (2, 32)
    codes = read_frame_codes(pixel_values_to_rgb(out["pixel_values"][0], processor))
    assert codes.tolist() == sample_frame_indices(30, 6)[0].tolist() == [2, 7, 12, 17, 22, 27]
    codes = read_frame_codes(pixel_values_to_rgb(out["pixel_values"][1], processor))
    assert codes.tolist() == [0, 1, 2, 2, 2, 2]


def test_training_mode_decodes_a_random_frame_per_chunk(processor, video_dir):
    generator = torch.Generator().manual_seed(3)
    seen = []
    for _ in range(5):
        out = processor(videos=str(video_dir / "clip30.mp4"), training=True, generator=generator)
        codes = read_frame_codes(pixel_values_to_rgb(out["pixel_values"][0], processor))
        assert ((codes >= np.arange(6) * 5) & (codes < np.arange(6) * 5 + 5)).all()
        seen.append(tuple(codes))
    assert len(set(seen)) > 1
    assert "input_ids" not in out


def test_fps_decoding_picks_frames_at_the_target_rate(tiny_tokenizer, video_dir):
    processor = CenterCLIPProcessor(tokenizer=tiny_tokenizer, num_frames=6, image_size=32, fps=3)
    out = processor(videos=[str(video_dir / "clip60_30fps.mp4")])
    codes = read_frame_codes(pixel_values_to_rgb(out["pixel_values"][0], processor))
    assert codes.tolist() == [0, 10, 20, 30, 40, 50]


def test_frame_arrays_are_sampled_like_files(processor):
    frames = coded_frames(30, 40, 60)
    out_np = processor(videos=[frames])
    out_torch = processor(videos=torch.from_numpy(coded_frames(4, 40, 60)))  # a single video, not a list
    assert read_frame_codes(pixel_values_to_rgb(out_np["pixel_values"][0], processor)).tolist() == [2, 7, 12, 17, 22, 27]
    assert out_torch["video_mask"].tolist() == [[True] * 4 + [False] * 2]
    assert read_frame_codes(pixel_values_to_rgb(out_torch["pixel_values"][0], processor)).tolist() == [0, 1, 2, 3, 3, 3]


def encode(image, fmt: str = "JPEG", **options) -> bytes:
    """An RGB / grayscale array or a PIL image -> the bytes of an image file."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_encoded_frames_decode_to_the_same_pixels_with_and_without_simplejpeg(monkeypatch):
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = [rng.integers(0, 256, (24, 40, 3), dtype=np.uint8) for _ in range(3)]
    frames = [encode(rgb[0], quality=95, subsampling=0),  # as a frame store writes them
              {"bytes": encode(rgb[1], quality=80), "path": None},  # 4:2:0, as datasets' Image(decode=False) gives
              encode(rgb[2][..., 0], quality=90),  # a grayscale JPEG
              encode(rgb[0], fmt="PNG"),
              Image.fromarray(rgb[1]),
              encode(Image.fromarray(rgb[2]).convert("CMYK"), quality=95)]  # libjpeg-turbo gives no RGB: Pillow does
    simplejpeg = processing_centerclip._simplejpeg
    assert simplejpeg is not None, "simplejpeg (the video extra) should be installed"
    decoded = []
    monkeypatch.setattr(simplejpeg, "decode_jpeg", lambda *a, _decode=simplejpeg.decode_jpeg, **k: decoded.append(
        _decode(*a, **k)))
    fast = decode_images(frames)
    assert len(decoded) == 3  # the YCbCr and grayscale JPEGs; Pillow takes the CMYK one
    monkeypatch.setattr(processing_centerclip, "_simplejpeg", None)
    pillow = decode_images(frames)
    assert fast.dtype == np.uint8 and fast.shape == (6, 24, 40, 3)
    assert np.array_equal(fast, pillow)  # the same libjpeg-turbo decode, bit for bit
    assert np.array_equal(fast[3], rgb[0])  # PNG is lossless
    assert np.abs(fast[0].astype(int) - rgb[0]).mean() < 8  # and the JPEGs are the frames
    assert np.array_equal(fast[2][..., 0], fast[2][..., 2])  # grayscale comes back as RGB


@pytest.mark.parametrize("fast", [True, False])
def test_bad_encoded_frames_name_the_frame(fast, monkeypatch):
    if not fast:
        monkeypatch.setattr(processing_centerclip, "_simplejpeg", None)
    good = encode(np.zeros((16, 16, 3), dtype=np.uint8))
    with pytest.raises(VideoDecodeError, match=r"clip7 frame 1: not a decodable image"):
        decode_images([good, good[: len(good) // 2]], name="clip7")  # truncated JPEG
    with pytest.raises(VideoDecodeError, match=r"clip7 frame 1: not a decodable image"):
        decode_images([good, b"not an image"], name="clip7")
    with pytest.raises(VideoDecodeError, match=r"clip7: frames differ in size"):
        decode_images([good, encode(np.zeros((16, 20, 3), dtype=np.uint8))], name="clip7")


def test_uint8_pixel_values_normalised_later_equal_the_normalised_ones(processor, video_dir):
    """`do_normalize=False` + `normalize` (what training, evaluation and indexing do on the device) gives exactly
    the processor's own float32 pixel values, for files, frame arrays and encoded frames."""
    videos = [str(video_dir / "clip30.mp4"), coded_frames(3, 40, 60), [encode(f) for f in coded_frames(8, 24, 24)]]
    normalised = processor(videos=videos)["pixel_values"]
    raw = processor(videos=videos, do_normalize=False)
    assert raw["pixel_values"].dtype == torch.uint8 and raw["pixel_values"].shape == normalised.shape
    assert torch.equal(processor.normalize(raw["pixel_values"]), normalised)
    assert torch.equal(raw["video_mask"], processor(videos=videos)["video_mask"])
    pixels, mask = processor.load_video(videos[1], do_normalize=False)
    assert torch.equal(processor.normalize(pixels), processor.load_video(videos[1])[0])
    with pytest.raises(ValueError, match=r"normalize takes uint8 pixel values .* got torch.float32"):
        processor.normalize(normalised)  # normalising twice would be silently wrong


def test_resize_shorter_side_then_center_crop_then_clip_normalisation(processor):
    frame = np.zeros((1, 40, 80, 3), dtype=np.uint8)  # wide frame: red side bands, white middle half
    frame[:, :, :20] = (255, 0, 0)
    frame[:, :, 20:60] = (255, 255, 255)
    frame[:, :, 60:] = (255, 0, 0)
    pixels = processor(videos=[frame])["pixel_values"][0, 0]  # resized to 32x64, crop keeps columns 16..48
    expected = (1.0 - torch.tensor(processor.image_mean)) / torch.tensor(processor.image_std)
    assert torch.allclose(pixels[:, :, 4:-4], expected.view(3, 1, 1).expand(3, 32, 24), atol=1e-4)
    tall = torch.arange(2 * 3 * 50 * 30, dtype=torch.float32).view(2, 3, 50, 30)
    assert resize_and_center_crop(tall, 20).shape == (2, 3, 20, 20)
    same = torch.rand(1, 3, 32, 32) * 255
    assert torch.equal(resize_and_center_crop(same, 32), same)  # already the right size: untouched


def test_text_is_padded_and_truncated_to_max_length(tiny_tokenizer):
    processor = CenterCLIPProcessor(tokenizer=tiny_tokenizer, num_frames=4, image_size=32, max_length=8)
    out = processor(text=["a red 3", "a red 3 moves left, then a blue square appears and a man plays the guitar"])
    assert out["input_ids"].shape == (2, 8)
    assert out["attention_mask"][0].tolist() == [1] * int(out["attention_mask"][0].sum()) + [0] * (8 - int(out["attention_mask"][0].sum()))
    assert out["attention_mask"][1].all()
    eos = tiny_tokenizer.eos_token_id
    assert out["input_ids"][0, 0] == tiny_tokenizer.bos_token_id
    assert (out["input_ids"][:, -1] == eos).all()  # truncation keeps the end-of-text token
    assert processor.batch_decode(out["input_ids"][:1], skip_special_tokens=True) == ["a red 3"]
    np_out = processor(text="a red 3", return_tensors="np")
    assert isinstance(np_out["input_ids"], np.ndarray) and np_out["input_ids"].shape == (1, 8)


def test_invalid_settings_fail_at_construction_naming_the_field(tiny_tokenizer):
    for field, value in [("num_frames", 0), ("image_size", -1), ("fps", 0), ("image_std", [1, 0, 1]),
                         ("resample", "nearest"), ("image_mean", [0.5])]:
        with pytest.raises(ValueError, match=field):
            CenterCLIPProcessor(tokenizer=tiny_tokenizer, **{field: value})
    processor = CenterCLIPProcessor(tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match="needs `text`, `videos`"):
        processor()
    with pytest.raises(ValueError, match="return_tensors"):
        processor(text="a", return_tensors="tf")


# ------------------------------------------------------------------------------------------------- save / load


def test_save_and_load_round_trip(tiny_tokenizer, video_dir, tmp_path):
    processor = CenterCLIPProcessor(tokenizer=tiny_tokenizer, num_frames=5, image_size=40, max_length=16, fps=3.5,
                                    image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3], resample="bilinear")
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["auto_map"]["AutoProcessor"] == "processing_centerclip.CenterCLIPProcessor"
    assert (tmp_path / "processing_centerclip.py").is_file()
    for loaded in (CenterCLIPProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is CenterCLIPProcessor
        for field in ("num_frames", "image_size", "max_length", "fps", "image_mean", "image_std", "resample"):
            assert getattr(loaded, field) == getattr(processor, field), field
        inputs = dict(text=["a red 3 moves left"], videos=[str(video_dir / "clip30.mp4")])
        expected, got = processor(**inputs), loaded(**inputs)
        for key in ("input_ids", "attention_mask", "pixel_values", "video_mask"):
            assert torch.equal(expected[key], got[key]), key


def test_saved_processor_loads_as_remote_code_without_the_package(tiny_tokenizer, tmp_path):
    CenterCLIPProcessor(tokenizer=tiny_tokenizer, num_frames=7, image_size=48).save_pretrained(tmp_path)
    code = (
        "import sys; from transformers import AutoProcessor\n"
        f"p = AutoProcessor.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)\n"
        "assert 'modeling_centerclip' not in sys.modules, 'the package was imported'\n"
        "out = p(text='a red 3', videos=[__import__('numpy').zeros((3, 20, 30, 3), 'uint8')])\n"
        "print(type(p).__name__, p.num_frames, tuple(out['pixel_values'].shape))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["CenterCLIPProcessor", "7", "(1,", "7,", "3,", "48,", "48)"]


# ------------------------------------------------------------------------------------------ throughput script


def test_data_benchmark_quick_mode_runs_and_writes_its_table(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "benchmark_data.py"
    spec = importlib.util.spec_from_file_location("benchmark_data", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--quick", "--output", str(tmp_path / "data.json"), "--video_dir", str(tmp_path / "videos")])
    assert json.loads((tmp_path / "data.json").read_text()) == json.loads(json.dumps(results))
    assert [row["num_workers"] for row in results["runs"]] == [0, 1, 2]
    for row in results["runs"]:
        assert row["clips_per_s"] > 0 and row["batch_shape"] == [2, 12, 3, 224, 224]
    assert "| native fps | 2 |" in capsys.readouterr().out
