"""Measure the drift alarm of `tuneloop monitor`: its false-positive rate and its power, on seeded traffic.

    .venv/bin/python bench/monitor_drift.py [--sizes 25,50,100] [--trials 200] [--power-trials 30] [--train 2500]

The "project" is trained on `--train` support tickets from scripts/make_tickets.py (the quickstart's
generator); like `tuneloop monitor`, each trial compares with a seeded sample of 1000 of them
(monitor.train_sample), so trials differ in their training sample as well as in their traffic.
Three pools of traffic, each embedded once with MiniLM (the real encoder of
`tuneloop monitor`) and measured once with the SmolLM2 tokenizer:

- in-distribution: more tickets from the same generator, none of them in the training set;
- another topic: cooking questions from a small seeded generator below;
- another length profile: support tickets that quote two earlier tickets (three tickets in one).

Each trial draws `n` prompts from a pool and runs the drift tests exactly as `tuneloop monitor` does
(`monitor.analyze`: embedding MMD permutation test and length KS test, each at drift_alpha/2), with
the default `monitor:` settings and the trial number as the seed. The false-positive rate is the
share of in-distribution trials that raise the drift alarm; the power is the share of shifted trials
that do. This is a statistics measurement, not a timing: machine load does not change the figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

DISHES = (
    "risotto lasagne sourdough bread banana bread pancakes curry chili paella omelette brownies ramen pesto".split()
)
INGREDIENTS = "butter eggs flour garlic basil rice yeast cream onions tomatoes chickpeas lentils honey ginger".split()
COOKING = (
    "How long should I rest {dish} before serving it?",
    "Can I replace {ing} with {ing2} in {dish} without changing the taste too much?",
    "My {dish} always comes out too dry. What am I doing wrong?",
    "What temperature should the oven be for {dish}, and for how long?",
    "Is it safe to freeze {dish} that has {ing} in it?",
    "How do I keep {ing} fresh for longer in a small kitchen?",
    "Which wine goes well with {dish}?",
    "I only have {ing} and {ing2} at home. What can I cook for four people tonight?",
    "Why does my {dish} collapse in the middle after baking?",
    "How much {ing} do I need to double the recipe for {dish}?",
    "Can I make {dish} the day before a dinner party and reheat it?",
    "What is the difference between fresh and dried {ing} when cooking {dish}?",
)
OPENERS = ("", "Hi! ", "Quick question: ", "Cooking for friends this weekend. ", "Beginner here. ")


def cooking_questions(count: int, seed: int) -> list[str]:
    """`count` distinct cooking questions (another topic than the support tickets)."""
    rng, out, seen = random.Random(seed), [], set()
    while len(out) < count:
        ing, ing2 = rng.sample(INGREDIENTS, 2)
        text = rng.choice(OPENERS) + rng.choice(COOKING).format(dish=rng.choice(DISHES), ing=ing, ing2=ing2)
        if rng.random() < 0.4:
            text += " " + rng.choice(COOKING).format(dish=rng.choice(DISHES), ing=ing2, ing2=ing)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def tickets(count: int, seed: int) -> list[str]:
    """`count` distinct support tickets from scripts/make_tickets.py (the user turn of each row)."""
    spec = importlib.util.spec_from_file_location("make_tickets", ROOT / "scripts" / "make_tickets.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_tickets"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return [row["messages"][1]["content"] for row in module.generate(count, seed)]


def make_pools(train_size: int, pool_size: int, shift_size: int, seed: int = 7) -> dict[str, list[str]]:
    """The training prompts and the three traffic pools (in-distribution is disjoint from training)."""
    support = tickets(train_size + pool_size + 3 * shift_size, seed)
    # The generator never repeats a ticket, so late tickets lean towards the rarer phrasings: shuffled,
    # training and traffic are two random parts of one set, as the permutation test assumes.
    random.Random(seed).shuffle(support)
    train, same = support[:train_size], support[train_size : train_size + pool_size]
    rest = support[train_size + pool_size :]
    threads = [
        f"{rest[i]}\n\nEarlier:\n{rest[i + 1]}\n\nAnd before that:\n{rest[i + 2]}" for i in range(0, 3 * shift_size, 3)
    ]
    return {"train": train, "same": same, "topic": cooking_questions(shift_size, seed), "length": threads}


class Measured:
    """Every pool's prompts embedded and measured once; trials look them up."""

    def __init__(self, pools: dict[str, list[str]]) -> None:
        from tuneloop import models
        from tuneloop.monitor.embed import encoder

        embed = encoder("minilm-l6")
        tokenizer = models.load_tokenizer(models.resolve("smollm2-135m-instruct"))
        texts = sorted({t for pool in pools.values() for t in pool})
        self.vectors = dict(zip(texts, embed(texts), strict=True))
        self.lengths = {t: len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts}
        self.pools = pools

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.vectors[t] for t in texts])


def alarm_rate(measured: Measured, pool: str, n: int, trials: int, **settings) -> float:
    """Share of `trials` in which `n` prompts drawn from `pool` raise the drift alarm."""
    from tuneloop.config_monitor import MonitorConfig
    from tuneloop.monitor.analyze import analyze
    from tuneloop.monitor.signals import OutputChecks

    checks = OutputChecks(refusal=lambda text: False, repetition=lambda text: False)
    fired = 0
    for trial in range(trials):
        rng = np.random.default_rng(1000 + trial)
        picked = rng.choice(len(measured.pools[pool]), size=n, replace=False)
        requests = [_request(measured.pools[pool][i], k) for k, i in enumerate(picked)]
        mcfg = MonitorConfig(min_requests=min(n, 50), seed=trial, **settings)
        report = analyze(
            mcfg, requests, {}, measured.pools["train"], checks=checks, embed=measured.embed,
            length_of=measured.lengths.__getitem__, unit="tokens",
        )  # fmt: skip
        fired += report["drift"]["drifted"]
    return fired / trials


def _request(text: str, k: int) -> dict:
    return {
        "id": f"r{k}", "time": "2026-11-30T09:00:00.000+00:00", "messages": [{"role": "user", "content": text}],
        "prompt": None, "output": "{}", "finish_reason": "stop", "latency_s": 0.1,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="25,50,100", help="traffic sample sizes (prompts per trial)")
    parser.add_argument("--trials", type=int, default=200, help="in-distribution trials per size (false positives)")
    parser.add_argument("--power-trials", type=int, default=30, help="trials per shifted pool and size (power)")
    parser.add_argument("--train", type=int, default=2500, help="training prompts (each trial samples 1000 of them)")
    parser.add_argument("--pool", type=int, default=1000, help="prompts in the in-distribution traffic pool")
    parser.add_argument("--shift-pool", type=int, default=300, help="prompts in each shifted traffic pool")
    parser.add_argument("--permutations", type=int, default=500, help="monitor.permutations")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    biggest = max(sizes)
    measured = Measured(make_pools(args.train, max(args.pool, biggest), max(args.shift_pool, biggest)))
    print(
        f"drift alarm (monitor.drift_alpha 0.05: MMD and length KS at 0.025 each), {args.train} training prompts, "
        "1000 sampled per trial, "
        f"{args.permutations} permutations, {args.trials} in-distribution and {args.power_trials} shifted trials "
        "per size",
        flush=True,
    )
    for n in sizes:
        rates = {
            pool: alarm_rate(measured, pool, n, args.trials if pool == "same" else args.power_trials,
                             permutations=args.permutations)
            for pool in ("same", "topic", "length")
        }  # fmt: skip
        print(
            f"n={n}: false positives {rates['same']:.1%} (in-distribution), "
            f"power {rates['topic']:.1%} (another topic), {rates['length']:.1%} (another length profile)",
            flush=True,
        )


if __name__ == "__main__":
    main()
