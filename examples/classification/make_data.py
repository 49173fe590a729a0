"""Write the topic-classification example's data from the chatterbot-corpus package, deterministically.

chatterbot-corpus (BSD 3-Clause, (c) 2017 Gunther Cox; its licence is in data/LICENSE-chatterbot-corpus.md)
ships English dialogues in one YAML file per topic. Every utterance of a topic file (questions and
answers) becomes a `{"text", "label"}` record labelled with the topic. Texts that occur under two topics
are left out (their label would be a coin toss), and each topic keeps at most --per-topic records (a
seeded sample), so the larger topics do not drown the others.

    python examples/classification/make_data.py    # writes examples/classification/data/topics.jsonl

It needs the package (`pip install chatterbot-corpus==1.3.3`, in tuneloop's dev extra). The same
arguments and package version always give a byte-identical file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
from collections import defaultdict
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "data" / "topics.jsonl"
# The corpus's English topic files with over 100 distinct utterances, so val and test get a dozen each
# (tech_support has 2,100 utterances but only 20 distinct ones).
TOPICS = {
    "ai": "ai.yml",
    "coding": "coding.yml",
    "conversations": "conversations.yml",
    "emotion": "emotion.yml",
    "psychology": "psychology.yml",
    "trivia": "trivia.yml",
}


def corpus_folder() -> Path:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or spec.origin is None:
        raise SystemExit("chatterbot-corpus is not installed: pip install chatterbot-corpus==1.3.3")
    return Path(spec.origin).parent / "data" / "english"


def utterances(path: Path) -> list[str]:
    """Every non-empty string utterance of a topic file, in file order."""
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    texts = []
    for conversation in document.get("conversations") or []:
        for utterance in conversation:
            if isinstance(utterance, str) and utterance.strip():
                texts.append(" ".join(utterance.split()))
    return texts


def build(per_topic: int, seed: int) -> list[dict[str, str]]:
    folder = corpus_folder()
    by_topic = {label: list(dict.fromkeys(utterances(folder / name))) for label, name in TOPICS.items()}
    topics_of: dict[str, set[str]] = defaultdict(set)
    for label, texts in by_topic.items():
        for text in texts:
            topics_of[text.lower()].add(label)
    rng = random.Random(seed)
    rows = []
    for label, texts in by_topic.items():
        unique = [t for t in texts if len(topics_of[t.lower()]) == 1]
        chosen = sorted(rng.sample(range(len(unique)), min(per_topic, len(unique))))
        rows += [{"text": unique[i], "label": label} for i in chosen]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--per-topic", type=int, default=250)
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()
    rows = build(args.per_topic, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    counts = {label: sum(r["label"] == label for r in rows) for label in TOPICS}
    print(f"{len(rows)} records → {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
