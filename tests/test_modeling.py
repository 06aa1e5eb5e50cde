"""CenterCLIPConfig and CenterCLIPModel on tiny random configurations."""

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_centerclip_config, tiny_clip_config
from transformers import AutoConfig, AutoModel, CLIPConfig, CLIPModel

from modeling_centerclip import CenterCLIPConfig, CenterCLIPModel, CenterCLIPOutput


def inputs(batch=2, frames=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        input_ids=torch.randint(1, 97, (batch, 7), generator=g),
        pixel_values=torch.randn(batch, frames, 3, 32, 32, generator=g),
    )


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clip")
    CLIPModel(tiny_clip_config()).save_pretrained(folder)
    return folder


# --- configuration -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_segments", 3),  # 4 frames not divisible by 3 segments
        ("num_centers", 33),  # a segment of 2 frames x 16 patches holds 32 tokens
        ("num_centers", 0),
        ("cluster_layer", 4),  # the tiny vision encoder has 4 layers: 0..3
        ("cluster_layer", -1),
        ("cluster_algo", "dbscan"),
        ("cluster_distance", "manhattan"),
        ("num_frames", 0),
        ("cluster_iters", 0),
        ("spectral_sigma", 0.0),
        ("spectral_knn", 0),
    ],
)
def test_invalid_config_raises_value_error_naming_field(field, value):
    with pytest.raises(ValueError, match=field):
        tiny_centerclip_config(**{field: value})


def test_invalid_override_fails_when_loading_checkpoint(clip_folder):
    with pytest.raises(ValueError, match="num_centers"):
        CenterCLIPConfig.from_pretrained(clip_folder, num_frames=4, num_segments=2, cluster_layer=1, num_centers=99)


def test_stock_clip_config_loads_with_defaults(tmp_path):
    CLIPConfig().save_pretrained(tmp_path)
    config = CenterCLIPConfig.from_pretrained(tmp_path)
    assert config.model_type == "centerclip"
    assert (config.num_frames, config.cluster_algo, config.cluster_layer) == (12, "kmedoids", 6)
    assert (config.num_segments, config.num_centers, config.cluster_distance) == (4, 49, "euclidean")
    assert (config.cluster_iters, config.spectral_sigma, config.spectral_knn) == (100, 2.0, None)
    assert config.tokens_per_segment == 3 * 49 and config.default_spectral_knn == 15


def test_config_round_trip_and_auto_config(tmp_path):
    config = tiny_centerclip_config(cluster_algo="spectral", spectral_knn=7)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, CenterCLIPConfig)
    assert (loaded.cluster_algo, loaded.spectral_knn, loaded.num_centers) == ("spectral", 7, 6)


# --- model ---------------------------------------------------------------------------------------------


def test_mean_pooling_baseline_equals_clip_image_embeddings(clip_folder):
    clip = CLIPModel.from_pretrained(clip_folder).eval()
    model = CenterCLIPModel.from_pretrained(clip_folder, cluster_algo="none").eval()
    pixel_values = inputs()["pixel_values"]
    with torch.no_grad():
        video = model.get_video_features(pixel_values).pooler_output
        frames = F.normalize(clip.get_image_features(pixel_values=pixel_values.flatten(0, 1)).pooler_output, dim=-1)
    expected = F.normalize(frames.view(2, 4, -1).mean(dim=1), dim=-1)
    torch.testing.assert_close(video, expected, atol=1e-5, rtol=0)


def test_stock_clip_checkpoint_loads_without_missing_keys(clip_folder):
    model, info = CenterCLIPModel.from_pretrained(
        clip_folder, num_frames=4, num_segments=2, num_centers=6, cluster_layer=2, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    clip = CLIPModel.from_pretrained(clip_folder)
    assert set(model.state_dict()) == set(clip.state_dict()), "no new weights in the default configuration"
    assert model.config.num_centers == 6 and model.config.model_type == "centerclip"


def test_text_and_image_features_keep_clip_behaviour(clip_folder):
    clip = CLIPModel.from_pretrained(clip_folder).eval()
    model = CenterCLIPModel.from_pretrained(clip_folder, num_frames=4, num_segments=2, num_centers=6, cluster_layer=2)
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            model.get_text_features(input_ids=x["input_ids"]).pooler_output,
            clip.get_text_features(input_ids=x["input_ids"]).pooler_output,
        )
        images = x["pixel_values"][:, 0]
        torch.testing.assert_close(
            model.get_image_features(pixel_values=images).pooler_output,
            clip.get_image_features(pixel_values=images).pooler_output,
        )


@pytest.mark.parametrize("algo", ["kmedoids", "spectral"])
def test_clustered_forward_backward(algo):
    torch.manual_seed(0)
    config = tiny_centerclip_config(cluster_algo=algo)
    model = CenterCLIPModel(config).train()
    out = model(**inputs(), return_loss=True)
    assert isinstance(out, CenterCLIPOutput)
    assert out.logits_per_text.shape == (2, 2) and torch.equal(out.logits_per_video, out.logits_per_text.t())
    assert out.video_embeds.shape == out.text_embeds.shape == (2, 16)
    torch.testing.assert_close(out.video_embeds.norm(dim=-1), torch.ones(2))
    assert out.vision_model_output.last_hidden_state.shape == (2, config.num_segments, 16)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    layers = model.vision_model.encoder.layers
    for name, module in [
        ("before clustering", layers[0]),
        ("after clustering", layers[config.cluster_layer]),
        ("last layer", layers[-1]),
        ("patch embedding", model.vision_model.embeddings.patch_embedding),
    ]:
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name


def test_clustering_reduces_tokens_after_cluster_layer():
    config = tiny_centerclip_config()
    model = CenterCLIPModel(config).eval()
    seen = []
    for layer in model.vision_model.encoder.layers:
        layer.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        model.get_video_features(inputs()["pixel_values"])
    frames, segments = 2 * config.num_frames, 2 * config.num_segments
    assert seen[: config.cluster_layer] == [(frames, 17, 32)] * config.cluster_layer
    assert seen[config.cluster_layer :] == [(segments, 1 + config.num_centers, 32)] * (4 - config.cluster_layer)


@pytest.mark.parametrize("algo", ["kmedoids", "none"])
def test_eager_and_sdpa_agree(clip_folder, algo):
    kwargs = dict(num_frames=4, num_segments=2, num_centers=6, cluster_layer=2, cluster_algo=algo)
    outputs = {}
    for impl in ["eager", "sdpa"]:
        model = CenterCLIPModel.from_pretrained(clip_folder, attn_implementation=impl, **kwargs).eval()
        assert model.config.vision_config._attn_implementation == impl
        with torch.no_grad():
            outputs[impl] = model(**inputs()).logits_per_text
    torch.testing.assert_close(outputs["eager"], outputs["sdpa"], atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = CenterCLIPModel(tiny_centerclip_config()).train()
    x = inputs()
    grads = []
    for checkpointing in [False, True]:
        if checkpointing:
            model.activation_checkpointing_enable()
        model.zero_grad()
        model(**x, return_loss=True).loss.backward()
        grads.append(model.vision_model.encoder.layers[0].mlp.fc1.weight.grad.clone())
    assert model.vision_model.encoder.layers[0].gradient_checkpointing
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(dtype):
    torch.manual_seed(0)
    model = CenterCLIPModel(tiny_centerclip_config())
    with torch.autocast("cpu", dtype=dtype):
        out = model(**inputs(), return_loss=True)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.isfinite(model.vision_model.encoder.layers[0].mlp.fc1.weight.grad).all()


@pytest.mark.parametrize("algo", ["kmedoids", "none"])
def test_padded_frames_of_masked_segment_do_not_enter_mean(algo):
    torch.manual_seed(0)
    model = CenterCLIPModel(tiny_centerclip_config(cluster_algo=algo)).eval()
    pixel_values = inputs(batch=1)["pixel_values"]
    mask = torch.tensor([[True, True, False, False]])  # second segment (frames 2-3) is padding
    padded = pixel_values.clone()
    padded[:, 2:] = pixel_values[:, 1:2]  # padding repeats the last real frame
    other = padded.clone()
    other[:, 2:] = torch.randn_like(other[:, 2:])  # whatever the padded frames hold
    with torch.no_grad():
        a = model.get_video_features(padded, video_mask=mask)
        b = model.get_video_features(other, video_mask=mask)
        unmasked = model.get_video_features(padded).pooler_output
    torch.testing.assert_close(a.pooler_output, b.pooler_output)
    real = a.last_hidden_state[:, :1] if algo == "kmedoids" else a.last_hidden_state[:, :2]
    torch.testing.assert_close(a.pooler_output, F.normalize(real.mean(dim=1), dim=-1))
    assert not torch.allclose(a.pooler_output, unmasked)


def test_wrong_frame_count_is_a_clear_error():
    model = CenterCLIPModel(tiny_centerclip_config())
    with pytest.raises(ValueError, match="num_frames"):
        model.get_video_features(torch.randn(1, 6, 3, 32, 32))
    with pytest.raises(ValueError, match="pixel_values"):
        model.get_video_features(torch.randn(4, 3, 32, 32))


def test_save_and_reload_through_auto_model(tmp_path):
    torch.manual_seed(0)
    model = CenterCLIPModel(tiny_centerclip_config()).eval()
    model.save_pretrained(tmp_path)
    saved = {p.name for p in tmp_path.iterdir()}
    assert {"model.safetensors", "config.json", "modeling_centerclip.py", "clustering.py"} <= saved
    assert not any(name.endswith(".bin") for name in saved)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(reloaded) is CenterCLIPModel
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs()).logits_per_text, reloaded(**inputs()).logits_per_text)
