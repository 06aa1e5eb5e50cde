"""Text-video corpora as `datasets.DatasetDict`s with columns `video_id`, `video` (a file path) and `caption`.

`caption` is a string, or a list of strings where a benchmark has several captions per video (MSR-VTT train,
MSVD); training picks one at random, evaluation uses them all. Evaluation splits are named `test` everywhere.

| loader | files it reads (split files as the community distributes them) | splits |
|---|---|---|
| `load_videofolder(folder)` | `metadata.jsonl` / `metadata.csv` (`file_name`, `caption`, optional `split`) | from `split` |
| `load_msrvtt(...)` | `MSRVTT_train.9k.csv` or `.7k.csv`, `MSRVTT_data.json`, `MSRVTT_JSFUSION_test.csv` | train, test (1k-A) |
| `load_msvd(...)` | `train_list.txt`, `val_list.txt`, `test_list.txt` + a captions file | train, validation, test |
| `load_lsmdc(...)` | `LSMDC16_annos_training.csv`, `LSMDC16_annos_val.csv`, `LSMDC16_challenge_1000_publictect.csv` | those present |
| `load_activitynet(...)` | `train.json`, `val_1.json` (-> test), `val_2.json` (-> validation), or gzipped | those present |

The split files of the four benchmarks ship with the package (`training/splits/<corpus>/`, see its README) and
are the default `splits_dir`; users bring the videos and the caption files the community does not redistribute
with the splits (MSR-VTT's `MSRVTT_data.json`, MSVD's captions).

Videos are found by id anywhere under `video_dir` (sub-folders too) with any of `VIDEO_EXTENSIONS`. Videos
that are not there are reported when the corpus is built (how many, the first few ids) and dropped, or raise
with `on_missing="error"`; a corpus with no video at all always raises.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import logging
import os
import pickle
from collections.abc import Callable

from datasets import Dataset, DatasetDict, Features, List, Value

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v")
CORPORA = ("msrvtt", "msvd", "lsmdc", "activitynet", "demo")
# The benchmark split files shipped with the package: the default `splits_dir` of each benchmark loader.
SPLITS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "splits")
_SHOWN_MISSING = 5


# ----------------------------------------------------------------------------------------------- shared helpers


def index_videos(video_dir: str | os.PathLike) -> dict[str, str]:
    """Map each video's file name without extension to its path, searching `video_dir` recursively.

    When one id has several files, the extension earlier in `VIDEO_EXTENSIONS` wins.
    """
    video_dir = os.fspath(video_dir)
    if not os.path.isdir(video_dir):
        raise FileNotFoundError(f"video_dir {video_dir!r} is not a directory")
    rank = {ext: position for position, ext in enumerate(VIDEO_EXTENSIONS)}
    found: dict[str, tuple[int, str]] = {}
    for root, _, files in os.walk(video_dir, followlinks=True):
        for name in files:
            stem, ext = os.path.splitext(name)
            ext = ext.lower()
            if ext in rank and (stem not in found or rank[ext] < found[stem][0]):
                found[stem] = (rank[ext], os.path.join(root, name))
    return {stem: path for stem, (_, path) in found.items()}


def _value_type(values: list) -> Value:
    """Arrow type of an extra metadata column: bool, int64, float64, or string (anything else is JSON-encoded)."""
    kinds = {type(v) for v in values if v is not None}
    if kinds == {bool}:
        return Value("bool")
    if kinds == {int}:
        return Value("int64")
    if kinds and kinds <= {int, float}:
        return Value("float64")
    return Value("string")


def _to_dataset(rows: list[dict], caption_is_list: bool) -> Dataset:
    columns = {"video_id": Value("string"), "video": Value("string"),
               "caption": List(Value("string")) if caption_is_list else Value("string")}
    data = {key: [row[key] for row in rows] for key in columns}
    for key in (k for k in (rows[0] if rows else {}) if k not in columns):  # extra metadata columns
        values = [row.get(key) for row in rows]
        columns[key] = _value_type(values)
        if columns[key] == Value("string"):
            values = [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]
        data[key] = values
    return Dataset.from_dict(data, features=Features(columns))


def _resolve_videos(
    corpus: str,
    split: str,
    rows: list[dict],
    lookup: Callable[[str], str | None],
    where: str,
    on_missing: str,
) -> tuple[list[dict], int]:
    """Fill each row's `video` path; report and drop the rows whose video is not found. Returns (rows, missing)."""
    kept, missing = [], []
    for row in rows:
        path = lookup(row["video_id"])
        if path is None:
            missing.append(row["video_id"])
        else:
            kept.append({**row, "video": path})
    if missing:
        shown = ", ".join(missing[:_SHOWN_MISSING]) + (", ..." if len(missing) > _SHOWN_MISSING else "")
        message = f"{corpus} {split}: {len(missing)} of {len(rows)} videos not found under {where} (first: {shown})"
        if on_missing == "error":
            raise FileNotFoundError(message)
        logger.warning("%s; they are skipped", message)
    return kept, len(missing)


def _build(
    corpus: str,
    splits: dict[str, list[dict]],
    lookup: Callable[[str], str | None],
    where: str,
    on_missing: str,
    caption_is_list: bool | dict[str, bool],
) -> DatasetDict:
    if on_missing not in ("skip", "error"):
        raise ValueError(f"on_missing must be 'skip' or 'error', got {on_missing!r}")
    if not splits:
        raise FileNotFoundError(f"{corpus}: no split file found")
    result, total, total_missing, example = {}, 0, 0, None
    for split, rows in splits.items():
        kept, missing = _resolve_videos(corpus, split, rows, lookup, where, on_missing)
        total, total_missing = total + len(rows), total_missing + missing
        example = example or (rows[0]["video_id"] if rows else None)
        is_list = caption_is_list[split] if isinstance(caption_is_list, dict) else caption_is_list
        result[split] = _to_dataset(kept, is_list)
    if total and total == total_missing:
        raise FileNotFoundError(
            f"{corpus}: none of its {total} videos was found under {where} (looked for e.g. {example}.mp4 with "
            f"extensions {', '.join(VIDEO_EXTENSIONS)}); check video_dir"
        )
    logger.info("%s: %s", corpus, ", ".join(f"{name} {len(ds)} videos" for name, ds in result.items()))
    return DatasetDict(result)


def _splits_dir(corpus: str, splits_dir: str | os.PathLike | None) -> str:
    """`splits_dir`, or the split files shipped with the package for `corpus`."""
    return os.path.join(SPLITS_DIR, corpus) if splits_dir is None else os.fspath(splits_dir)


def _require(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _open_text(path: str, newline: str | None = None) -> io.StringIO:
    """A UTF-8 text file (gzipped if its name ends in `.gz`) to read like `open(path, encoding="utf-8")`, without
    the byte-order mark spreadsheet programs write; another encoding raises a ValueError naming the file and line
    instead of a bare UnicodeDecodeError."""
    with open(path, "rb") as handle:
        data = handle.read()
    if path.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as error:
            raise ValueError(f"{path}: not a complete gzip file ({error})") from None
    data = data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data
    try:
        return io.StringIO(data.decode("utf-8"), newline=newline)
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 text (byte {data[error.start]:#04x}); save the file as UTF-8"
        ) from None


def _read_json(path: str):
    with _open_text(path) as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None


def _read_csv(path: str, columns: tuple[str, ...] = ()) -> list[tuple[int, dict]]:
    """(line number, record) of a CSV file whose header names at least `columns`. A row with more fields than
    the header raises, naming the line: an unquoted comma would otherwise shift or drop text."""
    with _open_text(path, newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        absent = [column for column in columns if column not in header]
        if absent:
            raise ValueError(f"{path}: the header {header} has no column {absent[0]!r}")
        records = []
        for record in reader:
            if None in record:  # DictReader files the fields beyond the header under None
                raise ValueError(
                    f"{path}:{reader.line_num}: {len(header) + len(record[None])} fields, but the header has "
                    f"{len(header)} ({', '.join(header)}); quote fields that contain commas"
                )
            records.append((reader.line_num, record))
    return records


def _read_id_list(path: str) -> list[str]:
    """One id per line (a header line `video_id` is skipped), blank lines ignored."""
    with _open_text(path) as handle:
        ids = [line.strip().split(",")[0] for line in handle if line.strip()]
    return ids[1:] if ids and ids[0] == "video_id" else ids


def _index_lookup(video_dir: str, strip_prefix: str | None = None) -> Callable[[str], str | None]:
    index = index_videos(video_dir)

    def lookup(video_id: str) -> str | None:
        path = index.get(video_id)
        if path is None and strip_prefix and video_id.startswith(strip_prefix):
            path = index.get(video_id[len(strip_prefix) :])
        return path

    return lookup


# ------------------------------------------------------------------------------------------------- videofolder

METADATA_NAMES = ("metadata.jsonl", "metadata.csv")


def _read_metadata(path: str) -> list[tuple[int, dict]]:
    """(line number, record) of a `metadata.jsonl` / `metadata.csv`."""
    if not path.endswith(".jsonl"):
        return _read_csv(path)
    records = []
    with _open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error})") from error
            if not isinstance(record, dict):
                raise ValueError(f'{path}:{number}: expected a JSON object {{"file_name": ..., "caption": ...}}, '
                                 f"got a {type(record).__name__}")
            records.append((number, record))
    return records


def _metadata_sources(folder: str) -> list[tuple[str, str | None]]:
    """`(metadata file, split named by its folder or None)`: the root's file, else one per split sub-folder."""
    for name in METADATA_NAMES:
        if os.path.isfile(os.path.join(folder, name)):
            return [(os.path.join(folder, name), None)]
    sources = []
    for sub in sorted(os.listdir(folder)):
        for name in METADATA_NAMES:
            if os.path.isfile(os.path.join(folder, sub, name)):
                sources.append((os.path.join(folder, sub, name), sub))
                break
    if not sources:
        raise FileNotFoundError(f"{folder}: no metadata.jsonl or metadata.csv (in the folder or a split sub-folder)")
    return sources


def _is_caption(value) -> bool:
    if isinstance(value, list):
        return bool(value) and all(isinstance(c, str) for c in value)
    return isinstance(value, str)


def load_videofolder(folder: str | os.PathLike, on_missing: str = "skip") -> DatasetDict:
    """A folder of videos described by `metadata.jsonl` or `metadata.csv` (the `videofolder` convention).

    Each record has `file_name` (relative to the metadata file), `caption` (a string; in JSON lines also a list)
    and optionally `split` (default `train`) and `video_id` (default: the file name without extension, or the
    path relative to `folder` without extension when names repeat). Other fields are kept as extra columns.
    The metadata may also sit in one sub-folder per split (`train/metadata.jsonl`, ...), each naming its split.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"videofolder {folder!r} is not a directory")
    reserved = {"file_name", "caption", "split", "video_id"}
    records = []
    for path, folder_split in _metadata_sources(folder):
        for number, (line, record) in enumerate(_read_metadata(path), 1):
            where = f"{path}:{line}: record {number}"
            for field in ("file_name", "caption"):
                if not record.get(field):
                    raise ValueError(f"{where} has no {field!r}")
            if not _is_caption(record["caption"]):
                raise ValueError(f"{where} 'caption' must be a string or a list of strings")
            video_path = os.path.normpath(os.path.join(os.path.dirname(path), str(record["file_name"])))
            # Judged on the path as written: a symlink inside the folder may point anywhere, by the user's choice.
            if os.path.commonpath([os.path.abspath(folder), os.path.abspath(video_path)]) != os.path.abspath(folder):
                raise ValueError(f"{where} file_name {record['file_name']!r} leaves the corpus folder {folder}: "
                                 "file names must be paths inside it, relative to the metadata file")
            records.append({**record, "path": video_path, "split": record.get("split") or folder_split or "train"})

    stems = [os.path.splitext(os.path.basename(r["path"]))[0] for r in records]
    stems_unique = len(set(stems)) == len(stems)
    caption_is_list = any(isinstance(r["caption"], list) for r in records)  # one column type for all rows
    extra_keys = sorted({key for r in records for key in r} - reserved - {"path"})
    splits: dict[str, list[dict]] = {}
    paths: dict[str, str] = {}
    for record, stem in zip(records, stems):
        relative = os.path.splitext(os.path.relpath(record["path"], folder))[0].replace(os.sep, "/")
        video_id = record.get("video_id") or (stem if stems_unique else relative)
        if video_id in paths:
            raise ValueError(f"{folder}: video_id {video_id!r} appears twice in the metadata")
        paths[video_id] = record["path"]
        caption = [record["caption"]] if caption_is_list and isinstance(record["caption"], str) else record["caption"]
        row = {"video_id": video_id, "caption": caption, **{key: record.get(key) for key in extra_keys}}
        splits.setdefault(record["split"], []).append(row)

    def lookup(video_id: str) -> str | None:
        return paths[video_id] if os.path.isfile(paths[video_id]) else None

    return _build("videofolder", splits, lookup, folder, on_missing, caption_is_list)


# ---------------------------------------------------------------------------------------------------- MSR-VTT


def load_msrvtt(
    video_dir: str | os.PathLike,
    splits_dir: str | os.PathLike | None = None,
    data_json: str | os.PathLike | None = None,
    train_list: str = "9k",
    on_missing: str = "skip",
) -> DatasetDict:
    """MSR-VTT: `train` (the 9k or 7k list, all 20 captions of each video from `MSRVTT_data.json`) and `test`
    (the 1k-A split, `MSRVTT_JSFUSION_test.csv`: one caption per video).

    `splits_dir` defaults to the shipped split files; `data_json` to `MSRVTT_data.json` in `splits_dir`; without
    it only `test` is built (with a warning).
    """
    splits_dir = _splits_dir("msrvtt", splits_dir)
    if train_list not in ("9k", "7k"):
        raise ValueError(f"train_list must be '9k' or '7k', got {train_list!r}")
    splits: dict[str, list[dict]] = {}
    data_json = os.fspath(data_json) if data_json is not None else os.path.join(splits_dir, "MSRVTT_data.json")
    if os.path.isfile(data_json):
        data = _read_json(data_json)
        if not isinstance(data, dict) or not isinstance(data.get("sentences"), list):
            got = "no 'sentences' list" if isinstance(data, dict) else f"a {type(data).__name__}"
            raise ValueError(f"{data_json}: expected a JSON object with a 'sentences' list, got {got}")
        captions: dict[str, list[str]] = {}
        for number, sentence in enumerate(data["sentences"]):
            if not isinstance(sentence, dict) or not {"video_id", "caption"} <= sentence.keys():
                problem = (f"has no {'caption' if 'video_id' in sentence else 'video_id'!r}"
                           if isinstance(sentence, dict) else f"is a {type(sentence).__name__}")
                raise ValueError(f"{data_json}: sentences[{number}] {problem}; each sentence is "
                                 '{"video_id": ..., "caption": ...}')
            captions.setdefault(sentence["video_id"], []).append(sentence["caption"])
        train_file = os.path.join(splits_dir, f"MSRVTT_train.{train_list}.csv")
        train_ids = _read_id_list(_require(train_file, "MSR-VTT train list"))
        splits["train"] = _captioned_rows("msrvtt train", train_ids, captions, data_json)
    else:
        logger.warning("msrvtt: %s not found, so only the test split is built", data_json)
    test_csv = _require(os.path.join(splits_dir, "MSRVTT_JSFUSION_test.csv"), "MSR-VTT 1k-A test CSV")
    test_rows = _read_csv(test_csv, ("video_id", "sentence"))
    splits["test"] = [{"video_id": row["video_id"], "caption": row["sentence"]} for _, row in test_rows]
    return _build("msrvtt", splits, _index_lookup(os.fspath(video_dir)), os.fspath(video_dir), on_missing,
                  {"train": True, "test": False})


# ------------------------------------------------------------------------------------------------------- MSVD


def read_msvd_captions(captions_file: str | os.PathLike) -> dict[str, list[str]]:
    """Captions per MSVD video from one of the common formats:

    - `.pkl` / `.pickle` (e.g. CLIP4Clip's `raw-captions.pkl`) or `.json`: `{video_id: [caption, ...]}`, where
      a caption may be a string or a list of words;
    - anything else: text lines `video_id caption words...` (e.g. `AllVideoDescriptions.txt`); lines starting
      with `#` are comments. Pickles run code when loaded: only read files you trust.
    """
    path = os.fspath(captions_file)
    _require(path, "MSVD captions file")
    if path.endswith((".pkl", ".pickle", ".json")):
        if path.endswith(".json"):
            raw = _read_json(path)
        else:
            with open(path, "rb") as handle:
                raw = pickle.load(handle)
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping video_id -> list of captions, got {type(raw).__name__}")
        return {str(vid): [c if isinstance(c, str) else " ".join(c) for c in caps] for vid, caps in raw.items()}
    captions: dict[str, list[str]] = {}
    with _open_text(path) as handle:
        for line in handle:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            video_id, _, caption = line.partition(" ")
            if caption.strip():
                captions.setdefault(video_id, []).append(caption.strip())
    return captions


def load_msvd(
    video_dir: str | os.PathLike,
    splits_dir: str | os.PathLike | None = None,
    captions_file: str | os.PathLike | None = None,
    on_missing: str = "skip",
) -> DatasetDict:
    """MSVD: `train` / `validation` / `test` from `train_list.txt` / `val_list.txt` / `test_list.txt` (default:
    the shipped lists); every split keeps all captions of a video as a list (see `read_msvd_captions` for the
    captions file formats)."""
    if captions_file is None:
        raise ValueError("msvd: captions_file is required (e.g. CLIP4Clip's raw-captions.pkl); the split lists "
                         "ship with the package, the captions do not")
    splits_dir = _splits_dir("msvd", splits_dir)
    captions = read_msvd_captions(captions_file)
    splits = {}
    for split, name in (("train", "train_list.txt"), ("validation", "val_list.txt"), ("test", "test_list.txt")):
        path = os.path.join(splits_dir, name)
        if not os.path.isfile(path):
            continue
        ids = _read_id_list(path)
        splits[split] = _captioned_rows(f"msvd {split}", ids, captions, captions_file)
    return _build("msvd", splits, _index_lookup(os.fspath(video_dir)), os.fspath(video_dir), on_missing, True)


# ------------------------------------------------------------------------------------------------------ LSMDC

LSMDC_FILES = (
    ("train", "LSMDC16_annos_training.csv"),
    ("validation", "LSMDC16_annos_val.csv"),
    ("test", "LSMDC16_challenge_1000_publictect.csv"),
)


def read_lsmdc_csv(path: str) -> list[dict]:
    """LSMDC's tab-separated annotations, no header: clip id, 4 time stamps, sentence."""
    rows = []
    with _open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) == 1 and not fields[0].strip():
                continue
            if len(fields) < 6:
                raise ValueError(f"{path}:{number}: expected 6 tab-separated fields, got {len(fields)}")
            rows.append({"video_id": fields[0].strip(), "caption": "\t".join(fields[5:]).strip()})
    return rows


def load_lsmdc(video_dir: str | os.PathLike, splits_dir: str | os.PathLike | None = None,
               on_missing: str = "skip") -> DatasetDict:
    """LSMDC (one sentence per clip): the splits whose CSV is in `splits_dir` (default: the shipped test CSV);
    clips like `<movie>/<clip_id>.avi` are found anywhere under `video_dir`."""
    splits_dir = _splits_dir("lsmdc", splits_dir)
    splits = {split: read_lsmdc_csv(os.path.join(splits_dir, name))
              for split, name in LSMDC_FILES if os.path.isfile(os.path.join(splits_dir, name))}
    return _build("lsmdc", splits, _index_lookup(os.fspath(video_dir)), os.fspath(video_dir), on_missing, False)


# ------------------------------------------------------------------------------------------------ ActivityNet

ACTIVITYNET_FILES = (("train", "train.json"), ("validation", "val_2.json"), ("test", "val_1.json"))


def load_activitynet(
    video_dir: str | os.PathLike, splits_dir: str | os.PathLike | None = None, on_missing: str = "skip"
) -> DatasetDict:
    """ActivityNet Captions, paragraph-to-video: each video's sentences joined into one caption. `train.json`
    -> train, `val_1.json` -> test (the usual evaluation split), `val_2.json` -> validation, where present, each
    also as `.json.gz` (default `splits_dir`: the shipped, gzipped train and val_1). Keeps a `duration` column
    (seconds). Videos may be named with or without the `v_` prefix of the ids."""
    splits_dir = _splits_dir("activitynet", splits_dir)
    splits = {}
    for split, name in ACTIVITYNET_FILES:
        path = os.path.join(splits_dir, name)
        if not os.path.isfile(path):
            path += ".gz"
        if not os.path.isfile(path):
            continue
        annotations = _read_json(path)
        splits[split] = [
            {"video_id": video_id, "caption": " ".join(s.strip() for s in entry["sentences"] if s.strip()),
             "duration": float(entry.get("duration", 0.0))}
            for video_id, entry in annotations.items()
        ]
    return _build("activitynet", splits, _index_lookup(os.fspath(video_dir), strip_prefix="v_"),
                  os.fspath(video_dir), on_missing, False)


# ------------------------------------------------------------------------------------------------- dispatcher


def _captioned_rows(label: str, ids: list[str], captions: dict[str, list[str]], source) -> list[dict]:
    """Rows `{video_id, caption}` of the listed ids; ids without a caption in `source` are reported and dropped."""
    uncaptioned = [v for v in ids if v not in captions]
    if uncaptioned:
        logger.warning("%s: %d videos have no caption in %s (first: %s); they are skipped",
                       label, len(uncaptioned), source, ", ".join(uncaptioned[:_SHOWN_MISSING]))
    return [{"video_id": v, "caption": captions[v]} for v in ids if v in captions]


def all_captions(split) -> list[str]:
    """Every caption of a split, flattening the rows that hold a list of captions."""
    return [c for caption in split["caption"] for c in ([caption] if isinstance(caption, str) else caption)]


def expand_captions(split):
    """One row per (video, caption) pair: the paper's training epoch ("expanded sentences"; MSR-VTT 9k: 180,000
    items instead of 9,000). A split with one caption per row is returned as it is."""
    if split.features["caption"] == Value("string"):
        return split
    features = split.features.copy()
    features["caption"] = Value("string")

    def explode(batch: dict) -> dict:
        counts = [len(captions) for captions in batch["caption"]]
        rows = {key: [value for value, n in zip(values, counts) for _ in range(n)] for key, values in batch.items()}
        rows["caption"] = [caption for captions in batch["caption"] for caption in captions]
        return rows

    return split.map(explode, batched=True, features=features, desc="one item per caption")


# Keyword arguments of `load_corpus` that scripts take as flags of the same names.
CORPUS_KEYS = ("video_dir", "splits_dir", "captions_file", "data_json", "train_list")
CORPUS_PATH_KEYS = CORPUS_KEYS[:-1]  # train_list is a name (9k / 7k), not a path


def _check_loader_options(name: str, loader, options: dict) -> None:
    """A missing or inapplicable corpus option is a `ValueError` naming the flag, not a `TypeError` from the call."""
    import inspect

    parameters = inspect.signature(loader).parameters
    missing = [key for key, p in parameters.items() if p.default is p.empty and key not in options and key != "folder"]
    if missing:
        raise ValueError(f"corpus {name} needs {', '.join('--' + key for key in missing)}")
    unexpected = [key for key in options if key not in parameters]
    if unexpected:
        raise ValueError(f"corpus {name}: {', '.join('--' + key for key in unexpected)} do(es) not apply to it "
                         f"(options for the named corpora {', '.join(CORPORA[:-1])})")  # fmt: skip


def load_corpus(name_or_folder: str | os.PathLike, **kwargs) -> DatasetDict:
    """Load a corpus by name (`msrvtt`, `msvd`, `lsmdc`, `activitynet`, `demo`), a videofolder path or a frame
    store (`training.frame_store`, its frames already decoded): its folder, or its Hub dataset id `org/name`.

    Keyword arguments go to the loader (`video_dir`, `splits_dir`, ...). `demo` takes `folder`
    (default `data/demo`) and generates the demo corpus there unless one with the same settings is there already;
    other keywords go to `training.demo_corpus.generate_demo_corpus`.
    """
    name = os.fspath(name_or_folder)
    loaders = {"msrvtt": load_msrvtt, "msvd": load_msvd, "lsmdc": load_lsmdc, "activitynet": load_activitynet}
    if name in loaders:
        _check_loader_options(name, loaders[name], kwargs)
        return loaders[name](**kwargs)
    if name == "demo":
        from .demo_corpus import generate_demo_corpus

        folder = kwargs.pop("folder", os.path.join("data", "demo"))
        on_missing = kwargs.pop("on_missing", "skip")
        generate_demo_corpus(folder, **kwargs)  # reuses a corpus already generated with these settings
        return load_videofolder(folder, on_missing=on_missing)
    from .frame_store import load_frame_store, resolve_store

    store = resolve_store(name)  # a store folder or Hub dataset id, written by training.prepare_frames
    if store is not None:
        return load_frame_store(store, **kwargs)
    if os.path.isdir(name):
        _check_loader_options(name, load_videofolder, kwargs)
        return load_videofolder(name, **kwargs)
    raise ValueError(f"unknown corpus {name!r}: use one of {', '.join(CORPORA)}, a folder with metadata.jsonl/.csv, "
                     "or a frame store (its folder or Hub dataset id)")
