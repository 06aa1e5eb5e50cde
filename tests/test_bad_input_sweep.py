"""The bad-input sweep (issue #13), one row per case: what a new user might pass, the exception it must raise
(or the behaviour it must show) and a fragment of the message, which names the file, field or argument.

Each section is a list of `Case`s; `test_bad_input` runs them all. A case's `call(tmp_path, fixtures)` builds its
input under `tmp_path` and makes the call; `fragment` is a regular expression searched in the exception's text
plus whatever the call wrote to stderr (argparse errors exit with status 2 and print their message there).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest


@dataclass(frozen=True)
class Case:
    id: str
    call: Callable  # (tmp_path: Path, fixtures: dict) -> anything; must raise `raises`
    raises: type[BaseException]
    fragment: str  # regular expression; `{tmp}` is replaced by the escaped tmp_path


# --- training and evaluation CLI ---


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def _train_args(tmp: Path, *extra: str) -> list[str]:
    from training.config import parse_args

    return parse_args(["--corpus", "demo", "--output_dir", str(tmp / "out"), *extra])


def _yaml_syntax_error(tmp, fx):
    config = _write(tmp / "broken.yaml", "corpus: demo\nlearning_rate: [1e-4\nseed: 0\n")
    return _train_args(tmp, "--config", config, "--model_config", fx["model_config"])


def _output_dir_is_a_file(tmp, fx):
    _write(tmp / "out", "a file where the run folder should go")
    return _train_args(tmp, "--model_config", fx["model_config"])


def _model_config_typo(tmp, fx):
    config = _write(tmp / "run.yaml", "model_config: {num_frames: 4, cluster_algorithm: spectral}\n")
    return _train_args(tmp, "--config", config)


def _model_config_file_typo(tmp, fx):
    path = _write(tmp / "model.json", '{"num_frames": 4, "num_centres": 8}')
    return _train_args(tmp, "--model_config", path)


def _clip_folder_without_tokenizer(tmp, fx):
    return _train_args(tmp, "--model_name_or_path", fx["clip_without_tokenizer"])


def _convert_without_tokenizer(tmp, fx):
    from tiny_models import CLUSTER
    from training.publish import convert_clip_checkpoint

    return convert_clip_checkpoint(fx["clip_without_tokenizer"], dict(CLUSTER), tmp / "converted")


def _empty_tokenizer(tmp, fx):
    from transformers import CLIPTokenizer

    from training.tokenizer import check_tokenizer

    return check_tokenizer(CLIPTokenizer(), "my_tokenizer", "pass a real one")  # what Transformers 5 builds


def _global_batch_remainder(tmp, fx):
    from training.config import per_device_batch_size

    args = _train_args(tmp, "--model_config", fx["model_config"], "--global_batch_size", "128",
                       "--gradient_accumulation_steps", "3")  # fmt: skip
    return per_device_batch_size(args, num_processes=1)


def _resume_incomplete_checkpoint(tmp, fx):
    from training.checkpoints import find_checkpoint

    (tmp / "out" / "checkpoints" / "step_7").mkdir(parents=True)  # killed while saving (older version)
    return find_checkpoint(str(tmp / "out" / "checkpoints" / "step_7"), str(tmp / "out"))


def _resume_folder_that_is_no_run(tmp, fx):
    from training.checkpoints import find_checkpoint

    (tmp / "elsewhere").mkdir()
    return find_checkpoint(str(tmp / "elsewhere"), str(tmp / "out"))


def _evaluate(*argv):
    from training.evaluate import main

    return main(list(argv))


def _evaluate_chunk_size_zero(tmp, fx):
    return _evaluate("--model", fx["clip_without_tokenizer"], "--corpus", "demo", "--chunk_size", "0")


def _evaluate_cuda_without_cuda(tmp, fx):
    with mock.patch("torch.cuda.is_available", return_value=False):
        return _evaluate("--model", fx["clip_without_tokenizer"], "--corpus", "demo", "--device", "cuda")


def _evaluate_folder_without_processor(tmp, fx):
    return _evaluate("--model", fx["clip_without_tokenizer"], "--corpus", "demo", "--device", "cpu")


def _evaluate_missing_embeddings(tmp, fx):
    (tmp / "emb").mkdir()
    return _evaluate("--from_embeddings", str(tmp / "emb"))


TRAINING_AND_EVALUATION_CLI = [
    Case("yaml syntax error", _yaml_syntax_error, ValueError, r"broken\.yaml, line 3: not valid YAML"),
    Case("output_dir is a file", _output_dir_is_a_file, ValueError, r"config key 'output_dir'=.*is a file"),
    Case("model_config typo inline", _model_config_typo, ValueError,
         r"config key 'cluster_algorithm' \(model_config in .*run\.yaml\): not a CenterCLIPConfig field; valid keys: .*cluster_algo"),
    Case("model_config typo in its file", _model_config_file_typo, ValueError,
         r"config key 'num_centres' \(.*model\.json\).*valid keys: .*num_centers"),
    Case("CLIP folder without tokenizer files (train)", _clip_folder_without_tokenizer, ValueError,
         r"{tmp}/clip: no tokenizer files \(it needs tokenizer\.json, or vocab\.json and merges\.txt\); copy"),
    Case("CLIP folder without tokenizer files (convert)", _convert_without_tokenizer, ValueError,
         r"{tmp}/clip: no tokenizer files .*--tokenizer"),
    Case("empty CLIPTokenizer", _empty_tokenizer, ValueError, r"my_tokenizer: the tokenizer has no usable vocabulary"),
    Case("global batch does not divide", _global_batch_remainder, ValueError,
         r"'global_batch_size'=128: not divisible by 1 process\(es\) x gradient_accumulation_steps=3"),
    Case("resume an incomplete checkpoint", _resume_incomplete_checkpoint, ValueError,
         r"step_7: this checkpoint is incomplete.*'latest'"),
    Case("resume a folder that is no run", _resume_folder_that_is_no_run, ValueError,
         r"elsewhere: neither a checkpoint folder \(step_N\) nor a run's output_dir"),
    Case("evaluate --chunk_size 0", _evaluate_chunk_size_zero, SystemExit,
         r"--chunk_size: must be a positive integer, got 0"),
    Case("evaluate --device cuda without CUDA", _evaluate_cuda_without_cuda, SystemExit,
         r"--device cuda: this torch .* has no usable CUDA device; use --device cpu"),
    Case("evaluate a folder without processor files", _evaluate_folder_without_processor, SystemExit,
         r"--model {tmp}/clip: no processor_config\.json"),
    Case("rank from a folder without saved embeddings", _evaluate_missing_embeddings, FileNotFoundError,
         r"--from_embeddings .*emb: no embeddings\.safetensors \(write it with --save_embeddings\)"),
]

CASES = [*TRAINING_AND_EVALUATION_CLI]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> dict:
    """Inputs shared by the rows: a stock CLIP folder without tokenizer files, a valid model_config file."""
    from transformers import CLIPModel

    from tiny_models import tiny_clip_config

    root = tmp_path_factory.mktemp("sweep")
    CLIPModel(tiny_clip_config()).save_pretrained(root / "clip")
    model_config = _write(root / "tiny_model.json", '{"num_frames": 4}')
    return {"root": root, "clip_without_tokenizer": str(root / "clip"), "model_config": model_config}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case, fixtures, tmp_path, capsys):
    tmp = fixtures["root"] if "{tmp}" in case.fragment else tmp_path
    with pytest.raises(case.raises) as caught:
        case.call(tmp, fixtures)
    text = str(caught.value) + "\n" + capsys.readouterr().err
    assert re.search(case.fragment.replace("{tmp}", re.escape(str(tmp))), text), text[-2000:]
