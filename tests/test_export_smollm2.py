"""`tuneloop export` on the embedded SmolLM2-135M-Instruct (slow): a LoRA adapter with a non-zero update,
merged and written as safetensors and GGUF q8_0, both verified against the run's own model. Prints the
parity figures (run with -s to see them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.export_helpers import make_adapter_run, make_project
from tuneloop import config
from tuneloop.export import export_run
from tuneloop.models import gguf_metadata

pytestmark = pytest.mark.slow


def test_smollm2_lora_exports_to_safetensors_and_gguf_q8_0(tmp_path: Path) -> None:
    project = make_project(tmp_path, "smollm2-135m-instruct", export={"probes": 4, "max_new_tokens": 16})
    run_dir = make_adapter_run(project, std=0.01)
    result = export_run(config.load(project), run_dir, ["safetensors", "gguf"], ["q8_0"])
    for c in result.checks:
        print(f"\n{c.summary()}; first divergence per probe {c.first_divergence}")
    checks = {c.format: c for c in result.checks}
    assert checks["safetensors"].passed and checks["safetensors"].max_abs_diff <= 1e-4
    assert checks["gguf q8_0"].passed
    meta = gguf_metadata(run_dir / "export" / "gguf" / f"{run_dir.name}-q8_0.gguf")
    assert meta["tokenizer.ggml.eos_token_id"] == 2 and meta["tokenizer.ggml.bos_token_id"] == 1
    assert "named SmolLM" in meta["tokenizer.chat_template"]
    modelfile = (run_dir / "export" / "gguf" / "Modelfile").read_text()
    assert "chatml with a default system prompt" in modelfile and "named SmolLM" in modelfile
    assert result.template_family == "chatml with a default system prompt"
