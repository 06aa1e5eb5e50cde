"""Speed and memory of CenterCLIP against stock Transformers CLIP, side by side, on the same weights.

    python benchmarks/benchmark_speed.py                      # ViT-B/32 and ViT-B/16 hub configurations
    python benchmarks/benchmark_speed.py --quick              # tiny shapes, seconds (used by the tests)

For every case (a hub configuration, plus a sweep of centers for ViT-B/32) it measures, against stock
`CLIPModel` encoding each frame and mean pooling (CLIP4Clip's baseline):

- inference throughput of the video tower (videos/s; best of interleaved repeats: on a shared CPU noise only
  ever adds time),
- the clustering step's share of the tower's time (the step timed alone on the tower's real hidden states),
- a training step's time and peak memory (forward + backward of the video tower). On the CPU each training
  case runs in a fresh process and peak memory is the rise of peak RSS over the RSS before the step; on
  CUDA it is `torch.cuda.max_memory_allocated()` over the memory allocated before the step,
- the token-count ceiling: stock FLOPs / CenterCLIP FLOPs (`torch.utils.flop_counter`),
- per clustering call, for the torch and the fused Triton k-medoids backends: the tensor operations it
  dispatches (`TorchDispatchMode`; the fused kernel counted as its launches, not run, so this works on the
  CPU too) and, on CUDA, the kernels it launches (`torch.profiler`).

With `--lora R` it measures instead, per training case, a full CenterCLIP training step with AdamW against the
same step of LoRA adapters of rank R (`training.lora`: q/k/v/out projections, the base frozen), on the vision
layers from the cluster layer on (the default) and on all of them:
trainable parameters, AdamW state, step time and peak memory (random weights: the shapes are what matters).
Training memory is the peak of live tensors during the first step (AdamW state included) over those before it:
`torch.cuda.max_memory_allocated` on a GPU, the profiler's allocation timeline on the CPU (`training/tensor_memory.py`).

CPU runs fp32 with sdpa attention; CUDA runs bf16 autocast with sdpa, inference at 1, 8 and 32 videos
(`--batch_grid`, `--batch`) and training steps of 128 videos, and also times the tower with the torch clustering
backend forced. Output: a table on stdout, a JSON file and a plot of speed-up against tokens kept with the FLOPs
ceiling drawn in.

    python benchmarks/benchmark_speed.py --compile --output_dir docs   # eager vs torch.compile vs ONNX Runtime

`--compile` instead measures B/32 4x49 (and stock CLIP with the same weights) in eager mode, under
`torch.compile(fullgraph=True)` (inductor; compile time reported) and exported to ONNX in ONNX Runtime, plus eager
bf16 autocast where the CPU has bf16 instructions, and writes `benchmark_compile_cpu.json` (`_cuda` on a GPU) with the machine's load
average before and after.
"""

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPConfig, CLIPModel

from modeling_centerclip import CenterCLIPConfig, CenterCLIPModel, clustering
from modeling_centerclip import modeling_centerclip as modeling
from modeling_centerclip.modeling_centerclip import cluster_segments
from training.tensor_memory import peak_tensor_memory

HUB_CONFIGS = Path(__file__).resolve().parents[1] / "hub_configs"
FULL_CASES = [
    # (case name, hub configuration, overrides, measure training); the sweep points only add to the plot.
    ("B/32 kmedoids 4x49", "centerclip-vitb32", {}, True),
    ("B/32 kmedoids 3x49", "centerclip-vitb32-3seg", {}, True),
    ("B/32 spectral 4x49", "centerclip-vitb32-spectral", {}, True),
    ("B/32 kmedoids 4x25", "centerclip-vitb32", {"num_centers": 25}, False),
    ("B/32 kmedoids 4x98", "centerclip-vitb32", {"num_centers": 98}, False),
    ("B/16 kmedoids 4x160", "centerclip-vitb16", {}, True),
]
TINY = dict(
    text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, image_size=32, patch_size=8),
    projection_dim=16, num_frames=4, num_segments=2, cluster_layer=2,
)  # fmt: skip
QUICK_CASES = [("tiny kmedoids 2x8", None, dict(TINY, num_centers=8), True)]


def case_config(hub_config: str | None, overrides: dict) -> CenterCLIPConfig:
    if hub_config is None:
        return CenterCLIPConfig(**overrides)
    return CenterCLIPConfig.from_pretrained(HUB_CONFIGS / hub_config, attn_implementation="sdpa", **overrides)


def build_models(config: CenterCLIPConfig, device: torch.device):
    """CenterCLIP and stock CLIP sharing one set of random weights."""
    torch.manual_seed(0)
    centerclip = CenterCLIPModel(config).to(device)
    stock = CLIPModel(stock_clip_config(config)).to(device)
    stock.load_state_dict(centerclip.state_dict())
    return stock, centerclip


def stock_clip_config(config: CenterCLIPConfig) -> CLIPConfig:
    """The stock CLIP architecture of a CenterCLIP configuration."""
    clip_config = CLIPConfig(
        text_config=config.text_config.to_dict(), vision_config=config.vision_config.to_dict(),
        projection_dim=config.projection_dim,
    )  # fmt: skip
    clip_config._attn_implementation = config._attn_implementation
    return clip_config


def stock_video_features(clip: CLIPModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """CLIP4Clip mean pooling with stock CLIP: every frame through the full tower."""
    frames = clip.get_image_features(pixel_values=pixel_values.flatten(0, 1)).pooler_output
    return F.normalize(F.normalize(frames, dim=-1).view(*pixel_values.shape[:2], -1).mean(dim=1), dim=-1)


def video_encoders(stock, centerclip, compare_backends: bool = False):
    """Encoders to time; `compare_backends` adds CenterCLIP with the torch clustering backend forced."""
    encoders = {
        "stock": lambda pixels: stock_video_features(stock, pixels),
        "centerclip": lambda pixels: centerclip.get_video_features(pixels).pooler_output,
    }
    if compare_backends:

        def torch_clustering(pixels):
            with clustering_backend("torch"):
                return centerclip.get_video_features(pixels).pooler_output

        encoders["centerclip_torch_clustering"] = torch_clustering
    return encoders


@contextlib.contextmanager
def clustering_backend(backend: str):
    """Force the k-medoids backend inside the model, which always asks for "auto" (spectral clustering too)."""
    original = clustering.kmedoids

    def forced(*args, **kwargs):
        return original(*args, **dict(kwargs, backend=backend))

    with mock.patch.object(clustering, "kmedoids", forced), mock.patch.object(modeling, "kmedoids", forced):
        yield


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure_inference(stock, centerclip, pixels, repeats: int, device, compare_backends: bool = False) -> dict:
    """Best seconds per batch of each encoder, run alternately so drift hits all alike."""
    encoders = video_encoders(stock, centerclip, compare_backends)
    seconds = {name: [] for name in encoders}
    with torch.inference_mode(), autocast(device):
        for name, encode in encoders.items():  # warm-up
            encode(pixels)
        for _ in range(repeats):
            for name, encode in encoders.items():
                seconds[name].append(timed(lambda: encode(pixels), device))
    return {name: min(values) for name, values in seconds.items()}


def clustered_hidden_states(centerclip, pixels, device) -> torch.Tensor:
    """The hidden states the tower really clusters (its input at the clustering layer)."""
    with torch.inference_mode(), autocast(device):
        vision = centerclip.vision_model
        hidden = vision.pre_layrnorm(vision.embeddings(pixels.flatten(0, 1)))
        for block in vision.encoder.layers[: centerclip.config.cluster_layer]:
            hidden = block(hidden, None)
    return hidden


def measure_clustering(centerclip, hidden, repeats: int, device) -> float:
    """Best seconds of the clustering step alone."""
    config = centerclip.config
    with torch.inference_mode(), autocast(device):
        cluster_segments(hidden, config)  # warm-up
        return min(timed(lambda: cluster_segments(hidden, config), device) for _ in range(repeats))


def clustering_call(hidden, config):
    """The clustering call (`kmedoids` or `spectral_clustering`) the model makes on `hidden`, ready to replay
    with a `backend=` keyword."""
    calls = []

    def recorder(fn):
        def record(*args, **kwargs):
            calls.append(partial(fn, *args, **kwargs))
            return fn(*args, **kwargs)

        return record

    with (
        torch.inference_mode(),
        mock.patch.object(modeling, "kmedoids", recorder(clustering.kmedoids)),
        mock.patch.object(modeling, "spectral_clustering", recorder(clustering.spectral_clustering)),
    ):
        cluster_segments(hidden, config)
    [call] = calls
    return call


class OpCounter(TorchDispatchMode):
    """Counts the tensor operations dispatched inside it."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


class LaunchCounter:
    """Stands in for a Triton kernel (`kernel[grid](...)`): counts launches, runs nothing."""

    def __init__(self):
        self.launches = 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches += 1

        return launch


def ops_per_call(call, backend: str) -> int | None:
    """Tensor operations one clustering call dispatches, plus the fused kernel's launches (counted, not run:
    its results are not needed, and on the CPU it could only run under Triton's interpreter)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode())
        launches = LaunchCounter()
        if backend == "triton":
            if not triton_available():
                return None
            fused = importlib.import_module("modeling_centerclip.clustering_triton")
            stack.enter_context(mock.patch.object(fused, "_kmedoids_kernel", launches))
            if call.args[0].device.type != "cuda":  # lets CPU tensors through to the (counted) launch
                stack.enter_context(mock.patch.dict(os.environ, TRITON_INTERPRET="1"))
        counter = stack.enter_context(OpCounter())
        call(backend=backend)
    return counter.count + launches.launches


def device_ops(fn, device: torch.device) -> int:
    """Operations one call of `fn` runs on `device` (`torch.profiler`): the kernels it launches on CUDA (copies
    and fills not counted), its top-level operators on the CPU."""
    on_cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if on_cuda else [ProfilerActivity.CPU]
    with torch.inference_mode(), profile(activities=activities) as prof:
        fn()
        if on_cuda:
            torch.cuda.synchronize()
    if on_cuda:
        return sum(
            event.count
            for event in prof.key_averages()
            if event.device_type == DeviceType.CUDA and not event.key.startswith(("Memcpy", "Memset"))
        )
    return sum(1 for event in prof.events() if event.cpu_parent is None)


def clustering_counts(hidden, config, device) -> dict:
    """Per clustering call and backend: dispatched operations, and on CUDA launched kernels."""
    call = clustering_call(hidden, config)
    counts = {f"ops_per_call_{backend}": ops_per_call(call, backend) for backend in ("torch", "triton")}
    if device.type == "cuda":
        for backend in ("torch", "triton") if triton_available() else ("torch",):
            call(backend=backend)  # warm-up: Triton compiles on first use
            counts[f"launches_per_call_{backend}"] = device_ops(partial(call, backend=backend), device)
    return counts


def count_flops(stock, centerclip, pixels) -> dict:
    encoders = video_encoders(stock, centerclip)
    flops = {}
    with torch.inference_mode():
        for name, encode in encoders.items():
            counter = FlopCounterMode(display=False)
            with counter:
                encode(pixels[:1])
            flops[name] = counter.get_total_flops()
    return flops


def training_step(case: dict) -> dict:
    """One case's training steps (forward + backward of the video tower): seconds and peak memory."""
    device = torch.device(case["device"])
    config = case_config(case["hub_config"], case["overrides"])
    torch.manual_seed(0)
    if case["model"] == "stock":  # only the measured model is built: no idle weights in the process
        model = CLIPModel(stock_clip_config(config)).to(device)
        encode = lambda pixels: stock_video_features(model, pixels)  # noqa: E731
    else:
        model = CenterCLIPModel(config).to(device)
        encode = lambda pixels: model.get_video_features(pixels).pooler_output  # noqa: E731
    if case.get("lora_r"):
        from types import SimpleNamespace

        from training.lora import add_lora

        lora = SimpleNamespace(model_name_or_path=case["hub_config"], lora_adapter=None, lora_r=case["lora_r"],
                               lora_alpha=None, lora_dropout=0.0, lora_target_modules=None,
                               lora_vision_layers=case.get("lora_vision_layers"))  # fmt: skip
        model = add_lora(model, lora)
    model.train()
    # With "adamw": an AdamW step too, its state allocated in the first (measured) step.
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable) if case.get("optimizer") == "adamw" else None
    g = torch.Generator().manual_seed(0)
    size = config.vision_config.image_size
    pixels = torch.randn(case["train_batch"], config.num_frames, 3, size, size, generator=g).to(device)
    target = F.normalize(torch.randn(case["train_batch"], config.projection_dim, generator=g), dim=-1).to(device)

    def step():
        with autocast(device):
            loss = -(encode(pixels) * target).sum()
        loss.backward()
        if optimizer is not None:
            optimizer.step()
        model.zero_grad(set_to_none=True)

    # The first step is measured for memory (it allocates the optimizer state), the others for time.
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        seconds = [timed(step, device)]
        peak = torch.cuda.max_memory_allocated() - before
    else:  # live tensors from the profiler: peak RSS follows the allocator's fragmentation (training/tensor_memory.py)
        peak, seconds = peak_tensor_memory(step)["peak_bytes"], []
    seconds += [timed(step, device) for _ in range(max(case["train_steps"] - 1, 1 - len(seconds)))]
    state_bytes = sum(t.nbytes for state in optimizer.state.values() for t in state.values()) if optimizer else 0
    return {"train_step_s": statistics.median(seconds[1:] or seconds), "train_peak_bytes": peak,
            "trainable_parameters": sum(p.numel() for p in trainable), "optimizer_state_bytes": state_bytes}


def training_in_fresh_process(case: dict) -> dict:
    """Each CPU training case in a process of its own, so no case inherits another's memory or threads. None:
    out of GPU memory."""
    if case["device"] == "cuda":
        try:
            return training_step(case)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return None
    result = subprocess.run(
        [sys.executable, __file__, "--_train_case", json.dumps(case)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"training case {case} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def default_train_batch(config: CenterCLIPConfig, device: torch.device) -> int:
    """Videos per training step: enough that activations, not gradients, dominate memory (as in real training)."""
    if device.type == "cuda":
        return 128
    return 16 if config.vision_config.patch_size >= 32 else 4


def run_case(name, hub_config, overrides, args, device, stock_training: dict, train_measured: bool) -> dict:
    config = case_config(hub_config, overrides)
    stock, centerclip = build_models(config, device)
    stock.eval(), centerclip.eval()
    size = config.vision_config.image_size
    compare_backends = device.type == "cuda" and triton_available()
    by_batch = []
    for batch in sorted({*args.batch_grid, args.batch}):
        g = torch.Generator().manual_seed(0)
        pixels = torch.randn(batch, config.num_frames, 3, size, size, generator=g).to(device)
        seconds = measure_inference(stock, centerclip, pixels, args.repeats, device, compare_backends)
        hidden = clustered_hidden_states(centerclip, pixels, device)
        point = {
            "batch": batch,
            "stock_videos_per_s": batch / seconds["stock"],
            "centerclip_videos_per_s": batch / seconds["centerclip"],
            "speedup": seconds["stock"] / seconds["centerclip"],
            "clustering_share": measure_clustering(centerclip, hidden, args.repeats, device) / seconds["centerclip"],
        }
        if compare_backends:
            point["speedup_torch_clustering"] = seconds["stock"] / seconds["centerclip_torch_clustering"]
        by_batch.append(point)
        if batch == args.batch:
            headline, counts = point, clustering_counts(hidden, config, device)
    flops = count_flops(stock, centerclip, pixels)
    del stock, centerclip
    row = {
        "case": name,
        "hub_config": hub_config,
        "cluster_algo": config.cluster_algo,
        "num_segments": config.num_segments,
        "num_centers": config.num_centers,
        "cluster_layer": config.cluster_layer,
        "tokens_kept": config.num_segments * (config.num_centers + 1) / (config.num_frames * (config.patches_per_frame + 1)),
        **{key: value for key, value in headline.items() if key != "batch"},
        "flops_stock": flops["stock"],
        "flops_centerclip": flops["centerclip"],
        "flops_ceiling": flops["stock"] / flops["centerclip"],
        **counts,
        "by_batch": by_batch,
    }  # fmt: skip
    if not args.skip_training and train_measured:
        batch = args.train_batch or default_train_batch(config, device)
        case = dict(hub_config=hub_config, overrides=overrides, device=device.type, train_batch=batch,
                    train_steps=args.train_steps)  # fmt: skip
        # Stock CLIP depends only on the architecture: measure it once per architecture and batch.
        stock_key = (config.vision_config.patch_size, config.vision_config.hidden_size, config.num_frames, batch)
        if stock_key not in stock_training:
            stock_training[stock_key] = training_in_fresh_process(dict(case, model="stock"))
        stock, ours = stock_training[stock_key], training_in_fresh_process(dict(case, model="centerclip"))
        if stock is None or ours is None:
            row["train_error"] = f"out of GPU memory at {batch} videos (see --train_batch)"
            return row
        row.update(
            train_batch=batch,
            stock_train_step_s=stock["train_step_s"],
            centerclip_train_step_s=ours["train_step_s"],
            stock_train_peak_mb=stock["train_peak_bytes"] / 2**20,
            centerclip_train_peak_mb=ours["train_peak_bytes"] / 2**20,
            train_memory_ratio=ours["train_peak_bytes"] / stock["train_peak_bytes"],
        )
    return row


LORA_METHODS = ("full", "lora", "lora_all")


def run_lora_case(name, hub_config, overrides, args, device) -> dict:
    """Full fine-tuning (AdamW) against LoRA adapters of rank `args.lora` (AdamW), CenterCLIP in all: `lora` on the
    vision layers from the cluster layer on (the default), `lora_all` on every vision layer."""
    config = case_config(hub_config, overrides)
    batch = args.train_batch or default_train_batch(config, device)
    case = dict(hub_config=hub_config, overrides=overrides, device=device.type, train_batch=batch,
                train_steps=args.train_steps, model="centerclip", optimizer="adamw")  # fmt: skip
    extras = {"full": {}, "lora": {"lora_r": args.lora, "lora_vision_layers": "after_cluster"},
              "lora_all": {"lora_r": args.lora, "lora_vision_layers": "all"}}  # fmt: skip
    results = {method: training_in_fresh_process({**case, **extras[method]}) for method in LORA_METHODS}
    if None in results.values():
        return {"case": name, "train_error": f"out of GPU memory at {batch} videos (see --train_batch)"}
    row = {"case": name, "hub_config": hub_config, "train_batch": batch, "lora_r": args.lora}
    for method, result in results.items():
        row.update({f"{method}_train_step_s": result["train_step_s"], f"{method}_train_peak_mb": result["train_peak_bytes"] / 2**20,
                    f"{method}_trainable_parameters": result["trainable_parameters"],
                    f"{method}_optimizer_state_mb": result["optimizer_state_bytes"] / 2**20})  # fmt: skip
        if method != "full":
            row[f"{method}_memory_ratio"] = result["train_peak_bytes"] / results["full"]["train_peak_bytes"]
    return row


def print_lora_table(rows: list[dict]) -> None:
    print(f"{'case':<22}{'batch':>6}  {'method':<10}{'trainable':>12}{'AdamW MB':>10}{'step s':>8}{'train MB':>10}"
          f"{'vs full':>9}")  # fmt: skip
    for r in rows:
        if "train_error" in r:
            print(f"{r['case']:<22}{r['train_error']}")
            continue
        for method in LORA_METHODS:
            ratio = f"{r[f'{method}_memory_ratio']:>8.2f}x" if method != "full" else f"{'':>9}"
            print(f"{r['case']:<22}{r['train_batch']:>6}  {method:<10}{r[f'{method}_trainable_parameters']:>12,}"
                  f"{r[f'{method}_optimizer_state_mb']:>10.1f}{r[f'{method}_train_step_s']:>8.2f}"
                  f"{r[f'{method}_train_peak_mb']:>10.0f}{ratio}")  # fmt: skip


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'case':<22}{'stock v/s':>10}{'CC v/s':>9}{'speed-up':>9}{'ceiling':>8}{'cluster%':>9}"
        f"{'train batch, s stock/CC':>24}{'train MB stock/CC':>19}{'mem ratio':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        train = (
            f"{r['train_batch']:>6}, {r['stock_train_step_s']:>7.2f}/{r['centerclip_train_step_s']:<8.2f}"
            f"{r['stock_train_peak_mb']:>10.0f}/{r['centerclip_train_peak_mb']:<8.0f}{r['train_memory_ratio']:>9.2f}x"
            if "train_memory_ratio" in r
            else r.get("train_error", "")
        )
        print(
            f"{r['case']:<22}{r['stock_videos_per_s']:>10.2f}{r['centerclip_videos_per_s']:>9.2f}"
            f"{r['speedup']:>8.2f}x{r['flops_ceiling']:>7.2f}x{100 * r['clustering_share']:>8.1f}% {train}"
        )
    print_clustering_table(rows)


def print_clustering_table(rows: list[dict]) -> None:
    """Per clustering call: operations and kernels for each backend; speed-up and clustering share per batch."""
    batches = [point["batch"] for point in rows[0]["by_batch"]]
    header = (
        f"{'case':<22}{'ops torch/fused':>16}{'kernels torch/fused':>20}"
        + "".join(f"{f'b{b}: speed-up, cluster%':>24}" for b in batches)
    )
    print("\nclustering per call (fused = one Triton kernel; kernels counted on CUDA only)")
    print(header)
    print("-" * len(header))
    show = lambda value: "-" if value is None else str(value)  # noqa: E731
    for r in rows:
        ops = f"{show(r['ops_per_call_torch'])}/{show(r['ops_per_call_triton'])}"
        kernels = f"{show(r.get('launches_per_call_torch'))}/{show(r.get('launches_per_call_triton'))}"
        grid = "".join(
            f"{p['speedup']:>15.2f}x{100 * p['clustering_share']:>7.1f}%"
            + (f" (torch path {p['speedup_torch_clustering']:.2f}x)" if "speedup_torch_clustering" in p else "")
            for p in r["by_batch"]
        )
        print(f"{r['case']:<22}{ops:>16}{kernels:>20}{grid}")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    labelled = {}
    for family, marker in [("B/32", "o"), ("B/16", "s"), ("tiny", "^")]:
        points = sorted((r for r in rows if r["case"].startswith(family)), key=lambda r: r["tokens_kept"])
        if not points:
            continue
        kept = [100 * r["tokens_kept"] for r in points]
        line = ax.plot(kept, [r["flops_ceiling"] for r in points], "x--", alpha=0.6, label=f"{family} FLOPs ceiling")
        ax.scatter(kept, [r["speedup"] for r in points], marker=marker, color=line[0].get_color(), label=f"{family} measured", zorder=3)
        for r, x in zip(points, kept):
            stacked = labelled.setdefault(round(x / 5), 0)  # points close in x: stack their labels
            labelled[round(x / 5)] += 1
            ax.annotate(f"{family} {r['case'].split(' ', 1)[1]}", (x, r["speedup"]), textcoords="offset points",
                        xytext=(6, -12 - 10 * stacked), fontsize=7)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("tokens in the layers after clustering (% of stock)")
    ax.set_ylabel("video tower speed-up over stock CLIP (x)")
    ax.set_title("CenterCLIP inference speed-up vs tokens kept")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def cpu_has_bf16() -> bool:
    """bf16 autocast is worth measuring on the CPU only with native bf16 instructions (AVX512-BF16 or AMX)."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def best_seconds(fn, repeats: int, device) -> float:
    fn()  # warm-up
    return min(timed(fn, device) for _ in range(repeats))


def onnx_seconds(module, inputs, names, repeats: int, path: Path) -> tuple[float, float, float]:
    """Export `module(*inputs)` to ONNX at `path`; (export seconds, best seconds per call in ONNX Runtime, max |ORT -
    PyTorch|)."""
    import onnxruntime

    start = time.perf_counter()
    with torch.no_grad():
        program = torch.export.export(module, inputs, strict=False)
        torch.onnx.export(program, inputs, input_names=names, dynamo=True, verbose=False).save(str(path))
    exported = time.perf_counter() - start
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {name: tensor.numpy() for name, tensor in zip(names, inputs)}
    with torch.no_grad():
        expected = module(*inputs)
    difference = float((torch.from_numpy(session.run(None, feed)[0]) - expected).abs().max())
    return exported, best_seconds(lambda: session.run(None, feed), repeats, torch.device("cpu")), difference


def run_compile_case(args) -> dict:
    """Eager, torch.compile and ONNX Runtime throughput of CenterCLIP and stock CLIP on the same weights.

    On CUDA: eager and compiled under bf16 autocast, the compile also with `mode="reduce-overhead"` (CUDA graphs),
    no ONNX Runtime (its CPU build is what this project installs).
    """
    from modeling_centerclip.input_checks import checks_disabled
    from training.export_onnx import VideoTower

    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    config = case_config(None, dict(TINY, num_centers=8)) if args.quick else case_config("centerclip-vitb32", {})
    name = "tiny kmedoids 2x8" if args.quick else "B/32 kmedoids 4x49"
    stock, centerclip = build_models(config, device)
    stock.eval(), centerclip.eval()
    size = config.vision_config.image_size
    pixels = torch.randn(args.batch, config.num_frames, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.ones(args.batch, config.num_frames, dtype=torch.bool, device=device)

    class StockTower(torch.nn.Module):
        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def forward(self, pixel_values):
            return stock_video_features(self.clip, pixel_values)

    towers = {"stock": (StockTower(stock), (pixels,), ["pixel_values"]),
              "centerclip": (VideoTower(centerclip), (pixels, mask), ["pixel_values", "video_mask"])}  # fmt: skip
    compile_modes = {"compiled": "default", "cudagraphs": "reduce-overhead"} if on_cuda else {"compiled": "default"}
    row = {"case": name, "device": str(device), "batch": args.batch, "threads": torch.get_num_threads(),
           "load_before": os.getloadavg()}  # fmt: skip
    with torch.no_grad(), tempfile.TemporaryDirectory() as scratch:
        for label, (tower, inputs, names) in towers.items():
            with autocast(device):  # bf16 on CUDA, off on the CPU
                row[f"{label}_eager_videos_per_s"] = args.batch / best_seconds(lambda: tower(*inputs), args.repeats, device)
            if not on_cuda and cpu_has_bf16():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    row[f"{label}_eager_bf16_videos_per_s"] = args.batch / best_seconds(lambda: tower(*inputs), args.repeats, device)
            for mode_name, mode in compile_modes.items():
                torch._dynamo.reset()
                compiled = torch.compile(tower, fullgraph=True, mode=mode)
                with autocast(device):
                    start = time.perf_counter()
                    compiled(*inputs)
                    row[f"{label}_{mode_name}_compile_s"] = time.perf_counter() - start
                    difference = (compiled(*inputs).float() - tower(*inputs).float()).abs().max()
                    row[f"{label}_{mode_name}_max_diff"] = float(difference)
                    seconds = best_seconds(lambda: compiled(*inputs), args.repeats, device)
                row[f"{label}_{mode_name}_videos_per_s"] = args.batch / seconds
                print(f"  {label}: {mode_name} done", flush=True)
            if not on_cuda:
                with checks_disabled():
                    export_s, ort_s, difference = onnx_seconds(tower, inputs, names, args.repeats, Path(scratch) / f"{label}.onnx")
                row.update({f"{label}_onnx_export_s": export_s, f"{label}_onnx_videos_per_s": args.batch / ort_s,
                            f"{label}_onnx_max_diff": difference})  # fmt: skip
                print(f"  {label}: ONNX Runtime done", flush=True)
    row["load_after"] = os.getloadavg()
    for mode in COMPILE_TABLE_MODES:
        if f"centerclip_{mode}_videos_per_s" in row:
            row[f"speedup_{mode}"] = row[f"centerclip_{mode}_videos_per_s"] / row[f"stock_{mode}_videos_per_s"]
    return row


COMPILE_TABLE_MODES = ("eager", "eager_bf16", "compiled", "cudagraphs", "onnx")


def print_compile_table(row: dict) -> None:
    print(f"{row['case']} on {row['device']}, {row['batch']} videos per call, {row['threads']} threads, "
          f"load average before {row['load_before']}")  # fmt: skip
    print(f"{'mode':<12}{'stock v/s':>11}{'CenterCLIP v/s':>16}{'speed-up':>10}")
    for mode in COMPILE_TABLE_MODES:
        if f"speedup_{mode}" in row:
            print(f"{mode:<12}{row[f'stock_{mode}_videos_per_s']:>11.2f}{row[f'centerclip_{mode}_videos_per_s']:>16.2f}"
                  f"{row[f'speedup_{mode}']:>9.2f}x")  # fmt: skip
    print(f"compile time: stock {row['stock_compiled_compile_s']:.1f} s, CenterCLIP {row['centerclip_compiled_compile_s']:.1f} s")
    if "centerclip_onnx_max_diff" in row:
        print(f"ONNX Runtime vs PyTorch max |diff|: {row['centerclip_onnx_max_diff']:.1e}")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, a few seconds (for tests)")
    parser.add_argument("--cases", nargs="*", help="only the cases whose name contains one of these strings")
    parser.add_argument("--batch", type=int, help="videos per inference batch (default 2 on CPU, 32 on CUDA)")
    parser.add_argument("--batch_grid", type=int, nargs="*", help="further inference batches reported per case "
                        "(default: none on CPU, 1 and 8 on CUDA)")
    parser.add_argument("--train_batch", type=int, help="videos per training step (default: 16 for B/32 and 4 for "
                        "B/16 on the CPU, 128 on CUDA)")
    parser.add_argument("--train_steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip_training", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/benchmarks"))
    parser.add_argument("--compile", action="store_true", help="eager vs torch.compile vs ONNX Runtime (CPU), "
                        "writes benchmark_compile_cpu.json")
    parser.add_argument("--lora", type=int, metavar="R", help="measure full fine-tuning (AdamW) against a LoRA "
                        "adapter of rank R instead (training cases only); writes speed_lora.json")
    parser.add_argument("--_train_case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._train_case:
        print(json.dumps(training_step(json.loads(args._train_case))))
        return []
    if args.compile:
        args.batch = args.batch or 2
        args.output_dir.mkdir(parents=True, exist_ok=True)
        row = run_compile_case(args)
        print_compile_table(row)
        machine = torch.cuda.get_device_name() if row["device"] == "cuda" else platform.processor() or platform.machine()
        report = {"machine": machine, "torch": torch.__version__, "rows": [row]}
        path = args.output_dir / f"benchmark_compile_{row['device']}.json"
        path.write_text(json.dumps(report, indent=2))
        print(f"wrote {path}")
        return [row]

    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    args.batch = args.batch or (32 if on_cuda else 2)
    args.batch_grid = args.batch_grid if args.batch_grid is not None else ([1, 8] if on_cuda else [])
    cases = QUICK_CASES if args.quick else FULL_CASES
    if args.cases:
        cases = [c for c in cases if any(part in c[0] for part in args.cases)]
    machine = torch.cuda.get_device_name(device) if on_cuda else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"device: {device} ({machine}); {'bf16 autocast' if on_cuda else 'fp32'}, sdpa; inference batch {args.batch}")

    if args.lora:
        rows = [run_lora_case(name, hub, overrides, args, device) for name, hub, overrides, measured in cases if measured]
        print_lora_table(rows)
        args.output_dir.mkdir(parents=True, exist_ok=True)
        report = {"device": str(device), "machine": machine, "torch": torch.__version__, "rows": rows}
        (args.output_dir / "speed_lora.json").write_text(json.dumps(report, indent=2))
        print(f"wrote {args.output_dir / 'speed_lora.json'}")
        return rows
    rows, stock_training = [], {}
    for name, hub_config, overrides, train_measured in cases:
        rows.append(run_case(name, hub_config, overrides, args, device, stock_training, train_measured))
        print(f"  done: {name}", flush=True)
    print_table(rows)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    report = {"device": str(device), "machine": machine, "torch": torch.__version__, "batch": args.batch, "rows": rows}
    (args.output_dir / "speed.json").write_text(json.dumps(report, indent=2))
    plot(rows, args.output_dir / "speedup_vs_tokens.png")
    print(f"wrote {args.output_dir / 'speed.json'} and {args.output_dir / 'speedup_vs_tokens.png'}")
    return rows


if __name__ == "__main__":
    main()
