"""Batch-1 decoding speed at GPT-2 small's shape: the CUDA graph, the static step run eagerly, the
dynamic cache and recomputation, with Hugging Face's GPT2LMHeadModel.generate as a reference.

    python -m bench.decode_gpu                         # a CUDA GPU: 12 layers, d768, 12 heads, block 1024
    python -m bench.decode_gpu --dtype bfloat16        # weights in bf16
    python -m bench.decode_gpu --device cpu --small    # a tiny shape on the CPU: checks the script itself
    python -m bench.decode_gpu --variants --profile    # also: the graph path's variants, and a kernel profile

Random weights (GPT-2's initialisation; speed does not depend on the weights), vocabulary 50304.
Every path generates --new-tokens greedy tokens from the same random prompt after an untimed
warm-up generation; tokens/s counts the tokens after the first over the time after the first
(docs/sample.md), so prompt processing and the graph's capture are excluded.  A second, short
generation from a prompt that fills the window checks that every path gives recomputation's
tokens across a window cut.  Hugging Face runs eager (no torch.compile), greedy, same shape, when
`transformers` is importable, with the same weights.  Prints a markdown table; exits 1 if any path's tokens differ.

--variants: after the table, the graph path (the static step off CUDA, as choose_path falls back)
in variants of weights' dtype (float32, bfloat16), GPT.step_attention (sdpa, matmul), compiled
step (core/decode.py COMPILE_MODES: off, block, whole, whole-tuned, whole-gemv) and overlap (the
next step queued before a token is read back, generate's overlap) and the keys' and values' write (one kernel
or two, GPT.paired_kv_write), each against recomputation in its own dtype, in the order of
VARIANTS (what `tformer sample` does on CUDA first, then the A/Bs; --pick 0,4 runs some), with the
warm-up generation's seconds (where a graph is captured and a step compiled).  Each variant runs
alone: a failure or a variant past
--variant-timeout-s prints its row and the next one runs; once the variants together have taken
--variants-budget-s, the rest are skipped (so the section takes at most about budget + timeout).
Their tokens are reported, not required to agree (the exit status is the table's).

--profile: torch.profiler over 20 eager static steps at the middle of the window, in float32 and
bfloat16: the device kernels per step and their time, and the top kernels (on a CPU: operators).
The CUDA graph replays the same kernels without the host's launches, so the device time per step
is about what the graph path can reach with them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import signal
import sys
import time
import traceback

import torch
from torch.profiler import ProfilerActivity, profile

from bench.common import table
from bench.op_profile import kernel_times
from tformer_cli.core import decode
from tformer_cli.core.config import from_dict
from tformer_cli.core.decode import choose_path, path_label
from tformer_cli.core.device import sync
from tformer_cli.core.generate import generate, timed
from tformer_cli.core.model import build_model

GPT2_SMALL = dict(n_layer=12, d_model=768, n_head=12, block_size=1024, vocab=50304)
SMALL = dict(n_layer=2, d_model=64, n_head=4, block_size=64, vocab=512)
PATHS = ("graph", "static", "dynamic", "recompute")
# --variants, in order: (weights' dtype, GPT.step_attention, compile_step, overlap, GPT.paired_kv_write).
# First what `tformer sample` does on a CUDA GPU (float32, auto attention = matmul, no compile,
# overlap, paired write), then the A/Bs: the paired write, the overlap, a compiled step, and the
# same in bfloat16 (--dtype bfloat16); from index 11 the tuned compiles (`sample --compile-step`).
# --pick runs some, by index.
VARIANTS = [
    ("float32", "matmul", "off", True, True),
    ("float32", "matmul", "off", True, False),
    ("float32", "matmul", "off", False, True),
    ("float32", "matmul", "block", True, True),
    ("bfloat16", "sdpa", "off", True, True),
    ("bfloat16", "sdpa", "off", True, False),
    ("bfloat16", "sdpa", "block", True, True),
    ("bfloat16", "sdpa", "whole", True, True),
    ("bfloat16", "sdpa", "whole", True, False),
    ("float32", "matmul", "whole", True, True),
    ("bfloat16", "matmul", "off", True, True),
    ("bfloat16", "sdpa", "whole-tuned", True, True),
    ("bfloat16", "sdpa", "whole-gemv", True, True),
    ("bfloat16", "matmul", "whole-gemv", True, True),
    ("float32", "matmul", "whole-gemv", True, True),
]
PROFILE_STEPS = 20


def build(shape: dict, device: torch.device, dtype: torch.dtype):
    keys = {k: v for k, v in shape.items() if k != "vocab"}
    cfg = from_dict({"model": {**keys, "dropout": 0.0, "activation": "gelu_tanh"}})
    torch.manual_seed(0)
    return build_model(cfg.model, shape["vocab"]).to(device=device, dtype=dtype).eval()


def run_path(model, prompt: list[int], n: int, path: str, compile_step: str | None = None,
             overlap: bool | None = None):
    """(tokens, Speed, the warm-up's seconds) of one greedy generation along ``path``, after a
    warm-up generation of 8 tokens (a graph's capture and a step's compile happen there), timed
    apart.  compile_step and overlap: generate's (None: its defaults)."""
    kw = dict(temperature=0.0, use_cache=path != "recompute", decode="auto" if path == "recompute" else path,
              compile_step=compile_step, overlap=overlap)
    t0 = time.perf_counter()
    list(generate(model, prompt, 8, **kw))
    warmup = time.perf_counter() - t0
    ids, speed = timed(generate(model, prompt, n, **kw))
    return ids, speed, warmup


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


def cut_check(model, block: int, overlap: bool | None = None) -> dict[str, bool]:
    """Whether each path gives recomputation's greedy tokens from a prompt that fills the window
    (so the window is cut at the second token and the cache rebuilt)."""
    prompt = [(7 * i) % 50 for i in range(block - 1)]
    ref = list(generate(model, prompt, 24, temperature=0.0, use_cache=False))
    return {p: list(generate(model, prompt, 24, temperature=0.0, decode=p, overlap=overlap)) == ref
            for p in PATHS[:3]}


def prompt_of(args, shape: dict) -> list[int]:
    """The random prompt every path (and every variant) continues."""
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, shape["vocab"], (args.prompt_tokens,), generator=g).tolist()


def measure(args) -> tuple[list[list[str]], bool]:
    """The table's rows, and whether every path agreed with recomputation."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shape = SMALL if args.small else GPT2_SMALL
    model = build(shape, device, dtype)
    prompt = prompt_of(args, shape)
    overlap = False if args.no_overlap else None
    results = {p: run_path(model, prompt, args.new_tokens, p, overlap=overlap) for p in PATHS
               if p == "recompute" or choose_path(model, p) == p}
    cut = cut_check(model, shape["block_size"], overlap)
    ref = results["recompute"][0]
    rows, ok = [], True
    if "graph" not in results:
        rows.append([path_label(model, "graph"), "-", "-", "-", "not run (needs CUDA)"])
    for p, (ids, speed, _) in results.items():
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


# ---------------------------------------------------------------- --variants


class Models:
    """The benchmark's model in each weight dtype, built on first use (same seed: the same weights,
    rounded) and shared by --variants and --profile."""

    def __init__(self, shape: dict, device: torch.device):
        self.shape, self.device, self.built = shape, device, {}

    def get(self, dtype: str):
        if dtype not in self.built:
            self.built[dtype] = build(self.shape, self.device, getattr(torch, dtype))
        return self.built[dtype]


class VariantTimeout(BaseException):
    """A variant past --variant-timeout-s.  A BaseException, as KeyboardInterrupt is, so that no
    ``except Exception`` on its way out (torch.compile has several) takes it for a failure to handle."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise VariantTimeout in the main thread once ``seconds`` have passed (SIGALRM: Unix; 0: no
    limit).  Python runs the handler between bytecodes: a call stuck in one kernel or sync is not cut."""
    def expire(signum, frame):
        raise VariantTimeout(f"timed out after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_variant(model, prompt: list[int], n: int, attention: str, compiled: str, overlap: bool = True,
                paired: bool = True):
    """(tokens, Speed, warm-up s) of the graph path (the static step off CUDA) with GPT.step_attention
    ``attention``, the step compiled ``compiled`` (generate's compile_step), the next step queued
    before a token is read back where generate does it (on CUDA) or nowhere (generate's overlap),
    and keys and values written by one kernel or two (GPT.paired_kv_write).  The model's two decode
    settings are attributes of the model: set for this variant, put back after it.  A compiled
    step compiles in run_path's untimed warm-up generation."""
    before = model.step_attention, model.paired_kv_write
    model.step_attention, model.paired_kv_write = attention, paired
    try:
        return run_path(model, prompt, n, choose_path(model, "graph"), compile_step=compiled,
                        overlap=None if overlap else False)
    finally:
        model.step_attention, model.paired_kv_write = before


def variant_name(variant: tuple) -> str:
    dtype, attention, compiled, overlap, paired = variant
    how = {"off": "", "block": ", compiled by block", "whole": ", compiled whole",
           "whole-tuned": ", compiled whole, tuned",
           "whole-gemv": ", compiled whole, tuned, one-row layers as reductions"}[compiled]
    return (f"{dtype}, {attention}" + how
            + ("" if overlap else ", no overlap") + ("" if paired else ", keys and values written apart"))


def variant_cells(models: Models, refs: dict, prompt: list[int], n: int, variant: tuple) -> list[str]:
    """tokens/s, ms/token, the warm-up's seconds and agreement of one variant; ``refs`` keeps each
    dtype's recomputed tokens."""
    dtype, attention, compiled, overlap, paired = variant
    model = models.get(dtype)
    if dtype not in refs:
        refs[dtype] = list(generate(model, prompt, n, temperature=0.0, use_cache=False))
    ids, speed, warmup = run_variant(model, prompt, n, attention, compiled, overlap, paired)
    return [f"{speed.tokens_per_s:,.0f}", f"{speed.ms_per_token:.3f}", f"{warmup:.1f}",
            "yes" if ids == refs[dtype] else "**no**"]


def one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300].replace("|", "/")


def print_variants(args, models: Models, prompt: list[int]) -> None:
    """--variants' table, printed a row at a time, so a log keeps every row measured before a crash.
    A failed variant's traceback goes to stderr."""
    label = path_label(models.get("float32"), choose_path(models.get("float32"), "graph"))
    print(f"\nvariants of the graph path (here: {label}), {args.new_tokens} greedy tokens after the same "
          f"prompt, each against recomputation in its dtype; time per variant <= {args.variant_timeout_s:g} s, "
          f"later variants skipped after {args.variants_budget_s:g} s\n")
    print(table(["variant", "tokens/s", "ms/token", "warm-up s (8 tokens: capture, compile)",
                 "same tokens as its dtype's recompute"], []), flush=True)
    refs: dict[str, list[int]] = {}
    start = time.perf_counter()
    picked = [VARIANTS[i] for i in args.pick] if args.pick else VARIANTS
    for variant in picked:
        name = variant_name(variant)
        spent = time.perf_counter() - start
        if spent > args.variants_budget_s:
            cells = ["-", "-", "-", f"skipped: the variants have taken {spent:.0f} s of {args.variants_budget_s:g}"]
        else:
            try:
                with time_limit(args.variant_timeout_s):
                    cells = variant_cells(models, refs, prompt, args.new_tokens, variant)
            except (Exception, VariantTimeout) as e:
                cells = ["-", "-", "-", f"failed: {one_line(e)}"]
                print(f"decode_gpu.py: variant {name} failed:\n{traceback.format_exc(limit=-8)}", file=sys.stderr)
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    print(f"(variants: {time.perf_counter() - start:.0f} s in all)", flush=True)


# ---------------------------------------------------------------- --profile


def profile_steps(model, pos: int, steps: int):
    """(profiler, wall seconds per step) over ``steps`` eager static steps at window position ``pos``
    (after a prefill of ``pos`` tokens and 3 unprofiled steps).  Each step writes the same token's
    keys at row ``pos`` again, as the graph's warm-up does, so every step is the same work."""
    device = next(model.parameters()).device
    stepper = decode.StaticStepper(model, True, compile_step="off")
    window = torch.randint(0, model.vocab_size, (pos,), generator=torch.Generator().manual_seed(2)).tolist()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.inference_mode():
        tok = stepper.prefill(window).argmax(-1, keepdim=True)
        for _ in range(3):
            stepper.extend(tok, pos)
        sync(device)
        with profile(activities=activities) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                stepper.extend(tok, pos)
            sync(device)
            wall = time.perf_counter() - t0
    return prof, wall / steps


def kernel_lines(prof, steps: int, top: int = 15) -> list[str]:
    """The device's side of a profile: kernels per step, device time per step, the top kernels
    (whole names, last on the line: a log is read, not a terminal)."""
    times = kernel_times(prof.events())
    launches, total = sum(len(us) for us in times.values()), sum(sum(us) for us in times.values())
    lines = [f"{launches / steps:.1f} device kernels per step (copies and fills included), "
             f"{total / steps / 1000:.3f} ms of device time per step",
             f"{'us/step':>9s} {'share':>6s} {'calls/step':>10s} {'us/call':>8s}  kernel"]
    for name, us in sorted(times.items(), key=lambda kv: -sum(kv[1]))[:top]:
        lines.append(f"{sum(us) / steps:9.1f} {100 * sum(us) / (total or 1):5.1f}% {len(us) / steps:10.1f} "
                     f"{sum(us) / len(us):8.2f}  {name}")
    return lines


def cpu_op_lines(prof, steps: int, top: int = 15) -> list[str]:
    """The CPU's side (no device): operators by self CPU time, per step, whole names last."""
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    lines = [f"{sum(e.count for e in events) / steps:.1f} operator calls per step (nested ones included), "
             f"{total / steps / 1000:.3f} ms of CPU self time per step",
             f"{'us/step':>9s} {'share':>6s} {'calls/step':>10s} {'us/call':>8s}  operator"]
    for e in events[:top]:
        lines.append(f"{e.self_cpu_time_total / steps:9.1f} {100 * e.self_cpu_time_total / (total or 1):5.1f}% "
                     f"{e.count / steps:10.1f} {e.self_cpu_time_total / e.count:8.2f}  {e.key}")
    return lines


def print_profile(args, models: Models) -> None:
    """--profile: each weight dtype's eager static step at the middle of the window, by kernel."""
    pos = models.shape["block_size"] // 2
    for dtype in ("float32", "bfloat16"):
        attention = decode.resolved_step_attention(models.get(dtype))
        print(f"\nprofile: {PROFILE_STEPS} eager static steps (step_attention {attention}) at window position {pos}, "
              f"{dtype}, {args.device}", flush=True)
        try:
            prof, wall = profile_steps(models.get(dtype), pos, PROFILE_STEPS)
            print(f"{1000 * wall:.3f} ms per step of wall time under the profiler")
            lines = (kernel_lines if args.device.startswith("cuda") else cpu_op_lines)(prof, PROFILE_STEPS)
            print("\n".join(lines), flush=True)
        except Exception as e:
            print(f"failed: {one_line(e)}", flush=True)
            print(f"decode_gpu.py: profile {dtype} failed:\n{traceback.format_exc(limit=-8)}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--small", action="store_true", help="a tiny shape (2 layers, d64, block 64), for the CPU")
    ap.add_argument("--new-tokens", type=int, default=None, help="default 512 (48 with --small)")
    ap.add_argument("--prompt-tokens", type=int, default=None, help="default 64 (8 with --small)")
    ap.add_argument("--variants", action="store_true",
                    help="also the graph path's variants: dtype, step attention, compiled step, overlap")
    ap.add_argument("--pick", type=lambda s: [int(i) for i in s.split(",")], default=None,
                    help="the variants to run, by index into VARIANTS (e.g. 0,4,7; default all)")
    ap.add_argument("--variant-timeout-s", type=float, default=60.0, help="a variant's time limit (default 60)")
    ap.add_argument("--variants-budget-s", type=float, default=150.0,
                    help="skip the remaining variants once the variants have taken this long (default 150)")
    ap.add_argument("--profile", action="store_true",
                    help=f"also profile {PROFILE_STEPS} eager static steps in float32 and bfloat16, by kernel")
    ap.add_argument("--no-paths", action="store_true", help="without the table of paths (with --variants or --profile)")
    ap.add_argument("--no-overlap", action="store_true",
                    help="in the table of paths, read each token back before queuing the next step "
                         "(generate's overlap=False); each of --variants says its own")
    args = ap.parse_args()
    args.new_tokens = args.new_tokens or (48 if args.small else 512)
    args.prompt_tokens = args.prompt_tokens or (8 if args.small else 64)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("decode_gpu.py: no CUDA device here (torch.cuda.is_available() is False); run it on a "
                 "GPU machine, or check the script on the CPU with --device cpu --small")
    if args.device == "cpu":
        torch.set_num_threads(1)
    ok = True
    print(header(args) + "\n")
    if not args.no_paths:
        rows, ok = measure(args)
        print(table(["path", "tokens/s", "ms/token", "time to first token (ms)", "same tokens as recompute"], rows))
        sys.stdout.flush()
    if args.variants or args.profile:
        shape = SMALL if args.small else GPT2_SMALL
        models = Models(shape, torch.device(args.device))
        if args.profile:  # first: seconds, and the answer to why the graph takes what it takes
            print_profile(args, models)
        if args.variants:
            print_variants(args, models, prompt_of(args, shape))
    if not ok:
        sys.exit("decode_gpu.py: a path's tokens differ from recomputation (see the table)")


if __name__ == "__main__":
    main()
