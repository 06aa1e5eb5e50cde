"""The model side of search: which model a library was indexed with, and the two towers that embed queries.

A model is a CenterCLIP folder or Hub id, or a stock CLIP checkpoint with cluster overrides
(`{"cluster_algo": "kmedoids", ...}`). Its *fingerprint* hashes the weight files, the saved `config.json` (overrides
included) and the processor's video settings: an index built with one fingerprint is only searched with the same.

A LoRA adapter folder (a LoRA training run's `final/`: adapter + processor, `training.lora`) is a model too: the
base it names with the adapter merged in; its fingerprint also covers the adapter's settings and weights.

Text queries need only the tokenizer and the text tower: `TextEncoder` reads the `text_model.*` and
`text_projection.*` tensors of the safetensors files and nothing else, so no vision weights are loaded.
Every embedding is L2-normalised here, whatever `get_*_features(...).pooler_output` returns.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

from modeling_centerclip import CenterCLIPConfig, CenterCLIPModel, CenterCLIPProcessor
from training.cli_errors import require_model_folder

PROCESSOR_SETTINGS = ("num_frames", "image_size", "max_length", "fps", "image_mean", "image_std", "resample")
TEXT_PREFIXES = ("text_model.", "text_projection.")
_VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "architectures", "auto_map", "dtype", "torch_dtype"}


class ModelMismatchError(ValueError):
    """The model given for a query or an update is not the one the index was built with."""


def resolve_model_dir(model: str) -> Path:
    """A local folder as is; a Hub id through the local Hub cache (downloading configs and safetensors only)."""
    if os.path.isdir(model):
        return Path(model).resolve()
    require_model_folder(model, "model")  # a path that is not there: says how to get one
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))


def load_config(model_dir: Path, overrides: dict | None = None) -> CenterCLIPConfig:
    """The CenterCLIP config of a folder (a stock CLIP config becomes one), with cluster overrides applied."""
    return CenterCLIPConfig.from_pretrained(model_dir, **(overrides or {}))


def load_processor(model_dir: Path, config: CenterCLIPConfig) -> CenterCLIPProcessor:
    """The folder's CenterCLIP processor, or (stock CLIP) its tokenizer with default video settings; frames and
    image size always follow the model config."""
    try:
        processor = CenterCLIPProcessor.from_pretrained(model_dir)
    except (OSError, ValueError, TypeError):
        from transformers import CLIPTokenizer

        from modeling_centerclip.processing_centerclip import PAPER_FPS

        processor = CenterCLIPProcessor(CLIPTokenizer.from_pretrained(model_dir), fps=PAPER_FPS)  # as training does
    processor.num_frames = config.num_frames
    processor.image_size = config.vision_config.image_size
    return processor


@cache
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def weight_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no .safetensors weights (only safetensors checkpoints are read)")
    return files


def fingerprint(model_dir: Path, overrides: dict, processor: CenterCLIPProcessor, adapter_dir: Path | None = None) -> str:
    """sha256 of the weight files' bytes, the saved config with the overrides and the processor's video settings
    (first 16 hex digits). The config comes from the folder's `config.json`, not the loaded object, so a package
    upgrade that adds config fields (at their no-op defaults) leaves existing indexes searchable."""
    saved = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    settings = {k: v for k, v in {**saved, **overrides}.items() if k not in _VOLATILE_CONFIG_KEYS}
    settings["processor"] = {name: getattr(processor, name) for name in PROCESSOR_SETTINGS}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in weight_files(model_dir):
        stat = path.stat()
        digest.update(f"{path.name}:{_file_sha256(str(path), stat.st_size, stat.st_mtime_ns)}".encode())
    if adapter_dir is not None:  # where the base lies is no part of the model; its bytes are hashed above
        adapter = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
        adapter.pop("base_model_name_or_path", None)
        digest.update(json.dumps(adapter, sort_keys=True, default=str).encode())
        path = adapter_dir / "adapter_model.safetensors"
        stat = path.stat()
        digest.update(f"adapter:{_file_sha256(str(path), stat.st_size, stat.st_mtime_ns)}".encode())
    return digest.hexdigest()[:16]


class ModelSpec:
    """A model reference (`name` as given, cluster `overrides`) resolved to its folder, config and processor."""

    def __init__(self, name: str, overrides: dict | None = None):
        self.name = str(name)
        self.overrides = dict(overrides or {})
        self.model_dir = resolve_model_dir(self.name)
        self.adapter_dir, self.base_dir = None, self.model_dir
        if (self.model_dir / "adapter_config.json").is_file():  # a LoRA adapter: weights and config are its base's
            from training.lora import adapter_base, check_adapter_fits

            base = adapter_base(self.model_dir)
            self.adapter_dir, self.base_dir = self.model_dir, resolve_model_dir(base)
            check_adapter_fits(self.adapter_dir, base)
        self.config = load_config(self.base_dir, self.overrides)
        self.processor = load_processor(self.model_dir, self.config)
        self.fingerprint = fingerprint(self.base_dir, self.overrides, self.processor, self.adapter_dir)

    def describe(self) -> dict:
        return {"name": self.name, "overrides": self.overrides, "fingerprint": self.fingerprint,
                "dim": self.config.projection_dim, "cluster_algo": self.config.cluster_algo}  # fmt: skip

    def check_matches(self, manifest_model: dict, allow_mismatch: bool = False, flag: str = "--allow-model-mismatch"):
        """Refuse (`ModelMismatchError`, naming both) when this model is not the one of `manifest_model`."""
        if self.fingerprint == manifest_model["fingerprint"] or allow_mismatch:
            return
        raise ModelMismatchError(
            f"the index was built with model {manifest_model['name']!r} (overrides {manifest_model['overrides']}, "
            f"fingerprint {manifest_model['fingerprint']}), but the query model is {self.name!r} (overrides "
            f"{self.overrides}, fingerprint {self.fingerprint}); embeddings of different models are not comparable. "
            f"Pass {flag} to search anyway."
        )

    def load_video_model(self, device: torch.device | str = "cpu") -> CenterCLIPModel:
        if self.adapter_dir is not None:
            from training.lora import load_adapter_model

            return load_adapter_model(self.adapter_dir, **self.overrides).to(device).eval()
        return CenterCLIPModel.from_pretrained(self.model_dir, **self.overrides).to(device).eval()

    def load_text_encoder(self) -> TextEncoder:
        return TextEncoder(self)


class TextEncoder:
    """Tokenizer + text tower + text projection of a CLIP/CenterCLIP checkpoint, the vision weights left on disk."""

    def __init__(self, spec: ModelSpec):
        from safetensors import safe_open
        from transformers import CLIPTextModelWithProjection

        text_config = copy.deepcopy(spec.config.text_config)
        text_config.projection_dim = spec.config.projection_dim
        self.model = CLIPTextModelWithProjection._from_config(text_config)
        state = {}
        if spec.adapter_dir is not None:  # the adapter changes text weights too: take them from the merged model
            merged = spec.load_video_model().state_dict()
            state = {k: v for k, v in merged.items() if k.startswith(TEXT_PREFIXES)}
        for path in weight_files(spec.model_dir) if spec.adapter_dir is None else ():
            with safe_open(str(path), framework="pt") as handle:
                state.update({k: handle.get_tensor(k) for k in handle.keys() if k.startswith(TEXT_PREFIXES)})
        missing, _ = self.model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing:
            raise ValueError(f"{spec.model_dir}: the checkpoint lacks text-tower weights {missing[:5]}")
        self.model.eval()
        self.processor = spec.processor

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings `[len(texts), dim]` float32."""
        tokens = self.processor(text=list(texts))
        # CLIPTextModelWithProjection.text_embeds is CLIPModel.get_text_features' projection of the EOS state.
        embeds = self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).text_embeds
        return F.normalize(embeds.float(), dim=-1)


class ImageDecodeError(ValueError):
    """An image query could not be read or decoded; the message names the file."""


def load_image(image, name: str = "image") -> torch.Tensor:
    """An image file path, encoded bytes or PIL image -> uint8 `[1, H, W, 3]` RGB. Errors name the file, as a
    video's do: `FileNotFoundError` for a missing path, `ImageDecodeError` for anything not decodable."""
    from modeling_centerclip.processing_centerclip import VideoDecodeError, decode_images

    if isinstance(image, (str, os.PathLike)):
        name = os.fspath(image)
        if not os.path.isfile(image):
            raise FileNotFoundError(f"image {name!r} not found")
    try:
        return torch.from_numpy(decode_images([image], name=name))
    except VideoDecodeError as error:
        raise ImageDecodeError(f"Cannot read image {name}: {error.reason}") from None


@torch.inference_mode()
def image_embedding(model: CenterCLIPModel, processor: CenterCLIPProcessor, frames: torch.Tensor) -> torch.Tensor:
    """uint8 `[N, H, W, 3]` images -> L2-normalised embeddings `[N, dim]` float32 on the CPU, through CLIP's own
    `get_image_features` (a still image is what CLIP was trained on), preprocessed as video frames are."""
    device = next(model.parameters()).device
    pixel_values = processor.preprocess_frames(frames, do_normalize=False)
    features = model.get_image_features(pixel_values=processor.normalize(pixel_values.to(device)))
    return F.normalize(features.pooler_output.float(), dim=-1).cpu()
