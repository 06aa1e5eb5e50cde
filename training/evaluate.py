"""Text-video retrieval evaluation: encode each video and caption once, rank in chunks, report R@K / MdR / MnR.

    python training/evaluate.py --model outputs/demo/centerclip/final --corpus outputs/demo/corpus \
        --split test --output report.json

Ranks start at 1. Ties count against the model (pessimistic): the rank of the ground truth is the number of
candidates scoring at least as high as it, so a model that scores everything equally gets the worst rank,
never a lucky one. Several captions per video (MSVD): text->video ranks every caption; video->text takes the
best rank among the video's captions.
"""

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, "") and __name__ == "__main__":
    # Run as a script: import from the repository root, not from training/ (this file would shadow `evaluate`).
    sys.path[0] = str(Path(__file__).resolve().parents[1])

METRIC_PATH = str(Path(__file__).resolve().parent / "metrics" / "retrieval")


def best_positive_ranks(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Rank of the best-scoring positive candidate in every row.

    Args:
        scores: [Q, C] similarity of each query to each candidate.
        positives: [Q, C] bool, True where the candidate is a ground truth of the query (at least one per row).
    Returns:
        [Q] long, 1 + the number of candidates scoring strictly higher than the best positive + the number of
        *other* candidates tied with it (ties count against the model).
    """
    if not bool(positives.any(dim=1).all()):
        raise ValueError("best_positive_ranks: every query needs at least one ground-truth candidate")
    best = scores.masked_fill(~positives, float("-inf")).max(dim=1, keepdim=True).values
    return (scores >= best).sum(dim=1)


def retrieval_ranks(
    text_embeds: torch.Tensor, video_embeds: torch.Tensor, text_to_video: torch.Tensor, chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth ranks both ways, computing the similarity `chunk_size` rows at a time.

    Args:
        text_embeds: [Nt, D] (normalised for cosine similarity).
        video_embeds: [Nv, D].
        text_to_video: [Nt] long, the index of each caption's video; every video needs at least one caption.
        chunk_size: query rows per similarity block; memory is O(chunk_size * max(Nt, Nv)).
    Returns:
        (t2v_ranks [Nt], v2t_ranks [Nv]), long, starting at 1.
    """
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

    t2v = []
    for start in range(0, text_embeds.shape[0], chunk_size):
        targets = text_to_video[start : start + chunk_size]
        scores = text_embeds[start : start + chunk_size] @ video_embeds.t()
        positives = torch.zeros_like(scores, dtype=torch.bool)
        positives[torch.arange(len(targets)), targets] = True
        t2v.append(best_positive_ranks(scores, positives))
    v2t = []
    for start in range(0, num_videos, chunk_size):
        video_ids = torch.arange(start, min(start + chunk_size, num_videos))
        scores = video_embeds[start : start + chunk_size] @ text_embeds.t()
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
    """Decodes evaluation videos (chunk-center frames); a bad file raises, naming it."""

    def __init__(self, paths: list[str], processor):
        self.paths, self.processor = paths, processor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        encoded = self.processor(videos=[self.paths[index]], training=False)
        return encoded["pixel_values"][0], encoded["video_mask"][0]


@torch.inference_mode()
def encode_videos(model, processor, paths: list[str], batch_size: int = 32, num_workers: int = 0,
                  show_progress: bool = True) -> tuple[torch.Tensor, float]:
    """L2-normalised video embeddings `[len(paths), D]` (float32, CPU) and the seconds spent in the model."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(_VideoFiles(paths, processor), batch_size=batch_size, num_workers=num_workers)
    embeddings, model_time = [], 0.0
    for pixel_values, video_mask in tqdm(loader, desc="videos", disable=not show_progress):
        start = time.perf_counter()
        features = model.get_video_features(pixel_values=pixel_values.to(device), video_mask=video_mask.to(device))
        embeddings.append(torch.nn.functional.normalize(features.pooler_output.float(), dim=-1).cpu())
        model_time += time.perf_counter() - start  # .cpu() above waits for the device
    return torch.cat(embeddings), model_time


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


@functools.cache
def retrieval_metric():
    """The repository's `evaluate` module, loaded once per process (periodic evaluation calls this often)."""
    import evaluate

    return evaluate.load(METRIC_PATH, keep_in_memory=True)


def evaluate_model(model, processor, split, batch_size: int = 32, chunk_size: int = 1024,
                   max_videos: int | None = None, num_workers: int = 0, show_progress: bool = True) -> dict:
    """Text-video retrieval metrics of `model` on a corpus split (a `datasets.Dataset` with `video`, `caption`).

    Each unique video and each caption is encoded once; ranks are computed `chunk_size` queries at a time.
    Returns `{"t2v": {"R@1", "R@5", "R@10", "MdR", "MnR"}, "v2t": {...}, "num_videos", "num_captions",
    "video_encode_s", "videos_per_second", "eval_time_s"}` (R@K in percent); `videos_per_second` counts the
    model's video tower only, `eval_time_s` everything including decoding.
    """
    start = time.perf_counter()
    video_ids, paths, captions, text_to_video = group_captions(split, max_videos)
    if not paths:
        raise ValueError("evaluate_model: the split has no videos")
    was_training = model.training
    model.eval()
    try:
        from training.frame_store import videos_to_encode

        videos = videos_to_encode(split, video_ids, paths)  # a frame store's frames, else the files
        video_embeds, video_time = encode_videos(model, processor, videos, batch_size, num_workers, show_progress)
        text_embeds = encode_texts(model, processor, captions)
    finally:
        model.train(was_training)
    t2v_ranks, v2t_ranks = retrieval_ranks(text_embeds, video_embeds, torch.tensor(text_to_video), chunk_size)
    metric = retrieval_metric()
    return {
        "t2v": metric.compute(ranks=t2v_ranks.tolist()),
        "v2t": metric.compute(ranks=v2t_ranks.tolist()),
        "num_videos": len(paths),
        "num_captions": len(captions),
        "video_encode_s": video_time,
        "videos_per_second": len(paths) / video_time if video_time > 0 else float("inf"),
        "eval_time_s": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Text-video retrieval evaluation of a saved CenterCLIP folder")
    parser.add_argument("--model", required=True, help="a save_pretrained folder (model + processor) or Hub id")
    parser.add_argument("--corpus", required=True,
                        help="a videofolder or frame store path, or msrvtt / msvd / lsmdc / activitynet")
    parser.add_argument("--video_dir")
    parser.add_argument("--splits_dir")
    parser.add_argument("--captions_file")
    parser.add_argument("--data_json")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--chunk_size", type=int, default=1024)
    parser.add_argument("--max_videos", type=int)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", help="write the JSON report here")
    args = parser.parse_args(argv)

    import modeling_centerclip  # noqa: F401  registers the Auto classes
    from transformers import AutoModel, AutoProcessor

    from training.corpora import CORPUS_KEYS, load_corpus

    corpus_kwargs = {k: getattr(args, k) for k in CORPUS_KEYS if getattr(args, k, None)}
    corpus = load_corpus(args.corpus, **corpus_kwargs)
    if args.split not in corpus:
        parser.error(f"--split {args.split!r}: corpus {args.corpus} has splits {list(corpus)}")
    model = AutoModel.from_pretrained(args.model).to(args.device)
    processor = AutoProcessor.from_pretrained(args.model)
    report = evaluate_model(model, processor, corpus[args.split], args.batch_size, args.chunk_size, args.max_videos,
                            args.num_workers)  # fmt: skip
    report.update(model=args.model, corpus=args.corpus, split=args.split)
    for direction in ("t2v", "v2t"):
        print(direction, "  ".join(f"{k} {v:.1f}" for k, v in report[direction].items()))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
    return report


if __name__ == "__main__":
    main()
