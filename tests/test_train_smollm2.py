"""Training on the embedded SmolLM2-135M-Instruct (slow): the mask it trains on, and that LoRA learns."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.train_helpers import make_train_project
from tuneloop import config
from tuneloop.data.batching import IGNORE, Collator
from tuneloop.data.formats import Example
from tuneloop.data.render import Renderer
from tuneloop.models import load_tokenizer, resolve
from tuneloop.train import sft

pytestmark = pytest.mark.slow

PRODUCTS = ["router", "laptop", "phone", "printer", "camera", "monitor"]
ISSUES = {
    "won't turn on": "hardware",
    "charged twice": "billing",
    "can't log in": "account",
    "arrived broken": "shipping",
}


def triage_rows(n: int, seed: int = 0) -> list[dict]:
    """Tickets whose answer is a fixed JSON function of the text: learnable in a few dozen steps."""
    r = random.Random(seed)
    rows = []
    for i in range(n):
        product, issue = r.choice(PRODUCTS), r.choice(list(ISSUES))
        answer = json.dumps({"category": ISSUES[issue], "product": product})
        ticket = f"Ticket #{1000 + i}: my {product} {issue}. Classify this ticket as JSON."
        rows.append({"messages": [{"role": "user", "content": ticket}, {"role": "assistant", "content": answer}]})
    return rows


def test_smollm2_trains_only_assistant_tokens_and_end_of_turn_even_with_pad_equal_eos():
    tokenizer = load_tokenizer(resolve("smollm2-135m-instruct"))
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the hard case: padding looks like a stop token
    examples = [
        Example("a", "chat", messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]),
        Example(
            "b",
            "chat",
            messages=[
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4", "weight": 0.0},
                {"role": "user", "content": "and 3+3?"},
                {"role": "assistant", "content": "6"},
            ],
        ),
    ]
    renderer = Renderer(tokenizer)
    items = [{"id": e.id, **_ids_weights(renderer.render(e))} for e in examples]
    batch = Collator(tokenizer.pad_token_id, packed=False)(items)
    for row, ids in zip(batch["shift_labels"].tolist(), batch["input_ids"].tolist(), strict=True):
        trained = [t for t in row if t != IGNORE]
        # SmolLM2's "BOS" is <|im_start|>, which opens every turn; what must not happen is a doubled start.
        assert ids[:2] != [tokenizer.bos_token_id] * 2
        text = tokenizer.decode(trained)
        assert text in ("Hello!<|im_end|>", "6<|im_end|>"), text  # weight-0 turn and all padding untrained


def _ids_weights(rendered) -> dict:
    return {"input_ids": rendered.input_ids, "weights": rendered.weights}


def test_lora_on_smollm2_lowers_validation_loss(tmp_path: Path):
    path = make_train_project(
        tmp_path,
        resolve("smollm2-135m-instruct"),
        triage_rows(200),
        max_steps=30,
        batch_size=4,
        learning_rate=1e-3,
        eval_every=15,
        save_every=15,
        warmup_ratio=0.1,
    )
    result = sft.train(config.load(path, ["method.lora.r=8", "method.lora.alpha=16"]))
    assert result.status == "completed"
    evals = [
        r["eval_loss"]
        for r in map(json.loads, (result.run_dir / "metrics.jsonl").read_text().splitlines())
        if "eval_loss" in r
    ]
    assert len(evals) == 3  # the base model at step 0, then steps 15 and 30
    assert evals[-1] < 0.5 * evals[0], evals
