"""The demo (`make demo`): mean-pooling baseline vs CenterCLIP, trained from scratch on the generated corpus.

    python training/demo.py --output_dir outputs/demo                 # one seed, about 10-15 minutes on 2 cores
    python training/demo.py --output_dir outputs/demo --seeds 0 1 2   # run-to-run noise: mean +- std

Steps: generate the demo corpus (`training.demo_corpus`, skipped when already there), train one tokenizer on its
training captions (shared, so both models read the same tokens), train each model with
`training/train.py --config training/configs/demo_<model>.yaml` in its own process (same number of steps; its
peak resident memory is measured with `os.wait4`), evaluate each on the test split, measure each model's
training memory (the live-tensor peak of one training step at the config's batch, `training.tensor_memory`; peak
RSS follows the allocator's fragmentation as much), print the table and write

    <output_dir>/report.json         {"models": {"baseline": {"t2v": {"R@1": ...}, "v2t": {...}, ...}, ...}, ...}
    <output_dir>/<model>/final       the trained model + processor (AutoModel / AutoProcessor load it)
    <output_dir>/loss_curves.png     training loss of every run
    <output_dir>/kept_tokens.png     what CenterCLIP keeps of the first test clip (`training.visualize`)

Inference speed is the model's video tower alone (decoded videos already in memory), best of 3 passes over one
batch, in videos per second. With several seeds every number is the mean over seeds, `*_std` the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, "") and __name__ == "__main__":
    # Run as a script: import from the repository root, not from training/ (whose evaluate.py shadows `evaluate`).
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    "baseline": REPO / "training" / "configs" / "demo_baseline.yaml",
    "centerclip": REPO / "training" / "configs" / "demo_centerclip.yaml",
}
CORPUS_SETTINGS = dict(num_train=800, num_test=200, seed=0, num_frames=16, size=64)
METRICS = ("R@1", "R@5", "R@10", "MdR", "MnR")


def prepare_corpus(folder: Path) -> Path:
    """Generate the demo corpus (reused when `folder` already holds one made with the same settings)."""
    from training.demo_corpus import generate_demo_corpus

    generate_demo_corpus(folder, **CORPUS_SETTINGS)
    return folder


def prepare_tokenizer(corpus: Path, folder: Path, vocab_size: int = 1000) -> Path:
    from training.corpora import all_captions, load_corpus
    from training.tokenizer import train_clip_tokenizer

    if not (folder / "tokenizer_config.json").is_file():
        train_clip_tokenizer(all_captions(load_corpus(str(corpus))["train"]), vocab_size=vocab_size).save_pretrained(folder)
    return folder


def train_in_subprocess(config: Path, output_dir: Path, extra: list[str]) -> dict:
    """Run training/train.py in a child process; returns its train_summary.json plus the child's peak RSS."""
    command = [sys.executable, str(REPO / "training" / "train.py"), "--config", str(config), "--output_dir",
               str(output_dir), *extra]  # fmt: skip
    print("$", " ".join(command), flush=True)
    child = subprocess.Popen(command, cwd=REPO)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own resource usage (and its reaped workers')
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"training {config.name} failed (exit code {child.returncode}); see the output above")
    summary = json.loads((output_dir / "train_summary.json").read_text())
    summary["peak_rss_mb"] = usage.ru_maxrss / 1024  # KiB on Linux
    return summary


@torch.inference_mode()
def videos_per_second(model, processor, paths: list[str], repeats: int = 3) -> float:
    """Throughput of the video tower on one batch of already decoded videos (best of `repeats`)."""
    inputs = processor(videos=paths)
    model.get_video_features(**inputs)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model.get_video_features(**inputs)
        best = min(best, time.perf_counter() - start)
    return len(paths) / best


def training_memory_mb(folder: Path, config: Path) -> float:
    """Live-tensor peak of one training step of the trained model at its config's batch and caption length."""
    from modeling_centerclip import CenterCLIPModel
    from training.config import read_config_file
    from training.tensor_memory import training_step_memory

    settings = read_config_file(str(config))
    model = CenterCLIPModel.from_pretrained(folder)
    return training_step_memory(model, settings["per_device_train_batch_size"], settings["max_words"])["peak_bytes"] / 2**20


def evaluate_run(folder: Path, test_split) -> dict:
    import modeling_centerclip  # noqa: F401  registers the Auto classes
    from transformers import AutoModel, AutoProcessor

    from training.evaluate import evaluate_model

    model = AutoModel.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    results = evaluate_model(model, processor, test_split, batch_size=32, show_progress=False)
    results["videos_per_second"] = videos_per_second(model, processor, test_split["video"][:32])
    return results


def draw_kept_tokens(folder: Path, video: str, path: Path) -> None:
    """The picture of what the trained CenterCLIP keeps of one test clip (`training.visualize`)."""
    import modeling_centerclip  # noqa: F401  registers the Auto classes
    from transformers import AutoModel, AutoProcessor

    from training.visualize import visualize

    visualize(AutoModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder), video, path)


def mean_and_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: list[dict]) -> dict:
    """Per-model entry of report.json: means over seeds, `_std` spreads, and every run."""
    entry = {}
    for direction in ("t2v", "v2t"):
        entry[direction], entry[f"{direction}_std"] = {}, {}
        for metric in METRICS:
            entry[direction][metric], entry[f"{direction}_std"][metric] = mean_and_std([r[direction][metric] for r in runs])
    for key in ("train_time_s", "peak_rss_mb", "training_memory_mb", "videos_per_second", "final_loss"):
        entry[key], entry[f"{key}_std"] = mean_and_std([r[key] for r in runs])
    entry["steps"] = runs[0]["steps"]
    entry["folder"] = runs[0]["folder"]
    entry["runs"] = runs
    return entry


def format_table(models: dict, chance: dict, seeds: list[int]) -> str:
    spread = len(seeds) > 1

    def cell(entry, direction, metric):
        value = f"{entry[direction][metric]:.1f}"
        return value + (f" ± {entry[f'{direction}_std'][metric]:.1f}" if spread else "")

    header = ["model"] + [f"{d} {m}" for d in ("t2v", "v2t") for m in METRICS] + ["train time", "peak RSS", "train mem", "videos/s"]
    rows = []
    for name, entry in models.items():
        rows.append([name] + [cell(entry, d, m) for d in ("t2v", "v2t") for m in METRICS] + [
            f"{entry['train_time_s']:.0f} s", f"{entry['peak_rss_mb']:.0f} MiB", f"{entry['training_memory_mb']:.0f} MiB",
            f"{entry['videos_per_second']:.0f}"])  # fmt: skip
    rows.append(["chance"] + [f"{chance[m]:.1f}" for _ in ("t2v", "v2t") for m in METRICS] + ["", "", "", ""])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plot_losses(models: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for (name, entry), color in zip(models.items(), ("tab:blue", "tab:orange")):
        for index, run in enumerate(entry["runs"]):
            history = json.loads((Path(run["output_dir"]) / "loss_history.json").read_text())
            points = [(r["step"], r["loss"]) for r in history if "loss" in r]
            axis.plot(*zip(*points), color=color, alpha=0.9 if index == 0 else 0.4, linewidth=1.2, marker="o" if len(points) < 10 else None,
                      label=name if index == 0 else None)  # fmt: skip
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("contrastive loss (train)")
    axis.set_title("Demo corpus, from scratch: mean pooling vs CenterCLIP")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def index_and_search(output_dir: Path, corpus: Path, query: str) -> list:
    """Index the test clips with the trained CenterCLIP (`outputs/demo/index`) and print one query's top 3."""
    from search import VideoIndex

    index = VideoIndex.build(str(corpus), str(output_dir / "centerclip" / "final"), output_dir / "index",
                             corpus_options={"split": "test"}, rebuild=True, show_progress=False)  # fmt: skip
    results = index.search(text=query, k=3)
    print(f"\nVideo search over the {len(index)} test clips (browse: centerclip serve {output_dir / 'index'}): {query!r}")
    for result in results:
        print(f"  {result.rank}. {result.score:.3f}  {result.video_id}: {result.caption}")
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one training run per model and seed")
    parser.add_argument("--max_train_steps", type=int, help="override the configs' step budget (same for both)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    args = parser.parse_args(argv)

    output_dir = Path(args.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    corpus = prepare_corpus(output_dir / "corpus")
    tokenizer = prepare_tokenizer(corpus, output_dir / "tokenizer")

    from training.corpora import load_corpus

    test_split = load_corpus(str(corpus))["test"]
    models = {}
    for name in args.models:
        runs, memory_mb = [], None
        for seed in args.seeds:
            run_dir = output_dir / (name if seed == args.seeds[0] else f"{name}_seed{seed}")
            extra = ["--corpus", str(corpus), "--tokenizer_name_or_path", str(tokenizer), "--seed", str(seed),
                     "--eval_split", "none"]  # fmt: skip
            if args.max_train_steps:
                extra += ["--max_train_steps", str(args.max_train_steps)]
            summary = train_in_subprocess(MODELS[name], run_dir, extra)
            results = evaluate_run(run_dir / "final", test_split)
            memory_mb = memory_mb or training_memory_mb(run_dir / "final", MODELS[name])  # shapes only: once per model
            history = json.loads((run_dir / "loss_history.json").read_text())
            runs.append({
                "seed": seed, "output_dir": str(run_dir), "folder": str(run_dir / "final"), "steps": summary["steps"],
                "train_time_s": summary["train_time_s"], "peak_rss_mb": summary["peak_rss_mb"],
                "training_memory_mb": memory_mb,
                "final_loss": next(r["loss"] for r in reversed(history) if "loss" in r),
                "t2v": results["t2v"], "v2t": results["v2t"], "videos_per_second": results["videos_per_second"],
            })  # fmt: skip
            print(f"{name} seed {seed}: t2v R@1 {results['t2v']['R@1']:.1f}, v2t R@1 {results['v2t']['R@1']:.1f}", flush=True)
        models[name] = summarise(runs)

    num_test = len(set(test_split["video_id"]))
    chance = {"R@1": 100 / num_test, "R@5": 500 / num_test, "R@10": 1000 / num_test,
              "MdR": (num_test + 1) / 2, "MnR": (num_test + 1) / 2}  # fmt: skip
    report = {
        "models": models,
        "chance": chance,
        "seeds": args.seeds,
        "corpus": {"folder": str(corpus), **CORPUS_SETTINGS},
        "configs": {name: str(MODELS[name].relative_to(REPO)) for name in args.models},
        "notes": "R@K in percent; MdR/MnR in ranks (ties count against the model); train time and peak RSS per "
                 "training process; train memory = live-tensor peak of one training step; videos/s = video tower on "
                 "one batch of 32 decoded test videos, best of 3; means over seeds with *_std the sample standard "
                 "deviation.",
        "wall_time_s": time.perf_counter() - start,
        "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    (output_dir / "report.json").write_text(json.dumps(report, indent=2))
    plot_losses(models, output_dir / "loss_curves.png")
    if "centerclip" in models:
        draw_kept_tokens(Path(models["centerclip"]["folder"]), test_split["video"][0], output_dir / "kept_tokens.png")
    table = format_table(models, chance, args.seeds)
    (output_dir / "report.md").write_text(table + "\n")
    print()
    print(f"Demo corpus: {CORPUS_SETTINGS['num_train']} training / {num_test} test clips; seeds {args.seeds}")
    print(table)
    print(f"\nreport: {output_dir / 'report.json'}; loss curves: {output_dir / 'loss_curves.png'}; "
          f"total {report['wall_time_s'] / 60:.1f} min")  # fmt: skip
    if "centerclip" in models:
        index_and_search(output_dir, corpus, test_split[0]["caption"])
    return report


if __name__ == "__main__":
    from training.cli_errors import run_cli

    run_cli("demo.py", main)
