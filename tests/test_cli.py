"""What every command shares: `--help` before the heavy stack, help lines with defaults, one-line user errors.

The five commands: `centerclip` (`python -m search`), `training/train.py`, `training/evaluate.py`,
`python -m training.prepare_frames`, `python -m training.publish`. Their `--help` time is measured by
`benchmarks/benchmark_cli_help.py`, not here.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from training.cli_errors import DEBUG_ENV, run_cli
from training.cli_parsers import MIRRORED

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "centerclip": ["-m", "search"],
    "train.py": [str(REPO / "training" / "train.py")],
    "evaluate.py": [str(REPO / "training" / "evaluate.py")],
    "prepare_frames": ["-m", "training.prepare_frames"],
    "publish": ["-m", "training.publish"],
    "demo.py": [str(REPO / "training" / "demo.py")],
}
HEAVY = ("torch", "transformers", "datasets", "faiss", "accelerate")


def run(command: str, *argv: str, cwd: Path = REPO, python_flags=(), **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != DEBUG_ENV}
    environment.update(PYTHONPATH=str(REPO), **env)
    return subprocess.run([sys.executable, *python_flags, *COMMANDS[command], *argv], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


# ----------------------------------------------------------------------------------------------------- --help


@pytest.mark.parametrize("command, argv", [
    ("centerclip", ["--help"]), ("centerclip", ["index", "--help"]), ("centerclip", ["serve", "--help"]),
    ("train.py", ["--help"]), ("evaluate.py", ["--help"]), ("prepare_frames", ["--help"]),
    ("publish", ["--help"]), ("publish", ["convert", "--help"]),
])  # fmt: skip
def test_help_imports_neither_torch_nor_transformers(command, argv):
    done = run(command, *argv, python_flags=("-X", "importtime"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout and "--debug" in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    loaded = sorted(name for name in imported if name.split(".")[0] in HEAVY)
    assert not loaded, f"{command} {' '.join(argv)} imported {loaded[:5]}"


def all_parsers() -> dict[str, argparse.ArgumentParser]:
    from search.cli import build_parser as centerclip_parser
    from training.cli_parsers import build_evaluate_parser, build_prepare_frames_parser, build_publish_parser
    from training.config import build_parser as train_parser

    parsers = {"centerclip": centerclip_parser(), "train.py": train_parser(), "evaluate.py": build_evaluate_parser(),
               "prepare_frames": build_prepare_frames_parser(), "publish": build_publish_parser()}  # fmt: skip
    for name, parser in list(parsers.items()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.update({f"{name} {sub}": subparser for sub, subparser in action.choices.items()})
    return parsers


def test_every_flag_has_a_help_line_showing_its_default():
    for name, parser in all_parsers().items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            flag = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{flag}: no help line"
            if action.option_strings and action.default not in (None, False, []):
                text = formatter._expand_help(action)
                assert "default" in text and str(action.default) in text, (flag, text)
    serve = all_parsers()["centerclip serve"].format_help()
    assert "(default: 7860)" in serve and "127.0.0.1" in serve
    assert "frame store" in all_parsers()["centerclip index"].format_help()


def test_mirrored_option_values_equal_their_originals():
    """The parsers list these values without importing the modules that own them (torch): they must agree."""
    import training.cli_parsers as light

    for name, original in MIRRORED.items():
        module, attribute = original.rsplit(".", 1)
        assert getattr(light, name) == getattr(importlib.import_module(module), attribute), name
    corpus_options = argparse.ArgumentParser()
    light.add_corpus_options(corpus_options)
    assert tuple(action.dest for action in corpus_options._actions[1:]) == light.CORPUS_KEYS


# ------------------------------------------------------------------------------------------ one-line errors


def failing(error: BaseException):
    def main(argv):
        raise error

    return main


@pytest.mark.parametrize("error, expected", [
    (FileNotFoundError("video_dir '/data/x' is not a directory"), r"video_dir '/data/x' is not a directory"),
    (ValueError("config key 'fps'=-1: must be positive"), r"config key 'fps'=-1: must be positive"),
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/out/part-0.parquet"),
     r"/out/part-0\.parquet: No space left on device \(free space or write elsewhere\)"),
    (OSError(errno.EROFS, os.strerror(errno.EROFS), "/mnt/ro/idx"), r"/mnt/ro/idx: Read-only file system \(write"),
    (PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/root/x"), r"/root/x: Permission denied \(check"),
    (ValueError("line one\nline two"), r"line one line two"),
])  # fmt: skip
def test_a_user_error_is_one_line_naming_the_file_and_exits_2(error, expected, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_cli("prog", failing(error), [])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.fullmatch(f"prog: error: {expected}.*\n", err), err


def test_a_bug_keeps_its_traceback_and_debug_shows_user_errors_too(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(KeyError):  # a bug: not caught
        run_cli("prog", failing(KeyError("x")), [])

    class IndexLocked(RuntimeError):  # a command's own user error, its class looked up only when reported
        pass

    with pytest.raises(SystemExit):
        run_cli("prog", failing(IndexLocked("held by pid 7")), [], user_errors=lambda: (IndexLocked,))
    assert capsys.readouterr().err == "prog: error: held by pid 7\n"
    with pytest.raises(RuntimeError, match="shapes"):  # any other RuntimeError is a bug
        run_cli("prog", failing(RuntimeError("shapes cannot be multiplied")), [], user_errors=lambda: (IndexLocked,))
    with pytest.raises(ValueError, match="bad"):
        run_cli("prog", failing(ValueError("bad")), ["--debug"])
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(FileNotFoundError):
        run_cli("prog", failing(FileNotFoundError("gone")), [])
    monkeypatch.setenv(DEBUG_ENV, "0")
    with pytest.raises(SystemExit):
        run_cli("prog", failing(FileNotFoundError("gone")), [])
    with pytest.raises(SystemExit) as exit_info:
        run_cli("prog", failing(KeyboardInterrupt()), [])
    assert exit_info.value.code == 130 and capsys.readouterr().err.endswith("prog: interrupted\n")


# Each command as a user runs it, with a mistake; the line must name the file or argument at fault.
CASES = [
    ("centerclip", ["search", "{tmp}/no_index", "a dog"], r"centerclip search: error: .*no_index"),
    ("centerclip", ["index", "{tmp}", "--model", "outputs/demo/centerclip/final", "--output", "{tmp}/idx"],
     r"centerclip index: error: model outputs/demo/centerclip/final: no such model folder; `make demo` .*Hub id"),
    ("centerclip", ["serve", "{tmp}", "--port", "70000"], r"centerclip serve: error: argument --port: a port is a number from 1 to 65535"),
    ("train.py", ["--config", "{tmp}/missing.yaml"], r"train\.py: error: config: file '.*missing\.yaml' not found"),
    ("evaluate.py", ["--from_embeddings", "{tmp}"], r"evaluate\.py: error: --from_embeddings .*: no embeddings"),
    ("evaluate.py", ["--model", "{tmp}/no_model", "--corpus", "demo"], r"evaluate\.py: error: --model .*no_model: no such"),
    ("prepare_frames", ["{tmp}/no_videos", "--output_dir", "{tmp}/store"], r"error: unknown corpus '.*no_videos'"),
    ("publish", ["convert", "--clip", "x", "--hub_config", "{tmp}/nope", "--output_dir", "{tmp}/o"],
     r"python -m training\.publish: error: Hub configuration .*nope not found"),
    ("demo.py", ["--output_dir", "/dev/null/demo"], r"demo\.py: error: /dev/null/demo: Not a directory"),
]  # fmt: skip


@pytest.mark.parametrize("command, argv, expected", CASES, ids=[f"{c[0]} {c[1][0]}" for c in CASES])
def test_each_command_reports_a_user_error_in_one_line(command, argv, expected, tmp_path):
    done = run(command, *(a.format(tmp=tmp_path) for a in argv), cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert re.search(expected, last), done.stderr[-3000:]
    if "usage:" not in done.stderr:  # argparse's own errors come with the usage; ours are one line
        assert done.stderr.strip().count("\n") == 0, done.stderr


@pytest.mark.parametrize("how", ["--debug", DEBUG_ENV])
def test_debug_shows_the_traceback_of_a_user_error(how, tmp_path):
    argv = ["--from_embeddings", str(tmp_path)] + (["--debug"] if how == "--debug" else [])
    done = run("evaluate.py", *argv, **({DEBUG_ENV: "1"} if how == DEBUG_ENV else {}))
    assert done.returncode != 0 and "Traceback (most recent call last)" in done.stderr
    assert "FileNotFoundError" in done.stderr and "no embeddings" in done.stderr
