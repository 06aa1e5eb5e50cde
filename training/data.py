"""The training data path: a corpus split + a `CenterCLIPProcessor` -> batches for `CenterCLIPModel`.

    dataset = VideoTextDataset(corpus["train"], processor, training=True, do_normalize=False)
    loader = DataLoader(dataset, batch_size=32, shuffle=True, num_workers=2, collate_fn=collate_video_text)
    for batch in loader:
        if batch is None:          # every video of this batch failed to decode
            continue
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        batch["pixel_values"] = processor.normalize(batch["pixel_values"])  # uint8 -> float32 on the device
        outputs = model(**{k: batch[k] for k in MODEL_INPUT_NAMES}, return_loss=True)

A video that cannot be decoded (missing, empty, truncated, not a video, no frames) is logged with its file and
reason and skipped: `__getitem__` returns a `SkippedVideo` record, and `collate_video_text` drops those items so
the batch goes on without them, listing them in `batch["skipped"]` (the main process can count them even when
the decoding ran in DataLoader workers, e.g. with `SkipCounter`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from modeling_centerclip.processing_centerclip import CenterCLIPProcessor, VideoDecodeError
from training.frame_store import video_input

logger = logging.getLogger(__name__)

MODEL_INPUT_NAMES = tuple(CenterCLIPProcessor.model_input_names)


@dataclass(frozen=True)
class SkippedVideo:
    """An item whose video failed to decode."""

    index: int
    video: str
    reason: str


class VideoTextDataset(Dataset):
    """Decodes one (video, caption) item of a corpus split at a time.

    Args:
        split: a `datasets.Dataset` with `video_id`, `video` (path) and `caption` (string or list of strings);
            a frame store split (`training.frame_store`) is read from its `frames` instead of the videos.
        processor: a `CenterCLIPProcessor` (frames, image size, text length come from it).
        training: random frame per chunk and a random caption from a list; otherwise chunk centers and the
            first caption.
        do_normalize: `False` keeps `pixel_values` uint8 (resized and cropped) for `processor.normalize` on the
            device: 4x fewer bytes from the workers and to the GPU, and no float copies on the loader's cores.

    Items are dicts: `input_ids` / `attention_mask` `[L]`, `pixel_values` `[T, 3, S, S]` (float32, or uint8 without
    `do_normalize`), `video_mask` `[T]`,
    `index` (row in the split), `video_id`, `caption`; or a `SkippedVideo` when the video cannot be read.
    """

    def __init__(self, split, processor, training: bool = True, do_normalize: bool = True):
        missing = {"video", "caption"} - set(split.column_names)
        if missing:
            raise ValueError(f"the split lacks the column(s) {sorted(missing)}; it has {split.column_names}")
        self.split = split
        self.processor = processor
        self.training = training
        self.do_normalize = do_normalize
        self.num_skipped = 0  # counts skips in this process only; see `batch["skipped"]` for workers

    def __len__(self) -> int:
        return len(self.split)

    def pick_caption(self, caption) -> str:
        if isinstance(caption, str):
            return caption
        if not caption:
            raise ValueError("empty caption list")
        if self.training:
            return caption[int(torch.randint(len(caption), ()))]
        return caption[0]

    def __getitem__(self, index: int) -> dict | SkippedVideo:
        row = self.split[int(index)]
        caption = self.pick_caption(row["caption"])
        try:
            encoded = self.processor(text=[caption], videos=[video_input(row)], training=self.training,
                                     do_normalize=self.do_normalize)
        except VideoDecodeError as error:
            self.num_skipped += 1
            logger.warning("skipping video %s: %s", row["video"], error.reason)
            return SkippedVideo(int(index), row["video"], error.reason)
        item = {name: encoded[name][0] for name in MODEL_INPUT_NAMES}
        item.update(index=int(index), video_id=row.get("video_id", str(index)), caption=caption)
        return item


def collate_video_text(items: list) -> dict | None:
    """Stack decoded items into a batch, dropping the skipped ones.

    Returns `None` when every item was skipped, else a dict with `input_ids` / `attention_mask` `[B, L]`,
    `pixel_values` `[B, T, 3, S, S]`, `video_mask` `[B, T]`, `index` `[B]` (long), `video_id` and `caption`
    (lists of B strings) and `skipped` (the `SkippedVideo`s dropped from this batch).
    """
    skipped = [item for item in items if isinstance(item, SkippedVideo) or item is None]
    kept = [item for item in items if isinstance(item, dict)]
    if not kept:
        if skipped:
            logger.warning("a whole batch of %d videos failed to decode", len(skipped))
        return None
    batch = {name: torch.stack([item[name] for item in kept]) for name in MODEL_INPUT_NAMES}
    batch["index"] = torch.tensor([item["index"] for item in kept], dtype=torch.long)
    batch["video_id"] = [item["video_id"] for item in kept]
    batch["caption"] = [item["caption"] for item in kept]
    batch["skipped"] = [item for item in skipped if item is not None]
    return batch


class SkipCounter:
    """Counts skipped videos in the main process from the batches (works with any number of workers)."""

    def __init__(self):
        self.count = 0
        self.videos: list[str] = []

    def update(self, batch: dict | None, batch_size: int | None = None) -> None:
        """Add a batch's skips; for a `None` batch (all skipped) pass the loader's `batch_size`."""
        if batch is None:
            self.count += batch_size or 0
            return
        self.count += len(batch["skipped"])
        self.videos.extend(item.video for item in batch["skipped"])
