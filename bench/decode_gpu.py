"""Batch-1 decoding speed at GPT-2 small's shape: the CUDA graph, the static step run eagerly, the
dynamic cache and recomputation, with Hugging Face's GPT2LMHeadModel.generate as a reference.

    python bench/decode_gpu.py                         # a CUDA GPU: 12 layers, d768, 12 heads, block 1024
    python bench/decode_gpu.py --dtype bfloat16        # weights in bf16
    python bench/decode_gpu.py --device cpu --small    # a tiny shape on the CPU: checks the script itself

Random weights (GPT-2's initialisation; speed does not depend on the weights), vocabulary 50304.
Every path generates --new-tokens greedy tokens from the same random prompt after an untimed
warm-up generation; tokens/s counts the tokens after the first over the time after the first
(docs/sample.md), so prompt processing and the graph's capture are excluded.  A second, short
generation from a prompt that fills the window checks that every path gives recomputation's
tokens across a window cut.  Hugging Face runs eager (no torch.compile), greedy, same shape, when
`transformers` is importable, with the same weights.  Prints a markdown table; exits 1 if any path's tokens differ.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time

import torch

from suite import table
from tformer_cli.core.config import from_dict
from tformer_cli.core.decode import choose_path, path_label
from tformer_cli.core.generate import generate, timed
from tformer_cli.core.model import build_model

GPT2_SMALL = dict(n_layer=12, d_model=768, n_head=12, block_size=1024, vocab=50304)
SMALL = dict(n_layer=2, d_model=64, n_head=4, block_size=64, vocab=512)
PATHS = ("graph", "static", "dynamic", "recompute")


def build(shape: dict, device: torch.device, dtype: torch.dtype):
    keys = {k: v for k, v in shape.items() if k != "vocab"}
    cfg = from_dict({"model": {**keys, "dropout": 0.0, "activation": "gelu_tanh"}})
    torch.manual_seed(0)
    return build_model(cfg.model, shape["vocab"]).to(device=device, dtype=dtype).eval()


def run_path(model, prompt: list[int], n: int, path: str):
    """(tokens, Speed) of one greedy generation along ``path``, after an untimed warm-up."""
    kw = dict(temperature=0.0, use_cache=path != "recompute", decode="auto" if path == "recompute" else path)
    list(generate(model, prompt, 8, **kw))
    return timed(generate(model, prompt, n, **kw))


def run_hf(model, shape: dict, prompt: list[int], n: int) -> tuple[float, float, list[int]] | None:
    """(tokens/s after the first, time to first token in s, tokens) of GPT2LMHeadModel.generate
    with our model's weights (run/hf.py's mapping), or None without transformers."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    from tformer_cli.run.hf import tformer_to_hf

    p = next(model.parameters())
    cfg = GPT2Config(n_layer=shape["n_layer"], n_embd=shape["d_model"], n_head=shape["n_head"],
                     n_positions=shape["block_size"], vocab_size=shape["vocab"], activation_function="gelu_new",
                     bos_token_id=None, eos_token_id=None)  # no end token: exactly n tokens, none suppressed
    hf = GPT2LMHeadModel(cfg).to(device=p.device, dtype=p.dtype).eval()
    hf.load_state_dict(tformer_to_hf(model.state_dict()), strict=False)  # strict: no causal-mask buffers
    ids = torch.tensor([prompt], device=p.device)

    def seconds(k: int) -> tuple[float, list[int]]:
        sync(p.device)
        t0 = time.perf_counter()
        out = hf.generate(ids, max_new_tokens=k, do_sample=False, pad_token_id=0)
        sync(p.device)
        return time.perf_counter() - t0, out[0, len(prompt):].tolist()

    seconds(8)  # warm-up
    (first, _), (total, tokens) = seconds(1), seconds(n)
    return (n - 1) / (total - first), first, tokens


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cut_check(model, block: int) -> dict[str, bool]:
    """Whether each path gives recomputation's greedy tokens from a prompt that fills the window
    (so the window is cut at the second token and the cache rebuilt)."""
    prompt = [(7 * i) % 50 for i in range(block - 1)]
    ref = list(generate(model, prompt, 24, temperature=0.0, use_cache=False))
    return {p: list(generate(model, prompt, 24, temperature=0.0, decode=p)) == ref for p in PATHS[:3]}


def measure(args) -> tuple[list[list[str]], bool]:
    """The table's rows, and whether every path agreed with recomputation."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shape = SMALL if args.small else GPT2_SMALL
    model = build(shape, device, dtype)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, shape["vocab"], (args.prompt_tokens,), generator=g).tolist()
    results = {p: run_path(model, prompt, args.new_tokens, p) for p in PATHS
               if p == "recompute" or choose_path(model, p) == p}
    cut = cut_check(model, shape["block_size"])
    ref = results["recompute"][0]
    rows, ok = [], True
    if "graph" not in results:
        rows.append([path_label(model, "graph"), "-", "-", "-", "not run (needs CUDA)"])
    for p, (ids, speed) in results.items():
        same = ids == ref and cut.get(p, True)
        ok &= same
        label = path_label(model, p)
        rows.append([label, f"{speed.tokens_per_s:,.0f}", f"{speed.ms_per_token:.3f}",
                     f"{1000 * speed.time_to_first_token_s:.1f}", "yes" if same else "**no**"])
    hf = run_hf(model, shape, prompt, args.new_tokens)
    if hf is not None:  # a reference: its tokens are reported, not required to agree
        rows.append(["HF GPT2LMHeadModel.generate (eager, greedy, same weights)", f"{hf[0]:,.0f}",
                     f"{1000 / hf[0]:.3f}", f"{1000 * hf[1]:.1f}", "yes" if hf[2] == ref else "no"])
    return rows, ok


def header(args) -> str:
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    shape = SMALL if args.small else GPT2_SMALL
    return (f"decode_gpu.py, {datetime.date.today().isoformat()}: {device}, torch {torch.__version__}, "
            f"{args.dtype}, batch 1, {shape['n_layer']} layers, d_model {shape['d_model']}, "
            f"{shape['n_head']} heads, block {shape['block_size']}, vocab {shape['vocab']}, random weights; "
            f"{args.new_tokens} new tokens after a {args.prompt_tokens}-token prompt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--small", action="store_true", help="a tiny shape (2 layers, d64, block 64), for the CPU")
    ap.add_argument("--new-tokens", type=int, default=None, help="default 512 (48 with --small)")
    ap.add_argument("--prompt-tokens", type=int, default=None, help="default 64 (8 with --small)")
    args = ap.parse_args()
    args.new_tokens = args.new_tokens or (48 if args.small else 512)
    args.prompt_tokens = args.prompt_tokens or (8 if args.small else 64)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("decode_gpu.py: no CUDA device here (torch.cuda.is_available() is False); run it on a "
                 "GPU machine, or check the script on the CPU with --device cpu --small")
    if args.device == "cpu":
        torch.set_num_threads(1)
    rows, ok = measure(args)
    print(header(args) + "\n")
    print(table(["path", "tokens/s", "ms/token", "time to first token (ms)", "same tokens as recompute"], rows))
    if not ok:
        sys.exit("decode_gpu.py: a path's tokens differ from recomputation (see the table)")


if __name__ == "__main__":
    main()
