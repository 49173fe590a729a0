"""`tuneloop generate`: one reply from a model, to check it loads and talks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuneloop import config
from tuneloop.cli.common import ConfigOption, SetOption, load_config, refuse_classification


def generate(
    prompt: Annotated[str, typer.Argument(help="The user message to answer.")],
    config_path: ConfigOption = Path(config.CONFIG_FILENAME),
    overrides: SetOption = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model to use instead of the config's model.name (skips the config)."),
    ] = None,
    system: Annotated[str | None, typer.Option(help="A system message to put first.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest reply, in tokens.")] = 128,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 is greedy (reproducible); >0 samples.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed for sampling.")] = 0,
    run: Annotated[
        str | None,
        typer.Option("--run", help="Use a trained run's final model: a run folder, or 'latest' under output.dir."),
    ] = None,
) -> None:
    """Generate a reply with the project's model (or --model, or a trained --run) through its chat template."""
    from tuneloop import console, runs
    from tuneloop.data.chat_templates import project_model
    from tuneloop.generate import chat_reply
    from tuneloop.models import load_causal_lm

    if run is not None:
        cfg = load_config(config_path, overrides)
        refuse_classification(cfg, "generate")
        run_dir = runs.latest_run(cfg) if run == "latest" else Path(run)
        console.note(f"loading {cfg.model.name} + {run_dir / 'final'}")
        lm, tokenizer = runs.load_final(cfg, run_dir)
    elif model is not None:
        console.note(f"loading {model}")
        lm, tokenizer = load_causal_lm(model, dtype="auto")
    else:
        cfg = load_config(config_path, overrides)
        refuse_classification(cfg, "generate")
        console.note(f"loading {cfg.model.name}")
        lm, tokenizer = project_model(cfg)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    reply, stopped = chat_reply(lm, tokenizer, messages, max_new_tokens, temperature, seed)
    print(reply)
    if not stopped:
        console.warn(f"the reply hit --max-new-tokens {max_new_tokens} before the end-of-turn token")
