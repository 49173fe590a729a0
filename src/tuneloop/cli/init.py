"""`tuneloop init DIR --task TYPE`: write a working project to start from."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Annotated, get_args

import typer

from tuneloop import config
from tuneloop.errors import UserError
from tuneloop.models import DEFAULT_ENCODER, DEFAULT_MODEL

OBJECTIVES = {
    "chat": "Answer customer support questions for our product accurately, briefly and politely.",
    "instruction": "Follow short writing and editing instructions in our house style.",
    "summarization": "Summarize a support ticket in one line that an agent can act on.",
    "qa": "Answer questions about our policies using only the policy text given.",
    "extraction": "Turn each support ticket into a JSON record our helpdesk can file: category, priority, product.",
    "classification": "Route each support message to the right team: billing, technical or account.",
    "preference": "Prefer helpful, specific answers over dismissive ones.",
}

# What a new project trains from, and how: a generative task adapts the embedded SmolLM2 with LoRA (DPO for
# preferences); a classifier fine-tunes the embedded MiniLM encoder (for its size, an encoder classifies better).
START: dict[str, tuple[str, str, str]] = {
    "classification": (DEFAULT_ENCODER, "full", "features | last_k | lora | full (tuneloop compare-strategies)"),
    "preference": (DEFAULT_MODEL, "dpo", "dpo | ipo | simpo | orpo | kto | reward"),
}
GENERATIVE_START = (DEFAULT_MODEL, "lora", "full | lora | qlora | dora | prompt_tuning | prefix_tuning")

# The command a new project runs next. It moves forward as the loop's later stages land.
NEXT_COMMAND = "cd {dir} && tuneloop data prepare && tuneloop data inspect"


def init(
    directory: Annotated[Path, typer.Argument(help="Folder for the new project (created if missing).")],
    task: Annotated[
        str,
        typer.Option("--task", "-t", help=f"Task type: {', '.join(get_args(config.TaskType))}.", show_default=True),
    ] = "chat",
    objective: Annotated[
        str | None, typer.Option(help="What the model should get better at, in words (default: an example).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help=f"Base model name, folder, .gguf file or hub id (default: {DEFAULT_MODEL}; {DEFAULT_ENCODER} for "
            "classification)."
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite files that already exist and differ.")] = False,
) -> None:
    """Create tuneloop.yaml, a small sample data file for the task type, and a README with the next step."""
    from tuneloop import console

    if task not in OBJECTIVES:
        raise UserError(f"unknown task type '{task}'; choose one of: {', '.join(OBJECTIVES)}")
    templates = files("tuneloop") / "templates"
    sample = (templates / "samples" / f"{task}.jsonl").read_text(encoding="utf-8")
    objective = objective or OBJECTIVES[task]
    default_model, method, methods = START.get(task, GENERATIVE_START)
    values = {
        "task_type": task,
        "objective": objective.replace("\\", "\\\\").replace('"', '\\"'),
        "metrics": ", ".join(config.DEFAULT_METRICS[task]),
        "model": model or default_model,
        "method": method,
        "methods": methods,
    }
    outputs = {
        "tuneloop.yaml": (templates / "tuneloop.yaml").read_text(encoding="utf-8").format(**values),
        "data/sample.jsonl": sample,
        "README.md": (templates / "README.md")
        .read_text(encoding="utf-8")
        .format(
            name=directory.name,
            task_type=task,
            objective=objective,
            rows=sample.count("\n"),
            next_command=NEXT_COMMAND.format(dir=directory),
        ),
    }
    write_files(directory, outputs, force)
    config.load(directory / config.CONFIG_FILENAME)  # a template that does not validate is our bug
    console.out.print(f"created {task} project in {directory}/ (tuneloop.yaml, data/sample.jsonl, README.md)")
    console.out.print(f"next: {NEXT_COMMAND.format(dir=directory)}", markup=False)


def write_files(directory: Path, outputs: dict[str, str | bytes], force: bool) -> None:
    """Write a project's files; refuse to overwrite different content unless `force` (same content is fine)."""

    def differs(path: Path, content: str | bytes) -> bool:
        if not path.exists():
            return False
        return (path.read_bytes() if isinstance(content, bytes) else path.read_text(encoding="utf-8")) != content

    clashes = [name for name, content in outputs.items() if differs(directory / name, content)]
    if clashes and not force:
        raise UserError(
            f"{directory} already has {', '.join(clashes)} with other content; "
            "pass --force to overwrite, or choose another folder"
        )
    for name, content in outputs.items():
        target = directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
