"""Model cards for published CenterCLIP folders: Hub metadata (YAML front matter) plus a Markdown body.

Everything the card states about the model is read from its `config.json` (and the saved processor settings),
so the card cannot drift from the weights it describes. Published paper numbers come only from a hub
configuration's `hub.json`, and are always labelled as the paper's, never as this checkpoint's.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from modeling_centerclip import CenterCLIPConfig
from training.lora import describe_targets, read_adapter_config

# Text-video retrieval has no Hub pipeline of its own; the model maps text and video into one embedding space.
PIPELINE_TAG = "feature-extraction"
TAGS = ["centerclip", "clip", "video", "text-video-retrieval", "token-clustering", "custom_code"]
# Saved processor attributes the card reports (missing ones are simply not listed).
PROCESSOR_FIELDS = ("fps", "max_length", "image_mean", "image_std", "resample")

CITATION = """\
@inproceedings{zhao2022centerclip,
  title     = {CenterCLIP: Token Clustering for Efficient Text-Video Retrieval},
  author    = {Zhao, Shuai and Zhu, Linchao and Wang, Xiaohan and Yang, Yi},
  booktitle = {Proceedings of the 45th International ACM SIGIR Conference on Research and Development in Information Retrieval},
  year      = {2022},
  note      = {arXiv:2205.00823}
}

@inproceedings{radford2021clip,
  title     = {Learning Transferable Visual Models From Natural Language Supervision},
  author    = {Radford, Alec and Kim, Jong Wook and Hallacy, Chris and Ramesh, Aditya and Goh, Gabriel and Agarwal, Sandhini and Sastry, Girish and Askell, Amanda and Mishkin, Pamela and Clark, Jack and Krueger, Gretchen and Sutskever, Ilya},
  booktitle = {Proceedings of the 38th International Conference on Machine Learning (ICML)},
  year      = {2021}
}"""

SNIPPET = """\
```python
import torch
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)

texts = ["a person is cooking in a kitchen", "a dog runs along the beach"]
inputs = processor(text=texts, videos=["video.mp4"], return_tensors="pt")  # any file decord can read
with torch.no_grad():
    outputs = model(**inputs)
print(outputs.logits_per_text)  # [len(texts), number of videos]: scaled cosine similarity
```"""


def vision_name(config: CenterCLIPConfig) -> str:
    """'ViT-B/32' for the CLIP base sizes, else a width/depth/patch description."""
    vision = config.vision_config
    if (vision.hidden_size, vision.num_hidden_layers) == (768, 12):
        return f"ViT-B/{vision.patch_size}"
    return f"ViT (width {vision.hidden_size}, {vision.num_hidden_layers} layers, patch {vision.patch_size})"


def setting_name(config: CenterCLIPConfig) -> str:
    """The paper's short name of a cluster setting, e.g. 'k-medoids B6-4x49', or 'mean pooling'."""
    if config.cluster_algo == "none":
        return "mean pooling"
    algo = {"kmedoids": "k-medoids", "spectral": "spectral"}[config.cluster_algo]
    return f"{algo} B{config.cluster_layer}-{config.num_segments}x{config.num_centers}"


def default_title(config: CenterCLIPConfig) -> str:
    if config.cluster_algo == "none":
        return f"CLIP4Clip mean-pooling baseline, {vision_name(config)}"
    return f"CenterCLIP {vision_name(config)}, {setting_name(config)}"


def _describe(config: CenterCLIPConfig) -> str:
    if config.cluster_algo == "none":
        return (
            f"A text-video retrieval model in the CenterCLIP plug-in's format, set up as the CLIP4Clip mean-pooling "
            f"baseline: each of the {config.num_frames} frames is encoded by the CLIP {vision_name(config)} vision "
            "tower on its own, and the video embedding is the normalised mean of the frame embeddings. The text "
            "tower is CLIP's. Switch `cluster_algo` in the config to compare with CenterCLIP on the same weights."
        )
    algo = "k-medoids" if config.cluster_algo == "kmedoids" else "spectral clustering"
    return (
        "A [CenterCLIP](https://arxiv.org/abs/2205.00823) text-video retrieval model: CLIP "
        f"{vision_name(config)} runs its first {config.cluster_layer} vision layer{'s' * (config.cluster_layer != 1)} "
        "on every frame, then splits the "
        f"{config.num_frames} frames into {config.num_segments} segments of {config.frames_per_segment}, groups the "
        f"{config.tokens_per_segment} patch tokens of each segment by {algo}, keeps only the "
        f"{config.num_centers} center tokens, and runs the remaining layers on one short sequence per segment. The "
        "video embedding is the mean of the segment embeddings; the text tower is CLIP's. Clustering adds no "
        "parameters: the weights are ordinary CLIP weights."
    )


def _cluster_table(config: CenterCLIPConfig) -> str:
    rows = [("frames per video", config.num_frames), ("algorithm", config.cluster_algo)]
    if config.cluster_algo != "none":
        rows += [
            ("clustered after vision layer", f"{config.cluster_layer} of {config.vision_config.num_hidden_layers}"),
            ("segments", f"{config.num_segments} ({config.frames_per_segment} frames each)"),
            ("patch tokens per segment", config.tokens_per_segment),
            ("centers kept per segment", config.num_centers),
            ("k-medoids distance", config.cluster_distance),
            ("k-medoids max iterations", config.cluster_iters),
        ]
    if config.segment_valid_rule != "any_real_frame":  # short videos embed as in the reference implementation
        rows.append(("segments averaged for padded videos", f"`{config.segment_valid_rule}`"))
    if config.cluster_algo == "spectral":
        knn = config.spectral_knn if config.spectral_knn is not None else f"{config.default_spectral_knn} (default)"
        rows += [("spectral sigma", config.spectral_sigma), ("spectral k-nearest neighbours", knn)]
    return _table(["setting", "value"], rows)


def _preprocessing(config: CenterCLIPConfig, processor: Mapping) -> str:
    size = config.vision_config.image_size
    fps = processor.get("fps")
    resize = f"shorter side resized to {size} px" + (f" ({processor['resample']})" if processor.get("resample") else "")
    normalise = (
        f"normalised with mean {processor['image_mean']} and std {processor['image_std']}"
        if processor.get("image_mean") and processor.get("image_std")
        else "CLIP mean/std normalisation"
    )
    lines = [
        f"- video: {config.num_frames} frames"
        + (f" sampled from the video decoded at {fps} fps" if fps else " sampled from all decoded frames")
        + ": the frames are split into equal chunks, evaluation takes each chunk's center frame, training a "
        "random frame of each",
        f"- frames: {resize}, center crop {size} x {size}, {normalise}",
    ]
    if processor.get("max_length"):
        lines.append(f"- text: CLIP BPE tokenizer, padded and truncated to {processor['max_length']} tokens")
    return "\n".join(lines)


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _results(results: Mapping[str, Mapping[str, float]] | None, published: Sequence[Mapping]) -> str:
    parts = []
    if results:
        metrics = list(dict.fromkeys(name for scores in results.values() for name in scores))
        rows = [[dataset, *(_fmt(scores.get(m)) for m in metrics)] for dataset, scores in results.items()]
        parts.append("Results of this checkpoint:\n\n" + _table(["dataset", *metrics], rows))
    else:
        parts.append("This checkpoint has not been evaluated.")
    if published:
        rows = [
            [r["dataset"], f"{r['direction']} {r['metric']}", r["value"], r["paper_setting"], r.get("note", "")]
            for r in published
        ]
        parts.append(
            "Published results for this configuration (the paper's numbers with its own training; they are "
            "not measurements of this checkpoint):\n\n"
            + _table(["dataset", "metric", "value", "paper setting", "note"], rows)
            + f"\n\nSource: {published[0]['source']}."
        )
    else:
        parts.append("No published result exists for this exact configuration.")
    return "\n\n".join(parts)


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _limitations(config: CenterCLIPConfig) -> str:
    items = [
        "English only: CLIP's tokenizer and pre-training data are English; CLIP's known biases carry over.",
        f"Videos are summarised by {config.num_frames} frames; long videos lose detail, and text is cut at the "
        "processor's `max_length` tokens.",
    ]
    if config.cluster_algo != "none":
        items += [
            "Fewer tokens do not guarantee faster inference: the paper measured inference speed-ups of 1.07x "
            "(ViT-B/32) and 0.69x (ViT-B/16, slower), although the token counts allow about 1.5x.",
            "The clustering is not differentiable; gradients reach the kept tokens only.",
        ]
    return "\n".join(f"- {item}" for item in items)


def render_model_card(
    source: str | os.PathLike | CenterCLIPConfig,
    *,
    repo_id: str | None = None,
    results: Mapping[str, Mapping[str, float]] | None = None,
    training_data: str | None = None,
    base_model: str | None = None,
    license: str | None = None,
    published_results: Sequence[Mapping] = (),
    processor_settings: Mapping | None = None,
    title: str | None = None,
) -> str:
    """Render a model card (YAML front matter + Markdown) for a CenterCLIP folder or config.

    Args:
        source: a saved model folder (its `config.json` and `processor_config.json` are read) or a config.
        repo_id: the Hub id used in the loading snippet; defaults to the folder's name.
        results: this checkpoint's evaluation, `{dataset: {metric: value}}`, e.g.
            `{"MSR-VTT 1k-A": {"t2v R@1": 44.1, "v2t R@1": 42.8}}`; `training.evaluate.headline_results(report)`
            gives the protocols published tables use, labelled (MSVD: `"v2t (CLIP4Clip protocol) R@1"`).
        training_data: one line on what the weights were fine-tuned on; `None` says they are not fine-tuned.
        base_model: the Hub id the weights come from (a local path is not put into the metadata).
        license: the weights' license (a Hub license id); `None` leaves it out of the metadata and says the base
            checkpoint's license applies.
        published_results: the paper's numbers for this configuration, as in a hub configuration's `hub.json`.
        processor_settings: processor attributes (`fps`, `max_length`); read from the folder when `None`.
        title: the card's heading; generated from the config when `None`.
    """
    folder = None
    if isinstance(source, CenterCLIPConfig):
        config = source
    else:
        folder = Path(source)
        config = CenterCLIPConfig.from_pretrained(folder)
    if processor_settings is None:
        processor_settings = _saved_processor_settings(folder) if folder is not None else {}
    repo_id = repo_id or (folder.resolve().name if folder is not None else "your-namespace/centerclip")
    if base_model is not None and Path(base_model).exists():
        base_model = None  # a local path means nothing on the Hub

    metadata = ModelCardData(
        library_name="transformers",
        pipeline_tag=PIPELINE_TAG,
        tags=TAGS,
        license=license,
        base_model=base_model,
    )
    if training_data is None:
        training_data = (
            f"None beyond the base checkpoint{f' (`{base_model}`)' if base_model else ''}: the weights are "
            "CLIP's, unchanged and not fine-tuned on video, so expect zero-shot CLIP retrieval quality. Fine-tune "
            "with `python -m training.train` of the CenterCLIP plug-in."
        )
    sections = [
        f"# {title or default_title(config)}",
        _describe(config),
        "## How to use",
        "The model's code ships with the weights (`trust_remote_code=True`). With the `modeling-centerclip` "
        "package installed and `import modeling_centerclip` done first, the same calls work without it.",
        SNIPPET.format(repo_id=repo_id),
        "`model.get_video_features(pixel_values=..., video_mask=...).pooler_output` gives video embeddings and "
        "`model.get_text_features(input_ids=..., attention_mask=...).pooler_output` text embeddings, both "
        "before the final L2-normalisation as in CLIP: normalise them to index a video collection.",
        "## Cluster settings",
        _cluster_table(config),
        "## Preprocessing",
        _preprocessing(config, processor_settings),
        "## Evaluation results",
        _results(results, published_results),
        "## Training data",
        training_data,
        "## Limitations",
        _limitations(config),
        "## License",
        f"`{license}`." if license else "Not stated: the base checkpoint's license applies to these weights.",
        "## Citation",
        f"```bibtex\n{CITATION}\n```",
    ]
    card = ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")
    return str(card)


ADAPTER_SNIPPET = """\
```python
from peft import PeftModel
from transformers import AutoProcessor
from modeling_centerclip import CenterCLIPModel  # pip install modeling-centerclip[peft]

model = PeftModel.from_pretrained(CenterCLIPModel.from_pretrained("{base}"), "{repo_id}").eval()
# or Transformers' own loader: model = CenterCLIPModel.from_pretrained("{base}"); model.load_adapter("{repo_id}")
# or merged into the base weights (as fast as the base): model = model.merge_and_unload()
processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)
```"""


def render_adapter_card(folder: str | os.PathLike, *, repo_id: str | None = None,
                        results: Mapping[str, Mapping[str, float]] | None = None, training_data: str | None = None) -> str:
    """A model card for a LoRA adapter folder (`adapter_config.json` + `adapter_model.safetensors`): the base, rank,
    alpha, dropout, target modules and trainable parameters are read from the folder, so they cannot drift."""
    from safetensors import safe_open

    folder = Path(folder)
    adapter = read_adapter_config(folder)
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as handle:
        trainable = sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())
    base = adapter["base_model_name_or_path"]
    repo_id = repo_id or folder.resolve().name
    hub_base = None if Path(base).exists() else base  # a local path means nothing on the Hub
    metadata = ModelCardData(library_name="peft", pipeline_tag=PIPELINE_TAG, tags=[*TAGS, "lora", "peft"],
                             base_model=hub_base)  # fmt: skip
    targets = describe_targets(adapter["target_modules"])
    settings = _table(["setting", "value"], [
        ["base model", f"`{base}`"], ["method", "LoRA (peft)"], ["rank", adapter["r"]],
        ["alpha", adapter["lora_alpha"]], ["dropout", adapter["lora_dropout"]], ["target modules", targets],
        ["trainable parameters", f"{trainable:,}"],
    ])  # fmt: skip
    sections = [
        f"# LoRA adapter (rank {adapter['r']}) for `{base}`",
        f"A LoRA adapter of {trainable:,} parameters for the CenterCLIP model `{base}`: low-rank updates of "
        f"{targets}; every base weight stays as it is. The adapter needs its base.",
        "## How to use", ADAPTER_SNIPPET.format(base=base, repo_id=repo_id),
        "## Adapter", settings,
        "## Evaluation results", _results(results, ()),
        "## Training data", training_data or "Not stated.",
        "## Citation", f"```bibtex\n{CITATION}\n```",
    ]  # fmt: skip
    return str(ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"))


def _saved_processor_settings(folder: Path) -> dict:
    path = folder / "processor_config.json"
    if not path.is_file():
        return {}
    saved = json.loads(path.read_text())
    return {key: saved[key] for key in PROCESSOR_FIELDS if saved.get(key) is not None}


__all__ = ["render_model_card", "default_title", "setting_name"]
