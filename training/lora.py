"""LoRA adapters (`peft`) for CenterCLIP: settings checks, wrapping a model for training, loading a saved adapter.

A LoRA run (`--lora_r`, or a `peft:` section in the config) freezes every base weight and trains low-rank updates
of the attention projections (`q_proj`, `k_proj`, `v_proj`, `out_proj` by default) of the text tower and of the
vision layers from the cluster layer on (`--lora_vision_layers all`: every vision layer). `final/` then
holds what `peft` saves -- `adapter_model.safetensors` and `adapter_config.json`, whose `base_model_name_or_path`
names the base -- plus the processor files, so that evaluation and the search index find tokenizer and video
settings beside the adapter. It deliberately holds no `config.json`: Transformers would then take the folder for
a full model and look for its weights there, instead of loading the base named by the adapter.

The cluster settings are the base's: an adapter is loaded onto the base as saved, so a run that changed them would
give an adapter that no loader reproduces. Save a base with the settings you want first.

LoRA weights are weights that stock CLIP lacks, so they train at `new_learning_rate` (`training.train.parameter_groups`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Both towers' attention projections (CLIPAttention); the MLPs (fc1/fc2) and projections stay frozen.
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")
# peft's default. Dropout > 0 keeps a dropped-out copy of every adapted layer's input for the backward pass (one
# per projection, where q/k/v otherwise share their input).
DEFAULT_DROPOUT = 0.0
# Which vision layers get adapters. Below the cluster layer every frame's tokens pass through; an adapter there
# makes the backward pass keep all of them, which undoes CenterCLIP's saving. From the cluster layer on only the
# centers remain, so adapting those layers (and the text tower) is what makes LoRA cheap (docs/lora.md).
VISION_LAYER_CHOICES = ("after_cluster", "all")
DEFAULT_VISION_LAYERS = "after_cluster"
# The `peft:` section of a config file -> the flags it stands for.
PEFT_SECTION_KEYS = {"r": "lora_r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
                     "target_modules": "lora_target_modules", "vision_layers": "lora_vision_layers",
                     "adapter": "lora_adapter"}  # fmt: skip
LORA_FLAGS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_vision_layers", "lora_adapter")
_VISION_LAYER = re.compile(r"(?:^|\.)vision_model\.encoder\.layers\.(\d+)\.")

__all__ = ["DEFAULT_TARGET_MODULES", "DEFAULT_VISION_LAYERS", "VISION_LAYER_CHOICES", "add_lora", "check_lora_settings",
           "describe_targets", "is_adapter_folder", "load_adapter_model", "lora_enabled", "peft_section_to_flags",
           "read_adapter_config"]  # fmt: skip


def _require_peft():
    try:
        import peft
    except ImportError:
        raise ImportError("LoRA needs the `peft` package: pip install 'modeling-centerclip[peft]'") from None
    return peft


def module_names(value) -> tuple[str, ...]:
    """`--lora_target_modules q_proj,v_proj` or a YAML list -> ("q_proj", "v_proj")."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(str(item).strip() for item in items if str(item).strip())
    if not names:
        raise ValueError("expected one or more module names")
    return names


def peft_section_to_flags(section, source: str) -> dict:
    """The `peft:` mapping of a config file -> `{flag: value}`; an unknown key is named with its file."""
    if not isinstance(section, dict):
        raise ValueError(f"config key 'peft' ({source}): must be a mapping of {', '.join(PEFT_SECTION_KEYS)}")
    unknown = set(section) - set(PEFT_SECTION_KEYS)
    if unknown:
        raise ValueError(f"config key 'peft.{sorted(unknown)[0]}' ({source}): unknown; valid keys: "
                         f"{', '.join(PEFT_SECTION_KEYS)}")  # fmt: skip
    return {PEFT_SECTION_KEYS[key]: value for key, value in section.items()}


def lora_enabled(args) -> bool:
    return getattr(args, "lora_r", None) is not None or getattr(args, "lora_adapter", None) is not None


def is_adapter_folder(path) -> bool:
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


def read_adapter_config(folder) -> dict:
    path = os.path.join(folder, ADAPTER_CONFIG)
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable adapter config ({error})") from None
    if config.get("peft_type") != "LORA" or not config.get("base_model_name_or_path"):
        raise ValueError(f"{path}: not a LoRA adapter naming its base (peft_type LORA, base_model_name_or_path)")
    if not os.path.isfile(os.path.join(folder, ADAPTER_WEIGHTS)):
        raise FileNotFoundError(f"{folder}: no {ADAPTER_WEIGHTS} beside {ADAPTER_CONFIG}")
    return config


def _same_base(a: str, b: str) -> bool:
    if os.path.isdir(a) and os.path.isdir(b):
        return os.path.samefile(a, b)
    return a.rstrip("/") == b.rstrip("/")


def _meta_model(base: str):
    """The base architecture on the meta device (no weights read): for checking names and shapes."""
    import torch

    from modeling_centerclip import CenterCLIPConfig, CenterCLIPModel

    with torch.device("meta"):
        return CenterCLIPModel(CenterCLIPConfig.from_pretrained(base))


def check_adapter_fits(adapter_dir, base: str, model=None, what: str = "adapter") -> dict:
    """The adapter at `adapter_dir` was saved for `base`: its config names it and its weight shapes fit the base's
    layers. Raises `ValueError` naming the adapter, the base it names and the mismatch. Returns its config."""
    from safetensors import safe_open

    config = read_adapter_config(adapter_dir)
    named = config["base_model_name_or_path"]
    model = model if model is not None else _meta_model(base)
    modules = dict(model.named_modules())
    with safe_open(os.path.join(adapter_dir, ADAPTER_WEIGHTS), framework="pt") as handle:
        for key in handle.keys():
            # peft's names: base_model.model.<module>.lora_A.weight ([r, in]) / lora_B.weight ([out, r])
            module_name, _, kind = key.removeprefix("base_model.model.").rpartition(".lora_")
            layer = modules.get(module_name)
            if layer is None or not hasattr(layer, "in_features"):
                raise ValueError(f"{what} {adapter_dir}: its layer {module_name!r} is not a linear layer of base "
                                 f"model {base!r} (an adapter for another architecture)")  # fmt: skip
            shape = handle.get_slice(key).get_shape()
            expected = shape[1] == layer.in_features if kind.startswith("A") else shape[0] == layer.out_features
            if not expected:
                raise ValueError(f"{what} {adapter_dir}: {key} has shape {shape}, which does not fit {module_name} of "
                                 f"base model {base!r} ({layer.in_features} -> {layer.out_features}); an adapter for "
                                 "another base model")  # fmt: skip
    if not _same_base(named, base):  # same shapes, but other weights: an adapter learnt on them means nothing here
        raise ValueError(f"{what} {adapter_dir} was trained for base model {named!r}, not {base!r}")
    return config


def check_lora_settings(args) -> None:
    """Fail before any work, naming the key: rank, alpha, dropout, target modules that exist in the base, an
    initial adapter that belongs to the base, cluster settings left as the base's."""
    import torch

    from modeling_centerclip.configuration_centerclip import CENTERCLIP_FIELDS

    def fail(key, message):
        raise ValueError(f"config key {key!r}={getattr(args, key)!r}: {message}")

    if not lora_enabled(args):
        for key in LORA_FLAGS[1:]:
            if getattr(args, key, None) is not None:
                fail(key, "LoRA settings need lora_r (the adapter rank; peft.r in a config file)")
        return
    _require_peft()
    if args.lora_r is not None and args.lora_r < 1:
        fail("lora_r", "the LoRA rank must be a positive integer")
    if args.lora_alpha is not None and not args.lora_alpha > 0:
        fail("lora_alpha", "must be positive")
    if args.lora_dropout is not None and not 0 <= args.lora_dropout < 1:
        fail("lora_dropout", "must be in [0, 1)")
    if args.lora_vision_layers is not None and args.lora_vision_layers not in VISION_LAYER_CHOICES:
        fail("lora_vision_layers", f"must be one of {', '.join(VISION_LAYER_CHOICES)}")
    if not args.model_name_or_path:
        fail("lora_r", "LoRA adapts a pretrained model: give model_name_or_path (a base on random weights "
                       "learns nothing useful through a low-rank update)")  # fmt: skip
    overridden = [key for key in CENTERCLIP_FIELDS if getattr(args, key, None) is not None]
    model = _meta_model(args.model_name_or_path)
    changed = [key for key in overridden if getattr(model.config, key) != getattr(args, key)]
    if changed:
        fail(changed[0], f"with LoRA the base's cluster settings are used ({changed[0]}="
                         f"{getattr(model.config, changed[0])!r}): an adapter is loaded onto the base as saved. Save a "
                         "base with these settings first: CenterCLIPModel.from_pretrained(base, "
                         f"{changed[0]}=...).save_pretrained(folder)")  # fmt: skip
    if args.lora_adapter is not None:
        for key in LORA_FLAGS[:-1]:  # all but lora_adapter itself
            if getattr(args, key) is not None:
                fail(key, "the adapter given by lora_adapter brings its own settings; leave this unset")
        if not os.path.isdir(args.lora_adapter):
            fail("lora_adapter", "folder not found")
        try:
            check_adapter_fits(args.lora_adapter, args.model_name_or_path, model, what="config key 'lora_adapter':")
        except (ValueError, FileNotFoundError) as error:
            raise ValueError(str(error)) from None
        return
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    names = [name for name, _ in model.named_modules() if name]
    for target in args.lora_target_modules or DEFAULT_TARGET_MODULES:
        single = LoraConfig(target_modules=[target])
        matches = [name for name in names if check_target_module_exists(single, name)]
        if not matches:
            fail("lora_target_modules", f"no module named {target!r} in base model {args.model_name_or_path!r} "
                                        "(CLIP's attention projections are q_proj, k_proj, v_proj, out_proj; its MLPs "
                                        "fc1, fc2)")  # fmt: skip
        unsupported = [name for name in matches if not isinstance(model.get_submodule(name), torch.nn.Linear)]
        if unsupported:
            fail("lora_target_modules", f"{unsupported[0]} is a {type(model.get_submodule(unsupported[0])).__name__}, "
                                        "not a linear layer LoRA can adapt")  # fmt: skip
    first = first_adapted_vision_layer(model.config, args.lora_vision_layers)
    if not target_module_names(model, args.lora_target_modules or DEFAULT_TARGET_MODULES, first):
        fail("lora_target_modules", f"every module named lies in a vision layer below the cluster layer ({first}), "
                                    "which lora_vision_layers 'after_cluster' leaves out; set it to 'all'")  # fmt: skip


def first_adapted_vision_layer(config, vision_layers: str | None) -> int:
    """The lowest vision layer given adapters: the cluster layer for `"after_cluster"` (the default) with a
    segment reducer (k-medoids, spectral, ToMe, uniform); 0 with `"all"`, temporal merging or mean pooling, which
    have no single layer from which on the tokens are few."""
    from modeling_centerclip.configuration_centerclip import SEGMENT_REDUCERS

    if (vision_layers or DEFAULT_VISION_LAYERS) == "all" or config.cluster_algo not in SEGMENT_REDUCERS:
        return 0
    return config.cluster_layer


def target_module_names(model, targets, first_vision_layer: int) -> list[str]:
    """peft's `target_modules` for `targets` (module names such as `q_proj`): the names themselves when every
    layer is adapted, else the full name of every match outside the vision layers below `first_vision_layer`."""
    if first_vision_layer == 0:
        return list(targets)
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    single = LoraConfig(target_modules=list(targets))
    names = []
    for name, _ in model.named_modules():
        below = (layer := _VISION_LAYER.search(name)) is not None and int(layer.group(1)) < first_vision_layer
        if name and not below and check_target_module_exists(single, name):
            names.append(name)
    return names


def describe_targets(target_modules) -> str:
    """`adapter_config.json`'s target modules in a line: `q_proj`, ... (and which vision layers, when named)."""
    names = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    leaves = sorted({name.rsplit(".", 1)[-1] for name in names})
    text = ", ".join(f"`{leaf}`" for leaf in leaves)
    layers = sorted({int(m.group(1)) for name in names if (m := _VISION_LAYER.search(name))})
    if not any("." in name for name in names):  # short names match in both towers
        return f"{text} (both towers, every layer)"
    span = f"vision layer {layers[0]}" if len(layers) == 1 else f"vision layers {layers[0]}-{layers[-1]}" if layers else ""
    where = span or "no vision layer"
    return f"{text} (text tower; {where})" if any("text_model" in name for name in names) else f"{text} ({where})"


def lora_config(args, model):
    from peft import LoraConfig

    targets = args.lora_target_modules or DEFAULT_TARGET_MODULES
    first = first_adapted_vision_layer(model.config, args.lora_vision_layers)
    return LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha if args.lora_alpha is not None else 2 * args.lora_r,
                      lora_dropout=args.lora_dropout if args.lora_dropout is not None else DEFAULT_DROPOUT,
                      target_modules=target_module_names(model, targets, first), bias="none")  # fmt: skip


@contextlib.contextmanager
def _peft_deprecation_silenced():
    """peft still asks Transformers 5 for the deprecated `is_gradient_checkpointing`: not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def add_lora(model, args):
    """Freeze `model` and wrap it in a `PeftModel` with a fresh adapter (or the one `lora_adapter` names, to train
    further). `base_model_name_or_path` of the saved adapter is the run's `model_name_or_path`."""
    peft = _require_peft()
    model.name_or_path = args.model_name_or_path  # what adapter_config.json names as the base
    with _peft_deprecation_silenced():
        if args.lora_adapter is not None:
            return peft.PeftModel.from_pretrained(model, args.lora_adapter, is_trainable=True)
        return peft.get_peft_model(model, lora_config(args, model))


def adapter_base(adapter_dir) -> str:
    """The base model an adapter folder names; a missing local base is named with the adapter's config."""
    base = read_adapter_config(adapter_dir)["base_model_name_or_path"]
    if base.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(base)):
        raise FileNotFoundError(f"{Path(adapter_dir, ADAPTER_CONFIG)}: base model {base!r} not found")
    return base


def load_adapter_model(adapter_dir, merge: bool = True, **overrides):
    """A CenterCLIPModel: the base an adapter folder names with the adapter applied -- merged into the weights
    (a plain model, as fast as the base) or, with `merge=False`, a `PeftModel`."""
    peft = _require_peft()
    from modeling_centerclip import CenterCLIPModel

    base = adapter_base(adapter_dir)
    model = CenterCLIPModel.from_pretrained(base, **overrides)
    check_adapter_fits(adapter_dir, base, model)
    with _peft_deprecation_silenced():
        model = peft.PeftModel.from_pretrained(model, str(adapter_dir))
    return model.merge_and_unload() if merge else model
