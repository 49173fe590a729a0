"""Synthetic expense claims paired with their JSON record: an extraction task the project does not ship.

`bench/quickstart_transfer.py` trains the quickstart's recipe on these claims to check that the recipe
is not tuned to the support tickets. The task differs from the tickets on purpose: another domain
(finance), a numeric field that must be normalised (`€1,250.00` -> 1250), a currency read off a
symbol or a word, and identifier distractors. It was written without looking at the tickets' wording.

Each row is a chat example: a fixed system instruction, the claim, and the answer

    {"type": ..., "amount": ..., "currency": ..., "project": ...}

with the keys always in that order. Every field can be read off the claim by a careful reader:

- type: what was bought (travel, meals, lodging, software, equipment or training);
- amount: the amount to reimburse, as a JSON number (whole amounts without decimals, 42.50 as 42.5);
  other amounts (a budget, a daily allowance) sometimes appear and are never the claim;
- currency: USD, EUR or GBP, written as a symbol, a code or a word;
- project: the PRJ-1234 style code, or null; employee numbers (EMP-) and cost centres (CC-) are distractors.

    python bench/expense_claims.py --count 1300 --out claims.jsonl --schema claim.schema.json

The same arguments always give byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

TYPES = ("travel", "meals", "lodging", "software", "equipment", "training")
CURRENCIES = ("USD", "EUR", "GBP")
SYSTEM_PROMPT = (
    "Extract the expense claim. Reply with JSON only: type (travel, meals, lodging, software, equipment or "
    "training), amount (the amount to reimburse, as a number), currency (USD, EUR or GBP), project (the PRJ- code, "
    "or null)."
)

CITIES = ("Lisbon", "Leeds", "Denver", "Lyon", "Austin", "Utrecht", "Glasgow", "Porto", "Boston", "Munich")
TOOLS = ("Figma", "JetBrains", "Notion", "Zoom", "Miro", "Grammarly", "Tableau", "Postman")
COURSES = ("data privacy", "project management", "advanced Excel", "AWS architect", "negotiation", "first aid")
NAMES = ("Dana", "Priya", "Tom", "Marta", "Kenji", "Aisha", "Lukas", "Sofia", "Omar", "Chloe")
ITEMS = {
    "travel": (
        "a train ticket to {city}",
        "the taxi from the airport to the {city} office",
        "my return flight to {city}",
        "mileage for driving to the client in {city}",
        "a rental car for the {city} visit",
        "airport parking for the {city} trip",
        "the bus and metro fares in {city}",
    ),
    "meals": (
        "dinner with the client team in {city}",
        "lunch for the four of us during the offsite",
        "coffee and pastries for the morning workshop",
        "a working breakfast with a prospect",
        "the team lunch after the release",
        "sandwiches for the interview panel",
    ),
    "lodging": (
        "two nights at a hotel in {city}",
        "the hotel room near the {city} venue",
        "an apartment rental for the week in {city}",
        "one night's accommodation after the late meeting in {city}",
        "the guesthouse I stayed at in {city}",
    ),
    "software": (
        "a year of the {tool} licence",
        "the monthly {tool} subscription",
        "a paid plugin for {tool}",
        "extra seats on our {tool} plan",
        "the {tool} upgrade we needed for the export feature",
    ),
    "equipment": (
        "a second monitor",
        "a mechanical keyboard",
        "a laptop stand and a mouse",
        "noise-cancelling headphones for calls",
        "a USB-C docking station",
        "a webcam for client calls",
        "a replacement laptop charger",
    ),
    "training": (
        "the {course} course",
        "the online {course} certification exam",
        "a two-day {course} workshop",
        "a textbook for the {course} course",
        "my ticket for the {course} seminar",
    ),
}
CLAIM = (
    "Please reimburse {amount} for {item}.",
    "I paid {amount} for {item} and would like to claim it back.",
    "Claiming {item}: {amount}.",
    "{Item} came to {amount}; the receipt is attached.",
    "Could you process my expense of {amount} for {item}?",
    "I'm submitting {amount} for {item}.",
    "The cost of {item} was {amount}, paid on my own card.",
)
PROJECT = (
    "Please charge it to project {code}.",
    "This was for {code}.",
    "Project code: {code}.",
    "It belongs to the {code} budget.",
    "Bill it against {code}, please.",
)
NO_PROJECT = (
    "I don't have a project code for this one.",
    "It isn't tied to any project.",
    "No project for this, it's general overhead.",
)
DISTRACTORS = (
    "My employee number is EMP-{emp}.",
    "My cost centre is CC-{cc}.",
    "For reference, my employee ID is EMP-{emp} and my cost centre CC-{cc}.",
    "The budget we agreed for the whole trip was {other}.",
    "My daily allowance is {other}, and this stays within it.",
)
CONTEXT = (
    "Sorry for the late submission.",
    "My manager already approved it.",
    "I was at the {city} office last week.",
    "Let me know if you need anything else from me.",
    "The receipt is attached as a PDF.",
    "I paid with my personal card because the company card was declined.",
    "This is my only claim this month.",
    "I checked the policy and this should be covered.",
)
GREETINGS = ("Hi finance team,", "Hello,", "Hi {approver},", "Good morning,", "Hey,", "")
SIGN_OFFS = ("Thanks, {name}", "Best, {name}", "Cheers,\n{name}", "Kind regards, {name}", "{name}", "")


def money(rng: random.Random, currency: str, amount: float) -> str:
    """The amount as a claimant writes it: a symbol, a code before or after, or a word."""
    whole = amount == int(amount)
    number = f"{amount:,.0f}" if whole and rng.random() < 0.5 else f"{amount:,.2f}"
    if rng.random() < 0.3:
        number = number.replace(",", "")
    symbol = {"USD": "$", "EUR": "€", "GBP": "£"}[currency]
    word = {"USD": "dollars", "EUR": "euros", "GBP": "pounds"}[currency]
    form = rng.randrange(4)
    return [f"{symbol}{number}", f"{number} {currency}", f"{currency} {number}", f"{number} {word}"][form]


def draw_amount(rng: random.Random, kind: str) -> float:
    """A plausible amount for the type: whole amounts a third of the time, else with cents."""
    low, high = {"travel": (8, 900), "meals": (12, 400), "lodging": (90, 1800), "software": (5, 1200),
                 "equipment": (15, 1500), "training": (40, 2500)}[kind]  # fmt: skip
    value = rng.uniform(low, high)
    return float(round(value)) if rng.random() < 0.33 else round(value, 2)


def claim(rng: random.Random) -> dict:
    """One chat row: system instruction, the claim, and its JSON record."""
    kind = rng.choice(TYPES)
    currency = rng.choice(CURRENCIES)
    amount = draw_amount(rng, kind)
    code = f"PRJ-{rng.randrange(1000, 10000)}" if rng.random() < 0.6 else None
    fill = {
        "city": rng.choice(CITIES),
        "tool": rng.choice(TOOLS),
        "course": rng.choice(COURSES),
        "emp": rng.randrange(10000, 100000),
        "cc": rng.randrange(1000, 10000),
        "approver": rng.choice(NAMES),
    }
    item = rng.choice(ITEMS[kind]).format(**fill)
    body = [rng.choice(CLAIM).format(amount=money(rng, currency, amount), item=item, Item=item[0].upper() + item[1:])]
    if code:
        body.append(rng.choice(PROJECT).format(code=code))
    elif rng.random() < 0.5:
        body.append(rng.choice(NO_PROJECT))
    for _ in range(rng.randrange(0, 3)):
        other = draw_amount(rng, kind) * 3  # never equal to the claim: a budget is larger
        body.append(rng.choice(DISTRACTORS).format(other=money(rng, currency, round(other)), **fill))
    body += [rng.choice(CONTEXT).format(**fill) for _ in range(rng.randrange(1, 4))]
    rng.shuffle(body)
    lines = [rng.choice(GREETINGS).format(**fill), " ".join(body), rng.choice(SIGN_OFFS).format(name=rng.choice(NAMES))]
    text = "\n".join(line for line in lines if line)
    answer = {"type": kind, "amount": int(amount) if amount == int(amount) else amount, "currency": currency,
              "project": code}  # fmt: skip
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": text},
            {"role": "assistant", "content": json.dumps(answer, separators=(",", ":"))},
        ]
    }


SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Expense claim",
    "type": "object",
    "properties": {
        "type": {"enum": list(TYPES)},
        "amount": {"type": "number", "exclusiveMinimum": 0},
        "currency": {"enum": list(CURRENCIES)},
        "project": {"anyOf": [{"type": "string", "pattern": "^PRJ-[0-9]{4}$"}, {"type": "null"}]},
    },
    "required": ["type", "amount", "currency", "project"],
    "additionalProperties": False,
}


def write(out: Path, count: int, seed: int, schema: Path | None = None) -> None:
    """Write `count` claims (and the JSON Schema) deterministically from `seed`."""
    rng = random.Random(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for _ in range(count):
            f.write(json.dumps(claim(rng), ensure_ascii=False) + "\n")
    if schema is not None:
        schema.write_text(json.dumps(SCHEMA, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--schema", type=Path)
    args = parser.parse_args()
    write(args.out, args.count, args.seed, args.schema)


if __name__ == "__main__":
    main()
