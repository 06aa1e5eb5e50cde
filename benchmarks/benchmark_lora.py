"""LoRA against full fine-tuning on the demo corpus, CenterCLIP (k-medoids) in both, several seeds.

    nice python benchmarks/benchmark_lora.py                 # about 20 minutes on 2 quiet cores
    python benchmarks/benchmark_lora.py --quick              # tiny corpora and models, a minute (smoke test)

LoRA on random weights is meaningless, and the demo trains from scratch, so the protocol has two stages:

1. **Pre-training**: a CenterCLIP base (the demo's architecture, `training/configs/demo_centerclip.yaml`) trained
   from scratch on a demo corpus without time-reversed twins (`pair_fraction` 0, corpus seed 100).
2. **Fine-tuning** on a differently seeded, *shifted* demo corpus: 60 % of its clips come as time-reversed twins
   (same frames, reversed order, caption with swapped direction and event), which the base never had to tell
   apart. Full fine-tuning and LoRA (rank 8 on the q/k/v/out projections of the text tower and of the vision
   layers from the cluster layer on, the default; `LoRA all layers`: of every vision layer too) start from the
   same base, get the same steps (40 of 32 clips), batch and schedule, and each its usual learning rate (full:
   1e-4, LoRA: 1e-3); one run per seed. The base itself, not fine-tuned, is the reference row.

Per run: trainable parameters, AdamW state bytes (from the optimizer), time per optimizer step, t2v/v2t R@1 on
the shifted corpus's test split; means +- sample std over seeds. Per method, once (it depends on shapes only):
training memory, the peak of live tensors in one training step at the demo's shapes (both towers, the training
loss, AdamW) over those alive before it, from the profiler (`training/tensor_memory.py`; peak RSS measures the allocator's
fragmentation as much). Prints the table, the two targets per LoRA variant (memory <= 0.6x full; R@1 not
below full's by more than one std, with whether it is within one std either way) and writes JSON to
`docs/lora_benchmark_cpu.json` (`--output_json`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.demo import mean_and_std, prepare_tokenizer, train_in_subprocess  # noqa: E402

DEMO_CONFIG = REPO / "training" / "configs" / "demo_centerclip.yaml"
BASE_CORPUS = dict(num_train=800, num_test=50, seed=100, num_frames=16, size=64, pair_fraction=0.0)
SHIFTED_CORPUS = dict(num_train=320, num_test=150, seed=1, num_frames=16, size=64, pair_fraction=0.6)
SETTINGS = dict(base_steps=200, finetune_steps=40, full_learning_rate=1e-4, lora_learning_rate=1e-3, lora_r=8)
QUICK = dict(base_corpus=dict(num_train=32, num_test=8, seed=100, num_frames=8, size=32, pair_fraction=0.0),
             shifted_corpus=dict(num_train=32, num_test=16, seed=1, num_frames=8, size=32, pair_fraction=0.6),
             settings=dict(SETTINGS, base_steps=3, finetune_steps=2),
             model=dict(projection_dim=16, num_frames=4, num_segments=2, num_centers=8, cluster_layer=1,
                        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                         max_position_embeddings=24),
                        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=32, patch_size=8)))  # fmt: skip
METHODS = ("full", "lora", "lora_all")
METHOD_NAMES = {"full": "full fine-tuning", "lora": "LoRA r={r}", "lora_all": "LoRA r={r}, all vision layers"}


def write_config(path: Path, **settings) -> Path:
    path.write_text(yaml.safe_dump(settings))
    return path


def evaluate_folder(folder: Path, split) -> dict:
    """R@K of a trained `final/` folder: a full model through AutoModel, an adapter merged onto its base."""
    import modeling_centerclip  # noqa: F401  registers the Auto classes
    from transformers import AutoModel, AutoProcessor

    from training.evaluate import evaluate_model
    from training.lora import is_adapter_folder, load_adapter_model

    model = load_adapter_model(folder) if is_adapter_folder(folder) else AutoModel.from_pretrained(folder)
    results = evaluate_model(model.eval(), AutoProcessor.from_pretrained(folder), split, batch_size=32, show_progress=False)
    return {direction: results[direction] for direction in ("t2v", "v2t")}


def step_memory(base_folder: Path, method: str, batch: int, max_words: int, lora_r: int) -> dict:
    """Live-tensor peak of one training step (the training loss over both towers, AdamW) at the demo's shapes."""
    from types import SimpleNamespace

    import torch

    from modeling_centerclip import CenterCLIPModel
    from training.lora import add_lora
    from training.tensor_memory import training_step_memory

    torch.manual_seed(0)
    model = CenterCLIPModel.from_pretrained(base_folder)
    if method != "full":
        settings = SimpleNamespace(model_name_or_path=str(base_folder), lora_adapter=None, lora_r=lora_r, lora_alpha=None,
                                   lora_dropout=None, lora_target_modules=None,
                                   lora_vision_layers="all" if method == "lora_all" else None)  # fmt: skip
        model = add_lora(model, settings)
    memory = training_step_memory(model, batch, max_words)
    return {"training_memory_mb": memory["peak_bytes"] / 2**20, "activation_mb_at_peak": memory["at_peak"]["activation"] / 2**20}


def summarise(runs: list[dict]) -> dict:
    entry = {"runs": runs}
    keys = ("t2v_R@1", "v2t_R@1", "step_time_s", "trainable_parameters", "optimizer_state_bytes")
    for key in keys:
        entry[key], entry[f"{key}_std"] = mean_and_std([run[key] for run in runs])
    return entry


def format_table(base: dict, methods: dict) -> str:
    header = ["model", "trainable params", "AdamW state", "train memory", "step time", "t2v R@1", "v2t R@1"]
    rows = [["base (not fine-tuned)", "-", "-", "-", "-", f"{base['t2v']['R@1']:.1f}", f"{base['v2t']['R@1']:.1f}"]]
    for name, entry in methods.items():
        rows.append([
            METHOD_NAMES[name].format(r=entry["lora_r"]),
            f"{entry['trainable_parameters']:,.0f}", f"{entry['optimizer_state_bytes'] / 2**20:.2f} MiB",
            f"{entry['training_memory_mb']:.0f} MiB",
            f"{entry['step_time_s']:.2f} ± {entry['step_time_s_std']:.2f} s",
            f"{entry['t2v_R@1']:.1f} ± {entry['t2v_R@1_std']:.1f}", f"{entry['v2t_R@1']:.1f} ± {entry['v2t_R@1_std']:.1f}",
        ])  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def targets(full: dict, lora: dict) -> dict:
    memory_ratio = lora["training_memory_mb"] / full["training_memory_mb"]
    # The quality target is parity: within one std of full, or above it (better is not a miss, and is told apart).
    gap = {d: lora[f"{d}_R@1"] - full[f"{d}_R@1"] for d in ("t2v", "v2t")}
    return {"memory_ratio": memory_ratio, "memory_target_met": memory_ratio <= 0.6,
            "optimizer_state_ratio": lora["optimizer_state_bytes"] / full["optimizer_state_bytes"],
            "trainable_ratio": lora["trainable_parameters"] / full["trainable_parameters"],
            **{f"{d}_R@1_minus_full": g for d, g in gap.items()},
            **{f"{d}_R@1_within_one_std": abs(g) <= full[f"{d}_R@1_std"] for d, g in gap.items()},
            **{f"{d}_R@1_target_met": g >= -full[f"{d}_R@1_std"] for d, g in gap.items()}}  # fmt: skip


def quality_verdict(check: dict, direction: str) -> str:
    gap = check[f"{direction}_R@1_minus_full"]
    if check[f"{direction}_R@1_within_one_std"]:
        return f"{direction} {gap:+.1f}, within one std"
    return f"{direction} {gap:+.1f}, {'above' if gap > 0 else 'BELOW'} one std"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/lora_benchmark"))
    parser.add_argument("--output_json", type=Path, default=REPO / "docs" / "lora_benchmark_cpu.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="tiny corpora and model, 2 steps (a smoke test)")
    args = parser.parse_args(argv)
    from training.corpora import load_corpus
    from training.demo_corpus import generate_demo_corpus

    start = time.perf_counter()
    output = args.output_dir.resolve()
    output.mkdir(parents=True, exist_ok=True)
    base_corpus_settings = QUICK["base_corpus"] if args.quick else BASE_CORPUS
    shifted_settings = QUICK["shifted_corpus"] if args.quick else SHIFTED_CORPUS
    settings = QUICK["settings"] if args.quick else SETTINGS
    base_corpus, shifted = output / "corpus_base", output / "corpus_shifted"
    generate_demo_corpus(base_corpus, **base_corpus_settings, show_progress=False)
    generate_demo_corpus(shifted, **shifted_settings, show_progress=False)
    tokenizer = prepare_tokenizer(base_corpus, output / "tokenizer")

    demo = yaml.safe_load(DEMO_CONFIG.read_text())
    if args.quick:
        demo.update(model_config=QUICK["model"], max_words=16, per_device_train_batch_size=8, num_workers=0)
    common = dict(eval_split="none", report_to="none", progress=False, logging_steps=10, checkpointing_steps=0)
    base_config = write_config(output / "base.yaml", **{**demo, **common, "corpus": str(base_corpus),
                                                        "max_train_steps": settings["base_steps"]})  # fmt: skip
    base_dir = output / "base"
    if not (base_dir / "final" / "model.safetensors").is_file():
        train_in_subprocess(base_config, base_dir, ["--tokenizer_name_or_path", str(tokenizer)])
    test_split = load_corpus(str(shifted))["test"]
    base_results = evaluate_folder(base_dir / "final", test_split)
    print(f"base on the shifted corpus: t2v R@1 {base_results['t2v']['R@1']:.1f}", flush=True)

    finetune = {key: value for key, value in demo.items() if key not in ("model_config", "learning_rate")}
    finetune.update(common, corpus=str(shifted), model_name_or_path=str(base_dir / "final"),
                    max_train_steps=settings["finetune_steps"])  # fmt: skip
    configs = {
        "full": write_config(output / "full.yaml", **finetune, learning_rate=settings["full_learning_rate"]),
        # LoRA weights are weights stock CLIP lacks: they train at new_learning_rate.
        "lora": write_config(output / "lora.yaml", **finetune, new_learning_rate=settings["lora_learning_rate"],
                             peft={"r": settings["lora_r"]}),
        "lora_all": write_config(output / "lora_all.yaml", **finetune, new_learning_rate=settings["lora_learning_rate"],
                                 peft={"r": settings["lora_r"], "vision_layers": "all"}),
    }  # fmt: skip
    runs = {name: [] for name in METHODS}
    for seed in args.seeds:
        for name in METHODS:  # interleaved: on a shared machine both methods see the same load
            run_dir = output / f"{name}_seed{seed}"
            summary = train_in_subprocess(configs[name], run_dir, ["--seed", str(seed)])
            results = evaluate_folder(run_dir / "final", test_split)
            runs[name].append({
                "seed": seed, "folder": str(run_dir / "final"), "steps": summary["steps"],
                "trainable_parameters": summary["trainable_parameters"],
                "optimizer_state_bytes": summary["optimizer_state_bytes"],
                "step_time_s": summary["train_time_s"] / summary["steps"],
                "t2v_R@1": results["t2v"]["R@1"], "v2t_R@1": results["v2t"]["R@1"], "t2v": results["t2v"],
                "v2t": results["v2t"],
            })  # fmt: skip
            print(f"{name} seed {seed}: t2v R@1 {results['t2v']['R@1']:.1f}, v2t R@1 {results['v2t']['R@1']:.1f}",
                  flush=True)  # fmt: skip
    methods = {name: dict(summarise(runs[name]), lora_r=settings["lora_r"] if name != "full" else None,
                          **step_memory(base_dir / "final", name, demo["per_device_train_batch_size"], demo["max_words"],
                                        settings["lora_r"]))
               for name in METHODS}  # fmt: skip

    verdict = {name: targets(methods["full"], methods[name]) for name in METHODS[1:]}
    report = {
        "protocol": __doc__.split("\n\n")[2:4], "base_corpus": base_corpus_settings, "shifted_corpus": shifted_settings,
        "settings": settings, "seeds": args.seeds, "quick": args.quick, "base": base_results, "methods": methods,
        "targets": verdict, "wall_time_s": time.perf_counter() - start,
        "notes": "R@1 in percent on the shifted corpus's test split (ties count against the model); training "
                 "memory = peak of live tensors in one training step at the demo's shapes over those before it "
                 "(profiler); step time = training time / optimizer steps; means +- sample std over seeds.",
    }  # fmt: skip
    table = format_table(base_results, methods)
    print()
    print(f"Demo corpora: base pre-trained {settings['base_steps']} steps; fine-tuning {settings['finetune_steps']} "
          f"steps on the shifted corpus ({shifted_settings['num_test']} test clips), seeds {args.seeds}")  # fmt: skip
    print(table)
    for name, check in verdict.items():
        print(f"\n{METHOD_NAMES[name].format(r=settings['lora_r'])} / full: training memory {check['memory_ratio']:.2f}x "
              f"(target <= 0.6x: {'met' if check['memory_target_met'] else 'NOT met'}), AdamW state "
              f"{check['optimizer_state_ratio']:.3f}x, trainable parameters {check['trainable_ratio']:.3f}x; R@1 against "
              f"full (target: not below one std): {quality_verdict(check, 't2v')}, {quality_verdict(check, 'v2t')}")  # fmt: skip
    args.output_json.parent.mkdir(parents=True, exist_ok=True)
    args.output_json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output_json}; total {report['wall_time_s'] / 60:.1f} min")
    return report


if __name__ == "__main__":
    main()
