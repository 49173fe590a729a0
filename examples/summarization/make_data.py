"""Generate synthetic support tickets with one-line summaries for the summarization example.

Each ticket is built from a few facts: the product (always named), the problem, optionally when it
started, what the customer already tried, and how pressing it is, plus greetings, filler sentences
and sign-offs that a summary should leave out. The summary states the same facts in one fixed
shape, so a tuned model can learn what to keep and what to drop:

    <Product>: <problem>[ since <when>][; <tried> didn't help][; <impact>].

The company, Larkspur, and its products are fictional (the same as in scripts/make_tickets.py).

    python examples/summarization/make_data.py   # writes examples/summarization/data/tickets.jsonl

The same arguments always give a byte-identical file.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "data" / "tickets.jsonl"
DEFAULT_SEED = 23
DEFAULT_COUNT = 400
# Rows more alike than this (Jaccard on word 3-grams) are skipped; the data stage drops near
# duplicates at 0.85, estimated by MinHash, and the margin covers the estimate's noise.
MAX_SIMILARITY = 0.75

INSTRUCTION = "Summarize this support ticket in one line:"
SOFTWARE = ("Nimbus Drive", "LedgerLite", "TaskPilot")
DEVICES = ("Beacon Hub", "PocketPOS", "Orbit Speaker")


@dataclass(frozen=True)
class Issue:
    """A problem: how customers describe it, and how the summary states it."""

    products: tuple[str, ...]
    ticket: tuple[str, ...]
    summary: str
    tried: str | None = None  # which list of remedies the customer may have tried already
    since: bool = True  # whether "since <when>" makes sense for it


ISSUES = (
    Issue(
        SOFTWARE,
        (
            "{product} crashes as soon as I open it on {os}.",
            "Every time I start {product} on {os} it closes again after a few seconds.",
            "{product} won't stay open on my {os} machine, it just quits.",
        ),
        "crashes on start-up on {os}",
        "software",
    ),
    Issue(
        ("Nimbus Drive",),
        (
            "Sync in {product} is stuck at {pct}% and never finishes.",
            "{product} has been showing 'syncing' at {pct}% for hours.",
        ),
        "sync stuck at {pct}%",
        "software",
    ),
    Issue(
        ("LedgerLite", "TaskPilot"),
        (
            "Exports from {product} come out empty.",
            "When I export a report from {product}, the CSV only has the header row.",
        ),
        "exports are empty",
        "software",
    ),
    Issue(
        SOFTWARE,
        (
            "The dashboard in {product} takes more than a minute to load.",
            "{product} has become extremely slow, every page takes ages to open.",
        ),
        "very slow to load",
        "software",
    ),
    Issue(
        ("Beacon Hub",),
        (
            "The {product} won't connect to our wifi.",
            "Our {product} can't find the wireless network any more.",
        ),
        "can't connect to wifi",
        "device",
    ),
    Issue(
        ("Orbit Speaker",),
        (
            "The {product} won't pair with my phone over bluetooth.",
            "My phone doesn't see the {product} in the bluetooth list.",
        ),
        "won't pair over bluetooth",
        "device",
    ),
    Issue(
        ("PocketPOS",),
        (
            "Card payments on the {product} fail with 'terminal not ready'.",
            "The {product} refuses every card payment and shows 'terminal not ready'.",
        ),
        "card payments fail with 'terminal not ready'",
        "device",
    ),
    Issue(
        ("PocketPOS", "Orbit Speaker"),
        (
            "The battery of the {product} is empty after about an hour.",
            "My {product} runs out of battery within an hour now, it used to last all day.",
        ),
        "battery drains within an hour",
        "device",
    ),
    Issue(
        SOFTWARE,
        (
            "I can't log in to {product}: it says my password is wrong, even after two resets.",
            "Logging in to {product} fails with 'incorrect password' although I reset it twice.",
        ),
        "can't log in despite two password resets",
        "software",
    ),
    Issue(
        SOFTWARE,
        (
            "I lost the phone with my authenticator app and now I'm locked out of {product}.",
            "My two-factor codes were on my old phone, so I can't get into {product}.",
        ),
        "locked out after losing the two-factor phone",
        since=False,
    ),
    Issue(
        ("TaskPilot", "Nimbus Drive"),
        (
            "Invitations to our {product} workspace show as expired when colleagues open them.",
            "My colleagues get 'invitation expired' from {product} even with a fresh invite.",
        ),
        "workspace invites show as expired",
    ),
    Issue(
        SOFTWARE,
        (
            "A former employee still has admin access to our {product} account.",
            "Someone who left the company is still an admin in {product} and I can't remove them.",
        ),
        "former employee still has admin access",
        since=False,
    ),
    Issue(
        SOFTWARE,
        (
            "I was charged twice for {product} this month, {amount} each time. Please refund the duplicate.",
            "There are two identical charges of {amount} for {product}. I want the second one refunded.",
        ),
        "charged twice ({amount}); wants the duplicate refunded",
        since=False,
    ),
    Issue(
        SOFTWARE,
        (
            "The price of {product} went up from {amount} to {amount2} a month without any notice. Why?",
            "Our bill for {product} jumped from {amount} to {amount2} and nobody told us.",
        ),
        "price rose from {amount} to {amount2} without notice",
        since=False,
    ),
    Issue(
        SOFTWARE + DEVICES,
        (
            "I need our VAT number on the invoices for {product}.",
            "Could you add our company tax number to the {product} invoices?",
        ),
        "wants the VAT number added to invoices",
        since=False,
    ),
    Issue(
        SOFTWARE,
        (
            "My payment for {product} was declined although my card works everywhere else.",
            "The payment for {product} didn't go through, and the bank says nothing was blocked.",
        ),
        "payment declined though the card works elsewhere",
        since=False,
    ),
    Issue(
        DEVICES,
        (
            "My {product} order {order} hasn't arrived; it was due {due}.",
            "I'm still waiting for order {order} with the {product}, delivery was due {due}.",
        ),
        "order {order} not delivered, was due {due}",
        since=False,
    ),
    Issue(
        DEVICES,
        (
            "The {product} arrived with a cracked case. Please send a replacement.",
            "The box was crushed and the {product} inside is cracked. I'd like a new one.",
        ),
        "arrived with a cracked case; wants a replacement",
        since=False,
    ),
    Issue(
        DEVICES,
        (
            "I ordered {k} {product} units but only {k1} were in the package.",
            "The parcel should have held {k} {product} units and had {k1}.",
        ),
        "{k1} of {k} units delivered",
        since=False,
    ),
    Issue(
        DEVICES,
        (
            "The {product} isn't what I expected and I'd like to return it for a refund.",
            "I want to send the {product} back and get my money back.",
        ),
        "wants to return it for a refund",
        since=False,
    ),
    Issue(
        DEVICES,
        (
            "I returned the {product} {days} days ago and still haven't received the refund.",
            "It's been {days} days since I sent the {product} back, and no refund yet.",
        ),
        "refund for the returned unit missing after {days} days",
        since=False,
    ),
)

# (ticket phrase, summary phrase) pairs; the ticket says them in full sentences.
SINCE = (
    ("on Monday", "Monday"),
    ("last week", "last week"),
    ("after the last update", "the last update"),
    ("yesterday", "yesterday"),
    ("this morning", "this morning"),
    ("at the weekend", "the weekend"),
)
SINCE_SENTENCES = ("It started {t}.", "This has been happening since {s}.", "It was fine until {s}.")
TRIED = {
    "software": ("reinstalling", "restarting", "clearing the cache", "logging out and back in", "another browser"),
    "device": ("restarting it", "a factory reset", "charging it overnight", "updating the firmware"),
}
TRIED_ONE = ("I already tried {x}.", "{X} didn't help.", "I've tried {x}, no luck.")
TRIED_TWO = ("I tried {x} and {y}, neither helped.", "{X} and {y} didn't change anything.")
IMPACTS = (
    (("Our whole team is blocked.", "Nobody on the team can work until this is fixed."), "whole team blocked"),
    (("I have a client demo tomorrow and need this working.", "I need it for a client demo tomorrow."),
     "needed for a client demo tomorrow"),
    (("We're losing sales while this is broken.", "Every hour this goes on costs us sales."), "losing sales"),
    (("It's not urgent.", "No rush on this one."), "not urgent"),
    (("Our month-end close is on Friday.", "I need this sorted before we close the month on Friday."),
     "needed before Friday's month-end close"),
)  # fmt: skip
FILLER = (
    "I've been a customer for a few years.",
    "Thanks in advance for your help.",
    "I hope this is the right place to ask.",
    "Everything else works fine.",
    "Let me know if you need anything else from me.",
    "Sorry for the long message.",
    "I checked the help centre first.",
    "Overall we're happy with Larkspur.",
)
GREETINGS = ("Hi,", "Hello,", "Hi there,", "Dear support,", "Good morning,", "Hey team,")
SIGNOFFS = ("Thanks, {name}", "Best, {name}", "Regards, {name}", "Cheers, {name}", "{name}")
NAMES = ("Anna", "Ben", "Carla", "Dev", "Elif", "Hugo", "Ines", "Jonas", "Kemi", "Maya", "Priya", "Tom", "Zoe")
SLOTS = {
    "os": ("Windows 11", "macOS", "Ubuntu", "Android", "iOS"),
    "amount": ("$19.00", "$29.00", "€49.00", "£12.99", "$99.00"),
    "amount2": ("$24.00", "$39.00", "€59.00", "£15.99", "$129.00"),
    "due": ("on Friday", "last Tuesday", "three days ago", "yesterday"),
}


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def example(rng: random.Random) -> dict[str, str]:
    """One ticket and its one-line summary."""
    issue = rng.choice(ISSUES)
    k = rng.randint(2, 6)
    slots = {name: rng.choice(values) for name, values in SLOTS.items()}
    slots.update(
        product=rng.choice(issue.products),
        pct=str(rng.randint(5, 95)),
        order=f"ORD-{rng.randint(10000, 99999)}",
        days=str(rng.randint(8, 30)),
        k=str(k),
        k1=str(rng.randint(1, k - 1)),
    )
    problem = _capitalize(rng.choice(issue.ticket).format(**slots))
    summary = f"{slots['product']}: {issue.summary.format(**slots)}"
    facts: list[str] = []

    if issue.since and rng.random() < 0.5:
        told, short = rng.choice(SINCE)
        facts.append(rng.choice(SINCE_SENTENCES).format(t=told, s=short))
        summary += f" since {short}"
    if issue.tried and rng.random() < 0.6:
        tried = rng.sample(TRIED[issue.tried], k=rng.choice((1, 1, 2)))
        if len(tried) == 1:
            facts.append(rng.choice(TRIED_ONE).format(x=tried[0], X=_capitalize(tried[0])))
        else:
            facts.append(rng.choice(TRIED_TWO).format(x=tried[0], X=_capitalize(tried[0]), y=tried[1]))
        summary += f"; {' and '.join(tried)} didn't help"
    if rng.random() < 0.5:
        sentences, short = rng.choice(IMPACTS)
        facts.append(rng.choice(sentences))
        summary += f"; {short}"

    # Facts in any order after the problem, with filler the summary must leave out.
    body = [*facts, *rng.sample(FILLER, k=rng.choice((0, 1, 1, 2)))]
    rng.shuffle(body)
    body.insert(0, problem)
    lines = [rng.choice(GREETINGS)] if rng.random() < 0.7 else []
    lines.append(" ".join(body))
    if rng.random() < 0.7:
        lines.append(rng.choice(SIGNOFFS).format(name=rng.choice(NAMES)))
    ticket = ("\n" if rng.random() < 0.5 else " ").join(lines)
    return {"prompt": f"{INSTRUCTION}\n{ticket}", "completion": summary + "."}


def _shingles(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + 3]) for i in range(len(words) - 2)}


def generate(count: int, seed: int) -> list[dict[str, str]]:
    """`count` ticket/summary pairs from `seed`, no two of them near duplicates."""
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    kept: list[set[tuple[str, ...]]] = []
    while len(rows) < count:
        row = example(rng)
        grams = _shingles(row["prompt"] + " " + row["completion"])
        if any(len(grams & other) / len(grams | other) >= MAX_SIMILARITY for other in kept):
            continue
        kept.append(grams)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="rows to write")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSONL file to write")
    args = parser.parse_args(argv)
    rows = generate(args.count, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
