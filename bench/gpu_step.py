"""Training steps of tformer and nanoGPT side by side in ONE CUDA process, interleaved block by block.

    python -m bench.gpu_step --nanogpt .bench_scratch/nanogpt \\
        tformer:compiled:B12:V50304 nanogpt:compiled:B12:V50304 tformer:eager:B12:V50304

A variant is PROJECT:MODE:B<micro-batch>:V<vocabulary>[:x<model.vocab_multiple>][:medium|large] at
GPT-2 small's shape (12 layers, d768, T1024, dropout 0, no biases, bf16 autocast, clip 1.0, fused
AdamW) or, named, GPT-2 medium's (24 layers, d1024) or large's (36, d1280).  tformer's step is
the one `tformer bench` times (tformer_cli.train.bench.StepBench), nanoGPT's the one of
bench/nanogpt_driver.py.  Every variant is built and warmed up (compiled) first; then --blocks rounds,
each timing --steps steps of every variant in turn (A B C A B C ...), synchronised only at the ends
of a block, so that drift hits every variant alike and no per-step sync is added.  One process
shares the card, the allocator and the inductor cache; dynamic shapes are off so that a second
micro-batch compiles a static graph of its own.  One JSON object per line on stdout: the card and
its timed bf16 matmul first, then each variant's figures, then every block as it ends, so that a
run cut short still leaves what it measured (bench/suite.py reads them).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from bench.common import SCRATCH

SHAPE = {"model.n_layer": 12, "model.n_head": 12, "model.d_model": 768, "model.block_size": 1024,
         "model.dropout": 0.0, "model.bias": False}


SHAPES = {  # GPT-2's sizes (T1024); a variant names one after its vocabulary, small when it names none
    "small": {},
    "medium": {"model.n_layer": 24, "model.n_head": 16, "model.d_model": 1024},
    "large": {"model.n_layer": 36, "model.n_head": 20, "model.d_model": 1280},
}


def parse_variant(text: str) -> dict:
    """'tformer:compiled:B12:V50304[:x64][:medium]' -> {project, compiled, batch, vocab, multiple, shape, name}."""
    parts = text.split(":")
    extra = parts[4:]
    shape = next((p for p in extra if p in SHAPES), "small")
    pads = [p for p in extra if p not in SHAPES]
    if len(parts) < 4 or parts[0] not in ("tformer", "nanogpt") or parts[1] not in ("compiled", "eager") \
            or parts[2][:1] != "B" or parts[3][:1] != "V" or len(pads) > 1 or any(p[:1] != "x" for p in pads) \
            or len(extra) - len(pads) > 1:
        raise ValueError(f"variant {text!r}: expected "
                         f"tformer|nanogpt:compiled|eager:B<n>:V<n>[:x<n>][:{'|'.join(SHAPES)}]")
    multiple = int(pads[0][1:]) if pads else 1
    if parts[0] == "nanogpt" and (multiple != 1 or shape != "small"):
        raise ValueError(f"variant {text!r}: nanoGPT runs GPT-2 small with its padded vocabulary only (V50304)")
    return {"project": parts[0], "compiled": parts[1] == "compiled", "batch": int(parts[2][1:]),
            "vocab": int(parts[3][1:]), "multiple": multiple, "shape": shape, "name": text}


def config(v: dict, device: str = "cuda", sets: dict | None = None):
    """tformer's config of a variant (nanoGPT's variants use it for their FLOP count only); ``sets``
    shrink the shape for a check of this script on the CPU."""
    from tformer_cli.core.config import resolve

    return resolve(preset="gpt2_small", overrides={
        **SHAPE, **SHAPES[v.get("shape", "small")], "model.vocab_multiple": v["multiple"],
        "train.batch_size": v["batch"], "train.grad_accum": 1,
        "train.device": device, "train.dtype": "bfloat16", "train.compile": v["compiled"], "train.grad_clip": 1.0,
        **(sets or {})})


def build(v: dict, nanogpt: str | None, device: str = "cuda", sets: dict | None = None):
    """The variant's step as a callable (model, optimizer and a fixed random batch on the card)."""
    if v["project"] == "tformer":
        from tformer_cli.train.bench import StepBench

        return StepBench(config(v, device, sets), v["vocab"]).train_step
    from bench import nanogpt_driver

    shape = {**nanogpt_driver.GPT2, "batch": v["batch"]}
    return nanogpt_driver.train_step(nanogpt, shape, v["vocab"], device, v["compiled"], bf16=True)


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def timed_block(step, n: int, device: torch.device) -> float:
    """Seconds per step over n back-to-back steps (one sync before, one after)."""
    from tformer_cli.core.device import sync

    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--nanogpt", default=os.path.join(SCRATCH, "nanogpt"))
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps of each variant (compiles)")
    ap.add_argument("--steps", type=int, default=10, help="steps per block")
    ap.add_argument("--blocks", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--device", default="cuda", help="cuda; cpu only checks the script (tformer variants, --set)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="a shape override, for the CPU check")
    args = ap.parse_args()
    variants = [parse_variant(v) for v in args.variants]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_step: no CUDA device")
    run(variants, args)


def run(variants: list[dict], args) -> None:
    """Card and matmul, then every variant built and warmed up, then the interleaved blocks."""
    import torch._dynamo

    from tformer_cli.core import anatomy
    from tformer_cli.core import device as dev
    from tformer_cli.core.config import parse_set

    torch._dynamo.config.automatic_dynamic_shapes = False  # each micro-batch: its own static graph
    torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
    device, sets = torch.device(args.device), parse_set(args.sets)
    dev.setup_backends(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    sheet = dev.datasheet_peak(name) if device.type == "cuda" else None
    emit(kind="card", device=name, torch=torch.__version__,
         matmul_flops=dev.timed_matmul(device, torch.bfloat16), datasheet_flops=sheet[1] if sheet else None)
    steps = {}
    for v in variants:
        if device.type == "cuda":  # the earlier variants' cached activations: free for this one's check_fits
            torch.cuda.empty_cache()
        t0 = time.perf_counter()
        steps[v["name"]] = step = build(v, args.nanogpt, args.device, sets)
        for _ in range(args.warmup):
            step()
        dev.sync(device)
        cfg = config(v, args.device, sets)
        emit(kind="variant", name=v["name"], warmup_s=time.perf_counter() - t0,
             tokens_per_step=v["batch"] * cfg.model.block_size,
             flops_per_token=anatomy.totals(cfg.model, v["vocab"]).flops_per_token)
    for block in range(args.blocks):
        for name, step in steps.items():
            emit(kind="block", name=name, block=block, step_s=timed_block(step, args.steps, device))


if __name__ == "__main__":
    main()
