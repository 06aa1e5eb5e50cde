"""Train a small CLIP-style BPE tokenizer, for models trained from scratch (no CLIP vocabulary ships here)."""

from __future__ import annotations

import json
from collections.abc import Iterable

from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTokenizer


def train_clip_tokenizer(
    texts: Iterable[str], vocab_size: int = 1000, min_frequency: int = 1, model_max_length: int = 77
) -> CLIPTokenizer:
    """Train a byte-level BPE vocabulary on `texts` and return it as a `CLIPTokenizer`.

    The tokenizer keeps CLIP's whole pipeline (lower-casing, CLIP's pre-tokenizer, `</w>` word ends, byte-level
    alphabet) and its special tokens: `<|startoftext|>` (id 0) and `<|endoftext|>` (id 1, also unk and pad), so a
    CLIP text tower finds the end-of-text token as usual. Like CLIP's own vocabulary it holds all 256 byte symbols
    both inside and at the end of a word (`x</w>`), so no text ever maps to unk -- which, being the end-of-text
    id, would cut the caption short in the text tower. `vocab_size` bounds the trained part (a small corpus may
    stop short of it); the end-of-word byte symbols the corpus did not need come on top.

    Token ids are canonical: the special tokens, then the symbols no merge produces (sorted), then each merge's
    result in merge order. The trainer numbers its alphabet in hash-map order, which changes with every process,
    so without this two trainings on the same captions gave different ids and a from-scratch model (the demo)
    trained differently. The merges themselves come out the same here, but BPE breaks frequency ties in an
    unspecified order, so still train once and share the saved tokenizer between processes that must agree.
    """
    texts = [text for text in texts if isinstance(text, str)]
    if not texts:
        raise ValueError("train_clip_tokenizer needs at least one caption")
    minimum = 256 + 2
    if vocab_size <= minimum:
        raise ValueError(f"vocab_size must exceed {minimum} (byte alphabet + 2 special tokens), got {vocab_size}")
    # An empty CLIPTokenizer holds CLIP's normaliser / pre-tokenizer / post-processor; training keeps them.
    trained = CLIPTokenizer().train_new_from_iterator(
        [texts], vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False
    )
    bpe = json.loads(trained.backend_tokenizer.to_str())["model"]
    vocab = dict(bpe["vocab"])
    for symbol in sorted(ByteLevel.alphabet()):
        for token in (symbol, symbol + "</w>"):
            vocab.setdefault(token, len(vocab))
    merges = [tuple(pair) if isinstance(pair, list) else tuple(pair.split(" ")) for pair in bpe["merges"]]
    return CLIPTokenizer(vocab=canonical_ids(vocab, merges), merges=merges, model_max_length=model_max_length)


SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")  # ids 0 and 1, as in CLIP's own vocabulary


def canonical_ids(vocab: dict[str, int], merges: list[tuple[str, str]]) -> dict[str, int]:
    """The same tokens numbered independently of the trainer's order: specials, other symbols, merge results."""
    specials = [token for token in SPECIAL_TOKENS if token in vocab]
    results = [a + b for a, b in merges]
    symbols = sorted(set(vocab) - set(specials) - set(results))
    order = dict.fromkeys([*specials, *symbols, *(token for token in results if token in vocab)])
    return {token: index for index, token in enumerate(order)}


# A folder holds a usable CLIP tokenizer with one of these file sets.
TOKENIZER_FILE_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"))
_PROBES = ("a cat sits on a mat", "two dogs run in the park")


def check_tokenizer(tokenizer, source, remedy: str) -> None:
    """Refuse a tokenizer with no real vocabulary: Transformers 5 builds an *empty* `CLIPTokenizer` from a folder
    without tokenizer files instead of raising, and it maps every caption to the same ids."""
    first, second = (tokenizer(text)["input_ids"] for text in _PROBES)
    if len(tokenizer) <= 256 or first == second:
        raise ValueError(f"{source}: the tokenizer has no usable vocabulary ({len(tokenizer)} tokens; two different "
                         f"captions get the same ids {first}); {remedy}")  # fmt: skip


def load_checked_tokenizer(name_or_path, remedy: str):
    """`AutoTokenizer.from_pretrained`, refusing a local folder without tokenizer files (naming them) and a
    degenerate vocabulary. `remedy` says what to pass instead."""
    from transformers import AutoTokenizer

    check_tokenizer_files(name_or_path, remedy)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise ValueError(f"{name_or_path}: no tokenizer could be loaded ({error}); {remedy}") from error
    check_tokenizer(tokenizer, name_or_path, remedy)
    return tokenizer


def check_tokenizer_files(name_or_path, remedy: str) -> None:
    """A local folder must hold `tokenizer.json`, or `vocab.json` and `merges.txt` (Hub ids are checked once loaded)."""
    import os

    folder = os.fspath(name_or_path)
    if not os.path.isdir(folder):
        return
    if not any(all(os.path.isfile(os.path.join(folder, name)) for name in names) for names in TOKENIZER_FILE_SETS):
        raise ValueError(f"{folder}: no tokenizer files (it needs tokenizer.json, or vocab.json and merges.txt); "
                         f"{remedy}")  # fmt: skip
