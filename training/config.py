"""The training script's settings: flags, `--config` files (YAML/JSON) and their validation.

Every flag can also be a key of the `--config` file; flags on the command line override the file. Everything is
checked before any work starts, and each error names the key (and the file where the value came from).
"""

from __future__ import annotations

import argparse
import json
import os

import yaml

from training.cli_parsers import CLUSTER_ALGOS, CLUSTER_DISTANCES, CORPUS_NAMES, add_corpus_options, new_parser
from training.lora import (DEFAULT_DROPOUT, DEFAULT_TARGET_MODULES, DEFAULT_VISION_LAYERS, VISION_LAYER_CHOICES,
                           check_lora_settings, module_names, peft_section_to_flags)

# `--dry_run` prints these, one `key: value` per line (see `training.train.plan`).
PLAN_KEYS = ("corpus", "train_split", "train_videos", "items_per_epoch", "item_kind", "num_processes",
             "global_batch_size", "per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_epoch",
             "num_train_epochs", "optimizer_steps", "warmup_steps", "learning_rate", "num_frames", "max_words", "fps",
             "cluster_algo", "num_segments", "num_centers", "cluster_layer", "gradient_checkpointing",
             "mixed_precision")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The flags (light: no torch, so `train.py --help` answers at once)."""
    parser = new_parser(prog="train.py", description="Fine-tune (or train from scratch) CenterCLIP with Accelerate")
    add = parser.add_argument
    add("--config", help="YAML or JSON file of the same keys as these flags; flags given here override it")
    add("--dry_run", action="store_true",
        help="build corpus, model and schedule, print the plan (one `key: value` per line) and exit without training")
    model = parser.add_argument_group("model")
    model.add_argument("--model_name_or_path", help="CLIP or CenterCLIP checkpoint (folder or Hub id) to fine-tune")
    model.add_argument("--model_config", help="JSON file of a CenterCLIPConfig to train from scratch "
                       "(in a YAML config also an inline mapping)")
    model.add_argument("--num_frames", type=int, help="frames per video (default: the model's)")
    model.add_argument("--cluster_algo", choices=CLUSTER_ALGOS, help="token reducer (default: the model's)")
    model.add_argument("--cluster_layer", type=int, help="vision layers run per frame before clustering "
                       "(default: the model's)")
    model.add_argument("--num_segments", type=int, help="segments of consecutive frames (default: the model's)")
    model.add_argument("--num_centers", type=int, help="tokens kept per segment (default: the model's)")
    model.add_argument("--cluster_distance", choices=CLUSTER_DISTANCES, help="k-medoids distance (default: the model's)")
    model.add_argument("--cluster_iters", type=int, help="k-medoids iteration cap (default: the model's)")
    model.add_argument("--max_words", type=int, default=32, help="caption length in tokens")
    model.add_argument("--fps", type=float, help="decode videos at this frame rate (default: the checkpoint's "
                       "processor setting; 3, the paper's, for a stock CLIP checkpoint)")
    model.add_argument("--gradient_checkpointing", action=argparse.BooleanOptionalAction, default=False,
                       help="recompute activations in the backward pass (less memory, about 30 %% more time)")
    model.add_argument("--tokenizer_name_or_path", help="from scratch: a CLIP tokenizer to use instead of training one")
    model.add_argument("--tokenizer_vocab_size", type=int, default=1000,
                       help="from scratch: size of the BPE vocabulary trained on the training captions")
    lora = parser.add_argument_group("LoRA (peft; in a config file also a `peft:` section of r, lora_alpha, "
                                     "lora_dropout, target_modules, vision_layers, adapter)")
    lora.add_argument("--lora_r", type=int, help="train a LoRA adapter of this rank instead of all weights "
                      "(needs model_name_or_path); the adapter trains at new_learning_rate")
    lora.add_argument("--lora_alpha", type=float, help="LoRA scaling numerator (default: 2 x lora_r)")
    lora.add_argument("--lora_dropout", type=float, help=f"dropout on the LoRA input (default: {DEFAULT_DROPOUT})")
    lora.add_argument("--lora_target_modules", type=module_names, metavar="NAME[,NAME...]",
                      help=f"modules to adapt, both towers (default: {','.join(DEFAULT_TARGET_MODULES)})")
    lora.add_argument("--lora_vision_layers", choices=VISION_LAYER_CHOICES,
                      help="vision layers adapted: after_cluster (from the cluster layer on, where only the centers "
                      f"are left: far less memory) or all (default: {DEFAULT_VISION_LAYERS})")
    lora.add_argument("--lora_adapter", help="train this saved adapter further instead of a fresh one (its "
                      "adapter_config.json must name model_name_or_path as its base)")
    data = parser.add_argument_group("data")
    data.add_argument("--corpus", help=f"a videofolder or frame store path, or {CORPUS_NAMES}")
    add_corpus_options(data)
    data.add_argument("--train_split", default="train", help="split to train on")
    data.add_argument("--expand_captions", action=argparse.BooleanOptionalAction, default=True,
                      help="one training item per (video, caption) pair, as the paper's epochs; "
                      "--no-expand_captions: one item per video with a random caption")
    data.add_argument("--eval_split", default="test", help="split for periodic and final evaluation; 'none' skips")
    data.add_argument("--max_eval_videos", type=int, help="evaluate on the first N videos only (default: all)")
    data.add_argument("--num_workers", type=int, default=0, help="DataLoader processes decoding videos")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--learning_rate", type=float, default=5e-6, help="for the weights stock CLIP has")
    optim.add_argument("--new_learning_rate", type=float, default=1e-4, help="for weights stock CLIP lacks")
    optim.add_argument("--weight_decay", type=float, default=0.2, help="AdamW's, not on biases, norms and other "
                       "1-d parameters")  # fmt: skip
    optim.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW's beta1")
    optim.add_argument("--adam_beta2", type=float, default=0.98, help="AdamW's beta2")
    optim.add_argument("--adam_epsilon", type=float, default=1e-6, help="AdamW's epsilon")
    optim.add_argument("--lr_scheduler", default="cosine", choices=("cosine", "linear", "constant_with_warmup"),
                       help="decay after the warm-up")
    optim.add_argument("--warmup_ratio", type=float, default=0.1, help="share of the steps spent in linear warm-up")
    optim.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient-norm clip; 0 disables clipping")
    optim.add_argument("--max_logit_scale", type=float, default=100.0, help="clamp of exp(logit_scale) after each step")
    optim.add_argument("--freeze_stems", action=argparse.BooleanOptionalAction, default=True,
                       help="keep the embedding stems frozen, as the paper")
    optim.add_argument("--global_batch_size", type=int,
                       help="items per optimizer step over all processes and accumulation steps (the paper: 128); "
                       "split into per_device_train_batch_size = global / (processes x accumulation)")
    optim.add_argument("--per_device_train_batch_size", type=int, default=128,
                       help="without global_batch_size: global batch = this x processes x accumulation steps")
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1,
                       help="micro-batches per optimizer step; each micro-batch is its own contrastive batch")
    optim.add_argument("--num_train_epochs", type=float, default=5, help="passes over the training items")
    optim.add_argument("--max_train_steps", type=int, help="optimizer steps; overrides num_train_epochs")
    optim.add_argument("--mixed_precision", default="auto", choices=("auto", "no", "fp16", "bf16"),
                       help="auto: bf16 (or fp16) on a GPU, none on the CPU")
    optim.add_argument("--seed", type=int, default=42, help="seeds shuffling, captions, frames and new weights")
    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", help="checkpoints/, logs/, final/ and loss_history.json go here")
    run.add_argument("--logging_steps", type=int, default=10, help="log (and check the loss is finite) every N steps")
    run.add_argument("--eval_steps", type=int, default=0, help="evaluate every N steps (0: only at the end)")
    run.add_argument("--eval_batch_size", type=int, default=32, help="videos per evaluation batch")
    run.add_argument("--checkpointing_steps", type=int, default=500, help="save_state every N steps (0: never)")
    run.add_argument("--checkpoints_total_limit", type=int, default=2, help="keep the newest N checkpoints")
    run.add_argument("--resume", help="'latest' (the newest complete checkpoint of output_dir), a run's output_dir, "
                     "or a checkpoint folder (output_dir/checkpoints/step_N)")
    run.add_argument("--report_to", default="tensorboard", choices=("tensorboard", "wandb", "all", "none"),
                     help="where Accelerate logs the metrics")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    run.add_argument("--push_to_hub", action="store_true", help="push final/ with a model card (needs --hub_model_id)")
    run.add_argument("--hub_model_id", help="org/name of the Hub repository")
    return parser


def read_config_file(path: str) -> dict:
    """A YAML or JSON mapping; a syntax error names the file and the line."""
    if not os.path.isfile(path):
        raise ValueError(f"config: file {path!r} not found")
    with open(path, encoding="utf-8") as handle:
        try:
            values = json.load(handle) if path.endswith(".json") else yaml.safe_load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"config: {path}, line {error.lineno}: not valid JSON ({error.msg})") from None
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f", line {mark.line + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error)
            raise ValueError(f"config: {path}{where}: not valid YAML ({problem})") from None
    if not isinstance(values, dict):
        raise ValueError(f"config: {path} must hold a mapping of flag names to values")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags + optional `--config` file -> validated namespace. Raises `ValueError` naming the bad key."""
    parser = build_parser()
    actions = {action.dest: action for action in parser._actions if action.dest not in ("help", "config", "debug")}
    known, _ = parser.parse_known_args(argv)
    if known.config:
        file_values = read_config_file(known.config)
        if "peft" in file_values:
            section = peft_section_to_flags(file_values.pop("peft"), known.config)
            duplicated = set(section) & set(file_values)
            if duplicated:
                raise ValueError(f"config key {sorted(duplicated)[0]!r} ({known.config}): given twice, also in peft:")
            file_values.update(section)
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


def model_config_settings(args: argparse.Namespace) -> dict:
    """The `model_config` mapping (inline or from its JSON file), its keys checked against `CenterCLIPConfig`'s:
    a typo (`cluster_algorithm`) would otherwise be stored as an unused attribute and silently ignored."""
    from modeling_centerclip import CenterCLIPConfig

    if isinstance(args.model_config, dict):
        settings, source = args.model_config, f"model_config in {args.config}" if args.config else "model_config"
    else:
        settings, source = read_config_file(args.model_config), args.model_config
    valid = set(CenterCLIPConfig().to_dict()) - {"model_type", "transformers_version"}
    for key in settings:
        if key not in valid:
            raise ValueError(f"config key {key!r} ({source}): not a CenterCLIPConfig field; valid keys: "
                             f"{', '.join(sorted(valid))}")
    return settings


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
    if args.model_config:
        model_config_settings(args)
    if args.model_name_or_path:
        from training.cli_errors import require_model_folder
        from training.tokenizer import check_tokenizer_files

        require_model_folder(args.model_name_or_path, "config key 'model_name_or_path'")
        check_tokenizer_files(args.model_name_or_path, checkpoint_tokenizer_remedy(args.model_name_or_path))
    for key in ("corpus", "output_dir"):
        if not getattr(args, key):
            fail(key, "required")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        fail("output_dir", "is a file; give a folder (it is created if missing)")
    positive = ("per_device_train_batch_size", "gradient_accumulation_steps", "eval_batch_size", "logging_steps",
                "max_words", "tokenizer_vocab_size", "max_train_steps", "max_eval_videos", "checkpoints_total_limit",
                "num_frames", "num_segments", "num_centers", "cluster_iters", "global_batch_size")  # fmt: skip
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
        fail("resume", "must be 'latest', a run's output_dir or an existing checkpoint folder")
    if args.push_to_hub and not args.hub_model_id:
        fail("hub_model_id", "required with push_to_hub")
    check_lora_settings(args)


def checkpoint_tokenizer_remedy(folder: str) -> str:
    return (f"copy the tokenizer files of the CLIP checkpoint it came from (tokenizer.json, or vocab.json and "
            f"merges.txt) into {folder}, or pass a checkpoint folder / Hub id that has them")


def per_device_batch_size(args: argparse.Namespace, num_processes: int) -> int:
    """The micro-batch of one process: `global_batch_size / (processes x accumulation)`, which must divide
    exactly (so the recipe is the same on 1, 2 or 8 GPUs); without `global_batch_size`, the flag's value."""
    if args.global_batch_size is None:
        return args.per_device_train_batch_size
    parts = num_processes * args.gradient_accumulation_steps
    if args.global_batch_size % parts:
        raise ValueError(
            f"config key 'global_batch_size'={args.global_batch_size}: not divisible by {num_processes} process(es) "
            f"x gradient_accumulation_steps={args.gradient_accumulation_steps} = {parts}; choose a global batch or "
            "an accumulation count that divides it"
        )
    return args.global_batch_size // parts
