"""Where the time of a training step or of one generated token goes, by PyTorch operator.

    python -m bench.op_profile train                    # nanoGPT's CPU shape (shakespeare_char preset)
    python -m bench.op_profile train --set model.n_layer=6 --set model.n_head=6 --set model.d_model=384 \\
        --set model.block_size=256 --set model.dropout=0.2 --set train.batch_size=16
    python -m bench.op_profile decode --set model.block_size=256   # one cached token at a time
    python -m bench.op_profile train --nanogpt .bench_scratch/nanogpt  # nanoGPT's step, same shape
    python -m bench.op_profile train --device cuda --gpt2 --top 15     # GPT-2 small B12 T1024 V50304 bf16

Random weights and token ids (speed does not depend on them); prints the operators with the most
self time, as a share of the total and in microseconds per call, plus the timed matmul peaks.  On
CUDA (bf16 autocast, eager unless --compile) it prints the kernels with the most GPU time instead,
and the shares of matmul, attention, cross-entropy, optimizer and the rest, classified by kernel
name (KINDS below).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from tformer_cli.core.config import parse_set, resolve
from tformer_cli.core.device import autocast, sync, timed_matmul, tune_cpu_allocator
from tformer_cli.core.generate import generate
from tformer_cli.core.model import build_model
from tformer_cli.train.optim import make_optimizer

VOCAB = 65
GPT2 = ["model.n_layer=12", "model.n_head=12", "model.d_model=768", "model.block_size=1024", "model.dropout=0.0",
        "model.bias=false", "train.batch_size=12", "train.grad_accum=1"]
# kernel name fragments (lower case), first match wins: eager kernels (cuBLAS/CUTLASS, flash, softmax and
# nll_loss, fused AdamW and the clip's multi-tensor kernels) and inductor's fused Triton kernels
KINDS = (("attention", ("flash", "fmha", "attention", "sdpa")),
         ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "sm90_", "sm80_", "ampere_", "triton_tem")),
         ("cross-entropy", ("log_softmax", "softmax", "nll_loss", "cross_entropy")),
         ("optimizer", ("adam", "multi_tensor", "foreach")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("train", "decode"))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="a config override, as in tformer")
    ap.add_argument("--steps", type=int, default=10, help="profiled steps (train) or tokens x 10 (decode)")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--nanogpt", help="profile nanoGPT's model.py from this folder instead (train, "
                    "shakespeare_char shape; the suite copies it to .bench_scratch/nanogpt)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast there)")
    ap.add_argument("--gpt2", action="store_true", help="GPT-2 small's shape, B12 T1024 (vocabulary --vocab)")
    ap.add_argument("--vocab", type=int, help=f"vocabulary of the random ids (default {VOCAB}; 50304 with --gpt2)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (train, CUDA)")
    args = ap.parse_args()
    if args.nanogpt and (args.what != "train" or args.device != "cpu"):
        ap.error("--nanogpt profiles a CPU training step only")
    tune_cpu_allocator()
    device = torch.device(args.device)
    vocab = args.vocab or (50304 if args.gpt2 else VOCAB)
    cfg = resolve(preset="shakespeare_char", overrides=parse_set((GPT2 if args.gpt2 else []) + args.sets))
    torch.manual_seed(0)
    model, opt = _nanogpt(args.nanogpt) if args.nanogpt else (build_model(cfg.model, vocab).to(device), None)
    if args.what == "train":
        work = _train_work(model, opt, cfg, vocab, device, args)
    else:
        model.eval()

        def work() -> None:
            for _ in generate(model, [1, 2, 3], 10, temperature=0):
                pass
    _profile(work, args, device)


def _train_work(model, opt, cfg, vocab: int, device: torch.device, args):
    """One training step on a fixed random batch: forward (bf16 autocast on CUDA), backward, clip, AdamW."""
    loss_of = (lambda x: model(x, x)[1]) if args.nanogpt else (lambda x: run(x, x).loss)
    run = torch.compile(model) if args.compile else model
    opt = opt or make_optimizer(model, cfg, device)
    x = torch.randint(0, vocab, (cfg.train.batch_size, cfg.model.block_size), device=device)
    ctx = (lambda: autocast(device, torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext

    def work() -> None:
        with ctx():
            loss = loss_of(x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return work


def _profile(work, args, device: torch.device) -> None:
    """Warm up, profile --steps calls, print the table (operators on the CPU, kernels on CUDA)."""
    for _ in range(3 if args.compile else 2):
        work()
    sync(device)
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            work()
        sync(device)
        wall = time.perf_counter() - t0
    unit = "step" if args.what == "train" else "token"
    per = args.steps if args.what == "train" else 10 * args.steps
    print(f"{args.what}: {1000 * wall / per:.2f} ms per {unit} under the profiler on {device.type}"
          f"{' (compiled)' if args.compile else ''}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    if cuda:
        _kernel_table(prof, per, unit, args.top)
    else:
        _cpu_table(prof, per, unit, args.top)
    for dtype in (torch.float32, torch.bfloat16):
        print(f"timed matmul peak, {str(dtype)[6:]}: {timed_matmul(device, dtype) / 1e9:.0f} GFLOP/s")


def _cpu_table(prof, per: int, unit: str, top: int) -> None:
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{'operator':45s} {'share':>7s} {'calls/' + unit:>12s} {'us/call':>9s}")
    for e in events[:top]:
        print(f"{e.key[:45]:45s} {100 * e.self_cpu_time_total / total:6.1f}% {e.count / per:12.1f} "
              f"{e.self_cpu_time_total / e.count:9.1f}")


def kernel_times(events) -> dict[str, list[float]]:
    """{kernel name: [microseconds of each launch]} of the profiler's GPU events (kernels, copies)."""
    out: dict[str, list[float]] = {}
    for e in events:
        if getattr(e, "device_type", None) != DeviceType.CUDA:
            continue
        out.setdefault(e.name, []).append(e.time_range.elapsed_us())  # a GPU event's own span
    return out


def kind_of(name: str) -> str:
    low = name.lower()
    return next((kind for kind, parts in KINDS if any(p in low for p in parts)), "other")


def kernel_shares(times: dict[str, list[float]]) -> dict[str, float]:
    """The share of GPU time of each kind (matmul, attention, cross-entropy, optimizer, other)."""
    total = sum(sum(v) for v in times.values()) or 1.0
    shares = {kind: 0.0 for kind, _ in KINDS} | {"other": 0.0}
    for name, us in times.items():
        shares[kind_of(name)] += sum(us) / total
    return shares


def _kernel_table(prof, per: int, unit: str, top: int) -> None:
    times = kernel_times(prof.events())
    total = sum(sum(v) for v in times.values()) or 1.0
    print(f"GPU time: {total / 1000 / per:.2f} ms per {unit}")
    print(f"{'kernel':52s} {'kind':>13s} {'share':>7s} {'calls/' + unit:>11s} {'us/call':>9s}")
    for name, us in sorted(times.items(), key=lambda kv: -sum(kv[1]))[:top]:
        print(f"{name[:52]:52s} {kind_of(name):>13s} {100 * sum(us) / total:6.1f}% {len(us) / per:11.1f} "
              f"{sum(us) / len(us):9.1f}")
    print("shares: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in kernel_shares(times).items()))


def _nanogpt(folder: str):
    """nanoGPT's GPT at the shakespeare_char shape and its own AdamW (bench/nanogpt_driver.py)."""
    import sys

    from bench import nanogpt_driver

    model = nanogpt_driver.build(folder, nanogpt_driver.SMALL, VOCAB)
    with contextlib.redirect_stdout(sys.stderr):
        return model, model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")


if __name__ == "__main__":
    main()
