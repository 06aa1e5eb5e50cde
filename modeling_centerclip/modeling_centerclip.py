"""PyTorch CenterCLIP: CLIP whose vision tower clusters the redundant tokens of consecutive video frames.

The vision path (docs/design.md): embed every frame, run the first `cluster_layer` encoder layers per frame,
pool the patch tokens of each segment of `T / S` consecutive frames, keep the K medoid tokens of each
segment plus the segment's mean [CLS], run the remaining layers on `[B*S, K+1, D]`, and average the
normalised segment embeddings. Every module and weight is CLIP's own, so stock CLIP checkpoints load as is.
"""

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from transformers import CLIPModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput, logging
from transformers.utils.generic import can_return_tuple

from .clustering import kmedoids, spectral_clustering
from .configuration_centerclip import SEGMENT_REDUCERS, CenterCLIPConfig, LayerPlan
from .input_checks import NonFiniteTokensError, check_finite_tokens, check_video_mask
from .merging import attention_bias, cluster_sizes, known_all, merge_to_budget, uniform_keep

logger = logging.get_logger(__name__)


def video_text_contrastive_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy of a `[N, N]` text-video similarity matrix whose diagonal holds the pairs."""
    targets = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    return (F.cross_entropy(logits_per_text, targets) + F.cross_entropy(logits_per_text.t(), targets)) / 2


@dataclass
class CenterCLIPVideoOutput(BaseModelOutputWithPooling):
    r"""
    Output of [`CenterCLIPModel.get_video_features`]. B videos, T frames, S segments, P patches per frame,
    K centers, D hidden size, E projection size; with `cluster_algo="none"` or `"temporal"` every frame is a
    segment (S = T). With progressive (`merge_r`) or temporal merging the sequence counts and lengths of every
    layer are those of `config.layer_plan()` instead of the ones below.

    last_hidden_state (`torch.Tensor` of shape `(B * S, 1 + K, D)`):
        The vision tower's last hidden states (before the post-layernorm), one sequence per segment: its [CLS]
        then its kept tokens. `(B * T, 1 + P, D)` with `cluster_algo="none"`.
    pooler_output (`torch.Tensor` of shape `(B, E)`):
        The video embedding before the final L2-normalisation, as CLIP's `get_image_features`: the mean of the
        normalised segment embeddings over the segments of `segment_mask`.
    hidden_states (`tuple(torch.Tensor)`, *optional*, returned with `output_hidden_states=True`):
        `num_hidden_layers + 1` tensors, the input of every vision layer and the last output. Entries
        `0 .. cluster_layer` are per frame, `(B * T, 1 + P, D)`; entries after the cluster layer per segment,
        `(B * S, 1 + K, D)`.
    attentions (`tuple(torch.Tensor)`, *optional*, returned with `output_attentions=True` and eager attention):
        `num_hidden_layers` tensors: `(B * T, heads, 1 + P, 1 + P)` for the layers before `cluster_layer`,
        `(B * S, heads, 1 + K, 1 + K)` from it on.
    segment_embeds (`torch.Tensor` of shape `(B, S, E)`):
        The L2-normalised segment embeddings (frame embeddings with `cluster_algo="none"`).
    segment_mask (`torch.BoolTensor` of shape `(B, S)`):
        True for the segments averaged into `pooler_output`: those holding a real frame, or with
        `config.segment_valid_rule="last_frame_real"` those whose last frame is real.
    cluster_medoids (`torch.LongTensor` of shape `(B, S, K)`, *optional*, returned with `output_clusters=True`):
        The kept tokens of each segment, ascending, as indices into the segment's pooled patch tokens: token `n`
        is patch `n % P` (raster order) of the segment's frame `n // P` (with `merge_r`, P is the patch tokens
        left per frame at the cluster layer). For `"tome"`, the token each merged group was merged into.
    cluster_assignment (`torch.LongTensor` of shape `(B, S, (T / S) * P)`, *optional*, with `output_clusters=True`):
        The cluster of every pooled patch token, an index into `cluster_medoids`; -1 for tokens of padded frames.
    """

    segment_embeds: torch.Tensor | None = None
    segment_mask: torch.Tensor | None = None
    cluster_medoids: torch.Tensor | None = None
    cluster_assignment: torch.Tensor | None = None


@dataclass
class CenterCLIPOutput(ModelOutput):
    r"""
    The fields are in the order of Transformers' `XCLIPOutput` (the library's video-text output), so a tuple
    (`return_dict=False`) indexes like X-CLIP's: `loss` (only with `return_loss=True`), `logits_per_text`,
    `text_embeds`, `text_model_output`, `vision_model_output`, `logits_per_video`, `video_embeds`.

    loss (`torch.Tensor` of shape `()`, *optional*, returned when `return_loss=True`):
        Symmetric text-video contrastive loss.
    logits_per_text (`torch.Tensor` of shape `(num_texts, num_videos)`):
        `logit_scale.exp() * text_embeds @ video_embeds.T`.
    text_embeds (`torch.Tensor` of shape `(num_texts, projection_dim)`):
        L2-normalised text embeddings.
    text_model_output (`BaseModelOutputWithPooling`):
        Output of [`CenterCLIPModel.get_text_features`].
    vision_model_output (`CenterCLIPVideoOutput`):
        Output of [`CenterCLIPModel.get_video_features`].
    logits_per_video (`torch.Tensor` of shape `(num_videos, num_texts)`):
        The transpose of `logits_per_text`.
    video_embeds (`torch.Tensor` of shape `(num_videos, projection_dim)`):
        L2-normalised video embeddings.
    """

    loss: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: CenterCLIPVideoOutput | None = None
    logits_per_video: torch.Tensor | None = None
    video_embeds: torch.Tensor | None = None

    def to_tuple(self) -> tuple[Any]:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


class ClusteredSegments(NamedTuple):
    """What `cluster_segments` returns; S' = B * S segments in all."""

    hidden_states: torch.Tensor  # [S', 1 + K, D]: mean [CLS], then the kept tokens in frame-then-raster order
    sizes: torch.Tensor  # [S', 1 + K] float: input patches each token stands for ([CLS]: 1)
    token_mask: torch.Tensor | None  # [S', 1 + K] bool, False for padding kept to fill K; None when all real
    medoids: torch.Tensor  # [S', K] int64, indices into the segment's pooled patch tokens (representatives)
    assignment: torch.Tensor  # [S', N] int64, the kept token each pooled token went to; -1 for padded frames


def cluster_segments(
    hidden_states: torch.Tensor,
    config: CenterCLIPConfig,
    frame_mask: torch.Tensor | None = None,
    sizes: torch.Tensor | None = None,
) -> ClusteredSegments:
    """Replace each segment's frames by its mean [CLS] and K tokens of its pooled patch tokens.

    `config.cluster_algo` picks the K tokens: medoids (`kmedoids`, `spectral`), size-weighted bipartite merges
    (`tome`) or evenly spaced tokens (`uniform`). Padded frames (`frame_mask` False) take no part: the [CLS]
    mean and the reducer see only real frames, so their content changes nothing. A segment with fewer real
    tokens than K keeps padding tokens to fill its sequence (`token_mask` False, hidden from the later layers).
    A segment with no real frame at all is computed as if every frame were real (the caller leaves it out).

    Args:
        hidden_states: `[B*T, 1+P, D]`, frames of one video consecutive (P: patch tokens left per frame).
        frame_mask: `[B*T]` bool, False for padded frames; None when every frame is real.
        sizes: `[B*T, 1+P]` token sizes from earlier merging; None for ones.
    """
    frames, seq_len, dim = hidden_states.shape
    per_segment, num_centers = config.frames_per_segment, config.num_centers
    segments = hidden_states.view(frames // per_segment, per_segment, seq_len, dim)
    patches = segments[:, :, 1:].reshape(segments.shape[0], per_segment * (seq_len - 1), dim)  # [B*S, N, D]
    patch_sizes = (
        patches.new_ones(patches.shape[:2], dtype=torch.float32) if sizes is None
        else sizes.view(-1, per_segment, seq_len)[:, :, 1:].reshape(patches.shape[:2])
    )  # fmt: skip
    token_mask, to_cluster = None, patches
    if frame_mask is None:
        cls = segments[:, :, 0].mean(dim=1, keepdim=True)  # [B*S, 1, D]
    else:
        real = frame_mask.view(-1, per_segment)
        # Zeroing padding makes a segment without any real frame cluster identically whatever it holds.
        to_cluster = torch.where(real.repeat_interleave(seq_len - 1, dim=1)[:, :, None], patches, 0)
        real = real | ~real.any(dim=1, keepdim=True)
        cls = torch.where(real[:, :, None], segments[:, :, 0], 0).sum(dim=1, keepdim=True)
        cls = cls / real.sum(dim=1).to(cls.dtype)[:, None, None]
        if not known_all(real):
            token_mask = real.repeat_interleave(seq_len - 1, dim=1)  # [B*S, N]
    if config.cluster_algo == "tome":
        merged = merge_to_budget(to_cluster, num_centers, sizes=patch_sizes, mask=token_mask)
        centers, center_sizes, medoids = merged.tokens, merged.sizes, merged.kept
        kept_real = merged.mask
        assignment = merged.destination if token_mask is None else merged.destination.masked_fill(~token_mask, -1)
    else:
        if config.cluster_algo == "spectral":
            knn = config.spectral_knn or config.default_spectral_knn
            assignment, medoids = spectral_clustering(
                to_cluster, num_centers, mask=token_mask, sigma=config.spectral_sigma, knn=knn,
                max_iters=config.cluster_iters,
            )
        elif config.cluster_algo == "uniform":
            medoids, assignment = uniform_keep(patches.shape[1], num_centers, token_mask, len(patches), patches.device)
        else:
            assignment, medoids = kmedoids(
                to_cluster, num_centers, mask=token_mask, distance=config.cluster_distance,
                max_iters=config.cluster_iters,
            )
        centers = to_cluster.gather(1, medoids[:, :, None].expand(-1, -1, dim))  # [B*S, K, D]
        center_sizes = cluster_sizes(patch_sizes, assignment, num_centers)
        kept_real = None if token_mask is None else token_mask.gather(1, medoids)
    mask = None
    if kept_real is not None and not known_all(kept_real):
        mask = torch.cat([kept_real.new_ones(kept_real.shape[0], 1), kept_real], dim=1)
    return ClusteredSegments(
        torch.cat([cls, centers], dim=1), F.pad(center_sizes, (1, 0), value=1.0), mask, medoids, assignment
    )


class TokenState(NamedTuple):
    """The vision tower's token sequences between two layers."""

    hidden_states: torch.Tensor  # [sequences, tokens, D]
    sizes: torch.Tensor | None  # [sequences, tokens] float, None while every token is one patch
    mask: torch.Tensor | None  # [sequences, tokens] bool, False for padding; None when all are real


def merge_sequences(state: TokenState, plan: LayerPlan, frame_mask: torch.Tensor | None) -> TokenState:
    """A progressive ("merge") or temporal step of `CenterCLIPConfig.layer_plan` on every sequence."""
    hidden, sizes, mask = state
    if plan.step == "temporal":  # join `group` adjacent sequences: all their [CLS] first, then their patches
        old_protected = plan.protected // plan.group
        if mask is None and frame_mask is not None:  # sequences are still single frames here
            mask = frame_mask[:, None].expand(-1, hidden.shape[1])
            hidden = torch.where(frame_mask[:, None, None], hidden, 0)  # masked keys, but 0 * NaN would leak
        hidden, sizes, mask = (
            None if x is None else join_groups(x, plan.group, old_protected) for x in (hidden, sizes, mask)
        )
    if sizes is None:
        sizes = hidden.new_ones(hidden.shape[:2], dtype=torch.float32)
    merged = merge_to_budget(hidden, plan.tokens, sizes=sizes, mask=mask, protected=plan.protected)
    return TokenState(merged.tokens, merged.sizes, merged.mask)


def join_groups(x: torch.Tensor, group: int, protected: int) -> torch.Tensor:
    """`[n, L, ...]` -> `[n / group, group * L, ...]`: the protected tokens of `group` consecutive sequences,
    then their other tokens, each part in sequence order."""
    x = x.view(x.shape[0] // group, group, *x.shape[1:])
    return torch.cat([x[:, :, :protected].flatten(1, 2), x[:, :, protected:].flatten(1, 2)], dim=1)


class CenterCLIPModel(CLIPModel):
    """CLIP with a token-clustering video path: `get_video_features` and a text-video `forward`.

    Text (`get_text_features`) and single images (`get_image_features`) behave exactly as in CLIP.
    """

    config_class = CenterCLIPConfig
    config: CenterCLIPConfig
    main_input_name = "input_ids"
    input_modalities = ("video", "text")

    def _check_video_inputs(
        self, pixel_values: torch.Tensor | None, video_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, bool]:
        """Validate the video inputs against each other and the config; returns the mask as bool `[B, T]` and
        whether any frame may be padding (eager: one host sync, two when a frame is padded, none without a mask;
        compiled: no sync, a mask is taken as possibly padded and the empty-video check is a graph op)."""
        if pixel_values is None:
            raise ValueError("pixel_values is required: videos as [batch, frames, 3, H, W] (see CenterCLIPProcessor)")
        if pixel_values.ndim != 5:
            raise ValueError(f"pixel_values must be [batch, frames, 3, H, W], got shape {tuple(pixel_values.shape)}")
        batch, num_frames = pixel_values.shape[:2]
        if batch == 0:
            raise ValueError("pixel_values holds no video (batch size 0)")
        # The config is mutable; a field changed after construction is checked here, not deep in a reshape.
        self.config._check_cluster_settings()
        if self.config.cluster_algo != "none" and num_frames != self.config.num_frames:
            raise ValueError(f"pixel_values has {num_frames} frames; config.num_frames={self.config.num_frames}")
        if video_mask is None:
            return torch.ones(batch, num_frames, dtype=torch.bool, device=pixel_values.device), False
        if tuple(video_mask.shape) != (batch, num_frames):
            raise ValueError(
                f"video_mask has shape {tuple(video_mask.shape)} but pixel_values {tuple(pixel_values.shape)} needs "
                f"[batch, frames] = {(batch, num_frames)}"
            )
        video_mask = video_mask.to(device=pixel_values.device, dtype=torch.bool)
        has_padding = not known_all(video_mask)
        if has_padding or num_frames == 0:  # an all-real mask (of frames) leaves no video empty: no second sync
            check_video_mask(video_mask)
        return video_mask, has_padding

    def _encode_frames(
        self,
        pixel_values: torch.Tensor,
        frame_mask: torch.Tensor,
        has_padding: bool,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple | None, tuple | None, ClusteredSegments | None]:
        """Vision tower with the configured token reducers on `[B*T, 3, H, W]` frames.

        Returns the last hidden states, the post-layernorm [CLS] of each segment `[B*S, D]` (of each frame with
        `"none"` and `"temporal"`), the hidden states and attentions when asked for, and the segment reduction
        (None without a cluster layer).
        """
        vision, config = self.vision_model, self.config
        hidden_states = vision.pre_layrnorm(vision.embeddings(pixel_values))
        all_states = [hidden_states] if output_hidden_states else None
        attentions, hooks = [], []
        if output_attentions:
            if config.vision_config._attn_implementation != "eager":
                logger.warning_once("Attention weights need attn_implementation='eager'; none are returned.")
            else:  # CLIP's layers drop the weights their attention returns; catch them on the way out
                hooks = [
                    layer.self_attn.register_forward_hook(lambda module, args, output: attentions.append(output[1]))
                    for layer in vision.encoder.layers
                ]
        layer_plan = config.layer_plan()  # built once per forward: the loop and the pooling both follow it
        state, bias, clusters = TokenState(hidden_states, None, None), None, None
        padded = frame_mask if has_padding else None
        try:
            for index, (layer, plan) in enumerate(zip(vision.encoder.layers, layer_plan)):
                # The one place where tokens are reduced: what `layer_plan` says happens at this layer's input.
                if plan.step == "cluster":
                    check_finite_tokens(state.hidden_states, frame_mask, index, config.num_frames)
                    clusters = cluster_segments(state.hidden_states, config, padded, state.sizes)
                    state = TokenState(clusters.hidden_states, clusters.sizes, clusters.token_mask)
                elif plan.step is not None:
                    state = merge_sequences(state, plan, padded)
                if plan.step is not None:
                    bias = attention_bias(state.mask, state.sizes, config.proportional_attention, state.hidden_states.dtype)
                hidden_states = layer(state.hidden_states, bias)  # CLIP layers are GradientCheckpointingLayers
                state = state._replace(hidden_states=hidden_states)
                if all_states is not None:
                    all_states.append(hidden_states)
        finally:
            for hook in hooks:
                hook.remove()
        # One [CLS] per segment, or per frame with temporal merging (they lead each sequence, in frame order).
        pooled = vision.post_layernorm(hidden_states[:, : layer_plan[-1].protected]).flatten(0, 1)
        return (
            hidden_states,
            pooled,
            tuple(all_states) if all_states is not None else None,
            tuple(attentions) if output_attentions else None,
            clusters,
        )

    @can_return_tuple
    def get_video_features(
        self,
        pixel_values: torch.Tensor | None = None,
        video_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        output_clusters: bool = False,
    ) -> CenterCLIPVideoOutput:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, num_frames, 3, height, width)`):
                Frames, preprocessed as for CLIP (see [`CenterCLIPProcessor`]).
            video_mask (`torch.Tensor` of shape `(batch_size, num_frames)`, *optional*):
                True for real frames, False for padding. Padded frames change nothing, whatever they hold.
            output_hidden_states / output_attentions (`bool`, *optional*):
                Return the vision path's per-layer states / attention weights (shapes in [`CenterCLIPVideoOutput`]).
            output_clusters (`bool`, defaults to `False`):
                Return each segment's kept tokens (`cluster_medoids`) and token assignment (`cluster_assignment`).

        Returns:
            [`CenterCLIPVideoOutput`]: `pooler_output` `(batch_size, projection_dim)` is the video embedding before
            the final L2-normalisation, like `get_image_features`; `segment_embeds` the normalised segment
            embeddings.
        """
        video_mask, has_padding = self._check_video_inputs(pixel_values, video_mask)
        config = self.config
        if output_hidden_states is None:
            output_hidden_states = config.output_hidden_states
        if output_attentions is None:
            output_attentions = config.output_attentions
        batch, num_frames = pixel_values.shape[:2]
        segments_per_video = config.num_segments if config.cluster_algo in SEGMENT_REDUCERS else num_frames
        segment_frames = video_mask.view(batch, segments_per_video, -1)
        segment_mask = segment_frames.any(dim=-1)  # [B, S]
        if config.segment_valid_rule == "last_frame_real":  # the reference's rule; tensor ops only (no host sync)
            last_real = segment_frames[:, :, -1]
            segment_mask = last_real | (segment_mask & ~last_real.any(dim=1, keepdim=True))

        last_hidden_state, pooled, hidden_states, attentions, clusters = self._encode_frames(
            pixel_values.flatten(0, 1), video_mask.flatten(), has_padding, output_hidden_states, output_attentions
        )
        segment_embeds = F.normalize(self.visual_projection(pooled), dim=-1).view(batch, segments_per_video, -1)
        # `where`, not a product: a padded segment's embedding may be anything, NaN included.
        summed = torch.where(segment_mask[:, :, None], segment_embeds, 0).sum(dim=1)
        mean = summed / segment_mask.sum(dim=1, keepdim=True).to(summed.dtype)
        medoids = assignment = None
        if output_clusters and clusters is not None:
            medoids = clusters.medoids.view(batch, segments_per_video, -1)
            assignment = clusters.assignment.view(batch, segments_per_video, -1)
        return CenterCLIPVideoOutput(
            last_hidden_state=last_hidden_state,
            pooler_output=mean,
            hidden_states=hidden_states,
            attentions=attentions,
            segment_embeds=segment_embeds,
            segment_mask=segment_mask,
            cluster_medoids=medoids,
            cluster_assignment=assignment,
        )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        video_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        output_clusters: bool = False,
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
            output_hidden_states / output_attentions (`bool`, *optional*): per-layer states / attention weights
                of both towers, in `text_model_output` and `vision_model_output`.
            output_clusters (`bool`): each segment's kept tokens and assignment in `vision_model_output`.

        Example:

        ```python
        >>> model = AutoModel.from_pretrained("org/centerclip-vitb32", trust_remote_code=True)
        >>> processor = AutoProcessor.from_pretrained("org/centerclip-vitb32", trust_remote_code=True)
        >>> inputs = processor(text=["a dog catches a frisbee"], videos=["clip.mp4"], return_tensors="pt")
        >>> model(**inputs).logits_per_text  # [1, 1]
        ```
        """
        if input_ids is None:
            raise ValueError("input_ids is required: tokenized captions as [num_texts, seq_len] (see CenterCLIPProcessor)")
        if pixel_values is None:
            raise ValueError("pixel_values is required: videos as [num_videos, frames, 3, H, W] (see CenterCLIPProcessor)")
        if return_loss and input_ids.shape[0] != pixel_values.shape[0]:
            raise ValueError(
                f"return_loss=True pairs text i with video i, but got {input_ids.shape[0]} texts and "
                f"{pixel_values.shape[0]} videos"
            )
        video_outputs = self.get_video_features(
            pixel_values=pixel_values,
            video_mask=video_mask,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            output_clusters=output_clusters,
        )
        if output_hidden_states is not None:
            kwargs["output_hidden_states"] = output_hidden_states
        if output_attentions is not None:
            kwargs["output_attentions"] = output_attentions
        text_outputs = self.get_text_features(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )
        video_embeds = F.normalize(video_outputs.pooler_output, dim=-1)
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


__all__ = [
    "CenterCLIPModel",
    "CenterCLIPOutput",
    "CenterCLIPVideoOutput",
    "ClusteredSegments",
    "NonFiniteTokensError",
    "cluster_segments",
    "video_text_contrastive_loss",
]
