"""`tuneloop data candidates`: K sampled answers per prompt, ranked (preference data), or a teacher's answers (SFT).

This module parses the options and composes the pieces: who answers (a local model through the shared
renderer, or an OpenAI-compatible endpoint), who ranks (a judge endpoint, a reward) and which writer of
`tuneloop.data.candidates` runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from tuneloop import config
from tuneloop.cli.common import ConfigOption, SetOption, load_config
from tuneloop.errors import UserError


def candidates(
    input_path: Annotated[Path, typer.Option("--input", "-i", help="Prompts: JSONL rows with 'prompt' or chat rows.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The JSONL file to write (rejects go beside it).")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Sample from this model (name or folder).")] = None,
    run: Annotated[
        str | None, typer.Option("--run", help="Sample from a trained run: a run folder, or 'latest' under output.dir.")
    ] = None,
    teacher: Annotated[
        str | None,
        typer.Option(
            "--teacher",
            help="Distillation: an OpenAI-compatible URL (http://.../v1) or a model; writes its answers as SFT rows.",
        ),
    ] = None,
    k: Annotated[int, typer.Option("--k", min=1, help="Answers per prompt.")] = 4,
    temperature: Annotated[
        float | None, typer.Option(min=0.0, help="Sampling temperature; default 0.8, and 0 (greedy) for --teacher.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest answer, in tokens.")] = 256,
    seed: Annotated[int, typer.Option(help="Seed for sampling.")] = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts generated together by a local model.")] = 16,
    judge: Annotated[
        str | None, typer.Option("--judge", help="Rank with an LLM judge at this OpenAI-compatible URL (1-5 scores).")
    ] = None,
    judge_model: Annotated[str, typer.Option(help="The model name sent to the judge or teacher endpoint.")] = "judge",
    rubric: Annotated[
        str, typer.Option(help="What the judge looks for.")
    ] = "Is the answer correct, complete, and does it follow the task? Prefer concise answers.",
    score: Annotated[
        str | None,
        typer.Option(
            "--score",
            help="Rank with a reward: json_valid, json_schema, exact_match, json_fields, length, or module:function "
            "(fn(prompt, response[, reference]) -> float).",
        ),
    ] = None,
    schema: Annotated[Path | None, typer.Option(help="The JSON Schema file for --score json_schema.")] = None,
    max_chars: Annotated[int, typer.Option(min=1, help="--score length: answers longer than this lose reward.")] = 512,
    for_review: Annotated[
        bool,
        typer.Option(
            "--for-review", help="No ranker: write {prompt, outputs} rows for `tuneloop review create --mode ranking`."
        ),
    ] = False,
    sft_format: Annotated[
        str, typer.Option("--format", help="Distillation rows: messages or prompt_completion.")
    ] = "messages",
    api_key_env: Annotated[
        str, typer.Option(help="Environment variable holding the endpoints' API key.")
    ] = "TUNELOOP_JUDGE_KEY",
    timeout: Annotated[float, typer.Option(min=1.0, help="Seconds to wait for one endpoint reply.")] = 60.0,
    config_path: ConfigOption = Path(config.CONFIG_FILENAME),
    overrides: SetOption = None,
) -> None:
    """Sample K answers per prompt and rank them into `ranked` rows, or write a teacher's answers as SFT rows.

    Ranked rows keep one answer per distinct score (the first sampled); tied and duplicate answers go to
    the rejects file with their prompt's file:line, as do prompts left with fewer than two scores.
    """
    from tuneloop import console
    from tuneloop.data import candidates as cand

    sources = [s for s in (model, run, teacher) if s is not None]
    if len(sources) != 1:
        raise UserError("give exactly one source of answers: --model M, --run REF, or --teacher URL|MODEL")
    rankers = [r for r in (judge, score) if r is not None]
    if len(rankers) > 1:
        raise UserError("give one ranker: --judge URL or --score NAME|module:function")
    if teacher is not None:
        if k != 1 or rankers or for_review:
            raise UserError(
                "--teacher writes one answer per prompt as SFT data: use --k 1 without --judge/--score/--for-review "
                "(to rank K answers, use --model or --run with a ranker)"
            )
        if sft_format not in ("messages", "prompt_completion"):
            raise UserError(f"--format {sft_format!r}: use messages or prompt_completion")
    elif not rankers and not for_review:
        raise UserError(
            "nothing ranks the answers, and an unranked file is not the `ranked` format: add --judge URL, "
            "--score json_valid|json_schema|exact_match|length|module:function, or --for-review to write them "
            "for people to rank with `tuneloop review create --from-jsonl OUT --mode ranking`"
        )
    elif rankers and for_review:
        raise UserError("--for-review writes unranked answers for people to rank; drop --judge/--score, or drop it")
    out = out.resolve()
    if out.resolve() == input_path.resolve():
        raise UserError("--out is the --input file; write the candidates to another file")

    prompts, rejects = cand.read_prompts(input_path)
    if rejects:
        console.warn(f"{len(rejects)} rows of {input_path} are not prompts (see {cand.rejects_path(out)})")
    if not prompts:
        raise UserError(f"{input_path} has no usable prompt: {rejects[0].where}: {rejects[0].reason}")
    scorer = _scorer(judge, judge_model, rubric, score, schema, max_chars, api_key_env, timeout, config_path)
    if temperature is None:
        temperature = 0.0 if teacher is not None else 0.8
    answer = _answerer(
        model, run, teacher, judge_model, api_key_env, timeout, temperature, max_new_tokens, seed, batch_size,
        distill=teacher is not None, config_path=config_path, overrides=overrides,
    )  # fmt: skip
    console.note(f"{len(prompts)} prompts, {k} answer(s) each")
    if teacher is not None:
        kind: Literal["messages", "prompt_completion"] = "messages" if sft_format == "messages" else "prompt_completion"
        result = cand.write_sft(prompts, answer, out, rejects, kind)
        what = f"{kind} rows for supervised fine-tuning"
    elif for_review:
        result = cand.write_for_review(prompts, answer, k, out, rejects)
        what = f"rows to rank: `tuneloop review create --from-jsonl {out} --mode ranking`"
    else:
        assert scorer is not None
        result = cand.write_ranked(prompts, answer, k, scorer, out, rejects)
        what = "ranked rows (data.format ranked)"
    print(f"{result.written} {what} -> {result.out}")
    if result.rejected:
        reasons = ", ".join(f"{n} {why}" for why, n in result.rejects_by_reason().items())
        console.warn(f"{len(result.rejected)} rejects ({reasons}) -> {result.rejects}")
        for r in result.rejected[:5]:
            console.warn(f"  {r.where}: {r.reason}")


def _scorer(judge, judge_model, rubric, score, schema, max_chars, api_key_env, timeout, config_path) -> Any:
    """The Scorer for --judge or --score (None without a ranker)."""
    if judge is not None:
        from tuneloop.evaluate.judge import JudgeClient, score_answer

        client = JudgeClient(judge, judge_model, os.environ.get(api_key_env), timeout)
        client.ask("Reply with the word OK.")  # a judge that is down fails here, not on every prompt
        return lambda prompt, text: score_answer(client, rubric, prompt.user, prompt.reference, text)
    if score is not None:
        from tuneloop.train import rewards

        document = None
        if schema is not None:
            try:
                document = json.loads(schema.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise UserError(f"cannot read the JSON Schema {schema}: {e}") from None
        reward = rewards.load(score, schema=document, max_chars=max_chars, root=Path.cwd())
        return lambda prompt, text: reward(prompt.user, text, prompt.reference)
    return None


def _answerer(
    model, run, teacher, endpoint_model, api_key_env, timeout, temperature, max_new_tokens, seed, batch_size,
    *, distill: bool, config_path: Path, overrides: list[str] | None,
) -> Any:  # fmt: skip
    """The Answerer: an OpenAI-compatible endpoint (a --teacher URL), or a local model (--model, --run, --teacher)."""
    from tuneloop import console

    if teacher is not None and teacher.startswith(("http://", "https://")):
        from tuneloop.evaluate.judge import JudgeClient, endpoint_answerer

        client = JudgeClient(teacher, endpoint_model, os.environ.get(api_key_env), timeout)
        client.ask("Reply with the word OK.")  # an endpoint that is down fails here, not on every prompt
        console.note(f"teacher: {teacher} (model {endpoint_model!r})")
        return endpoint_answerer(client, temperature, max_new_tokens)

    from tuneloop.generate import sampled_answers
    from tuneloop.models import load_causal_lm

    if run is not None:
        from tuneloop import runs

        cfg = load_config(config_path, overrides)
        run_dir = runs.latest_run(cfg) if run == "latest" else Path(run)
        console.note(f"loading {cfg.model.name} + {run_dir / 'final'}")
        lm, tokenizer = runs.load_final(cfg, run_dir)
    else:
        name = teacher if teacher is not None else model
        console.note(f"loading {name}")
        lm, tokenizer = load_causal_lm(name, dtype="auto")
    return sampled_answers(
        lm, tokenizer, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size,
        require_stop=distill,
    )  # fmt: skip
