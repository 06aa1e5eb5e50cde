"""Time and memory to plan for: one training step of every shipped benchmark configuration, measured here.

    python benchmarks/benchmark_recipe.py                         # every config, micro-batch 128 on a GPU, 2 on a CPU
    python benchmarks/benchmark_recipe.py --configs msrvtt_vitb32.yaml --micro_batch 32 --steps 5

For each `training/configs/<benchmark>_*.yaml` it builds the model of that configuration (random weights of the
same architecture, from `hub_configs/`: the speed does not depend on the weights), freezes the stems as training
does, and times forward + backward + AdamW step on synthetic batches (no data loading: decoding must keep up
separately, see the README) under bf16 autocast on CUDA, fp32 on the CPU (each config in a fresh process, so the
peak memory is that config's). It reports seconds per item, peak memory (CUDA: `max_memory_allocated`; CPU: peak
RSS of the process), and the projected training time: plan steps x 128 items x seconds per item, for one device.
Output: a table on stdout and `docs/benchmark_recipe_<cpu|cuda>.json` (or `--output`).
"""

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from modeling_centerclip import CenterCLIPConfig, CenterCLIPModel  # noqa: E402
from modeling_centerclip.configuration_centerclip import CENTERCLIP_FIELDS  # noqa: E402

CONFIGS = REPO / "training" / "configs"
ARCHITECTURES = {"openai/clip-vit-base-patch32": "centerclip-vitb32", "openai/clip-vit-base-patch16": "centerclip-vitb16"}
# Optimizer steps of each configuration: `train.py --dry_run` on the real split files (tests/test_recipe.py).
PLAN_STEPS = {"msrvtt_vitb32.yaml": 7030, "msrvtt_vitb32_4x49.yaml": 7030, "msrvtt_vitb16.yaml": 7030,
              "msrvtt_vitb32_meanpool.yaml": 7030, "msvd_vitb32.yaml": 1905, "lsmdc_vitb32.yaml": 3945,
              "activitynet_vitb32.yaml": 624, "activitynet_vitb32_12x49.yaml": 624,
              "activitynet_vitb32_20x49.yaml": 624}  # fmt: skip
GLOBAL_BATCH = 128


def build(config_name: str):
    from training.train import freeze_stems

    settings = yaml.safe_load((CONFIGS / config_name).read_text())
    hub = REPO / "hub_configs" / ARCHITECTURES[settings["model_name_or_path"]]
    overrides = {key: settings[key] for key in CENTERCLIP_FIELDS if key in settings}
    model = CenterCLIPModel(CenterCLIPConfig.from_pretrained(hub, **overrides))
    freeze_stems(model)
    if settings.get("gradient_checkpointing"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model, settings


def measure(config_name: str, micro_batch: int, steps: int) -> dict:
    from training.losses import batch_loss

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, settings = build(config_name)
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    config = model.config
    size = config.vision_config.image_size
    input_ids = torch.randint(1, 49000, (micro_batch, settings["max_words"]), device=device)
    input_ids[:, -1] = config.text_config.eos_token_id
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
             "pixel_values": torch.randn(micro_batch, config.num_frames, 3, size, size, device=device)}  # fmt: skip
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    times = []
    for step in range(steps + 1):  # the first step warms up (allocations, kernels) and is not timed
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            loss = batch_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - start)
    per_item = min(times) / micro_batch
    if device.type == "cuda":
        peak_gib = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    plan_hours = PLAN_STEPS[config_name] * GLOBAL_BATCH * per_item / 3600
    return {"config": config_name, "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
            "micro_batch": micro_batch, "num_frames": config.num_frames, "seconds_per_item": per_item,
            "peak_memory_gib": peak_gib, "gradient_checkpointing": bool(settings.get("gradient_checkpointing")),
            "plan_steps": PLAN_STEPS[config_name], "projected_hours_one_device": plan_hours}  # fmt: skip


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=sorted(PLAN_STEPS))
    parser.add_argument("--micro_batch", type=int, help="items per step (default: 128 on a GPU, 2 on a CPU)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per config (best is kept)")
    parser.add_argument("--output", help="JSON file to write (default: docs/benchmark_recipe_<cpu|cuda>.json)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one config in this process
    args = parser.parse_args(argv)
    micro_batch = args.micro_batch or (GLOBAL_BATCH if torch.cuda.is_available() else 2)
    if args.one:
        print(json.dumps(measure(args.one, micro_batch, args.steps)))
        return []
    results = []
    for name in args.configs:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--micro_batch", str(micro_batch), "--steps",
                              str(args.steps)], capture_output=True, text=True, check=True)  # fmt: skip
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(f"{name:30s} {r['seconds_per_item']:.3f} s/item  peak {r['peak_memory_gib']:.1f} GiB  "
              f"{r['plan_steps']} steps -> {r['projected_hours_one_device']:.1f} h on one device (micro-batch {micro_batch})",
              flush=True)  # fmt: skip
    kind = "cuda" if torch.cuda.is_available() else "cpu"
    target = Path(args.output) if args.output else REPO / "docs" / f"benchmark_recipe_{kind}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results, indent=2))
    print(f"wrote {target}")
    return results


if __name__ == "__main__":
    main()
