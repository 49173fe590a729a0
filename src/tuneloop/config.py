"""The project config: one YAML file (`tuneloop.yaml`), typed and validated.

`load()` reads the file, applies `--set a.b=c` overrides, and validates everything at once.
Every problem is reported together, each with its line in the YAML (or the `--set` it came
from), and an unknown key names the closest valid one.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from tuneloop import config_rules
from tuneloop.config_classify import CLASS_WEIGHTS_HELP, ClassifyConfig, ClassWeights, check_class_weights
from tuneloop.config_grpo import GrpoConfig
from tuneloop.config_monitor import MonitorConfig
from tuneloop.config_preference import PreferenceConfig, default_learning_rate
from tuneloop.config_review import ReviewConfig
from tuneloop.config_yaml import Section, apply_override, describe, parse_yaml
from tuneloop.errors import UserError

CONFIG_FILENAME = "tuneloop.yaml"
RESOLVED_FILENAME = "config.resolved.yaml"

# What data.pii finds (tuneloop.data.pii): pattern types, and the types a NER model finds.
PII_TYPES: tuple[str, ...] = ("EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "SSN", "IP_ADDRESS", "SECRET")
NER_TYPES: tuple[str, ...] = ("PERSON", "LOCATION")
DEFAULT_PHONE_REGIONS = config_rules.DEFAULT_PHONE_REGIONS  # where national-format phone numbers are looked for
DEFAULT_NER_MODEL = "en_core_web_lg"  # what Presidio itself uses

TaskType = Literal["instruction", "chat", "summarization", "qa", "extraction", "classification", "preference"]
MethodName = Literal[
    "full", "lora", "qlora", "dora", "prompt_tuning", "prefix_tuning", "features", "last_k", "grpo", "dpo", "ipo",
    "simpo", "orpo", "reward", "kto",
]  # fmt: skip
DataFormat = Literal[
    "auto",
    "prompt_completion",
    "messages",
    "text",
    "alpaca",
    "sharegpt",
    "classification",
    "preference",
    "ranked",
    "unpaired",
]

# The vocabulary of task metrics. `tuneloop eval` computes each with its reference library;
# naming them here lets a typo fail at load time instead of after an hour of training.
METRICS = tuple(
    "rouge1 rouge2 rougeL bleu chrf exact_match json_match normalized_exact_match accuracy precision recall f1 "
    "perplexity flesch_kincaid json_valid json_schema output_length preference_accuracy".split()
)

DEFAULT_METRICS: dict[str, list[str]] = {
    "instruction": ["rougeL", "exact_match"],
    "chat": ["rougeL", "perplexity"],
    "summarization": ["rouge1", "rouge2", "rougeL"],
    "qa": ["normalized_exact_match", "rougeL"],
    "extraction": ["json_valid", "exact_match"],
    "classification": ["accuracy", "f1"],
    "preference": ["preference_accuracy"],
}

# Learning rates that work as a first try for each method on small models: full fine-tuning
# moves every weight and needs a small step; adapters start from zero and need a larger one.
DEFAULT_LEARNING_RATE: dict[str, float] = {
    "full": 2e-5,
    "lora": 2e-4,
    "qlora": 2e-4,
    "dora": 2e-4,
    "prompt_tuning": 3e-2,
    "prefix_tuning": 1e-2,
    "features": 1e-3,  # classification: a fresh head on a frozen encoder
    "last_k": 1e-4,
    "grpo": 2e-5,  # a policy that already answers is nudged, not taught (method.grpo)
}

_USER_METRIC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _check_metric_names(metrics: list[str]) -> list[str]:
    """Every name is a known metric or 'module:function'; typos get the closest known name."""
    bad = [m for m in metrics if m not in METRICS and not _USER_METRIC.match(m)]
    if bad:
        hints = []
        for m in bad:
            close = difflib.get_close_matches(m, METRICS, n=1)
            hints.append(f"'{m}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise ValueError(f"unknown metric {', '.join(hints)}; known: {', '.join(METRICS)}, or 'module:function'")
    return metrics


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)")


def duration_seconds(text: str) -> float:
    """Seconds in a duration written like '90s', '8m', '1h30m' or '1.5h'; ValueError saying the form otherwise."""
    compact = str(text).strip().lower()
    parts = _DURATION.findall(compact)
    if not parts or _DURATION.sub("", compact).strip():
        raise ValueError(f"{text!r} is not a duration; write e.g. '90s', '8m' or '1h30m'")
    seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[unit] for n, unit in parts)
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return seconds


def _yaml_off(value: Any) -> Any:
    """YAML 1.1 reads a bare `off` as false; where 'off' is a choice, take it back."""
    return "off" if value is False else value


_Section = Section  # the name every section below was written against


class TaskConfig(_Section):
    """Define: what the model should get better at, and how we will know."""

    objective: str = Field(description="What the fine-tuned model should do, in one or two sentences.")
    type: TaskType = Field(description="The kind of task; it picks the data format and default metrics.")
    metrics: list[str] = Field(
        default_factory=list,
        description="Success metrics chosen up front (empty: the defaults for the task type). "
        "A user metric is 'module:function'.",
    )

    @field_validator("objective")
    @classmethod
    def _objective_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("write the objective in words, e.g. 'answer billing questions in our tone'")
        return value.strip()

    _known_metrics = field_validator("metrics")(lambda metrics: _check_metric_names(metrics))

    @model_validator(mode="after")
    def _default_metrics(self) -> TaskConfig:
        if not self.metrics:
            self.metrics = list(DEFAULT_METRICS[self.type])
        return self


class ModelConfig(_Section):
    """The base model to fine-tune."""

    name: str = Field(
        default="smollm2-135m-instruct",
        description="An embedded model name (see `tuneloop models`), a local folder, a .gguf file, "
        "or a Hugging Face hub id.",
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Weight dtype when loading; 'auto' is float32 on CPU, bf16/fp16 on GPU."
    )
    trust_remote_code: bool = Field(
        default=False, description="Run Python code shipped with a hub model. Off unless you trust it."
    )
    chat_template: str | None = Field(
        default=None,
        description="The chat template to render conversations with: chatml, llama3, mistral, gemma, phi3, or a "
        "path to a Jinja file (relative to the config file). Used when the model has none, and instead of the "
        "model's own when set. Unset, the model's own is used; a model without one trains prompt/completion "
        "rows as plain text.",
    )

    @field_validator("chat_template")
    @classmethod
    def _template_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("give a template name (chatml, llama3, mistral, gemma, phi3) or a Jinja file's path")
        return value


class SplitConfig(_Section):
    """Fractions of the data for train / validation / test (0 for a split you bring a file for)."""

    train: float = Field(default=0.8, gt=0, le=1)
    val: float = Field(default=0.1, ge=0, lt=1)
    test: float = Field(default=0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {total:g}")
        return self


class CleanConfig(_Section):
    """Text cleaning steps; each can be switched off."""

    html: bool = Field(default=True, description="Strip HTML tags, scripts and styles; decode entities.")
    unicode: bool = Field(default=True, description="Normalise Unicode to NFC.")
    control: bool = Field(default=True, description="Remove control and invisible format characters.")
    whitespace: bool = Field(default=True, description="Fold runs of spaces and blank lines; trim.")


class PiiConfig(_Section):
    """Personal data and secrets in the training text."""

    mode: Literal["redact", "detect", "off"] = Field(
        default="redact",
        description="'redact' replaces each with a typed placeholder like [EMAIL]; 'detect' only counts.",
    )
    types: list[Literal[PII_TYPES]] = Field(default_factory=lambda: list(PII_TYPES))  # type: ignore[valid-type]
    phone_regions: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PHONE_REGIONS),
        description="Countries (ISO 3166) whose national-format phone numbers are found; +country code: any.",
    )
    ner: Literal["presidio", "off"] = Field(
        default="off",
        description="'presidio' also replaces names and places found by a spaCy NER model, through Presidio "
        "(pip install 'tuneloop[presidio]' and a spaCy model).",
    )
    ner_model: str = Field(
        default=DEFAULT_NER_MODEL,
        description="The spaCy pipeline for ner: an installed package, or a folder saved with nlp.to_disk() "
        "(a relative folder starts from the config file's folder).",
    )
    ner_types: list[Literal[NER_TYPES]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(NER_TYPES),
        min_length=1,
        description="What ner replaces: PERSON, LOCATION (spaCy's GPE, LOC and FAC: places, streets, buildings).",
    )

    _off = field_validator("mode", "ner", mode="before")(lambda v: _yaml_off(v))

    _regions = field_validator("phone_regions")(lambda regions: config_rules.known_phone_regions(regions))


class DedupConfig(_Section):
    """Duplicate removal."""

    exact: bool = Field(default=True, description="Drop exact duplicates (after lowercasing and removing punctuation).")
    near: Literal["drop", "group", "off"] = Field(
        default="drop",
        description="Near duplicates (MinHash LSH): 'drop' them, or 'group' them so a cluster stays in one split.",
    )
    threshold: float = Field(default=0.85, ge=0.5, le=1.0, description="Jaccard similarity that counts as near.")

    _off = field_validator("near", mode="before")(lambda v: _yaml_off(v))


class MixConfig(_Section):
    """General-purpose data mixed into train to keep general ability (replay)."""

    path: str = Field(description="File or folder of general data, in any supported format.")
    fraction: float = Field(gt=0, le=1, description="Rows to add, as a fraction of the train split.")


class DataConfig(_Section):
    """Where the data is and how to shape it."""

    train: list[str] = Field(
        default_factory=lambda: ["data/train.jsonl"],
        description="Files or folders (JSONL, JSON, CSV, Parquet), relative to the config file.",
    )
    val: list[str] = Field(default_factory=list, description="Your own validation split, if you have one.")
    test: list[str] = Field(default_factory=list, description="Your own test split, if you have one.")
    format: DataFormat = Field(default="auto", description="Record format; 'auto' detects it from the rows.")
    labels: list[str] = Field(
        default_factory=list, description="Classification: the allowed labels (empty: whatever the data has)."
    )
    max_length: int = Field(default=1024, gt=0, description="Longest example in tokens, after the template.")
    long: Literal["drop", "truncate", "error"] = Field(
        default="drop", description="Examples over max_length: drop and count them, truncate them, or fail."
    )
    split: SplitConfig = Field(default_factory=SplitConfig)
    seed: int = 42
    clean: CleanConfig = Field(default_factory=CleanConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    mix: list[MixConfig] = Field(default_factory=list, description="Replay data mixed into train only.")
    prepared_dir: str = Field(default="data/prepared", description="Where `tuneloop data prepare` writes.")

    @field_validator("train", "val", "test", mode="before")
    @classmethod
    def _one_path_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _own_files_take_no_share(cls, value: Any) -> Any:
        return config_rules.own_files_take_no_share(value, {"val": SplitConfig().val, "test": SplitConfig().test})


class LoraConfig(_Section):
    """Low-rank adapter shape, used by lora, qlora and dora."""

    r: int = Field(default=16, gt=0, description="Adapter rank.")
    alpha: int = Field(default=32, gt=0, description="Scaling numerator; the update is scaled by alpha/r.")
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: Literal["auto", "all-linear"] | list[str] = Field(
        default="auto",
        description="'auto' picks the attention and MLP projections for the architecture; "
        "'all-linear' adapts every linear layer; or list module names.",
    )
    last_layers: int | None = Field(
        default=None,
        gt=0,
        description="Adapt only the last N transformer blocks (null: every block). Backpropagation then stops "
        "below them, so a step costs less: the last 10 of SmolLM2-135M's 30 make a CPU step 1.8x faster.",
    )


class QuantConfig(_Section):
    """4-bit base model for qlora (bitsandbytes)."""

    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = Field(default=True, description="Quantise the quantisation constants too.")
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class PromptConfig(_Section):
    """Virtual tokens for prompt_tuning and prefix_tuning."""

    num_virtual_tokens: int = Field(default=20, gt=0)


class MethodConfig(_Section):
    """How the weights are adapted."""

    name: MethodName = Field(
        default="lora",
        description="full, lora, qlora, dora, prompt_tuning or prefix_tuning; classification: features, last_k, lora "
        "or full; preference: dpo, ipo, simpo, orpo, kto or reward (the default for task.type preference is dpo).",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)
    quant: QuantConfig = Field(default_factory=QuantConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    grpo: GrpoConfig = Field(default_factory=GrpoConfig)
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)


class TrainConfig(_Section):
    """Optimisation and bookkeeping for `tuneloop train`."""

    epochs: float = Field(default=3, gt=0)
    max_steps: int | None = Field(default=None, gt=0, description="Stop after this many optimizer steps.")
    time_budget: str | None = Field(
        default=None,
        description="Training time, e.g. '8m', '90s', '1h30m': max_steps is chosen to fit it on this machine after "
        "timing two steps, and recorded in the run. Covers steps and validation, not loading or train.eval_metrics.",
    )
    examples: int | None = Field(
        default=None,
        gt=0,
        description="Train on a seeded random subset of this many train examples (nested: a smaller subset is "
        "always inside a larger one with the same seed). `tuneloop curve` sets it; empty: all of train.",
    )
    batch_size: int = Field(default=8, gt=0, description="Examples per device per micro-batch.")
    grad_accum: int = Field(default=1, gt=0, description="Micro-batches per optimizer step.")
    learning_rate: float | None = Field(
        default=None, gt=0, description="Peak learning rate; empty picks the method's default."
    )
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto",
        description="'auto': bf16/fp16 on GPU; bf16 autocast on CPUs that support it; else fp32.",
    )
    gradient_checkpointing: bool = False
    batching: Literal["auto", "padded", "packed", "shared_prefix", "length_grouped"] = Field(
        default="auto", description="'auto' measures the data and picks the fastest layout."
    )
    log_every: int = Field(default=10, gt=0, description="Steps between training-loss log lines.")
    eval_every: int = Field(default=50, gt=0, description="Steps between validation passes.")
    val_examples: int | None = Field(
        default=None,
        gt=0,
        description="Measure the validation loss on at most this many val examples (a seeded subset, the same "
        "for every pass); empty: the whole val split. A pass costs a third of a step per example: on a CPU, "
        "a subset leaves more of the time for training.",
    )
    save_every: int = Field(default=100, gt=0, description="Steps between checkpoints.")
    keep_last: int = Field(default=3, gt=0, description="Checkpoints kept (the best and newest are always kept).")
    metric: str = Field(
        default="loss",
        description="Validation metric that picks the best checkpoint and drives early stopping: loss, "
        "token_accuracy, one of train.eval_metrics, or general_perplexity with train.track_forgetting.",
    )
    eval_metrics: list[str] = Field(
        default_factory=list,
        description="Task metrics computed on generated answers for a validation subset at every evaluation.",
    )
    eval_examples: int = Field(default=32, gt=0, description="Validation examples answered for train.eval_metrics.")
    track_forgetting: bool = Field(
        default=False, description="Also measure perplexity on the general set (eval.forgetting) at every evaluation."
    )
    early_stopping_patience: int | None = Field(
        default=None, gt=0, description="Stop after this many evaluations without improvement."
    )
    overfit_patience: int = Field(
        default=3, gt=0, description="Warn when train loss falls while validation loss rises this many evals in a row."
    )
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Experiment trackers; wandb and mlflow are imported only when listed here.",
    )
    class_weights: ClassWeights = Field(default="none", description=CLASS_WEIGHTS_HELP)
    seed: int = 42

    _class_weights = field_validator("class_weights")(lambda v: check_class_weights(v))
    _known_eval_metrics = field_validator("eval_metrics")(lambda metrics: _check_metric_names(metrics))

    @field_validator("time_budget")
    @classmethod
    def _readable_budget(cls, value: str | None) -> str | None:
        if value is not None:
            duration_seconds(value)
        return value

    @model_validator(mode="after")
    def _one_length(self) -> TrainConfig:
        if self.time_budget is not None and self.max_steps is not None:
            raise ValueError(
                "train.max_steps and train.time_budget both set the run's length; keep one "
                "(a budgeted run records the max_steps it chose, to rerun it exactly)"
            )
        return self


class ForgettingConfig(_Section):
    """Did tuning break general ability? Perplexity on general text and general-knowledge questions."""

    enabled: bool = True
    path: str | None = Field(
        default=None, description="Folder with your own text.jsonl and questions.jsonl; empty: the shipped set."
    )
    threshold: float = Field(
        default=0.05, gt=0, description="Flag perplexity up by more than this fraction, or accuracy down by this much."
    )


class RedTeamConfig(_Section):
    """Adversarial probes answered by base and tuned, shown side by side."""

    enabled: bool = True
    path: str | None = Field(default=None, description="Your own probes YAML; empty: the shipped probes.")


class JudgeConfig(_Section):
    """An LLM judge behind any OpenAI-compatible endpoint (optional)."""

    url: str | None = Field(default=None, description="Base URL, e.g. http://127.0.0.1:8000/v1; empty: no judge.")
    model: str = Field(default="judge", description="Model name sent to the endpoint.")
    api_key_env: str = Field(default="TUNELOOP_JUDGE_KEY", description="Environment variable holding the API key.")
    mode: Literal["score", "pairwise"] = Field(
        default="pairwise",
        description="'score': rate each answer 1-5 against the rubric; 'pairwise': prefer base or tuned, "
        "asked twice with the order swapped.",
    )
    rubric: str = Field(
        default="Is the answer correct, complete, and does it follow the task? Prefer concise answers.",
        description="What the judge should look for.",
    )
    max_examples: int = Field(default=50, gt=0, description="Judge at most this many test examples.")
    timeout: float = Field(default=60, gt=0, description="Seconds to wait for one judge reply.")


class EvalConfig(_Section):
    """`tuneloop eval`: base vs tuned on the test split, forgetting, red-team probes, the report."""

    max_new_tokens: int = Field(default=128, gt=0, description="Longest generated answer, in tokens.")
    batch_size: int = Field(default=16, gt=0, description="Prompts generated together (left-padded, KV cache).")
    temperature: float = Field(default=0.0, ge=0, description="0 is greedy and reproducible; >0 samples.")
    seed: int = 0
    max_examples: int | None = Field(default=None, gt=0, description="Evaluate at most this many test examples.")
    bootstrap: int = Field(default=1000, ge=100, description="Paired bootstrap resamples for the intervals.")
    confidence: float = Field(default=0.95, gt=0.5, lt=1, description="Confidence level of the intervals.")
    json_schema: str | None = Field(default=None, description="JSON Schema file for the json_schema metric.")
    test_reuse_warning: int = Field(
        default=10, gt=0, description="Warn when the same test split has been evaluated this many times."
    )
    private_test: str | None = Field(
        default=None, description="A held-back test file, evaluated once only with `tuneloop eval --private`."
    )
    backend: Literal["transformers", "vllm"] = Field(
        default="transformers", description="Generation backend; vllm needs a GPU and the vllm package."
    )
    cache_base: bool = Field(
        default=True,
        description="Reuse the base model's outputs when its weights, test set, decoding, probes and forgetting "
        "set are unchanged (kept under output.dir/.cache/base-eval).",
    )
    reward_model: str | None = Field(
        default=None,
        description="A reward run (method.name: reward) folder: every answer is scored with it, and each run's win "
        "rate over the base is reported.",
    )
    forgetting: ForgettingConfig = Field(default_factory=ForgettingConfig)
    redteam: RedTeamConfig = Field(default_factory=RedTeamConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)


ExportFormat = Literal["safetensors", "gguf"]
GgufQuant = Literal["f16", "q8_0"]


class ExportConfig(_Section):
    """`tuneloop export` and the loop's optional export stage: merge, convert, verify against the run."""

    enabled: bool = Field(default=False, description="`tuneloop run` exports after evaluating.")
    formats: list[ExportFormat] = Field(
        default_factory=lambda: ["safetensors"],
        min_length=1,
        description="safetensors (a standalone Hugging Face folder) and/or gguf (llama.cpp, Ollama).",
    )
    quant: list[GgufQuant] = Field(
        default_factory=lambda: ["q8_0"], min_length=1, description="GGUF weight types: f16 and/or q8_0."
    )
    probes: int = Field(default=4, gt=0, le=64, description="Prompts the export is verified on (test prompts first).")
    max_new_tokens: int = Field(default=24, gt=0, description="Greedy tokens compared per probe prompt.")
    verify_dtype: Literal["float64", "float32"] = Field(
        default="float64",
        description="What the run's model and the export compute in while compared: float64 measures the export "
        "alone; float32 needs half the memory (8 bytes per parameter otherwise) but adds its own rounding.",
    )
    max_abs_diff: float = Field(
        default=1e-4, gt=0, description="Largest logit difference allowed for the float32 safetensors export."
    )
    # GGUF limits: a few times what SmolLM2 with a merged LoRA measures (README: Deploy); broken files miss by far more.
    f16_max_abs_diff: float = Field(default=0.5, gt=0, description="Largest logit difference allowed for GGUF f16.")
    q8_0_max_abs_diff: float = Field(default=3.0, gt=0, description="Largest logit difference allowed for GGUF q8_0.")
    f16_min_top1: float = Field(
        default=0.98, gt=0, le=1, description="Share of positions whose top-1 token must agree for GGUF f16."
    )
    q8_0_min_top1: float = Field(
        default=0.95, gt=0, le=1, description="Share of positions whose top-1 token must agree for GGUF q8_0."
    )

    @field_validator("formats", "quant")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class OutputConfig(_Section):
    """Where runs are written."""

    dir: str = Field(default="runs", description="Run folders go here, relative to the config file.")
    run_name: str | None = Field(default=None, description="Prefix for run ids; default is the task type.")


class ProjectConfig(_Section):
    """The whole `tuneloop.yaml`."""

    task: TaskConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    classify: ClassifyConfig = Field(default_factory=ClassifyConfig)

    _root: Path = PrivateAttr(default_factory=Path.cwd)

    @model_validator(mode="before")
    @classmethod
    def _preference_method(cls, value: Any) -> Any:
        return config_rules.preference_default_method(value)

    @model_validator(mode="after")
    def _method_defaults(self) -> ProjectConfig:
        if self.train.learning_rate is None:
            self.train.learning_rate = default_learning_rate(self.method) or DEFAULT_LEARNING_RATE[self.method.name]
        return self

    @model_validator(mode="after")
    def _cross_section_rules(self) -> ProjectConfig:
        """Metrics it cannot compute, shares beside your own files: fail now, not after training or generation."""
        problems = config_rules.shares_beside_own_files(self.data) + config_rules.unmeasured_train_metric(self, METRICS)
        problems += config_rules.classification_strategy(self) + config_rules.preference_method(self)
        problems += config_rules.grpo_method(self)
        config_rules.raise_located(problems + config_rules.uncomputable_metrics(self), "ProjectConfig")
        return self

    @property
    def root(self) -> Path:
        """The folder holding the config file; relative paths in the config start here."""
        return self._root

    def path(self, relative: str | Path) -> Path:
        """Resolve a path written in the config against the config's folder."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else self._root / p

    def to_yaml(self) -> str:
        """The resolved config as YAML, defaults filled in."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

    def save_resolved(self, run_dir: Path) -> Path:
        """Write the resolved config into a run folder, so the run can be reproduced from it."""
        run_dir.mkdir(parents=True, exist_ok=True)
        out = run_dir / RESOLVED_FILENAME
        out.write_text(self.to_yaml(), encoding="utf-8")
        return out


# --------------------------------------------------------------------------- loading


def load(path: str | Path = CONFIG_FILENAME, overrides: Sequence[str] = ()) -> ProjectConfig:
    """Read, override and validate a project config; raise UserError listing every problem."""
    path = Path(path)
    if not path.is_file():
        hint = "run `tuneloop init DIR --task TYPE` to create one, or pass --config PATH"
        raise UserError(f"config file {path} not found; {hint}")
    text = path.read_text(encoding="utf-8")
    data, lines = parse_yaml(text, str(path))
    cfg = _validate(data, lines, str(path), overrides)
    cfg._root = path.resolve().parent
    return cfg


def derive(cfg: ProjectConfig, overrides: Sequence[str]) -> ProjectConfig:
    """A copy of `cfg` with `a.b=c` overrides applied and validated, e.g. one trial of a sweep."""
    data = cfg.model_dump(mode="json")
    derived = _validate(data, {}, "the derived config", overrides)
    derived._root = cfg.root
    return derived


def _validate(data: dict, lines: dict[tuple[str, ...], int], name: str, overrides: Sequence[str]) -> ProjectConfig:
    problems: list[str] = []
    origins: dict[tuple[str, ...], str] = {}
    for item in overrides:
        try:
            key = apply_override(data, item)
        except ValueError as e:
            problems.append(f"--set {item}: {e}")
            continue
        origins[key] = f"--set {item}"
    try:
        cfg = ProjectConfig.model_validate(data)
    except ValidationError as e:
        described = [describe(err, name, lines, origins, ProjectConfig) for err in e.errors()]
        problems += [text for _, text in sorted(described, key=lambda d: d[0])]
        cfg = None
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise UserError(f"{name}: {count} in the config:\n" + "\n".join(f"  {p}" for p in problems))
    assert cfg is not None
    return cfg
