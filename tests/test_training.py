"""training/train.py on a tiny generated corpus: loss goes down, faults are reported, resume is exact, the saved
folder reloads through AutoModel, and the config is validated before any work."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from training.train import NonFiniteLossError, main, parse_args

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {
    "projection_dim": 16,
    "num_frames": 4,
    "num_segments": 2,
    "num_centers": 8,
    "cluster_layer": 1,
    "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                    "max_position_embeddings": 16},
    "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                      "image_size": 32, "patch_size": 8},
}  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from training.demo_corpus import generate_demo_corpus

    folder = tmp_path_factory.mktemp("corpus")
    generate_demo_corpus(folder, num_train=16, num_test=8, num_frames=8, size=32, show_progress=False)
    return str(folder)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each in-process run builds its own Accelerator (Accelerate keeps process-wide singletons)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield


def write_config(folder: Path, corpus: str, **overrides) -> str:
    settings = {
        "model_config": TINY_MODEL, "corpus": corpus, "tokenizer_vocab_size": 300, "max_words": 16,
        "learning_rate": "2e-3",  # a string on purpose: YAML reads 2e-3 so, the config loader must convert it
        "freeze_stems": False, "per_device_train_batch_size": 8, "max_train_steps": 10, "warmup_ratio": 0.1,
        "weight_decay": 0.0, "logging_steps": 1, "checkpointing_steps": 0, "mixed_precision": "no",
        "report_to": "none", "progress": False, "eval_split": "none", "seed": 0,
    }  # fmt: skip
    settings.update(overrides)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    return str(path)


def losses(output_dir) -> list[float]:
    history = json.loads((Path(output_dir) / "loss_history.json").read_text())
    return [record["loss"] for record in history if "loss" in record]


def test_loss_decreases_within_a_few_steps(tmp_path, corpus):
    config = write_config(tmp_path, corpus, max_train_steps=45, learning_rate=1e-3, lr_scheduler="constant_with_warmup")
    summary = main(["--config", config, "--output_dir", str(tmp_path / "run")])
    curve = losses(tmp_path / "run")
    assert summary["steps"] == 45 and len(curve) == 45
    # Batches of 8: chance level is ln(8) = 2.08. A model from scratch first collapses to chance, then has to
    # tell the clips apart to go lower; 16 clips are learnt within the 45 steps (30 left too little margin).
    chance = math.log(8)
    assert sum(curve[:3]) / 3 > 0.95 * chance, curve
    assert sum(curve[-5:]) / 5 < 0.75 * chance, curve


@pytest.mark.parametrize(
    "corrupt, message, named",
    [
        ("visual_projection", r"step 1 on the batch of videos \['train_000\d\d'", 8),  # the whole batch is named
        # NaN tokens reach the clustering: the same error, naming the videos whose tokens broke
        ("vision_model.encoder.layers.0.mlp.fc1", r"vision layer \d+ at optimizer step 1 in the videos \['train_000\d\d'", 8),
    ],
)
def test_non_finite_loss_names_the_step_and_videos(tmp_path, corpus, tiny_tokenizer, corrupt, message, named):
    from modeling_centerclip import CenterCLIPConfig, CenterCLIPModel, CenterCLIPProcessor

    config = CenterCLIPConfig(**{**TINY_MODEL, "text_config": {**TINY_MODEL["text_config"], "vocab_size": len(tiny_tokenizer),
                                 "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}})  # fmt: skip
    model = CenterCLIPModel(config)
    with torch.no_grad():
        model.get_submodule(corrupt).weight[0, 0] = float("nan")  # a corrupted checkpoint
    model.save_pretrained(tmp_path / "broken")
    CenterCLIPProcessor(tiny_tokenizer, num_frames=4, image_size=32, max_length=16).save_pretrained(tmp_path / "broken")
    run_config = write_config(tmp_path, corpus, model_config=None, model_name_or_path=str(tmp_path / "broken"))
    with pytest.raises(NonFiniteLossError, match=message) as error:
        main(["--config", run_config, "--output_dir", str(tmp_path / "run")])
    assert len(eval(str(error.value).split("videos ")[1].split("]")[0] + "]")) == named
    assert not (tmp_path / "run" / "final").exists()


def test_killed_and_resumed_run_ends_like_an_uninterrupted_one(tmp_path, corpus):
    # 16 clips, batches of 4, 2 accumulation steps: 2 optimizer steps per epoch, 5 steps in all. A checkpoint at
    # step 3 (mid-epoch: 2 batches already seen), the process is SIGKILLed after step 4, a new process resumes.
    settings = dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, max_train_steps=5,
                    checkpointing_steps=3)  # fmt: skip
    config = write_config(tmp_path, corpus, **settings)
    main(["--config", config, "--output_dir", str(tmp_path / "straight")])
    # Both runs share the vocabulary: BPE training may break ties differently in another process.
    config = write_config(tmp_path, corpus, **settings, tokenizer_name_or_path=str(tmp_path / "straight" / "tokenizer"))

    interrupted = str(tmp_path / "interrupted")
    kill_after_step_4 = (
        "import os, signal, sys; from training.train import main; "
        "main(sys.argv[1:], step_callback=lambda step: os.kill(os.getpid(), signal.SIGKILL) if step == 4 else None)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, "-c", kill_after_step_4, "--config", config, "--output_dir", interrupted],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not Path(interrupted, "final").exists() and Path(interrupted, "checkpoints", "step_3").is_dir()

    resumed = subprocess.run([sys.executable, "training/train.py", "--config", config, "--output_dir", interrupted,
                              "--resume", "latest"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr

    straight = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    restarted = load_file(Path(interrupted, "final", "model.safetensors"))
    assert straight.keys() == restarted.keys()
    for name in straight:
        assert torch.equal(straight[name], restarted[name]), name
    assert losses(tmp_path / "straight") == losses(interrupted)


def test_trained_folder_reloads_through_auto_classes(tmp_path, corpus):
    from transformers import AutoModel, AutoProcessor

    import modeling_centerclip  # noqa: F401  registers the Auto classes
    from training.corpora import load_corpus
    from training.evaluate import evaluate_model, main as evaluate_main

    config = write_config(tmp_path, corpus, max_train_steps=3, eval_split="test", cluster_algo="kmedoids",
                          report_to="tensorboard")  # fmt: skip
    summary = main(["--config", config, "--output_dir", str(tmp_path / "run")])
    final = summary["final_dir"]
    assert list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))  # the tracker wrote its log
    assert sorted(p.name for p in Path(final).glob("*.safetensors")) == ["model.safetensors"]

    model = AutoModel.from_pretrained(final).eval()
    processor = AutoProcessor.from_pretrained(final)
    assert type(model).__name__ == "CenterCLIPModel" and type(processor).__name__ == "CenterCLIPProcessor"
    trained = summary["model"].eval()
    test_split = load_corpus(corpus)["test"]
    inputs = processor(text=test_split["caption"][:3], videos=test_split["video"][:3])
    with torch.no_grad():
        for encoder in (model, trained):
            encoder.outputs = encoder(**inputs)
    torch.testing.assert_close(model.outputs.video_embeds, trained.outputs.video_embeds, rtol=0, atol=0)
    torch.testing.assert_close(model.outputs.text_embeds, trained.outputs.text_embeds, rtol=0, atol=0)

    # the evaluation after training and a fresh evaluation of the reloaded folder agree
    during_training = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    report_path = tmp_path / "report.json"
    report = evaluate_main(["--model", final, "--corpus", corpus, "--output", str(report_path)])
    assert json.loads(report_path.read_text())["t2v"] == report["t2v"] == during_training["t2v"]
    assert report["v2t"] == during_training["v2t"] == evaluate_model(model, processor, test_split, show_progress=False)["v2t"]
    assert report["num_videos"] == 8 and 1 <= report["t2v"]["MdR"] <= 8


def test_config_is_validated_before_any_work(tmp_path, corpus):
    base = write_config(tmp_path, corpus)
    out = ["--output_dir", str(tmp_path / "never")]
    args = parse_args(["--config", base, *out, "--learning_rate", "1e-4"])
    assert args.learning_rate == 1e-4 and args.per_device_train_batch_size == 8  # the flag beats the file

    bad_files = {
        "learnin_rate": ({"learnin_rate": 1e-3}, "config key 'learnin_rate'.*unknown"),
        "negative lr": ({"learning_rate": -1.0}, "config key 'learning_rate'.*positive"),
        "not a number": ({"weight_decay": "lots"}, "config key 'weight_decay'.*bad value"),
        "bad choice": ({"lr_scheduler": "exponential"}, "config key 'lr_scheduler'"),
        "two sources": ({"model_name_or_path": "some/clip"}, "config key 'model_name_or_path'.*exactly one"),
        "warm-up": ({"warmup_ratio": 1.5}, "config key 'warmup_ratio'"),
    }
    for name, (overrides, message) in bad_files.items():
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        with pytest.raises(ValueError, match=message):
            parse_args(["--config", write_config(folder, corpus, **overrides), *out])
    # a bad cluster setting fails at model construction, naming the field, before training starts
    with pytest.raises(ValueError, match="num_centers"):
        main(["--config", base, *out, "--num_centers", "999"])
    assert not (tmp_path / "never" / "final").exists()


def test_fine_tunes_a_stock_clip_checkpoint_with_frozen_stems(tmp_path, corpus, tiny_tokenizer):
    from transformers import CLIPModel

    from tiny_models import tiny_clip_config
    from training.train import STEM_PREFIXES, new_parameter_names, parameter_groups

    clip_config = tiny_clip_config()
    clip_config.text_config.update(dict(vocab_size=len(tiny_tokenizer), bos_token_id=0, eos_token_id=1, pad_token_id=1))
    clip = CLIPModel(clip_config)
    clip.save_pretrained(tmp_path / "clip")
    tiny_tokenizer.save_pretrained(tmp_path / "clip")
    config = write_config(tmp_path, corpus, model_config=None, model_name_or_path=str(tmp_path / "clip"),
                          freeze_stems=True, max_train_steps=2, weight_decay=0.2, cluster_algo="kmedoids", num_frames=4, num_segments=2,
                          num_centers=6, cluster_layer=2)  # fmt: skip
    summary = main(["--config", config, "--output_dir", str(tmp_path / "run")])
    tuned = summary["model"]
    assert tuned.config.cluster_algo == "kmedoids" and tuned.config.num_centers == 6
    assert new_parameter_names(tuned) == set()  # CenterCLIP adds no weights to CLIP's
    before = clip.state_dict()
    for name, param in tuned.named_parameters():
        if name.startswith(STEM_PREFIXES):
            assert not param.requires_grad and torch.equal(param, before[name]), name
    assert not torch.equal(tuned.visual_projection.weight, before["visual_projection.weight"])
    groups = {group["name"]: group for group in parameter_groups(tuned, parse_args(["--config", config, "--output_dir", "x"]))}
    assert set(groups) == {"clip", "clip_no_decay", "new", "new_no_decay"}
    assert groups["clip"]["weight_decay"] == 0.2 and "text_projection.weight" in groups["clip"]["param_names"]
    no_decay = groups["clip_no_decay"]["param_names"]
    assert groups["clip_no_decay"]["weight_decay"] == 0.0
    assert {"logit_scale", "vision_model.post_layernorm.weight", "vision_model.post_layernorm.bias"} <= set(no_decay)
    assert not any(name.startswith(STEM_PREFIXES) for group in groups.values() for name in group["param_names"])
    assert not groups["new"]["params"] and groups["new"]["lr"] != groups["clip"]["lr"]
    assert (tmp_path / "run" / "final" / "processor_config.json").is_file()


def test_push_to_hub_writes_a_model_card_and_pushes_the_final_folder(tmp_path, corpus, monkeypatch):
    import training.publish

    pushed = []
    monkeypatch.setattr(training.publish, "push_folder", lambda folder, repo_id: pushed.append((folder, repo_id)))
    config = write_config(tmp_path, corpus, max_train_steps=1, eval_split="test", push_to_hub=True,
                          hub_model_id="someone/centerclip-demo")  # fmt: skip
    summary = main(["--config", config, "--output_dir", str(tmp_path / "run")])
    assert pushed == [(summary["final_dir"], "someone/centerclip-demo")]
    card = (Path(summary["final_dir"]) / "README.md").read_text()
    assert "someone/centerclip-demo" in card and "t2v R@1" in card
    with pytest.raises(ValueError, match="hub_model_id"):
        parse_args(["--config", write_config(tmp_path, corpus, push_to_hub=True), "--output_dir", "x"])


def test_undecodable_training_videos_are_skipped_and_counted(tmp_path, corpus):
    import shutil

    damaged = tmp_path / "corpus"
    shutil.copytree(corpus, damaged)
    broken = sorted((damaged / "train").glob("*.mp4"))[0]
    broken.write_bytes(b"not a video at all")
    # 16 clips in batches of 8: one epoch is 2 steps and meets the broken clip once.
    config = write_config(tmp_path, str(damaged), max_train_steps=2)
    summary = main(["--config", config, "--output_dir", str(tmp_path / "run")])
    assert summary["steps"] == 2
    recorded = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert recorded["skipped_videos"] == 1


def _run_killed(code: str, argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)  # fmt: skip


def test_killed_during_final_evaluation_leaves_a_loadable_final_model(tmp_path, corpus):
    from transformers import AutoModel, AutoProcessor

    import modeling_centerclip  # noqa: F401

    config = write_config(tmp_path, corpus, max_train_steps=2, eval_split="test")
    kill_in_evaluation = (
        "import os, signal, sys, training.evaluate as e; from training.train import main; "
        "e.evaluate_model = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL); main(sys.argv[1:])"
    )
    killed = _run_killed(kill_in_evaluation, ["--config", config, "--output_dir", str(tmp_path / "run")])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "run" / "eval_results.json").exists()  # it died in the evaluation...
    final = tmp_path / "run" / "final"
    model, processor = AutoModel.from_pretrained(final), AutoProcessor.from_pretrained(final)  # ...with the model saved
    assert type(model).__name__ == "CenterCLIPModel" and processor.num_frames == 4


def test_killed_while_saving_a_checkpoint_resumes_from_the_newest_complete_one(tmp_path, corpus):
    config = write_config(tmp_path, corpus, max_train_steps=3, checkpointing_steps=1, checkpoints_total_limit=5)
    run = tmp_path / "run"
    # SIGKILL inside Accelerate's save_state of step 2: its files are written, the rename never happens
    kill_while_saving_step_2 = (
        "import os, signal, sys, accelerate; from training.train import main; save = accelerate.Accelerator.save_state\n"
        "def dying(self, folder, *a, **k):\n"
        "    save(self, folder, *a, **k)\n"
        "    if 'step_2' in folder: os.kill(os.getpid(), signal.SIGKILL)\n"
        "accelerate.Accelerator.save_state = dying; main(sys.argv[1:])"
    )
    killed = _run_killed(kill_while_saving_step_2, ["--config", config, "--output_dir", str(run)])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [".step_2.tmp", "step_1"]
    # a half-copied step_2 left by an older version is passed over too
    (checkpoints / "step_2").mkdir()
    with pytest.raises(ValueError, match=r"step_2: this checkpoint is incomplete.*pass the run's output_dir"):
        main(["--config", config, "--output_dir", str(run), "--resume", str(checkpoints / "step_2")])
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    resumed = subprocess.run([sys.executable, "training/train.py", "--config", config, "--output_dir", str(run),
                              "--resume", str(run)], cwd=REPO, capture_output=True, text=True, timeout=180,
                             env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {checkpoints / 'step_1'} at step 1" in resumed.stderr
    assert f"passing over incomplete checkpoint(s) {checkpoints / 'step_2'}" in resumed.stderr
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_1", "step_2", "step_3"]
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 3


# (parameter, decayed here, decayed by the reference's name rule): the documented difference, row by row
WEIGHT_DECAY_RULES = [
    ("visual_projection.weight", True, True),
    ("vision_model.encoder.layers.0.mlp.fc1.weight", True, True),
    ("vision_model.encoder.layers.0.mlp.fc1.bias", False, False),
    ("vision_model.encoder.layers.0.layer_norm1.weight", False, True),  # CLIP's norms never match "LayerNorm"
    ("text_model.final_layer_norm.weight", False, True),
    ("logit_scale", False, True),
]


@pytest.mark.parametrize("name, decayed, reference_decays", WEIGHT_DECAY_RULES, ids=[row[0] for row in WEIGHT_DECAY_RULES])
def test_weight_decay_exempts_1d_parameters_unlike_the_reference(name, decayed, reference_decays):
    from types import SimpleNamespace

    from tiny_models import tiny_centerclip_config

    from modeling_centerclip import CenterCLIPModel
    from training.train import parameter_groups

    model = CenterCLIPModel(tiny_centerclip_config())
    groups = parameter_groups(model, SimpleNamespace(learning_rate=1e-5, new_learning_rate=1e-4, weight_decay=0.2))
    group = next(group for group in groups if name in group["param_names"])
    assert (group["weight_decay"] > 0) == decayed
    no_decay = ["bias", "LayerNorm.bias", "LayerNorm.weight"]  # the reference's exemption, by name
    assert (not any(part in name for part in no_decay)) == reference_decays
