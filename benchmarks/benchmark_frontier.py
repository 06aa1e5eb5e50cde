"""The speed/quality frontier of CenterCLIP's token reducers, on one harness.

    python benchmarks/benchmark_frontier.py                  # the full grid (about 20 minutes on 2 busy cores)
    python benchmarks/benchmark_frontier.py --quick          # tiny shapes and corpus, seconds (used by the tests)

Every grid point is a set of `CenterCLIPConfig` reducer fields written for ViT-B/32 shapes (12 frames, 12 layers,
49 patches per frame). For each it measures

- speed, in one run: video-tower throughput against stock CLIP (CLIP4Clip mean pooling) on the same random
  weights at ViT-B/32 and ViT-B/16 shapes (12 frames of 224 px, batch 1, fp32, sdpa, best of interleaved
  repeats: on a shared CPU noise only ever adds time), FLOPs (`torch.utils.flop_counter`) and, at B/32, the
  activation memory of a training step (the bytes a training forward saves for its backward, weights aside:
  the part of the peak that token reduction shrinks, counted exactly with `saved_tensors_hooks`);
- quality on the demo corpus: the point mapped to the demo model (`demo_settings`: the same share of tokens
  kept per layer), trained from scratch with the same step budget per seed (one process per seed, in parallel
  with the speed measurement), t2v / v2t R@1 and R@5, mean and sample std over seeds;
- training-free: the point applied to the trained mean-pooling baseline (each seed) without fine-tuning.

Writes `<output_dir>/frontier_report.json` (everything), `<output_dir>/frontier.png` (R@1 against the measured
B/32 speed-up, Pareto frontier drawn) and `<output_dir>/frontier.json`, the list of entries copied to
`docs/frontier.json`: `name`, `cluster_algo`, `speedup_b32`, `t2v_r1_mean`, `t2v_r1_std`, `seeds`,
`config_b32`, `reference` (CenterCLIP B6-4x49), plus the other measurements.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import json
import math
import multiprocessing
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[0:0] = [str(REPO), str(REPO / "benchmarks")]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from benchmark_speed import (  # noqa: E402
    HUB_CONFIGS,
    stock_clip_config,
    stock_video_features,
    timed,
)
from transformers import CLIPModel  # noqa: E402

from modeling_centerclip import CenterCLIPConfig, CenterCLIPModel  # noqa: E402
from modeling_centerclip.configuration_centerclip import CENTERCLIP_FIELDS  # noqa: E402

B32 = dict(num_frames=12, num_layers=12, patches=49)


@dataclass
class Point:
    """One grid point: reducer fields for ViT-B/32 shapes."""

    name: str
    config_b32: dict
    reference: bool = False
    fields: dict = field(default_factory=dict)


GRID = [
    Point("mean pooling (CLIP4Clip)", dict(cluster_algo="none")),
    Point("CenterCLIP B6-4x49 (k-medoids)", dict(cluster_algo="kmedoids", cluster_layer=6, num_segments=4, num_centers=49), reference=True),
    Point("ToMe B6-4x49", dict(cluster_algo="tome", cluster_layer=6, num_segments=4, num_centers=49)),
    Point("k-medoids B3-4x49", dict(cluster_algo="kmedoids", cluster_layer=3, num_segments=4, num_centers=49)),
    Point("uniform B3-4x49", dict(cluster_algo="uniform", cluster_layer=3, num_segments=4, num_centers=49)),
    Point("ToMe B3-4x49 + r2, prop. attn", dict(cluster_algo="tome", cluster_layer=3, num_segments=4, num_centers=49,
                                                merge_r=2, proportional_attention=True)),
    Point("temporal (TempMe-style) + r1", dict(cluster_algo="temporal", temporal_groups=[2, 2, 3], temporal_layers=[3, 6, 9],
                                               temporal_merge_ratio=0.3, merge_r=1, proportional_attention=True)),
]  # fmt: skip
QUICK_GRID = ["mean pooling (CLIP4Clip)", "CenterCLIP B6-4x49 (k-medoids)", "ToMe B3-4x49 + r2, prop. attn"]


def scaled_settings(b32: dict, num_frames: int, num_layers: int, patches: int) -> dict:
    """The B/32 point on another tower: the same share of tokens kept per layer.

    Layers map by depth (B/32 layer l -> l * layers / 12), segments stay (so a segment covers the same share of
    the video), centers keep the same share of a segment's patch tokens, and progressive merging removes the same
    share of a frame's patches per unit of depth (r * (12 / layers) * patches / 49). Temporal groups and layers
    take the defaults of the new shape (prime factors of the frames, spread evenly over the layers).
    """
    settings = {key: value for key, value in b32.items() if key not in ("temporal_groups", "temporal_layers")}
    depth = num_layers / B32["num_layers"]
    settings["num_frames"] = num_frames
    if "cluster_layer" in b32:
        settings["cluster_layer"] = max(1, round(b32["cluster_layer"] * depth))
        share = b32["num_centers"] / (B32["num_frames"] // b32["num_segments"] * B32["patches"])
        settings["num_centers"] = round(share * (num_frames // b32["num_segments"]) * patches)
    if b32.get("merge_r"):
        settings["merge_r"] = max(1, round(b32["merge_r"] / depth * patches / B32["patches"]))
    if b32.get("cluster_algo") == "temporal" and num_frames == B32["num_frames"] and num_layers == B32["num_layers"]:
        settings.update(temporal_groups=b32["temporal_groups"], temporal_layers=b32["temporal_layers"])
    return settings


def token_shares(config: CenterCLIPConfig) -> list[float]:
    """Tokens each vision layer runs on (all sequences of a video), as a share of stock CLIP's."""
    stock = config.num_frames * (config.patches_per_frame + 1)
    return [round(plan.sequences * plan.tokens / stock, 3) for plan in config.layer_plan()]


# --- speed ---------------------------------------------------------------------------------------------


def tower_config(hub_config: str | None, settings: dict, tiny: dict | None) -> CenterCLIPConfig:
    if tiny is not None:
        return CenterCLIPConfig(**{**tiny, **settings})
    return CenterCLIPConfig.from_pretrained(HUB_CONFIGS / hub_config, attn_implementation="sdpa", **settings)


def measure_speed(
    points: list[Point], shape: str, hub_config: str | None, tiny: dict | None, repeats: int, train_batch: int = 0
) -> dict:
    """Seconds per video of stock CLIP and every point on one shared set of weights, interleaved; FLOPs; and
    with `train_batch`, the activation memory of a training forward on that many videos."""
    configs = {}
    for point in points:
        base = tiny or dict(num_frames=12)
        vision = CenterCLIPConfig(**tiny, cluster_algo="none").vision_config if tiny else CenterCLIPConfig.from_pretrained(HUB_CONFIGS / hub_config).vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        settings = scaled_settings(point.config_b32, base["num_frames"], vision.num_hidden_layers, patches)
        configs[point.name] = tower_config(hub_config, settings, tiny)
    first = next(iter(configs.values()))
    torch.manual_seed(0)
    model = CenterCLIPModel(copy.deepcopy(first)).eval()  # `with_config` rewrites its config, not `first`
    stock = CLIPModel(stock_clip_config(first)).eval()
    stock.load_state_dict(model.state_dict())
    size = first.vision_config.image_size
    pixels = torch.randn(1, first.num_frames, 3, size, size, generator=torch.Generator().manual_seed(0))

    def encoder(name):
        if name == "stock":
            return lambda: stock_video_features(stock, pixels)
        return lambda: CenterCLIPModel.get_video_features(with_config(model, configs[name]), pixels)

    names = ["stock", *configs]
    seconds, flops, memory = {name: [] for name in names}, {}, {}
    if train_batch:
        train_pixels = pixels.expand(train_batch, *pixels.shape[1:])
        for name in names:
            towers = {"stock": lambda: stock_video_features(stock, train_pixels)}
            encode = towers.get(name, lambda: CenterCLIPModel.get_video_features(with_config(model, configs[name]), train_pixels))
            memory[name] = saved_activation_mib(encode, model.parameters())
    with torch.inference_mode():
        for name in names:  # warm-up, counting FLOPs
            counter = torch.utils.flop_counter.FlopCounterMode(display=False)
            with counter:
                encoder(name)()
            flops[name] = counter.get_total_flops()
        for _ in range(repeats):
            for name in names:
                seconds[name].append(timed(encoder(name), torch.device("cpu")))
        print(f"  {shape}: timed {len(names)} towers x {repeats}", flush=True)
    best = {name: min(values) for name, values in seconds.items()}
    return {
        name: dict(videos_per_s=1 / best[name], speedup=best["stock"] / best[name], flops=flops[name],
                   flops_ratio=flops["stock"] / flops[name], token_shares=token_shares(configs[name]),
                   settings={k: getattr(configs[name], k) for k in CENTERCLIP_FIELDS}, activation_mib=memory.get(name))
        for name in configs
    } | {"stock": dict(videos_per_s=1 / best["stock"], flops=flops["stock"], activation_mib=memory.get("stock"))}  # fmt: skip


def with_config(model: CenterCLIPModel, config: CenterCLIPConfig) -> CenterCLIPModel:
    """The model reading another point's reducer fields (they are read at every forward; weights stay)."""
    for key in CENTERCLIP_FIELDS:
        setattr(model.config, key, getattr(config, key))
    return model


def saved_activation_mib(encode, parameters) -> float:
    """MiB of the tensors one training forward saves for its backward (weights excluded): the part of a training
    step's peak memory that token reduction shrinks. Counted with `saved_tensors_hooks`, each storage once."""
    skip = {p.untyped_storage().data_ptr() for p in parameters}
    seen, total = set(), 0

    def pack(tensor):
        nonlocal total
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip | seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        encode()
    return total / 2**20


# The frontier's demo model: `make demo`'s corpus and recipe (AdamW 1e-3, weight decay 0.1, cosine with 10 %
# warm-up, gradient clipping at 1) on a smaller tower (width 64, 32 px frames of 16 patches, batch 16), so that a
# grid x 3 seeds of training runs fits a shared 2-core machine. Frames are decoded once (the same chunk-centre frames as evaluation) and kept
# in memory: decoding, not the model, is what a training step costs at this size.
FRONTIER_MODEL = dict(
    projection_dim=64, num_frames=8,
    text_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=32),
    vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, image_size=32, patch_size=8),
)  # fmt: skip
QUICK_MODEL = dict(
    projection_dim=16, num_frames=8,
    text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32),
    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, image_size=32, patch_size=8),
)  # fmt: skip
RECIPE = dict(learning_rate=1e-3, weight_decay=0.1, warmup_ratio=0.1, max_grad_norm=1.0, batch_size=16, max_words=24)


def demo_setup(quick: bool) -> tuple[dict, dict]:
    """(demo model_config, corpus settings)."""
    from training.demo import CORPUS_SETTINGS

    corpus = dict(CORPUS_SETTINGS, **(dict(num_train=16, num_test=8, size=32) if quick else {}))
    return QUICK_MODEL if quick else FRONTIER_MODEL, corpus


def demo_settings(point: Point, model_config: dict) -> dict:
    vision = model_config["vision_config"]
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    return scaled_settings(point.config_b32, model_config["num_frames"], vision["num_hidden_layers"], patches)


@dataclass
class DecodedSplit:
    pixel_values: torch.Tensor  # [V, T, 3, H, W], one row per unique video
    video_mask: torch.Tensor  # [V, T]
    input_ids: torch.Tensor  # [C, L], every caption
    attention_mask: torch.Tensor  # [C, L]
    text_to_video: torch.Tensor  # [C]


def decode_split(split, processor, cache: Path) -> DecodedSplit:
    """Every video of a corpus split decoded once (cached in `cache`) and every caption tokenized."""
    from training.evaluate import group_captions

    if cache.is_file():
        return DecodedSplit(**torch.load(cache))
    _, paths, captions, text_to_video = group_captions(split)
    videos = [processor(videos=paths[i : i + 32], training=False) for i in range(0, len(paths), 32)]
    texts = processor(text=captions)
    decoded = DecodedSplit(
        torch.cat([v["pixel_values"] for v in videos]), torch.cat([v["video_mask"] for v in videos]),
        texts["input_ids"], texts["attention_mask"], torch.tensor(text_to_video),
    )  # fmt: skip
    torch.save(vars(decoded), cache)
    return decoded


def build_model(model_config: dict, settings: dict, tokenizer, seed: int) -> CenterCLIPModel:
    text_config = dict(model_config["text_config"], vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    torch.manual_seed(seed)
    return CenterCLIPModel(CenterCLIPConfig(**{**model_config, **settings, "text_config": text_config}))


def train_model(model: CenterCLIPModel, data: DecodedSplit, steps: int, seed: int) -> list[float]:
    """The demo recipe for `steps` steps on in-memory data: each step a batch of videos, one random caption each."""
    from transformers import get_cosine_schedule_with_warmup

    optimizer = torch.optim.AdamW(model.parameters(), lr=RECIPE["learning_rate"], weight_decay=RECIPE["weight_decay"])
    schedule = get_cosine_schedule_with_warmup(optimizer, round(RECIPE["warmup_ratio"] * steps), steps)
    generator = torch.Generator().manual_seed(seed)
    captions_of = [(data.text_to_video == v).nonzero().flatten() for v in range(len(data.pixel_values))]
    batch = min(RECIPE["batch_size"], len(data.pixel_values))
    order, losses = torch.empty(0, dtype=torch.long), []
    model.train()
    for _ in range(steps):
        if len(order) < batch:  # epochs: every video once, in a fresh order
            order = torch.cat([order, torch.randperm(len(data.pixel_values), generator=generator)])
        videos, order = order[:batch], order[batch:]
        texts = torch.stack([captions_of[v][torch.randint(len(captions_of[v]), (), generator=generator)] for v in videos.tolist()])
        loss = model(input_ids=data.input_ids[texts], attention_mask=data.attention_mask[texts],
                     pixel_values=data.pixel_values[videos], video_mask=data.video_mask[videos], return_loss=True).loss  # fmt: skip
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), RECIPE["max_grad_norm"])
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
    return losses


@torch.inference_mode()
def retrieval(model: CenterCLIPModel, data: DecodedSplit) -> dict:
    """t2v / v2t R@K of the model on a decoded split (the repository's ranks and `evaluate` metric)."""
    from training.evaluate import ranking_report

    model.eval()
    videos = torch.cat([
        F.normalize(model.get_video_features(pixel_values=data.pixel_values[i : i + 64], video_mask=data.video_mask[i : i + 64]).pooler_output, dim=-1)
        for i in range(0, len(data.pixel_values), 64)
    ])  # fmt: skip
    texts = F.normalize(model.get_text_features(input_ids=data.input_ids, attention_mask=data.attention_mask).pooler_output, dim=-1)
    report = ranking_report(texts, videos, data.text_to_video)  # raises on non-finite embeddings
    return {"t2v": report["t2v"], "v2t": report[report["headline"]["v2t"]]}


def train_and_evaluate(point: Point, seed: int, args, model_config: dict, tokenizer, train: DecodedSplit, test: DecodedSplit) -> dict:
    model = build_model(model_config, demo_settings(point, model_config), tokenizer, seed)
    start = time.perf_counter()
    losses = train_model(model, train, args.steps, seed)
    train_time = time.perf_counter() - start
    if point.config_b32["cluster_algo"] == "none":
        model.save_pretrained(args.output_dir / "baselines" / f"seed{seed}")  # for the training-free evaluation
    return dict(seed=seed, train_time_s=train_time, final_loss=losses[-1], **retrieval(model, test))


def training_free(point: Point, seeds: list[int], args, model_config: dict, test: DecodedSplit) -> list[dict]:
    """The point's reducer on each trained mean-pooling baseline, no fine-tuning."""
    runs = []
    for seed in seeds:
        model = CenterCLIPModel.from_pretrained(args.output_dir / "baselines" / f"seed{seed}", **demo_settings(point, model_config))
        runs.append(dict(seed=seed, **retrieval(model, test)))
    return runs


def demo_data(args, model_config: dict, corpus_settings: dict):
    """(tokenizer, decoded train split, decoded test split) of the demo corpus, generated and decoded on first use."""
    from transformers import CLIPTokenizer

    from modeling_centerclip import CenterCLIPProcessor
    from training.corpora import load_corpus
    from training.demo import prepare_tokenizer
    from training.demo_corpus import generate_demo_corpus

    corpus = args.output_dir / "corpus"
    generate_demo_corpus(corpus, **corpus_settings, show_progress=False)
    tokenizer = CLIPTokenizer.from_pretrained(prepare_tokenizer(corpus, args.output_dir / "tokenizer"))
    processor = CenterCLIPProcessor(tokenizer)
    processor.num_frames, processor.image_size = model_config["num_frames"], model_config["vision_config"]["image_size"]
    processor.max_length = RECIPE["max_words"]
    splits = load_corpus(str(corpus))
    size = model_config["vision_config"]["image_size"]
    train, test = (decode_split(splits[name], processor, args.output_dir / f"{name}_{size}px.pt") for name in ("train", "test"))
    return tokenizer, train, test


def measure_quality(points: list[Point], seed: int, args, model_config: dict, corpus_settings: dict) -> tuple[dict, dict]:
    """Every point trained with one seed on the demo corpus, then each reducer on that trained baseline
    (training-free). Returns `({point: run}, {point: training-free run})`."""
    # One thread per worker: on an oversubscribed CPU, OpenMP threads waiting on each other cost more than they give.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tokenizer, train, test = demo_data(args, model_config, corpus_settings)
        quality, free = {}, {}
        for point in points:
            quality[point.name] = train_and_evaluate(point, seed, args, model_config, tokenizer, train, test)
            print(f"  seed {seed}, {point.name}: t2v R@1 {quality[point.name]['t2v']['R@1']:.1f} "
                  f"(loss {quality[point.name]['final_loss']:.2f}, {quality[point.name]['train_time_s']:.0f} s)", flush=True)  # fmt: skip
        for point in points[1:]:
            free[point.name] = training_free(point, [seed], args, model_config, test)[0]
        return quality, free
    finally:  # --quick runs this in the calling process (the tests): leave its thread count as it was
        torch.set_num_threads(threads)


def summarise(runs: list[dict]) -> dict:
    """Mean and sample std over seeds of t2v / v2t R@1 and R@5."""
    out = {}
    for direction in ("t2v", "v2t"):
        for metric in ("R@1", "R@5"):
            values = [run[direction][metric] for run in runs]
            key = f"{direction}_{metric.lower().replace('@', '')}"
            out[f"{key}_mean"] = statistics.fmean(values)
            out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


# --- frontier ------------------------------------------------------------------------------------------


def pareto(entries: list[dict]) -> list[dict]:
    """Entries no other entry beats on both speed-up and t2v R@1 (ties count as not beaten)."""
    def beaten(e):
        return any(o["speedup_b32"] >= e["speedup_b32"] and o["t2v_r1_mean"] >= e["t2v_r1_mean"]
                   and (o["speedup_b32"], o["t2v_r1_mean"]) != (e["speedup_b32"], e["t2v_r1_mean"]) for o in entries)  # fmt: skip

    return sorted((e for e in entries if not beaten(e)), key=lambda e: e["speedup_b32"])


def plot(entries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for entry in entries:
        color = {"none": "grey", "kmedoids": "tab:blue", "tome": "tab:orange", "uniform": "tab:green",
                 "temporal": "tab:purple"}[entry["cluster_algo"]]  # fmt: skip
        ax.errorbar(entry["speedup_b32"], entry["t2v_r1_mean"], yerr=entry["t2v_r1_std"], fmt="*" if entry.get("reference") else "o",
                    color=color, markersize=12 if entry.get("reference") else 7, capsize=3)  # fmt: skip
        if entry.get("training_free_t2v_r1_mean") is not None:
            ax.scatter(entry["speedup_b32"], entry["training_free_t2v_r1_mean"], facecolors="none", edgecolors=color, s=40)
        ax.annotate(entry["name"], (entry["speedup_b32"], entry["t2v_r1_mean"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=7)  # fmt: skip
    front = pareto(entries)
    ax.plot([e["speedup_b32"] for e in front], [e["t2v_r1_mean"] for e in front], "k--", lw=1, label="Pareto frontier")
    reference = next((e for e in entries if e.get("reference")), None)
    if reference:
        ax.axvline(1.3 * reference["speedup_b32"], color="red", lw=0.8, ls=":", label="1.3x CenterCLIP B6-4x49")
        ax.axhspan(reference["t2v_r1_mean"] - reference["t2v_r1_std"], reference["t2v_r1_mean"] + reference["t2v_r1_std"],
                   color="tab:blue", alpha=0.08, label="CenterCLIP R@1 +- 1 std")  # fmt: skip
    ax.scatter([], [], facecolors="none", edgecolors="k", label="training-free on the mean-pooling baseline")
    ax.set_xlabel("video-tower speed-up over stock CLIP at ViT-B/32 shapes (12 frames, CPU fp32)")
    ax.set_ylabel("demo corpus t2v R@1 (%), mean +- std over seeds")
    ax.set_title("Token reducers: quality vs speed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(entries: list[dict]) -> None:
    header = (f"{'configuration':<38}{'x B/32':>7}{'x B/16':>7}{'FLOPs/32':>9}{'act. MiB':>9}{'t2v R@1':>14}{'R@5':>7}"
              f"{'v2t R@1':>14}{'free R@1':>9}{'seeds':>6}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for e in entries:
        free = e.get("training_free_t2v_r1_mean")
        print(f"{e['name'][:37]:<38}{e['speedup_b32']:>6.2f}x{e['speedup_b16']:>6.2f}x{e['flops_ratio_b32']:>8.2f}x"
              f"{e['activation_mib_b32']:>9.0f}{e['t2v_r1_mean']:>8.1f} +-{e['t2v_r1_std']:>4.1f}"
              f"{e['t2v_r5_mean']:>7.1f}{e['v2t_r1_mean']:>8.1f} +-{e['v2t_r1_std']:>4.1f}"
              f"{'' if free is None else f'{free:.1f}':>9}{len(e['seeds']):>6}")  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, corpus and grid, 1 seed, 2 steps")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds per grid point (default 0 1 2; quick: 0)")
    parser.add_argument("--steps", type=int, help="optimizer steps per training run (default 250; quick: 2)")
    parser.add_argument("--repeats", type=int, help="timed passes per tower (default 2, one less at B/16; quick: 1)")
    parser.add_argument("--train_batch", type=int, default=2, help="videos per measured training forward (B/32)")
    parser.add_argument("--points", nargs="*", help="only the grid points whose name contains one of these")
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/frontier"))
    parser.add_argument("--reuse_quality", type=Path, help="a previous frontier_report.json: measure speed again, "
                        "take its training results (same points, steps and seeds)")
    args = parser.parse_args(argv)
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.steps = args.steps or (2 if args.quick else 250)
    args.repeats = args.repeats or (1 if args.quick else 2)
    args.output_dir = args.output_dir.resolve()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    points = [p for p in GRID if not args.quick or p.name in QUICK_GRID]
    if args.points:
        points = [p for p in points if p.name.startswith("mean pooling") or p.reference or any(s in p.name for s in args.points)]
    start = time.perf_counter()

    print(f"speed ({'tiny' if args.quick else 'ViT-B/32 and ViT-B/16'} shapes, batch 1, fp32, sdpa, best of {args.repeats})")
    model_config, corpus_settings = demo_setup(args.quick)
    tiny = None
    if args.quick:
        tiny = dict(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
                    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=12, num_attention_heads=2,
                                       image_size=32, patch_size=8), projection_dim=16, num_frames=12)  # fmt: skip
    previous = json.loads(args.reuse_quality.read_text()) if args.reuse_quality else None
    if previous and (previous["steps"], previous["entries"][0]["seeds"]) != (args.steps, args.seeds):
        raise ValueError(f"--reuse_quality {args.reuse_quality}: trained with other steps or seeds")
    if not previous:
        print(f"quality (demo corpus, {args.steps} steps, seeds {args.seeds})", flush=True)
        demo_data(args, model_config, corpus_settings)  # generated and decoded once, before the workers read it
    workers = 1 if args.quick else len(args.seeds)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        # One process per seed trains while this one times the towers: the machine's cores are shared.
        jobs = [] if args.quick or previous else [pool.submit(measure_quality, points, seed, args, model_config, corpus_settings)
                                                  for seed in args.seeds]  # fmt: skip
        speed = {"b32": measure_speed(points, "B/32", "centerclip-vitb32", tiny, args.repeats, args.train_batch)}
        tiny_b16 = None if tiny is None else dict(tiny, vision_config=dict(tiny["vision_config"], patch_size=4))
        speed["b16"] = measure_speed(points, "B/16", "centerclip-vitb16", tiny_b16, max(1, args.repeats - 1))
        (args.output_dir / "speed.json").write_text(json.dumps(speed, indent=2))  # kept should training fail
        if previous:
            quality, free = previous["runs"], previous["training_free_runs"]
        else:
            results = [job.result() for job in jobs] or [measure_quality(points, seed, args, model_config, corpus_settings)
                                                         for seed in args.seeds]  # fmt: skip
            quality = {p.name: [result[0][p.name] for result in results] for p in points}
            free = {p.name: [result[1][p.name] for result in results] for p in points[1:]}

    entries = []
    for point in points:
        stats = summarise(quality[point.name])
        free_stats = summarise(free[point.name]) if point.name in free else {}
        b32 = speed["b32"].get(point.name)
        entry = dict(
            name=point.name, cluster_algo=point.config_b32["cluster_algo"],
            speedup_b32=b32["speedup"], t2v_r1_mean=stats["t2v_r1_mean"], t2v_r1_std=stats["t2v_r1_std"],
            seeds=args.seeds, config_b32=b32["settings"],
            speedup_b16=speed["b16"][point.name]["speedup"], flops_ratio_b32=b32["flops_ratio"],
            flops_ratio_b16=speed["b16"][point.name]["flops_ratio"], token_shares_b32=b32["token_shares"],
            activation_mib_b32=b32["activation_mib"], activation_ratio_b32=b32["activation_mib"] / speed["b32"]["stock"]["activation_mib"],
            demo_config=demo_settings(point, model_config),
            **{k: v for k, v in stats.items() if k not in ("t2v_r1_mean", "t2v_r1_std")},
            training_free_t2v_r1_mean=free_stats.get("t2v_r1_mean"), training_free_t2v_r1_std=free_stats.get("t2v_r1_std"),
            training_free_v2t_r1_mean=free_stats.get("v2t_r1_mean"),
        )  # fmt: skip
        if point.reference:
            entry["reference"] = True
        entries.append(entry)

    reference = next(e for e in entries if e.get("reference"))
    target = [e["name"] for e in entries if e["speedup_b32"] >= 1.3 * reference["speedup_b32"]
              and e["t2v_r1_mean"] >= reference["t2v_r1_mean"] - reference["t2v_r1_std"]]  # fmt: skip
    front = [e["name"] for e in pareto(entries)]
    for entry in entries:
        entry["on_frontier"] = entry["name"] in front
    print_table(entries)
    print(f"\nPareto frontier: {front}")
    print(f"target (>= {1.3 * reference['speedup_b32']:.2f}x stock at B/32, t2v R@1 >= "
          f"{reference['t2v_r1_mean'] - reference['t2v_r1_std']:.1f}): {target or 'none in the grid'}")  # fmt: skip
    (args.output_dir / "frontier.json").write_text(json.dumps(entries, indent=2))
    report = dict(entries=entries, pareto=front, target_met_by=target, stock=dict(b32=speed["b32"]["stock"], b16=speed["b16"]["stock"]),
                  train_batch=args.train_batch, runs=quality, training_free_runs=free, steps=args.steps,
                  recipe=RECIPE, demo_model_config=model_config, corpus=corpus_settings, torch=torch.__version__,
                  threads=torch.get_num_threads(), wall_time_s=time.perf_counter() - start)  # fmt: skip
    (args.output_dir / "frontier_report.json").write_text(json.dumps(report, indent=2))
    plot(entries, args.output_dir / "frontier.png")
    print(f"wrote {args.output_dir / 'frontier.json'}, frontier_report.json and frontier.png "
          f"({report['wall_time_s'] / 60:.1f} min)")  # fmt: skip
    return entries


if __name__ == "__main__":
    main()
