"""Publish CenterCLIP to the Hugging Face Hub: hub configurations, CLIP checkpoint conversion, pushes.

    python -m training.publish convert --clip openai/clip-vit-base-patch32 \\
        --hub_config hub_configs/centerclip-vitb32 --output_dir out/centerclip-vitb32 \\
        [--set num_frames=8 ...] [--push_to_hub --hub_model_id org/centerclip-vitb32 [--private]]
    python -m training.publish push --folder out/centerclip-vitb32 --hub_model_id org/centerclip-vitb32
    python -m training.publish export-onnx --model out/centerclip-vitb32 --output tower.onnx   # training/export_onnx.py
    python -m training.publish push --folder out/lora_run/final --hub_model_id org/my-adapter     # a LoRA adapter
    python -m training.publish push --folder out/lora_run/final --hub_model_id org/merged --merge --output_dir out/merged

A hub configuration is a folder with a `config.json` (a `CenterCLIPConfig`: the architecture it is meant for
plus the cluster settings) and a `hub.json` sidecar (source checkpoint, license, processor settings, the paper's
published results). Conversion takes the architecture from the checkpoint, and the hub configuration
contributes only the CenterCLIP fields (`num_frames`, `cluster_*`, ...). Architecture fields present in the hub
configuration must equal the checkpoint's, else conversion is refused; a hub configuration that leaves them out
(only CenterCLIP fields) applies its cluster settings to any checkpoint -- that is how custom or tiny CLIP
checkpoints are converted.
"""

from __future__ import annotations

import difflib
import inspect
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

if __name__ == "__main__":  # --help and a mistyped flag answer before Transformers loads
    from training.cli_parsers import build_publish_parser

    build_publish_parser().parse_args()

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard
from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig, PreTrainedConfig

from modeling_centerclip import CenterCLIPConfig, CenterCLIPModel, CenterCLIPProcessor
from modeling_centerclip.configuration_centerclip import CENTERCLIP_FIELDS  # what a hub configuration contributes
from modeling_centerclip.pipeline_centerclip import CUSTOM_PIPELINES, PIPELINE_FILE

from .cli_parsers import HUB_CONFIGS_DIR, SIDECAR_NAME, build_publish_parser, list_hub_configs
from .model_card import render_adapter_card, render_model_card
from .tokenizer import check_tokenizer, load_checked_tokenizer

logger = logging.getLogger(__name__)

# Fields that fix the weights' shapes or the computation; a hub configuration that names them must agree.
ARCHITECTURE_FIELDS = {
    "": ("projection_dim",),
    "text_config": (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "max_position_embeddings", "hidden_act",
    ),
    "vision_config": (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
        "image_size", "patch_size", "hidden_act",
    ),
}  # fmt: skip
# Serialisation keys of a config.json that are not constructor settings.
CONFIG_METADATA_KEYS = ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path")
# What a hub configuration's `processor` (or `processor_kwargs`) may set.
PROCESSOR_SETTINGS = tuple(name for name in inspect.signature(CenterCLIPProcessor).parameters
                           if name not in ("tokenizer", "kwargs"))
# Only safetensors are published: these hold pickles or other frameworks' weights.
REFUSED_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5", ".msgpack")


@dataclass
class HubConfig:
    """A hub configuration: `settings` is its config.json (the one source of the model settings); the rest
    comes from the `hub.json` sidecar."""

    name: str
    settings: dict
    source_checkpoint: str | None = None
    license: str | None = None
    processor: dict = field(default_factory=dict)
    published_results: list = field(default_factory=list)

    @property
    def centerclip_settings(self) -> dict:
        return {key: self.settings[key] for key in CENTERCLIP_FIELDS if key in self.settings}


def load_hub_config(spec: str | os.PathLike | Mapping | CenterCLIPConfig | HubConfig) -> HubConfig:
    """Read a hub configuration from a folder, a config JSON file, a shipped name ("centerclip-vitb32"),
    a settings dict or a `CenterCLIPConfig`."""
    if isinstance(spec, HubConfig):
        return spec
    if isinstance(spec, CenterCLIPConfig):
        return HubConfig(name="custom", settings=spec.to_dict())
    if isinstance(spec, Mapping):
        return HubConfig(name="custom", settings=_checked_settings(dict(spec), "hub configuration"))
    path = Path(spec)
    if not path.exists() and (HUB_CONFIGS_DIR / path).is_dir():
        path = HUB_CONFIGS_DIR / path
    if path.is_dir():
        config_file, sidecar_file = path / "config.json", path / SIDECAR_NAME
    elif path.is_file():
        config_file, sidecar_file = path, None
    else:
        raise FileNotFoundError(
            f"Hub configuration {spec!s} not found: give a folder with a config.json, a JSON file, or one of "
            f"{list_hub_configs()}"
        )
    if not config_file.is_file():
        raise FileNotFoundError(f"Hub configuration folder {path} has no config.json")
    settings = _checked_settings(_read_json(config_file), str(config_file))
    sidecar = _read_json(sidecar_file) if sidecar_file is not None and sidecar_file.is_file() else {}
    _refuse_unknown_keys(sidecar, ("source_checkpoint", "license", "processor", "published_results"), sidecar_file)
    if not isinstance(sidecar.get("processor", {}), dict):
        raise ValueError(f"{sidecar_file}: 'processor' must be an object of CenterCLIPProcessor settings")
    _refuse_unknown_keys(sidecar.get("processor", {}), PROCESSOR_SETTINGS, sidecar_file, "processor")
    return HubConfig(name=path.stem if path.is_file() else path.name, settings=settings, **sidecar)


def _read_json(path: Path) -> dict:
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a JSON object of settings, got a {type(content).__name__}")
    return content


def _checked_settings(settings: dict, where: str) -> dict:
    """Refuse settings of another model type or with keys no config has (a typo would be silently dropped)."""
    model_type = settings.get("model_type", CenterCLIPConfig.model_type)
    if model_type != CenterCLIPConfig.model_type:
        raise ValueError(f"{where}: model_type is {model_type!r}, a hub configuration must be 'centerclip'")
    _refuse_unknown_keys(settings, [*CenterCLIPConfig().to_dict(), *CONFIG_METADATA_KEYS], where)
    for section, config_class in (("text_config", CLIPTextConfig), ("vision_config", CLIPVisionConfig)):
        if not isinstance(settings.get(section, {}), dict):
            raise ValueError(f"{where}: {section!r} must be an object of {config_class.__name__} settings")
        _refuse_unknown_keys(settings.get(section, {}), config_class().to_dict(), where, section)
    return settings


def _refuse_unknown_keys(settings: Mapping, valid, where, section: str | None = None) -> None:
    unknown = sorted(set(settings) - set(valid))
    if not unknown:
        return
    key = f"{section}.{unknown[0]}" if section else unknown[0]
    close = difflib.get_close_matches(unknown[0], valid, n=1)
    raise ValueError(
        f"{where}: unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
        + f"; valid {section + ' ' if section else ''}keys: {', '.join(sorted(set(valid)))}"
    )


def architecture_mismatches(hub_settings: Mapping, checkpoint_config: CLIPConfig) -> list[tuple[str, object, object]]:
    """(field, hub value, checkpoint value) for each architecture field the hub settings name and the
    checkpoint contradicts."""
    mismatches = []
    for section, names in ARCHITECTURE_FIELDS.items():
        wanted = hub_settings.get(section, {}) if section else hub_settings
        actual = getattr(checkpoint_config, section) if section else checkpoint_config
        for name in names:
            if name in wanted and wanted[name] != getattr(actual, name):
                mismatches.append((f"{section}.{name}" if section else name, wanted[name], getattr(actual, name)))
    return mismatches


def matching_hub_config(config: CenterCLIPConfig) -> HubConfig | None:
    """The shipped hub configuration whose architecture and CenterCLIP settings `config` has, if any.

    Lets a training run cite the paper's published results for the configuration it trained
    (`render_model_card(..., published_results=hub.published_results)`)."""
    for name in list_hub_configs():
        hub = load_hub_config(name)
        same_settings = all(getattr(config, key) == value for key, value in hub.centerclip_settings.items())
        if same_settings and not architecture_mismatches(hub.settings, config):
            return hub
    return None


def checkpoint_settings(clip_name_or_path: str | os.PathLike) -> dict:
    """The constructor settings of a checkpoint's config.json (stock CLIP or CenterCLIP)."""
    config_dict, _ = PreTrainedConfig.get_config_dict(str(clip_name_or_path))
    return {key: value for key, value in config_dict.items() if key not in CONFIG_METADATA_KEYS}


def convert_clip_checkpoint(
    clip_name_or_path: str | os.PathLike,
    hub_config: str | os.PathLike | Mapping | CenterCLIPConfig | HubConfig,
    output_dir: str | os.PathLike,
    *,
    tokenizer=None,
    overrides: Mapping | None = None,
    processor_kwargs: Mapping | None = None,
    repo_id: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Turn a CLIP (or CenterCLIP) checkpoint into a complete CenterCLIP folder.

    Writes `model.safetensors`, `config.json` (with `auto_map`), the model and processor code, the tokenizer,
    the processor config and a model card `README.md` into `output_dir`.

    Args:
        clip_name_or_path: Hub id or local folder of a safetensors CLIP checkpoint with its tokenizer.
        hub_config: see `load_hub_config`; its architecture fields must match the checkpoint's.
        tokenizer: the CLIP tokenizer to ship (an object, or a folder / Hub id to load it from); loaded from the
            checkpoint when `None`. A folder without tokenizer files or an empty vocabulary is refused.
        overrides: CenterCLIP settings replacing the hub configuration's, e.g. `{"num_frames": 8}`.
        processor_kwargs: `CenterCLIPProcessor` arguments replacing the hub configuration's `processor` ones.
        repo_id: the Hub id the model card's snippet loads (defaults to the folder's name).
        overwrite: allow writing into a non-empty `output_dir` (files of the same names are replaced; nothing
            is deleted, and `push_folder` still refuses stray pickled weights).
    Raises:
        ValueError: the hub configuration's architecture disagrees with the checkpoint's, or its settings do
            not fit the architecture, or the checkpoint lacks weights the model needs.
    """
    hub = load_hub_config(hub_config)
    _refuse_unknown_keys(overrides or {}, CENTERCLIP_FIELDS, "overrides")
    _refuse_unknown_keys(processor_kwargs or {}, PROCESSOR_SETTINGS, "processor_kwargs")
    settings = {**hub.centerclip_settings, **(overrides or {})}
    source = checkpoint_settings(clip_name_or_path)
    architecture = CLIPConfig(**{key: value for key, value in source.items() if key not in CENTERCLIP_FIELDS})
    mismatches = architecture_mismatches(hub.settings, architecture)
    if mismatches:
        details = "; ".join(
            f"{name}: hub configuration {want!r}, checkpoint {have!r}" for name, want, have in mismatches
        )
        raise ValueError(
            f"Hub configuration '{hub.name}' is for another architecture than checkpoint {clip_name_or_path}: "
            f"{details}. The architecture comes from the checkpoint: use the hub configuration made for it, or "
            "one holding only CenterCLIP settings (num_frames, cluster_*) to apply them to any checkpoint."
        )
    # Settings go in at construction, so CenterCLIPConfig validates them against the checkpoint's architecture.
    config = CenterCLIPConfig(**{**source, **settings})

    processor_kwargs = {**hub.processor, **(processor_kwargs or {})}
    if processor_kwargs.keys() & {"num_frames", "image_size"}:
        raise ValueError("the processor's num_frames and image_size come from the model config; set num_frames "
                         "with overrides (--set num_frames=N)")  # fmt: skip
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} is not empty; pass overwrite=True (--overwrite) to write into it")

    # Before loading weights: Transformers 5 would build an empty tokenizer from a folder without its files.
    remedy = "pass the CLIP tokenizer's folder or Hub id with --tokenizer (tokenizer=... in Python)"
    if tokenizer is None:
        tokenizer = load_checked_tokenizer(clip_name_or_path, remedy)
    elif isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_checked_tokenizer(tokenizer, remedy)
    else:
        check_tokenizer(tokenizer, "tokenizer", remedy)
    model, loading = CenterCLIPModel.from_pretrained(
        clip_name_or_path, config=config, use_safetensors=True, output_loading_info=True
    )
    if loading["missing_keys"] or loading["mismatched_keys"]:
        raise ValueError(
            f"Checkpoint {clip_name_or_path} does not hold all CenterCLIP weights: missing "
            f"{sorted(loading['missing_keys'])}, mismatched {loading['mismatched_keys']}"
        )
    if loading["unexpected_keys"]:
        logger.warning("Ignored weights of %s: %s", clip_name_or_path, sorted(loading["unexpected_keys"]))

    processor = CenterCLIPProcessor(
        tokenizer=tokenizer,
        num_frames=config.num_frames,
        image_size=config.vision_config.image_size,
        **processor_kwargs,
    )

    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    for name, data in pipeline_files(output_dir).items():
        (output_dir / name).write_bytes(data)
    card = render_model_card(
        output_dir,
        repo_id=repo_id,
        base_model=str(clip_name_or_path),
        # The sidecar's license is its source checkpoint's; another checkpoint's license is unknown here.
        license=hub.license if str(clip_name_or_path) == hub.source_checkpoint else None,
        # The paper's numbers belong to the exact configuration; overridden settings are another one.
        published_results=[] if overrides else hub.published_results,
    )
    (output_dir / "README.md").write_text(card)
    return output_dir


def publishable_files(folder: str | os.PathLike) -> list[tuple[str, Path]]:
    """(path in repo, local path) of every file of `folder` to publish, hidden files and folders skipped.

    Raises ValueError when the folder holds pickled or non-safetensors weights, or lacks config.json or
    safetensors weights."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    files = [
        (path.relative_to(folder).as_posix(), path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]
    names = {name for name, _ in files}
    adapter = "adapter_config.json" in names  # a LoRA adapter folder (training.lora): its base is named inside
    refused = [name for name in names if name.endswith(REFUSED_WEIGHT_SUFFIXES)]
    if refused:
        raise ValueError(
            f"{folder} holds non-safetensors weight files {sorted(refused)}; only safetensors are published. "
            "Remove them (or push the final model folder, not a training checkpoint)."
        )
    if adapter and "adapter_model.safetensors" not in names:
        raise ValueError(f"{folder} has adapter_config.json but no adapter_model.safetensors")
    if not adapter and "config.json" not in names:
        raise ValueError(f"{folder} has no config.json")
    if not adapter and not names & {"model.safetensors", "model.safetensors.index.json"}:
        raise ValueError(f"{folder} has no model.safetensors (or model.safetensors.index.json)")
    if "README.md" in names:
        ModelCard.load(folder / "README.md", ignore_metadata_errors=False)  # bad front matter fails here
    return files


def pipeline_files(folder: str | os.PathLike) -> dict[str, bytes]:
    """`config.json` listing the CenterCLIP pipelines (`custom_pipelines`) and their code: what a model repository
    needs for `pipeline("zero-shot-video-classification", model=REPO, trust_remote_code=True)`. Empty for a
    folder that is not a CenterCLIP model. (Local folders go without: `import modeling_centerclip` registers the
    tasks, and a config listing them would make `pipeline()` ask for `trust_remote_code` there too.)"""
    config_file = Path(folder) / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    if config.get("model_type") != CenterCLIPConfig.model_type:
        return {}
    config["custom_pipelines"] = CUSTOM_PIPELINES
    code = Path(inspect.getfile(CenterCLIPModel)).with_name(PIPELINE_FILE).read_bytes()
    return {"config.json": (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(), PIPELINE_FILE: code}


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    commit_message: str = "Upload CenterCLIP model",
    token: str | None = None,
    revision: str | None = None,
):
    """Create (if needed) the Hub model repo `repo_id` and commit every file of `folder` in one commit.

    Returns the `huggingface_hub.CommitInfo`. Refuses folders with pickled weights (see `publishable_files`).
    """
    extra = pipeline_files(folder)  # the pipelines travel with the model (the local folder is left as it is)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
                  for name, path in publishable_files(folder) if name not in extra]  # fmt: skip
    operations += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in extra.items()]
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.create_commit(
        repo_id, operations=operations, commit_message=commit_message, repo_type="model", revision=revision
    )
    logger.info("Pushed %d files of %s to %s", len(operations), folder, repo_id)
    return commit


def push_training_run(folder: str, args, results: dict) -> None:
    """`train.py --push_to_hub`: the final folder with a model card (an adapter card for a LoRA run)."""
    from .evaluate import headline_results
    from .lora import is_adapter_folder

    card_results = {args.corpus: headline_results(results)} if results else None  # MSVD v2t: CLIP4Clip's protocol
    training_data = f"Fine-tuned on `{args.corpus}` ({args.train_split} split) with training/train.py."
    if is_adapter_folder(folder):
        card = render_adapter_card(folder, repo_id=args.hub_model_id, results=card_results,
                                   training_data=training_data)  # fmt: skip
    else:
        card = render_model_card(folder, repo_id=args.hub_model_id, results=card_results,
                                 training_data=training_data, base_model=args.model_name_or_path)  # fmt: skip
    Path(folder, "README.md").write_text(card, encoding="utf-8")
    push_folder(folder, args.hub_model_id)


def _results_file(path: str | None) -> dict | None:
    """`--results`: an evaluation report (training/evaluate.py --output, or a run's eval_results.json)."""
    from .evaluate import headline_results

    if path is None:
        return None
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        return {report.get("corpus", "evaluation"): headline_results(report)}  # MSVD v2t: CLIP4Clip's protocol
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as error:
        raise ValueError(f"--results {path}: not an evaluation report with t2v and v2t ({error})") from None


def prepare_adapter_push(folder: str, repo_id: str, merge_into: str | None, results: dict | None) -> str:
    """A LoRA adapter folder to push: with its adapter card, or (`merge_into`) merged into its base and saved there
    as a full model with the processor and a model card. Returns the folder to push."""
    from .lora import adapter_base, load_adapter_model

    base = adapter_base(folder)
    training_data = f"The base `{base}` with a LoRA adapter merged into its weights (`{repo_id}`'s source: {folder})."
    if merge_into is None:
        card = render_adapter_card(folder, repo_id=repo_id, results=results)
        Path(folder, "README.md").write_text(card, encoding="utf-8")
        return folder
    load_adapter_model(folder).save_pretrained(merge_into)
    CenterCLIPProcessor.from_pretrained(folder).save_pretrained(merge_into)
    card = render_model_card(merge_into, repo_id=repo_id, results=results, training_data=training_data, base_model=base)
    Path(merge_into, "README.md").write_text(card, encoding="utf-8")
    return merge_into


def _read_overrides(parser, pairs: list[tuple[str, str]]) -> dict:
    """`--set KEY=VALUE` pairs -> settings; VALUE is JSON or a bare string (`kmedoids`)."""
    overrides = {}
    for key, value in pairs:
        if key not in CENTERCLIP_FIELDS:
            parser.error(f"--set {key}={value}: {key!r} is not one of {', '.join(CENTERCLIP_FIELDS)}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def main(argv=None) -> None:
    parser = build_publish_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "export-onnx":
        from . import export_onnx

        export_onnx.run(args)
    elif args.command == "convert":
        if args.push_to_hub and not args.hub_model_id:
            parser.error("--push_to_hub needs --hub_model_id")
        folder = convert_clip_checkpoint(
            args.clip, args.hub_config, args.output_dir,
            tokenizer=args.tokenizer, overrides=_read_overrides(parser, args.overrides), repo_id=args.hub_model_id,
            overwrite=args.overwrite,
        )  # fmt: skip
        logger.info("Wrote %s", folder)
        if args.push_to_hub:
            push_folder(folder, args.hub_model_id, private=args.private, token=args.token)
    else:
        if not args.hub_model_id:
            parser.error("push needs --hub_model_id")
        folder = args.folder
        from .lora import is_adapter_folder

        if args.merge and not (is_adapter_folder(folder) and args.output_dir):
            parser.error(f"--merge needs an adapter folder (adapter_config.json in {folder}) and --output_dir")
        if is_adapter_folder(folder):  # a bad --results or adapter raises ValueError: one line from run_cli
            folder = prepare_adapter_push(folder, args.hub_model_id, args.output_dir if args.merge else None,
                                          _results_file(args.results))  # fmt: skip
        push_folder(folder, args.hub_model_id, private=args.private, token=args.token)


if __name__ == "__main__":
    from training.cli_errors import run_cli

    run_cli("python -m training.publish", main)
