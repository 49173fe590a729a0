"""`tuneloop export` on the tiny Llama: merged weights equal the adapter model, GGUF files load back through
transformers and match, a corrupt adapter or a failed check leaves no folder, prompt tuning keeps its adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.export_helpers import make_adapter_run, make_project
from tuneloop import config
from tuneloop.errors import UserError
from tuneloop.export import ExportError, export_run
from tuneloop.export.merge import ExportError as MergeExportError

PROMPT = [{"role": "user", "content": "How do I reset my password?"}]


def reference_logits(project: Path, run_dir: Path) -> tuple[torch.Tensor, list[int]]:
    """Logits of the run's adapter model (base + unmerged adapter), computed without the export code."""
    from peft import PeftModel

    from tuneloop.data.render import Renderer
    from tuneloop.models import load_causal_lm, load_tokenizer

    cfg = config.load(project)
    base, _ = load_causal_lm(cfg.model.name, "float32")
    model = PeftModel.from_pretrained(base, str(run_dir / "final")).eval()
    ids = Renderer(load_tokenizer(run_dir / "final")).prompt_ids(PROMPT)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0], ids


def leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if p.name.startswith((".export", "export")))


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_merged_logits_match_the_adapter_model(tmp_path: Path, tiny_llama: Path, method: str) -> None:
    from transformers import AutoModelForCausalLM

    project = make_project(tmp_path, str(tiny_llama), method)
    run_dir = make_adapter_run(project)
    result = export_run(config.load(project), run_dir, ["safetensors"])

    out = run_dir / "export"
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"} <= set(
        result.files
    )
    assert not list(out.glob("adapter_*")), "a merged export carries no adapter"
    expected, ids = reference_logits(project, run_dir)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    with torch.no_grad():
        got = merged(torch.tensor([ids])).logits[0]
        untouched = base(torch.tensor([ids])).logits[0]
    assert (got - expected).abs().max() <= 1e-4
    assert (untouched - expected).abs().max() > 1e-2, "the adapter must change the model, or the test proves nothing"
    check = result.checks[0]
    assert check.format == "safetensors" and check.passed and check.max_abs_diff <= 1e-4
    assert check.generation_matches == check.probes and check.tokens_identical and check.chat_template_identical
    recorded = json.loads((out / "verification.json").read_text())
    assert recorded["checks"][0]["max_abs_diff"] == check.max_abs_diff
    # The exact training chat template travels with the tokenizer.
    from tuneloop.models import load_tokenizer

    assert load_tokenizer(out).chat_template == load_tokenizer(run_dir / "final").chat_template


def test_a_nan_in_the_adapter_fails_naming_the_tensor_and_leaves_no_folder(tmp_path: Path, tiny_llama: Path) -> None:
    from safetensors.torch import load_file, save_file

    project = make_project(tmp_path, str(tiny_llama))
    run_dir = make_adapter_run(project)
    export_run(config.load(project), run_dir, ["safetensors"])
    before = (run_dir / "export" / "model.safetensors").read_bytes()

    adapter = run_dir / "final" / "adapter_model.safetensors"
    tensors = load_file(str(adapter))
    name = next(n for n in sorted(tensors) if "layers.1.self_attn.v_proj.lora_B" in n)
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(adapter))

    with pytest.raises(ExportError) as failure:
        export_run(config.load(project), run_dir, ["safetensors", "gguf"], ["q8_0"])
    message = str(failure.value)
    assert "model.layers.1.self_attn.v_proj.weight" in message and "not finite" in message
    assert name in message  # and the adapter tensor it came from
    assert leftovers(run_dir) == ["export"], "no staging folder is left behind"
    assert (run_dir / "export" / "model.safetensors").read_bytes() == before, "the previous export is untouched"


def test_a_failed_check_fails_the_export_and_writes_nothing(tmp_path: Path, tiny_llama: Path) -> None:
    project = make_project(tmp_path, str(tiny_llama))
    run_dir = make_adapter_run(project)
    cfg = config.load(project, ["export.q8_0_max_abs_diff=1e-9"])
    with pytest.raises(ExportError, match=r"gguf q8_0: max \|Δlogit\| .* > 1e-09"):
        export_run(cfg, run_dir, ["safetensors", "gguf"], ["q8_0"])
    assert leftovers(run_dir) == []


def test_gguf_f16_and_q8_0_reload_through_transformers_and_match(tmp_path: Path, tiny_llama: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneloop.models import gguf_metadata, load_tokenizer

    project = make_project(tmp_path, str(tiny_llama))
    run_dir = make_adapter_run(project)
    result = export_run(config.load(project), run_dir, ["gguf"], ["f16", "q8_0"])
    out = run_dir / "export"
    assert not (out / "model.safetensors").exists()
    expected, ids = reference_logits(project, run_dir)
    trained = load_tokenizer(run_dir / "final")
    for quant, tolerance in (("f16", 1e-3), ("q8_0", 2e-2)):
        path = out / "gguf" / f"{run_dir.name}-{quant}.gguf"
        meta = gguf_metadata(path)
        assert meta["general.architecture"] == "llama"
        assert meta["tokenizer.chat_template"] == trained.chat_template
        assert meta["tokenizer.ggml.eos_token_id"] == trained.eos_token_id
        assert meta["tokenizer.ggml.bos_token_id"] == trained.bos_token_id
        assert meta["tokenizer.ggml.add_bos_token"] is False  # the tiny tokenizer adds no BOS itself
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        assert tokenizer.encode("How do I reset my password?", add_special_tokens=False) == trained.encode(
            "How do I reset my password?", add_special_tokens=False
        )
        with torch.no_grad():
            got = model(torch.tensor([ids])).logits[0]
        assert (got - expected).abs().max() <= tolerance, quant
        assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.95
    checks = {c.format: c for c in result.checks}
    assert set(checks) == {"gguf f16", "gguf q8_0"} and all(c.passed for c in checks.values())
    assert checks["gguf f16"].max_abs_diff < checks["gguf q8_0"].max_abs_diff
    modelfile = (out / "gguf" / "Modelfile").read_text()
    assert f"FROM ./{run_dir.name}-f16.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "TEMPLATE" in modelfile


def test_gguf_without_the_rotary_permutation_would_not_match(tmp_path: Path, tiny_llama: Path, monkeypatch) -> None:
    """The Q/K permutation is what makes llama.cpp's layout load back right: without it the check fails.

    The tiny random model's logits are small (|logit| < 2), so the limit here is scaled to them: f16 rounding
    moves them by about 2e-4, unpermuted rotary rows by about 2e-2.
    """
    from tuneloop.export import gguf_file

    project = make_project(tmp_path, str(tiny_llama))
    run_dir = make_adapter_run(project)
    cfg = config.load(project, ["export.f16_max_abs_diff=2e-3"])
    assert export_run(cfg, run_dir, ["gguf"], ["f16"]).checks[0].passed
    monkeypatch.setattr(gguf_file, "_permute", lambda w, n_head, n_kv: w)
    with pytest.raises(ExportError, match="gguf f16"):
        export_run(cfg, run_dir, ["gguf"], ["f16"])


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_prompt_tuning_export_keeps_the_adapter_and_its_base(tmp_path: Path, tiny_llama: Path, method: str) -> None:
    project = make_project(tmp_path, str(tiny_llama), method)
    run_dir = make_adapter_run(project)
    result = export_run(config.load(project), run_dir, ["safetensors"])
    out = run_dir / "export"
    assert {"adapter_config.json", "adapter_model.safetensors", "base_model.json"} <= set(result.files)
    assert not (out / "model.safetensors").exists()
    base = json.loads((out / "base_model.json").read_text())
    assert base["model"] == str(tiny_llama) and base["licence"] == "apache-2.0"
    assert "cannot be merged" in base["why_not_merged"] and "cannot be merged" in result.note
    assert result.checks[0].format == "adapter" and result.checks[0].passed
    assert result.checks[0].max_abs_diff == 0.0
    assert "cannot be merged" in (out / "README.md").read_text()
    with pytest.raises(UserError, match="no GGUF for this run"):
        export_run(config.load(project), run_dir, ["gguf"])


def test_full_fine_tune_exports_as_is(tmp_path: Path, tiny_llama: Path) -> None:
    project = make_project(tmp_path, str(tiny_llama), "full")
    run_dir = make_adapter_run(project, std=0.02)
    result = export_run(config.load(project), run_dir, ["safetensors", "gguf"], ["f16"])
    assert result.kind == "full" and "as is" in result.note
    assert [c.format for c in result.checks] == ["safetensors", "gguf f16"] and all(c.passed for c in result.checks)


def test_unmergeable_merge_is_refused(tmp_path: Path, tiny_llama: Path) -> None:
    from tuneloop.export import merge

    project = make_project(tmp_path, str(tiny_llama), "prompt_tuning")
    run_dir = make_adapter_run(project)
    run = merge.run_kind(config.load(project), run_dir)
    with pytest.raises(ValueError, match="cannot be merged"):
        merge.merged_model(config.load(project), run)
    assert issubclass(MergeExportError, UserError)


# --------------------------------------------------------------------------- the CLI


def test_cli_export_prints_the_figures(tmp_path: Path, tiny_llama: Path, cli, monkeypatch) -> None:
    project = make_project(tmp_path, str(tiny_llama))
    run_dir = make_adapter_run(project)
    monkeypatch.chdir(tmp_path)
    done = cli("export", "--run", run_dir.name, "--format", "safetensors")
    assert done.code == 0, done.err
    assert "safetensors" in done.out and "max |Δlogit|" in done.out and str(run_dir / "export") in done.out


def test_cli_export_errors(tmp_path: Path, tiny_llama: Path, cli, monkeypatch) -> None:
    project = make_project(tmp_path, str(tiny_llama))
    monkeypatch.chdir(tmp_path)
    none = cli("export")
    assert none.code == 1 and "no run" in none.err and "Traceback" not in none.err
    missing = cli("export", "--run", "nope")
    assert missing.code == 1 and "no run folder nope" in missing.err
    make_adapter_run(project)
    bad = cli("export", "--format", "onnx")
    assert bad.code == 1 and "unknown export format 'onnx'" in bad.err and "safetensors, gguf" in bad.err
    bad_quant = cli("export", "--format", "gguf", "--quant", "q4_k")
    assert bad_quant.code == 1 and "unknown export quant 'q4_k'" in bad_quant.err
    assert not (project.parent / "runs" / "chat-test" / "export").exists()


# --------------------------------------------------------------------------- the loop's export stage and the card


def test_loop_exports_once_and_the_card_quotes_the_eval(tmp_path: Path, tiny_llama: Path) -> None:
    import yaml

    from tests.train_helpers import chat_rows, make_train_project
    from tuneloop import loop

    path = make_train_project(tmp_path, tiny_llama, chat_rows(60), max_steps=4, eval_every=2, save_every=2)
    doc = yaml.safe_load(path.read_text())
    doc["task"]["metrics"] = ["output_length"]
    doc["eval"] = {"max_new_tokens": 6, "bootstrap": 100, "forgetting": {"enabled": False}}
    doc["export"] = {"enabled": True, "formats": ["safetensors"], "probes": 2, "max_new_tokens": 4}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))

    first = loop.run(config.load(path))
    actions = {s.name: s.action for s in first.stages}
    assert actions == {"prepare": "reused", "train": "ran", "eval": "ran", "export": "ran"}
    out = first.run_dir / "export"
    assert json.loads((out / "stage.json").read_text())["key"] == first.stages[-1].key

    card = (out / "README.md").read_text()
    report = json.loads((first.run_dir / "eval" / "metrics.json").read_text())
    c = report["comparisons"][first.run_dir.name]["output_length"]
    assert "license: apache-2.0" in card and f"Base model: `{tiny_llama}`" in card
    assert "answer support tickets" in card  # task.objective, the intended use
    assert f"| output_length | {c['baseline']:.4g} | {c['candidate']:.4g} | {c['delta']:+.4g} |" in card
    assert f"[{c['ci_low']:+.4g}, {c['ci_high']:+.4g}]" in card and c["verdict"] in card
    manifest = json.loads((first.run_dir / "data-manifest.json").read_text())
    assert (
        manifest["splits"]["train"]["sha256"] in card and f"| train | {manifest['splits']['train']['rows']:,} |" in card
    )
    probes = report["redteam"]["probes"]
    assert f"{len(probes)} adversarial probes" in card
    assert "Forgetting: not evaluated." in card

    again = loop.run(config.load(path))
    assert {s.name: s.action for s in again.stages}["export"] == "reused"
    changed = loop.run(config.load(path, ["export.max_new_tokens=3"]))
    assert {s.name: s.action for s in changed.stages} == {
        "prepare": "reused",
        "train": "reused",
        "eval": "reused",
        "export": "ran",
    }
    (out / "verification.json").write_text("{}")  # an export edited by hand is not vouched for
    assert {s.name: s.action for s in loop.run(config.load(path, ["export.max_new_tokens=3"])).stages}[
        "export"
    ] == "ran"


def test_qlora_merges_into_the_dequantised_4bit_base(tmp_path: Path, tiny_llama: Path) -> None:
    pytest.importorskip("bitsandbytes")
    project = make_project(tmp_path, str(tiny_llama), "qlora")
    run_dir = make_adapter_run(project)
    result = export_run(config.load(project), run_dir, ["safetensors"])
    assert result.kind == "qlora" and "dequantised to float32" in result.note
    check = result.checks[0]
    # The reference is the 4-bit base + adapter, computed in float32: the limit is float32's, not float64's.
    assert check.passed and check.max_abs_diff <= 1e-4 and check.generation_matches == check.probes
    assert "dequantised to float32" in (run_dir / "export" / "README.md").read_text()
