"""Benchmark answer generation for `tuneloop eval` against a naive one-prompt-at-a-time loop.

    .venv/bin/python bench/eval_generate.py [--prompts 48] [--max-new-tokens 48] [--model smollm2-135m-instruct]

Three ways to answer the same chat prompts with the same greedy decoding, in one process:
- naive: a loop over prompts, each through `apply_chat_template` + transformers' `generate`
  (KV cache on) — the obvious first implementation;
- tuneloop batch 1: `generate_batch(..., batch_size=1)` (our renderer's prompt, one at a time);
- tuneloop batch 16: `generate_batch(..., batch_size=16)` (length-sorted, left-padded batches).
Prints generated tokens/s and each ratio to the naive loop, and checks the three agree on the
answers (greedy decoding must not depend on batching). Times are medians of --repeats runs.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

TOPICS = "password invoice refund login account billing plan upgrade cancel email order shipping".split()


def prompts(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = " ".join(rng.choice(TOPICS) for _ in range(rng.randint(4, 30)))
        out.append([{"role": "user", "content": f"Ticket {i}: a question about {words}. What should I do?"}])
    return out


def naive(model, tokenizer, conversations, max_new_tokens: int) -> list[str]:
    """The obvious loop: one prompt at a time through transformers' `generate` (KV cache on, greedy)."""
    import torch

    answers = []
    with torch.inference_mode():
        for conversation in conversations:
            encoded = tokenizer.apply_chat_template(
                conversation, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False)
            answers.append(output[0, encoded["input_ids"].shape[1] :].tolist())
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from tuneloop.generate import generate_batch
    from tuneloop.models import load_causal_lm

    model, tokenizer = load_causal_lm(args.model, dtype="float32")
    conversations = prompts(args.prompts)
    print(
        f"{args.model}: {args.prompts} prompts, up to {args.max_new_tokens} new tokens, greedy, fp32, "
        f"{torch.get_num_threads()} threads; median of {args.repeats}"
    )

    def timed(fn):
        runs = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = fn()
            runs.append(time.perf_counter() - start)
        return result, statistics.median(runs)

    naive_answers, naive_seconds = timed(lambda: naive(model, tokenizer, conversations, args.max_new_tokens))
    naive_tokens = sum(len(a) for a in naive_answers)
    rows = [("naive loop (generate each)", naive_tokens, naive_seconds)]
    texts = {"naive": [tokenizer.decode(a, skip_special_tokens=True).strip() for a in naive_answers]}
    for batch_size in (1, 16):
        answers, seconds = timed(
            lambda b=batch_size: generate_batch(
                model, tokenizer, conversations, max_new_tokens=args.max_new_tokens, batch_size=b
            )
        )
        rows.append((f"tuneloop batch {batch_size}", sum(a.new_tokens for a in answers), seconds))
        texts[batch_size] = [a.text for a in answers]
    base_rate = naive_tokens / naive_seconds
    for name, tokens, seconds in rows:
        rate = tokens / seconds
        print(f"{name:26} {tokens:6,} tokens in {seconds:7.2f}s  {rate:8.1f} tokens/s  {rate / base_rate:5.2f}x naive")
    agree = sum(a == b == c for a, b, c in zip(texts["naive"], texts[1], texts[16], strict=True))
    print(f"answers identical across the three: {agree}/{len(conversations)}")
    print(f"batch 16 ÷ batch 1: {rows[2][1] / rows[2][2] / (rows[1][1] / rows[1][2]):.2f}x")


if __name__ == "__main__":
    sys.exit(main())
