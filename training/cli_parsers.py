"""The commands' argument parsers and what they share, importable without torch, Transformers or `datasets`.

`--help` and a mistyped flag answer before the heavy stack loads: each command builds its parser from here
(`train.py` from `training.config`, which uses these helpers) and parses before its own heavy imports.

The option values listed in `--help` mirror the modules that own them (`MIRRORED`), because those modules import
torch; `tests/test_cli.py` checks that every mirror equals its original.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from training.cli_errors import add_debug_flag

CLUSTER_ALGOS = ("kmedoids", "spectral", "tome", "uniform", "temporal", "none")
CLUSTER_DISTANCES = ("euclidean", "cosine")
CORPUS_KEYS = ("video_dir", "splits_dir", "captions_file", "data_json", "train_list")
INDEX_KINDS = ("flat", "ivf", "hnsw", "ivfpq")
MIRRORED = {
    "CLUSTER_ALGOS": "modeling_centerclip.configuration_centerclip.CLUSTER_ALGOS",
    "CLUSTER_DISTANCES": "modeling_centerclip.configuration_centerclip.CLUSTER_DISTANCES",
    "CORPUS_KEYS": "training.corpora.CORPUS_KEYS",
    "INDEX_KINDS": "search.ann.KINDS",
    "METRIC_CONVENTIONS": "training.evaluate.METRIC_CONVENTIONS",
}
EXPORT_ONNX_ATOL = 1e-4  # largest embedding difference ONNX Runtime vs PyTorch that export-onnx accepts
POST_PROCESSES = ("none", "dsl")
METRIC_CONVENTIONS = ("strict", "clip4clip")
# The repository's hub_configs/ in a checkout or an editable install; a wheel ships it as training/hub_configs.
_CHECKOUT_HUB_CONFIGS = Path(__file__).resolve().parents[1] / "hub_configs"
HUB_CONFIGS_DIR = _CHECKOUT_HUB_CONFIGS if _CHECKOUT_HUB_CONFIGS.is_dir() else Path(__file__).resolve().parent / "hub_configs"
SIDECAR_NAME = "hub.json"
CORPUS_NAMES = "msrvtt / msvd / lsmdc / activitynet / demo"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help lines end with the flag's default, unless there is none (None, False, empty) or the text says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def new_parser(**kwargs) -> argparse.ArgumentParser:
    """An `ArgumentParser` with defaults in its help and `--debug` (see `training.cli_errors`)."""
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, **kwargs)
    add_debug_flag(parser)
    return parser


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def add_corpus_options(parser) -> None:
    """The options of `training.corpora.load_corpus` (`CORPUS_KEYS`), as every command takes them."""
    parser.add_argument("--video_dir", help="a benchmark's videos, found by id anywhere under this folder")
    parser.add_argument("--splits_dir", help="a benchmark's split files (default: the copy shipped in "
                        "training/splits/<corpus>)")  # fmt: skip
    parser.add_argument("--captions_file", help="MSVD's captions (raw-captions.pkl, JSON, or 'id caption' lines)")
    parser.add_argument("--data_json", help="MSR-VTT's MSRVTT_data.json, the training captions (default: in "
                        "--splits_dir; without it only the test split is built)")  # fmt: skip
    parser.add_argument("--train_list", choices=("9k", "7k"), help="MSR-VTT's training list (default: 9k)")


def default_num_workers() -> int:
    """Decoding workers per process: the CPU cores this process may use, shared by the local processes, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, min(8, cores // local - 1))


def build_evaluate_parser() -> argparse.ArgumentParser:
    parser = new_parser(prog="evaluate.py", description="Text-video retrieval evaluation of a saved CenterCLIP folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a save_pretrained folder (model + processor) or Hub id")
    source.add_argument("--from_embeddings", metavar="DIR", help="rank embeddings saved with --save_embeddings")
    parser.add_argument("--corpus", help=f"a videofolder or frame store path, or {CORPUS_NAMES}")
    add_corpus_options(parser)
    parser.add_argument("--split", default="test", help="the split to evaluate")
    parser.add_argument("--batch_size", type=positive_int, default=32, help="videos per encoding batch")
    parser.add_argument("--chunk_size", type=positive_int, default=1024, help="query rows per similarity block")
    parser.add_argument("--max_videos", type=positive_int, help="evaluate the first N videos only (default: all)")
    parser.add_argument("--num_workers", type=int, default=default_num_workers(),
                        help="decoding workers per process (default here: %(default)s, from the CPU cores, "
                        "at most 8)")  # fmt: skip
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to encode")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                        help="autocast dtype of the encoders (auto: bfloat16/float16 on a GPU, float32 on the CPU)")
    parser.add_argument("--post_process", choices=POST_PROCESSES, default="none",
                        help="dsl: also report dual-softmax (inverted softmax) re-scored results, beside the plain ones")
    parser.add_argument("--metric_convention", choices=METRIC_CONVENTIONS, default="strict",
                        help="strict: ties count against the model, MdR averages the middle two; clip4clip: "
                        "CLIP4Clip's metrics.py number for number (see docs/training.md)")  # fmt: skip
    parser.add_argument("--save_embeddings", metavar="DIR",
                        help="write the embeddings, ids and provenance here (safetensors + JSON)")
    parser.add_argument("--output", help="write the JSON report here")
    return parser


def build_prepare_frames_parser() -> argparse.ArgumentParser:
    parser = new_parser(prog="python -m training.prepare_frames",
                        description="Decode a corpus once into a frame store, so training and evaluation stop "
                        "decoding video.")  # fmt: skip
    parser.add_argument("source", help=f"a videofolder path, or {CORPUS_NAMES}")
    parser.add_argument("--output_dir", required=True, help="the store folder (an interrupted run resumes here)")
    add_corpus_options(parser)
    parser.add_argument("--fps", type=float, default=3.0, help="frames per second kept (0: every frame)")
    parser.add_argument("--size", type=int, default=224, help="shorter side after resizing, center crop (0: keep)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality (1-100), chroma kept at full resolution")
    parser.add_argument("--num_proc", type=int, default=1, help="decoding processes")
    parser.add_argument("--shard_size", type=int, default=100, help="videos per shard (the unit of resuming)")
    parser.add_argument("--push_to_hub", metavar="REPO", help="then publish the store as this dataset repository")
    parser.add_argument("--private", action="store_true", help="make the Hub repository private")
    return parser


def list_hub_configs() -> list[str]:
    """Names of the hub configurations shipped in `hub_configs/`."""
    return sorted(path.parent.name for path in HUB_CONFIGS_DIR.glob(f"*/{SIDECAR_NAME}"))


def key_value(text: str) -> tuple[str, str]:
    """`--set KEY=VALUE` -> (KEY, VALUE); `training.publish` checks the key and reads the value as JSON."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def build_publish_parser() -> argparse.ArgumentParser:
    parser = new_parser(prog="python -m training.publish", description="Publish CenterCLIP to the Hugging Face "
                        "Hub: hub configurations, CLIP checkpoint conversion, pushes.")  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", formatter_class=HelpFormatter,
                                  help="CLIP checkpoint + hub configuration -> CenterCLIP folder")  # fmt: skip
    convert.add_argument("--clip", required=True, help="Hub id or folder of a safetensors CLIP checkpoint")
    convert.add_argument("--hub_config", required=True, help=f"folder, JSON file, or one of {list_hub_configs()}")
    convert.add_argument("--output_dir", required=True, help="the CenterCLIP folder to write")
    convert.add_argument("--set", dest="overrides", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                         help="replace a CenterCLIP setting, e.g. --set num_frames=8 (repeatable)")
    convert.add_argument("--overwrite", action="store_true", help="write into a non-empty output_dir")
    convert.add_argument("--tokenizer", help="folder or Hub id of the CLIP tokenizer (default: the checkpoint's)")
    push = commands.add_parser("push", formatter_class=HelpFormatter, help="push a saved CenterCLIP folder")
    push.add_argument("--folder", required=True, help="a CenterCLIP folder (convert's --output_dir, train's final/) "
                      "or a LoRA run's final/ (adapter)")  # fmt: skip
    push.add_argument("--merge", action="store_true", help="an adapter folder: push the base with the adapter merged "
                      "into its weights (a full model, saved to --output_dir first) instead of the adapter")
    push.add_argument("--output_dir", help="with --merge: where the merged model is saved")
    push.add_argument("--results", help="an adapter folder: evaluation report (evaluate.py --output) for its card")
    for sub in (convert, push):
        sub.add_argument("--hub_model_id", help="org/name of the Hub repo (required to push)")
        sub.add_argument("--private", action="store_true", help="make the Hub repository private")
        sub.add_argument("--token", help="Hub token (default: the logged-in one / HF_TOKEN)")
        add_debug_flag(sub)
    convert.add_argument("--push_to_hub", action="store_true", help="then push the folder (needs --hub_model_id)")
    export = commands.add_parser("export-onnx", formatter_class=HelpFormatter,
                                 help="the video tower as ONNX, checked in ONNX Runtime")  # fmt: skip
    add_export_onnx_arguments(export)
    add_debug_flag(export)
    return parser


def add_export_onnx_arguments(parser: argparse.ArgumentParser) -> None:
    """`export-onnx` (training/export_onnx.py): a model folder in, a checked .onnx file out."""
    parser.add_argument("--model", required=True, help="folder or Hub id of a CenterCLIP model (safetensors)")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--batch", type=int, default=1, help="videos per call, fixed in the graph")
    parser.add_argument("--atol", type=float, default=EXPORT_ONNX_ATOL,
                        help="largest embedding difference ONNX Runtime vs PyTorch accepted")
