"""A GGUF from `tuneloop export` in a real llama.cpp runtime (llama-cpp-python): same prompt tokens as the
training renderer, and logits that match the run's own model.

llama-cpp-python is an optional extra (`pip install 'tuneloop[llamacpp]'`): PyPI ships it as source only,
and building llama.cpp takes tens of minutes, so the default install leaves it out and this test skips.
"""

from __future__ import annotations

from pathlib import Path

import pytest

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed: pip install 'tuneloop[llamacpp]' (builds llama.cpp)"
)


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_gguf_runs_in_llama_cpp_like_the_run(tmp_path: Path, tiny_llama: Path, quant: str) -> None:
    import numpy as np
    import torch
    from peft import PeftModel

    from tests.export_helpers import make_adapter_run, make_project
    from tuneloop import config
    from tuneloop.data.render import Renderer
    from tuneloop.export import export_run
    from tuneloop.export.gguf_file import add_bos_token
    from tuneloop.models import load_causal_lm, load_tokenizer

    project = make_project(tmp_path, str(tiny_llama))
    run_dir = make_adapter_run(project)
    export_run(config.load(project), run_dir, ["gguf"], [quant])
    path = run_dir / "export" / "gguf" / f"{run_dir.name}-{quant}.gguf"

    tokenizer = load_tokenizer(run_dir / "final")
    conversation = [{"role": "user", "content": "How do I reset my password?"}]
    training_ids = Renderer(tokenizer).prompt_ids(conversation)
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=2)
    assert llm.metadata["tokenizer.chat_template"] == tokenizer.chat_template
    ids = llm.tokenize(text.encode("utf-8"), add_bos=add_bos_token(tokenizer), special=True)
    assert ids == training_ids
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)], dtype=np.float64)

    base, _ = load_causal_lm(str(tiny_llama), "float32")
    model = PeftModel.from_pretrained(base, str(run_dir / "final")).eval()
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].double().numpy()
    assert np.abs(got - expected).max() <= {"f16": 1e-2, "q8_0": 5e-2}[quant]
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.95
