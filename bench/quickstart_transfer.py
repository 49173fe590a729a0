"""Is the quickstart recipe tuned to its tickets? Run it, unchanged, on an extraction task the project does not ship.

The quickstart's tuneloop.yaml is copied as it ships. Only what names the data changes: the objective,
the data file and the JSON Schema. The data are synthetic expense claims from bench/expense_claims.py:
another domain, a numeric field to normalise and other distractors. Then `tuneloop run` prepares,
trains and evaluates base against tuned on the claims' test split, and this prints the verdicts:

    .venv/bin/python bench/quickstart_transfer.py                 # the embedded model, about 12 minutes alone
    .venv/bin/python bench/quickstart_transfer.py --model tiny --count 60 --set train.max_steps=2   # plumbing only

A recipe that generalises beats the base on this task as clearly as on the tickets, without a
forgetting flag. Quality figures are deterministic for a seed; the time is only indicative.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import expense_claims  # a sibling script, not a package: importable once its folder is on the path

# The quickstart config's lines that name the tickets, and what replaces each. If the template changes,
# the bench stops instead of silently running another recipe.
SUBSTITUTIONS = (
    (
        'objective: "Triage each support ticket into a JSON record: category, priority, product and order id."',
        'objective: "Extract each expense claim into a JSON record: type, amount, currency and project code."',
    ),
    ("train: [data/tickets.jsonl]", "train: [data/claims.jsonl]"),
    ("json_schema: ticket.schema.json", "json_schema: claim.schema.json"),
)


def write_project(directory: Path, model: str, count: int, seed: int) -> Path:
    """The quickstart project with the claims in place of the tickets; returns the config path."""
    template = (files("tuneloop") / "templates" / "quickstart" / "tuneloop.yaml").read_text(encoding="utf-8")
    text = template.format(model=model)
    for old, new in SUBSTITUTIONS:
        if old not in text:
            raise SystemExit(f"the quickstart config no longer contains {old!r}: update SUBSTITUTIONS")
        text = text.replace(old, new)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tuneloop.yaml").write_text(text, encoding="utf-8")
    expense_claims.write(directory / "data/claims.jsonl", count, seed, directory / "claim.schema.json")
    return directory / "tuneloop.yaml"


def field_lines(report: dict) -> list[str]:
    """Base → tuned accuracy per JSON field (the verdict table above has the whole-answer metrics)."""
    lines = []
    for name, per in ((report.get("fields") or {}).get("comparisons") or {}).items():
        for field, c in per.items():
            lines.append(
                f"  field {field:18} {c['baseline']:7.3f} → {c['candidate']:7.3f}  "
                f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]  {c['verdict']}  ({name})"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a model name or folder, or 'tiny' (default: the embedded one)")
    parser.add_argument("--count", type=int, default=1300, help="claims to generate (the quickstart has 1,300)")
    parser.add_argument("--seed", type=int, default=7, help="the claims' generator seed")
    parser.add_argument("--dir", type=Path, help="project folder to keep (default: a temporary one)")
    parser.add_argument("--set", action="append", default=[], help="a config override, as `tuneloop run --set`")
    args = parser.parse_args()

    from tuneloop import config
    from tuneloop.cli.evaluate import print_report
    from tuneloop.loop import run
    from tuneloop.models import DEFAULT_MODEL

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or DEFAULT_MODEL
        if model == "tiny":
            from tuneloop.tiny import make_tiny_llama

            model = str(make_tiny_llama(Path(tmp) / "tiny-model"))
        directory = args.dir or Path(tmp) / "claims"
        cfg = config.load(write_project(directory, model, args.count, args.seed), args.set)
        started = time.perf_counter()
        result = run(cfg)
        elapsed = time.perf_counter() - started
        if result.report is None:
            raise SystemExit(f"the loop ended without an evaluation ({result.status})")
        print(f"quickstart recipe on expense claims ({model}, {args.count} claims, seed {args.seed}):")
        print_report(result.report, result.report_dir)
        print("\n".join(field_lines(result.report)))
        print(f"loop time {elapsed / 60:.1f} min (indicative: alone on the machine or not)")
        if args.dir:
            print(f"project kept in {directory}; report {result.report_dir / 'report.html'}")


if __name__ == "__main__":
    main()
