"""`tuneloop eval`: did it get better, and what did it break?

Reads top to bottom: load the test split (and record that it was looked at) → for each model
(the base, then every run) generate answers to the test prompts and the red-team probes, and
measure completion perplexity and the forgetting set → score every task metric → compare each
run with the base by paired bootstrap → optional reward model (each run's mean reward and win rate
over the base, winrate.py) → optional LLM judge → write metrics.json, outputs.jsonl, report.md and
report.html.

Models are loaded one at a time and freed before the next, so comparing several runs costs the
memory of one.
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop import console, runs
from tuneloop.config import ProjectConfig
from tuneloop.data.chat_templates import project_tokenizer
from tuneloop.data.formats import Example
from tuneloop.errors import UserError
from tuneloop.evaluate import base_cache, winrate
from tuneloop.evaluate.compare import Comparison, MeanScores, bootstrap_indices, compare
from tuneloop.evaluate.json_fields import field_report
from tuneloop.evaluate.metrics import METRIC_INFO, compute, needs_reference
from tuneloop.evaluate.provenance import check_no_test_overlap, split_row_hashes
from tuneloop.runs import check_same_base

BASE = "base"


@dataclass
class Case:
    """One test example as the evaluator sees it: the prompt turns and the reference answer."""

    id: str
    conversation: list[dict[str, Any]]
    prompt: str
    reference: str | None
    example: Example


@dataclass
class SystemOutputs:
    """Everything measured for one model."""

    name: str
    answers: list[Any] = field(default_factory=list)  # Generation per case
    completion_nll: tuple[np.ndarray, np.ndarray] | None = None  # per-case mean NLL, trained tokens
    general: dict[str, Any] | None = None
    probes: list[Any] = field(default_factory=list)


@dataclass
class EvalResult:
    out_dir: Path
    report: dict[str, Any]
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)  # system → metric → resamplable scores


# --------------------------------------------------------------------------- 1. the test set


def test_cases(examples: list[Example]) -> list[Case]:
    """Split each chat example into its prompt (all turns before the last answer) and the answer."""
    cases = []
    for ex in examples:
        if ex.kind != "chat":
            raise UserError(
                f"test example {ex.id} is of kind {ex.kind}; `tuneloop eval` generates answers for chat-style "
                "data (chat, prompt/completion, alpaca, sharegpt)"
            )
        last = max((i for i, m in enumerate(ex.messages) if m["role"] == "assistant"), default=None)
        if last is None:
            raise UserError(f"test example {ex.id} has no assistant turn to compare against")
        conversation = [{"role": m["role"], "content": m["content"]} for m in ex.messages[:last]]
        user = next((m["content"] for m in reversed(conversation) if m["role"] == "user"), "")
        reference = ex.messages[last]["content"] or None
        cases.append(Case(ex.id, conversation, user, reference, ex))
    return cases


def load_test(cfg: ProjectConfig, private: bool) -> tuple[list[Example], str, str]:
    """(examples, sha256 of the test data, where it came from)."""
    from tuneloop.data.prepare import sha256_file
    from tuneloop.data.prepared import load_split

    if private:
        if not cfg.eval.private_test:
            raise UserError("--private needs eval.private_test: the path of your held-back test file")
        path = cfg.path(cfg.eval.private_test)
        return read_examples(path, cfg), sha256_file(path), str(path)
    examples, manifest = load_split(cfg, "test")
    if not examples:
        raise UserError(
            "the test split is empty; give data.split.test a share of the data or data.test a file, "
            "then re-run `tuneloop data prepare`"
        )
    return examples, manifest["splits"]["test"]["sha256"], "test split of " + str(cfg.path(cfg.data.prepared_dir))


def read_examples(path: Path, cfg: ProjectConfig) -> list[Example]:
    """Read a test file in any supported format; any bad record is an error with its line."""
    from tuneloop.data.formats import RowError, detect_format, read_rows, to_example

    if not path.is_file():
        raise UserError(f"test file {path} does not exist")
    rows = list(read_rows(path, path.name))
    fmt = cfg.data.format if cfg.data.format != "auto" else detect_format(rows[:200], str(path))
    examples, errors = [], []
    for row in rows:
        if row.error:
            errors.append(f"{path}:{row.line}: {row.error}")
            continue
        try:
            examples.append(to_example(row.value, fmt, f"{path.stem}-{row.line}"))
        except RowError as e:
            errors.append(f"{path}:{row.line}: {e}")
    if errors:
        raise UserError(f"{len(errors)} bad records in {path}:\n  " + "\n  ".join(errors[:10]))
    return examples


def record_test_use(cfg: ProjectConfig, sha256: str, runs: list[str], private: bool) -> int:
    """Log this evaluation of the test set; return how many times it has now been evaluated.

    Every look at a test set is a chance to pick a model by its test score; counting the looks is
    how the report can say when the test set has stopped being a fair judge. The log lives in the
    run registry (`<output.dir>/registry.sqlite`); a private test set may be evaluated once only.
    """
    from tuneloop import registry

    return registry.record_test_use(cfg, sha256, runs, private)


def test_uses(cfg: ProjectConfig, sha256: str) -> list[dict[str, Any]]:
    """Every recorded evaluation of the test set with this hash."""
    from tuneloop import registry

    return registry.test_uses(cfg, sha256)


# --------------------------------------------------------------------------- 2. one model at a time


def completion_nll(
    model: Any, tokenizer: Any, examples: list[Example], batch_size: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Per example: the mean NLL of its trained (assistant) tokens, and how many there are.

    The tokens are the ones training computes its loss on (the shared Renderer's mask), so test
    perplexity and validation loss measure the same thing.
    """
    import torch
    import torch.nn.functional as F

    from tuneloop.data.batching import Collator
    from tuneloop.data.render import Renderer

    renderer = Renderer(tokenizer)
    items = []
    for ex, rendered in zip(examples, renderer.render_many(examples), strict=True):
        if isinstance(rendered, Exception):
            raise UserError(f"test example {ex.id} cannot be rendered with this model's template: {rendered}")
        items.append({"id": ex.id, "input_ids": rendered.input_ids, "weights": rendered.weights})
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collate = Collator(pad, packed=False)
    nll, count = np.zeros(len(items)), np.zeros(len(items))
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            batch = collate(items[start : start + batch_size])
            keep = batch["logits_to_keep"]
            inputs = {k: batch[k].to(model.device) for k in ("input_ids", "attention_mask")}
            logits = model(**inputs, logits_to_keep=keep.to(model.device), use_cache=False).logits
            logits = logits.reshape(-1, logits.shape[-1]).float()
            targets = batch["shift_labels"][keep].to(model.device)
            losses = F.cross_entropy(logits, targets, reduction="none").cpu().numpy()
            rows = keep.nonzero()[:, 0].numpy() + start
            np.add.at(nll, rows, losses)
            np.add.at(count, rows, 1)
    return nll / np.maximum(count, 1), count


def measure(
    name: str,
    model: Any,
    tokenizer: Any,
    cfg: ProjectConfig,
    cases: list[Case],
    general: Any,
    probes: list[Any],
    run_dir: Path | None = None,
) -> SystemOutputs:
    """Generate and measure everything for one model (test answers and probes in one batched pass)."""
    out = SystemOutputs(name)
    conversations = [c.conversation for c in cases] + [p.messages for p in probes]
    answers = generate_answers(name, model, tokenizer, cfg, conversations, run_dir, "test prompts and probes")
    out.answers, out.probes = answers[: len(cases)], answers[len(cases) :]
    if "perplexity" in cfg.task.metrics:
        out.completion_nll = completion_nll(model, tokenizer, [c.example for c in cases])
    if general is not None:
        from tuneloop.evaluate import forgetting

        console.note(f"{name}: forgetting check on {general.describe()}")
        out.general = forgetting.measure(model, tokenizer, general)
    return out


def generate_answers(
    name: str,
    model: Any,
    tokenizer: Any,
    cfg: ProjectConfig,
    conversations: list[list[dict[str, Any]]],
    run_dir: Path | None = None,
    what: str = "test prompts",
) -> list[Any]:
    """One Generation per conversation with eval's decoding (eval.backend, max_new_tokens, temperature, seed)."""
    from tuneloop.generate import generate_batch

    settings = {
        "max_new_tokens": cfg.eval.max_new_tokens,
        "batch_size": cfg.eval.batch_size,
        "temperature": cfg.eval.temperature,
        "seed": cfg.eval.seed,
    }
    with console.progress_bar(f"{name}: answering {len(conversations)} {what}", len(conversations)) as advance:
        if cfg.eval.backend == "vllm":
            answers = _generate_vllm(cfg, run_dir, model, tokenizer, conversations, settings)
            advance(len(conversations))
        else:
            answers = generate_batch(model, tokenizer, conversations, **settings, on_batch=advance)
    return answers


def _generate_vllm(cfg, run_dir, model, tokenizer, conversations, settings) -> list[Any]:
    """Answers from vLLM: the base folder, plus the run's LoRA adapter or its full fine-tuned folder."""
    from tuneloop.generate import generate_vllm, stop_token_ids
    from tuneloop.models import resolve

    adapter, path = None, str(resolve(cfg.model.name, cfg.model.revision))
    if run_dir is not None:
        final = run_dir / "final"
        if (final / "adapter_config.json").is_file():
            adapter = str(final)
        else:
            path = str(final)
    return generate_vllm(
        path,
        tokenizer,
        conversations,
        adapter=adapter,
        max_lora_rank=cfg.method.lora.r,
        max_new_tokens=settings["max_new_tokens"],
        temperature=settings["temperature"],
        seed=settings["seed"],
        trust_remote_code=cfg.model.trust_remote_code,
        stops=stop_token_ids(model, tokenizer),
    )


def _plain_probes(probes: list[Any]) -> list[Any]:
    """The probes a model without a chat template can be asked: one user message, sent as plain text."""
    kept = [p for p in probes if len(p.messages) == 1 and p.messages[0]["role"] == "user"]
    if len(kept) < len(probes):
        console.note(
            f"the model has no chat template: {len(probes) - len(kept)} red-team probes with a system turn or "
            "several turns are skipped (set model.chat_template to ask them)"
        )
    return kept


def load_system(cfg: ProjectConfig, run_dir: Path | None) -> tuple[Any, Any]:
    """The base model (its tokenizer with model.chat_template applied), or a run's final model with the
    tokenizer and chat template it trained with."""
    from tuneloop.data.chat_templates import project_model

    if run_dir is None:
        return project_model(cfg)
    return runs.load_final(cfg, run_dir)


# --------------------------------------------------------------------------- 3. scores and comparisons


def score_system(
    cfg: ProjectConfig, cases: list[Case], out: SystemOutputs, schema: dict | None, names: list[str] | None = None
) -> dict[str, Any]:
    """{metric: scores} for one model's answers (task.metrics unless `names` is given)."""
    references = [c.reference or "" for c in cases]
    has_refs = any(c.reference for c in cases)
    scores: dict[str, Any] = {}
    for name in names if names is not None else cfg.task.metrics:
        if name == "perplexity":
            nll, tokens = out.completion_nll
            scores[name] = MeanScores(name, nll, higher_is_better=False, weights=tokens, exp_mean=True)
            continue
        if name == "preference_accuracy":
            raise UserError("preference_accuracy is measured on preference data by the preference recipe, not here")
        scores[name] = compute(
            name,
            ids=[c.id for c in cases],
            prompts=[c.prompt for c in cases],
            predictions=[a.text for a in out.answers],
            references=references if has_refs or not needs_reference(name) else None,
            labels=cfg.data.labels or None,
            schema=schema,
            search_path=cfg.root,
        )
    return scores


def higher_is_better(metric: str) -> bool:
    """Direction of any metric the trainer or the evaluator may select on."""
    if metric in ("loss", "perplexity", "general_perplexity"):
        return False
    if metric == "token_accuracy":
        return True
    return METRIC_INFO[metric].higher_is_better if metric in METRIC_INFO else True


def training_evaluator(cfg: ProjectConfig, val_examples: list[Example], tokenizer: Any) -> Any:
    """The hook the trainer calls at every evaluation: task metrics on generated answers for a
    validation subset (train.eval_metrics), and general perplexity (train.track_forgetting).

    Returns None when neither is configured. Never touches the test split.
    """
    from tuneloop.generate import generate_batch

    names = cfg.train.eval_metrics
    if not names and not cfg.train.track_forgetting:
        return None
    cases = test_cases(val_examples[: cfg.train.eval_examples]) if names else []
    if names and not cases:
        raise UserError("train.eval_metrics needs a validation split; give data.split.val a share or data.val a file")
    if names:
        check_metrics(cfg, cases, names)
    schema = _load_schema(cfg) if "json_schema" in names else None
    general = None
    if cfg.train.track_forgetting:
        from tuneloop.evaluate import forgetting

        general = forgetting.load_general_set(cfg.path(cfg.eval.forgetting.path) if cfg.eval.forgetting.path else None)

    def measure_during_training(model: Any) -> dict[str, float]:
        values: dict[str, float] = {}
        if names:
            answers = generate_batch(
                model,
                tokenizer,
                [c.conversation for c in cases],
                max_new_tokens=cfg.eval.max_new_tokens,
                batch_size=cfg.eval.batch_size,
                seed=cfg.eval.seed,
            )
            out = SystemOutputs("training", answers=answers)
            if "perplexity" in names:
                out.completion_nll = completion_nll(model, tokenizer, [c.example for c in cases])
            values.update({n: s.value for n, s in score_system(cfg, cases, out, schema, names).items()})
        if general is not None:
            from tuneloop.evaluate import forgetting

            values["general_perplexity"] = forgetting.perplexity(model, tokenizer, general.texts)[0]
        return values

    return measure_during_training


def check_metrics(cfg: ProjectConfig, cases: list[Case], names: list[str] | None = None) -> None:
    """Fail before any model is loaded when a metric cannot be computed on this test set."""
    if any(c.reference for c in cases):
        return
    for name in names if names is not None else cfg.task.metrics:
        if name in METRIC_INFO and needs_reference(name) and name != "perplexity":
            raise UserError(
                f"metric {name} needs reference answers, but the test set has none; drop it from task.metrics "
                "or add references"
            )


# --------------------------------------------------------------------------- 4. the whole evaluation


def evaluate(
    cfg: ProjectConfig,
    run_dirs: list[Path],
    *,
    private: bool = False,
    out_dir: Path | None = None,
    limit: int | None = None,
) -> EvalResult:
    """Evaluate the base model and each run on the test set; write the report; return its path and content."""
    from tuneloop.evaluate import report as report_module
    from tuneloop.evaluate.redteam import count_signals, load_probes, signals

    examples, test_sha, source = load_test(cfg, private)
    limit = limit or cfg.eval.max_examples
    if limit:
        examples = examples[:limit]
    cases = test_cases(examples)
    check_metrics(cfg, cases)
    schema = _load_schema(cfg) if "json_schema" in cfg.task.metrics else None
    reward_dir = winrate.reward_run(cfg)  # a wrong folder fails before the test set counts as looked at
    run_names = [d.name for d in run_dirs]
    test_hashes = None if private else split_row_hashes(cfg.path(cfg.data.prepared_dir))
    for d in run_dirs:
        if not (d / "final").is_dir():
            raise UserError(f"{d} has no final/ model; finish it with `tuneloop train --resume` first")
        check_same_base(cfg, d)
        if test_hashes is not None:
            check_no_test_overlap(d, test_hashes, len(test_hashes))
    uses = record_test_use(cfg, test_sha, run_names, private)
    console.note(f"test set: {len(cases)} examples from the {source} (evaluated {uses} time(s) so far)")
    if len(cases) < 30:
        console.warn(
            f"only {len(cases)} test examples: intervals will be wide and changes rarely significant"
            + (" (none is called significant below 10)" if len(cases) < 10 else "")
            + "; give the test split at least 100 examples for a verdict you can trust"
        )
    if uses >= cfg.eval.test_reuse_warning:
        console.warn(
            f"this test set has been evaluated {uses} times; choices made by looking at it overfit it. "
            "Select models on validation, and keep a private test set (eval.private_test) for the final verdict"
        )

    if cfg.eval.judge.url:
        from tuneloop.evaluate.judge import check_endpoint

        check_endpoint(cfg)  # before an hour of generation, not after
    general = None
    if cfg.eval.forgetting.enabled:
        from tuneloop.evaluate import forgetting

        general = forgetting.load_general_set(cfg.path(cfg.eval.forgetting.path) if cfg.eval.forgetting.path else None)
    probes = []
    if cfg.eval.redteam.enabled:
        probes = load_probes(cfg.path(cfg.eval.redteam.path) if cfg.eval.redteam.path else None)

    systems: list[SystemOutputs] = []
    for name, run_dir in [(BASE, None), *zip(run_names, run_dirs, strict=True)]:
        if run_dir is None:
            tokenizer = project_tokenizer(cfg)
            if getattr(tokenizer, "chat_template", None) is None:
                probes = _plain_probes(probes)
            key = base_cache.cache_key(cfg, tokenizer, cases, probes, general)
            cached = base_cache.load(cfg, key) if cfg.eval.cache_base else None
            if cached is not None:
                console.note("base: the same model, test set, decoding and probes as before: cached outputs reused")
                systems.append(SystemOutputs(name, **cached))
                continue
        console.note(f"loading {name}: {cfg.model.name}" + (f" + {run_dir / 'final'}" if run_dir else ""))
        model, tokenizer = load_system(cfg, run_dir)
        model = runs.merged_for_inference(model)  # answers and forgetting figures: the same model, faster
        systems.append(measure(name, model, tokenizer, cfg, cases, general, probes, run_dir))
        if run_dir is None and cfg.eval.cache_base:
            base_cache.store(cfg, key, systems[-1])
        del model
        gc.collect()

    scores = {s.name: score_system(cfg, cases, s, schema) for s in systems}
    indices = bootstrap_indices(len(cases), cfg.eval.bootstrap, cfg.eval.seed)
    comparisons: dict[str, dict[str, Comparison]] = {
        s.name: {m: compare(scores[BASE][m], scores[s.name][m], indices, cfg.eval.confidence) for m in cfg.task.metrics}
        for s in systems[1:]
    }
    fields = field_report(
        [c.reference or "" for c in cases],
        {s.name: [a.text for a in s.answers] for s in systems},
        BASE,
        indices,
        cfg.eval.confidence,
    )
    forgetting_result = None
    if general is not None:
        from tuneloop.evaluate.forgetting import compare_general

        e = cfg.eval
        forgetting_result = {
            s.name: compare_general(
                systems[0].general, s.general, e.forgetting.threshold, e.bootstrap, e.seed, e.confidence
            )
            for s in systems[1:]
        }

    flags = {s.name: [signals(a.text, a.stopped) for a in s.answers] for s in systems}
    probe_flags = {s.name: [signals(a.text, a.stopped) for a in s.probes] for s in systems}
    reward_report, rewards = None, None
    if reward_dir is not None:
        answers = {s.name: [a.text for a in s.answers] for s in systems}
        conversations = [c.conversation for c in cases]
        reward_report, rewards = winrate.score_with_reward_model(cfg, reward_dir, conversations, answers, indices)
    judge_result = None
    if cfg.eval.judge.url and len(systems) > 1:
        from tuneloop.evaluate.judge import judge_systems

        judge_result = judge_systems(cfg, cases, systems, scores)

    out_dir = out_dir or _default_out_dir(cfg, run_dirs)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "created": _now(),
        "test": {
            "source": source,
            "sha256": test_sha,
            "examples": len(cases),
            "private": private,
            "evaluations": uses,
            "reuse_warning_at": cfg.eval.test_reuse_warning,
            "history": test_uses(cfg, test_sha),
        },
        "decoding": {k: getattr(cfg.eval, k) for k in ("max_new_tokens", "temperature", "seed", "batch_size")},
        "systems": [s.name for s in systems],
        "runs": {d.name: str(d) for d in run_dirs},
        "metrics": {
            name: {m: {"value": sc.value, "details": getattr(sc, "details", {})} for m, sc in per.items()}
            for name, per in scores.items()
        },
        "metric_info": {
            m: vars(METRIC_INFO[m]) if m in METRIC_INFO else {"description": "user metric"} for m in cfg.task.metrics
        },
        "comparisons": {name: {m: c.to_json() for m, c in per.items()} for name, per in comparisons.items()},
        "fields": fields,
        "confidence": cfg.eval.confidence,
        "bootstrap": cfg.eval.bootstrap,
        "forgetting": forgetting_result,
        "general_set": general.describe() if general is not None else None,
        "output_signals": {name: count_signals(f) for name, f in flags.items()},
        "redteam": {
            "probes": [
                {
                    "id": p.id,
                    "category": p.category,
                    "prompt": p.messages[-1]["content"],
                    "answers": {s.name: s.probes[i].text for s in systems},
                    "flags": {s.name: probe_flags[s.name][i] for s in systems},
                }
                for i, p in enumerate(probes)
            ],
            "counts": {name: count_signals(f) for name, f in probe_flags.items()},
        }
        if probes
        else None,
        "judge": judge_result,
        "reward_model": reward_report,
    }
    _write_outputs(out_dir / "outputs.jsonl", cases, systems, scores, flags, rewards)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    report_module.write(out_dir, report, cfg, cases, systems, scores, run_dirs)
    from tuneloop import registry

    for d in run_dirs:
        registry.record(cfg, d)
    return EvalResult(out_dir, report, scores)


def _default_out_dir(cfg: ProjectConfig, run_dirs: list[Path]) -> Path:
    if len(run_dirs) == 1:
        return run_dirs[0] / "eval"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return cfg.path(cfg.output.dir) / "evals" / stamp


def _load_schema(cfg: ProjectConfig) -> dict:
    if not cfg.eval.json_schema:
        raise UserError("metric json_schema needs eval.json_schema: the path of a JSON Schema file")
    path = cfg.path(cfg.eval.json_schema)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read eval.json_schema {path}: {e}") from None


def _write_outputs(path: Path, cases, systems, scores, flags, rewards=None) -> None:
    with path.open("w", encoding="utf-8") as f:
        for i, case in enumerate(cases):
            row = {"id": case.id, "prompt": case.prompt, "reference": case.reference}
            for s in systems:
                answer = s.answers[i]
                row[s.name] = {
                    "output": answer.text,
                    "stopped": answer.stopped,
                    "new_tokens": answer.new_tokens,
                    "scores": {m: float(sc.per_example[i]) for m, sc in scores[s.name].items()},
                    "flags": flags[s.name][i],
                }
                if rewards is not None:
                    row[s.name]["reward"] = rewards[s.name][i]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
