"""Hub publishing: shipped hub configurations, checkpoint conversion, model cards, mocked pushes, remote-code loads."""

import json
import os
import re
import subprocess
import sys
import textwrap

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from transformers import AutoModel, AutoProcessor, CLIPConfig, CLIPModel

from modeling_centerclip import CenterCLIPConfig, CenterCLIPModel, CenterCLIPProcessor
from modeling_centerclip.configuration_centerclip import CENTERCLIP_FIELDS
from training.demo_corpus import write_mp4
from training.model_card import render_model_card
from training.publish import (
    HUB_CONFIGS_DIR,
    convert_clip_checkpoint,
    list_hub_configs,
    load_hub_config,
    main,
    matching_hub_config,
    push_folder,
)
from training.tokenizer import train_clip_tokenizer

# name -> (patch size, cluster_algo, num_segments, num_centers); every clustered one clusters after layer 6.
PROMISED = {
    "centerclip-vitb32": (32, "kmedoids", 4, 49),
    "centerclip-vitb32-3seg": (32, "kmedoids", 3, 49),
    "centerclip-vitb32-spectral": (32, "spectral", 4, 49),
    "centerclip-vitb16": (16, "kmedoids", 4, 160),
    "clip4clip-vitb32-meanpool": (32, "none", None, None),
}
# The paper's MSR-VTT 1k-A text-to-video R@1 as the design notes cite it; the others have none.
PAPER_R1 = {"clip4clip-vitb32-meanpool": 43.1, "centerclip-vitb32-3seg": 44.0, "centerclip-vitb16": 48.4}
# Settings for the tiny checkpoint: a hub configuration holding only CenterCLIP fields.
TINY_SETTINGS = dict(num_frames=4, cluster_algo="kmedoids", cluster_layer=1, num_segments=2, num_centers=8)
CAPTIONS = ["a red square moves left", "a blue circle appears", "a green triangle moves up"]


@pytest.fixture(scope="module", autouse=True)
def offline():
    """No test here may reach the Hub (the child process gets HF_HUB_OFFLINE=1 too)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="module")
def tokenizer():
    return train_clip_tokenizer(CAPTIONS * 4, vocab_size=300)


@pytest.fixture(scope="module")
def tiny_clip(tokenizer, tmp_path_factory):
    """A random tiny stock CLIP checkpoint (safetensors) with its tokenizer, and the CLIPModel it holds."""
    ids = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=32, **ids),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    folder = tmp_path_factory.mktemp("tiny-clip")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def converted(tiny_clip, tmp_path_factory):
    folder = tmp_path_factory.mktemp("converted") / "tiny-centerclip"
    return convert_clip_checkpoint(
        tiny_clip[0], TINY_SETTINGS, folder, repo_id="org/tiny-centerclip", processor_kwargs=dict(max_length=16)
    )


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_mp4(str(path), rng.integers(0, 256, size=(10, 48, 64, 3), dtype=np.uint8), fps=5)
    return path


# ---------------------------------------------------------------- hub configurations


def test_every_hub_configuration_is_listed():
    assert list_hub_configs() == sorted(PROMISED)
    table = (HUB_CONFIGS_DIR / "README.md").read_text()
    assert all(f"`{name}`" in table for name in PROMISED)


@pytest.mark.parametrize("name", sorted(PROMISED))
def test_hub_configuration_has_the_settings_its_name_promises(name, tokenizer):
    patch, algo, segments, centers = PROMISED[name]
    config = CenterCLIPConfig.from_pretrained(HUB_CONFIGS_DIR / name)
    assert config.model_type == "centerclip"
    assert (config.cluster_algo, config.num_frames) == (algo, 12)
    if algo != "none":
        assert (config.cluster_layer, config.num_segments, config.num_centers) == (6, segments, centers)
    # openai/clip-vit-base-patch32 / patch16 architecture
    vision, text = config.vision_config, config.text_config
    assert (vision.patch_size, vision.image_size, vision.hidden_size, vision.num_hidden_layers) == (patch, 224, 768, 12)
    assert (vision.num_attention_heads, vision.intermediate_size, vision.hidden_act) == (12, 3072, "quick_gelu")
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (512, 12, 8)
    assert (text.vocab_size, text.max_position_embeddings, text.eos_token_id) == (49408, 77, 49407)
    assert config.projection_dim == 512

    hub = load_hub_config(name)
    assert hub.source_checkpoint == f"openai/clip-vit-base-patch{patch}"
    assert hub.processor["fps"] == 3 and hub.processor["max_length"] == 32
    CenterCLIPProcessor(tokenizer=tokenizer, **hub.processor)  # the sidecar's processor settings are valid arguments
    assert [r["value"] for r in hub.published_results] == ([PAPER_R1[name]] if name in PAPER_R1 else [])
    # One source of truth: model settings live in config.json only.
    sidecar = (HUB_CONFIGS_DIR / name / "hub.json").read_text()
    assert not [field for field in CENTERCLIP_FIELDS if f'"{field}"' in sidecar]


def test_a_config_finds_the_hub_configuration_it_matches(converted):
    for name in PROMISED:
        config = CenterCLIPConfig.from_pretrained(HUB_CONFIGS_DIR / name)
        assert matching_hub_config(config).name == name
    b32 = CenterCLIPConfig.from_pretrained(HUB_CONFIGS_DIR / "centerclip-vitb32")
    b32.num_centers = 50  # another setting: no published configuration
    assert matching_hub_config(b32) is None
    assert matching_hub_config(CenterCLIPConfig.from_pretrained(converted)) is None  # tiny architecture


def test_model_card_of_each_hub_configuration():
    for name in PROMISED:
        hub = load_hub_config(name)
        config = CenterCLIPConfig.from_pretrained(HUB_CONFIGS_DIR / name)
        text = render_model_card(
            config, repo_id=f"org/{name}", base_model=hub.source_checkpoint, license=hub.license,
            published_results=hub.published_results, processor_settings=hub.processor,
        )  # fmt: skip
        card = ModelCard(text, ignore_metadata_errors=False)
        assert card.data.library_name == "transformers" and card.data.license == "mit"
        assert card.data.base_model == hub.source_checkpoint and "centerclip" in card.data.tags
        for heading in ("How to use", "Cluster settings", "Preprocessing", "Evaluation results", "Training data",
                        "Limitations", "Citation"):  # fmt: skip
            assert f"## {heading}\n" in card.text, (name, heading)
        assert f'AutoModel.from_pretrained("org/{name}", trust_remote_code=True)' in card.text
        assert "decoded at 3.0 fps" in card.text or "decoded at 3 fps" in card.text
        assert "This checkpoint has not been evaluated." in card.text
        if name in PAPER_R1:
            assert f"| {PAPER_R1[name]} |" in card.text
        else:
            assert "No published result exists for this exact configuration." in card.text
        assert ("spectral k-nearest neighbours" in card.text) == (name == "centerclip-vitb32-spectral")
        assert ("centers kept per segment | 160" in card.text) == (name == "centerclip-vitb16")


def test_model_card_reports_given_results_and_training_data(converted):
    text = render_model_card(
        converted,
        results={"MSR-VTT 1k-A": {"t2v R@1": 41.25, "t2v MdR": 2}, "MSVD": {"t2v R@1": 45.5}},
        training_data="MSR-VTT 9k training split, 5 epochs.",
    )
    assert "| MSR-VTT 1k-A | 41.25 | 2 |" in text and "| MSVD | 45.50 | - |" in text
    assert "MSR-VTT 9k training split, 5 epochs." in text and "not been evaluated" not in text
    assert "tiny-centerclip" in text  # the folder's name stands in for a Hub id


# ---------------------------------------------------------------- conversion


def test_conversion_reloads_with_identical_weights(tiny_clip, converted):
    folder, clip = tiny_clip
    names = {path.name for path in converted.iterdir()}
    expected = {"model.safetensors", "config.json", "README.md", "processor_config.json", "tokenizer.json",
                "configuration_centerclip.py", "modeling_centerclip.py", "clustering.py",
                "clustering_triton.py", "processing_centerclip.py"}  # fmt: skip
    assert expected <= names and not [n for n in names if n.endswith((".bin", ".pt", ".pth"))]
    saved = json.loads((converted / "config.json").read_text())
    assert saved["model_type"] == "centerclip" and saved["auto_map"]["AutoModel"].endswith("CenterCLIPModel")
    assert {key: saved[key] for key in TINY_SETTINGS} == TINY_SETTINGS

    model, info = CenterCLIPModel.from_pretrained(converted, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    original, reloaded = clip.state_dict(), model.state_dict()
    assert original.keys() == reloaded.keys()
    assert all(torch.equal(original[key], reloaded[key]) for key in original)

    processor = CenterCLIPProcessor.from_pretrained(converted)
    assert (processor.num_frames, processor.image_size, processor.max_length) == (4, 32, 16)
    assert processor.fps is None  # a settings-only hub configuration has no sidecar


def test_conversion_refuses_a_hub_configuration_for_another_architecture(tiny_clip, tmp_path):
    tiny_b16 = {**TINY_SETTINGS, "vision_config": {"patch_size": 16, "hidden_size": 32}}
    with pytest.raises(ValueError, match=r"vision_config\.patch_size: hub configuration 16, checkpoint 8") as error:
        convert_clip_checkpoint(tiny_clip[0], tiny_b16, tmp_path / "out")
    assert "hidden_size" not in str(error.value)  # only the disagreeing fields are named
    assert not (tmp_path / "out").exists()

    # The shipped ViT-B/16 configuration on a ViT-B/32-shaped checkpoint (its config is all that is read).
    b32 = tmp_path / "vit-b32"
    CLIPConfig().save_pretrained(b32)
    expected = r"'centerclip-vitb16'.*vision_config\.patch_size: hub configuration 16, checkpoint 32"
    with pytest.raises(ValueError, match=expected):
        convert_clip_checkpoint(b32, HUB_CONFIGS_DIR / "centerclip-vitb16", tmp_path / "out")


def test_conversion_refuses_cluster_settings_that_do_not_fit_the_checkpoint(tiny_clip, tmp_path):
    with pytest.raises(ValueError, match="num_centers"):
        convert_clip_checkpoint(tiny_clip[0], {**TINY_SETTINGS, "num_centers": 49}, tmp_path / "out")
    with pytest.raises(ValueError, match="model_type"):
        convert_clip_checkpoint(tiny_clip[0], {"model_type": "clip"}, tmp_path / "out")


# ---------------------------------------------------------------- pushing (Hub API replaced)


@pytest.fixture
def fake_hub(monkeypatch):
    calls = {"create_repo": [], "create_commit": []}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append((repo_id, kwargs))

    def create_commit(self, repo_id, operations, **kwargs):
        calls["create_commit"].append((repo_id, [op.path_in_repo for op in operations], kwargs))
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return calls


def test_convert_command_pushes_a_complete_folder(tiny_clip, tmp_path, fake_hub):
    settings = tmp_path / "tiny.json"
    settings.write_text(json.dumps({**TINY_SETTINGS, "num_frames": 2, "num_segments": 1}))
    out = tmp_path / "tiny-centerclip"
    main(["convert", "--clip", str(tiny_clip[0]), "--hub_config", str(settings), "--output_dir", str(out),
          "--set", "num_frames=4", "--set", "num_segments=2",
          "--push_to_hub", "--hub_model_id", "org/tiny", "--private"])  # fmt: skip

    assert fake_hub["create_repo"] == [("org/tiny", {"repo_type": "model", "private": True, "exist_ok": True})]
    [(repo_id, files, _)] = fake_hub["create_commit"]
    assert repo_id == "org/tiny"
    assert set(files) >= {"model.safetensors", "config.json", "README.md", "configuration_centerclip.py",
                          "modeling_centerclip.py", "clustering.py", "processing_centerclip.py", "tokenizer.json",
                          "tokenizer_config.json", "processor_config.json"}  # fmt: skip
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert CenterCLIPConfig.from_pretrained(out).num_frames == 4  # --set replaced the file's settings
    assert 'from_pretrained("org/tiny", trust_remote_code=True)' in (out / "README.md").read_text()


def test_push_refuses_pickled_weights(converted, tmp_path, fake_hub):
    folder = tmp_path / "with-pickle"
    folder.mkdir()
    for path in converted.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin"):
        push_folder(folder, "org/tiny")
    assert fake_hub["create_commit"] == [] and fake_hub["create_repo"] == []


# ---------------------------------------------------------------- loading both ways


def _card_snippet(folder) -> str:
    return re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)


def test_auto_classes_load_the_installed_package_without_remote_code(converted):
    model = AutoModel.from_pretrained(converted)
    processor = AutoProcessor.from_pretrained(converted)
    assert type(model) is CenterCLIPModel and type(processor) is CenterCLIPProcessor


def test_fresh_process_loads_the_pushed_folder_with_remote_code(converted, video_file, tmp_path):
    """Runs the model card's own snippet where neither `modeling_centerclip` nor `training` can be imported."""
    snippet = _card_snippet(converted).replace('"org/tiny-centerclip"', repr(str(converted)))
    snippet = snippet.replace('"video.mp4"', repr(str(video_file)))
    child = textwrap.dedent(
        """
        import importlib.abc, json, sys

        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("modeling_centerclip", "training"):
                    raise ImportError(f"{name} is blocked in this test")

        sys.meta_path.insert(0, Blocker())
        exec(sys.argv[1])
        print("RESULT", json.dumps(dict(texts=texts, logits=outputs.logits_per_text.tolist(),
                                        model=type(model).__module__, processor=type(processor).__module__)))
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    run = subprocess.run([sys.executable, "-c", child, snippet], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert result["model"].startswith("transformers_modules.")
    assert result["processor"].startswith("transformers_modules.")

    model = CenterCLIPModel.from_pretrained(converted).eval()
    inputs = CenterCLIPProcessor.from_pretrained(converted)(text=result["texts"], videos=[str(video_file)])
    with torch.no_grad():
        expected = model(**inputs).logits_per_text
    assert expected.shape == (len(result["texts"]), 1)
    torch.testing.assert_close(torch.tensor(result["logits"]), expected, rtol=1e-5, atol=1e-5)
