"""Adapter runs on the tiny Llama, and a uvicorn server on a free loopback port (shared by the serve tests)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import yaml


def make_lively_llama(folder: Path) -> Path:
    """The tiny random Llama with its weights scaled up, so greedy answers depend on every prompt token.

    The plain tiny model repeats one token whatever it is asked, which would hide a padding bug.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from tuneloop.tiny import make_tiny_llama

    make_tiny_llama(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(10.0)
    model.save_pretrained(folder)
    return folder


def make_adapter_run(root: Path, base: Path, seed: int, template: str | None = None) -> Path:
    """A run folder as `tuneloop train` leaves it for LoRA: config.resolved.yaml and final/ (adapter + tokenizer).

    The LoRA weights are random (init_lora_weights=False), so each seed's adapter answers differently
    from the base and from the others. `template` replaces the chat template the run "trained" with.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from tuneloop import config
    from tuneloop.models import load_causal_lm

    project = root / f"project-{seed}"
    project.mkdir(parents=True, exist_ok=True)
    doc = {
        "task": {"objective": "answer support tickets", "type": "chat"},
        "model": {"name": str(base)},
        "method": {"name": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
    }
    (project / "tuneloop.yaml").write_text(yaml.safe_dump(doc))
    run_dir = project / "runs" / f"chat-2026010{seed}-000000"
    config.load(project / "tuneloop.yaml").save_resolved(run_dir)
    model, tokenizer = load_causal_lm(str(base))
    torch.manual_seed(seed)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, lora)
    final = run_dir / "final"
    peft_model.save_pretrained(final)
    if template is not None:
        tokenizer.chat_template = template
    tokenizer.save_pretrained(final)
    return run_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(app) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 in a thread; yield its base URL; stop it at the end."""
    import uvicorn

    port = free_port()
    # log_config=None: uvicorn's logging.config.dictConfig would close every handler configured before it,
    # and absl's (imported with rouge-score by an earlier test) then closes pytest's capture stream.
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
