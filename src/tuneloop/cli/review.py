"""`tuneloop review`: human review of model outputs (create, serve, reviewers, results, export)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import typer

from tuneloop import config
from tuneloop.cli.common import ConfigOption, SetOption, is_loopback, load_config

app = typer.Typer(
    help="Human review: domain experts rate and correct model outputs in a browser.", no_args_is_help=True
)
reviewers_app = typer.Typer(help="Reviewers and their token links.", no_args_is_help=True)
app.add_typer(reviewers_app, name="reviewers")

DEFAULT_PORT = 8765
NameOption = Annotated[str | None, typer.Option("--name", help="The review (default: the newest).")]


def _store(cfg: config.ProjectConfig):
    from tuneloop.review.store import STORE_FILE, Store

    return Store(cfg.path(cfg.review.dir) / STORE_FILE)


def _run_folder(cfg: config.ProjectConfig, ref: str) -> Path:
    """A run or evaluation folder from a path, 'latest', a run id or an id prefix."""
    from tuneloop import registry, runs

    if ref == "latest":
        return runs.latest_run(cfg)
    for path in (Path(os.path.expanduser(ref)), cfg.path(cfg.output.dir) / ref):
        if path.is_dir():
            return path.resolve()
    return Path(registry.get_run(cfg, ref)["path"])


@app.command("create")
def create(
    from_run: Annotated[
        str | None, typer.Option("--from", help="A run (id, prefix, 'latest' or folder) or evaluation folder.")
    ] = None,
    against: Annotated[
        str | None, typer.Option("--against", help="Compare --from with this run instead of the base model.")
    ] = None,
    from_jsonl: Annotated[
        Path | None, typer.Option("--from-jsonl", help="A JSONL of prompts and outputs (e.g. a monitor export).")
    ] = None,
    mode: Annotated[Literal["pairwise", "rubric", "ranking"], typer.Option(help="How reviewers rate.")] = "pairwise",
    sample: Annotated[int | None, typer.Option(min=1, help="Items to draw (default review.sample).")] = None,
    name: Annotated[str | None, typer.Option(help="The review's name (default: <mode>-<n>).")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seeds the sample and the hidden order (default review.seed).")
    ] = None,
    config_path: ConfigOption = Path(config.CONFIG_FILENAME),
    overrides: SetOption = None,
) -> None:
    """Build a review from an evaluation (base vs tuned, or run vs run) or from any JSONL of outputs."""
    import re

    from tuneloop import console
    from tuneloop.errors import UserError
    from tuneloop.review import create as creating

    cfg = load_config(config_path, overrides)
    if (from_run is None) == (from_jsonl is None):
        raise UserError("give one source: --from RUN (its evaluation's answers) or --from-jsonl FILE")
    if against is not None and from_run is None:
        raise UserError("--against compares two runs' evaluations; give --from RUN too")
    if from_run is not None:
        folder = creating.eval_folder(_run_folder(cfg, from_run))
        other = creating.eval_folder(_run_folder(cfg, against)) if against else None
        rows, source = creating.from_eval(folder, other)
    else:
        rows, source = creating.from_jsonl(from_jsonl.expanduser().resolve())
    store = _store(cfg)
    name = name or f"{mode}-{len(store.reviews()) + 1}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise UserError(f"--name {name!r}: use 1-64 letters, digits, '.', '_' or '-' (it appears in links)")
    review, items = creating.build(
        store,
        rows,
        source,
        name=name,
        mode=mode,
        sample=sample or cfg.review.sample,
        seed=cfg.review.seed if seed is None else seed,
        criteria=cfg.review.criteria,
        overlap=cfg.review.overlap,
    )
    console.note(
        f"review {review.name}: {len(items)} {mode} items from {len(rows)} rows "
        f"({' vs '.join(review.systems)}); stored in {store.path}"
    )
    if not store.reviewers():
        console.note("add reviewers with `tuneloop review reviewers add NAME`, then `tuneloop review serve`")


@reviewers_app.command("add")
def add_reviewer(
    name: Annotated[str, typer.Argument(help="The reviewer's name, shown in results.")],
    url: Annotated[str, typer.Option(help="Where `review serve` listens, for the link.")] = (
        f"http://127.0.0.1:{DEFAULT_PORT}"
    ),
    config_path: ConfigOption = Path(config.CONFIG_FILENAME),
    overrides: SetOption = None,
) -> None:
    """Add a reviewer and print their link (it holds their token and is shown only now)."""
    from tuneloop import console

    cfg = load_config(config_path, overrides)
    token = _store(cfg).add_reviewer(name)
    console.out.print(f"{url.rstrip('/')}/login?token={token}", markup=False, soft_wrap=True)


@reviewers_app.command("list")
def list_reviewers(config_path: ConfigOption = Path(config.CONFIG_FILENAME), overrides: SetOption = None) -> None:
    """List the reviewers (their tokens are not stored, only hashes)."""
    from tuneloop import console

    cfg = load_config(config_path, overrides)
    console.out.print("\n".join(_store(cfg).reviewers()) or "no reviewers", markup=False)


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs --admin-key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = DEFAULT_PORT,
    admin_key: Annotated[
        str | None,
        typer.Option(
            envvar="TUNELOOP_REVIEW_ADMIN_KEY", help="Enables /admin (progress, new reviewers) with this key."
        ),
    ] = None,
    config_path: ConfigOption = Path(config.CONFIG_FILENAME),
    overrides: SetOption = None,
) -> None:
    """Serve the review pages; reviewers open their token links."""
    import uvicorn

    from tuneloop import console
    from tuneloop.errors import UserError
    from tuneloop.review.app import Settings, create_app

    if not is_loopback(host) and not admin_key:
        raise UserError(
            f"--host {host} exposes the review app beyond this machine; give --admin-key KEY (or set "
            "TUNELOOP_REVIEW_ADMIN_KEY) so that someone holds the keys to it"
        )
    cfg = load_config(config_path, overrides)
    store = _store(cfg)
    app_ = create_app(store, Settings(admin_key=admin_key, max_body_bytes=cfg.review.max_body_kb * 1024))
    console.note(
        f"review app on http://{host}:{port}/ ({len(store.reviews())} reviews, {len(store.reviewers())} reviewers; "
        f"admin pages {'on' if admin_key else 'off'}); reviewers open their links from `review reviewers add`"
    )
    uvicorn.run(app_, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)


@app.command("results")
def results(
    name: NameOption = None,
    config_path: ConfigOption = Path(config.CONFIG_FILENAME),
    overrides: SetOption = None,
) -> None:
    """Win rate, rubric means, flags, reviewer agreement, and agreement with the metrics; written as JSON too."""
    from tuneloop import console
    from tuneloop.review import results as res

    cfg = load_config(config_path, overrides)
    store = _store(cfg)
    review = store.review(name)
    summary = res.summarize(store, review)
    paths = res.write(summary, store.path.parent)
    console.out.print(res.describe(summary), markup=False)
    if len(paths) > 1:  # the evaluation folder is still there: its report gains the section
        from tuneloop.evaluate.report import add_human_review

        add_human_review(Path(summary["source"]["eval_dir"]))
    console.note("written to " + ", ".join(str(p) for p in paths))


@app.command("export")
def export(
    name: NameOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="Folder to write to (default: review.dir).")] = None,
    ranked: Annotated[
        bool, typer.Option("--ranked", help="Also write the rankings as `ranked` training rows.")
    ] = False,
    config_path: ConfigOption = Path(config.CONFIG_FILENAME),
    overrides: SetOption = None,
) -> None:
    """Write the ratings as CSV and the corrections as JSONL that `tuneloop data prepare` reads."""
    from tuneloop import console
    from tuneloop.review.export import export as write

    cfg = load_config(config_path, overrides)
    store = _store(cfg)
    review = store.review(name)
    paths = write(store, review, out or store.path.parent, ranked=ranked)
    for kind, path in paths.items():
        console.note(f"{kind}: {path}")
    if review.source.get("kind") == "eval" and paths["corrections"].stat().st_size:
        console.warn(
            "these corrections answer the evaluation's test prompts: training on them puts the test prompts "
            "into training, and eval's overlap check (whole rows) will not see it, since the answers differ. "
            "Use them for a new test set; for training data, review production traffic (--from-jsonl)"
        )
