"""CenterCLIP configuration: a `CLIPConfig` plus the token-clustering settings."""

import math

from huggingface_hub.dataclasses import strict
from transformers import CLIPConfig

CLUSTER_ALGOS = ("kmedoids", "spectral", "none")
CLUSTER_DISTANCES = ("euclidean", "cosine")
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
)


@strict
class CenterCLIPConfig(CLIPConfig):
    r"""
    Configuration of a [`CenterCLIPModel`]: every field of [`CLIPConfig`] plus the settings of the
    token clustering inside the vision tower (Zhao et al., "CenterCLIP", SIGIR 2022).

    A stock CLIP `config.json` loads into this class and gets the defaults below (ViT-B/32, B6-4x49).

    num_frames (`int`, defaults to 12):
        Frames per video (T).
    cluster_algo (`str`, defaults to `"kmedoids"`):
        `"kmedoids"`, `"spectral"`, or `"none"` (CLIP4Clip mean pooling: each frame is encoded alone).
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
        if self.num_frames < 1:
            fail("num_frames", "must be at least 1")
        if self.cluster_iters < 1:
            fail("cluster_iters", "must be at least 1")
        if self.spectral_sigma <= 0:
            fail("spectral_sigma", "must be positive")
        if self.cluster_algo == "none":
            return  # the clustering fields below are unused by mean pooling
        num_layers = self.vision_config.num_hidden_layers
        if not 0 <= self.cluster_layer < num_layers:
            fail("cluster_layer", f"must be in [0, {num_layers - 1}] (the vision encoder has {num_layers} layers)")
        if self.num_segments < 1 or self.num_frames % self.num_segments:
            fail("num_segments", f"must be positive and divide num_frames={self.num_frames}")
        if not 1 <= self.num_centers <= self.tokens_per_segment:
            fail(
                "num_centers",
                f"must be in [1, {self.tokens_per_segment}] (a segment of {self.frames_per_segment} frames holds "
                f"{self.tokens_per_segment} patch tokens)",
            )
        if self.spectral_knn is not None and not 1 <= self.spectral_knn <= self.tokens_per_segment:
            fail("spectral_knn", f"must be None or in [1, {self.tokens_per_segment}]")


__all__ = ["CenterCLIPConfig"]
