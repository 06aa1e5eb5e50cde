"""LoRA adapters (`peft`) in training: only the adapter trains, it saves and reloads like any adapter (peft's and
Transformers' loaders), merges, resumes exactly, is the same from two processes, and bad settings fail early."""

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file

pytest.importorskip("peft")

from modeling_centerclip import CenterCLIPConfig, CenterCLIPModel, CenterCLIPProcessor  # noqa: E402
from modeling_centerclip.configuration_centerclip import CLUSTER_ALGOS  # noqa: E402
from training.lora import DEFAULT_TARGET_MODULES, load_adapter_model  # noqa: E402
from training.train import main, parse_args  # noqa: E402

TINY = {
    "projection_dim": 16, "num_frames": 4, "num_segments": 2, "num_centers": 8, "cluster_layer": 1,
    "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                    "max_position_embeddings": 16},
    "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                      "image_size": 32, "patch_size": 8},
}  # fmt: skip
# Merging adds B @ A * scale into W: the product is rounded once in float32 instead of per input, so the merged
# model's logits differ from the adapter's by float32 rounding only.
MERGE_TOLERANCE = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from training.demo_corpus import generate_demo_corpus

    folder = tmp_path_factory.mktemp("corpus")
    generate_demo_corpus(folder, num_train=16, num_test=8, num_frames=8, size=32, show_progress=False)
    return str(folder)


def save_base(folder: Path, tokenizer, seed: int = 0, **settings) -> str:
    """A tiny CenterCLIP "pretrained" base (random weights) with its processor."""
    torch.manual_seed(seed)
    text = {**TINY["text_config"], "vocab_size": len(tokenizer), "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    config = CenterCLIPConfig(**{**TINY, **settings, "text_config": text})
    CenterCLIPModel(config).save_pretrained(folder)
    CenterCLIPProcessor(tokenizer, num_frames=config.num_frames, image_size=32, max_length=16).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_tokenizer):
    return save_base(tmp_path_factory.mktemp("base"), tiny_tokenizer, cluster_algo="kmedoids")


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield


def write_config(folder: Path, corpus: str, base: str, **overrides) -> str:
    settings = {
        "model_name_or_path": base, "corpus": corpus, "max_words": 16, "new_learning_rate": "5e-2",
        "per_device_train_batch_size": 8, "max_train_steps": 2, "warmup_ratio": 0.0, "weight_decay": 0.1,
        "logging_steps": 1, "checkpointing_steps": 0, "mixed_precision": "no", "report_to": "none",
        "progress": False, "eval_split": "none", "seed": 0, "peft": {"r": 4},
    }  # fmt: skip
    settings.update(overrides)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    return str(path)


def base_name(peft_name: str) -> str:
    """A PeftModel parameter name -> the base model's name for the same weight."""
    return peft_name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**inputs).logits_per_text


def test_lora_run_trains_only_the_adapter_and_reloads_through_both_loaders(tmp_path, corpus, base):
    from peft import PeftModel

    from training.corpora import load_corpus

    config = write_config(tmp_path, corpus, base, gradient_checkpointing=True)
    summary = main(["--config", config, "--output_dir", str(tmp_path / "run")])
    trained = summary["model"]
    assert isinstance(trained, PeftModel)

    saved_base = load_file(Path(base) / "model.safetensors")
    adapter_names = []
    for name, param in trained.named_parameters():
        if "lora_" in name:
            assert param.requires_grad, name
            adapter_names.append(name)
        else:  # every base weight frozen and bit-identical after the steps
            assert not param.requires_grad, name
            assert torch.equal(param, saved_base[base_name(name)]), name
    # By default: the text tower's layers and the vision layers from the cluster layer on (1 of 2 here)
    layers = TINY["text_config"]["num_hidden_layers"] + TINY["vision_config"]["num_hidden_layers"] - TINY["cluster_layer"]
    assert len(adapter_names) == 2 * len(DEFAULT_TARGET_MODULES) * layers  # A and B of q/k/v/out
    assert not any("vision_model.encoder.layers.0." in name for name in adapter_names)
    lora_b = [p for n, p in trained.named_parameters() if "lora_B" in n]
    assert all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: the adapter did train
    run_summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert run_summary["trainable_parameters"] == sum(p.numel() for n, p in trained.named_parameters() if "lora_" in n)
    assert run_summary["optimizer_state_bytes"] == 2 * 4 * run_summary["trainable_parameters"] + 4 * len(adapter_names)

    final = Path(summary["final_dir"])
    assert {"adapter_model.safetensors", "adapter_config.json", "processor_config.json"} <= {p.name for p in final.iterdir()}
    assert not (final / "config.json").exists() and not (final / "model.safetensors").exists()
    adapter_config = json.loads((final / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == base and adapter_config["r"] == 4
    assert sorted(adapter_config["target_modules"]) == sorted(
        name.removeprefix("base_model.model.").removesuffix(".lora_A.default.weight")
        for name in adapter_names if name.endswith("lora_A.default.weight")
    )  # fmt: skip

    test_split = load_corpus(corpus)["test"]
    processor = CenterCLIPProcessor.from_pretrained(final)
    inputs = processor(text=test_split["caption"][:3], videos=test_split["video"][:3])
    expected = logits(trained, inputs)
    through_peft = PeftModel.from_pretrained(CenterCLIPModel.from_pretrained(base), str(final))
    through_transformers = CenterCLIPModel.from_pretrained(base)
    through_transformers.load_adapter(str(final))
    # Same weights, same layers, same order of operations: the same logits.
    torch.testing.assert_close(logits(through_peft, inputs), expected, rtol=0, atol=0)
    torch.testing.assert_close(logits(through_transformers, inputs), expected, rtol=0, atol=0)
    assert not torch.allclose(logits(CenterCLIPModel.from_pretrained(base), inputs), expected, atol=1e-3)
    from transformers import AutoModel  # and the Auto class: Transformers loads the base the adapter names

    torch.testing.assert_close(logits(AutoModel.from_pretrained(final), inputs), expected, rtol=0, atol=0)

    merged = load_adapter_model(final)
    assert type(merged) is CenterCLIPModel and not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, inputs), expected, **MERGE_TOLERANCE)


def test_lora_resume_ends_like_an_uninterrupted_run(tmp_path, corpus, base):
    # 16 clips, batches of 4, 2 accumulation steps: 2 optimizer steps per epoch, 5 in all; a checkpoint at step 3
    # (mid-epoch), the run dies after step 4 and a new run resumes. Dropout on the adapter's input draws from the
    # RNG, so the RNG state must come back too.
    config = write_config(tmp_path, corpus, base, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                          max_train_steps=5, checkpointing_steps=3, peft={"r": 4, "lora_dropout": 0.2})  # fmt: skip
    main(["--config", config, "--output_dir", str(tmp_path / "straight")])

    class Killed(Exception):
        pass

    def die_after_step_4(step):
        if step == 4:
            raise Killed

    with pytest.raises(Killed):
        main(["--config", config, "--output_dir", str(tmp_path / "interrupted")], step_callback=die_after_step_4)
    assert not (tmp_path / "interrupted" / "final").exists()
    checkpoint = tmp_path / "interrupted" / "checkpoints" / "step_3"
    assert checkpoint.is_dir() and list(checkpoint.glob("optimizer*.bin"))
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    main(["--config", config, "--output_dir", str(tmp_path / "interrupted"), "--resume", "latest"])

    straight = load_file(tmp_path / "straight" / "final" / "adapter_model.safetensors")
    resumed = load_file(tmp_path / "interrupted" / "final" / "adapter_model.safetensors")
    assert straight.keys() == resumed.keys() and straight
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    history = [json.loads((tmp_path / run / "loss_history.json").read_text()) for run in ("straight", "interrupted")]
    assert [r["loss"] for r in history[0]] == [r["loss"] for r in history[1]]


@pytest.mark.parametrize("cluster_algo", CLUSTER_ALGOS)
def test_every_reducer_trains_an_adapter_and_evaluates(tmp_path, corpus, tiny_tokenizer, cluster_algo):
    extra = {"tome": {"num_centers": 4}, "uniform": {"num_centers": 4}, "temporal": {"temporal_groups": [4]}}
    extra = extra.get(cluster_algo, {})  # settings that fit the tiny tower (2 layers, 4 frames)
    base = save_base(tmp_path / "base", tiny_tokenizer, cluster_algo=cluster_algo, **extra)
    config = write_config(tmp_path, corpus, base, max_train_steps=2, eval_steps=1, eval_split="test",
                          gradient_checkpointing=True, max_eval_videos=4)  # fmt: skip
    summary = main(["--config", config, "--output_dir", str(tmp_path / "run")])
    history = json.loads((tmp_path / "run" / "loss_history.json").read_text())
    assert [r["step"] for r in history if "eval" in r] == [1, 2]  # periodic and final evaluation
    assert 0 <= summary["eval"]["t2v"]["R@1"] <= 100 and summary["model"].config.cluster_algo == cluster_algo


def test_evaluate_cli_takes_an_adapter_folder(tmp_path, corpus, base):
    from training.corpora import load_corpus
    from training.evaluate import evaluate_model
    from training.evaluate import main as evaluate_main

    summary = main(["--config", write_config(tmp_path, corpus, base), "--output_dir", str(tmp_path / "run")])
    report = evaluate_main(["--model", summary["final_dir"], "--corpus", corpus, "--num_workers", "0"])
    merged = load_adapter_model(summary["final_dir"])
    processor = CenterCLIPProcessor.from_pretrained(summary["final_dir"])
    expected = evaluate_model(merged, processor, load_corpus(corpus)["test"], show_progress=False)
    assert report["t2v"] == expected["t2v"] and report["v2t"] == expected["v2t"]


def test_search_index_takes_an_adapter_folder_and_fingerprints_the_adapter(tmp_path, corpus, base):
    import torch.nn.functional as F
    from safetensors.torch import save_file

    from search import VideoIndex
    from search.models import ModelSpec

    summary = main(["--config", write_config(tmp_path, corpus, base), "--output_dir", str(tmp_path / "run")])
    final = Path(summary["final_dir"])
    spec = ModelSpec(str(final))
    assert spec.fingerprint != ModelSpec(base).fingerprint  # the adapter is part of the model
    merged = load_adapter_model(final)
    captions = ["a red 3 moves left", "a blue square appears"]
    tokens = spec.processor(text=captions)
    with torch.no_grad():
        expected = F.normalize(merged.get_text_features(**tokens).pooler_output, dim=-1)
    torch.testing.assert_close(spec.load_text_encoder()(captions), expected, rtol=1e-5, atol=1e-6)

    index = VideoIndex.build(corpus, str(final), tmp_path / "index", corpus_options={"split": "test"}, rebuild=True,
                             show_progress=False)  # fmt: skip
    assert len(index) == 8 and index.search(text=captions[0], k=3)
    # other adapter weights (same base, same settings): another fingerprint
    changed = tmp_path / "changed"
    changed.mkdir()
    for file in final.iterdir():
        (changed / file.name).write_bytes(file.read_bytes())
    weights = load_file(final / "adapter_model.safetensors")
    save_file({k: v + 0.01 if "lora_B" in k else v for k, v in weights.items()}, changed / "adapter_model.safetensors")
    assert ModelSpec(str(changed)).fingerprint not in (spec.fingerprint, ModelSpec(base).fingerprint)


def test_publish_pushes_an_adapter_repo_or_a_merged_model(tmp_path, corpus, base, monkeypatch):
    import training.publish
    from transformers import AutoModel

    import modeling_centerclip  # noqa: F401  registers the Auto classes

    pushed = []
    monkeypatch.setattr(training.publish, "push_folder",
                        lambda folder, repo_id, **kwargs: pushed.append((Path(folder), repo_id)))  # fmt: skip
    config = write_config(tmp_path, corpus, base, eval_split="test", push_to_hub=True, hub_model_id="me/lora")
    summary = main(["--config", config, "--output_dir", str(tmp_path / "run")])
    final = Path(summary["final_dir"])
    assert pushed == [(final, "me/lora")]
    card = (final / "README.md").read_text()
    trainable = json.loads((tmp_path / "run" / "train_summary.json").read_text())["trainable_parameters"]
    for fact in ("library_name: peft", "LoRA", "rank 4", "q_proj", f"{trainable:,}", "t2v R@1", "PeftModel.from_pretrained"):
        assert fact in card, fact
    assert [name for name, _ in training.publish.publishable_files(final)]  # an adapter folder is publishable

    training.publish.main(["push", "--folder", str(final), "--hub_model_id", "me/merged", "--merge",
                           "--output_dir", str(tmp_path / "merged")])  # fmt: skip
    assert pushed[-1] == (tmp_path / "merged", "me/merged")
    merged = AutoModel.from_pretrained(tmp_path / "merged")
    assert type(merged).__name__ == "CenterCLIPModel" and (tmp_path / "merged" / "processor_config.json").is_file()
    processor = CenterCLIPProcessor.from_pretrained(final)
    from training.corpora import load_corpus

    test_split = load_corpus(corpus)["test"]
    inputs = processor(text=test_split["caption"][:2], videos=test_split["video"][:2])
    torch.testing.assert_close(logits(merged, inputs), logits(summary["model"], inputs), **MERGE_TOLERANCE)


# ------------------------------------------------------------------------------------------------ two processes

GLOBAL_BATCH = 6


def tiny_lora_model(vision_layers=None):
    from types import SimpleNamespace

    from training.lora import add_lora

    torch.manual_seed(0)
    text = {**TINY["text_config"], "vocab_size": 40, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    model = CenterCLIPModel(CenterCLIPConfig(**{**TINY, "text_config": text, "cluster_algo": "kmedoids"})).double()
    settings = SimpleNamespace(model_name_or_path="tiny", lora_adapter=None, lora_r=4, lora_alpha=None,
                               lora_dropout=0.0, lora_target_modules=None, lora_vision_layers=vision_layers)  # fmt: skip
    return add_lora(model, settings)


def test_vision_layers_below_the_cluster_layer_stay_out_of_the_backward_pass():
    """The default adapts vision layers from the cluster layer on: the layers below it then run without autograd
    (nothing of theirs is kept for the backward pass), which is LoRA's memory saving here. `all` adapts every layer."""
    from training.lora import describe_targets

    pixels = torch.randn(2, TINY["num_frames"], 3, 32, 32, dtype=torch.float64)
    for vision_layers, records_layer0 in ((None, False), ("after_cluster", False), ("all", True)):
        model = tiny_lora_model(vision_layers).train()
        seen = {}
        layers = model.base_model.model.vision_model.encoder.layers
        handles = [layer.register_forward_hook(lambda m, i, o, k=k: seen.setdefault(k, o[0] if isinstance(o, tuple) else o))
                   for k, layer in enumerate(layers)]  # fmt: skip
        model.get_video_features(pixel_values=pixels).pooler_output.sum().backward()
        for handle in handles:
            handle.remove()
        assert seen[0].requires_grad is records_layer0, vision_layers
        assert seen[1].requires_grad  # the layer after clustering has adapters either way
        targets = model.peft_config["default"].target_modules
        adapted_layer0 = any("vision_model.encoder.layers.0." in name for name in map(str, targets))
        assert adapted_layer0 is False, targets  # "all": the short names; after_cluster: layer 1 on only
    assert describe_targets(tiny_lora_model().peft_config["default"].target_modules) == (
        "`k_proj`, `out_proj`, `q_proj`, `v_proj` (text tower; vision layer 1)")
    assert describe_targets(["q_proj", "v_proj"]) == "`q_proj`, `v_proj` (both towers, every layer)"


def global_batch() -> dict:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(2, 40, (GLOBAL_BATCH, 8), generator=generator)
    input_ids[:, -1] = 1
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
            "pixel_values": torch.randn(GLOBAL_BATCH, 4, 3, 32, 32, generator=generator, dtype=torch.float64)}  # fmt: skip


def train_two_steps(model, batch) -> dict:
    from training.losses import batch_loss

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        batch_loss(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad()
    module = getattr(model, "module", model)
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}


def _worker(rank: int, world_size: int, port: int, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size), RANK=str(rank),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))  # fmt: skip
    torch.set_num_threads(1)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(tiny_lora_model())
    bounds = [0, 4, GLOBAL_BATCH]  # uneven shards, as when a video of one process failed to decode
    local = {k: v[bounds[rank] : bounds[rank + 1]] for k, v in global_batch().items()}
    torch.save(train_two_steps(model, local), os.path.join(out_dir, f"adapter{rank}.pt"))
    accelerator.wait_for_everyone()
    accelerator.end_training()


@pytest.mark.timeout(180)
def test_two_processes_train_the_same_adapter_as_one(tmp_path):
    from test_distributed import free_port

    reference = train_two_steps(tiny_lora_model(), global_batch())
    assert reference and all("lora_" in name for name in reference)
    mp.start_processes(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    for rank in range(2):
        adapter = torch.load(tmp_path / f"adapter{rank}.pt")
        assert adapter.keys() == reference.keys()
        for name, value in reference.items():  # float64, as the suite's other cross-process tests
            torch.testing.assert_close(adapter[name], value, rtol=1e-9, atol=1e-12, msg=lambda m: f"{name}: {m}")


# ---------------------------------------------------------------------------------------------------- bad input


def test_bad_lora_settings_fail_at_parse_time_naming_the_key(tmp_path, corpus, base, tiny_tokenizer):
    out = ["--output_dir", str(tmp_path / "never")]

    def parse(**overrides):
        folder = tmp_path / f"case{len(list(tmp_path.glob('case*')))}"
        return parse_args(["--config", write_config(folder, corpus, base, **overrides), *out])

    args = parse(peft={"r": 8, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]})
    assert (args.lora_r, args.lora_alpha, args.lora_target_modules) == (8, 4.0, ("q_proj", "v_proj"))
    assert parse_args(["--config", write_config(tmp_path, corpus, base), *out, "--lora_target_modules", "fc1,fc2"]
                      ).lora_target_modules == ("fc1", "fc2")  # fmt: skip
    cases = {
        "rank 0": (dict(peft={"r": 0}), r"config key 'lora_r'=0: the LoRA rank must be a positive integer"),
        "missing module": (dict(peft={"r": 4, "target_modules": ["q_proj", "qkv"]}),
                           r"config key 'lora_target_modules'.*no module named 'qkv' in base model"),
        "not linear": (dict(peft={"r": 4, "target_modules": ["layer_norm1"]}), r"'lora_target_modules'.*not a linear"),
        "unknown peft key": (dict(peft={"rank": 4}), r"config key 'peft.rank'.*unknown"),
        "given twice": (dict(peft={"r": 4}, lora_r=8), r"config key 'lora_r'.*given twice"),
        "dropout": (dict(peft={"r": 4, "lora_dropout": 1.5}), r"config key 'lora_dropout'"),
        "vision layers": (dict(peft={"r": 4, "vision_layers": "lower"}), r"config key 'lora_vision_layers'.*one of"),
        "only below the cluster layer": (dict(peft={"r": 4, "target_modules": ["vision_model.encoder.layers.0.mlp.fc1"]}),
                                         r"'lora_target_modules'.*below the cluster layer \(1\).*set it to 'all'"),
        "from scratch": (dict(model_name_or_path=None, model_config=TINY), r"'lora_r'.*give model_name_or_path"),
        "alpha without rank": (dict(peft={"lora_alpha": 8}), r"config key 'lora_alpha'.*need lora_r"),
        "cluster setting": (dict(cluster_algo="spectral"), r"config key 'cluster_algo'.*base's cluster settings"),
    }
    for name, (overrides, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            parse(**overrides)

    # an adapter for another base model: named before training starts, both by name and by shape
    summary = main(["--config", write_config(tmp_path / "a", corpus, base), "--output_dir", str(tmp_path / "a" / "run")])
    other_shape = save_base(tmp_path / "other", tiny_tokenizer, cluster_algo="kmedoids", projection_dim=16,
                            vision_config={**TINY["vision_config"], "hidden_size": 48})  # fmt: skip
    same_shape = save_base(tmp_path / "same_shape", tiny_tokenizer, seed=1, cluster_algo="kmedoids")
    with pytest.raises(ValueError, match=rf"was trained for base model '{base}', not '{same_shape}'"):
        parse(model_name_or_path=same_shape, peft={"adapter": summary["final_dir"]})
    with pytest.raises(ValueError, match=r"does not fit .* another base model"):
        from training.lora import check_adapter_fits

        check_adapter_fits(summary["final_dir"], other_shape)
    assert parse(peft={"adapter": summary["final_dir"]}).lora_adapter == summary["final_dir"]
    with pytest.raises(ValueError, match=r"'lora_r'.*brings its own settings"):
        parse(peft={"adapter": summary["final_dir"], "r": 4})
    assert not (tmp_path / "never").exists()


# ------------------------------------------------------------------------------------------------- benchmarks


def test_speed_benchmark_lora_mode_counts_the_adapter(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                   os.environ.get("PYTHONPATH")])))  # fmt: skip
    import benchmark_speed

    (row,) = benchmark_speed.main(["--quick", "--lora", "4", "--train_steps", "1", "--output_dir", str(tmp_path)])
    assert json.loads((tmp_path / "speed_lora.json").read_text())["rows"] == [json.loads(json.dumps(row))]
    # (vision layers adapted + 1 text layer) x 4 projections x rank 4 x (32 in + 32 out): by default the vision
    # layers from the cluster layer (2 of 4) on, with lora_all every one
    assert row["lora_trainable_parameters"] == (2 + 1) * 4 * 4 * (32 + 32)
    assert row["lora_all_trainable_parameters"] == (4 + 1) * 4 * 4 * (32 + 32)
    # AdamW keeps state only for weights that got a gradient: the video tower's
    assert 0 < row["lora_optimizer_state_mb"] < row["lora_all_optimizer_state_mb"] < row["full_optimizer_state_mb"]
    # live tensors from the profiler: full fine-tuning's gradients and AdamW state alone outweigh either adapter's
    assert row["full_train_peak_mb"] > row["lora_all_train_peak_mb"] > row["lora_train_peak_mb"] > 0


def test_lora_benchmark_measures_one_step_of_each_method(base, monkeypatch):
    """The demo benchmark's memory column: live tensors of one training step (both towers, AdamW) per method."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import benchmark_lora

    memory = {method: benchmark_lora.step_memory(Path(base), method, batch=4, max_words=16, lora_r=4)
              for method in benchmark_lora.METHODS}  # fmt: skip
    # full fine-tuning keeps gradients and AdamW state of every weight; LoRA below the cluster layer keeps that
    # layer's activations too, which the default (adapters from the cluster layer on) does not
    assert memory["full"]["training_memory_mb"] > memory["lora_all"]["training_memory_mb"]
    assert memory["lora_all"]["training_memory_mb"] > memory["lora"]["training_memory_mb"] > 0
    assert memory["lora_all"]["activation_mb_at_peak"] > memory["lora"]["activation_mb_at_peak"]
