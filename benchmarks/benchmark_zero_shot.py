"""Zero-shot video classification on the demo corpus through `pipeline("zero-shot-video-classification")`.

Each test clip of the demo corpus (`training.demo_corpus`) is classified by its object's colour (6 labels) and by
the object itself (10 digits + 5 shapes, 15 labels), with labels the model never saw as classes: only captions
such as "a red 3 moves left". Prints the top-1 accuracy of each against chance and writes JSON.

    python training/demo.py --output_dir outputs/demo           # or any CenterCLIP model trained on the demo corpus
    python benchmarks/benchmark_zero_shot.py --model outputs/demo/centerclip/final --corpus data/demo
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, "") and __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # import the repository's packages

TASKS = {  # label field of the demo metadata -> hypothesis template (labels phrased as the captions do)
    "color": "a {}",
    "object": "a {}",
}


def run(model: str, corpus: str, split: str = "test", batch_size: int = 16, limit: int | None = None) -> dict:
    import modeling_centerclip  # noqa: F401  registers the pipelines
    from transformers import pipeline

    from training.corpora import load_corpus
    from training.demo_corpus import COLORS, OBJECTS

    rows = load_corpus(corpus)[split]
    rows = rows.select(range(min(limit, len(rows)))) if limit else rows
    classify = pipeline("zero-shot-video-classification", model=model, device="cpu")
    labels = {"color": list(COLORS), "object": list(OBJECTS)}
    results = {}
    for field, template in TASKS.items():
        start = time.perf_counter()
        predictions = classify(list(rows["video"]), candidate_labels=labels[field], hypothesis_template=template,
                               batch_size=batch_size)  # fmt: skip
        seconds = time.perf_counter() - start
        correct = [ranked[0]["label"] == truth for ranked, truth in zip(predictions, rows[field])]
        results[field] = {"labels": len(labels[field]), "template": template, "accuracy": sum(correct) / len(correct),
                          "chance": 1 / len(labels[field]), "videos": len(correct), "videos_per_s": len(correct) / seconds}  # fmt: skip
    return {"model": model, "corpus": corpus, "split": split, "tasks": results}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="outputs/demo/centerclip/final")
    parser.add_argument("--corpus", default="data/demo", help="the demo corpus folder (its metadata has the labels)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--limit", type=int, help="classify only the first N clips (smoke runs)")
    parser.add_argument("--output", default="docs/zero_shot_demo.json")
    args = parser.parse_args(argv)
    report = run(args.model, args.corpus, args.split, args.batch_size, args.limit)
    for field, result in report["tasks"].items():
        print(f"{field:7s} {result['labels']:2d} labels  top-1 {100 * result['accuracy']:5.1f} %  chance "
              f"{100 * result['chance']:5.1f} %  ({result['videos']} clips, {result['videos_per_s']:.1f} clips/s)")
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    return report


if __name__ == "__main__":
    main()
