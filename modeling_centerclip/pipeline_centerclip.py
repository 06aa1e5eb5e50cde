"""`pipeline("zero-shot-video-classification")` and `pipeline("video-text-retrieval")` for CenterCLIP.

Importing `modeling_centerclip` registers both tasks; a model repository lists them in its config's
`custom_pipelines` (with this file next to the model code), so with only Transformers and a decoder installed

    classify = pipeline("zero-shot-video-classification", model="org/centerclip-vitb32", trust_remote_code=True)
    classify("clip.mp4", candidate_labels=["a dog", "a cat"])   # [{"label": "a dog", "score": 0.93}, ...]

This file imports nothing of the package (it travels alone as the pipeline's remote code): the processor and the
model it drives come from the repository as usual.
"""

from __future__ import annotations

import os
from collections import UserDict

import torch
import torch.nn.functional as F
from transformers import AutoModel, Pipeline

# `custom_pipelines` of a published config: `impl` is "file.Class" inside the repository, `pt` the auto class.
CUSTOM_PIPELINES = {
    "zero-shot-video-classification": {"impl": "pipeline_centerclip.ZeroShotVideoClassificationPipeline",
                                       "pt": ["AutoModel"], "type": "multimodal"},
    "video-text-retrieval": {"impl": "pipeline_centerclip.VideoTextRetrievalPipeline", "pt": ["AutoModel"],
                             "type": "multimodal"},
}  # fmt: skip
PIPELINE_FILE = os.path.basename(__file__)


def _is_encoded_frames(video) -> bool:
    """A list of encoded frames is one video (a list of paths or arrays is several)."""
    return isinstance(video, list) and bool(video) and not isinstance(video[0], (str, os.PathLike, list, tuple)) \
        and not hasattr(video[0], "shape")


def _refuse_unknown(kwargs: dict) -> None:
    if kwargs:  # a typo (`candidate_label=`) must not be silently ignored
        raise ValueError(f"unknown pipeline argument(s) {sorted(kwargs)}")


def _video_name(video) -> str:
    return os.fspath(video) if isinstance(video, (str, os.PathLike)) else "video"


class _VideoPipeline(Pipeline):
    """Shared by both tasks: one input is one video (a file path, a uint8 `[T, H, W, 3]` array or a list of
    encoded frames), decoded and sampled by the model's processor, which names what is wrong with a bad one."""

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.processor is None:
            raise ValueError(f"{self.task} needs the model's processor: pass processor=... (a CenterCLIPProcessor)")
        # The pipeline's batching (`pad_collate_fn`) wants a tokenizer and a feature extractor to read padding
        # settings from; the processor's frames all have one shape, so they are concatenated, never padded.
        self.tokenizer = self.tokenizer or self.processor.tokenizer
        self.feature_extractor = self.feature_extractor or self.processor

    def _video_inputs(self, video) -> dict:
        pixel_values, video_mask = self.processor.load_video(video, name=_video_name(video))
        return {"pixel_values": pixel_values[None].to(self.model.dtype), "video_mask": video_mask[None]}

    def _text_inputs(self, texts: list[str]):
        return self.processor(text=texts, return_tensors="pt").to(self.device)


class ZeroShotVideoClassificationPipeline(_VideoPipeline):
    """Zero-shot video classification: which of `candidate_labels` a video shows, as CLIP's zero-shot image
    pipeline does for images.

    ```python
    >>> classify = pipeline("zero-shot-video-classification", model="org/centerclip-vitb32", trust_remote_code=True)
    >>> classify("clip.mp4", candidate_labels=["cooking", "dancing"])
    [{'label': 'dancing', 'score': 0.87}, {'label': 'cooking', 'score': 0.13}]
    ```

    Input: a video file path, a uint8 `[T, H, W, 3]` RGB frame array or a list of encoded frames (a frame store
    row's `frames`: JPEG/PNG bytes, `{"bytes"}` dicts or PIL images), or a list of those videos (one result per
    video; `batch_size=` batches them through the model).
    Each label is put into `hypothesis_template` (default `"This is a video of {}."`); the scores are the softmax
    over the labels of the model's `logits_per_video`, sorted best first.
    """

    def __call__(self, videos, candidate_labels: list[str] | None = None, **kwargs):
        if _is_encoded_frames(videos):
            return super().__call__([videos], candidate_labels=candidate_labels, **kwargs)[0]
        return super().__call__(videos, candidate_labels=candidate_labels, **kwargs)

    def _sanitize_parameters(self, candidate_labels=None, hypothesis_template=None, **kwargs):
        _refuse_unknown(kwargs)
        preprocess = {}
        if candidate_labels is not None:
            preprocess["candidate_labels"] = candidate_labels
        if hypothesis_template is not None:
            preprocess["hypothesis_template"] = hypothesis_template
        return preprocess, {}, {}

    def preprocess(self, video, candidate_labels=None, hypothesis_template="This is a video of {}."):
        if isinstance(candidate_labels, str):
            candidate_labels = [candidate_labels]
        if not candidate_labels or not all(isinstance(label, str) for label in candidate_labels):
            raise ValueError(f"candidate_labels must be a non-empty list of strings, got {candidate_labels!r}")
        if not isinstance(hypothesis_template, str) or "{}" not in hypothesis_template:
            raise ValueError(f"hypothesis_template must be a string with a {{}} for the label, got "
                             f"{hypothesis_template!r}")  # fmt: skip
        inputs = self._video_inputs(video)
        inputs["candidate_labels"] = list(candidate_labels)
        # In a list, so the pipeline's batching hands it through instead of padding it per video.
        inputs["text_inputs"] = [self.processor(text=[hypothesis_template.format(x) for x in candidate_labels])]
        return inputs

    def _forward(self, model_inputs):
        candidate_labels = model_inputs.pop("candidate_labels")
        text_inputs = model_inputs.pop("text_inputs")
        # One video: [encoding]; a batch: one [encoding] per video, all the same labels.
        text_inputs = text_inputs[0] if isinstance(text_inputs[0], UserDict) else text_inputs[0][0]
        outputs = self.model(**text_inputs, **model_inputs)
        return {"candidate_labels": candidate_labels, "logits": outputs.logits_per_video}

    def postprocess(self, model_outputs):
        logits = model_outputs["logits"][0].float()
        if not torch.isfinite(logits).all():
            raise ValueError("the model gave non-finite logits for this video")
        scores = logits.softmax(dim=-1).tolist()
        pairs = sorted(zip(scores, model_outputs["candidate_labels"]), key=lambda pair: -pair[0])
        return [{"label": label, "score": score} for score, label in pairs]


class VideoTextRetrievalPipeline(_VideoPipeline):
    """Text-video retrieval in one call: rank `videos` for a `text`, or `texts` for a `video`.

    ```python
    >>> retrieve = pipeline("video-text-retrieval", model="org/centerclip-vitb32", trust_remote_code=True)
    >>> retrieve(text="a dog catches a frisbee", videos=["a.mp4", "b.mp4", "c.mp4"], top_k=2)
    [{'video': 'b.mp4', 'index': 1, 'score': 0.31}, {'video': 'a.mp4', 'index': 0, 'score': 0.12}]
    >>> retrieve(video="a.mp4", texts=["a dog", "a cat"])
    [{'text': 'a cat', 'index': 1, 'score': 0.28}, {'text': 'a dog', 'index': 0, 'score': 0.05}]
    ```

    Videos are what the zero-shot pipeline takes (paths, uint8 frame arrays, lists of encoded frames), embedded in
    batches of the pipeline's `batch_size`; a list of texts (`text=[...]`) gives one ranking per text, the videos
    embedded once. `score` is the cosine similarity of the two embeddings (the model's logits before its scale),
    best first; `video` is the path when a video was given as one, else its `index` says which.
    """

    def __call__(self, text=None, *, videos=None, video=None, texts=None, top_k: int | None = None, **kwargs):
        if (text is None) == (video is None) or (text is not None and texts is not None) or (
                video is not None and videos is not None):  # fmt: skip
            raise ValueError("video-text-retrieval takes text= with videos= (rank the videos for the text), or "
                             "video= with texts= (rank the texts for the video)")  # fmt: skip
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
        if text is not None:
            queries = [text] if isinstance(text, str) else text
            if not isinstance(videos, (list, tuple)) or not videos:
                raise ValueError("videos must be a non-empty list of videos to rank")
            scores = self._embed_texts(queries, "text") @ self._embed_videos(list(videos), **kwargs).T
            candidates = [{"video": os.fspath(v) if isinstance(v, (str, os.PathLike)) else None} for v in videos]
            rankings = [self._ranking(row, candidates, top_k) for row in scores]
            return rankings[0] if isinstance(text, str) else rankings
        if not isinstance(texts, (list, tuple)) or not texts:
            raise ValueError("texts must be a non-empty list of strings to rank")
        scores = self._embed_videos([video], **kwargs) @ self._embed_texts(texts, "texts").T
        return self._ranking(scores[0], [{"text": t} for t in texts], top_k)

    @staticmethod
    def _ranking(scores: torch.Tensor, candidates: list[dict], top_k: int | None) -> list[dict]:
        order = scores.argsort(descending=True, stable=True)[:top_k].tolist()
        return [{**candidates[i], "index": i, "score": float(scores[i])} for i in order]

    def _embed_texts(self, texts, name: str) -> torch.Tensor:
        if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"{name} must be a string or a non-empty list of strings, got {texts!r}")
        with torch.inference_mode():
            embeds = self.model.get_text_features(**self._text_inputs(list(texts))).pooler_output
        return F.normalize(embeds.float(), dim=-1).cpu()

    def _embed_videos(self, videos: list, **kwargs) -> torch.Tensor:
        # The pipeline's own loop: preprocess in DataLoader workers, `batch_size` videos per forward pass.
        return torch.cat(super().__call__(videos, **kwargs))

    def _sanitize_parameters(self, **kwargs):
        _refuse_unknown(kwargs)
        return {}, {}, {}

    def preprocess(self, video):
        return self._video_inputs(video)

    def _forward(self, model_inputs):
        embeds = self.model.get_video_features(**model_inputs).pooler_output
        if not torch.isfinite(embeds).all():
            raise ValueError("the model gave a non-finite video embedding")
        return {"embeds": F.normalize(embeds.float(), dim=-1)}

    def postprocess(self, model_outputs):
        return model_outputs["embeds"].cpu()


def register_pipelines() -> None:
    """Make both tasks known to `transformers.pipeline` (once; what `import modeling_centerclip` does)."""
    from transformers.pipelines import PIPELINE_REGISTRY

    for task, pipeline_class in (("zero-shot-video-classification", ZeroShotVideoClassificationPipeline),
                                 ("video-text-retrieval", VideoTextRetrievalPipeline)):  # fmt: skip
        if PIPELINE_REGISTRY.supported_tasks.get(task, {}).get("impl") is not pipeline_class:
            PIPELINE_REGISTRY.register_pipeline(task, pipeline_class=pipeline_class, pt_model=AutoModel,
                                                type="multimodal")  # fmt: skip


__all__ = ["CUSTOM_PIPELINES", "VideoTextRetrievalPipeline", "ZeroShotVideoClassificationPipeline",
           "register_pipelines"]  # fmt: skip
