"""Tiny randomly initialised models, built from a config, for tests and benchmarks.

They load through exactly the same path as real models (a Hugging Face folder with
safetensors and a tokenizer with a ChatML chat template), in well under a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "How do I reset my password? Go to Settings, then Security, then Reset password.",
    "Refunds are available within 14 days of a charge. Open Billing and choose Request refund.",
    "The quick brown fox jumps over the lazy dog. 0123456789 {}[]():;,.!?'\"-_/\\@#$%&*+=<>",
    "system user assistant You are a helpful assistant. Summarize this ticket in one line.",
    "billing technical account label text prompt completion chosen rejected answer question",
]


def make_tokenizer(
    vocab_size: int = 384,
    *,
    special_tokens: list[str] | None = None,
    bos: str | None = "<|im_start|>",
    eos: str = "<|im_end|>",
    pad: str | None = None,
    unk: str = "<|endoftext|>",
    add_bos: bool = False,
    chat_template: str | None = CHATML_TEMPLATE,
    extra_text: list[str] | None = None,
):
    """A byte-level BPE tokenizer trained on a few sentences (plus `extra_text`), with ChatML special tokens.

    The keywords build other families' tokenizers for tests: their special tokens, BOS/EOS/PAD,
    a post-processor that adds BOS (`add_bos`, as Llama and Gemma tokenizers do), and a chat
    template or none (a base model's tokenizer).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = special_tokens or SPECIAL_TOKENS
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator((_CORPUS + (extra_text or [])) * 4, trainer=trainer)
    if add_bos and bos is not None:
        bos_id = bpe.token_to_id(bos)
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=bos, eos_token=eos, pad_token=pad or eos, unk_token=unk
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def make_tiny_llama(folder: Path, seed: int = 0, hidden_size: int = 64, layers: int = 2, tokenizer: Any = None) -> Path:
    """Write a random Llama (about 0.1M parameters) plus tokenizer (default: `make_tokenizer()`) to `folder`."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer if tokenizer is not None else make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n\n# tiny random llama\n")
    return folder


def make_tiny_bert(folder: Path, words: list[str], seed: int = 0, hidden_size: int = 32, layers: int = 2) -> Path:
    """Write a random BERT encoder (a few thousand parameters) with a WordPiece vocabulary of `words` to `folder`."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted({w.lower() for w in words}), *"0123456789"]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(dict.fromkeys(vocab))})
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,  # deterministic forward passes: tests compare losses to the digit
        attention_probs_dropout_prob=0.0,
        # At BERT's 0.02 a random encoder's output barely depends on its input; at 0.2 its features carry
        # the words, as a pretrained encoder's do, so a frozen-encoder classifier has something to learn from.
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n\n# tiny random bert\n")
    return folder
