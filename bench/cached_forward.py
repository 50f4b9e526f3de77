"""Tokens/s of the cached forward, one token at a time: what sampling's dynamic path runs.

    python -m bench.cached_forward [--d-model 256] [--layers 4] [--tokens 200] [--repeats 5]

A random GPT (vocabulary 65, block 256) reads an 8-token prompt, then 200 tokens one at a time
through ``model(idx, cache=...)`` (greedy), on one CPU thread; the median of the repeats is
printed.  Run it in two trees (e.g. a git worktree of the commit before a change, with
PYTHONPATH set to each) to compare a change to the forward side by side (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tformer_cli.core.config import ModelConfig
from tformer_cli.core.model import GPT


def rate(model: GPT, prompt: torch.Tensor, tokens: int) -> float:
    cache = model.new_cache(1, "cpu", torch.float32)
    with torch.no_grad():
        out = model(prompt, cache=cache, start_pos=0)
        t0 = time.perf_counter()
        for _ in range(tokens):
            out = model(out.logits[:, -1:].argmax(-1), cache=cache, start_pos=cache.length)
        return tokens / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = GPT(ModelConfig(d_model=a.d_model, n_layer=a.layers, n_head=8, block_size=256), 65).eval()
    prompt = torch.randint(0, 65, (1, 8))
    rates = [rate(model, prompt, a.tokens) for _ in range(a.repeats)]
    print(f"{statistics.median(rates):,.0f} tokens/s (cached forward, one token at a time; median of {a.repeats})")


if __name__ == "__main__":
    main()
