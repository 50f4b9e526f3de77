"""Whether cached greedy generation gives recomputation's tokens in each weight dtype, and why not.

    python -m bench.precision                        # the CPU, GPT-2 small's shape, random weights
    python -m bench.precision --device cuda --new-tokens 256
    python -m bench.precision --small                # a tiny shape: checks the script

For each dtype (float32, bfloat16 by default) and each cached path (core/decode.py: dynamic,
static; graph on CUDA), greedy tokens from the same random prompt are compared with
recomputation's.  At the first token where they part (or at the last token when they agree), the
two paths' logits for the same window are compared: the largest difference between them, and the
margin between recomputation's two best candidates.  A parting needs a difference larger than
that margin: float32's rounding differences are about 1e-6, half precision's reach the size of
its logit steps (docs/sample.md, "Precision").  Prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import os

import torch

from bench.common import table
from bench.decode_gpu import GPT2_SMALL, SMALL, build
from tformer_cli.core.decode import choose_path, make_stepper
from tformer_cli.core.generate import generate


def logits_by_both(model, window: list[int], path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(recomputation's, the path's) float32 logits after ``window``: the path prefills all but the
    last token and takes that one as a cached step."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        full = model(torch.tensor([window], device=device), last_only=True).logits[0, -1].float()
        stepper = make_stepper(model, path)
        stepper.prefill(window[:-1])
        step = stepper.extend(torch.tensor([[window[-1]]], device=device), len(window) - 1)[0].float()
    return full, step


def row(model, dtype: str, path: str, prompt: list[int], ref: list[int]) -> list[str]:
    out = list(generate(model, prompt, len(ref), temperature=0.0, decode=path))
    parted = next((i for i, (a, b) in enumerate(zip(out, ref)) if a != b), None)
    at = len(ref) - 1 if parted is None else parted
    full, step = logits_by_both(model, prompt + ref[:at], path)
    top = torch.topk(full, 2).values
    return [dtype, path, "yes" if parted is None else "no", "-" if parted is None else f"token {parted + 1}",
            f"{float((full - step).abs().max()):.2g}", f"{float(top[0] - top[1]):.2g}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--small", action="store_true", help="2 layers, d64, block 64, vocab 512")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--new-tokens", type=int, default=12)
    ap.add_argument("--prompt-tokens", type=int, default=8)
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    device, shape = torch.device(args.device), SMALL if args.small else GPT2_SMALL
    prompt = list(range(1, args.prompt_tokens + 1))
    print(f"precision.py, {datetime.date.today().isoformat()}: {args.device}, torch {torch.__version__}, "
          f"{shape['n_layer']} layers, d_model {shape['d_model']}, vocab {shape['vocab']}, random weights; "
          f"{args.new_tokens} greedy tokens after the prompt 1..{args.prompt_tokens}\n")
    rows = []
    for dtype in args.dtypes.split(","):
        model = build(shape, device, getattr(torch, dtype))
        ref = list(generate(model, prompt, args.new_tokens, temperature=0.0, use_cache=False))
        for path in ("dynamic", "static", "graph"):
            if choose_path(model, path) == path:
                rows.append(row(model, dtype, path, prompt, ref))
    print(table(["dtype", "path", "same tokens as recompute", "first parting",
                 "largest logit difference there", "recompute's top-2 margin there"], rows))


if __name__ == "__main__":
    main()
