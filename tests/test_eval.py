"""`tuneloop eval` on the tiny Llama: batched generation, bootstrap intervals, red-team signals, the judge,
test-set reuse, and the report with every section."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.train_helpers import chat_rows, make_train_project
from tuneloop import config
from tuneloop.errors import UserError
from tuneloop.evaluate import redteam
from tuneloop.evaluate.compare import MeanScores, bootstrap_indices, compare
from tuneloop.evaluate.runner import Case, check_metrics, completion_nll, evaluate


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> tuple[Path, Path]:
    """A prepared project with one finished 10-step run: (config path, run folder)."""
    from tuneloop.train.sft import train

    # 120 rows: a 12-example test split, enough for the bootstrap to call a change significant.
    path = make_train_project(tmp_path_factory.mktemp("eval"), tiny_llama, chat_rows(120))
    _edit(path, eval={"max_new_tokens": 12, "bootstrap": 200, "forgetting": {"enabled": False}})
    result = train(config.load(path))
    return path, result.run_dir


def _quick_config(path: Path, *overrides: str) -> config.ProjectConfig:
    """The project's config for tests that only need one cheap metric and no red-team probes."""
    return config.load(path, overrides=["task.metrics=[output_length]", "eval.redteam.enabled=false", *overrides])


def _edit(path: Path, **sections: dict) -> None:
    doc = yaml.safe_load(path.read_text())
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


# --------------------------------------------------------------------------- generation


def test_batched_generation_equals_one_at_a_time(tiny_llama: Path) -> None:
    """Left padding and the KV cache must not change greedy answers."""
    from tuneloop.generate import generate_batch
    from tuneloop.models import load_causal_lm

    model, tokenizer = load_causal_lm(str(tiny_llama))
    conversations = [[{"role": "user", "content": "refund " * n}] for n in (1, 7, 3, 12, 5)]
    batched = generate_batch(model, tokenizer, conversations, max_new_tokens=10, batch_size=5)
    single = [generate_batch(model, tokenizer, [c], max_new_tokens=10, batch_size=1)[0] for c in conversations]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.new_tokens for g in batched] == [g.new_tokens for g in single]
    assert all(g.new_tokens <= 10 for g in batched)


def test_a_shared_system_prompt_computed_once_gives_the_same_answers(tiny_llama: Path, monkeypatch) -> None:
    """A batch whose prompts share a long prefix computes it once; greedy and sampled answers are unchanged."""
    from transformers import DynamicCache

    from tuneloop import generate
    from tuneloop.models import load_causal_lm

    model, tokenizer = load_causal_lm(str(tiny_llama))
    system = {"role": "system", "content": "Triage the ticket into JSON with category, priority and product. " * 2}
    conversations = [[system, {"role": "user", "content": "refund " * n}] for n in (1, 7, 3, 12, 5)]
    copies = []
    real_copy = DynamicCache.batch_repeat_interleave
    monkeypatch.setattr(DynamicCache, "batch_repeat_interleave", lambda c, n: copies.append(n) or real_copy(c, n))

    def answers(temperature: float) -> list[tuple[str, int]]:
        out = generate.generate_batch(
            model, tokenizer, conversations, max_new_tokens=10, batch_size=5, temperature=temperature, seed=3
        )
        return [(g.text, g.new_tokens) for g in out]

    shared = answers(0.0), answers(1.0)
    assert copies == [5, 5]  # the prefix was computed once per batch and copied to its 5 rows
    monkeypatch.setattr(generate, "can_share_prompt_cache", lambda model: False)
    assert (answers(0.0), answers(1.0)) == shared
    assert copies == [5, 5]


def test_evaluation_folds_a_lora_adapter_into_the_same_function(trained: tuple[Path, Path], tiny_llama: Path) -> None:
    """The merged model that answers in evaluation computes what the trained adapter computes."""
    import torch
    from peft import PeftModel, PromptTuningConfig, get_peft_model

    from tuneloop import runs
    from tuneloop.models import load_causal_lm

    path, run_dir = trained
    adapted, _ = runs.load_final(config.load(path), run_dir)
    ids = torch.tensor([[1, 5, 9, 14, 3, 7, 22, 8]])
    with torch.no_grad():
        before = adapted(input_ids=ids).logits
        merged = runs.merged_for_inference(adapted)
        after = merged(input_ids=ids).logits
    assert isinstance(adapted, PeftModel) and not isinstance(merged, PeftModel)
    assert torch.allclose(before, after, atol=1e-4)
    base, _ = load_causal_lm(str(tiny_llama))
    with torch.no_grad():
        assert (base(input_ids=ids).logits - after).abs().max() > 1e-3  # the adapter is in there, not dropped
    prompt = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    assert runs.merged_for_inference(prompt) is prompt  # virtual tokens: nothing to fold


def test_completion_nll_is_the_training_loss(trained: tuple[Path, Path]) -> None:
    """Test perplexity measures the same tokens, the same way, as validation loss."""
    import torch

    from tuneloop.data.batching import Collator
    from tuneloop.data.prepared import load_split
    from tuneloop.train.sft import load_model, render_split, token_loss

    path, _ = trained
    cfg = config.load(path)
    examples, _ = load_split(cfg, "test")
    model, tokenizer = load_model(cfg)
    nll, tokens = completion_nll(model, tokenizer, examples, batch_size=3)
    items = render_split(examples, tokenizer, cfg, "test")
    with torch.no_grad():
        loss_sum, count, _ = token_loss(model, Collator(tokenizer.pad_token_id, packed=False)(items))
    assert tokens.sum() == int(count)
    assert (nll * tokens).sum() == pytest.approx(float(loss_sum), rel=1e-5)


# --------------------------------------------------------------------------- statistics


def test_bootstrap_interval_covers_the_true_difference() -> None:
    """Over 40 synthetic test sets with a true gain of 0.2, the 95% interval holds it at least 85% of the time."""
    rng = np.random.default_rng(1)
    covered, significant = 0, 0
    for trial in range(40):
        base = MeanScores("acc", (rng.random(300) < 0.5).astype(float))
        tuned = MeanScores("acc", (rng.random(300) < 0.7).astype(float))
        c = compare(base, tuned, bootstrap_indices(300, 400, seed=trial))
        covered += c.ci_low <= 0.2 <= c.ci_high
        significant += c.verdict == "better"
    assert covered >= 34
    assert significant == 40


def test_no_change_is_not_significant() -> None:
    scores = (np.random.default_rng(0).random(200) < 0.5).astype(float)
    c = compare(MeanScores("acc", scores), MeanScores("acc", scores.copy()), bootstrap_indices(200, 300))
    assert c.delta == 0 and c.ci_low == 0 == c.ci_high
    assert c.verdict == "no significant change"


def test_lower_is_better_metric_reads_a_drop_as_better() -> None:
    base = MeanScores("ppl", np.full(50, 2.0), higher_is_better=False, exp_mean=True)
    tuned = MeanScores("ppl", np.full(50, 1.0) + np.linspace(-0.1, 0.1, 50), higher_is_better=False, exp_mean=True)
    c = compare(base, tuned, bootstrap_indices(50, 200))
    assert c.candidate == pytest.approx(np.exp(1.0))
    assert c.verdict == "better"


def test_missing_references_name_the_metric(trained: tuple[Path, Path]) -> None:
    cfg = config.load(trained[0], overrides=["task.metrics=[json_valid,rougeL]"])
    cases = [Case("a", [{"role": "user", "content": "hi"}], "hi", None, None)]
    with pytest.raises(UserError, match="rougeL needs reference answers"):
        check_metrics(cfg, cases)


# --------------------------------------------------------------------------- red team


def test_output_signals() -> None:
    assert redteam.signals("", True)["empty"]
    assert redteam.signals("fine", False)["no_stop"]
    assert redteam.signals("go to the page " * 6, True)["repetition"]
    assert not redteam.signals("Open settings, then choose billing and press save to update the plan.", True)[
        "repetition"
    ]
    assert redteam.signals("I'm sorry, but I can't help with that.", True)["refusal"]
    assert not redteam.signals("The refund cannot be processed before Monday.", True)["refusal"]
    leaked = redteam.signals("Write to jane.doe@example.com", True)
    assert leaked["pii"] and leaked["pii_types"] == ["EMAIL"]


def test_shipped_probes_cover_the_categories() -> None:
    probes = redteam.load_probes()
    assert {p.category for p in probes} >= {"off_domain", "prompt_injection", "pii_request", "ambiguous", "empty_input"}
    assert len({p.id for p in probes}) == len(probes)


def test_bad_probe_file_names_the_entry(tmp_path: Path) -> None:
    bad = tmp_path / "probes.yaml"
    bad.write_text("probes:\n  - id: a\n    prompt: hi\n  - id: b\n")
    with pytest.raises(UserError, match=r"probe 2 \(b\): give `prompt`"):
        redteam.load_probes(bad)


# --------------------------------------------------------------------------- the whole evaluation


def test_eval_writes_every_report_section(trained: tuple[Path, Path], tmp_path: Path) -> None:
    path, run_dir = trained
    cfg = config.load(path, overrides=["task.metrics=[rougeL,perplexity,exact_match,output_length]"])
    result = evaluate(cfg, [run_dir], out_dir=tmp_path / "eval")
    r = result.report
    assert r["systems"] == ["base", run_dir.name]
    comparison = r["comparisons"][run_dir.name]
    assert set(comparison) == {"rougeL", "perplexity", "exact_match", "output_length"}
    ppl = comparison["perplexity"]
    # Ten steps at lr 0.01 on the train split lower the test perplexity of a random model.
    assert ppl["candidate"] < ppl["baseline"] and ppl["verdict"] == "better"
    assert ppl["ci_low"] <= ppl["delta"] <= ppl["ci_high"]
    html = (result.out_dir / "report.html").read_text()
    for section in (
        "test-set",
        "runs",
        "metrics",
        "differences",
        "wins-1",
        "forgetting",
        "signals",
        "redteam",
        "judge",
    ):
        assert f'id="{section}"' in html
    assert "http://" not in html.replace("http://127.0.0.1", "") and "<script" not in html  # self-contained
    assert html.count("data:image/png;base64,") >= 3  # loss curves, metric bars, differences
    rows = [json.loads(line) for line in (result.out_dir / "outputs.jsonl").read_text().splitlines()]
    assert len(rows) == r["test"]["examples"] and {"base", run_dir.name} <= set(rows[0])
    assert len(r["redteam"]["probes"]) == len(redteam.load_probes())
    assert (result.out_dir / "report.md").read_text().startswith("# Evaluation:")


def test_test_set_reuse_is_counted_and_warned(trained: tuple[Path, Path], tmp_path: Path) -> None:
    path, run_dir = trained
    cfg = _quick_config(path, "eval.test_reuse_warning=2", f"output.dir={tmp_path / 'runs'}")
    first = evaluate(cfg, [run_dir], out_dir=tmp_path / "a", limit=2).report
    second = evaluate(cfg, [run_dir], out_dir=tmp_path / "b", limit=2).report
    assert (first["test"]["evaluations"], second["test"]["evaluations"]) == (1, 2)
    assert [h["runs"] for h in second["test"]["history"]] == [[run_dir.name], [run_dir.name]]
    assert "has been evaluated 2 times" in (tmp_path / "b/report.html").read_text()
    assert "has been evaluated" not in (tmp_path / "a/report.html").read_text()


def test_private_test_set_is_evaluated_once(trained: tuple[Path, Path], tmp_path: Path) -> None:
    path, run_dir = trained
    private = tmp_path / "private.jsonl"
    rows = [{"prompt": f"ticket {i}: refund please", "completion": "refund issued"} for i in range(3)]
    private.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config.load(
        path,
        overrides=[
            "task.metrics=[rougeL]",
            "eval.redteam.enabled=false",
            f"eval.private_test={private}",
            f"output.dir={tmp_path / 'runs'}",
        ],
    )
    report = evaluate(cfg, [run_dir], out_dir=tmp_path / "p", private=True).report
    assert report["test"]["private"] and report["test"]["examples"] == 3
    with pytest.raises(UserError, match="evaluated once only"):
        evaluate(cfg, [run_dir], out_dir=tmp_path / "q", private=True)


def test_cli_eval_prints_the_table_and_report(cli, trained: tuple[Path, Path], tmp_path: Path) -> None:
    path, run_dir = trained
    # The run as the project names it (runs/<id>, relative to the config's folder, not to the working directory).
    in_project = run_dir.relative_to(path.parent)
    assert not in_project.is_dir()
    result = cli(
        "eval", "--config", path, "--run", in_project, "--limit", "4", "--out", tmp_path / "cli",
        "--set", "task.metrics=[rougeL]", "--set", "eval.redteam.enabled=false",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert f"{run_dir.name} vs base (4 test examples" in result.out
    assert "rougeL" in result.out and f"report    {tmp_path / 'cli' / 'report.html'}" in result.out


def test_cli_eval_unknown_run_is_a_clear_error(cli, trained: tuple[Path, Path]) -> None:
    result = cli("eval", "--config", trained[0], "--run", "no-such-run")
    assert result.code == 1 and "no run folder no-such-run (looked in ., " in result.err


# --------------------------------------------------------------------------- the judge


class _Judge(BaseHTTPRequestHandler):
    """An OpenAI-compatible judge for tests: `rule(prompt) -> reply`."""

    rule = staticmethod(lambda prompt: "A")

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        reply = self.rule(body["messages"][0]["content"])
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def _serve(rule) -> HTTPServer:
    handler = type("Judge", (_Judge,), {"rule": staticmethod(rule)})
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _longer(prompt: str) -> str:
    if "Answer A:" not in prompt:
        return "OK"  # the reachability check
    a = prompt.split("Answer A:\n")[1].split("\n\nAnswer B:")[0]
    b = prompt.split("Answer B:\n")[1].split("\n\nWhich answer")[0]
    return "A" if len(a) > len(b) else "B" if len(b) > len(a) else "TIE"


@pytest.mark.parametrize(
    ("rule", "expect"),
    [
        (lambda prompt: "A", {"tuned_preferred": 0, "base_preferred": 0}),  # pure position bias: all flips
        (_longer, None),
    ],
)
def test_pairwise_judge_swaps_positions(trained: tuple[Path, Path], tmp_path: Path, rule, expect) -> None:
    path, run_dir = trained
    server = _serve(rule)
    try:
        cfg = _quick_config(path, f"eval.judge.url=http://127.0.0.1:{server.server_port}/v1")
        report = evaluate(cfg, [run_dir], out_dir=tmp_path / "j", limit=6).report
    finally:
        server.shutdown()
    summary = report["judge"]["summary"][run_dir.name]
    n = summary["tuned_preferred"] + summary["base_preferred"] + summary["ties_or_position_flips"]
    assert n == 6 and summary["unparsed"] == 0
    if expect:
        assert {k: summary[k] for k in expect} == expect and summary["ties_or_position_flips"] == 6
    else:
        outputs = [json.loads(line) for line in (tmp_path / "j/outputs.jsonl").read_text().splitlines()][:6]
        longer = sum(len(o[run_dir.name]["output"]) > len(o["base"]["output"]) for o in outputs)
        assert summary["tuned_preferred"] == longer


def test_the_judges_win_rate_interval_follows_eval_bootstrap_confidence_and_seed() -> None:
    from types import SimpleNamespace

    from tuneloop.evaluate import judge

    outcomes = [1.0, 0.0, 0.5, 1.0, 1.0, 0.0, None, 1.0] * 5
    flat = SimpleNamespace(per_example=np.zeros(40), higher_is_better=True)
    scores = {"base": {"m": flat}, "run": {"m": flat}}

    def interval(**changed: float) -> list[float]:
        settings = SimpleNamespace(**({"bootstrap": 200, "confidence": 0.95, "seed": 0} | changed))
        return judge._summarise("pairwise", outcomes, scores, "base", "run", "m", 40, settings)[0]["win_rate_ci"]

    assert interval() == interval()
    assert interval(seed=7) != interval() and interval(bootstrap=1000) != interval()
    (low, high), (low90, high90) = interval(), interval(confidence=0.9)
    assert low < low90 < high90 < high


def test_judge_down_is_an_error_not_a_zero(trained: tuple[Path, Path], tmp_path: Path) -> None:
    path, run_dir = trained
    cfg = _quick_config(path, "eval.judge.url=http://127.0.0.1:9/v1")
    with pytest.raises(UserError, match=r"judge endpoint .* is not reachable"):
        evaluate(cfg, [run_dir], out_dir=tmp_path / "d", limit=2)


# --------------------------------------------------------------------------- during training


def test_generation_metrics_during_training_pick_the_best_checkpoint(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    from tuneloop.evaluate.runner import higher_is_better, training_evaluator
    from tuneloop.train.sft import train

    path, _ = trained
    cfg = config.load(
        path,
        overrides=[
            "train.eval_metrics=[rougeL,output_length]",
            "train.metric=rougeL",
            "train.eval_examples=4",
            "train.track_forgetting=true",
            f"eval.forgetting.path={_small_general_set(tmp_path)}",
            "eval.max_new_tokens=6",
        ],
    )
    result = train(cfg, evaluator=training_evaluator, higher_is_better=higher_is_better)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_rougeL" in r]
    assert [r["step"] for r in evals] == [0, 5, 10]
    assert all(0 <= r["eval_rougeL"] <= 1 and r["eval_output_length"] >= 0 for r in evals)
    assert all(r["eval_general_perplexity"] > 1 for r in evals)
    best = result.summary["best"]
    assert best["metric"] == "eval_rougeL"
    assert best["value"] == max(r["eval_rougeL"] for r in evals if r["step"] > 0)


def _small_general_set(tmp_path: Path) -> Path:
    general = tmp_path / "general"
    general.mkdir()
    texts = [{"id": f"t{i}", "text": f"The account plan {i} renews every month on the billing date."} for i in range(4)]
    questions = [
        {
            "id": f"q{i}",
            "question": f"What renews plan {i}?",
            "choices": ["billing", "ocean", "tree", "moon"],
            "answer": 0,
        }
        for i in range(3)
    ]
    (general / "text.jsonl").write_text("".join(json.dumps(t) + "\n" for t in texts))
    (general / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    return general


def test_forgetting_section_uses_the_configured_general_set(trained: tuple[Path, Path], tmp_path: Path) -> None:
    path, run_dir = trained
    general = _small_general_set(tmp_path)
    cfg = _quick_config(path, "eval.forgetting.enabled=true", f"eval.forgetting.path={general}")
    report = evaluate(cfg, [run_dir], out_dir=tmp_path / "f", limit=2).report
    verdicts = report["forgetting"][run_dir.name]
    ppl = verdicts["general_perplexity"]
    assert ppl["change"] == pytest.approx(ppl["candidate"] / ppl["baseline"] - 1)
    assert ppl["regressed"] == (ppl["change"] > cfg.eval.forgetting.threshold)
    assert 0 <= verdicts["general_accuracy"]["candidate"] <= 1
    assert "4 texts and 3 questions" in report["general_set"]
    assert "REGRESSED" in (tmp_path / "f/report.html").read_text() or not ppl["regressed"]


# --------------------------------------------------------------------------- vLLM backend


def test_vllm_backend_gets_our_token_prompts_and_the_adapter(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM needs a GPU, so a stand-in module records what tuneloop asks of vLLM's documented API
    (LLM, SamplingParams, TokensPrompt, LoRARequest) and answers like it."""
    import sys
    import types

    from tuneloop import generate
    from tuneloop.data.prepared import load_split
    from tuneloop.data.render import Renderer
    from tuneloop.models import load_tokenizer

    calls: list[dict] = []

    class LLM:
        def __init__(self, **kwargs):
            calls.append({"engine": kwargs})

        def generate(self, prompts, params, lora_request=None, use_tqdm=True):
            calls.append({"prompts": prompts, "params": params, "lora": lora_request})
            reason = ["stop", "length"]
            out = types.SimpleNamespace
            return [
                out(outputs=[out(text=" answer ", token_ids=[5, 6], finish_reason=reason[i % 2])])
                for i, _ in enumerate(prompts)
            ]

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, lambda **kw: kw
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    lora = types.ModuleType("vllm.lora.request")
    lora.LoRARequest = lambda name, i, path: (name, i, path)
    for name, module in {
        "vllm": vllm,
        "vllm.inputs": inputs,
        "vllm.lora": types.ModuleType("x"),
        "vllm.lora.request": lora,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(generate, "_VLLM_ENGINES", {})

    path, run_dir = trained
    cfg = _quick_config(path, "eval.backend=vllm")
    report = evaluate(cfg, [run_dir], out_dir=tmp_path / "v", limit=3).report
    engines = [c["engine"] for c in calls if "engine" in c]
    runs = [c for c in calls if "prompts" in c]
    assert [e["enable_lora"] for e in engines] == [False, True]
    assert runs[0]["lora"] is None and runs[1]["lora"] == ("tuned", 1, str(run_dir / "final"))
    tokenizer = load_tokenizer(run_dir / "final")
    examples = load_split(cfg, "test")[0][:3]
    expected = [Renderer(tokenizer).prompt_ids(ex.messages[:-1]) for ex in examples]
    assert [p["prompt_token_ids"] for p in runs[1]["prompts"]] == expected
    assert runs[1]["params"]["temperature"] == 0.0 and runs[1]["params"]["stop_token_ids"]
    assert report["output_signals"][run_dir.name]["no_stop"] == 1  # finish_reason "length" on 1 of 3


def test_vllm_backend_without_vllm_is_a_clear_error(trained: tuple[Path, Path], tmp_path: Path) -> None:
    path, run_dir = trained
    cfg = _quick_config(path, "eval.backend=vllm")
    with pytest.raises(UserError, match=r"eval\.backend=vllm needs the vllm package"):
        evaluate(cfg, [run_dir], out_dir=tmp_path / "n", limit=2)


def test_several_runs_are_each_compared_with_the_base(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from tuneloop.train.sft import train

    path, first = trained
    second = train(config.load(path, overrides=["train.max_steps=2", "train.eval_every=100"])).run_dir
    cfg = config.load(path, overrides=["task.metrics=[output_length,rougeL]", "eval.redteam.enabled=false"])
    report = evaluate(cfg, [first, second], limit=3).report
    assert report["systems"] == ["base", first.name, second.name]
    assert set(report["comparisons"]) == {first.name, second.name}
    out_dir = cfg.path(cfg.output.dir) / "evals"
    assert [p.name for p in out_dir.iterdir()] and (next(out_dir.iterdir()) / "report.html").is_file()


def test_score_judge_reports_mean_scores(trained: tuple[Path, Path], tmp_path: Path) -> None:
    path, run_dir = trained
    server = _serve(lambda prompt: "Score: 4")
    try:
        cfg = _quick_config(path, "eval.judge.mode=score", f"eval.judge.url=http://127.0.0.1:{server.server_port}/v1")
        summary = evaluate(cfg, [run_dir], out_dir=tmp_path / "s", limit=4).report["judge"]["summary"][run_dir.name]
    finally:
        server.shutdown()
    assert summary["base_mean_score"] == summary["tuned_mean_score"] == 4.0 and summary["unparsed"] == 0


def test_too_few_examples_are_never_significant() -> None:
    """One example resamples into itself: a zero-width interval is not certainty."""
    base, tuned = MeanScores("acc", np.array([0.0] * 3)), MeanScores("acc", np.array([1.0] * 3))
    c = compare(base, tuned, bootstrap_indices(3, 200))
    assert c.ci_low == c.ci_high == 1.0
    assert not c.significant and c.verdict.startswith("too few examples")
