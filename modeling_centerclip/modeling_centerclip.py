"""PyTorch CenterCLIP: CLIP whose vision tower clusters the redundant tokens of consecutive video frames.

The vision path (DESIGN.md): embed every frame, run the first `cluster_layer` encoder layers per frame,
pool the patch tokens of each segment of `T / S` consecutive frames, keep the K medoid tokens of each
segment plus the segment's mean [CLS], run the remaining layers on `[B*S, K+1, D]`, and average the
normalised segment embeddings. Every module and weight is CLIP's own, so stock CLIP checkpoints load as is.
"""

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from .clustering import kmedoids, spectral_clustering
from .configuration_centerclip import CenterCLIPConfig


def video_text_contrastive_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy of a `[N, N]` text-video similarity matrix whose diagonal holds the pairs."""
    targets = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    return (F.cross_entropy(logits_per_text, targets) + F.cross_entropy(logits_per_text.t(), targets)) / 2


@dataclass
class CenterCLIPOutput(ModelOutput):
    r"""
    loss (`torch.Tensor` of shape `()`, *optional*, returned when `return_loss=True`):
        Symmetric text-video contrastive loss.
    logits_per_text (`torch.Tensor` of shape `(num_texts, num_videos)`):
        `logit_scale.exp() * text_embeds @ video_embeds.T`.
    logits_per_video (`torch.Tensor` of shape `(num_videos, num_texts)`):
        The transpose of `logits_per_text`.
    text_embeds (`torch.Tensor` of shape `(num_texts, projection_dim)`):
        L2-normalised text embeddings.
    video_embeds (`torch.Tensor` of shape `(num_videos, projection_dim)`):
        L2-normalised video embeddings.
    text_model_output (`BaseModelOutputWithPooling`):
        Output of [`CenterCLIPModel.get_text_features`].
    vision_model_output (`BaseModelOutputWithPooling`):
        Output of [`CenterCLIPModel.get_video_features`].
    """

    loss: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    logits_per_video: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    video_embeds: torch.Tensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple[Any]:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


def cluster_segments(hidden_states: torch.Tensor, config: CenterCLIPConfig) -> torch.Tensor:
    """Replace each segment's frames by its mean [CLS] and the medoids of its pooled patch tokens.

    Args:
        hidden_states: `[B*T, 1+P, D]`, frames of one video consecutive.
    Returns:
        `[B*S, 1+K, D]`; the kept tokens stay in frame-then-raster order and keep their gradients.
    """
    frames, seq_len, dim = hidden_states.shape
    per_segment = config.frames_per_segment
    segments = hidden_states.view(frames // per_segment, per_segment, seq_len, dim)
    cls = segments[:, :, 0].mean(dim=1, keepdim=True)  # [B*S, 1, D]
    patches = segments[:, :, 1:].reshape(segments.shape[0], per_segment * (seq_len - 1), dim)  # [B*S, N, D]
    if config.cluster_algo == "spectral":
        knn = config.spectral_knn or config.default_spectral_knn
        _, medoids = spectral_clustering(
            patches, config.num_centers, sigma=config.spectral_sigma, knn=knn, max_iters=config.cluster_iters
        )
    else:
        _, medoids = kmedoids(
            patches, config.num_centers, distance=config.cluster_distance, max_iters=config.cluster_iters
        )
    centers = patches.gather(1, medoids[:, :, None].expand(-1, -1, dim))  # [B*S, K, D]
    return torch.cat([cls, centers], dim=1)


class CenterCLIPModel(CLIPModel):
    """CLIP with a token-clustering video path: `get_video_features` and a text-video `forward`.

    Text (`get_text_features`) and single images (`get_image_features`) behave exactly as in CLIP.
    """

    config_class = CenterCLIPConfig
    config: CenterCLIPConfig
    main_input_name = "input_ids"
    input_modalities = ("video", "text")

    def _encode_frames(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision tower with clustering. `[B*T, 3, H, W]` -> pre-projection [CLS] states `[B*S, D]`."""
        vision = self.vision_model
        hidden_states = vision.pre_layrnorm(vision.embeddings(pixel_values))
        for index, layer in enumerate(vision.encoder.layers):
            if index == self.config.cluster_layer and self.config.cluster_algo != "none":
                hidden_states = cluster_segments(hidden_states, self.config)
            hidden_states = layer(hidden_states, None)  # CLIP layers are GradientCheckpointingLayers
        return vision.post_layernorm(hidden_states[:, 0])

    def get_video_features(
        self, pixel_values: torch.Tensor, video_mask: torch.Tensor | None = None
    ) -> BaseModelOutputWithPooling:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, num_frames, 3, height, width)`):
                Frames, preprocessed as for CLIP (see [`CenterCLIPProcessor`]).
            video_mask (`torch.Tensor` of shape `(batch_size, num_frames)`, *optional*):
                True for real frames, False for padding (which repeats the last real frame).

        Returns:
            `BaseModelOutputWithPooling`: `pooler_output` `(batch_size, projection_dim)` is the L2-normalised
            video embedding, the mean of the normalised segment embeddings over segments holding a real frame;
            `last_hidden_state` `(batch_size, num_segments, projection_dim)` holds the normalised segment
            embeddings (one per frame when `cluster_algo="none"`).
        """
        if pixel_values.ndim != 5:
            raise ValueError(f"pixel_values must be [batch, frames, 3, H, W], got shape {tuple(pixel_values.shape)}")
        batch, num_frames = pixel_values.shape[:2]
        clustered = self.config.cluster_algo != "none"
        if clustered and num_frames != self.config.num_frames:
            raise ValueError(f"pixel_values has {num_frames} frames; config.num_frames={self.config.num_frames}")
        if video_mask is None:
            video_mask = torch.ones(batch, num_frames, dtype=torch.bool, device=pixel_values.device)
        segments_per_video = self.config.num_segments if clustered else num_frames
        valid = video_mask.bool().view(batch, segments_per_video, -1).any(dim=-1)  # [B, S]

        pooled = self._encode_frames(pixel_values.flatten(0, 1))
        segment_embeds = F.normalize(self.visual_projection(pooled), dim=-1).view(batch, segments_per_video, -1)
        weights = valid.to(segment_embeds.dtype)[:, :, None]
        mean = (segment_embeds * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)
        return BaseModelOutputWithPooling(last_hidden_state=segment_embeds, pooler_output=F.normalize(mean, dim=-1))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        video_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        **kwargs,
    ) -> CenterCLIPOutput:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(num_texts, seq_len)`): tokenized captions.
            pixel_values (`torch.Tensor` of shape `(num_videos, num_frames, 3, H, W)`): video frames.
            attention_mask (`torch.Tensor` of shape `(num_texts, seq_len)`, *optional*): text padding mask.
            video_mask (`torch.Tensor` of shape `(num_videos, num_frames)`, *optional*): True for real frames.
            return_loss (`bool`, *optional*): also return the symmetric contrastive loss (needs
                `num_texts == num_videos`, pair i being text i and video i).

        Example:

        ```python
        >>> model = AutoModel.from_pretrained("org/centerclip-vitb32", trust_remote_code=True)
        >>> processor = AutoProcessor.from_pretrained("org/centerclip-vitb32", trust_remote_code=True)
        >>> inputs = processor(text=["a dog catches a frisbee"], videos=["clip.mp4"], return_tensors="pt")
        >>> model(**inputs).logits_per_text  # [1, 1]
        ```
        """
        video_outputs = self.get_video_features(pixel_values=pixel_values, video_mask=video_mask)
        text_outputs = self.get_text_features(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )
        video_embeds = video_outputs.pooler_output
        text_embeds = F.normalize(text_outputs.pooler_output, dim=-1)
        logits_per_text = self.logit_scale.exp() * text_embeds @ video_embeds.t()
        loss = video_text_contrastive_loss(logits_per_text) if return_loss else None
        return CenterCLIPOutput(
            loss=loss,
            logits_per_text=logits_per_text,
            logits_per_video=logits_per_text.t(),
            text_embeds=text_embeds,
            video_embeds=video_embeds,
            text_model_output=text_outputs,
            vision_model_output=video_outputs,
        )


__all__ = ["CenterCLIPModel", "CenterCLIPOutput", "cluster_segments", "video_text_contrastive_loss"]
