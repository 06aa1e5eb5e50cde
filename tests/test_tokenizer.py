"""The CLIP-style BPE tokenizer trained for from-scratch models."""

import pytest

from training.tokenizer import train_clip_tokenizer


def test_unseen_characters_never_become_unk_or_end_of_text():
    tokenizer = train_clip_tokenizer(["a red square moves left", "a blue circle moves up"], vocab_size=300)
    ids = tokenizer("a red 3 moves left! é")["input_ids"]
    # unk is the end-of-text id, where CLIP's text tower reads the caption: it may only close the caption.
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.eos_token_id not in ids[1:-1]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a red 3 moves left ! é"


def test_special_tokens_and_save_load(tmp_path):
    tokenizer = train_clip_tokenizer(["a green 7 turns red"] * 3, vocab_size=400)
    assert tokenizer.convert_ids_to_tokens([0, 1]) == ["<|startoftext|>", "<|endoftext|>"]
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 1
    tokenizer.save_pretrained(tmp_path)
    reloaded = type(tokenizer).from_pretrained(tmp_path)
    assert reloaded("a green 7 turns blue!")["input_ids"] == tokenizer("a green 7 turns blue!")["input_ids"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="caption"):
        train_clip_tokenizer([])
    with pytest.raises(ValueError, match="vocab_size"):
        train_clip_tokenizer(["a b"], vocab_size=100)


def test_two_processes_train_the_same_tokenizer():
    """The trainer numbers its alphabet in a per-process hash order; the ids must not depend on it."""
    import subprocess
    import sys

    script = (
        "from training.tokenizer import train_clip_tokenizer\n"
        "captions = [f'a {c} {s} moves {d}, then it turns {e}' for c in ('red', 'blue', 'green') for s in"
        " ('circle', 'square', '3', '7') for d in ('left', 'up') for e in ('white', 'purple')]\n"
        "print(train_clip_tokenizer(captions, vocab_size=400).backend_tokenizer.to_str())\n"
    )
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
            for _ in range(3)]
    assert runs[0].stdout and all(run.stdout == runs[0].stdout for run in runs)
