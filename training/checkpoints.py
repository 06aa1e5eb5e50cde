"""Training checkpoints: `output_dir/checkpoints/step_N`, written atomically, and finding the one to resume from.

A checkpoint is first written to a hidden temporary folder (`checkpoints/.step_N.tmp`) and renamed to `step_N`
only when complete (Accelerate state + `history.json`), so a run killed while saving leaves no half-written
`step_N` behind. Resuming picks the newest complete checkpoint and says which; folders that are not complete
(left by older versions, or copied partially) are reported and passed over.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"step_(\d+)$")
HISTORY_FILE = "history.json"  # written last: its presence marks a complete checkpoint


def checkpoint_dir(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, "checkpoints", f"step_{step}")


def checkpoint_step(folder: str | os.PathLike) -> int:
    match = CHECKPOINT_PATTERN.search(os.path.basename(os.path.normpath(folder)))
    if match is None:
        raise ValueError(f"{folder}: not a checkpoint folder (expected a name like step_500)")
    return int(match.group(1))


def is_complete(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    has_weights = any(folder.glob("model*.safetensors")) or any(folder.glob("pytorch_model*.bin"))
    return has_weights and (folder / HISTORY_FILE).is_file()


def _checkpoints(root: Path) -> list[Path]:
    """`step_N` folders under `root`, oldest first."""
    found = [p for p in root.glob("step_*") if p.is_dir() and CHECKPOINT_PATTERN.search(p.name)]
    return sorted(found, key=checkpoint_step)


def find_checkpoint(resume: str, output_dir: str) -> str | None:
    """The checkpoint folder that `--resume` names: `latest` (newest complete one under `output_dir`), a run's
    output folder (its newest complete one) or one checkpoint folder (which must be complete). None: nothing yet."""
    if resume != "latest" and CHECKPOINT_PATTERN.search(os.path.basename(os.path.normpath(resume))):
        if not is_complete(resume):
            raise ValueError(f"--resume {resume}: this checkpoint is incomplete (no {HISTORY_FILE} or weights; the "
                             "run was probably killed while saving); pass the run's output_dir or 'latest' to resume "
                             "from its newest complete checkpoint")  # fmt: skip
        return resume
    run_dir = output_dir if resume == "latest" else resume
    root = Path(run_dir) / "checkpoints"
    if resume != "latest" and not root.is_dir():
        raise ValueError(f"--resume {resume}: neither a checkpoint folder (step_N) nor a run's output_dir "
                         "(no checkpoints/ inside)")  # fmt: skip
    candidates = _checkpoints(root)
    incomplete = [str(p) for p in candidates if not is_complete(p)]
    complete = [p for p in candidates if is_complete(p)]
    if incomplete:
        logger.warning("passing over incomplete checkpoint(s) %s (killed while saving?)", ", ".join(incomplete))
    if not complete:
        return None
    logger.info("resuming from the newest complete checkpoint %s", complete[-1])
    return str(complete[-1])


def read_history(folder: str) -> list:
    with open(os.path.join(folder, HISTORY_FILE), encoding="utf-8") as handle:
        return json.load(handle)


def save_checkpoint(accelerator, output_dir: str, step: int, history: list, total_limit: int) -> str:
    """`accelerator.save_state` into a temporary folder, then `history.json`, then rename to `step_N`; keeps the
    newest `total_limit` checkpoints. Returns the checkpoint folder."""
    folder = checkpoint_dir(output_dir, step)
    temporary = os.path.join(os.path.dirname(folder), f".step_{step}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(temporary)
    accelerator.wait_for_everyone()  # every process has written its part (random states) before the rename
    if accelerator.is_main_process:
        with open(os.path.join(temporary, HISTORY_FILE), "w", encoding="utf-8") as handle:
            json.dump(history, handle)
        if os.path.isdir(folder):  # the same step saved again (e.g. a resumed run): replace it
            shutil.rmtree(folder)
        os.replace(temporary, folder)
        for stale in _checkpoints(Path(folder).parent)[:-total_limit]:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return folder
