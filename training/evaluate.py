"""Text-video retrieval evaluation: encode each video and caption once, rank in chunks, report R@K / MdR / MnR.

    python training/evaluate.py --model outputs/demo/centerclip/final --corpus outputs/demo/corpus \
        --split test --output report.json --save_embeddings outputs/demo/embeddings
    python training/evaluate.py --from_embeddings outputs/demo/embeddings --post_process dsl   # no re-encoding

Ranks start at 1. Two metric conventions (`--metric_convention`, documented in docs/training.md):
- `strict` (the default): ties with a wrong candidate count against the model (pessimistic): the rank of the
  ground truth is 1 + the number of wrong candidates scoring at least as high as the best right one, so a model
  that scores everything equally gets the worst rank, never a lucky one. Right candidates tied with the best right
  one (two identical captions of one video) are no competitors. MdR of an even count averages the middle two.
- `clip4clip`: CLIP4Clip's `metrics.py`, number for number on the same similarity matrix. One caption per video
  (its `compute_metrics`): a query whose ground truth ties with k other candidates adds k + 1 ranks, one per tied
  position, to the list that R@K, MdR and MnR are taken over. Several captions per video: text->video breaks ties
  by video order (its double argsort) and MdR of an even count is the lower middle rank (`torch.median`);
  video->text is `compute_metrics` on the videos x (each video's best caption) matrix.

Non-finite embeddings are an error that names the videos and captions (`NonFiniteEmbeddingsError`), never a
score: `scores >= NaN` is all False, so a NaN ground truth would otherwise be ranked first.

Several captions per video (MSVD), two video->text protocols, both reported:
- `v2t` ("all captions"): every caption of every other video competes; the rank is that of the video's best caption.
- `v2t_clip4clip` (CLIP4Clip's protocol, the one published tables use): of every other video only its
  best-scoring caption competes. With one caption per video the two are the same and only `v2t` is reported.
`report["headline"]` names, per direction, the protocol published tables use (`published_protocols`); training
logs, model cards and the first printed lines report those, labelled with their names.

`--post_process dsl` adds dual-softmax (inverted softmax) re-scored results under `dsl`, beside the plain ones:
each similarity is multiplied by the softmax, over the other side's queries, of `temperature * similarity`.

With several processes (`accelerate launch`), each encodes its own block of whole video batches; the embeddings
are gathered in order before ranking. They match a one-process run to float rounding (another process or thread
count sums in another order), so the metrics are the same unless two scores are that close. A video that cannot be
decoded is reported (its file and the reason), and it and its captions are left out of the metrics.
"""

import functools
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

if __package__ in (None, "") and __name__ == "__main__":
    # Run as a script: import from the repository root, not from training/ (this file would shadow `evaluate`).
    sys.path[0] = str(Path(__file__).resolve().parents[1])
if __name__ == "__main__":  # --help and a mistyped flag answer before torch loads
    from training.cli_parsers import build_evaluate_parser

    build_evaluate_parser().parse_args()

import torch

from training.cli_parsers import POST_PROCESSES, build_evaluate_parser

logger = logging.getLogger(__name__)

METRIC_PATH = str(Path(__file__).resolve().parent / "metrics" / "retrieval")
V2T_PROTOCOLS = ("all_captions", "clip4clip")
DSL_TEMPERATURE = 100.0  # CLIP's logit scale, the usual inverse temperature of the dual softmax
PROTOCOL_NAMES = {
    "t2v": "text->video: rank of the caption's video among all videos",
    "v2t": "video->text, all captions: every caption of every other video competes",
    "v2t_clip4clip": "video->text, CLIP4Clip protocol: only each other video's best-scoring caption competes",
    "dsl": "the same, re-scored with the dual softmax (inverted softmax) over the other side's queries",
}
METRIC_CONVENTIONS = ("strict", "clip4clip")
HEADLINE_LABELS = {"t2v": "t2v", "v2t": "v2t", "v2t_clip4clip": "v2t (CLIP4Clip protocol)"}


class NonFiniteEmbeddingsError(ValueError):
    """NaN or inf video or caption embeddings: no metric is computed from them."""


def _named(indices: list[int], names: list[str] | None, limit: int = 5) -> str:
    shown = [repr(names[i]) if names is not None else f"#{i}" for i in indices[:limit]]
    return ", ".join(shown) + (f" and {len(indices) - limit} more" if len(indices) > limit else "")


def check_finite_embeddings(text_embeds: torch.Tensor, video_embeds: torch.Tensor, video_names: list[str] | None = None,
                            captions: list[str] | None = None) -> None:  # fmt: skip
    """Raise `NonFiniteEmbeddingsError` naming the videos and captions whose embeddings hold NaN or inf."""
    bad_videos = (~torch.isfinite(video_embeds).all(dim=1)).nonzero().flatten().tolist()
    bad_texts = (~torch.isfinite(text_embeds).all(dim=1)).nonzero().flatten().tolist()
    if not bad_videos and not bad_texts:
        return
    parts = []
    if bad_videos:
        parts.append(f"{len(bad_videos)} of {len(video_embeds)} videos ({_named(bad_videos, video_names)})")
    if bad_texts:
        parts.append(f"{len(bad_texts)} of {len(text_embeds)} captions ({_named(bad_texts, captions)})")
    raise NonFiniteEmbeddingsError(
        f"non-finite (NaN or inf) embeddings of {' and '.join(parts)}: no metric is computed from them. Check the "
        "model weights (a diverged training makes them NaN) and, with --dtype float16, overflow (try bfloat16 or "
        "float32)"
    )


def best_positive_ranks(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Rank of the best-scoring positive candidate in every row.

    Args:
        scores: [Q, C] similarity of each query to each candidate.
        positives: [Q, C] bool, True where the candidate is a ground truth of the query (at least one per row).
    Returns:
        [Q] long, 1 + the number of *negative* candidates scoring at least as high as the best positive (ties
        with a negative count against the model; positives tied with it are no competitors).
    """
    if not bool(positives.any(dim=1).all()):
        raise ValueError("best_positive_ranks: every query needs at least one ground-truth candidate")
    best = scores.masked_fill(~positives, float("-inf")).max(dim=1, keepdim=True).values
    return 1 + ((scores >= best) & ~positives).sum(dim=1)


def tied_position_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CLIP4Clip's `compute_metrics` ranks: every position of the sorted row whose score equals the ground truth's,
    so a ground truth tied with k other candidates gives k + 1 ranks (flattened over the rows, row by row)."""
    truth = scores.gather(1, targets[:, None])
    greater, equal = (scores > truth).sum(dim=1), (scores == truth).sum(dim=1)
    first = torch.repeat_interleave(greater, equal)
    within = torch.arange(len(first)) - torch.repeat_interleave(equal.cumsum(0) - equal, equal)
    return 1 + first + within


def stable_sort_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rank of the ground truth under a stable descending sort of each row (CLIP4Clip's double argsort): tied
    candidates come in index order."""
    truth = scores.gather(1, targets[:, None])
    before = torch.arange(scores.shape[1])[None, :] < targets[:, None]
    return 1 + (scores > truth).sum(dim=1) + ((scores == truth) & before).sum(dim=1)


def _dsl_log_normalisers(queries: torch.Tensor, candidates: torch.Tensor, temperature: float, chunk_size: int):
    """For every candidate, logsumexp over all queries of `temperature * similarity` ([C]), `chunk_size` at a time."""
    total = torch.full((candidates.shape[0],), float("-inf"))
    for start in range(0, queries.shape[0], chunk_size):
        block = temperature * (queries[start : start + chunk_size] @ candidates.t())
        total = torch.logaddexp(total, block.logsumexp(dim=0))
    return total


def _scores(queries, candidates, log_normalisers, temperature):
    scores = queries @ candidates.t()
    if log_normalisers is not None:
        scores = scores * torch.exp(temperature * scores - log_normalisers[None, :])  # dual softmax prior
    if not bool(torch.isfinite(scores).all()):  # finite but huge embeddings (an unnormalised cache) overflow
        raise NonFiniteEmbeddingsError("the similarity of finite embeddings overflowed to inf or NaN: are they "
                                       "L2-normalised?")  # fmt: skip
    return scores


def retrieval_ranks(
    text_embeds: torch.Tensor, video_embeds: torch.Tensor, text_to_video: torch.Tensor, chunk_size: int = 1024,
    *, v2t_protocol: str = "all_captions", post_process: str | None = None, dsl_temperature: float = DSL_TEMPERATURE,
    convention: str = "strict",
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Ground-truth ranks both ways, computing the similarity `chunk_size` rows at a time.

    Args:
        text_embeds: [Nt, D] (normalised for cosine similarity).
        video_embeds: [Nv, D].
        text_to_video: [Nt] long, the index of each caption's video; every video needs at least one caption.
        chunk_size: query rows per similarity block; memory is O(chunk_size * max(Nt, Nv)).
        v2t_protocol: `all_captions` (every caption competes) or `clip4clip` (only each other video's
            best-scoring caption competes).
        post_process: None / `none`, or `dsl`: dual-softmax re-scoring with `dsl_temperature`.
        convention: `strict` (ties count against the model) or `clip4clip` (CLIP4Clip's `metrics.py`; with one
            caption per video a tied query gives one rank per tied position, so the lists may be longer than the
            queries; with several, `v2t_protocol` must be `clip4clip`).
    Returns:
        (t2v_ranks, v2t_ranks), long, starting at 1: one per caption and one per video (`strict`).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    if v2t_protocol not in V2T_PROTOCOLS:
        raise ValueError(f"v2t_protocol must be one of {V2T_PROTOCOLS}, got {v2t_protocol!r}")
    if post_process not in (None, *POST_PROCESSES):
        raise ValueError(f"post_process must be one of {POST_PROCESSES}, got {post_process!r}")
    if convention not in METRIC_CONVENTIONS:
        raise ValueError(f"metric convention must be one of {METRIC_CONVENTIONS}, got {convention!r}")
    num_videos = video_embeds.shape[0]
    text_to_video = torch.as_tensor(text_to_video, dtype=torch.long)
    if text_to_video.shape != (text_embeds.shape[0],):
        raise ValueError(f"text_to_video: expected shape ({text_embeds.shape[0]},), got {tuple(text_to_video.shape)}")
    if text_to_video.numel() and not 0 <= int(text_to_video.min()) <= int(text_to_video.max()) < num_videos:
        raise ValueError(f"text_to_video: indices must be in [0, {num_videos - 1}]")
    missing = torch.ones(num_videos, dtype=torch.bool)
    missing[text_to_video] = False
    if missing.any():
        raise ValueError(f"text_to_video: videos {missing.nonzero().flatten()[:10].tolist()} have no caption")
    multi_caption = text_to_video.numel() > num_videos
    clip4clip = convention == "clip4clip"
    if clip4clip and multi_caption and v2t_protocol != "clip4clip":
        raise ValueError("the clip4clip metric convention has no all-captions video->text protocol; with several "
                         "captions per video use v2t_protocol='clip4clip'")  # fmt: skip
    # one caption per video: the caption of each video (CLIP4Clip's square matrix has it on the diagonal)
    caption_of = torch.empty(num_videos, dtype=torch.long).scatter_(0, text_to_video, torch.arange(len(text_to_video)))

    dsl = post_process == "dsl"
    t2v_norm = _dsl_log_normalisers(text_embeds, video_embeds, dsl_temperature, chunk_size) if dsl else None
    v2t_norm = _dsl_log_normalisers(video_embeds, text_embeds, dsl_temperature, chunk_size) if dsl else None
    t2v = []
    for start in range(0, text_embeds.shape[0], chunk_size):
        targets = text_to_video[start : start + chunk_size]
        scores = _scores(text_embeds[start : start + chunk_size], video_embeds, t2v_norm, dsl_temperature)
        if clip4clip:
            t2v.append(stable_sort_ranks(scores, targets) if multi_caption else tied_position_ranks(scores, targets))
            continue
        positives = torch.zeros_like(scores, dtype=torch.bool)
        positives[torch.arange(len(targets)), targets] = True
        t2v.append(best_positive_ranks(scores, positives))
    v2t = []
    for start in range(0, num_videos, chunk_size):
        video_ids = torch.arange(start, min(start + chunk_size, num_videos))
        scores = _scores(video_embeds[start : start + chunk_size], text_embeds, v2t_norm, dsl_temperature)
        if v2t_protocol == "clip4clip":  # each video represented by its best-scoring caption
            index = text_to_video[None, :].expand(len(video_ids), -1)
            scores = torch.full((len(video_ids), num_videos), float("-inf"), dtype=scores.dtype).scatter_reduce(
                1, index, scores, reduce="amax")  # fmt: skip
            if clip4clip:
                v2t.append(tied_position_ranks(scores, video_ids))
            else:
                v2t.append(best_positive_ranks(scores, video_ids[:, None] == torch.arange(num_videos)[None, :]))
        elif clip4clip:  # one caption per video
            v2t.append(tied_position_ranks(scores, caption_of[video_ids]))
        else:
            v2t.append(best_positive_ranks(scores, video_ids[:, None] == text_to_video[None, :]))
    return torch.cat(t2v), torch.cat(v2t)


def group_captions(split, max_videos: int | None = None) -> tuple[list[str], list[str], list[str], list[int]]:
    """Unique videos of a split, in order of first appearance, and every caption pointing at its video.

    Rows may repeat a video (one caption each) or hold a list of captions. Returns
    `(video_ids, video_paths, captions, text_to_video)`.
    """
    index_of: dict[str, int] = {}
    video_ids, paths, captions, text_to_video = [], [], [], []
    ids = split["video_id"] if "video_id" in split.column_names else split["video"]
    for video_id, path, caption in zip(ids, split["video"], split["caption"]):
        if video_id not in index_of:
            if max_videos is not None and len(video_ids) >= max_videos:
                continue
            index_of[video_id] = len(video_ids)
            video_ids.append(video_id)
            paths.append(path)
        for text in [caption] if isinstance(caption, str) else caption:
            captions.append(text)
            text_to_video.append(index_of[video_id])
    return video_ids, paths, captions, text_to_video


class _VideoFiles(torch.utils.data.Dataset):
    """Decodes evaluation videos (chunk-center frames, uint8: `encode_videos` normalises them on the device). A
    bad file is reported and yields blank frames with `ok=False`, so the batch goes on and the video is left out
    of the metrics afterwards."""

    def __init__(self, paths: list[str], processor):
        self.paths, self.processor = paths, processor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from modeling_centerclip.processing_centerclip import VideoDecodeError

        try:
            encoded = self.processor(videos=[self.paths[index]], training=False, do_normalize=False)
        except VideoDecodeError as error:
            logger.warning("evaluation: cannot decode %s (%s); it is left out", self.paths[index], error.reason)
            size, frames = self.processor.image_size, self.processor.num_frames
            return torch.zeros(frames, 3, size, size, dtype=torch.uint8), torch.ones(frames, dtype=torch.bool), False
        return encoded["pixel_values"][0], encoded["video_mask"][0], True


def shard_bounds(num_items: int, batch_size: int, num_processes: int) -> list[tuple[int, int]]:
    """Each process's `[start, end)` block of whole batches, so every batch is the one a single process forms
    (the embeddings are then bitwise the same whatever the process count)."""
    num_batches = math.ceil(num_items / batch_size)
    edges = [min(num_items, (num_batches * rank // num_processes) * batch_size) for rank in range(num_processes + 1)]
    return list(zip(edges[:-1], edges[1:]))


@torch.inference_mode()
def video_embeddings(model, processor, pixel_values: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
    """uint8 `pixel_values` `[B, T, 3, S, S]` (`do_normalize=False`, normalised here on the model's device) ->
    L2-normalised video embeddings `[B, dim]` float32 on the CPU (evaluation and the search index)."""
    device = next(model.parameters()).device
    pixel_values = processor.normalize(pixel_values.to(device))
    features = model.get_video_features(pixel_values=pixel_values, video_mask=video_mask.to(device))
    # pooler_output is the mean of normalised segment embeddings (normalised here, like CLIP's image features)
    return torch.nn.functional.normalize(features.pooler_output.float(), dim=-1).cpu()


@torch.inference_mode()
def encode_videos(model, processor, paths: list[str], batch_size: int = 32, num_workers: int = 0,
                  show_progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, float]:  # fmt: skip
    """L2-normalised video embeddings `[len(paths), D]` (float32, CPU), a `[len(paths)]` bool tensor that is
    False for videos that could not be decoded, and the seconds spent in the model."""
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(_VideoFiles(paths, processor), batch_size=batch_size, num_workers=num_workers)
    embeddings, decoded, model_time = [], [], 0.0
    for pixel_values, video_mask, ok in tqdm(loader, desc="videos", disable=not show_progress):
        start = time.perf_counter()
        embeddings.append(video_embeddings(model, processor, pixel_values, video_mask))
        decoded.append(ok)
        model_time += time.perf_counter() - start  # .cpu() above waits for the device
    if not embeddings:
        return torch.zeros(0, model.config.projection_dim), torch.zeros(0, dtype=torch.bool), model_time
    return torch.cat(embeddings), torch.cat(decoded), model_time


@torch.inference_mode()
def encode_texts(model, processor, captions: list[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised caption embeddings `[len(captions), D]` (float32, CPU)."""
    device = next(model.parameters()).device
    embeddings = []
    for start in range(0, len(captions), batch_size):
        tokens = processor(text=captions[start : start + batch_size])
        features = model.get_text_features(
            input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device)
        )
        embeddings.append(torch.nn.functional.normalize(features.pooler_output.float(), dim=-1).cpu())
    return torch.cat(embeddings)


def _gather_shards(local: torch.Tensor, bounds: list[tuple[int, int]], accelerator) -> torch.Tensor:
    """Every process's block, in order: padded to the largest block (sizes known everywhere), gathered, cut."""
    longest = max(end - start for start, end in bounds)
    padded = torch.nn.functional.pad(local, (0, 0) * (local.dim() - 1) + (0, longest - local.shape[0]))
    gathered = accelerator.gather(padded.to(accelerator.device)).cpu().reshape(len(bounds), longest, *local.shape[1:])
    return torch.cat([gathered[rank, : end - start] for rank, (start, end) in enumerate(bounds)])


@functools.cache
def retrieval_metric():
    """The repository's `evaluate` module, loaded once per process (periodic evaluation calls this often)."""
    import evaluate

    return evaluate.load(METRIC_PATH, keep_in_memory=True)


def published_protocols(report: dict) -> dict[str, str]:
    """Per direction, the report key that published tables use: `t2v`, and for video->text CLIP4Clip's protocol
    when a video has several captions (MSVD), else `v2t` (the two are then the same)."""
    return {"t2v": "t2v", "v2t": "v2t_clip4clip" if "v2t_clip4clip" in report else "v2t"}


def headline_results(report: dict) -> dict[str, float]:
    """The published protocols' metrics, flat and labelled: `{"t2v R@1": ..., "v2t (CLIP4Clip protocol) R@1": ...}`
    (or `v2t R@1` with one caption per video): what training logs and model cards report."""
    return {f"{HEADLINE_LABELS[key]} {name}": value for key in published_protocols(report).values()
            for name, value in report[key].items()}  # fmt: skip


def ranking_report(text_embeds, video_embeds, text_to_video, chunk_size: int = 1024,
                   post_process: str | None = None, *, convention: str = "strict",
                   video_names: list[str] | None = None, captions: list[str] | None = None) -> dict:  # fmt: skip
    """Metrics of given embeddings: `t2v`, `v2t` (all captions), `v2t_clip4clip` when a video has several
    captions, `dsl` (the same under dual softmax) with `post_process="dsl"`, `protocols` naming them, `headline`
    (`published_protocols`) and `metric_convention`.

    Non-finite embeddings raise `NonFiniteEmbeddingsError` naming them (by `video_names` / `captions` if given).
    Under the `clip4clip` convention a multi-caption report has no all-captions `v2t` (CLIP4Clip has none).
    """
    check_finite_embeddings(text_embeds, video_embeds, video_names, captions)
    text_to_video = torch.as_tensor(text_to_video, dtype=torch.long)
    multi_caption = text_to_video.numel() > video_embeds.shape[0]
    metric = retrieval_metric()
    clip4clip = convention == "clip4clip"
    names = ["t2v"] + ([] if clip4clip and multi_caption else ["v2t"]) + (["v2t_clip4clip"] if multi_caption else [])

    def metrics(process):
        def ranks(protocol):
            return retrieval_ranks(text_embeds, video_embeds, text_to_video, chunk_size, v2t_protocol=protocol,
                                   post_process=process, convention=convention)  # fmt: skip

        t2v, v2t = ranks("clip4clip" if clip4clip and multi_caption else "all_captions")
        # CLIP4Clip's multi-caption text->video takes torch.median: the lower middle rank of an even count
        result = {"t2v": metric.compute(ranks=t2v.tolist(), lower_median=clip4clip and multi_caption)}
        if "v2t" in names:
            result["v2t"] = metric.compute(ranks=v2t.tolist())
        if multi_caption:
            result["v2t_clip4clip"] = metric.compute(ranks=(v2t if clip4clip else ranks("clip4clip")[1]).tolist())
        return result

    report = metrics(None)
    if post_process == "dsl":
        report["dsl"] = metrics("dsl")
        names.append("dsl")
    report["protocols"] = {name: PROTOCOL_NAMES[name] for name in names}
    report["headline"] = published_protocols(report)
    report["metric_convention"] = convention
    return report


def rank_saved_embeddings(folder: str, chunk_size: int = 1024, post_process: str | None = None, *,
                          convention: str = "strict") -> dict:  # fmt: skip
    """The report of `evaluate_model` from embeddings it saved (no model, no videos), with their provenance.

    The two files must agree (`training.embedding_cache.load_embeddings` refuses a mismatch, naming the file)."""
    from training.embedding_cache import load_embeddings

    cache = load_embeddings(folder)
    try:
        report = ranking_report(cache.text_embeds, cache.video_embeds, cache.text_to_video, chunk_size, post_process,
                                convention=convention, video_names=cache.video_ids, captions=cache.captions)
    except ValueError as error:
        raise type(error)(f"--from_embeddings {folder}: {error}") from None
    report.update(num_videos=len(cache.video_ids), num_captions=len(cache.captions), left_out=cache.left_out,
                  provenance=cache.provenance)  # fmt: skip
    return report


def evaluate_model(model, processor, split, batch_size: int = 32, chunk_size: int = 1024,
                   max_videos: int | None = None, num_workers: int = 0, show_progress: bool = True, *,
                   accelerator=None, post_process: str | None = None, save_embeddings_to: str | None = None,
                   convention: str = "strict", provenance: dict | None = None) -> dict:  # fmt: skip
    """Text-video retrieval metrics of `model` on a corpus split (a `datasets.Dataset` with `video`, `caption`).

    Each unique video and each caption is encoded once; ranks are computed `chunk_size` queries at a time. With
    an `accelerator` of several processes every process must call this: each encodes its block of the videos
    (under whatever autocast the caller set), and all get the same report. Non-finite embeddings (diverged
    weights, float16 overflow) raise `NonFiniteEmbeddingsError` naming the videos and captions; nothing is saved.
    `provenance` (model, fingerprint, corpus, split, ...) goes into the saved embeddings; `convention` is the
    metric convention (`strict` or `clip4clip`, see the module docstring).
    Returns `{"t2v": {"R@1", "R@5", "R@10", "MdR", "MnR"}, "v2t": {...}, ["v2t_clip4clip"], ["dsl"], "protocols",
    "headline", "metric_convention", "num_videos", "num_captions", "left_out", "video_encode_s",
    "videos_per_second", "eval_time_s"}` (R@K in percent); `videos_per_second` counts the model's video tower only,
    `eval_time_s` everything including decoding.
    """
    from training.frame_store import videos_to_encode

    start = time.perf_counter()
    video_ids, paths, captions, text_to_video = group_captions(split, max_videos)
    if not paths:
        raise ValueError("evaluate_model: the split has no videos")
    num_processes = accelerator.num_processes if accelerator is not None else 1
    bounds = shard_bounds(len(paths), batch_size, num_processes)
    first, last = bounds[accelerator.process_index if accelerator is not None else 0]
    was_training = model.training
    model.eval()
    try:
        videos = videos_to_encode(split, video_ids, paths)  # a frame store's frames, else the files
        video_embeds, decoded, video_time = encode_videos(model, processor, videos[first:last], batch_size,
                                                          num_workers, show_progress)  # fmt: skip
        text_embeds = encode_texts(model, processor, captions)
    finally:
        model.train(was_training)
    if num_processes > 1:
        video_embeds = _gather_shards(video_embeds, bounds, accelerator)
        decoded = _gather_shards(decoded, bounds, accelerator).bool()
    text_to_video = torch.tensor(text_to_video)
    left_out = [paths[i] for i in (~decoded).nonzero().flatten().tolist()]
    if left_out:
        keep_captions = decoded[text_to_video]
        logger.warning("evaluation: %d of %d videos could not be decoded and are left out with their %d captions: %s",
                       len(left_out), len(paths), int((~keep_captions).sum()), ", ".join(left_out))  # fmt: skip
        if not decoded.any():
            raise ValueError(f"evaluate_model: none of the {len(paths)} videos could be decoded")
        new_index = decoded.long().cumsum(0) - 1
        video_embeds, video_ids = video_embeds[decoded], [v for v, ok in zip(video_ids, decoded.tolist()) if ok]
        text_embeds, text_to_video = text_embeds[keep_captions], new_index[text_to_video[keep_captions]]
        captions = [c for c, keep in zip(captions, keep_captions.tolist()) if keep]
    check_finite_embeddings(text_embeds, video_embeds, video_ids, captions)
    if save_embeddings_to and (accelerator is None or accelerator.is_main_process):
        from training.embedding_cache import save_embeddings

        if provenance is None:
            provenance = {"model": getattr(model.config, "_name_or_path", None) or None, "model_fingerprint": None}
        save_embeddings(save_embeddings_to, text_embeds, video_embeds, text_to_video, video_ids, captions, left_out,
                        provenance)  # fmt: skip
    report = ranking_report(text_embeds, video_embeds, text_to_video, chunk_size, post_process, convention=convention,
                            video_names=video_ids, captions=captions)  # fmt: skip
    report.update(num_videos=len(video_ids), num_captions=len(captions), left_out=left_out, video_encode_s=video_time,
                  videos_per_second=(last - first) / video_time if video_time > 0 else float("inf"),
                  eval_time_s=time.perf_counter() - start)  # fmt: skip
    return report


def check_model_folder(model: str) -> None:
    """A local model folder needs its processor files; a missing tokenizer would otherwise surface as an
    unrelated message about sentencepiece or tiktoken."""
    from training.cli_errors import require_model_folder
    from training.tokenizer import check_tokenizer_files

    require_model_folder(model)
    if not os.path.isdir(model):
        return
    remedy = ("save the processor next to the model (processor.save_pretrained) or evaluate the training run's "
              "final/ folder, which has both")  # fmt: skip
    if not os.path.isfile(os.path.join(model, "processor_config.json")):
        raise ValueError(f"--model {model}: no processor_config.json (the CenterCLIPProcessor's settings); {remedy}")
    check_tokenizer_files(model, remedy)
    from training.lora import adapter_base, check_adapter_fits, is_adapter_folder

    if is_adapter_folder(model):  # a LoRA run's final/: its base must be there and fit
        try:
            check_adapter_fits(model, adapter_base(model), what="--model")
        except FileNotFoundError as error:
            raise ValueError(f"--model {model}: {error}") from None


def main(argv: list[str] | None = None) -> dict:
    """Evaluate. A user's mistake (a missing or malformed file, a bad argument, NaN embeddings) raises
    `ValueError` / `OSError`; run as a command (`training.cli_errors.run_cli`) it is one line and exit status 2."""
    parser = build_evaluate_parser()
    args = parser.parse_args(argv)
    post_process = None if args.post_process == "none" else args.post_process

    if args.from_embeddings:
        report = rank_saved_embeddings(args.from_embeddings, args.chunk_size, post_process,
                                       convention=args.metric_convention)  # fmt: skip
        report.update(embeddings=args.from_embeddings)
    else:
        if not args.corpus:
            raise ValueError("--corpus is required with --model (a videofolder or frame store path, or msrvtt / "
                             "msvd / lsmdc / activitynet / demo)")  # fmt: skip
        report = _evaluate_cli(args, post_process)
        if report is None:
            return {}
    _print_report(report)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
    return report


def model_fingerprint(model: str, processor) -> str | None:
    """The search index's fingerprint of a model folder (weights, config, processor settings); None (with a
    warning) for a Hub id not in the local cache, or without the `[search]` extra that holds the helper."""
    try:
        from search.models import fingerprint, resolve_model_dir

        return fingerprint(resolve_model_dir(model), {}, processor)
    except (ImportError, OSError, ValueError) as error:
        logger.warning("evaluation: no fingerprint of model %s (%s); the report names it only", model, error)
        return None


def _evaluate_cli(args, post_process) -> dict:
    if args.num_workers < 0:
        raise ValueError(f"--num_workers {args.num_workers}: must be >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device cuda: this torch ({torch.__version__}) has no usable CUDA device; use --device cpu")
    check_model_folder(args.model)
    import modeling_centerclip  # noqa: F401  registers the Auto classes
    from accelerate import Accelerator
    from transformers import AutoModel, AutoProcessor

    from training.corpora import CORPUS_KEYS, load_corpus

    accelerator = Accelerator(cpu=args.device == "cpu")
    dtype = args.dtype
    if dtype == "auto":
        dtype = "float32" if accelerator.device.type == "cpu" else (
            "bfloat16" if torch.cuda.is_bf16_supported() else "float16")  # fmt: skip
    corpus_kwargs = {k: getattr(args, k) for k in CORPUS_KEYS if getattr(args, k, None)}
    corpus = load_corpus(args.corpus, **corpus_kwargs)
    if args.split not in corpus:
        raise ValueError(f"--split {args.split!r}: corpus {args.corpus} has splits {list(corpus)}")
    from training.lora import is_adapter_folder, load_adapter_model

    model = load_adapter_model(args.model) if is_adapter_folder(args.model) else AutoModel.from_pretrained(args.model)
    model = model.to(accelerator.device)  # an adapter is merged into its base: evaluated as fast as the base
    processor = AutoProcessor.from_pretrained(args.model)
    provenance = {"model": args.model, "model_fingerprint": model_fingerprint(args.model, processor),
                  "corpus": args.corpus, "split": args.split, "dtype": dtype,
                  "max_videos": args.max_videos}  # fmt: skip
    from training.frame_store import check_store_settings

    check_store_settings(args.corpus, processor.fps, processor.image_size, f"the model {args.model}")
    with torch.autocast(accelerator.device.type, dtype=getattr(torch, dtype), enabled=dtype != "float32"):
        report = evaluate_model(model, processor, corpus[args.split], args.batch_size, args.chunk_size, args.max_videos,
                                args.num_workers, show_progress=accelerator.is_local_main_process,
                                accelerator=accelerator, post_process=post_process,
                                save_embeddings_to=args.save_embeddings, convention=args.metric_convention,
                                provenance=provenance)  # fmt: skip
    report.update(model=args.model, corpus=args.corpus, split=args.split, dtype=dtype,
                  num_processes=accelerator.num_processes, provenance=provenance)  # fmt: skip
    return report if accelerator.is_main_process else None


def _print_report(report: dict) -> None:
    """The published protocols first, labelled (`headline_results`), then every protocol with its description."""
    convention = report.get("metric_convention", "strict")
    for key in published_protocols(report).values():
        print(f"headline {HEADLINE_LABELS[key]}:", "  ".join(f"{k} {v:.1f}" for k, v in report[key].items()),
              f"  ({convention} metric convention)")  # fmt: skip
    for name, description in report["protocols"].items():
        if name == "dsl":
            for direction, values in report["dsl"].items():
                print(f"dsl {direction}", "  ".join(f"{k} {v:.1f}" for k, v in values.items()))
        else:
            print(name, "  ".join(f"{k} {v:.1f}" for k, v in report[name].items()), f"  ({description})")
    if report.get("provenance"):
        origin = report["provenance"]
        print(f"embeddings of model {origin.get('model')} (fingerprint {origin.get('model_fingerprint')}), corpus "
              f"{origin.get('corpus')}, split {origin.get('split')}")  # fmt: skip


if __name__ == "__main__":
    from training.cli_errors import run_cli

    run_cli("evaluate.py", main)
