"""The built-in demo corpus: small captioned videos of coloured digits and shapes that move, appear and change.

Each clip shows one object (a digit 0-9 or a shape) of some colour moving left, right, up or down the whole
time; halfway through, an event may happen: a second object appears, a second object (there from the start)
disappears, or the moving object turns another colour. Captions say all of it, e.g.
"a red 3 moves left, then a blue square appears".

Why it is learnable but not trivial:
- captions are combinatorial (15 objects x 6 colours x 4 directions x events) and unique within the corpus,
  so retrieval is well posed;
- a share of the clips come in *time-reversed pairs*: the second clip plays the first one's frames backwards,
  so its caption swaps the direction and the event ("appears" <-> "disappears", colour A -> B <-> B -> A).
  Both clips hold exactly the same set of frames, so no single frame (and no order-blind bag of frames)
  tells them apart; the motion direction and the event order do.

Writes `<output_dir>/{train,test}/<split>_<index>.mp4` (H.264, yuv420p) and `<output_dir>/metadata.jsonl`
with `file_name`, `caption`, `split` (the `videofolder` layout `training.corpora.load_videofolder` reads) plus
`object`, `color`, `direction`, `event`, `twin` (the `video_id` of a clip's time-reversed twin, or null).
Everything is drawn from one seeded `numpy.random.Generator`, so a seed gives identical files.

    python -m training.demo_corpus --output_dir data/demo --num_train 800 --num_test 200 --seed 0
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.jsonl"
GENERATION_FILE = "generation.json"

COLORS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (60, 100, 255),
    "yellow": (240, 220, 40),
    "white": (235, 235, 235),
    "purple": (180, 60, 230),
}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
SHAPES = ("square", "circle", "triangle", "diamond", "cross")
OBJECTS = tuple(str(digit) for digit in range(10)) + SHAPES
EVENTS = ("none", "appears", "disappears", "turns")
EVENT_WEIGHTS = (0.16, 0.3, 0.3, 0.24)
REVERSED_EVENT = {"none": "none", "appears": "disappears", "disappears": "appears", "turns": "turns"}

# 5x7 digit bitmaps ("#" = ink), scaled up and sheared per clip for a handwritten look.
DIGIT_BITMAPS = {
    "0": (" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### "),
    "1": ("  #  ", " ##  ", "# #  ", "  #  ", "  #  ", "  #  ", "#####"),
    "2": (" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####"),
    "3": ("#### ", "    #", "    #", " ### ", "    #", "    #", "#### "),
    "4": ("   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # "),
    "5": ("#####", "#    ", "#### ", "    #", "    #", "#   #", " ### "),
    "6": ("  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### "),
    "7": ("#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   "),
    "8": (" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### "),
    "9": (" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  "),
}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou8" else "a"


def _phrase(color: str, obj: str) -> str:
    return f"{_article(color)} {color} {obj}"


@dataclass(frozen=True)
class ClipSpec:
    """What one clip shows; `caption` is derived from it."""

    object: str
    color: str
    direction: str
    event: str  # one of EVENTS
    second_object: str | None = None  # for "appears" / "disappears"
    second_color: str | None = None  # the second object's colour, or the new colour for "turns"

    @property
    def caption(self) -> str:
        main = f"{_phrase(self.color, self.object)} moves {self.direction}"
        if self.event == "none":
            return main
        if self.event == "turns":
            return f"{main}, then it turns {self.second_color}"
        return f"{main}, then {_phrase(self.second_color, self.second_object)} {self.event}"

    def reversed(self) -> ClipSpec:
        """The spec of the same clip played backwards."""
        if self.event == "turns":
            return ClipSpec(self.object, self.second_color, OPPOSITE[self.direction], "turns", None, self.color)
        return ClipSpec(
            self.object,
            self.color,
            OPPOSITE[self.direction],
            REVERSED_EVENT[self.event],
            self.second_object,
            self.second_color,
        )


def object_mask(obj: str, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean ink mask of a digit or shape, about `16 * scale` pixels tall."""
    if obj in DIGIT_BITMAPS:
        bitmap = np.array([[c == "#" for c in row] for row in DIGIT_BITMAPS[obj]], dtype=bool)
        cell = max(1, round(3 * scale))
        mask = np.kron(bitmap, np.ones((cell, cell), dtype=bool))
        # Handwritten look: a random horizontal shear (slant) and, sometimes, a thicker stroke.
        slant = rng.uniform(-0.35, 0.35)
        height, width = mask.shape
        pad = int(np.ceil(abs(slant) * height))
        sheared = np.zeros((height, width + pad), dtype=bool)
        for row in range(height):
            shift = int(round(slant * (height - 1 - row))) + (pad if slant < 0 else 0)
            sheared[row, shift : shift + width] = mask[row]
        if rng.random() < 0.5:
            sheared[:, 1:] |= sheared[:, :-1]
        return sheared
    side = max(6, round(16 * scale * rng.uniform(0.85, 1.15)))
    y, x = np.mgrid[0:side, 0:side] + 0.5
    center = side / 2
    if obj == "square":
        return np.ones((side, side), dtype=bool)
    if obj == "circle":
        return (x - center) ** 2 + (y - center) ** 2 <= center**2
    if obj == "triangle":
        return np.abs(x - center) <= y / 2  # apex up
    if obj == "diamond":
        return np.abs(x - center) + np.abs(y - center) <= center
    if obj == "cross":
        bar = side / 6
        return (np.abs(x - center) <= bar) | (np.abs(y - center) <= bar)
    raise ValueError(f"unknown object {obj!r}")


def _paint(frame: np.ndarray, mask: np.ndarray, top: int, left: int, color: tuple[int, int, int]) -> None:
    height, width = mask.shape
    region = frame[top : top + height, left : left + width]
    region[mask[: region.shape[0], : region.shape[1]]] = color


def render_clip(spec: ClipSpec, num_frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Frames of one clip, uint8 `[num_frames, size, size, 3]`; time runs forwards (reversal happens outside)."""
    scale = size / 64
    mask = object_mask(spec.object, scale, rng)
    height, width = mask.shape
    dx, dy = DIRECTIONS[spec.direction]
    travel_limit = (size - width) if dx else (size - height)
    travel = int(min(travel_limit, round(rng.uniform(0.45, 0.65) * size)))
    # Start anywhere the whole path stays inside the frame, so a single frame's position says little.
    if dx:
        x0 = int(rng.integers(0, size - width - travel + 1)) + (travel if dx < 0 else 0)
        y0 = int(rng.integers(0, size - height + 1))
    else:
        x0 = int(rng.integers(0, size - width + 1))
        y0 = int(rng.integers(0, size - height - travel + 1)) + (travel if dy < 0 else 0)
    steps = np.linspace(0, travel, num_frames)
    xs = np.round(x0 + dx * steps).astype(int)
    ys = np.round(y0 + dy * steps).astype(int)

    second = None
    if spec.event in ("appears", "disappears"):
        second_mask = object_mask(spec.second_object, scale, rng)
        second_pos = _place_apart(second_mask.shape, (xs, ys, width, height), size, rng)
        second = (second_mask, second_pos, COLORS[spec.second_color])

    background = np.array([rng.integers(0, 40), rng.integers(0, 40), rng.integers(0, 40)], dtype=np.uint8)
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    frames[:] = background
    half = num_frames // 2
    for t in range(num_frames):
        late = t >= half
        if second is not None and late == (spec.event == "appears"):
            second_mask, (sx, sy), second_color = second
            _paint(frames[t], second_mask, sy, sx, second_color)
        color = spec.second_color if (spec.event == "turns" and late) else spec.color
        _paint(frames[t], mask, ys[t], xs[t], COLORS[color])
    return frames


def _place_apart(shape, path, size: int, rng: np.random.Generator, tries: int = 20) -> tuple[int, int]:
    """A top-left corner for a static object, avoiding the moving object's path where possible."""
    height, width = shape
    xs, ys, path_width, path_height = path
    margin = 3  # keep a gap, so the two objects never touch
    box = (xs.min() - margin, ys.min() - margin, xs.max() + path_width + margin, ys.max() + path_height + margin)
    best, best_overlap = None, None
    for _ in range(tries):
        x, y = int(rng.integers(0, size - width + 1)), int(rng.integers(0, size - height + 1))
        overlap = max(0, min(x + width, box[2]) - max(x, box[0])) * max(0, min(y + height, box[3]) - max(y, box[1]))
        if best_overlap is None or overlap < best_overlap:
            best, best_overlap = (x, y), overlap
        if overlap == 0:
            break
    return best


def random_spec(rng: np.random.Generator) -> ClipSpec:
    obj = OBJECTS[rng.integers(len(OBJECTS))]
    color = list(COLORS)[rng.integers(len(COLORS))]
    direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
    event = EVENTS[rng.choice(len(EVENTS), p=EVENT_WEIGHTS)]
    if event == "none":
        return ClipSpec(obj, color, direction, event)
    other_colors = [c for c in COLORS if c != color]
    second_color = other_colors[rng.integers(len(other_colors))]
    if event == "turns":
        return ClipSpec(obj, color, direction, event, None, second_color)
    second_obj = OBJECTS[rng.integers(len(OBJECTS))]
    return ClipSpec(obj, color, direction, event, second_obj, second_color)


def write_mp4(path: str, frames: np.ndarray, fps: int, options: dict[str, str] | None = None) -> None:
    """Write uint8 `[T, H, W, 3]` RGB frames as H.264 yuv420p.

    `options` are libx264's. The default is lossless (`qp=0`): the decoded frames are then exactly the YUV input
    whatever the encoder decides, and its decisions are not reproducible: with crf 12, identical frames gave
    different H.264 (pixels off by up to 6 levels) in some runs on a loaded machine, even single-threaded.
    """
    import av

    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = options or {"qp": "0", "preset": "veryfast", "threads": "1"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def plan_split(
    num_clips: int, rng: np.random.Generator, seen: set[str], pair_fraction: float
) -> list[tuple[ClipSpec, int]]:
    """Unique specs for one split as `(spec, twin)` where `twin` is the position of its reversed twin or -1."""
    plan: list[tuple[ClipSpec, int]] = []
    attempts = 0
    while len(plan) < num_clips:
        attempts += 1
        if attempts > 1000 * num_clips:
            raise RuntimeError("could not draw enough distinct captions; lower num_train / num_test")
        spec = random_spec(rng)
        # A draw makes a pair (2 clips) with probability q, so a share 2q / (1 + q) = pair_fraction of clips are twins.
        want_pair = len(plan) + 1 < num_clips and rng.random() < pair_fraction / (2 - pair_fraction)
        twin = spec.reversed() if want_pair else None
        if spec.caption in seen or (twin is not None and twin.caption in seen):
            continue
        seen.add(spec.caption)
        if twin is None:
            plan.append((spec, -1))
        else:
            seen.add(twin.caption)
            first = len(plan)
            plan.extend([(spec, first + 1), (twin, first)])
    return plan


def _clip_id(split: str, position: int) -> str:
    return f"{split}_{position:05d}"


def generate_demo_corpus(
    output_dir: str | os.PathLike,
    num_train: int = 800,
    num_test: int = 200,
    seed: int = 0,
    num_frames: int = 16,
    size: int = 64,
    fps: int = 8,
    pair_fraction: float = 0.3,
    show_progress: bool = True,
) -> str:
    """Generate the demo corpus; returns the path of its `metadata.jsonl`.

    A folder that already holds a complete corpus generated with the same settings is reused as it is.

    Args:
        output_dir: folder to write into (created; existing clips of the same names are overwritten).
        num_train / num_test: clips per split.
        seed: everything (captions, placement, rendering) derives from it.
        num_frames / size / fps: frames per clip, frame side in pixels, frame rate of the MP4s.
        pair_fraction: share of clips that come as time-reversed twins (same frames, reversed order).
    """
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    if num_frames < 4:
        raise ValueError(f"num_frames must be at least 4, got {num_frames}")
    if not 0 <= pair_fraction <= 1:
        raise ValueError(f"pair_fraction must be in [0, 1], got {pair_fraction}")
    settings = dict(num_train=num_train, num_test=num_test, seed=seed, num_frames=num_frames, size=size, fps=fps,
                    pair_fraction=pair_fraction)
    metadata_path = os.path.join(output_dir, METADATA_FILE)
    settings_path = os.path.join(output_dir, GENERATION_FILE)
    if os.path.isfile(metadata_path) and os.path.isfile(settings_path):  # written last: the corpus is complete
        with open(settings_path, encoding="utf-8") as handle:
            if json.load(handle) == settings:
                logger.info("demo corpus: reusing %s", output_dir)
                return metadata_path
    from tqdm.auto import tqdm

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    plans = {"train": plan_split(num_train, rng, seen, pair_fraction)}
    plans["test"] = plan_split(num_test, rng, seen, pair_fraction)
    records = []
    progress = tqdm(total=num_train + num_test, desc="demo corpus", unit="clip", disable=not show_progress)
    for split, plan in plans.items():
        os.makedirs(os.path.join(output_dir, split), exist_ok=True)
        rendered: dict[int, np.ndarray] = {}
        for position, (spec, twin) in enumerate(plan):
            if twin >= 0 and twin < position:
                frames = rendered.pop(twin)[::-1]  # the twin plays the same frames backwards
            else:
                frames = render_clip(spec, num_frames, size, rng)
                if twin >= 0:
                    rendered[position] = frames
            file_name = f"{split}/{_clip_id(split, position)}.mp4"
            write_mp4(os.path.join(output_dir, file_name), np.ascontiguousarray(frames), fps)
            records.append(
                {
                    "file_name": file_name,
                    "caption": spec.caption,
                    "split": split,
                    "object": spec.object,
                    "color": spec.color,
                    "direction": spec.direction,
                    "event": spec.event,
                    "twin": _clip_id(split, twin) if twin >= 0 else None,
                }
            )
            progress.update()
    progress.close()
    with open(metadata_path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    with open(settings_path, "w", encoding="utf-8") as handle:
        json.dump(settings, handle, indent=2)
    logger.info("wrote %d demo clips to %s in %.1f s", len(records), output_dir, time.perf_counter() - start)
    return metadata_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_train", type=int, default=800)
    parser.add_argument("--num_test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--pair_fraction", type=float, default=0.3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    generate_demo_corpus(**vars(args))
    print(f"{args.num_train + args.num_test} clips in {time.perf_counter() - start:.1f} s -> {args.output_dir}")


if __name__ == "__main__":
    main()
