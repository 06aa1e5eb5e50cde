"""`pipeline("zero-shot-video-classification")` and `pipeline("video-text-retrieval")`: registered on import,
the model's own logits and embeddings, batching, the processor's named errors, and remote code from a published
folder in a process that cannot import the project."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import coded_frames, write_video
from tiny_models import tiny_centerclip_config
from transformers import pipeline

from modeling_centerclip import CenterCLIPModel, CenterCLIPProcessor, ZeroShotVideoClassificationPipeline
from modeling_centerclip.processing_centerclip import VideoDecodeError

LABELS = ["red", "green", "blue", "a white square"]
TEMPLATE_CAPTIONS = [f"this is a video of {label}." for label in LABELS] + ["a red square moves left"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random CenterCLIP with its processor, saved as training saves one."""
    from training.tokenizer import train_clip_tokenizer

    tokenizer = train_clip_tokenizer(TEMPLATE_CAPTIONS * 4, vocab_size=400)
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id, max_position_embeddings=32)  # fmt: skip
    config = tiny_centerclip_config()
    for key, value in ids.items():
        setattr(config.text_config, key, value)
    torch.manual_seed(0)
    model = CenterCLIPModel(config).eval()
    folder = tmp_path_factory.mktemp("tiny-centerclip")
    model.save_pretrained(folder)
    CenterCLIPProcessor(tokenizer, num_frames=4, image_size=32, max_length=32, fps=None).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """A path, a uint8 frame array and a list of encoded frames (a frame store row's `frames`)."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    path = str(write_video(tmp_path_factory.mktemp("clips") / "clip.mp4", coded_frames(12, 48, 64), fps=10))
    array = rng.integers(0, 256, (9, 40, 56, 3), dtype=np.uint8)
    encoded = []
    for frame in rng.integers(0, 256, (7, 36, 36, 3), dtype=np.uint8):
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="PNG")
        encoded.append({"bytes": buffer.getvalue(), "path": None})
    return [path, array, encoded]


@pytest.fixture(scope="module")
def reference(model_dir):
    return CenterCLIPModel.from_pretrained(model_dir).eval(), CenterCLIPProcessor.from_pretrained(model_dir)


def model_scores(reference, video, labels, template="This is a video of {}."):
    model, processor = reference
    with torch.no_grad():
        logits = model(**processor(text=[template.format(x) for x in labels], videos=[video])).logits_per_video[0]
    return dict(zip(labels, logits.softmax(-1).tolist()))


def test_importing_the_package_registers_both_tasks(model_dir):
    from transformers.pipelines import PIPELINE_REGISTRY

    assert {"zero-shot-video-classification", "video-text-retrieval"} <= set(PIPELINE_REGISTRY.get_supported_tasks())
    classify = pipeline("zero-shot-video-classification", model=str(model_dir), device="cpu")
    assert type(classify) is ZeroShotVideoClassificationPipeline and type(classify.model) is CenterCLIPModel


def test_scores_are_the_models_own_softmaxed_logits_sorted(model_dir, videos, reference):
    classify = pipeline("zero-shot-video-classification", model=str(model_dir), device="cpu")
    for video in videos:
        result = classify(video, candidate_labels=LABELS)
        assert [entry["label"] for entry in result] == sorted(LABELS, key=lambda x: -dict(
            (e["label"], e["score"]) for e in result)[x])  # fmt: skip
        scores = [entry["score"] for entry in result]
        assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1, abs=1e-5)
        expected = model_scores(reference, video, LABELS)
        assert len(set(expected.values())) > 1  # the labels do score differently: the comparison means something
        for entry in result:
            assert entry["score"] == pytest.approx(expected[entry["label"]], rel=1e-5, abs=1e-6)
    custom = classify(videos[0], candidate_labels=LABELS, hypothesis_template="{}")
    expected = model_scores(reference, videos[0], LABELS, template="{}")
    assert {e["label"]: e["score"] for e in custom} == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("batch_size", [2, 3])
def test_batches_give_what_one_video_at_a_time_gives(model_dir, videos, batch_size):
    classify = pipeline("zero-shot-video-classification", model=str(model_dir), device="cpu")
    inputs = videos + [videos[1][::-1].copy()]  # 4 videos: batches of 2 + 2, or 3 + 1
    one_by_one = classify(inputs, candidate_labels=LABELS)
    batched = classify(inputs, candidate_labels=LABELS, batch_size=batch_size)
    assert len(batched) == len(inputs)
    for single, batch in zip(one_by_one, batched):
        assert [e["label"] for e in single] == [e["label"] for e in batch]
        np.testing.assert_allclose([e["score"] for e in batch], [e["score"] for e in single], rtol=1e-5, atol=1e-6)


def test_bad_input_gets_the_processors_named_errors(model_dir, tmp_path):
    classify = pipeline("zero-shot-video-classification", model=str(model_dir), device="cpu")
    missing = str(tmp_path / "nowhere.mp4")
    with pytest.raises(VideoDecodeError, match="nowhere.mp4"):
        classify(missing, candidate_labels=LABELS)
    with pytest.raises(VideoDecodeError, match="uint8"):
        classify(np.zeros((4, 8, 8, 3), np.float32), candidate_labels=LABELS)
    with pytest.raises(ValueError, match="candidate_labels"):
        classify(np.zeros((4, 8, 8, 3), np.uint8), candidate_labels=[])
    with pytest.raises(ValueError, match="hypothesis_template"):
        classify(np.zeros((4, 8, 8, 3), np.uint8), candidate_labels=LABELS, hypothesis_template="no slot")
    with pytest.raises(ValueError, match="candidate_label"):
        classify(np.zeros((4, 8, 8, 3), np.uint8), candidate_label=LABELS)


def test_retrieval_ranks_videos_for_a_text_and_texts_for_a_video_by_cosine(model_dir, videos, reference):
    model, processor = reference
    retrieve = pipeline("video-text-retrieval", model=str(model_dir), device="cpu")
    with torch.no_grad():
        outputs = model(**processor(text=LABELS, videos=videos))
    cosine = (outputs.text_embeds @ outputs.video_embeds.T).numpy()  # [texts, videos]

    ranking = retrieve(text=LABELS[0], videos=videos, batch_size=2)
    assert [r["index"] for r in ranking] == list(np.argsort(-cosine[0], kind="stable"))
    np.testing.assert_allclose([r["score"] for r in ranking], np.sort(cosine[0])[::-1], rtol=1e-5, atol=1e-6)
    assert [r["video"] for r in ranking if r["index"] == 0] == [videos[0]]  # a path names itself
    many = retrieve(text=LABELS, videos=videos, top_k=2)
    assert len(many) == len(LABELS) and all(len(r) == 2 for r in many)

    texts = retrieve(video=videos[2], texts=LABELS)
    assert [r["text"] for r in texts] == [LABELS[i] for i in np.argsort(-cosine[:, 2], kind="stable")]
    with pytest.raises(ValueError, match="text= with videos="):
        retrieve(text="a", texts=["b"])
    with pytest.raises(ValueError, match="top_k"):
        retrieve(text="a", videos=videos, top_k=0)


def test_published_folder_lists_the_pipelines_and_pushes_them(model_dir, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from training.publish import pipeline_files, push_folder

    pushed = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: None)
    monkeypatch.setattr(HfApi, "create_commit", lambda self, repo_id, operations, **kwargs: pushed.update(
        {op.path_in_repo: op.path_or_fileobj for op in operations}))  # fmt: skip
    push_folder(model_dir, "org/tiny")
    config = json.loads(pushed["config.json"])
    assert set(config["custom_pipelines"]) == {"zero-shot-video-classification", "video-text-retrieval"}
    assert b"class ZeroShotVideoClassificationPipeline" in pushed["pipeline_centerclip.py"]
    assert "custom_pipelines" not in json.loads((model_dir / "config.json").read_text())  # the local folder is as it was
    assert pipeline_files(tmp_path) == {}  # not a model folder: nothing to add


def test_fresh_process_runs_the_pipeline_as_remote_code(model_dir, videos, tmp_path, reference):
    """The published folder in a process where neither `modeling_centerclip` nor `training` can be imported:
    Transformers alone finds the task in the config, the pipeline, model and processor code in the folder."""
    import shutil

    from training.publish import pipeline_files

    folder = tmp_path / "published"
    shutil.copytree(model_dir, folder)
    for name, data in pipeline_files(folder).items():
        (folder / name).write_bytes(data)
    child = textwrap.dedent(
        """
        import importlib.abc, json, sys

        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("modeling_centerclip", "training", "search"):
                    raise ImportError(f"{name} is blocked in this test")

        sys.meta_path.insert(0, Blocker())
        from transformers import pipeline

        folder, video, labels = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
        classify = pipeline("zero-shot-video-classification", model=folder, trust_remote_code=True, device="cpu")
        result = classify([video, video], candidate_labels=labels, batch_size=2)
        retrieve = pipeline("video-text-retrieval", model=folder, trust_remote_code=True, device="cpu")
        ranking = retrieve(video=video, texts=labels)
        print("RESULT", json.dumps(dict(result=result, ranking=ranking, pipeline=type(classify).__module__,
                                        model=type(classify.model).__module__)))
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    run = subprocess.run([sys.executable, "-c", child, str(folder), videos[0], json.dumps(LABELS)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert result["pipeline"].startswith("transformers_modules.") and result["model"].startswith("transformers_modules.")
    expected = model_scores(reference, videos[0], LABELS)
    for per_video in result["result"]:
        assert {e["label"]: e["score"] for e in per_video} == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert sorted(r["text"] for r in result["ranking"]) == sorted(LABELS)


def test_zero_shot_benchmark_classifies_demo_clips_by_their_labels(model_dir, tmp_path):
    """The script behind the README's figure, on a few generated demo clips (a random model: only the plumbing)."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "benchmarks"))
    import benchmark_zero_shot

    from training.demo_corpus import generate_demo_corpus

    generate_demo_corpus(tmp_path / "demo", num_train=2, num_test=4, num_frames=8, size=32, show_progress=False)
    report = benchmark_zero_shot.main(["--model", str(model_dir), "--corpus", str(tmp_path / "demo"), "--batch_size",
                                       "3", "--output", str(tmp_path / "zero_shot.json")])  # fmt: skip
    assert set(report["tasks"]) == {"color", "object"}
    assert report["tasks"]["color"]["labels"] == 6 and report["tasks"]["object"]["labels"] == 15
    assert all(task["videos"] == 4 and 0 <= task["accuracy"] <= 1 for task in report["tasks"].values())
    assert json.loads((tmp_path / "zero_shot.json").read_text()) == report
