"""Fine-tune (or train from scratch) CenterCLIP on a text-video corpus with Accelerate.

    accelerate launch training/train.py --config training/configs/demo_centerclip.yaml --output_dir out/run
    python training/train.py --model_name_or_path path/to/clip --corpus msrvtt --video_dir ... --splits_dir ...

Every flag can also be a key of the `--config` YAML/JSON file; flags on the command line override the file.
Defaults follow the paper's recipe (DESIGN.md): AdamW (betas 0.9/0.98, eps 1e-6, weight decay 0.2 except on
biases, norms and other 1-d parameters), lr 5e-6 for CLIP's weights and `new_learning_rate` for weights that
stock CLIP lacks, 10 % linear warm-up then cosine decay, gradient-norm clip 1.0, mixed precision on GPUs,
frozen embedding stems, `logit_scale` clamped at ln(100) after every step.

The contrastive loss sees the global batch: embeddings of all processes are gathered with their gradients
(`training.losses`). With gradient accumulation each micro-batch is its own contrastive batch.

Reproducibility: shuffling comes from Accelerate's seedable sampler (seed + epoch) and each item's random
choices (caption, frames) from a generator seeded by (seed, epoch, index), so `--resume` continues exactly
where a checkpoint was saved and the items do not depend on the number of workers.

A non-finite loss stops training with `NonFiniteLossError` naming the step and the batch's video ids (never
trained on silently); the last checkpoint stays usable with `--resume`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, "") and __name__ == "__main__":
    # Run as a script: import from the repository root, not from training/ (whose evaluate.py shadows `evaluate`).
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
import yaml
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, gather_object, set_seed
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import CLIPModel, CLIPTokenizer, get_scheduler

from modeling_centerclip import CenterCLIPConfig, CenterCLIPModel, CenterCLIPProcessor
from modeling_centerclip.configuration_centerclip import CENTERCLIP_FIELDS, CLUSTER_ALGOS, CLUSTER_DISTANCES
from training.corpora import CORPUS_KEYS, all_captions
from training.losses import batch_loss

logger = get_logger(__name__)

# Parameters the paper keeps frozen: patch/class/position embeddings, pre-layernorm, text token/position embeddings.
STEM_PREFIXES = ("vision_model.embeddings.", "vision_model.pre_layrnorm.", "text_model.embeddings.")
CHECKPOINT_PATTERN = re.compile(r"step_(\d+)$")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the optimizer step and the batch's video ids."""


# ---------------------------------------------------------------------------------------------- configuration


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--config", help="YAML or JSON file of the same keys as these flags; flags given here override it")
    model = parser.add_argument_group("model")
    model.add_argument("--model_name_or_path", help="CLIP or CenterCLIP checkpoint (folder or Hub id) to fine-tune")
    model.add_argument("--model_config", help="JSON file of a CenterCLIPConfig to train from scratch "
                       "(in a YAML config also an inline mapping)")
    model.add_argument("--num_frames", type=int, help="frames per video (overrides the model's)")
    model.add_argument("--cluster_algo", choices=CLUSTER_ALGOS)
    model.add_argument("--cluster_layer", type=int)
    model.add_argument("--num_segments", type=int)
    model.add_argument("--num_centers", type=int)
    model.add_argument("--cluster_distance", choices=CLUSTER_DISTANCES)
    model.add_argument("--cluster_iters", type=int)
    model.add_argument("--max_words", type=int, default=32, help="caption length in tokens")
    model.add_argument("--fps", type=float, help="decode videos at this frame rate (the paper: 3)")
    model.add_argument("--tokenizer_name_or_path", help="from scratch: a CLIP tokenizer to use instead of training one")
    model.add_argument("--tokenizer_vocab_size", type=int, default=1000,
                       help="from scratch: size of the BPE vocabulary trained on the training captions")
    data = parser.add_argument_group("data")
    data.add_argument("--corpus", help="a videofolder or frame store path, or msrvtt / msvd / lsmdc / activitynet / demo")
    data.add_argument("--video_dir")
    data.add_argument("--splits_dir")
    data.add_argument("--captions_file", help="MSVD captions")
    data.add_argument("--data_json", help="MSR-VTT's MSRVTT_data.json")
    data.add_argument("--train_list", choices=("9k", "7k"), help="MSR-VTT training list")
    data.add_argument("--train_split", default="train")
    data.add_argument("--eval_split", default="test", help="split for periodic and final evaluation; 'none' skips")
    data.add_argument("--max_eval_videos", type=int, help="evaluate on the first N videos only (faster)")
    data.add_argument("--num_workers", type=int, default=0)
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--learning_rate", type=float, default=5e-6, help="for the weights stock CLIP has")
    optim.add_argument("--new_learning_rate", type=float, default=1e-4, help="for weights stock CLIP lacks")
    optim.add_argument("--weight_decay", type=float, default=0.2)
    optim.add_argument("--adam_beta1", type=float, default=0.9)
    optim.add_argument("--adam_beta2", type=float, default=0.98)
    optim.add_argument("--adam_epsilon", type=float, default=1e-6)
    optim.add_argument("--lr_scheduler", default="cosine", choices=("cosine", "linear", "constant_with_warmup"))
    optim.add_argument("--warmup_ratio", type=float, default=0.1)
    optim.add_argument("--max_grad_norm", type=float, default=1.0, help="0 disables clipping")
    optim.add_argument("--max_logit_scale", type=float, default=100.0)
    optim.add_argument("--freeze_stems", action=argparse.BooleanOptionalAction, default=True)
    optim.add_argument("--per_device_train_batch_size", type=int, default=128,
                       help="global batch = this x processes (x accumulation steps)")
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--num_train_epochs", type=float, default=5)
    optim.add_argument("--max_train_steps", type=int, help="optimizer steps; overrides num_train_epochs")
    optim.add_argument("--mixed_precision", default="auto", choices=("auto", "no", "fp16", "bf16"),
                       help="auto: bf16 (or fp16) on a GPU, none on the CPU")
    optim.add_argument("--seed", type=int, default=42)
    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", help="checkpoints/, logs/, final/ and loss_history.json go here")
    run.add_argument("--logging_steps", type=int, default=10)
    run.add_argument("--eval_steps", type=int, default=0, help="evaluate every N steps (0: only at the end)")
    run.add_argument("--eval_batch_size", type=int, default=32)
    run.add_argument("--checkpointing_steps", type=int, default=500, help="save_state every N steps (0: never)")
    run.add_argument("--checkpoints_total_limit", type=int, default=2, help="keep the newest N checkpoints")
    run.add_argument("--resume", help="'latest' or a checkpoint folder (output_dir/checkpoints/step_N)")
    run.add_argument("--report_to", default="tensorboard", choices=("tensorboard", "wandb", "all", "none"))
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    run.add_argument("--push_to_hub", action="store_true")
    run.add_argument("--hub_model_id")
    return parser


def _read_config_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise ValueError(f"config: file {path!r} not found")
    with open(path, encoding="utf-8") as handle:
        values = json.load(handle) if path.endswith(".json") else yaml.safe_load(handle)
    if not isinstance(values, dict):
        raise ValueError(f"config: {path} must hold a mapping of flag names to values")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags + optional `--config` file -> validated namespace. Raises `ValueError` naming the bad key."""
    parser = build_parser()
    actions = {action.dest: action for action in parser._actions if action.dest not in ("help", "config")}
    known, _ = parser.parse_known_args(argv)
    if known.config:
        file_values = _read_config_file(known.config)
        for key, value in file_values.items():
            if key not in actions:
                raise ValueError(f"config key {key!r} ({known.config}): unknown; valid keys: {', '.join(sorted(actions))}")
            file_values[key] = _coerce(key, value, actions[key])
        parser.set_defaults(**file_values)
    args = parser.parse_args(argv)
    validate_args(args)
    return args


def _coerce(key, value, action):
    """A config-file value through the flag's type (YAML reads `5e-6` as a string) and choices."""
    if value is None or (key == "model_config" and isinstance(value, dict)):
        return value
    try:
        if isinstance(action, argparse.BooleanOptionalAction) or action.const is True:
            if not isinstance(value, bool):
                raise TypeError("expected true or false")
        elif action.type is not None:
            value = action.type(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"config key {key!r}: bad value {value!r} ({error})") from None
    if action.choices and value not in action.choices:
        raise ValueError(f"config key {key!r}: {value!r} is not one of {list(action.choices)}")
    return value


def validate_args(args: argparse.Namespace) -> None:
    """Fail before any work, naming the key."""

    def fail(key, message):
        raise ValueError(f"config key {key!r}={getattr(args, key)!r}: {message}")

    if bool(args.model_name_or_path) == bool(args.model_config):
        fail("model_name_or_path", "give exactly one of model_name_or_path (fine-tune) and model_config (scratch)")
    if args.tokenizer_name_or_path and args.model_name_or_path:
        fail("tokenizer_name_or_path", "only for training from scratch; a checkpoint brings its own tokenizer")
    if isinstance(args.model_config, str) and not os.path.isfile(args.model_config):
        fail("model_config", "file not found")
    for key in ("corpus", "output_dir"):
        if not getattr(args, key):
            fail(key, "required")
    positive = ("per_device_train_batch_size", "gradient_accumulation_steps", "eval_batch_size", "logging_steps",
                "max_words", "tokenizer_vocab_size", "max_train_steps", "max_eval_videos", "checkpoints_total_limit",
                "num_frames", "num_segments", "num_centers", "cluster_iters")  # fmt: skip
    for key in positive:
        if getattr(args, key) is not None and getattr(args, key) < 1:
            fail(key, "must be a positive integer")
    for key in ("eval_steps", "checkpointing_steps", "num_workers", "cluster_layer"):
        if getattr(args, key) is not None and getattr(args, key) < 0:
            fail(key, "must be >= 0")
    for key in ("learning_rate", "new_learning_rate", "adam_epsilon", "max_logit_scale", "num_train_epochs"):
        if not getattr(args, key) > 0:
            fail(key, "must be positive")
    for key in ("weight_decay", "max_grad_norm"):
        if getattr(args, key) < 0:
            fail(key, "must be >= 0")
    for key in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(args, key) < 1:
            fail(key, "must be in [0, 1)")
    if not 0 <= args.warmup_ratio <= 1:
        fail("warmup_ratio", "must be in [0, 1]")
    if args.fps is not None and not args.fps > 0:
        fail("fps", "must be positive")
    if args.resume and args.resume != "latest" and not os.path.isdir(args.resume):
        fail("resume", "must be 'latest' or an existing checkpoint folder")
    if args.push_to_hub and not args.hub_model_id:
        fail("hub_model_id", "required with push_to_hub")


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
        model = CenterCLIPModel.from_pretrained(args.model_name_or_path, **overrides)
        try:
            processor = CenterCLIPProcessor.from_pretrained(args.model_name_or_path)
        except (OSError, ValueError, TypeError):  # a stock CLIP checkpoint: its tokenizer, our video settings
            processor = CenterCLIPProcessor(CLIPTokenizer.from_pretrained(args.model_name_or_path))
    else:
        settings = args.model_config if isinstance(args.model_config, dict) else _read_config_file(args.model_config)
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
    if args.fps is not None:
        processor.fps = args.fps
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

    No decay on 1-d parameters (biases, norm gains, `logit_scale`, class embedding). Frozen parameters are left out.
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


# ------------------------------------------------------------------------------------------- checkpoints


def checkpoint_dir(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, "checkpoints", f"step_{step}")


def find_checkpoint(args) -> str | None:
    if args.resume != "latest":
        return args.resume
    root = Path(args.output_dir) / "checkpoints"
    steps = [int(m.group(1)) for p in root.glob("step_*") if (m := CHECKPOINT_PATTERN.search(p.name))]
    return checkpoint_dir(args.output_dir, max(steps)) if steps else None


def save_checkpoint(accelerator: Accelerator, args, step: int, history: list) -> None:
    folder = checkpoint_dir(args.output_dir, step)
    accelerator.save_state(folder)
    if accelerator.is_main_process:
        with open(os.path.join(folder, "history.json"), "w", encoding="utf-8") as handle:
            json.dump(history, handle)
        older = sorted((p for p in Path(folder).parent.glob("step_*") if CHECKPOINT_PATTERN.search(p.name)),
                       key=lambda p: int(CHECKPOINT_PATTERN.search(p.name).group(1)))
        for stale in older[: -args.checkpoints_total_limit]:
            shutil.rmtree(stale, ignore_errors=True)


# ------------------------------------------------------------------------------------------------- training


def check_finite(loss: torch.Tensor, step: int, batch: dict) -> None:
    """Raise `NonFiniteLossError` with the step and the global batch's video ids (every process has the loss)."""
    if torch.isfinite(loss):
        return
    video_ids = gather_object(list(batch.get("video_id", [])))
    raise NonFiniteLossError(
        f"non-finite loss {loss.item()} at optimizer step {step + 1} on the batch of videos {video_ids}; "
        "lower the learning rate or check these videos (resume from the last checkpoint with --resume latest)"
    )


def clamp_logit_scale(model, max_logit_scale: float) -> None:
    with torch.no_grad():
        model.logit_scale.clamp_(max=math.log(max_logit_scale))


def run_evaluation(accelerator, model, processor, split, args) -> dict:
    """Retrieval metrics on the main process (the other processes wait)."""
    from training.evaluate import evaluate_model

    results = {}
    if accelerator.is_main_process:
        results = evaluate_model(accelerator.unwrap_model(model), processor, split, batch_size=args.eval_batch_size,
                                 max_videos=args.max_eval_videos, num_workers=args.num_workers, show_progress=False)  # fmt: skip
    accelerator.wait_for_everyone()
    return results


def train(args: argparse.Namespace, step_callback: Callable[[int], None] | None = None) -> dict:
    """Run training as configured; returns a summary: `final_dir`, `steps`, `loss` (last logged), `eval`,
    `train_time_s` and the trained `model` (unwrapped).

    `step_callback(step)` runs after every optimizer step (after logging, evaluation and checkpointing).
    """
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=resolve_mixed_precision(args.mixed_precision),
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")),
        step_scheduler_with_optimizer=False,  # stepped once per optimizer step below, whatever the process count
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:  # each process would silently train alone
        raise RuntimeError(f"{launched} processes were launched, but Accelerate set up none of them as distributed; "
                           "on CPUs launch with `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N`")  # fmt: skip
    set_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    corpus = load_corpus_splits(args)
    model, processor = build_model_and_processor(args, corpus[args.train_split], accelerator)
    if args.freeze_stems:
        freeze_stems(model)

    from training.data import SkipCounter, VideoTextDataset, collate_video_text

    train_data = EpochSeededItems(VideoTextDataset(corpus[args.train_split], processor, training=True), args.seed)
    train_loader = DataLoader(train_data, batch_size=args.per_device_train_batch_size, shuffle=True, drop_last=True,
                              collate_fn=collate_video_text, num_workers=args.num_workers)  # fmt: skip
    groups = parameter_groups(model, args)
    optimizer = torch.optim.AdamW(groups, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if len(train_loader) == 0:
        raise ValueError(f"config key 'per_device_train_batch_size'={args.per_device_train_batch_size}: larger "
                         f"than the {len(train_data)} training videos per process (the last partial batch is dropped)")
    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or math.ceil(args.num_train_epochs * steps_per_epoch)
    scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=round(args.warmup_ratio * max_steps),
                              num_training_steps=max_steps)  # fmt: skip
    scheduler = accelerator.prepare(scheduler)
    eval_split = None if args.eval_split in (None, "none") else corpus[args.eval_split]

    step, history, skipped = 0, [], SkipCounter()
    checkpoint = find_checkpoint(args) if args.resume else None
    if checkpoint:
        accelerator.load_state(checkpoint)
        step = int(CHECKPOINT_PATTERN.search(os.path.normpath(checkpoint)).group(1))
        with open(os.path.join(checkpoint, "history.json"), encoding="utf-8") as handle:
            history = json.load(handle)
        logger.info(f"resumed from {checkpoint} at step {step}", main_process_only=True)
    elif args.resume:
        logger.info("no checkpoint to resume from; starting fresh", main_process_only=True)

    hyperparameters = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items()}
    accelerator.init_trackers("centerclip", config=hyperparameters)  # only the main process writes
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(f"{accelerator.num_processes} process(es), {len(train_data)} training videos, {steps_per_epoch} "
                f"steps/epoch, {max_steps} steps, {num_params:,} trainable parameters", main_process_only=True)  # fmt: skip

    rss_before_training_mb = peak_rss_mb()
    progress = tqdm(total=max_steps, initial=step, desc="train", disable=not (args.progress and accelerator.is_local_main_process))
    start_time, eval_time, running_loss, running_count = time.perf_counter(), 0.0, 0.0, 0
    unwrapped = accelerator.unwrap_model(model)
    model.train()
    first_epoch = step // steps_per_epoch
    for epoch in itertools.count(first_epoch):
        if step >= max_steps:
            break
        start_epoch(train_loader, train_data, epoch)
        # A resumed run skips the batches its checkpoint had already trained on (without decoding them).
        seen_batches = (step % steps_per_epoch) * args.gradient_accumulation_steps if epoch == first_epoch else 0
        batches = accelerator.skip_first_batches(train_loader, seen_batches) if seen_batches else train_loader
        epoch_start_step = step
        for batch in batches:
            skipped.update(batch, args.per_device_train_batch_size)
            # Every process must take part in each step: skip a batch everywhere if it failed somewhere.
            if not all(gather_object([batch is not None])):
                continue
            with accelerator.accumulate(model):
                loss = batch_loss(model, batch)
                check_finite(loss, step, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            running_loss, running_count = running_loss + loss.item(), running_count + 1
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            clamp_logit_scale(unwrapped, args.max_logit_scale)
            step += 1
            progress.update()
            if step % args.logging_steps == 0 or step == max_steps:
                record = {"step": step, "epoch": epoch, "loss": running_loss / running_count,
                          "lr": scheduler.get_last_lr()[0], "logit_scale": unwrapped.logit_scale.exp().item(),
                          "time": time.perf_counter() - start_time - eval_time}  # fmt: skip
                history.append(record)
                accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=step)
                progress.set_postfix(loss=f"{record['loss']:.4f}")
                running_loss, running_count = 0.0, 0
            if eval_split is not None and args.eval_steps and step % args.eval_steps == 0 and step < max_steps:
                eval_start = time.perf_counter()
                _log_evaluation(accelerator, history, step, run_evaluation(accelerator, model, processor, eval_split, args))
                eval_time += time.perf_counter() - eval_start
            if args.checkpointing_steps and step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, args, step, history)
            if step_callback is not None:
                step_callback(step)
            if step >= max_steps:
                break
        if step == epoch_start_step:
            raise RuntimeError(f"epoch {epoch}: no batch could be decoded (see the warnings above)")
    progress.close()
    train_time = time.perf_counter() - start_time - eval_time  # training only, periodic evaluation left out

    skipped_videos = sum(gather_object([skipped.count]))  # undecodable videos, all processes
    if skipped_videos:
        logger.warning(f"{skipped_videos} training videos could not be decoded and were skipped (see the warnings "
                       "above for their files)", main_process_only=True)  # fmt: skip
    results = {}
    if eval_split is not None:
        results = run_evaluation(accelerator, model, processor, eval_split, args)
        _log_evaluation(accelerator, history, step, results)
    final_dir = os.path.join(args.output_dir, "final")
    if accelerator.is_main_process:
        unwrapped.save_pretrained(final_dir)
        processor.save_pretrained(final_dir)
        with open(os.path.join(args.output_dir, "loss_history.json"), "w", encoding="utf-8") as handle:
            json.dump(history, handle, indent=1)
        if results:
            with open(os.path.join(args.output_dir, "eval_results.json"), "w", encoding="utf-8") as handle:
                json.dump(results, handle, indent=2)
        summary = {"steps": step, "train_time_s": train_time, "num_processes": accelerator.num_processes,
                   "global_batch_size": args.per_device_train_batch_size * accelerator.num_processes,
                   "peak_rss_mb_before_training": rss_before_training_mb, "peak_rss_mb": peak_rss_mb(),
                   "skipped_videos": skipped_videos}  # fmt: skip
        with open(os.path.join(args.output_dir, "train_summary.json"), "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
        if args.push_to_hub:
            push(final_dir, args, results)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    last_loss = next((r["loss"] for r in reversed(history) if "loss" in r), None)
    return {"final_dir": final_dir, "steps": step, "loss": last_loss, "eval": results, "train_time_s": train_time,
            "model": unwrapped}


def _log_evaluation(accelerator, history: list, step: int, results: dict) -> None:
    if not results:
        return
    history.append({"step": step, "eval": results})
    flat = {f"eval/{direction}_{name}": value for direction in ("t2v", "v2t") for name, value in results[direction].items()}
    accelerator.log(flat, step=step)
    logger.info(f"step {step}: t2v R@1 {results['t2v']['R@1']:.1f}, v2t R@1 {results['v2t']['R@1']:.1f}",
                main_process_only=True)  # fmt: skip


def push(folder: str, args, results: dict) -> None:
    from training.model_card import render_model_card
    from training.publish import push_folder

    card_results = {args.corpus: {f"{d} {k}": v for d in ("t2v", "v2t") for k, v in results.get(d, {}).items()}}
    card = render_model_card(folder, repo_id=args.hub_model_id, results=card_results if results else None,
                             training_data=f"Fine-tuned on `{args.corpus}` ({args.train_split} split) with training/train.py.",
                             base_model=args.model_name_or_path)  # fmt: skip
    Path(folder, "README.md").write_text(card, encoding="utf-8")
    push_folder(folder, args.hub_model_id)


def main(argv: list[str] | None = None, step_callback: Callable[[int], None] | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        args = parse_args(argv)
    except ValueError as error:
        build_parser().error(str(error))
    return train(args, step_callback)


if __name__ == "__main__":
    main()
