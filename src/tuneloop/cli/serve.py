"""`tuneloop serve`: an OpenAI-compatible server for a run, an exported or any local model folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import typer

from tuneloop import config
from tuneloop.cli.common import ConfigOption, SetOption, is_loopback, load_config


def serve(
    run: Annotated[
        str | None, typer.Option("--run", help="Serve a run's final model: run id, id prefix, 'latest' or folder.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Serve a model folder (e.g. `tuneloop export` output) or model name."),
    ] = None,
    adapter: Annotated[
        list[str] | None,
        typer.Option("--adapter", help="NAME=RUN: also serve a run's adapter under NAME (repeatable)."),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="The name clients ask for (default: the run id or folder name).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs an API key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="TUNELOOP_API_KEY", help="Require 'Authorization: Bearer KEY' on every route but /health."),
    ] = None,
    admin_key: Annotated[
        str | None,
        typer.Option(envvar="TUNELOOP_ADMIN_KEY", help="Enable /admin/adapters (load/unload), protected by this key."),
    ] = None,
    backend: Annotated[
        Literal["transformers", "vllm"], typer.Option(help="transformers (this process) or vllm (GPU, scales out).")
    ] = "transformers",
    max_batch: Annotated[int, typer.Option(min=1, help="Most rows decoded together; 1 serves one at a time.")] = 16,
    batch_window_ms: Annotated[float, typer.Option(min=0, help="How long to wait for company for a batch.")] = 10.0,
    max_concurrent: Annotated[int, typer.Option(min=1, help="Requests served at once; more get 429.")] = 64,
    max_input_tokens: Annotated[int, typer.Option(min=1, help="Longest prompt accepted, in tokens.")] = 4096,
    max_tokens: Annotated[int, typer.Option(min=1, help="Largest max_tokens accepted (and the default).")] = 1024,
    max_n: Annotated[int, typer.Option(min=1, help="Largest n (choices per request) accepted.")] = 8,
    max_body_kb: Annotated[int, typer.Option(min=1, help="Largest request body, in KiB.")] = 1024,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds one request may take.")] = 300.0,
    log: Annotated[
        bool,
        typer.Option(
            "--log/--no-log",
            help="Record each request, answer and feedback in the project's monitor/traffic.sqlite "
            "(PII redacted when data.pii is on).",
        ),
    ] = False,
    log_file: Annotated[
        Path | None,
        typer.Option("--log-file", help="Record traffic in this SQLite file instead (implies --log)."),
    ] = None,
    dtype: Annotated[
        Literal["auto", "float32", "bfloat16", "float16"], typer.Option(help="Weight dtype for --model.")
    ] = "auto",
    config_path: ConfigOption = Path(config.CONFIG_FILENAME),
    overrides: SetOption = None,
) -> None:
    """Serve a model behind OpenAI's API: /v1/chat/completions (streaming too), /v1/completions, /v1/models."""
    from tuneloop import console
    from tuneloop.errors import UserError
    from tuneloop.serve import adapters as served_models

    if not is_loopback(host) and not api_key:
        raise UserError(
            f"--host {host} exposes the server beyond this machine; give --api-key KEY (or set TUNELOOP_API_KEY) "
            "so that only clients with the key can use it"
        )

    def resolve_run(ref: str) -> Path:
        return _run_folder(ref, config_path, overrides)

    classifier = _classifier_folder(run, model, resolve_run)
    if classifier is not None:
        if adapter or admin_key or backend != "transformers":
            raise UserError(
                "a classifier is served on its own, by this process: drop --adapter, --admin-key and --backend"
            )
        limits = _limits(api_key, None, max_body_kb, max_input_tokens, max_tokens, max_n, max_concurrent, timeout)
        request_log = _traffic_log(log_file, config_path, overrides) if log or log_file is not None else None
        _serve_classifier(classifier[0], name or classifier[1], limits, host, port, request_log)
        return
    named = dict(_adapter_arg(item) for item in adapter or [])
    plan = served_models.plan(
        model,
        served_models.read_run(resolve_run(run)) if run is not None else None,
        {n: served_models.read_run(resolve_run(ref)) for n, ref in named.items()},
        name,
        dtype,
    )
    if backend == "vllm":
        from tuneloop.serve import vllm

        if log or log_file is not None:
            raise UserError(
                "--log records traffic from tuneloop's own server; vLLM's server does not write it: "
                "drop --log, or serve with --backend transformers"
            )

        vllm.check_available()
        console.note(f"handing {plan.base_name} and {len(plan.adapters)} adapters to vLLM")
        vllm.run(vllm.plan_for(plan), host, port, max_batch, api_key)
        return
    import dataclasses

    import uvicorn

    from tuneloop.serve.app import create_app

    limits = _limits(api_key, admin_key, max_body_kb, max_input_tokens, max_tokens, max_n, max_concurrent, timeout)
    limits = dataclasses.replace(limits, max_batch=max_batch, batch_window=batch_window_ms / 1000)
    console.note(f"loading {plan.base}" + "".join(f" + {n}" for n in plan.adapters))
    models = served_models.load(plan)
    request_log = _traffic_log(log_file, config_path, overrides) if log or log_file is not None else None
    app = create_app(models, limits, request_log, resolve_run)
    console.note(
        f"serving {', '.join(models.entries)} on http://{host}:{port}/v1 "
        f"({'API key required' if api_key else 'no API key'}; admin routes {'on' if admin_key else 'off'}; "
        f"traffic log {'off' if request_log is None else request_log.path})"
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)


def _traffic_log(log_file: Path | None, config_path: Path, overrides: list[str] | None):
    """The server's traffic log: the project's monitor/traffic.sqlite (or `log_file`), redacting PII
    as the project's data.pii says; outside a project, `--log-file` with the default redaction."""
    from tuneloop import console, traffic
    from tuneloop.errors import UserError
    from tuneloop.serve.reqlog import RequestLog

    if config_path.is_file():
        cfg = load_config(config_path, overrides)
        path, pii, root = log_file or traffic.default_path(cfg), cfg.data.pii, cfg.root
    elif log_file is not None:
        path, pii, root = log_file, config.PiiConfig(), None
        console.note(f"no {config_path} here: traffic is redacted with the default data.pii settings")
    else:
        raise UserError(
            f"--log records traffic in the project's monitor/traffic.sqlite, but there is no {config_path} here: "
            "run from the project folder, pass --config PATH, or give --log-file PATH"
        )
    redactor = traffic.redactor_for(pii, root)
    log = RequestLog(path, redactor)
    if not log.store.healthy:
        console.warn(f"the traffic log {path} cannot be written now; serving anyway and counting dropped records")
    if redactor is None:
        console.note(f"data.pii.mode is {pii.mode}: traffic is logged without PII redaction")
    return log


def _adapter_arg(item: str) -> tuple[str, str]:
    from tuneloop.errors import UserError

    served, sep, ref = item.partition("=")
    if not sep or not served or not ref:
        raise UserError(f"--adapter {item!r}: write NAME=RUN, e.g. --adapter support=latest")
    return served, ref


def _run_folder(ref: str, config_path: Path, overrides: list[str] | None) -> Path:
    """A run folder from a folder path, or from an id, id prefix or 'latest' in the project's registry."""
    from tuneloop import registry
    from tuneloop.errors import UserError

    path = Path(os.path.expanduser(ref))
    if path.is_dir():
        return path.resolve()
    if not config_path.is_file():
        raise UserError(
            f"no run folder {ref}; give a run folder, or run from the project folder (with {config_path}) "
            "to name a run by id or 'latest'"
        )
    cfg = load_config(config_path, overrides)
    return Path(registry.get_run(cfg, ref)["path"])


def _limits(api_key, admin_key, max_body_kb, max_input_tokens, max_tokens, max_n, max_concurrent, timeout):
    from tuneloop.serve.completions import Limits

    return Limits(
        api_key=api_key,
        admin_key=admin_key,
        max_body_bytes=max_body_kb * 1024,
        max_input_tokens=max_input_tokens,
        max_tokens=max_tokens,
        max_n=max_n,
        max_concurrent=max_concurrent,
        timeout=timeout,
    )


def _classifier_folder(run: str | None, model: str | None, resolve_run) -> tuple[Path, str] | None:
    """(folder, default name) when --run is a classification run or --model a sequence-classifier folder."""
    import json

    if run is not None:
        run_dir = resolve_run(run)
        return (run_dir / "final", run_dir.name) if (run_dir / "labels.json").is_file() else None
    folder = Path(os.path.expanduser(model)) if model else None
    if folder is not None and (folder / "config.json").is_file():
        architectures = json.loads((folder / "config.json").read_text()).get("architectures") or []
        if any(a.endswith("ForSequenceClassification") for a in architectures):
            return folder.resolve(), folder.resolve().name
    return None


def _serve_classifier(folder: Path, name: str, limits, host: str, port: int, request_log=None) -> None:
    """POST /v1/classify for one classifier: label probabilities per text (each logged, with a traffic log)."""
    import uvicorn

    from tuneloop import console
    from tuneloop.models import load_sequence_classifier, refuse_pickled_weights
    from tuneloop.serve.classify import ClassifierServed, create_classifier_app

    refuse_pickled_weights(folder, "the classifier")
    console.note(f"loading the classifier {folder}")
    model, tokenizer = load_sequence_classifier(str(folder))
    served = ClassifierServed(name, model, tokenizer, str(folder), limits, request_log)
    console.note(
        f"serving {name} ({len(served.labels)} labels) on http://{host}:{port}/v1/classify "
        f"({'API key required' if limits.api_key else 'no API key'}; "
        f"traffic log {'off' if request_log is None else request_log.path})"
    )
    uvicorn.run(create_classifier_app(served), host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
