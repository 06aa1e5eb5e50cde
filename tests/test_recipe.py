"""The shipped benchmark configurations are the paper's recipe: `--dry_run` plans checked on the real split files.

The videos are stand-ins (empty files named after the real ids: a dry run never decodes) and so are the caption
files the community does not distribute with the splits (MSR-VTT's 20 captions per video; MSVD's 48,774
training captions; LSMDC's 101,079 training clips). The configurations name `openai/clip-vit-base-patch32`,
which cannot be downloaded here: the test overrides the checkpoint with a tiny random CLIP saved to a temporary
folder (the plan's numbers do not depend on the weights).
"""

import csv
import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch

from training.train import main

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
MSRVTT = dict(items_per_epoch=180_000, steps_per_epoch=1406, optimizer_steps=7030, warmup_steps=703)
ACTIVITYNET = dict(items_per_epoch=10_009, steps_per_epoch=78, optimizer_steps=624, warmup_steps=62, num_frames=60,
                   max_words=77, learning_rate=1e-5, num_train_epochs=8.0, num_centers=49, cluster_layer=6,
                   cluster_algo="kmedoids", gradient_checkpointing=True)  # fmt: skip
# name: (expected plan, benchmark); every plan also has a global batch of 128 and 3 fps
EXPECTED = {
    "msrvtt_vitb32.yaml": ({**MSRVTT, "num_segments": 3, "num_centers": 49, "cluster_algo": "kmedoids"}, "msrvtt"),
    "msrvtt_vitb32_4x49.yaml": ({**MSRVTT, "num_segments": 4, "num_centers": 49}, "msrvtt"),
    "msrvtt_vitb16.yaml": ({**MSRVTT, "num_segments": 4, "num_centers": 160, "gradient_checkpointing": True}, "msrvtt"),
    "msrvtt_vitb32_meanpool.yaml": ({**MSRVTT, "cluster_algo": "none"}, "msrvtt"),
    "msvd_vitb32.yaml": (dict(items_per_epoch=48_774, steps_per_epoch=381, optimizer_steps=1905, warmup_steps=190), "msvd"),
    "lsmdc_vitb32.yaml": (dict(items_per_epoch=101_079, steps_per_epoch=789, optimizer_steps=3945, warmup_steps=394), "lsmdc"),
    # the paper's ActivityNet table: B6-15,49 (the headline), B6-12,49 and B6-20,49; 60 frames, 77 words
    **{name: ({**ACTIVITYNET, "num_segments": segments}, "activitynet") for name, segments in (
        ("activitynet_vitb32.yaml", 15), ("activitynet_vitb32_12x49.yaml", 12), ("activitynet_vitb32_20x49.yaml", 20))},
}  # fmt: skip
PAPER = dict(global_batch_size=128, num_frames=12, max_words=32, fps=3.0, learning_rate=5e-6, num_train_epochs=5.0,
             item_kind="caption")  # fmt: skip


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A stock-CLIP-format folder (weights + tokenizer, no processor settings) big enough for every config's
    cluster settings: 12 layers, 64 patches per frame, 77 text positions."""
    from transformers import CLIPConfig, CLIPModel

    from training.tokenizer import train_clip_tokenizer

    folder = tmp_path_factory.mktemp("tiny_clip")
    tokenizer = train_clip_tokenizer(["a man cooks", "a dog runs in the park"] * 4, vocab_size=300)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=12, num_attention_heads=2, image_size=64,
                  patch_size=8)  # fmt: skip
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _touch_videos(folder: Path, ids) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for video_id in ids:
        (folder / f"{video_id}.mp4").touch()


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory, splits_dir):
    """Per benchmark: the extra flags pointing at the real split files, stand-in videos and caption files."""
    root = tmp_path_factory.mktemp("benchmarks")
    flags = {}
    # MSR-VTT: every video of the 9k list and the 1k-A test, 20 captions each (as in MSRVTT_data.json)
    msrvtt = splits_dir / "msrvtt"
    train_ids = [row["video_id"] for row in csv.DictReader(open(msrvtt / "MSRVTT_train.9k.csv"))]
    test_ids = [row["video_id"] for row in csv.DictReader(open(msrvtt / "MSRVTT_JSFUSION_test.csv"))]
    sentences = [{"video_id": v, "caption": f"caption {k} of {v}"} for v in train_ids + test_ids for k in range(20)]
    (root / "MSRVTT_data.json").write_text(json.dumps({"sentences": sentences}))
    _touch_videos(root / "msrvtt", train_ids + test_ids)
    flags["msrvtt"] = ["--splits_dir", str(msrvtt), "--data_json", str(root / "MSRVTT_data.json")]
    # MSVD: 48,774 training captions over the 1,200 training videos (40 or 41 each), 40 for the others
    msvd = splits_dir / "msvd"
    lists = {name: (msvd / f"{name}_list.txt").read_text().split() for name in ("train", "val", "test")}
    captions = {v: [f"caption {k}" for k in range(40 + (i < 774 and name == "train"))]
                for name, ids in lists.items() for i, v in enumerate(ids)}  # fmt: skip
    (root / "msvd_captions.json").write_text(json.dumps(captions))
    _touch_videos(root / "msvd", captions)
    flags["msvd"] = ["--splits_dir", str(msvd), "--captions_file", str(root / "msvd_captions.json")]
    # LSMDC: the real public test CSV plus a stand-in training CSV of 101,079 clips
    lsmdc = root / "lsmdc_splits"
    lsmdc.mkdir()
    shutil.copy(splits_dir / "lsmdc" / "LSMDC16_challenge_1000_publictect.csv", lsmdc)
    train_clips = [f"0001_MOVIE_{i:06d}" for i in range(101_079)]
    (lsmdc / "LSMDC16_annos_training.csv").write_text("".join(f"{c}\t0\t1\t0\t1\tSOMEONE walks {i}.\n"
                                                              for i, c in enumerate(train_clips)))  # fmt: skip
    test_clips = [line.split("\t")[0] for line in (lsmdc / "LSMDC16_challenge_1000_publictect.csv").read_text().splitlines()]
    _touch_videos(root / "lsmdc", train_clips + test_clips)
    flags["lsmdc"] = ["--splits_dir", str(lsmdc)]
    # ActivityNet: the real train.json / val_1.json
    activitynet = splits_dir / "activitynet"
    ids = [v for name in ("train.json.gz", "val_1.json.gz")
           for v in json.loads(gzip.decompress((activitynet / name).read_bytes()))]
    _touch_videos(root / "activitynet", ids)
    flags["activitynet"] = ["--splits_dir", str(activitynet)]
    return {name: [*extra, "--video_dir", str(root / name)] for name, extra in flags.items()}


def dry_run(capsys, argv) -> dict:
    """Run `train.py --dry_run` and parse its `key: value` lines."""
    main([*argv, "--dry_run"])
    lines = [line for line in capsys.readouterr().out.splitlines() if ": " in line]
    return dict(line.split(": ", 1) for line in lines)


def test_every_shipped_benchmark_config_is_tested():
    shipped = {path.name for path in CONFIGS.glob("*.yaml") if not path.name.startswith("demo_")}
    assert shipped == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dry_run_plan_matches_the_paper(name, benchmarks, tiny_clip, tmp_path, capsys):
    expected, benchmark = EXPECTED[name]
    plan = dry_run(capsys, ["--config", str(CONFIGS / name), "--model_name_or_path", str(tiny_clip),
                            *benchmarks[benchmark], "--output_dir", str(tmp_path / "run"), "--num_workers", "0"])  # fmt: skip
    for key, value in {**PAPER, **expected}.items():
        assert plan[key] == str(value), (key, plan[key], value)
    assert plan["num_processes"] == "1" and plan["per_device_train_batch_size"] == "128"
    assert not (tmp_path / "run" / "final").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_dry_run_splits_the_global_batch_and_refuses_a_remainder(benchmarks, tiny_clip, tmp_path, capsys):
    base = ["--config", str(CONFIGS / "activitynet_vitb32.yaml"), "--model_name_or_path", str(tiny_clip),
            *benchmarks["activitynet"], "--output_dir", str(tmp_path / "run"), "--num_workers", "0"]  # fmt: skip
    plan = dry_run(capsys, [*base, "--gradient_accumulation_steps", "4", "--no-expand_captions"])
    assert (plan["global_batch_size"], plan["per_device_train_batch_size"], plan["optimizer_steps"]) == ("128", "32", "624")
    with pytest.raises(ValueError, match=r"global_batch_size'=128: not divisible by 1 process\(es\) x "
                                         r"gradient_accumulation_steps=3"):  # fmt: skip
        main([*base, "--gradient_accumulation_steps", "3", "--dry_run"])


def test_caption_expansion_is_optional(benchmarks, tiny_clip, tmp_path, capsys):
    base = ["--config", str(CONFIGS / "msvd_vitb32.yaml"), "--model_name_or_path", str(tiny_clip),
            *benchmarks["msvd"], "--output_dir", str(tmp_path / "run"), "--num_workers", "0"]  # fmt: skip
    plan = dry_run(capsys, [*base, "--no-expand_captions"])
    assert (plan["items_per_epoch"], plan["item_kind"], plan["steps_per_epoch"]) == ("1200", "video", "9")


def test_processor_of_a_stock_clip_checkpoint_decodes_at_3_fps(tiny_clip, tmp_path):
    from modeling_centerclip import CenterCLIPProcessor

    assert CenterCLIPProcessor.from_pretrained(tiny_clip).fps == 3
    every_frame = CenterCLIPProcessor.from_pretrained(tiny_clip, fps=None)
    every_frame.save_pretrained(tmp_path / "saved")
    assert CenterCLIPProcessor.from_pretrained(tmp_path / "saved").fps is None  # None stays available


def test_gradient_checkpointing_trains_to_the_same_loss(tiny_clip):
    from modeling_centerclip import CenterCLIPModel
    from training.losses import batch_loss

    batch = {"input_ids": torch.randint(2, 50, (3, 8)), "pixel_values": torch.randn(3, 4, 3, 64, 64)}
    batch["input_ids"][:, -1] = 1
    losses = []
    for checkpointing in (False, True):
        model = CenterCLIPModel.from_pretrained(tiny_clip, num_frames=4, num_segments=2, num_centers=8, cluster_layer=6)
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        assert model.is_gradient_checkpointing == checkpointing
        model.train()
        loss = batch_loss(model, batch)
        loss.backward()
        losses.append((loss.detach(), model.visual_projection.weight.grad.clone()))
    torch.testing.assert_close(losses[0][0], losses[1][0])
    torch.testing.assert_close(losses[0][1], losses[1][1])
