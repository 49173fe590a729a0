"""`tuneloop serve --backend vllm`: hand the same model, adapters and chat template to vLLM's server.

vLLM's OpenAI server batches continuously with paged attention, shards across GPUs
(--tensor-parallel-size) and runs behind a load balancer as several replicas: it is the way to
scale beyond the one process of the transformers backend. tuneloop only builds its command line
(base folder, `--enable-lora --lora-modules NAME=FOLDER ...`, the run's chat template file) and
replaces itself with it. vLLM renders prompts through the same Jinja template, with its own code.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tuneloop.errors import UserError
from tuneloop.serve.adapters import Plan

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank accepts


@dataclass(frozen=True)
class VllmPlan:
    """What vLLM should serve."""

    base: Path  # a local safetensors model folder
    name: str  # its served name
    adapters: dict[str, Path]  # served name → adapter folder (a run's final/)
    chat_template: Path | None  # a Jinja file
    trust_remote_code: bool = False


def plan_for(p: Plan) -> VllmPlan:
    """The vLLM equivalent of a transformers-backend plan: same base, adapters and chat template."""
    from tuneloop.models import resolve

    base = resolve(p.base, p.revision)
    adapters = {name: run.final for name, run in p.adapters.items()}
    return VllmPlan(base, p.base_name, adapters, _template_file(p.tokenizer or base), p.trust_remote_code)


def command(plan: VllmPlan, host: str, port: int, max_batch: int) -> list[str]:
    """vLLM's server command line for `plan` (the API key goes in VLLM_API_KEY, not in argv)."""
    argv = [sys.executable, "-m", SERVER_MODULE, "--model", str(plan.base), "--served-model-name", plan.name]
    argv += ["--host", host, "--port", str(port), "--max-num-seqs", str(max_batch)]
    if plan.chat_template is not None:
        argv += ["--chat-template", str(plan.chat_template)]
    if plan.adapters:
        ranks = [_lora_rank(folder) for folder in plan.adapters.values()]
        rank = next(r for r in (*VLLM_LORA_RANKS, max(ranks)) if r >= max(ranks))
        argv += ["--enable-lora", "--max-loras", str(len(plan.adapters)), "--max-lora-rank", str(rank)]
        argv += ["--lora-modules", *(f"{name}={folder}" for name, folder in plan.adapters.items())]
    if plan.trust_remote_code:
        argv.append("--trust-remote-code")
    return argv


def check_available() -> None:
    """Raise a UserError saying what is missing when vLLM cannot run here."""
    import torch

    if importlib.util.find_spec("vllm") is None:
        raise UserError(
            "--backend vllm needs the vllm package on a Linux machine with an NVIDIA GPU: pip install vllm; "
            "or serve with the default --backend transformers"
        )
    if not torch.cuda.is_available():
        raise UserError(
            "--backend vllm needs an NVIDIA GPU with CUDA, and this machine has none; "
            "serve with the default --backend transformers"
        )


def run(plan: VllmPlan, host: str, port: int, max_batch: int, api_key: str | None) -> None:
    """Replace this process with vLLM's server (never returns)."""
    check_available()
    env = dict(os.environ)
    if api_key:
        env["VLLM_API_KEY"] = api_key
    argv = command(plan, host, port, max_batch)
    os.execve(argv[0], argv, env)


def _template_file(folder: Path) -> Path | None:
    """The folder's chat template as a file vLLM can read (tokenizers save it as chat_template.jinja)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja
    config = folder / "tokenizer_config.json"
    template = json.loads(config.read_text()).get("chat_template") if config.is_file() else None
    if not isinstance(template, str):
        return None  # none, or several named ones: vLLM reads the tokenizer's own
    from tuneloop.models import cache_dir

    out = cache_dir() / "serve" / f"{hashlib.sha256(template.encode()).hexdigest()[:16]}.jinja"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(template, encoding="utf-8")
    return out


def _lora_rank(folder: Path) -> int:
    return int(json.loads((folder / "adapter_config.json").read_text()).get("r", 16))
