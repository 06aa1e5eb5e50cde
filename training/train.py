"""Fine-tune (or train from scratch) CenterCLIP on a text-video corpus with Accelerate.

    accelerate launch training/train.py --config training/configs/msrvtt_vitb32.yaml --output_dir out/run
    python training/train.py --config training/configs/msvd_vitb32.yaml ... --dry_run   # print the plan only

Settings, `--config` files and their validation live in `training.config`; checkpoints in `training.checkpoints`.
Defaults follow the paper's recipe (docs/design.md): AdamW (betas 0.9/0.98, eps 1e-6, weight decay 0.2 except on 1-d
parameters, unlike the reference: see `parameter_groups`), lr 5e-6 for CLIP's weights and `new_learning_rate` for
weights that stock CLIP lacks, 10 % linear warm-up then cosine decay, gradient-norm clip 1.0, mixed precision on
GPUs, frozen embedding stems, `logit_scale` clamped at ln(100) after every step, one item per (video, caption) pair,
`global_batch_size` split over processes and accumulation steps.

The contrastive loss sees the global batch: embeddings of all processes are gathered with their gradients
(`training.losses`). With gradient accumulation each micro-batch is its own contrastive batch.

Reproducibility: shuffling comes from Accelerate's seedable sampler (seed + epoch) and each item's random
choices (caption, frames) from a generator seeded by (seed, epoch, index), so `--resume` continues exactly
where a checkpoint was saved and the items do not depend on the number of workers.

The hot path of a step has no host synchronisation: the loss is accumulated on the device, a process whose
whole batch failed to decode takes part with an all-padding batch, and the loss is checked for NaN/inf on the
device; at every logging, evaluation and checkpoint step (and at the end) a non-finite loss stops training with
`NonFiniteLossError` naming the first bad step and its batch's video ids, before anything is saved.

The final model is saved to `output_dir/final` before the final evaluation, so an evaluation that fails or is
interrupted never loses a finished run.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, "") and __name__ == "__main__":
    # Run as a script: import from the repository root, not from training/ (whose evaluate.py shadows `evaluate`).
    sys.path[0] = str(Path(__file__).resolve().parents[1])
if __name__ == "__main__":  # --help and a mistyped flag answer before torch loads
    from training.config import build_parser

    build_parser().parse_args()

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, gather_object, set_seed
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import CLIPModel, CLIPTokenizer, get_scheduler

from modeling_centerclip import CenterCLIPConfig, CenterCLIPModel, CenterCLIPProcessor, NonFiniteTokensError
from modeling_centerclip.configuration_centerclip import CENTERCLIP_FIELDS
from modeling_centerclip.processing_centerclip import PAPER_FPS
from training.checkpoints import checkpoint_step, find_checkpoint, read_history, save_checkpoint
from training.config import (PLAN_KEYS, checkpoint_tokenizer_remedy, model_config_settings, parse_args,
                             per_device_batch_size)
from training.corpora import CORPUS_KEYS, all_captions, expand_captions
from training.evaluate import headline_results
from training.frame_store import check_store_settings
from training.lora import add_lora, lora_enabled
from training.losses import batch_loss
from training.tokenizer import check_tokenizer

logger = get_logger(__name__)

# Parameters the paper keeps frozen: patch/class/position embeddings, pre-layernorm, text token/position embeddings.
STEM_PREFIXES = ("vision_model.embeddings.", "vision_model.pre_layrnorm.", "text_model.embeddings.")

__all__ = ["NonFiniteLossError", "main", "parse_args", "train"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the optimizer step and the batch's video ids."""


# ---------------------------------------------------------------------------------------------- model and data


def load_corpus_splits(args):
    from training.corpora import load_corpus

    kwargs = {key: getattr(args, key) for key in CORPUS_KEYS if getattr(args, key) is not None}
    corpus = load_corpus(args.corpus, **kwargs)
    for key in ("train_split", "eval_split"):
        split = getattr(args, key)
        if split and split != "none" and split not in corpus:
            raise ValueError(f"config key {key!r}={split!r}: corpus {args.corpus} has splits {list(corpus)}")
    return corpus


def build_model_and_processor(args, train_split, accelerator: Accelerator):
    """A checkpoint (with cluster overrides) or a fresh model from `model_config` plus a tokenizer trained on
    the training captions. Returns `(model, processor)`."""
    overrides = {key: value for key in CENTERCLIP_FIELDS if (value := getattr(args, key, None)) is not None}
    if args.model_name_or_path:
        remedy = checkpoint_tokenizer_remedy(args.model_name_or_path)  # files were checked with the settings
        model = CenterCLIPModel.from_pretrained(args.model_name_or_path, **overrides)
        try:
            processor = CenterCLIPProcessor.from_pretrained(args.model_name_or_path)  # stock CLIP: 3 fps
        except (OSError, ValueError, TypeError):  # a stock CLIP checkpoint: its tokenizer, our video settings
            processor = CenterCLIPProcessor(CLIPTokenizer.from_pretrained(args.model_name_or_path), fps=PAPER_FPS)
        check_tokenizer(processor.tokenizer, args.model_name_or_path, remedy)
    else:
        settings = model_config_settings(args)
        tokenizer_dir = os.path.join(args.output_dir, "tokenizer")
        if not args.tokenizer_name_or_path and accelerator.is_main_process and not os.path.isdir(tokenizer_dir):
            from training.tokenizer import train_clip_tokenizer

            # Trained once, then read back by every process (and by a resumed run): BPE training breaks frequency
            # ties differently in each process, so two trainings on the same captions can differ.
            train_clip_tokenizer(all_captions(train_split), vocab_size=args.tokenizer_vocab_size).save_pretrained(tokenizer_dir)
        accelerator.wait_for_everyone()
        tokenizer = CLIPTokenizer.from_pretrained(args.tokenizer_name_or_path or tokenizer_dir)
        text_config = dict(settings.get("text_config", {}), vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        config = CenterCLIPConfig(**{**settings, **overrides, "text_config": text_config})
        model = CenterCLIPModel(config)
        processor = CenterCLIPProcessor(tokenizer)
    config = model.config
    if args.max_words > config.text_config.max_position_embeddings:
        raise ValueError(f"config key 'max_words'={args.max_words}: the text tower holds at most "
                         f"{config.text_config.max_position_embeddings} tokens")
    # The processor follows the model's frame count and image size; caption length and fps follow the run.
    processor.num_frames = config.num_frames
    processor.image_size = config.vision_config.image_size
    processor.max_length = args.max_words
    processor.fps = processor.fps if args.fps is None else args.fps
    check_store_settings(args.corpus, processor.fps, processor.image_size, "the run (--fps, else the checkpoint's)")
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model, processor


class EpochSeededItems(Dataset):
    """Wraps a dataset so each item's random choices come from torch's RNG seeded by (seed, epoch, index).

    The items then depend neither on the process, the DataLoader workers, nor on where a resumed run starts.
    Accelerate's prepared DataLoader calls `set_epoch` every epoch.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, self.epoch, int(index))) & 0x7FFF_FFFF_FFFF_FFFF)
            return self.dataset[index]


def start_epoch(loader, items: EpochSeededItems, epoch: int) -> None:
    """Reshuffle the prepared loader (seed + epoch) and reseed the items. Accelerate forwards `set_epoch` to the
    dataset only when its sampler does not take it -- with one process alone -- so the items are told directly."""
    loader.set_epoch(epoch)
    items.set_epoch(epoch)


def new_parameter_names(model: CenterCLIPModel) -> set[str]:
    """Parameters that a stock `CLIPModel` of the same architecture does not have (built on the meta device)."""
    with torch.device("meta"):
        stock = CLIPModel(model.config)
    return {name for name, _ in model.named_parameters()} - {name for name, _ in stock.named_parameters()}


def parameter_groups(model, args) -> list[dict]:
    """AdamW groups keyed by name: CLIP weights and new weights, each with and without weight decay.

    No decay on 1-d parameters (biases, norm gains, `logit_scale`; frozen ones are left out). This differs from the
    reference, which exempts names with `bias`/`LayerNorm` only and so decays CLIP's `ln_*` gains and `logit_scale`.
    """
    new = new_parameter_names(model)
    groups = {
        "clip": {"lr": args.learning_rate, "weight_decay": args.weight_decay},
        "clip_no_decay": {"lr": args.learning_rate, "weight_decay": 0.0},
        "new": {"lr": args.new_learning_rate, "weight_decay": args.weight_decay},
        "new_no_decay": {"lr": args.new_learning_rate, "weight_decay": 0.0},
    }
    for group in groups.values():
        group["params"], group["param_names"] = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = ("new" if name in new else "clip") + ("_no_decay" if param.ndim < 2 else "")
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return [{"name": key, **group} for key, group in groups.items()]


def freeze_stems(model) -> int:
    """Freeze the embedding stems; returns the number of frozen parameters."""
    frozen = 0
    for name, param in model.named_parameters():
        if name.startswith(STEM_PREFIXES):
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def resolve_mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):  # set by `accelerate launch --mixed_precision` / its config
        return os.environ["ACCELERATE_MIXED_PRECISION"]
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


# ------------------------------------------------------------------------------------------------- training


class NonFiniteWatch:
    """Watches the loss for NaN/inf on the device (no host sync per step); `check` syncs once and raises
    `NonFiniteLossError` naming the first bad optimizer step and the global batch's video ids."""

    def __init__(self, device):
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_loss = torch.zeros((), device=device)
        self.video_ids: dict[int, list] = {}  # this process's videos of each step since the last check

    def update(self, loss: torch.Tensor, step: int, video_ids: list) -> None:
        """`step` is the optimizer step (1-based) this micro-batch belongs to."""
        self.video_ids.setdefault(step, []).extend(video_ids)
        first = (self.first_bad_step < 0) & ~torch.isfinite(loss.detach())
        self.first_bad_step = torch.where(first, step, self.first_bad_step)
        self.bad_loss = torch.where(first, loss.detach().float(), self.bad_loss)

    def check(self) -> None:
        bad_step = int(self.first_bad_step)  # the loss is global, so every process agrees
        if bad_step >= 0:
            video_ids = gather_object(list(self.video_ids.get(bad_step, [])))
            raise NonFiniteLossError(
                f"non-finite loss {float(self.bad_loss)} at optimizer step {bad_step} on the batch of videos "
                f"{video_ids}; lower the learning rate or check these videos (resume from the last checkpoint with "
                "--resume latest)"
            )
        self.video_ids.clear()


def placeholder_batch(processor) -> dict:
    """One all-padding item: a process whose whole batch failed to decode still takes part in the step's
    collectives (gathers, DDP), contributing nothing to the loss."""
    size, frames = processor.image_size, processor.num_frames
    return {"input_ids": torch.zeros(1, processor.max_length, dtype=torch.long),
            "attention_mask": torch.ones(1, processor.max_length, dtype=torch.long),
            "pixel_values": torch.zeros(1, frames, 3, size, size, dtype=torch.uint8),
            "video_mask": torch.ones(1, frames, dtype=torch.bool),
            "valid": torch.zeros(1, dtype=torch.bool), "video_id": []}  # fmt: skip


def clamp_logit_scale(model, max_logit_scale: float) -> None:
    with torch.no_grad():
        model.logit_scale.clamp_(max=math.log(max_logit_scale))


def run_evaluation(accelerator, model, processor, split, args) -> dict:
    """Retrieval metrics: every process encodes its shard of the videos, under the training's mixed precision."""
    from training.evaluate import evaluate_model

    with accelerator.autocast():
        return evaluate_model(accelerator.unwrap_model(model), processor, split, batch_size=args.eval_batch_size,
                              max_videos=args.max_eval_videos, num_workers=args.num_workers, show_progress=False,
                              accelerator=accelerator)  # fmt: skip


def build_accelerator(args) -> Accelerator:
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=resolve_mixed_precision(args.mixed_precision),
        log_with=None if args.report_to == "none" or args.dry_run else args.report_to,
        project_config=ProjectConfiguration(args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")),
        step_scheduler_with_optimizer=False,  # stepped once per optimizer step below, whatever the process count
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:  # each process would silently train alone
        raise RuntimeError(f"{launched} processes were launched, but Accelerate set up none of them as distributed; "
                           "on CPUs launch with `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N`")  # fmt: skip
    return accelerator


def training_plan(args, accelerator, corpus, train_items, steps_per_epoch, max_steps, warmup_steps, per_device,
                  model, processor) -> dict:  # fmt: skip
    """What the run will do, as printed by `--dry_run` (keys: `training.config.PLAN_KEYS`)."""
    plan = {
        "corpus": args.corpus, "train_split": args.train_split, "train_videos": len(corpus[args.train_split]),
        "items_per_epoch": len(train_items), "item_kind": "caption" if args.expand_captions else "video",
        "num_processes": accelerator.num_processes,
        "global_batch_size": per_device * accelerator.num_processes * args.gradient_accumulation_steps,
        "per_device_train_batch_size": per_device, "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "steps_per_epoch": steps_per_epoch, "num_train_epochs": args.num_train_epochs, "optimizer_steps": max_steps,
        "warmup_steps": warmup_steps, "learning_rate": args.learning_rate, "num_frames": (config := model.config).num_frames,
        "max_words": processor.max_length, "fps": processor.fps, "cluster_algo": config.cluster_algo,
        "num_segments": config.num_segments, "num_centers": config.num_centers, "cluster_layer": config.cluster_layer,
        "gradient_checkpointing": args.gradient_checkpointing, "mixed_precision": accelerator.mixed_precision,
    }  # fmt: skip
    return {key: plan[key] for key in PLAN_KEYS}


def train(args, step_callback: Callable[[int], None] | None = None) -> dict:
    """Run training as configured; returns a summary: `final_dir`, `steps`, `loss` (last logged), `eval`,
    `train_time_s` and the trained `model` (unwrapped). With `args.dry_run`: `{"plan": {...}}`, nothing trained.

    `step_callback(step)` runs after every optimizer step (after logging, evaluation and checkpointing).
    """
    accelerator = build_accelerator(args)
    per_device = per_device_batch_size(args, accelerator.num_processes)
    set_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    corpus = load_corpus_splits(args)
    model, processor = build_model_and_processor(args, corpus[args.train_split], accelerator)
    if lora_enabled(args):
        model = add_lora(model, args)  # every base weight frozen, the adapter trains (training.lora)
    elif args.freeze_stems:
        freeze_stems(model)

    from training.data import SkipCounter, VideoTextDataset, collate_video_text

    train_split = expand_captions(corpus[args.train_split]) if args.expand_captions else corpus[args.train_split]
    # uint8 frames from the loader, normalised on the device: a quarter of the bytes through workers and to the GPU.
    items = VideoTextDataset(train_split, processor, training=True, do_normalize=False)
    train_data = EpochSeededItems(items, args.seed)
    # Its own generator: starting an epoch draws nothing from torch's global RNG, so after `--resume` the dropout
    # draws (e.g. LoRA's) continue exactly as in an uninterrupted run. The order comes from the seedable sampler.
    train_loader = DataLoader(train_data, batch_size=per_device, shuffle=True, drop_last=True, num_workers=args.num_workers,
                              collate_fn=collate_video_text, generator=torch.Generator().manual_seed(args.seed))  # fmt: skip
    train_loader = accelerator.prepare(train_loader)
    if len(train_loader) == 0:
        raise ValueError(f"per-device batch of {per_device}: larger than the {len(train_data)} training items per "
                         "process (the last partial batch is dropped); lower global_batch_size")  # fmt: skip
    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or math.ceil(args.num_train_epochs * steps_per_epoch)
    warmup_steps = round(args.warmup_ratio * max_steps)
    if args.dry_run:
        plan = training_plan(args, accelerator, corpus, train_data, steps_per_epoch, max_steps, warmup_steps,
                             per_device, model, processor)  # fmt: skip
        if accelerator.is_main_process:
            print("\n".join(f"{key}: {value}" for key, value in plan.items()), flush=True)
        return {"plan": plan}

    groups = parameter_groups(model, args)
    optimizer = torch.optim.AdamW(groups, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=warmup_steps, num_training_steps=max_steps)
    scheduler = accelerator.prepare(scheduler)
    eval_split = None if args.eval_split in (None, "none") else corpus[args.eval_split]

    step, history, skipped = 0, [], SkipCounter()
    checkpoint = find_checkpoint(args.resume, args.output_dir) if args.resume else None
    if checkpoint:
        accelerator.load_state(checkpoint)
        step, history = checkpoint_step(checkpoint), read_history(checkpoint)
        logger.info(f"resumed from {checkpoint} at step {step}", main_process_only=True)
    elif args.resume:
        logger.info("no complete checkpoint to resume from; starting fresh", main_process_only=True)

    hyperparameters = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items()}
    accelerator.init_trackers("centerclip", config=hyperparameters)  # only the main process writes
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(f"{accelerator.num_processes} process(es), {len(train_data)} training items, {steps_per_epoch} "
                f"steps/epoch, {max_steps} steps, {num_params:,} trainable parameters", main_process_only=True)  # fmt: skip

    rss_before_training_mb = peak_rss_mb()
    progress = tqdm(total=max_steps, initial=step, desc="train", disable=not (args.progress and accelerator.is_local_main_process))
    start_time, eval_time, running_loss, running_count = time.perf_counter(), 0.0, 0.0, 0
    unwrapped = accelerator.unwrap_model(model)
    watch = NonFiniteWatch(accelerator.device)
    model.train()
    first_epoch = step // steps_per_epoch
    for epoch in itertools.count(first_epoch):
        if step >= max_steps:
            break
        start_epoch(train_loader, train_data, epoch)
        # A resumed run skips the batches its checkpoint had already trained on (without decoding them).
        seen_batches = (step % steps_per_epoch) * args.gradient_accumulation_steps if epoch == first_epoch else 0
        batches = accelerator.skip_first_batches(train_loader, seen_batches) if seen_batches else train_loader
        decoded_batches = 0
        for batch in batches:
            skipped.update(batch, per_device)
            if batch is None:  # this process's whole batch failed: take part with padding, no host sync needed
                batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in placeholder_batch(processor).items()}
            else:
                decoded_batches += 1
            batch["pixel_values"] = processor.normalize(batch["pixel_values"])
            with accelerator.accumulate(model):
                try:
                    loss = batch_loss(model, batch, pad_to=per_device)
                except NonFiniteTokensError as error:  # NaN/inf tokens reached the clustering: name step and videos
                    videos = [batch["video_id"][i] for i in error.videos if i < len(batch["video_id"])]
                    raise NonFiniteLossError(
                        f"non-finite tokens at vision layer {error.layer} at optimizer step {step + 1} in the videos "
                        f"{videos}; lower the learning rate or check these videos (resume from the last checkpoint "
                        "with --resume latest)"
                    ) from error
                watch.update(loss, step + 1, batch["video_id"])
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            running_loss, running_count = running_loss + loss.detach(), running_count + 1
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            clamp_logit_scale(unwrapped, args.max_logit_scale)
            step += 1
            progress.update()
            evaluate_now = eval_split is not None and args.eval_steps and step % args.eval_steps == 0 and step < max_steps
            checkpoint_now = args.checkpointing_steps and step % args.checkpointing_steps == 0
            if step % args.logging_steps == 0 or step == max_steps or evaluate_now or checkpoint_now:
                watch.check()  # nothing non-finite is logged, evaluated or saved
            if step % args.logging_steps == 0 or step == max_steps:
                record = {"step": step, "epoch": epoch, "loss": float(running_loss) / running_count,
                          "lr": scheduler.get_last_lr()[0], "logit_scale": unwrapped.logit_scale.exp().item(),
                          "time": time.perf_counter() - start_time - eval_time}  # fmt: skip
                history.append(record)
                accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=step)
                progress.set_postfix(loss=f"{record['loss']:.4f}")
                running_loss, running_count = 0.0, 0
            if evaluate_now:
                eval_start = time.perf_counter()
                _log_evaluation(accelerator, history, step, run_evaluation(accelerator, model, processor, eval_split, args))
                eval_time += time.perf_counter() - eval_start
            if checkpoint_now:
                save_checkpoint(accelerator, args.output_dir, step, history, args.checkpoints_total_limit)
            if step_callback is not None:
                step_callback(step)
            if step >= max_steps:
                break
        if not any(gather_object([decoded_batches > 0])):  # once per epoch, not per step
            raise RuntimeError(f"epoch {epoch}: no batch could be decoded (see the warnings above)")
    watch.check()
    progress.close()
    train_time = time.perf_counter() - start_time - eval_time  # training only, periodic evaluation left out

    skipped_videos = sum(gather_object([skipped.count]))  # undecodable videos, all processes
    if skipped_videos:
        logger.warning(f"{skipped_videos} training videos could not be decoded and were skipped (see the warnings "
                       "above for their files)", main_process_only=True)  # fmt: skip
    # The finished model is saved first: a failing or interrupted final evaluation cannot lose it.
    final_dir = os.path.join(args.output_dir, "final")
    if accelerator.is_main_process:
        unwrapped.save_pretrained(final_dir)
        processor.save_pretrained(final_dir)
        with open(os.path.join(args.output_dir, "loss_history.json"), "w", encoding="utf-8") as handle:
            json.dump(history, handle, indent=1)
    accelerator.wait_for_everyone()
    results = {}
    if eval_split is not None:
        results = run_evaluation(accelerator, model, processor, eval_split, args)
        _log_evaluation(accelerator, history, step, results)
    if accelerator.is_main_process:
        with open(os.path.join(args.output_dir, "loss_history.json"), "w", encoding="utf-8") as handle:
            json.dump(history, handle, indent=1)
        if results:
            with open(os.path.join(args.output_dir, "eval_results.json"), "w", encoding="utf-8") as handle:
                json.dump(results, handle, indent=2)
        summary = {"steps": step, "train_time_s": train_time, "num_processes": accelerator.num_processes,
                   "global_batch_size": per_device * accelerator.num_processes * args.gradient_accumulation_steps,
                   "items_per_epoch": len(train_data), "peak_rss_mb_before_training": rss_before_training_mb,
                   "peak_rss_mb": peak_rss_mb(), "skipped_videos": skipped_videos, "trainable_parameters": num_params,
                   "optimizer_state_bytes": sum(t.nbytes for s in optimizer.state.values() for t in s.values())}  # fmt: skip
        with open(os.path.join(args.output_dir, "train_summary.json"), "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
        if args.push_to_hub:
            from training.publish import push_training_run

            push_training_run(final_dir, args, results)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    last_loss = next((r["loss"] for r in reversed(history) if "loss" in r), None)
    return {"final_dir": final_dir, "steps": step, "loss": last_loss, "eval": results, "train_time_s": train_time,
            "model": unwrapped}


def _log_evaluation(accelerator, history: list, step: int, results: dict) -> None:
    if not results:
        return
    history.append({"step": step, "eval": results})
    accelerator.log({f"eval/{key}_{name}": value for key in results["protocols"] if key != "dsl"
                     for name, value in results[key].items()}, step=step)  # fmt: skip
    r1 = ", ".join(f"{k} {v:.1f}" for k, v in headline_results(results).items() if k.endswith("R@1"))
    logger.info(f"step {step}: {r1}", main_process_only=True)  # the published protocols, by name


def main(argv: list[str] | None = None, step_callback: Callable[[int], None] | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return train(parse_args(argv), step_callback)  # a bad setting raises ValueError: one line from run_cli


if __name__ == "__main__":
    from training.cli_errors import run_cli

    run_cli("train.py", main, user_errors=(NonFiniteLossError,))
