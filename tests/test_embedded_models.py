"""Slow: the embedded SmolLM2 and MiniLM, loaded from their wheels with no hub access."""

import json

import pytest
import torch

from tuneloop import models

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """Converted into a fresh cache, so every run exercises the GGUF conversion, not a cached folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TUNELOOP_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield models.load_causal_lm("smollm2-135m-instruct")
    mp.undo()


def test_smollm2_converted_folder(smollm2):
    path = models.resolve("smollm2-135m-instruct")
    assert (path / "model.safetensors").is_file()
    assert not list(path.glob("*.bin"))
    _, tokenizer = smollm2
    assert tokenizer.eos_token == "<|im_end|>"
    assert "<|im_start|>" in tokenizer.chat_template
    assert json.loads((path / "generation_config.json").read_text())["eos_token_id"] == tokenizer.eos_token_id
    info = models.describe("smollm2-135m-instruct")
    assert info.status == "ready" and info.licence == "apache-2.0"
    assert 130e6 < info.parameters < 140e6


def test_smollm2_conversion_matches_the_gguf(smollm2):
    """The safetensors rebuild must compute exactly what transformers' GGUF loader computes."""
    from transformers import AutoModelForCausalLM

    gguf = models._installed_file(models.EMBEDDED["smollm2-135m-instruct"])
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    model, tokenizer = smollm2
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=1e-5)


def test_smollm2_answers(smollm2):
    from tuneloop.generate import chat_reply

    model, tokenizer = smollm2
    reply, stopped = chat_reply(
        model, tokenizer, [{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=24
    )
    assert "Paris" in reply
    assert stopped


def test_minilm_embeds_meaningfully():
    model, tokenizer = models.load_encoder("minilm-l6")
    sentences = ["I want my money back", "Please refund my payment", "The app crashes on start-up"]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1)
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert emb.shape == (3, 384)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2
