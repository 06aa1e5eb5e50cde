"""One graph per forward: `torch.compile(fullgraph=True)`, CUDA-graph readiness and the exported video tower.

Every compile runs with `capture_scalar_outputs=False`, so any `.item()` / `.tolist()` left in a traced path is a
graph break, which `fullgraph=True` turns into an error: a passing compile proves the path has no host sync of
that kind (the CPU stand-in for `torch.cuda.set_sync_debug_mode`, which the CUDA test uses where a GPU exists).
Most compiles use `backend="aot_eager"` (Dynamo's capture and AOTAutograd's forward and backward graphs, where
graph breaks and gradient errors arise; seconds instead of minutes on a small CPU); one uses inductor.
Tolerance: 1e-5 absolute on unit-norm embeddings and on gradients (fp32 rounding of a different op order).
"""

import functools

import pytest
import torch
from tiny_models import tiny_centerclip_config

from modeling_centerclip import CenterCLIPModel, NonFiniteTokensError, clustering, merging

ATOL = 1e-5


@pytest.fixture(autouse=True)
def no_scalar_capture():
    # Every tiny model here recompiles the same methods' code objects: more than Dynamo's default limit of 8.
    with torch._dynamo.config.patch(capture_scalar_outputs=False, recompile_limit=64, accumulated_recompile_limit=512):
        yield


def tiny_model(algo: str, **overrides) -> CenterCLIPModel:
    torch.manual_seed(0)
    return CenterCLIPModel(tiny_centerclip_config(cluster_algo=algo, cluster_iters=5, **overrides)).eval()


def video_inputs(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[0, 3] = False  # a padded frame
    mask[1, 2:] = False  # a padded segment
    mask[3] = torch.tensor([False, True, False, False])  # a single real frame; row 2 has no padding
    return {"pixel_values": torch.randn(4, 4, 3, 32, 32, generator=g), "video_mask": mask}


def text_inputs() -> dict:
    ids = torch.randint(1, 97, (4, 7), generator=torch.Generator().manual_seed(1))
    attention = torch.ones_like(ids)
    attention[2, 5:] = 0
    return {"input_ids": ids, "attention_mask": attention}


@functools.cache
def compiled_video(case: str):
    """The (model, compiled get_video_features) of a case, compiled once and shared by the tests below."""
    algo, overrides = VIDEO_CASES[case]
    model = tiny_model(algo, **overrides)
    return model, torch.compile(model.get_video_features, fullgraph=True, backend="aot_eager")


# case -> (cluster_algo, config overrides); merge_r merges after the cluster layer (and between temporal joins).
VIDEO_CASES = {
    "kmedoids": ("kmedoids", {}),
    "kmedoids cosine, merge_r, proportional": ("kmedoids", {"cluster_distance": "cosine", "merge_r": 2, "proportional_attention": True}),
    "spectral": ("spectral", {}),
    "tome, merge_r": ("tome", {"merge_r": 2, "proportional_attention": True}),
    "uniform": ("uniform", {}),
    "none (mean pooling), merge_r": ("none", {"merge_r": [0, 2, 4, 1]}),
    "temporal, merge_r": ("temporal", {"merge_r": 1, "proportional_attention": True}),
}


@pytest.mark.parametrize("masked", [True, False], ids=["video_mask", "no mask"])
@pytest.mark.parametrize("case", list(VIDEO_CASES))
def test_video_features_compile_to_one_graph_equal_to_eager(case, masked):
    model, compiled = compiled_video(case)
    inputs = video_inputs()
    if not masked:
        del inputs["video_mask"]
    with torch.no_grad():
        expected = model.get_video_features(**inputs, output_clusters=False)
        actual = compiled(**inputs)
    torch.testing.assert_close(actual.pooler_output, expected.pooler_output, atol=ATOL, rtol=0)
    torch.testing.assert_close(actual.segment_embeds, expected.segment_embeds, atol=ATOL, rtol=0)


def test_named_errors_fire_in_eager_and_compiled_mode():
    model, compiled = compiled_video("kmedoids")
    empty = video_inputs()
    empty["video_mask"][2] = False
    nan = video_inputs()
    nan["pixel_values"][2, 1, 0, 5, 5] = float("nan")
    with torch.no_grad():  # as where `compiled` was first called: no recompile
        for run in (model.get_video_features, compiled):
            with pytest.raises(ValueError, match=r"video_mask marks no real frame .* batch index \[2\]"):
                run(**empty)
            with pytest.raises(NonFiniteTokensError, match=r"vision layer 2 .* batch positions \[2\]"):
                run(**nan)
        nan["video_mask"][2, 1] = False  # a NaN in a padded frame is no error
        expected = model.get_video_features(**nan).pooler_output
        torch.testing.assert_close(compiled(**nan).pooler_output, expected, atol=ATOL, rtol=0)


def test_text_features_and_forward_without_loss_compile_to_one_graph():
    model = tiny_model("kmedoids")
    with torch.no_grad():
        text = torch.compile(model.get_text_features, fullgraph=True, backend="aot_eager")(**text_inputs())
        torch.testing.assert_close(text.pooler_output, model.get_text_features(**text_inputs()).pooler_output, atol=ATOL, rtol=0)
        forward = torch.compile(model, fullgraph=True, backend="aot_eager")(**text_inputs(), **video_inputs())
        expected = model(**text_inputs(), **video_inputs())
    assert forward.loss is None
    torch.testing.assert_close(forward.logits_per_text, expected.logits_per_text, atol=1e-4, rtol=0)  # logit scale 2.66


@pytest.mark.parametrize("case", ["kmedoids", "kmedoids cosine, merge_r, proportional", "temporal, merge_r"])
def test_compiled_training_step_gradients_equal_eager(case):
    """With padded videos (one of a single real frame): merge_r after the cluster layer and temporal joins included."""
    algo, overrides = VIDEO_CASES[case]
    model = tiny_model(algo, **overrides).train()
    batch = {**text_inputs(), **video_inputs(), "return_loss": True}
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    gradients = []
    for run in (model, compiled):
        model.zero_grad()
        loss = run(**batch).loss
        loss.backward()
        gradients.append((loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}))
    (eager_loss, eager), (compiled_loss, got) = gradients
    torch.testing.assert_close(compiled_loss, eager_loss, atol=ATOL, rtol=0)
    assert got.keys() == eager.keys() and len(got) > 10
    for name in eager:
        torch.testing.assert_close(got[name], eager[name], atol=ATOL, rtol=1e-4, msg=name)


def test_reducers_compile_with_inductor_equal_to_eager():
    """k-medoids (the in-graph while_loop), ToMe with padding (rows of different real counts, one below the
    budget, [CLS] protected or not), uniform keep: one inductor graph, equal to eager.

    Spectral clustering compiles too (the model tests above), but not here: inductor's other rounding of the
    Laplacian rotates the eigenvectors of (near-)repeated eigenvalues, so its clusters are as valid, not equal.
    """

    def reduce(grid, mask):
        assignment, medoids = clustering.kmedoids(grid, 5, mask=mask, backend="torch")
        merged = merging.merge_to_budget(grid, 6, mask=mask)
        with_cls = merging.merge_to_budget(grid, 9, mask=mask, protected=1)
        kept, nearest = merging.uniform_keep(grid.shape[1], 7, mask)
        return (assignment, medoids, *merged, *with_cls, kept, nearest)

    g = torch.Generator().manual_seed(3)
    grid = torch.randint(0, 3, (5, 24, 4), generator=g).float()  # integer grid: many ties
    mask = torch.ones(5, 24, dtype=torch.bool)
    mask[1, 12:] = False  # one frame of two padded
    mask[3, 1::3] = False  # scattered padding
    mask[4, 5:] = False  # fewer real tokens than either budget
    expected = reduce(grid, mask)
    actual = torch.compile(reduce, fullgraph=True)(grid, mask)
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs and sync debugging need a GPU (the CPU tests above prove no .item())")
@pytest.mark.parametrize("case", ["kmedoids", "kmedoids cosine, merge_r, proportional", "temporal, merge_r"])
def test_cuda_graph_replay_has_no_host_sync(case):
    algo, overrides = VIDEO_CASES[case]
    model = tiny_model(algo, **overrides).cuda()
    inputs = {key: value.cuda() for key, value in video_inputs().items()}
    compiled = torch.compile(model.get_video_features, fullgraph=True, mode="reduce-overhead")
    with torch.no_grad():
        for _ in range(3):  # warm-up and CUDA-graph recording
            compiled(**inputs)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = compiled(**inputs).pooler_output.clone()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.testing.assert_close(out, model.get_video_features(**inputs).pooler_output, atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", ["kmedoids", "kmedoids cosine, merge_r, proportional", "temporal, merge_r"])
def test_exported_onnx_video_tower_equals_pytorch_in_onnx_runtime(tmp_path, case):
    pytest.importorskip("onnxruntime", reason="the [onnx] extra")
    from training import publish
    from training.export_onnx import example_inputs, max_difference

    algo, overrides = VIDEO_CASES[case]
    model = tiny_model(algo, **overrides)
    model.save_pretrained(tmp_path / "model")
    output = tmp_path / "tower.onnx"
    publish.main(["export-onnx", "--model", str(tmp_path / "model"), "--output", str(output), "--batch", "2"])
    assert output.stat().st_size > 10_000
    for seed in (2, 3):  # other frames and masks than the export's own check
        pixel_values, video_mask = example_inputs(model.config, 2, seed=seed)
        video_mask[1] = torch.tensor([[False, True, False, False], [False, False, True, True]][seed - 2])  # 1 or 2 real
        assert max_difference(model, output, (pixel_values, video_mask)) <= 1e-5
