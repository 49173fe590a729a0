"""Build tuneloop's default general set (the forgetting check) from WordNet 3.0, deterministically.

WordNet comes from Debian's `wordnet-base` package, which is reachable wherever apt works and
carries a permissive licence (see its copyright file, copied into the README this writes).

    python scripts/make_general_set.py                      # apt-get download wordnet-base into a temp folder
    python scripts/make_general_set.py --source wordnet-base_3.0-37_all.deb
    python scripts/make_general_set.py --source extracted/   # a `dpkg-deb -x` folder, or usr/share/wordnet

It writes, into src/tuneloop/evaluate/general/ (or --out):
- text.jsonl: short dictionary-style passages ({"id", "text"}) for perplexity;
- questions.jsonl: four-way "which is the meaning of ..." questions ({"id", "question", "choices", "answer"});
- README.md: provenance, licence, how the files were made.

Only common words are used, so the text is ordinary English a small instruct model has seen: a
word sense is common when it was tagged often in the SemCor concordance (WordNet's cntlist.rev).
The same source, seed and sizes always give byte-identical files.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import subprocess
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "tuneloop" / "evaluate" / "general"
POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
POS_NAMES = {"n": "noun", "v": "verb", "a": "adjective", "r": "adverb"}
# cntlist.rev sense keys name the synset type by number; 5 is an adjective satellite, listed in index.adj.
SS_TYPE_POS = {"1": "n", "2": "v", "3": "a", "4": "r", "5": "a"}
# How many passages and questions each part of speech contributes. Questions lean on nouns: small models
# know common nouns best (SmolLM2-135M: 55% right on nouns, 35% on verbs and adjectives in a trial), and
# a measure near chance could not show a loss. Adverb glosses are too vague to tell apart four ways.
TEXT_QUOTA = {"n": 0.55, "v": 0.25, "a": 0.15, "r": 0.05}
QUESTION_QUOTA = {"n": 0.70, "v": 0.15, "a": 0.15}
WORD = re.compile(r"^[a-z]{3,14}$")
MAX_GLOSS_WORDS = {"text": 18, "question": 12}  # short choices keep the four-way scoring cheap
# The sizes keep the forgetting check of SmolLM2-135M (base and tuned, each on the whole set) under a
# minute on two CPU cores, while 80 questions still tell a working model from chance by far.
TEXTS, QUESTIONS = 100, 80


@dataclass
class Synset:
    offset: str
    pos: str
    words: list[str]  # lemmas as written in the synset, underscores turned into spaces
    definition: str  # the gloss without its quoted examples
    examples: list[str]


@dataclass
class Sense:
    """Sense 1 (the most frequent) of a common single word."""

    lemma: str
    pos: str
    tag_count: int
    synset: Synset
    senses: set[str]  # offsets of every sense of this lemma, in any part of speech: never a distractor


# --------------------------------------------------------------------------- source


def fetch(source: Path | None, work: Path) -> tuple[Path, Path]:
    """Return (wordnet data folder, package root) from a .deb, an extracted folder, or `apt-get download`."""
    if source is None:
        subprocess.run(["apt-get", "download", "wordnet-base"], cwd=work, check=True)
        source = next(work.glob("wordnet-base_*.deb"))
    if source.is_file():
        root = work / "extracted"
        subprocess.run(["dpkg-deb", "-x", str(source), str(root)], check=True)
    else:
        root = source
    for candidate in (root / "usr" / "share" / "wordnet", root):
        if (candidate / "data.noun").is_file():
            data = candidate
            break
    else:
        raise SystemExit(f"{source}: no WordNet data files (data.noun) found")
    # An extracted package sits two levels above usr/share/wordnet; a bare data folder has no docs.
    package = data.parents[2] if data.name == "wordnet" and data.parent.name == "share" else data
    return data, package


def package_version(package: Path) -> str:
    changelog = package / "usr" / "share" / "doc" / "wordnet-base" / "changelog.Debian.gz"
    if not changelog.is_file():
        return "unknown"
    with gzip.open(changelog, "rt", encoding="utf-8") as f:
        m = re.match(r"\S+ \(([^)]+)\)", f.readline())
    return m.group(1) if m else "unknown"


def licence_text(package: Path) -> str:
    """The WordNet licence paragraph of the Debian copyright file, as plain text."""
    copyright_file = package / "usr" / "share" / "doc" / "wordnet-base" / "copyright"
    if not copyright_file.is_file():
        raise SystemExit(f"{copyright_file} is missing: the licence must travel with the data, so use the package")
    lines, inside = [], False
    for line in copyright_file.read_text(encoding="utf-8").splitlines():
        if line.startswith("License: WordNet"):
            inside = True
            continue
        if inside:
            if not line.startswith(" "):
                break
            lines.append("" if line.strip() == "." else line.strip())
    return "\n".join(lines).strip()


# --------------------------------------------------------------------------- parse


def read_synsets(data: Path, pos: str) -> dict[str, Synset]:
    """Parse data.<pos>: `offset lex_filenum ss_type w_cnt word lex_id ... | gloss` (see wndb(5WN))."""
    synsets = {}
    for line in (data / f"data.{POS_FILES[pos]}").read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):  # the licence header
            continue
        head, _, gloss = line.partition(" | ")
        fields = head.split()
        w_cnt = int(fields[3], 16)
        # Adjectives may carry a syntactic marker such as "(a)" or "(p)"; it is not part of the word.
        words = [re.sub(r"\(\w+\)$", "", fields[4 + 2 * i]).replace("_", " ") for i in range(w_cnt)]
        definition, examples = split_gloss(gloss.strip())
        synsets[fields[0]] = Synset(fields[0], pos, words, definition, examples)
    return synsets


def split_gloss(gloss: str) -> tuple[str, list[str]]:
    """A gloss is `definition; "example"; "example"`; quoted parts are usage examples."""
    examples = re.findall(r'"([^"]+)"', gloss)
    definition = re.sub(r'"[^"]*"', "", gloss)
    # Some examples are quotations followed by their author ("... " - Shakespeare): drop the attribution.
    parts = [p.strip() for p in definition.split(";")]
    parts = [p for p in parts if p and not p.startswith("-")]
    return "; ".join(parts), [e.strip() for e in examples if e.strip()]


def read_index(data: Path, pos: str) -> dict[str, list[str]]:
    """Parse index.<pos>: lemma -> synset offsets in sense-number order (sense 1 is the most frequent)."""
    index = {}
    for line in (data / f"index.{POS_FILES[pos]}").read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):
            continue
        fields = line.split()
        synset_cnt, p_cnt = int(fields[2]), int(fields[3])
        index[fields[0]] = fields[4 + p_cnt + 2 : 4 + p_cnt + 2 + synset_cnt]
    return index


def read_tag_counts(data: Path) -> dict[tuple[str, str, int], int]:
    """cntlist.rev: `sense_key sense_number tag_count` -> {(lemma, pos, sense_number): tag_count}."""
    counts: dict[tuple[str, str, int], int] = defaultdict(int)
    for line in (data / "cntlist.rev").read_text(encoding="latin-1").splitlines():
        key, number, count = line.split()
        lemma, _, rest = key.partition("%")
        counts[(lemma, SS_TYPE_POS[rest[0]], int(number))] += int(count)
    return counts


def mentions(text: str, lemma: str) -> bool:
    """Whether `text` contains the word, even inside another ("abnormal"): such a gloss gives the answer away."""
    return lemma in text.lower()


def common_senses(data: Path) -> dict[str, list[Sense]]:
    """Sense 1 of every common single word, per part of speech, most frequent first, each synset once."""
    synsets = {pos: read_synsets(data, pos) for pos in POS_FILES}
    indexes = {pos: read_index(data, pos) for pos in POS_FILES}
    counts = read_tag_counts(data)
    all_senses: dict[str, set[str]] = defaultdict(set)
    for index in indexes.values():
        for lemma, offsets in index.items():
            all_senses[lemma].update(offsets)
    chosen: dict[str, list[Sense]] = {}
    for pos, index in indexes.items():
        candidates = []
        for lemma, offsets in index.items():
            tag_count = counts.get((lemma, pos, 1), 0)
            synset = synsets[pos][offsets[0]]
            if (
                tag_count >= 5
                and WORD.match(lemma)
                and lemma in synset.words  # excludes proper nouns ("Monday" is fine, "march" vs "March" is not)
                and 3 <= len(synset.definition.split()) <= MAX_GLOSS_WORDS["text"]
                and not mentions(synset.definition, lemma)
                and "`" not in synset.definition  # glosses that talk about words ("superlative of `many'")
            ):
                candidates.append(Sense(lemma, pos, tag_count, synset, all_senses[lemma]))
        candidates.sort(key=lambda s: (-s.tag_count, s.lemma))
        seen: set[str] = set()
        chosen[pos] = []
        for sense in candidates:
            if sense.synset.offset not in seen:
                seen.add(sense.synset.offset)
                chosen[pos].append(sense)
    return chosen


# --------------------------------------------------------------------------- write


def sense_id(sense: Sense) -> str:
    return f"{sense.lemma}.{sense.pos}.01"


def passage(sense: Sense) -> str:
    """Ordinary English built from a sense: its meaning, up to two synonyms and a usage example."""
    definition = sense.synset.definition.rstrip(".")
    if sense.pos == "v":
        text = f"To {sense.lemma} means to {definition.removeprefix('to ')}."
    else:
        text = f'The {POS_NAMES[sense.pos]} "{sense.lemma}" means {definition}.'
    others = [f'"{w}"' for w in sense.synset.words if w.lower() != sense.lemma][:2]
    if others:
        text += f" It is also called {' or '.join(others)}."
    if sense.synset.examples:
        text += f' For example: "{sense.synset.examples[0]}".'
    return text


def question(sense: Sense, pool: list[Sense], answer: int, rng: random.Random) -> dict:
    """Which gloss is the word's? The three wrong ones are glosses of other common words of the same part of speech."""
    distractors: list[str] = []
    for other in rng.sample(pool, len(pool)):
        if len(distractors) == 3:
            break
        gloss = other.synset.definition
        if (
            other.synset.offset in sense.senses  # another meaning of the same word would also be right
            or sense.lemma in [w.lower() for w in other.synset.words]
            or mentions(gloss, sense.lemma)
            or gloss in distractors
            or gloss == sense.synset.definition
        ):
            continue
        distractors.append(gloss)
    choices = [*distractors[:answer], sense.synset.definition, *distractors[answer:]]
    return {
        "id": f"q-{sense_id(sense)}",
        "question": f'What does the {POS_NAMES[sense.pos]} "{sense.lemma}" mean?',
        "choices": choices,
        "answer": answer,
    }


def quotas(total: int, shares: dict[str, float]) -> dict[str, int]:
    counts = {pos: round(total * share) for pos, share in shares.items()}
    counts[next(iter(counts))] += total - sum(counts.values())  # rounding remainder goes to nouns
    return counts


def build(data: Path, n_texts: int, n_questions: int, seed: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    senses = common_senses(data)
    q_quota, t_quota = quotas(n_questions, QUESTION_QUOTA), quotas(n_texts, TEXT_QUOTA)
    # Answer positions are balanced (each letter equally often), so always picking one position scores 25%.
    answers = [i % 4 for i in range(n_questions)]
    rng.shuffle(answers)
    questions: list[dict] = []
    asked: set[str] = set()
    for pos, n_q in q_quota.items():
        # The most common words become questions (a small model should know them); their choices are
        # glosses of the same common words, so a wrong choice is as plain as the right one.
        short = [s for s in senses[pos] if len(s.synset.definition.split()) <= MAX_GLOSS_WORDS["question"]]
        pool = short[: max(4 * n_q, 100)]
        for sense in short[:n_q]:
            questions.append(question(sense, pool, answers[len(questions)], rng))
            asked.add(sense.lemma)
    texts: list[dict] = []
    for pos, n_t in t_quota.items():
        # The next common words become text; no word is in both files, so neither leaks into the other.
        fresh = [s for s in senses[pos] if s.lemma not in asked and s.synset.examples][:n_t]
        texts += [{"id": sense_id(s), "text": passage(s)} for s in fresh]
    rng.shuffle(texts)
    rng.shuffle(questions)
    return texts, questions


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


README = """\
# The default general set (forgetting check)

`tuneloop eval` measures, for the base and the tuned model, perplexity on `text.jsonl` and accuracy
on `questions.jsonl`, and flags a regression beyond a threshold (`tuneloop.evaluate.forgetting`).
Point the check at your own folder holding the same two files to use a different set.

## Files

- `text.jsonl`: {n_texts} short passages of general English, one `{{"id", "text"}}` per line. Each explains
  the most frequent sense of a common word with its WordNet gloss, up to two synonyms and a usage
  example. The id is `lemma.pos.01` (WordNet's sense 1 of that word). For example:

      {text_example}

- `questions.jsonl`: {n_questions} four-way multiple-choice questions,
  `{{"id", "question", "choices": [4 strings], "answer": index}}`. The right choice is the word's
  WordNet gloss, the three others are glosses of other common words of the same part of speech
  (never another sense of the same word). Answers are spread evenly over the four positions, so
  always picking the same position scores exactly 25%. For example:

      {question_example}

The check scores each choice by the model's mean log-probability per token of the choice text
after `Question: <question>\\nAnswer:`, and counts a question right when the right choice scores best.

"Common" means the sense was tagged at least 5 times in the SemCor concordance (WordNet's
`cntlist.rev`); words are taken most frequent first. Questions use the most common words and
text the next ones, so the two files share no word. Glosses that contain the word itself are left
out, since they would give the answer away.

## Source

Debian package `wordnet-base`, version {version} (WordNet 3.0 by Princeton University), files
`data.{{noun,verb,adj,adv}}`, `index.*` and `cntlist.rev`. Made with:

    python scripts/make_general_set.py --seed {seed} --texts {n_texts} --questions {n_questions}

which runs `apt-get download wordnet-base` (or takes `--source` a downloaded .deb or extracted folder),
extracts it with `dpkg-deb -x`, and is deterministic: the same package and arguments give the same files.

## Licence

WordNet's licence is permissive (BSD-like): use, copying, modification and distribution for any
purpose without fee, provided the copyright notice and the statements below appear on all copies,
and Princeton's name is not used in advertising. It is reproduced here as the licence requires:

{licence}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, help="wordnet-base .deb or extracted folder (default: apt-get download)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--texts", type=int, default=TEXTS)
    parser.add_argument("--questions", type=int, default=QUESTIONS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data, package = fetch(args.source.resolve() if args.source else None, Path(tmp))
        texts, questions = build(data, args.texts, args.questions, args.seed)
        version, licence = package_version(package), licence_text(package)
    if len(texts) < args.texts or len(questions) < args.questions:
        raise SystemExit(f"only {len(texts)} passages and {len(questions)} questions qualify; ask for fewer")
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "text.jsonl", texts)
    write_jsonl(args.out / "questions.jsonl", questions)
    (args.out / "README.md").write_text(
        README.format(
            n_texts=len(texts),
            n_questions=len(questions),
            text_example=json.dumps(texts[0], ensure_ascii=False),
            question_example=json.dumps(questions[0], ensure_ascii=False),
            version=version,
            seed=args.seed,
            licence="\n".join(f"> {line}" if line else ">" for line in licence.splitlines()),
        ),
        encoding="utf-8",
    )
    print(f"wrote {len(texts)} passages and {len(questions)} questions to {args.out} (wordnet-base {version})")


if __name__ == "__main__":
    main()
