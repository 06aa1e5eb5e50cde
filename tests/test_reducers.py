"""The token reducers inside CenterCLIPModel: shapes per layer, proportional attention, batching, training."""

import pytest
import torch
from tiny_models import tiny_centerclip_config

from modeling_centerclip import CenterCLIPModel

REDUCERS = {
    "tome": dict(cluster_algo="tome"),
    "uniform": dict(cluster_algo="uniform"),
    "tome+merge": dict(cluster_algo="tome", merge_r=2, proportional_attention=True),
    "kmedoids+merge": dict(cluster_algo="kmedoids", merge_r=3, proportional_attention=True),
    "temporal": dict(cluster_algo="temporal", merge_r=1, proportional_attention=True),
    "none+merge": dict(cluster_algo="none", merge_r=[0, 2, 4, 1], proportional_attention=True),
}


def pixels(batch=3, seed=0):
    return torch.randn(batch, 4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(REDUCERS))
def test_every_layer_sees_the_planned_token_count(name):
    config = tiny_centerclip_config(**REDUCERS[name])
    model = CenterCLIPModel(config).eval()
    seen = []
    for layer in model.vision_model.encoder.layers:
        layer.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        out = model.get_video_features(pixels(batch=2))
    assert seen == [(2 * plan.sequences, plan.tokens, 32) for plan in config.layer_plan()]
    assert seen[-1][0] * seen[-1][1] < seen[0][0] * seen[0][1]  # the token count falls
    segments = config.num_segments if config.cluster_algo in ("tome", "uniform", "kmedoids") else 4
    assert out.segment_embeds.shape == (2, segments, 16)


def test_layer_plan_of_the_temporal_schedule():
    config = tiny_centerclip_config(cluster_algo="temporal", temporal_merge_ratio=0.5)
    plan = config.layer_plan()  # 4 frames, groups [2, 2] at layers [1, 3]: 4 x 17 -> 2 x (2 + 16) -> 1 x (4 + 16)
    assert [(p.step, p.group, p.sequences, p.protected, p.tokens) for p in plan] == [
        (None, 1, 4, 1, 17), ("temporal", 2, 2, 2, 18), (None, 1, 2, 2, 18), ("temporal", 2, 1, 4, 20)
    ]
    assert tiny_centerclip_config(num_frames=12, num_segments=4).temporal_schedule == [(1, 2), (2, 2), (3, 3)]


@pytest.mark.parametrize("name", ["tome+merge", "kmedoids+merge", "temporal", "none+merge"])
def test_proportional_attention_agrees_between_eager_and_sdpa(name):
    torch.manual_seed(0)
    config = tiny_centerclip_config(**REDUCERS[name])
    mask = torch.tensor([[True, True, True, False], [True] * 4, [True] * 4])
    outputs = {}
    for impl in ["eager", "sdpa"]:
        config._attn_implementation = impl
        torch.manual_seed(0)
        model = CenterCLIPModel(config).eval()
        assert model.vision_model.encoder.layers[0].self_attn.config._attn_implementation == impl
        with torch.no_grad():
            outputs[impl] = model.get_video_features(pixels(), video_mask=mask).pooler_output
    torch.testing.assert_close(outputs["eager"], outputs["sdpa"], atol=1e-5, rtol=1e-5)
    model.config.proportional_attention = False
    with torch.no_grad():
        plain = model.get_video_features(pixels(), video_mask=mask).pooler_output
    assert not torch.allclose(plain, outputs["sdpa"], atol=1e-4)  # the switch does something


@pytest.mark.parametrize("name", list(REDUCERS))
def test_batch_splits_give_the_same_embeddings(name):
    model = CenterCLIPModel(tiny_centerclip_config(**REDUCERS[name])).eval()
    x = pixels(batch=3)
    mask = torch.tensor([[True, True, False, False], [True] * 4, [True, True, True, False]])
    with torch.no_grad():
        whole = model.get_video_features(x, video_mask=mask, output_clusters=True)
        parts = [model.get_video_features(x[i : i + 1], video_mask=mask[i : i + 1], output_clusters=True) for i in range(3)]
    torch.testing.assert_close(whole.pooler_output, torch.cat([p.pooler_output for p in parts]))
    if whole.cluster_medoids is not None:
        assert torch.equal(whole.cluster_medoids, torch.cat([p.cluster_medoids for p in parts]))


def test_tome_reports_its_merges_as_clusters():
    model = CenterCLIPModel(tiny_centerclip_config(cluster_algo="tome")).eval()
    with torch.no_grad():
        out = model.get_video_features(pixels(batch=1), output_clusters=True)
    medoids, assignment = out.cluster_medoids[0], out.cluster_assignment[0]  # [S, K], [S, 32]
    assert medoids.shape == (2, 6) and (medoids.diff(dim=1) > 0).all()
    for segment in range(2):  # every representative is assigned to its own slot; every slot has members
        assert assignment[segment, medoids[segment]].tolist() == list(range(6))
        assert sorted(set(assignment[segment].tolist())) == list(range(6))


@pytest.mark.parametrize(
    "settings, field",
    [
        (dict(merge_r=-1), "merge_r"),
        (dict(merge_r=[1, 1]), "merge_r"),  # one count per layer
        (dict(merge_r=[0, 1, 1, 0]), "merge_r"),  # not at the cluster layer (2)
        (dict(merge_r=7, num_centers=20), "num_centers"),  # 2 frames x (16 - 7) = 18 tokens left
        (dict(cluster_algo="temporal", temporal_groups=[3]), "temporal_groups"),
        (dict(cluster_algo="temporal", temporal_layers=[3, 1]), "temporal_layers"),
        (dict(cluster_algo="temporal", temporal_layers=[1]), "temporal_layers"),
        (dict(cluster_algo="temporal", temporal_merge_ratio=1.0), "temporal_merge_ratio"),
    ],
)
def test_bad_reducer_settings_fail_at_construction(settings, field):
    with pytest.raises(ValueError, match=field):
        tiny_centerclip_config(**settings)


@pytest.mark.parametrize("mask_row", [[True, False, False, False], [False, False, True, True]])
def test_temporal_joins_keep_a_padded_group_out(mask_row):
    """A group of padded frames stays padding when joined with real frames: no later layer attends to its tokens
    (a video of one or two real frames ends with no more real tokens than those frames' [CLS] and patches)."""
    config = tiny_centerclip_config(cluster_algo="temporal", merge_r=1)
    config._attn_implementation = "eager"
    model = CenterCLIPModel(config).eval()
    mask = torch.tensor([mask_row])
    with torch.no_grad():
        out = model.get_video_features(pixels(batch=1), video_mask=mask, output_attentions=True)
    assert config.layer_plan()[-1].sequences == 1  # the last layer sees the whole video as one sequence
    attended = (out.attentions[-1][0] > 0).any(dim=1).any(dim=0)  # keys that some head and query attend to
    assert 0 < attended.sum() <= int(mask.sum()) * 17  # [CLS] + 16 patches per real frame
