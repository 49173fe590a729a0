"""`tuneloop review results`: what the reviewers said, with intervals, and how far they agree.

Units are items, not ratings: when several reviewers rate an item, their ratings are combined
first (a majority verdict, a mean score), so an interval never counts one item twice.

- Win rate (pairwise): the candidate's share of the items whose majority verdict prefers one
  answer; ties and "both bad" are counted apart. 95% Wilson score interval (statsmodels).
- Rubric: the mean score per system and criterion, 95% percentile bootstrap interval over items
  (scipy.stats.bootstrap, seeded).
- Ranking: the mean rank per system (1 = best), bootstrap interval the same way.
- Hallucination and unsafe rates: share of ratings of a system's answer that raised the flag,
  with a Wilson interval.
- Agreement between reviewers: Cohen's kappa (scikit-learn) when exactly two reviewers rated the
  same items, Fleiss' kappa (statsmodels) when more did. Pairwise: on the verdict; rubric: per
  criterion (Cohen's quadratic-weighted, since scores are ordered); ranking: on the top answer.
- Human vs automatic: how often the human verdict and the evaluation's primary metric (and the
  LLM judge, when it ran) pick the same winner; for rubric, Spearman's rho between the human score
  and the metric (or judge score) per answer.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.review.store import Item, Rating, Review, Store

CONFIDENCE = 0.95
BOOTSTRAP = 2000
RESULTS_FILE = "human-review.json"  # in the evaluation folder; the eval report shows it when present


def summarize(store: Store, review: Review) -> dict[str, Any]:
    """Every figure `review results` prints, as one JSON-ready dict."""
    items = store.items(review.name)
    ratings = store.ratings(review.name)
    by_item: dict[int, list[Rating]] = defaultdict(list)
    for r in ratings:
        by_item[r.idx].append(r)
    out: dict[str, Any] = {
        "review": review.name,
        "mode": review.mode,
        "systems": review.systems,
        "source": review.source,
        "confidence": CONFIDENCE,
        "items": len(items),
        "rated_items": len(by_item),
        "ratings": len(ratings),
        "per_reviewer": dict(sorted(Counter(r.reviewer for r in ratings).items())),
        "corrections": sum(1 for r in ratings if r.correction),
        "flags": _flag_rates(items, ratings),
    }
    if review.mode == "pairwise":
        out["win_rate"] = _win_rate(review, by_item)
        out["agreement"] = agreement({i: {r.reviewer: r.choice for r in rs} for i, rs in by_item.items()})
        out["vs_automatic"] = _pairwise_vs_automatic(review, items, by_item)
    elif review.mode == "rubric":
        out["rubric"] = _rubric(review, items, by_item)
        out["agreement"] = {
            c: agreement({i: {r.reviewer: r.scores[c] for r in rs} for i, rs in by_item.items()}, weights="quadratic")
            for c in review.criteria
        }
        out["vs_automatic"] = _rubric_vs_automatic(review, items, by_item)
    else:
        out["ranking"] = _mean_ranks(review, by_item)
        out["agreement"] = agreement({i: {r.reviewer: r.ranking[0] for r in rs} for i, rs in by_item.items()})
    return out


# --------------------------------------------------------------------------- intervals


def wilson(successes: int, n: int) -> list[float] | None:
    """The Wilson score interval of a proportion (statsmodels), or None without observations."""
    if n == 0:
        return None
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(successes, n, alpha=1 - CONFIDENCE, method="wilson")
    return [float(low), float(high)]


def bootstrap_mean(values: list[float], seed: int) -> list[float] | None:
    """A percentile bootstrap interval of the mean (scipy), or None below two values."""
    if len(values) < 2:
        return None
    if len(set(values)) == 1:
        return [float(values[0])] * 2  # no spread to resample
    from scipy.stats import bootstrap

    res = bootstrap(
        (np.asarray(values, float),),
        np.mean,
        n_resamples=BOOTSTRAP,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


# --------------------------------------------------------------------------- pairwise


def verdict(choices: list[str]) -> str:
    """The majority choice of an item's reviewers; a split vote is a tie."""
    counts = Counter(choices).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return "tie"
    return counts[0][0]


def _win_rate(review: Review, by_item: dict[int, list[Rating]]) -> dict[str, Any]:
    baseline, candidate = review.systems
    verdicts = Counter(verdict([r.choice for r in rs]) for rs in by_item.values())
    wins, losses = verdicts[candidate], verdicts[baseline]
    return {
        "candidate": candidate,
        "baseline": baseline,
        "wins": wins,
        "losses": losses,
        "ties": verdicts["tie"],
        "both_bad": verdicts["both_bad"],
        "rate": wins / (wins + losses) if wins + losses else None,
        "ci": wilson(wins, wins + losses),
        "method": "Wilson score interval over items with a majority verdict for one answer",
    }


def _pairwise_vs_automatic(review: Review, items: list[Item], by_item: dict[int, list[Rating]]) -> dict[str, Any]:
    source = review.source
    baseline, candidate = review.systems
    sign = 1 if source.get("higher_is_better", True) else -1
    metric_agree, judge_agree = [], []
    for idx, rs in by_item.items():
        human = verdict([r.choice for r in rs])
        if human not in (baseline, candidate):
            continue
        scores = {c.system: c.scores for c in items[idx].candidates}
        primary = source.get("primary")
        if primary and primary in scores[candidate] and primary in scores[baseline]:
            diff = sign * (scores[candidate][primary] - scores[baseline][primary])
            if diff != 0:
                metric_agree.append((diff > 0) == (human == candidate))
        judge = scores[candidate].get("judge_win")
        if judge in (0, 1):
            judge_agree.append((judge == 1) == (human == candidate))
    return {
        "metric": source.get("primary"),
        "metric_agreement": _share(metric_agree),
        "judge_agreement": _share(judge_agree),
        "method": "share of items where both the humans and the metric (judge) prefer one answer and pick the same",
    }


def _share(values: list[bool]) -> dict[str, Any] | None:
    return (
        {"rate": float(np.mean(values)), "items": len(values), "ci": wilson(sum(values), len(values))}
        if values
        else None
    )


# --------------------------------------------------------------------------- rubric and ranking


def _rubric(review: Review, items: list[Item], by_item: dict[int, list[Rating]]) -> dict[str, Any]:
    per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for idx, rs in by_item.items():
        system = items[idx].candidates[0].system
        for c in review.criteria:
            per[system][c].append(float(np.mean([r.scores[c] for r in rs])))
    return {
        system: {
            c: {"mean": float(np.mean(v)), "ci": bootstrap_mean(v, review.seed), "items": len(v)}
            for c, v in crit.items()
        }
        for system, crit in sorted(per.items())
    }


def _rubric_vs_automatic(review: Review, items: list[Item], by_item: dict[int, list[Rating]]) -> dict[str, Any]:
    from scipy.stats import spearmanr

    primary = review.source.get("primary")
    human, metric, judged, judge = [], [], [], []
    for idx, rs in by_item.items():
        cand = items[idx].candidates[0]
        score = float(np.mean([np.mean(list(r.scores.values())) for r in rs]))
        if primary and primary in cand.scores:
            human.append(score)
            metric.append(cand.scores[primary])
        if "judge_score" in cand.scores:
            judged.append(score)
            judge.append(cand.scores["judge_score"])

    def rho(a: list[float], b: list[float]) -> float | None:
        if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
            return None
        return float(spearmanr(a, b).statistic)

    return {
        "metric": primary,
        "metric_spearman": rho(human, metric),
        "metric_items": len(human),
        "judge_spearman": rho(judged, judge),
        "judge_items": len(judged),
        "method": "Spearman's rho between the mean human score of an answer and its metric (judge) score",
    }


def _mean_ranks(review: Review, by_item: dict[int, list[Rating]]) -> dict[str, Any]:
    ranks: dict[str, list[float]] = defaultdict(list)
    for rs in by_item.values():
        for system in rs[0].ranking:
            ranks[system].append(float(np.mean([r.ranking.index(system) + 1 for r in rs])))
    return {
        s: {"mean_rank": float(np.mean(v)), "ci": bootstrap_mean(v, review.seed), "items": len(v)}
        for s, v in sorted(ranks.items())
    }


def consensus_order(ratings: list[Rating]) -> list[str]:
    """The systems of one item, best first, by their mean rank over its reviewers (Borda)."""
    systems = ratings[0].ranking
    return sorted(systems, key=lambda s: (np.mean([r.ranking.index(s) for r in ratings]), systems.index(s)))


# --------------------------------------------------------------------------- flags and agreement


def _flag_rates(items: list[Item], ratings: list[Rating]) -> dict[str, Any]:
    """Per system and flag: how many ratings of its answer raised the flag."""
    rated: Counter[str] = Counter()
    raised: dict[str, Counter[str]] = defaultdict(Counter)
    for r in ratings:
        for c in items[r.idx].candidates:
            rated[c.system] += 1
            for flag in r.flags.get(c.system, []):
                raised[flag][c.system] += 1
    return {
        flag: {
            s: {"rate": raised[flag][s] / n, "flagged": raised[flag][s], "ratings": n, "ci": wilson(raised[flag][s], n)}
            for s, n in sorted(rated.items())
        }
        for flag in ("hallucination", "unsafe")
    }


def agreement(labels: dict[int, dict[str, Any]], weights: str | None = None) -> dict[str, Any] | None:
    """Inter-reviewer agreement over items rated by two or more reviewers.

    Exactly two reviewers on the shared items: Cohen's kappa (scikit-learn, `weights` for ordered
    labels). Three or more: Fleiss' kappa (statsmodels) over the items with the most common
    number of ratings (Fleiss needs the same count on every item; the raters may differ).
    """
    shared = {i: by for i, by in labels.items() if len(by) >= 2}
    if not shared:
        return None
    reviewers = {name for by in shared.values() for name in by}
    if len(reviewers) == 2:
        from sklearn.metrics import cohen_kappa_score

        a, b = sorted(reviewers)
        x, y = [str(by[a]) for by in shared.values()], [str(by[b]) for by in shared.values()]
        if weights:
            x, y = [by[a] for by in shared.values()], [by[b] for by in shared.values()]
        kappa = cohen_kappa_score(x, y, weights=weights) if len(set(x) | set(y)) > 1 else None
        name = "Cohen's kappa" + (f" ({weights}-weighted)" if weights else "")
        return {"measure": name, "kappa": _kappa(kappa), "items": len(shared), "reviewers": 2}
    from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

    k = Counter(len(by) for by in shared.values()).most_common(1)[0][0]
    rows = [[str(v) for v in by.values()] for by in shared.values() if len(by) == k]
    table, _ = aggregate_raters(np.array(rows, dtype=object))
    kappa = fleiss_kappa(table, method="fleiss") if table.shape[1] > 1 else None
    return {
        "measure": "Fleiss' kappa",
        "kappa": _kappa(kappa),
        "items": len(rows),
        "reviewers": len(reviewers),
        "ratings_per_item": k,
    }


def _kappa(value: float | None) -> float | None:
    """Kappa, or None where it is undefined (every rating the same label: no chance agreement to beat)."""
    return None if value is None or np.isnan(value) else float(value)


def write(summary: dict[str, Any], review_dir: Path) -> list[Path]:
    """Write the results beside the store, and into the evaluation folder the review came from."""
    paths = [review_dir / f"{summary['review']}.results.json"]
    if summary["source"].get("kind") == "eval" and Path(summary["source"]["eval_dir"]).is_dir():
        paths.append(Path(summary["source"]["eval_dir"]) / RESULTS_FILE)
    text = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    for p in paths:
        tmp = p.with_suffix(".json.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(p)
    return paths


def describe(s: dict[str, Any]) -> str:
    """The results as the terminal shows them."""
    pct = int(s["confidence"] * 100)

    def ci(x: list[float] | None, fmt: str = ".1%") -> str:
        return f"[{x[0]:{fmt}}, {x[1]:{fmt}}]" if x else "[–]"

    lines = [
        f"review {s['review']} ({s['mode']}): {s['rated_items']} of {s['items']} items rated, {s['ratings']} ratings, "
        f"{s['corrections']} corrections",
        "reviewers " + (", ".join(f"{n} {c}" for n, c in s["per_reviewer"].items()) or "none yet"),
    ]
    if s["mode"] == "pairwise":
        w = s["win_rate"]
        rate = f"{w['rate']:.1%} {ci(w['ci'])} ({pct}% Wilson)" if w["rate"] is not None else "– (no decisive item yet)"
        lines.append(
            f"win rate  {w['candidate']} over {w['baseline']}: {rate}; {w['wins']} wins, {w['losses']} losses, "
            f"{w['ties']} ties, {w['both_bad']} both bad"
        )
    for system, per in (s.get("rubric") or {}).items():
        lines.append(
            f"rubric    {system}: " + ", ".join(f"{c} {v['mean']:.2f} {ci(v['ci'], '.2f')}" for c, v in per.items())
        )
    for system, v in (s.get("ranking") or {}).items():
        lines.append(f"rank      {system}: mean {v['mean_rank']:.2f} {ci(v['ci'], '.2f')} over {v['items']} items")
    for flag, per in s["flags"].items():
        lines.append(
            f"{flag:9} "
            + ", ".join(
                f"{sys} {v['rate']:.1%} {ci(v['ci'])} ({v['flagged']}/{v['ratings']})" for sys, v in per.items()
            )
        )
    agreement = s.get("agreement")
    parts = agreement.items() if s["mode"] == "rubric" and agreement else [("", agreement)]
    for label, a in parts:
        if a is None:
            lines.append(f"agreement {label + ': ' if label else ''}– (no item rated by two reviewers yet)")
        else:
            kappa = "undefined (all the same label)" if a["kappa"] is None else f"{a['kappa']:.3f}"
            lines.append(f"agreement {label + ': ' if label else ''}{a['measure']} {kappa} over {a['items']} items")
    auto = s.get("vs_automatic") or {}
    if s["mode"] == "pairwise":
        for who in ("metric", "judge"):
            a = auto.get(f"{who}_agreement")
            name = auto.get("metric") if who == "metric" else "LLM judge"
            if a:
                lines.append(
                    f"vs {who:6} humans and {name} pick the same winner on {a['rate']:.1%} of {a['items']} items"
                )
    elif s["mode"] == "rubric":
        for who in ("metric", "judge"):
            rho = auto.get(f"{who}_spearman")
            other = auto.get("metric") if who == "metric" else "the judge"
            if rho is not None:
                lines.append(f"vs {who:6} Spearman {rho:+.3f} between human scores and {other}")
    return "\n".join(lines)
