"""CenterCLIP configuration: a `CLIPConfig` plus the token-clustering settings."""

import math
from typing import NamedTuple

from huggingface_hub.dataclasses import strict
from transformers import CLIPConfig

# Reducers applied once, at the cluster layer, to each segment's pooled patch tokens.
SEGMENT_REDUCERS = ("kmedoids", "spectral", "tome", "uniform")
CLUSTER_ALGOS = (*SEGMENT_REDUCERS, "temporal", "none")
CLUSTER_DISTANCES = ("euclidean", "cosine")
# Which segments of a padded (short) video enter the mean: any holding a real frame (this project's), or only those
# whose last frame is real (the reference's `get_video_mask_after_cluster`, for converted reference checkpoints).
SEGMENT_VALID_RULES = ("any_real_frame", "last_frame_real")
CENTERCLIP_FIELDS = (
    "num_frames",
    "cluster_algo",
    "cluster_layer",
    "num_segments",
    "num_centers",
    "cluster_distance",
    "cluster_iters",
    "spectral_sigma",
    "spectral_knn",
    "merge_r",
    "proportional_attention",
    "temporal_groups",
    "temporal_layers",
    "temporal_merge_ratio",
    "segment_valid_rule",
)


def prime_factors(number: int) -> list[int]:
    """Ascending prime factors with repeats: 12 -> [2, 2, 3] (the default temporal groups)."""
    factors, factor = [], 2
    while number > 1:
        while number % factor == 0:
            factors.append(factor)
            number //= factor
        factor += 1
    return factors


class LayerPlan(NamedTuple):
    """What happens at the input of one vision layer (`CenterCLIPConfig.layer_plan`), and the shapes it leaves."""

    step: str | None  # "merge" (progressive), "cluster" (the segment reducer), "temporal", or None
    merged: int  # tokens merged away per sequence by this step ("cluster": tokens in before reduction - 1 - K)
    group: int  # sequences concatenated into one ("cluster": frames per segment; "temporal": the group)
    sequences: int  # sequences per video the layer runs on
    protected: int  # leading [CLS] tokens per sequence (one per frame with "temporal")
    tokens: int  # tokens per sequence the layer runs on, [CLS] included


@strict
class CenterCLIPConfig(CLIPConfig):
    r"""
    Configuration of a [`CenterCLIPModel`]: every field of [`CLIPConfig`] plus the settings of the
    token clustering inside the vision tower (Zhao et al., "CenterCLIP", SIGIR 2022).

    A stock CLIP `config.json` loads into this class and gets the defaults below (ViT-B/32, B6-4x49).

    num_frames (`int`, defaults to 12):
        Frames per video (T).
    cluster_algo (`str`, defaults to `"kmedoids"`):
        How each segment's pooled patch tokens are cut to `num_centers` at the cluster layer: `"kmedoids"` or
        `"spectral"` (medoids), `"tome"` (bipartite soft matching: size-weighted merges), `"uniform"` (evenly
        spaced tokens, the control). Or `"temporal"` (TempMe-style: adjacent frames joined at `temporal_layers`,
        no cluster layer) or `"none"` (CLIP4Clip mean pooling: each frame is encoded alone).
    cluster_layer (`int`, defaults to 6):
        Vision encoder layers run on whole frames before the tokens are clustered (0 clusters the embeddings).
    num_segments (`int`, defaults to 4):
        Segments of `num_frames / num_segments` consecutive frames; the tokens of each are clustered together.
    num_centers (`int`, defaults to 49):
        Cluster centers (medoid tokens) kept per segment.
    cluster_distance (`str`, defaults to `"euclidean"`):
        k-medoids distance, `"euclidean"` or `"cosine"`.
    cluster_iters (`int`, defaults to 100):
        Maximum k-medoids iterations.
    spectral_sigma (`float`, defaults to 2.0):
        Bandwidth of the spectral affinity `exp(-d^2 / (2 sigma^2))`.
    spectral_knn (`int`, *optional*):
        Neighbours kept in the spectral affinity graph; `None` takes `5 * frames_per_segment` (+5 when a frame
        has 100 or more patch tokens).
    merge_r (`int` or `list[int]`, defaults to 0):
        Progressive merging (ToMe): tokens merged away by bipartite soft matching at the input of each layer,
        within each frame before the cluster layer and within each segment (or frame group) after it. An int
        applies to layers 1 and up except the cluster / temporal layers; a list gives one count per layer (0 at
        those layers). A round never takes more than half of a sequence's unprotected tokens.
    proportional_attention (`bool`, defaults to `False`):
        Add `log(size)` of every key to the attention logits, so a merged token weighs as much as the tokens it
        stands for (sizes: tokens merged into it; for medoids, their cluster's size).
    temporal_groups (`list[int]`, *optional*):
        With `"temporal"`: how many adjacent sequences are joined at each of `temporal_layers`; their product must
        divide `num_frames`. `None` takes the prime factors of `num_frames` ([2, 2, 3] for 12).
    temporal_layers (`list[int]`, *optional*):
        With `"temporal"`: the layers (ascending, in [1, layers - 1]) at whose input the groups are joined.
        `None` spreads them evenly ([3, 6, 9] for 12 layers and 3 groups).
    temporal_merge_ratio (`float`, defaults to 0.3):
        With `"temporal"`: share of the joined patch tokens merged away when a group is joined.
    segment_valid_rule (`str`, defaults to `"any_real_frame"`):
        Which segments of a video with padded frames are averaged into its embedding: `"any_real_frame"` (a
        segment holding at least one real frame) or `"last_frame_real"` (the reference implementation's rule: only
        segments whose last frame is real; a video none of whose segments ends on a real frame falls back to
        `"any_real_frame"` rather than an empty mean). Only videos with padding differ.
    """

    model_type = "centerclip"

    num_frames: int = 12
    cluster_algo: str = "kmedoids"
    cluster_layer: int = 6
    num_segments: int = 4
    num_centers: int = 49
    cluster_distance: str = "euclidean"
    cluster_iters: int = 100
    spectral_sigma: float | int = 2.0
    spectral_knn: int | None = None
    merge_r: int | list[int] = 0
    proportional_attention: bool = False
    temporal_groups: list[int] | None = None
    temporal_layers: list[int] | None = None
    temporal_merge_ratio: float | int = 0.3
    segment_valid_rule: str = "any_real_frame"

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        # `from_pretrained(clip_checkpoint, num_segments=3, ...)`: Transformers sets such overrides after
        # construction, which would skip validation and first validate the defaults against the checkpoint's
        # architecture; merge them into the dict instead so the finished config is checked once.
        overrides = {name: kwargs.pop(name) for name in CENTERCLIP_FIELDS if name in kwargs}
        # A stock CLIP config.json says model_type "clip"; what loads into this class is a CenterCLIP config.
        config_dict = {**config_dict, **overrides, "model_type": cls.model_type}
        return super().from_dict(config_dict, **kwargs)

    @property
    def frames_per_segment(self) -> int:
        return self.num_frames // self.num_segments

    @property
    def patches_per_frame(self) -> int:
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2

    @property
    def tokens_per_segment(self) -> int:
        """Patch tokens pooled into one segment before clustering, N = (T / S) * P."""
        return self.frames_per_segment * self.patches_per_frame

    @property
    def default_spectral_knn(self) -> int:
        knn = 5 * self.frames_per_segment
        return knn + 5 if self.patches_per_frame >= 100 else knn

    @property
    def temporal_schedule(self) -> list[tuple[int, int]]:
        """`(layer, group)` pairs of the temporal joins, defaults filled in."""
        groups = self.temporal_groups if self.temporal_groups is not None else prime_factors(self.num_frames)
        layers = self.temporal_layers
        if layers is None:
            num_layers = self.vision_config.num_hidden_layers
            layers = [round((i + 1) * num_layers / (len(groups) + 1)) for i in range(len(groups))]
        return list(zip(layers, groups))

    def merge_counts(self) -> list[int]:
        """Progressive merging: tokens asked to merge at the input of every vision layer."""
        num_layers = self.vision_config.num_hidden_layers
        if isinstance(self.merge_r, list):
            return list(self.merge_r)
        reducer_layers = {self.cluster_layer} if self.cluster_algo in SEGMENT_REDUCERS else set()
        reducer_layers |= {layer for layer, _ in self.temporal_schedule} if self.cluster_algo == "temporal" else set()
        return [0 if i == 0 or i in reducer_layers else self.merge_r for i in range(num_layers)]

    def layer_plan(self) -> list[LayerPlan]:
        """The token schedule of the vision tower, one `LayerPlan` per layer (shapes are static per config)."""
        sequences, protected, tokens = self.num_frames, 1, self.patches_per_frame + 1
        temporal = dict(self.temporal_schedule) if self.cluster_algo == "temporal" else {}
        plan = []
        for layer, requested in enumerate(self.merge_counts()):
            step, merged, group = None, 0, 1
            if self.cluster_algo in SEGMENT_REDUCERS and layer == self.cluster_layer:
                step, group = "cluster", self.frames_per_segment
                merged = group * (tokens - 1) - self.num_centers
                sequences, tokens = self.num_segments, 1 + self.num_centers
            elif layer in temporal:
                step, group = "temporal", temporal[layer]
                patches = group * (tokens - protected)
                merged = min(round(self.temporal_merge_ratio * patches), patches - 1)
                sequences, protected = sequences // group, protected * group
                tokens = protected + patches - merged
            elif requested:
                step, merged = "merge", min(requested, (tokens - protected) // 2)
                tokens -= merged
            plan.append(LayerPlan(step, merged, group, sequences, protected, tokens))
        return plan

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # Checked here rather than in a `validate_*` hook so users get a plain ValueError at construction.
        self._check_cluster_settings()

    def _check_cluster_settings(self):
        def fail(field, message):
            raise ValueError(f"CenterCLIPConfig.{field}={getattr(self, field)!r}: {message}")

        for field in ("spectral_sigma", "logit_scale_init_value", "initializer_factor"):
            value = getattr(self, field, None)
            if isinstance(value, float) and not math.isfinite(value):
                fail(field, "must be a finite number")
        if self.cluster_algo not in CLUSTER_ALGOS:
            fail("cluster_algo", f"must be one of {CLUSTER_ALGOS}")
        if self.cluster_distance not in CLUSTER_DISTANCES:
            fail("cluster_distance", f"must be one of {CLUSTER_DISTANCES}")
        if self.segment_valid_rule not in SEGMENT_VALID_RULES:
            fail("segment_valid_rule", f"must be one of {SEGMENT_VALID_RULES}")
        if self.num_frames < 1:
            fail("num_frames", "must be at least 1")
        if self.cluster_iters < 1:
            fail("cluster_iters", "must be at least 1")
        if self.spectral_sigma <= 0:
            fail("spectral_sigma", "must be positive")
        num_layers = self.vision_config.num_hidden_layers
        self._check_merge_settings(fail, num_layers)
        if self.cluster_algo == "temporal":
            self._check_temporal_settings(fail, num_layers)
        if self.cluster_algo not in SEGMENT_REDUCERS:
            return  # the clustering fields below are unused by mean pooling and temporal merging
        if not 0 <= self.cluster_layer < num_layers:
            fail("cluster_layer", f"must be in [0, {num_layers - 1}] (the vision encoder has {num_layers} layers)")
        if self.num_segments < 1 or self.num_frames % self.num_segments:
            fail("num_segments", f"must be positive and divide num_frames={self.num_frames}")
        pooled = self.frames_per_segment * (self.layer_plan()[self.cluster_layer - 1].tokens - 1) if self.cluster_layer else self.tokens_per_segment
        if not 1 <= self.num_centers <= pooled:
            fail(
                "num_centers",
                f"must be in [1, {pooled}] (a segment of {self.frames_per_segment} frames holds {pooled} patch "
                "tokens at the cluster layer)",
            )
        if self.spectral_knn is not None and not 1 <= self.spectral_knn <= self.tokens_per_segment:
            fail("spectral_knn", f"must be None or in [1, {self.tokens_per_segment}]")

    def _check_merge_settings(self, fail, num_layers: int) -> None:
        counts = self.merge_r if isinstance(self.merge_r, list) else [self.merge_r]
        if isinstance(self.merge_r, list) and len(self.merge_r) != num_layers:
            fail("merge_r", f"a list needs one count per vision layer ({num_layers})")
        if any(count < 0 for count in counts):
            fail("merge_r", "counts must be non-negative")
        if isinstance(self.merge_r, list) and self.cluster_algo in SEGMENT_REDUCERS and self.cluster_layer < num_layers:
            if self.merge_r[self.cluster_layer]:
                fail("merge_r", f"must be 0 at the cluster layer ({self.cluster_layer}), where {self.cluster_algo} reduces")

    def _check_temporal_settings(self, fail, num_layers: int) -> None:
        if not 0 < self.temporal_merge_ratio < 1:
            fail("temporal_merge_ratio", "must be in (0, 1)")
        for field in ("temporal_groups", "temporal_layers"):
            value = getattr(self, field)
            if value is not None and (not value or any(not isinstance(v, int) for v in value)):
                fail(field, "must be None or a non-empty list of integers")
        schedule = self.temporal_schedule
        groups = self.temporal_groups if self.temporal_groups is not None else prime_factors(self.num_frames)
        if any(group < 2 for group in groups) or self.num_frames % math.prod(groups):
            fail("temporal_groups", f"groups must be at least 2 and their product divide num_frames={self.num_frames}")
        layers = [layer for layer, _ in schedule]
        if self.temporal_layers is not None and len(self.temporal_layers) != len(groups):
            fail("temporal_layers", f"needs one layer per group ({len(groups)})")
        if layers != sorted(set(layers)) or not all(1 <= layer < num_layers for layer in layers):
            fail("temporal_layers", f"layers {layers} must be distinct, ascending, in [1, {num_layers - 1}]")
        if isinstance(self.merge_r, list) and any(self.merge_r[layer] for layer in layers):
            fail("merge_r", f"must be 0 at the temporal layers {layers}")


__all__ = ["CenterCLIPConfig", "LayerPlan"]
