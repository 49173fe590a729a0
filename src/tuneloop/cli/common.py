"""Options shared by every command that reads the project config."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import typer

from tuneloop import config

ConfigOption = Annotated[
    Path,
    typer.Option("--config", "-c", help="The project config file.", show_default=True),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override a config field, e.g. --set train.learning_rate=1e-4 (repeatable; values are YAML).",
        show_default=False,
    ),
]


def load_config(path: Path, overrides: list[str] | None) -> config.ProjectConfig:
    """Load the config with overrides; every command goes through here."""
    return config.load(path, overrides or [])


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps a server on this machine (anything else needs a key)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def refuse_classification(cfg: config.ProjectConfig, command: str) -> None:
    """Commands built for generative models say so for a classification task, instead of failing inside."""
    if cfg.task.type == "classification":
        from tuneloop.errors import UserError

        raise UserError(
            f"`tuneloop {command}` works on generative tasks; it does not take task.type classification yet. "
            "Train a classifier with `tuneloop data prepare` then `tuneloop train`"
        )


def refuse_preference(cfg: config.ProjectConfig, command: str) -> None:
    """Commands that vary SFT runs say so for a preference task, instead of failing inside."""
    if cfg.task.type == "preference":
        from tuneloop.errors import UserError

        raise UserError(
            f"`tuneloop {command}` does not take task.type preference yet; run `tuneloop train` and `tuneloop eval` "
            "(or `tuneloop run`) for each setting"
        )
