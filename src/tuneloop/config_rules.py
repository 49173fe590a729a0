"""Cross-section rules of the project config, checked when it loads (config.py's model validators call these).

Each rule returns problems as (key path, message, value); `raise_located` raises them all at once as
one pydantic ValidationError, so each keeps its own key and the loader reports it at its line in the
YAML (or at its --set), together with every other mistake in the file.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from tuneloop.config_preference import KTO_FORMATS, PAIRED_FORMATS, PREFERENCE_METHODS, PREFERENCE_TRAIN_METRICS

Problem = tuple[tuple[str, ...], str, Any]  # (key path, what is wrong and what to do, the value)
CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1")
CLASSIFIER_TRAIN_METRICS = ("loss", "accuracy", "f1")  # f1: macro over the classes
CLASSIFIER_METHODS = ("features", "last_k", "lora", "full")
OWN_FILES = ("val", "test")  # splits you can bring as a file instead of a share of the data
# Where national-format phone numbers are looked for (ISO 3166 codes, as libphonenumber names them):
# North America, most of Western Europe, Australia and New Zealand, India, Brazil, Mexico, Japan.
# A number written with its + country code is found whatever the list.
DEFAULT_PHONE_REGIONS: tuple[str, ...] = (
    "US", "CA", "GB", "IE", "DE", "AT", "CH", "FR", "BE", "NL", "ES", "PT", "IT", "AU", "NZ", "IN", "BR", "MX", "JP",
)  # fmt: skip


def raise_located(problems: list[Problem], title: str) -> None:
    """Raise every problem at once, each at its own key (nothing when there are none)."""
    if problems:
        details = [
            InitErrorDetails(type=PydanticCustomError("config_rule", "{reason}", {"reason": why}), loc=loc, input=value)
            for loc, why, value in problems
        ]
        raise ValidationError.from_exception_data(title, details)


def own_files_take_no_share(data: Any, defaults: dict[str, float]) -> Any:
    """The raw `data` section with a 0 share for each split you give a file for, unless you set one.

    Train, unless given, then takes the rest: so a test file needs no `split:` at all, and
    `split: {train: 0.9, val: 0.1}` beside one is complete.
    """
    split = data.get("split", {}) if isinstance(data, dict) else None
    if not isinstance(split, dict):
        return data
    zero = {name: 0.0 for name in OWN_FILES if data.get(name) and name not in split}
    if not zero:
        return data
    split = {**split, **zero}
    split.setdefault("train", round(1.0 - sum(split.get(n, defaults[n]) for n in OWN_FILES), 12))
    return {**data, "split": split}


def shares_beside_own_files(data: Any) -> list[Problem]:
    """A nonzero share for a split that a file already provides would be a second set nobody uses."""
    problems = []
    for name in OWN_FILES:
        share = getattr(data.split, name)
        if getattr(data, name) and share > 0:
            why = (
                f"data.{name} gives your own {name} set, so a {share:g} share split off the training data would be "
                f"a second {name} set that is never used; set data.split.{name} to 0 (or leave it out) and give "
                "its share to train"
            )
            problems.append((("data", "split", name), why, share))
    return problems


def known_phone_regions(regions: list[str]) -> list[str]:
    """`data.pii.phone_regions`, upper-cased, each a region libphonenumber has metadata for."""
    import phonenumbers

    regions = [r.upper() for r in regions]
    unknown = [r for r in regions if r not in phonenumbers.SUPPORTED_REGIONS]
    if unknown:
        raise ValueError(f"unknown region {', '.join(unknown)}: use ISO 3166 codes libphonenumber knows (GB, DE)")
    return regions


def unmeasured_train_metric(cfg: Any, known: tuple[str, ...]) -> list[Problem]:
    """train.metric must be measured at every evaluation: loss, token accuracy, an eval metric or forgetting."""
    train = cfg.train
    measured = ["loss", "token_accuracy", *train.eval_metrics] + (["general_perplexity"] * train.track_forgetting)
    if cfg.task.type == "classification":
        measured = list(CLASSIFIER_TRAIN_METRICS)  # a classifier's validation pass measures these
    if cfg.method.name in PREFERENCE_TRAIN_METRICS:
        measured = list(PREFERENCE_TRAIN_METRICS[cfg.method.name])
    if train.metric in measured:
        return []
    close = difflib.get_close_matches(train.metric, [*measured, *known, "general_perplexity"], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    why = (
        f"{train.metric!r} is not measured during training{hint} Choose from {', '.join(measured)}; add a task "
        "metric to train.eval_metrics, or set train.track_forgetting for general_perplexity"
    )
    return [(("train", "metric"), why, train.metric)]


def uncomputable_metrics(cfg: Any) -> list[Problem]:
    """Metrics in task.metrics and train.eval_metrics that this project cannot compute, and why."""
    problems = []
    listed = {("task", "metrics"): cfg.task.metrics, ("train", "eval_metrics"): cfg.train.eval_metrics}
    for loc, names in listed.items():
        for name in names:
            why = _why_not(name, cfg, during_training=loc[0] == "train")
            if why:
                problems.append((loc, why, name))
    return problems


def _why_not(name: str, cfg: Any, during_training: bool) -> str | None:
    task = cfg.task.type
    if name == "json_schema" and not cfg.eval.json_schema:
        return "metric json_schema needs eval.json_schema: set it to the path of a JSON Schema file"
    if name in CLASSIFICATION_METRICS and task != "classification" and not cfg.data.labels:
        return (
            f"metric {name} compares the label named in each answer with the reference label, so it needs labels: "
            "set data.labels to the allowed labels (or task.type: classification), or drop it"
        )
    if name == "preference_accuracy" and during_training:
        return "preference_accuracy scores preference pairs with the model, not generated answers: drop it here"
    if name == "preference_accuracy" and task != "preference":
        return f"preference_accuracy needs preference pairs (task.type: preference), not a {task} task"
    return None


def classification_strategy(cfg: Any) -> list[Problem]:
    """A classification task trains with features, last_k, lora or full; those two strategies need one."""
    problems: list[Problem] = []
    method, task = cfg.method.name, cfg.task.type
    if task == "classification" and method not in CLASSIFIER_METHODS:
        why = f"a classification task trains with method.name {', '.join(CLASSIFIER_METHODS)}, not {method}"
        problems.append((("method", "name"), why, method))
    if task != "classification" and method in ("features", "last_k"):
        why = f"method.name {method} trains a classification head: set task.type: classification, or use lora or full"
        problems.append((("method", "name"), why, method))
    weights = cfg.train.class_weights
    if isinstance(weights, dict) and cfg.data.labels:
        unknown = sorted(set(weights) - set(cfg.data.labels))
        if unknown:
            why = f"train.class_weights names {', '.join(unknown)}, not in data.labels ({', '.join(cfg.data.labels)})"
            problems.append((("train", "class_weights"), why, unknown))
    if task == "classification" and cfg.train.eval_metrics:
        why = "a classifier measures loss, accuracy and macro f1 at every validation pass; drop train.eval_metrics"
        problems.append((("train", "eval_metrics"), why, cfg.train.eval_metrics))
    return problems


def preference_default_method(data: Any) -> Any:
    """The raw config with method.name dpo for a preference task that names no method (lora is everyone else's)."""
    if not isinstance(data, dict) or not isinstance(data.get("task"), dict):
        return data
    if data["task"].get("type") != "preference":
        return data
    method = data.get("method")
    if method is None:
        return {**data, "method": {"name": "dpo"}}
    if isinstance(method, dict) and "name" not in method:
        return {**data, "method": {**method, "name": "dpo"}}
    return data


def preference_method(cfg: Any) -> list[Problem]:
    """Preference methods train on preference pairs, and preference pairs train only with them."""
    problems: list[Problem] = []
    method, task = cfg.method.name, cfg.task.type
    names = ", ".join(PREFERENCE_METHODS)
    if task == "preference" and method not in PREFERENCE_METHODS:
        why = f"a preference task trains on chosen/rejected pairs with method.name {names}, not {method}"
        problems.append((("method", "name"), why, method))
    if method in PREFERENCE_METHODS and task != "preference":
        why = f"method.name {method} trains on preference pairs: set task.type: preference, or use lora or full"
        problems.append((("method", "name"), why, method))
    if method == "kto" and cfg.data.format not in KTO_FORMATS:
        why = f"method.name kto reads unpaired (rated answers), preference or ranked records, not {cfg.data.format}"
        problems.append((("data", "format"), why, cfg.data.format))
    elif method in PREFERENCE_METHODS and method != "kto" and cfg.data.format not in PAIRED_FORMATS:
        why = f"method.name {method} reads preference or ranked records, not {cfg.data.format}"
        if cfg.data.format == "unpaired":
            why += " (single rated answers train with method.name kto)"
        problems.append((("data", "format"), why, cfg.data.format))
    if method == "kto" and cfg.train.batch_size < 2:
        why = (
            "method.name kto estimates its KL term from the other answers of the same batch, so a batch needs 2 or "
            "more: raise train.batch_size (train.grad_accum does not help: the KL pairs answers inside one micro-batch)"
        )
        problems.append((("train", "batch_size"), why, cfg.train.batch_size))
    weights = {"desirable_weight": cfg.method.preference.desirable_weight}
    weights["undesirable_weight"] = cfg.method.preference.undesirable_weight
    for key, value in weights.items():
        if value is not None and method != "kto":
            why = f"method.preference.{key} weighs KTO's loss; method.name {method} has none: drop it, or use kto"
            problems.append((("method", "preference", key), why, value))
    if method in PREFERENCE_METHODS and (cfg.train.eval_metrics or cfg.train.track_forgetting):
        key = "eval_metrics" if cfg.train.eval_metrics else "track_forgetting"
        why = (
            f"method.name {method} measures its preference metrics at every validation pass; generated-answer metrics "
            f"and forgetting are measured by `tuneloop eval`: drop train.{key}"
        )
        problems.append((("train", key), why, getattr(cfg.train, key)))
    if method in PREFERENCE_METHODS and cfg.train.time_budget is not None:
        why = f"method.name {method} does not size its run by time yet: set train.max_steps or train.epochs instead"
        problems.append((("train", "time_budget"), why, cfg.train.time_budget))
    if method == "reward" and cfg.method.preference.start is not None:
        why = (
            "a reward model starts from model.name (a new score head on it); to start from a tuned run, export it "
            "(`tuneloop export`) and set model.name to the exported folder"
        )
        problems.append((("method", "preference", "start"), why, cfg.method.preference.start))
    return problems


def grpo_method(cfg: Any) -> list[Problem]:
    """GRPO (method.name grpo) samples answers to chat prompts; what it does not do is refused, not ignored."""
    if cfg.method.name != "grpo":
        return []
    problems: list[Problem] = []
    if cfg.train.time_budget is not None:
        why = "method.name grpo does not size its run by time yet: set train.max_steps or train.epochs instead"
        problems.append((("train", "time_budget"), why, cfg.train.time_budget))
    if cfg.train.eval_metrics or cfg.train.track_forgetting:
        key = "eval_metrics" if cfg.train.eval_metrics else "track_forgetting"
        why = (
            "method.name grpo runs no validation pass; generated-answer metrics come from `tuneloop eval`: "
            f"drop train.{key}"
        )
        problems.append((("train", key), why, getattr(cfg.train, key)))
    return problems
