"""Drive nanoGPT's model.py the way its train.py and sample.py would, for bench/suite.py.

    python -m bench.nanogpt_driver train  --nanogpt DIR --data DIR --steps 600
    python -m bench.nanogpt_driver step   --nanogpt DIR [--large] [--bf16] --steps 40
    python -m bench.nanogpt_driver step   --nanogpt DIR --gpt2 --vocab 50304 --device cuda --bf16 --compile
    python -m bench.nanogpt_driver sample --nanogpt DIR --block 256 --tokens 500

nanoGPT itself is not part of this repository: the suite copies its model.py into a
git-ignored scratch folder and points --nanogpt there.  This script is our own
restatement of train.py's loop at the shakespeare_char CPU settings (L4 H4 d128 T64
B12, dropout 0, lr 1e-3 to 1e-4 cosine, warm-up 100, beta2 0.99, weight decay 0.1,
clip 1.0, eval every 250 iterations on 20 batches, no compile, float32), so that the
suite can time both projects in one sitting.  It prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import torch

SMALL = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, batch=12)
LARGE = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, batch=64)
GPT2 = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, dropout=0.0, batch=12)  # nanoGPT's bench.py


def load_nanogpt(folder: str):
    """nanoGPT's model.py in ``folder`` (copied there by the suite), loaded from its file: no
    sys.path edit, no module named plain ``model`` left behind."""
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location("nanogpt_model", os.path.join(folder, "model.py"))
    model = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = model  # its dataclasses look their module up by name
    spec.loader.exec_module(model)
    return model.GPT, model.GPTConfig


def build(folder: str, shape: dict, vocab: int):
    GPT, GPTConfig = load_nanogpt(folder)
    conf = GPTConfig(n_layer=shape["n_layer"], n_head=shape["n_head"], n_embd=shape["n_embd"],
                     block_size=shape["block_size"], bias=False, vocab_size=vocab, dropout=shape["dropout"])
    with contextlib.redirect_stdout(sys.stderr):  # nanoGPT prints its parameter count
        return GPT(conf)


def lr_at(it: int, steps: int, lr: float = 1e-3, min_lr: float = 1e-4, warmup: int = 100) -> float:
    """train.py's schedule: linear warm-up, cosine to min_lr at lr_decay_iters (= steps)."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > steps:
        return min_lr
    ratio = (it - warmup) / (steps - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


class Batches:
    """train.py's get_batch: a fresh memmap of the uint16 file per batch, random windows."""

    def __init__(self, data_dir: str, block: int, batch: int):
        self.dir, self.block, self.batch = data_dir, block, batch

    def get(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        data = np.memmap(os.path.join(self.dir, f"{split}.bin"), dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - self.block, (self.batch,))
        x = torch.stack([torch.from_numpy(data[i:i + self.block].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + self.block].astype(np.int64)) for i in ix])
        return x, y


@torch.no_grad()
def estimate_loss(model, batches: Batches, iters: int) -> dict[str, float]:
    model.eval()
    out = {}
    for split in ("train", "val"):
        out[split] = statistics.fmean(model(*batches.get(split))[1].item() for _ in range(iters))
    model.train()
    return out


def save_checkpoint(model, optimizer, out_dir: str, it: int, best: float) -> None:
    os.makedirs(out_dir, exist_ok=True)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iter_num": it,
             "best_val_loss": best, "model_args": vars(model.config)}
    torch.save(state, os.path.join(out_dir, "ckpt.pt"))


def train(args) -> dict:
    """train.py's loop: iterations 0..steps inclusive, evaluation (and a checkpoint when val
    improves) every eval_interval, the next batch fetched while the step is in flight."""
    t0 = time.perf_counter()
    torch.manual_seed(1337)
    s = SMALL
    batches = Batches(args.data, s["block_size"], s["batch"])
    model = build(args.nanogpt, s, vocab=65)
    with contextlib.redirect_stdout(sys.stderr):
        opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    x, y = batches.get("train")
    best = 1e9
    for it in range(args.steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr_at(it, args.steps)
        if it % args.eval_interval == 0:
            val = estimate_loss(model, batches, args.eval_iters)["val"]
            if val < best:
                best = val
                if it > 0:
                    save_checkpoint(model, opt, args.out, it, best)
        _, loss = model(x, y)
        x, y = batches.get("train")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # train.py logs every iteration at the CPU settings (log_interval=1)
    t1 = time.perf_counter()
    # not in train.py: a last evaluation, so that both projects report the final model's val
    # loss; its time is reported apart (extra_s) and the suite takes it off the wall time
    val = estimate_loss(model, batches, args.eval_iters)["val"]
    extra = time.perf_counter() - t1
    return {"steps_done": args.steps + 1, "loop_s": t1 - t0, "val_loss": val, "extra_s": extra}


def train_step(folder: str, shape: dict, vocab: int, device: str = "cpu", compiled: bool = False,
               bf16: bool = False):
    """train.py's step on one fixed random batch, as a callable: forward (under bf16 autocast when
    asked; train.py runs none on the CPU), backward, clip 1.0, AdamW (fused on CUDA, as
    configure_optimizers picks), zero_grad; torch.compile'd as train.py's compile=True does."""
    torch.manual_seed(1337)
    model = build(folder, shape, vocab).to(device)
    with contextlib.redirect_stdout(sys.stderr):  # it prints which AdamW it chose
        opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), torch.device(device).type)
    run = torch.compile(model) if compiled else model
    x, y = (torch.randint(0, vocab, (shape["batch"], shape["block_size"]), device=device) for _ in range(2))
    ctx = (lambda: torch.autocast(torch.device(device).type, torch.bfloat16)) if bf16 else contextlib.nullcontext

    def one() -> None:
        with ctx():
            _, loss = run(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return one


def step(args) -> dict:
    """The pure training step on random ids, timed one by one (synchronised on CUDA)."""
    s = GPT2 if args.gpt2 else LARGE if args.large else SMALL
    s = {**s, "batch": args.batch or s["batch"]}
    one = train_step(args.nanogpt, s, args.vocab, args.device, args.compile, args.bf16)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    times = []
    for i in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        one()
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return {"step_ms": 1000 * statistics.median(times), "tokens_per_step": s["batch"] * s["block_size"]}


@torch.no_grad()
def sample(args) -> dict:
    """sample.py's generate (a full forward over the newest block_size tokens per token) from a
    random-weight model of the small shape, at sample.py's temperature 0.8 and top_k 200."""
    torch.manual_seed(0)
    model = build(args.nanogpt, {**SMALL, "block_size": args.block}, vocab=65)
    model.eval()
    prompt = torch.tensor([[30, 27, 25, 17, 27, 10]])  # "ROMEO:" in the character vocabulary
    t0 = time.perf_counter()
    model.generate(prompt, args.tokens, temperature=0.8, top_k=200)
    return {"tokens_per_s": args.tokens / (time.perf_counter() - t0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("train", "step", "sample"))
    ap.add_argument("--nanogpt", required=True, help="folder holding nanoGPT's model.py")
    ap.add_argument("--data", help="folder holding train.bin and val.bin (train)")
    ap.add_argument("--out", default=".bench_scratch/nanogpt_out", help="checkpoint folder (train)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--eval-interval", type=int, default=250)
    ap.add_argument("--eval-iters", type=int, default=20)
    ap.add_argument("--large", action="store_true", help="the 6-layer 384 shape (step)")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast (step)")
    ap.add_argument("--gpt2", action="store_true", help="GPT-2 small's shape, B12 T1024, as bench.py (step)")
    ap.add_argument("--batch", type=int, help="micro-batch (step; default the shape's)")
    ap.add_argument("--vocab", type=int, default=65, help="vocabulary of the random ids (step)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (step)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (step)")
    ap.add_argument("--block", type=int, default=64, help="block size (sample)")
    ap.add_argument("--tokens", type=int, default=500, help="new tokens (sample)")
    args = ap.parse_args()
    print(json.dumps({"train": train, "step": step, "sample": sample}[args.mode](args)))


if __name__ == "__main__":
    main()
