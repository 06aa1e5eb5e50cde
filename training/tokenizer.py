"""Train a small CLIP-style BPE tokenizer, for models trained from scratch (no CLIP vocabulary ships here)."""

from __future__ import annotations

from collections.abc import Iterable

from transformers import CLIPTokenizer


def train_clip_tokenizer(
    texts: Iterable[str], vocab_size: int = 1000, min_frequency: int = 1, model_max_length: int = 77
) -> CLIPTokenizer:
    """Train a byte-level BPE vocabulary on `texts` and return it as a `CLIPTokenizer`.

    The tokenizer keeps CLIP's whole pipeline (lower-casing, CLIP's pre-tokenizer, `</w>` word ends, byte-level
    alphabet) and its special tokens: `<|startoftext|>` (id 0) and `<|endoftext|>` (id 1, also unk and pad), so a
    CLIP text tower finds the end-of-text token as usual. `vocab_size` counts the 256 byte symbols and the two
    special tokens; a smaller corpus may stop short of it.
    """
    texts = [text for text in texts if isinstance(text, str)]
    if not texts:
        raise ValueError("train_clip_tokenizer needs at least one caption")
    minimum = 256 + 2
    if vocab_size <= minimum:
        raise ValueError(f"vocab_size must exceed {minimum} (byte alphabet + 2 special tokens), got {vocab_size}")
    # An empty CLIPTokenizer holds CLIP's normaliser / pre-tokenizer / post-processor; training keeps them.
    tokenizer = CLIPTokenizer().train_new_from_iterator(
        [texts], vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False
    )
    tokenizer.model_max_length = model_max_length
    return tokenizer
