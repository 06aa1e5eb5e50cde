"""Tiny random CLIP / CenterCLIP configurations shared by the tests (importable as `tiny_models`)."""

from transformers import CLIPConfig

from modeling_centerclip import CenterCLIPConfig

TEXT = dict(
    vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    max_position_embeddings=16, bos_token_id=97, eos_token_id=98, pad_token_id=0,
)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, image_size=32, patch_size=8)
CLUSTER = dict(num_frames=4, num_segments=2, num_centers=6, cluster_layer=2)


def tiny_clip_config(**overrides) -> CLIPConfig:
    return CLIPConfig(text_config=dict(TEXT), vision_config=dict(VISION), projection_dim=16, **overrides)


def tiny_centerclip_config(**overrides) -> CenterCLIPConfig:
    settings = {**CLUSTER, **overrides}
    return CenterCLIPConfig(text_config=dict(TEXT), vision_config=dict(VISION), projection_dim=16, **settings)
