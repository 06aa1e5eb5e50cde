"""CenterCLIPConfig and CenterCLIPModel on tiny random configurations."""

import pytest
import torch
import torch.nn.functional as F
from tiny_models import CLUSTER, tiny_centerclip_config, tiny_clip_config
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
    # Like get_image_features, pooler_output is the embedding before the final normalisation: CLIP4Clip's mean.
    torch.testing.assert_close(video, frames.view(2, 4, -1).mean(dim=1), atol=1e-5, rtol=0)
    with torch.no_grad():
        out = model(**inputs())
    torch.testing.assert_close(out.video_embeds, F.normalize(frames.view(2, 4, -1).mean(dim=1), dim=-1), atol=1e-5, rtol=0)


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
    assert out.vision_model_output.segment_embeds.shape == (2, config.num_segments, 16)
    assert out.vision_model_output.last_hidden_state.shape == (2 * config.num_segments, 1 + config.num_centers, 32)
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


REDUCER_SETTINGS = [{}, dict(cluster_algo="tome", merge_r=2, proportional_attention=True),
                    dict(cluster_algo="temporal", merge_r=1, proportional_attention=True)]


@pytest.mark.parametrize("settings", REDUCER_SETTINGS)
def test_gradient_checkpointing_gives_same_gradients(settings):
    torch.manual_seed(0)
    model = CenterCLIPModel(tiny_centerclip_config(**settings)).train()
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


@pytest.mark.parametrize("settings", REDUCER_SETTINGS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(dtype, settings):
    torch.manual_seed(0)
    model = CenterCLIPModel(tiny_centerclip_config(**settings))
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
    with torch.no_grad():
        a = model.get_video_features(padded, video_mask=mask)
        unmasked = model.get_video_features(padded).pooler_output
    real = a.segment_embeds[:, :1] if algo == "kmedoids" else a.segment_embeds[:, :2]
    torch.testing.assert_close(a.pooler_output, real.mean(dim=1))
    assert a.segment_mask.tolist() == ([[True, False]] if algo == "kmedoids" else [[True, True, False, False]])
    assert not torch.allclose(a.pooler_output, unmasked)


def padded_variants(pixel_values, mask):
    """The same video with its padded frames holding copies of the last real frame, zeros, noise and NaN."""
    variants = []
    for fill in ["copy", "zeros", "noise", "nan"]:
        video = pixel_values.clone()
        for b, row in enumerate(mask):
            last = int(row.nonzero().max())
            for t in (~row).nonzero().flatten().tolist():
                video[b, t] = {"copy": video[b, last], "zeros": torch.zeros_like(video[b, t]),
                               "noise": 5 * torch.randn_like(video[b, t]), "nan": torch.full_like(video[b, t], float("nan"))}[fill]
        variants.append(video)
    return variants


MERGING = dict(merge_r=2, proportional_attention=True)


@pytest.mark.parametrize(
    "algo, centers, extra",
    [("kmedoids", 6, {}), ("spectral", 6, {}), ("none", 6, {}), ("kmedoids", 20, {}), ("spectral", 20, {}),  # 20 > 16 real
     ("tome", 6, {}), ("tome", 20, {}), ("uniform", 6, {}), ("uniform", 20, {}), ("temporal", 6, {}),
     ("tome", 6, MERGING), ("kmedoids", 6, MERGING), ("temporal", 6, MERGING), ("none", 6, MERGING)],
)
def test_padded_frames_change_nothing(algo, centers, extra):
    """A short video's embedding is identical whatever its padded frames hold, also inside a segment."""
    torch.manual_seed(0)
    model = CenterCLIPModel(tiny_centerclip_config(cluster_algo=algo, num_centers=centers, **extra)).eval()
    pixel_values = inputs(batch=3)["pixel_values"]
    # frame 3 pads segment 2 (one real frame); a video of one real frame; a full video.
    mask = torch.tensor([[True, True, True, False], [True, False, False, False], [True, True, True, True]])
    with torch.no_grad():
        outputs = [model.get_video_features(v, video_mask=mask, output_clusters=True) for v in padded_variants(pixel_values, mask)]
        alone = model.get_video_features(pixel_values[2:], video_mask=mask[2:]).pooler_output
    for other in outputs[1:]:
        assert torch.equal(other.pooler_output, outputs[0].pooler_output)
        if algo not in ("none", "temporal"):
            assert torch.equal(other.cluster_medoids, outputs[0].cluster_medoids)
    assert torch.isfinite(outputs[0].pooler_output).all()
    torch.testing.assert_close(outputs[0].pooler_output[2:], alone)  # padding elsewhere in the batch changes nothing
    if algo not in ("none", "temporal"):
        real = model.config.layer_plan()[model.config.cluster_layer - 1].tokens - 1  # patch tokens left per frame
        assignment = outputs[0].cluster_assignment
        assert (assignment[0, 1, real:] == -1).all() and (assignment[0, 1, :real] >= 0).all()
        if centers <= real:  # enough real tokens: every kept token comes from a real frame
            assert (outputs[0].cluster_medoids[0, 1] < real).all()


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


# --- Transformers conventions: tuples, hidden states, attentions, missing inputs, clusters --------------


def test_return_dict_false_gives_the_same_values_as_a_tuple():
    torch.manual_seed(0)
    model = CenterCLIPModel(tiny_centerclip_config()).eval()
    with torch.no_grad():
        as_dict = model(**inputs(), return_loss=True)
        as_tuple = model(**inputs(), return_loss=True, return_dict=False)
        video_tuple = model.get_video_features(inputs()["pixel_values"], return_dict=False)
    assert isinstance(as_tuple, tuple) and isinstance(video_tuple, tuple)
    # X-CLIP's order: loss, logits_per_text, text_embeds, text/vision outputs (as tuples), logits_per_video, video_embeds
    for index, expected in [(0, as_dict.loss), (1, as_dict.logits_per_text), (2, as_dict.text_embeds),
                            (5, as_dict.logits_per_video), (6, as_dict.video_embeds)]:  # fmt: skip
        assert torch.equal(as_tuple[index], expected), index
    torch.testing.assert_close(as_tuple[4][1], as_dict.vision_model_output.pooler_output)
    torch.testing.assert_close(as_tuple[3][1], as_dict.text_model_output.pooler_output)
    torch.testing.assert_close(video_tuple[1], as_dict.vision_model_output.pooler_output)


def test_output_fields_follow_xclip_output_order():
    """`return_dict=False` tuples index like Transformers' own video-text model (read from the installed library)."""
    from dataclasses import fields

    from transformers.models.x_clip.modeling_x_clip import XCLIPOutput

    from modeling_centerclip import CenterCLIPOutput

    ours = [f.name for f in fields(CenterCLIPOutput)]
    xclip = [f.name for f in fields(XCLIPOutput) if f.name in ours]
    assert ours == xclip and len(ours) == 7


def test_hidden_states_and_attentions_match_a_manual_pass_through_clips_layers(clip_folder):
    from modeling_centerclip.modeling_centerclip import cluster_segments

    model = CenterCLIPModel.from_pretrained(clip_folder, attn_implementation="eager", **{**CLUSTER}).eval()
    config, x = model.config, inputs()
    frames, segments, layers = 2 * 4, 2 * 2, model.vision_model.encoder.layers
    with torch.no_grad():
        out = model(**x, output_hidden_states=True, output_attentions=True)
        clip_states = model.vision_model(pixel_values=x["pixel_values"].flatten(0, 1), output_hidden_states=True).hidden_states
    video = out.vision_model_output
    assert len(video.hidden_states) == 5 and len(video.attentions) == 4
    for i in range(config.cluster_layer + 1):  # per frame: CLIP's own states
        assert video.hidden_states[i].shape == (frames, 17, 32)
        torch.testing.assert_close(video.hidden_states[i], clip_states[i])
    with torch.no_grad():
        manual = cluster_segments(clip_states[config.cluster_layer], config).hidden_states
        for i in range(config.cluster_layer, 4):
            manual = layers[i](manual, None)
            assert video.hidden_states[i + 1].shape == (segments, 1 + config.num_centers, 32)
            torch.testing.assert_close(video.hidden_states[i + 1], manual)
    assert torch.equal(video.last_hidden_state, video.hidden_states[-1])
    for i, attention in enumerate(video.attentions):
        tokens, batch = (17, frames) if i < config.cluster_layer else (1 + config.num_centers, segments)
        assert attention.shape == (batch, 2, tokens, tokens)
        torch.testing.assert_close(attention.sum(-1), torch.ones(batch, 2, tokens))
    assert len(out.text_model_output.hidden_states) == 3  # the text tower's, as CLIP returns them
    assert len(out.text_model_output.attentions) == 2


def test_missing_inputs_raise_value_errors_naming_them():
    model = CenterCLIPModel(tiny_centerclip_config()).eval()
    x = inputs()
    with pytest.raises(ValueError, match="pixel_values"):
        model(input_ids=x["input_ids"])
    with pytest.raises(ValueError, match="input_ids"):
        model(pixel_values=x["pixel_values"])
    with pytest.raises(ValueError, match="pixel_values"):
        model.get_video_features()


def test_output_clusters_names_the_kept_tokens():
    torch.manual_seed(0)
    config = tiny_centerclip_config()
    model = CenterCLIPModel(config).eval()
    with torch.no_grad():
        video = model.get_video_features(inputs()["pixel_values"], output_clusters=True, output_hidden_states=True)
    medoids, assignment = video.cluster_medoids, video.cluster_assignment
    assert medoids.shape == (2, 2, config.num_centers) and assignment.shape == (2, 2, 32)
    assert (medoids.diff(dim=-1) > 0).all()
    # every medoid is in its own cluster, and the kept tokens are the medoids' states
    own = assignment.gather(2, medoids)
    assert torch.equal(own, torch.arange(config.num_centers).expand_as(own))
    states = video.hidden_states[config.cluster_layer].view(2, 2, 2, 17, 32)[:, :, :, 1:].reshape(4, 32, 32)
    kept = states.gather(1, medoids.view(4, -1, 1).expand(-1, -1, 32))
    layer = model.vision_model.encoder.layers[config.cluster_layer]
    assert video.hidden_states[config.cluster_layer + 1].shape[1] == 1 + config.num_centers
    with torch.no_grad():
        cls = states.new_zeros(4, 1, 32)  # only the kept tokens' positions matter here
    assert kept.shape == (4, config.num_centers, 32) and layer is not None and cls.shape == (4, 1, 32)
    assert model.get_video_features(inputs()["pixel_values"]).cluster_medoids is None


# --- short videos: which segments enter the mean (config.segment_valid_rule) -----------------------------------

# (video_mask of 6 frames in 3 segments of 2, rule, expected segment_mask)
SEGMENT_RULE_CASES = [
    ([1, 1, 1, 1, 1, 1], "any_real_frame", [1, 1, 1]),
    ([1, 1, 1, 1, 1, 1], "last_frame_real", [1, 1, 1]),
    ([1, 1, 1, 0, 0, 0], "any_real_frame", [1, 1, 0]),  # segment 2 holds one real frame: counts
    ([1, 1, 1, 0, 0, 0], "last_frame_real", [1, 0, 0]),  # the reference: segment 2 ends on padding
    ([1, 0, 0, 0, 0, 0], "any_real_frame", [1, 0, 0]),
    ([1, 0, 0, 0, 0, 0], "last_frame_real", [1, 0, 0]),  # no segment ends on a real frame: falls back
    ([1, 1, 0, 0, 0, 0], "last_frame_real", [1, 0, 0]),
]


@pytest.mark.parametrize("mask, rule, expected", SEGMENT_RULE_CASES)
def test_segment_valid_rule(mask, rule, expected):
    torch.manual_seed(0)
    model = CenterCLIPModel(tiny_centerclip_config(num_frames=6, num_segments=3, segment_valid_rule=rule)).eval()
    video_mask = torch.tensor([mask], dtype=torch.bool)
    with torch.no_grad():
        out = model.get_video_features(pixel_values=inputs(batch=1, frames=6)["pixel_values"], video_mask=video_mask)
    assert out.segment_mask.int().tolist() == [expected]
    keep = torch.tensor(expected, dtype=torch.bool)
    torch.testing.assert_close(out.pooler_output[0], out.segment_embeds[0, keep].mean(dim=0))


def test_segment_valid_rule_is_checked_at_construction():
    with pytest.raises(ValueError, match=r"segment_valid_rule='last_frame': must be one of"):
        tiny_centerclip_config(segment_valid_rule="last_frame")
