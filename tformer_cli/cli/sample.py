"""`tformer sample`: stream text from a trained run, with a KV cache, and report its speed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from tformer_cli.cli.options import JsonOpt

HELP = (
    "Generate text from a trained run, streaming tokens as they are produced, then report new tokens, "
    "time to first token and tokens/s (prompt processing excluded) on stderr.\n\n"
    "The prompt comes from --prompt, --prompt-file (- for stdin), or stdin when it is not a terminal. "
    "An empty prompt starts from a newline token (token 0 if the vocabulary has none).\n\n"
    "Context window: the model sees at most model.block_size tokens. A longer prompt keeps its newest "
    "block_size tokens. When the text outgrows the window, the window is cut to its newest "
    "max(1, block_size // 2) tokens, which move to positions 0..; the KV cache is rebuilt by one forward "
    "pass over them. --no-kv-cache recomputes the same window at every step, so greedy output is "
    "identical either way.\n\n"
    "A model trained with model.causal=false generates by recomputation (a cache is not valid for "
    "bidirectional attention); a train.objective=mlm model cannot generate.\n\n"
    "--dtype sets the precision of the weights and the KV cache for generation: float32 (the default) "
    "keeps the cache's greedy tokens those of recomputation; bfloat16 and float16 are faster on a GPU, "
    "but round the two paths' logits differently, so greedy tokens can part where two candidates are "
    "nearly tied (docs/sample.md). The run's weights stay float32 on disk.\n\n"
    "--decode picks how each cached token is computed: auto (a CUDA graph on CUDA, the dynamic cache "
    "elsewhere), graph, static or dynamic; the tokens are the same. A path the model or device cannot "
    "take falls back (graph off CUDA runs the static step; an LSTM always uses its state).\n\n"
    "--compile-step compiles that step with torch.compile before the first token (graph and static "
    "paths only): off (the default), block, whole, whole-tuned or whole-gemv. On a GPU it makes each "
    "token faster, after a compile of tens of seconds (docs/sample.md).\n\n"
    "Examples:\n\n"
    "  tformer sample runs/<RUN> --prompt 'ROMEO:' --max-new-tokens 300\n\n"
    "  tformer sample runs/<RUN> --temperature 0 --json\n\n"
    "  echo 'First Citizen:' | tformer sample runs/<RUN> --top-k 40 --seed 7\n\n"
    "  tformer sample runs/<RUN> --bench"
)

DEFAULT_NEW_TOKENS = 200
BENCH_NEW_TOKENS = 500


def sample(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `tformer train`.",
                                            show_default=False)],
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="The text to continue.",
                                                  show_default=False)] = None,
    prompt_file: Annotated[Optional[Path], typer.Option("--prompt-file", help="Read the prompt from a "
                                                        "UTF-8 file (- for stdin).", show_default=False)] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(
        "--max-new-tokens", help=f"New tokens per sample [default: {DEFAULT_NEW_TOKENS}; "
        f"{BENCH_NEW_TOKENS} with --bench].", show_default=False)] = None,
    temperature: Annotated[float, typer.Option("--temperature", help="Softmax temperature; 0 is greedy.")] = 1.0,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Sample from the k most likely tokens.",
                                                 show_default=False)] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p", help="Nucleus sampling: the most likely "
                                                   "tokens holding this much probability.",
                                                   show_default=False)] = None,
    num_samples: Annotated[int, typer.Option("--num-samples", help="How many samples.")] = 1,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed (same seed and settings give "
                                                "the same text) [default: a fresh one, reported].",
                                                show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N, mps.")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="Weights and KV cache: float32, bfloat16 or "
                                       "float16 (faster on a GPU; docs/sample.md).")] = "float32",
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads for torch "
                                                   "[default: torch's choice]. One thread is often "
                                                   "fastest for small models on a busy machine.",
                                                   show_default=False)] = None,
    no_kv_cache: Annotated[bool, typer.Option("--no-kv-cache", help="Recompute the whole window at "
                                              "every step (for comparison).")] = False,
    decode: Annotated[str, typer.Option("--decode", help="How cached tokens are computed: auto, graph "
                                         "(CUDA), static or dynamic (docs/sample.md).")] = "auto",
    compile_step: Annotated[str, typer.Option("--compile-step", help="Compile the cached step of the graph "
                                              "and static paths with torch.compile: off, block, whole, "
                                              "whole-tuned or whole-gemv. Faster tokens after a compile "
                                              "before the first (seconds to minutes; docs/sample.md).")] = "off",
    skip_unknown: Annotated[bool, typer.Option("--skip-unknown", help="Drop prompt characters the "
                                               "tokenizer does not know instead of failing.")] = False,
    json_: JsonOpt = False,
    bench: Annotated[bool, typer.Option("--bench", help="Time generation with and without the KV cache "
                                        "and print both tokens/s and their ratio.")] = False,
) -> None:
    from tformer_cli.core.prompt import prompt_ids, read_prompt
    from tformer_cli.render.sample import note
    from tformer_cli.run.checkpoint import find

    _check_options(max_new_tokens, temperature, top_k, top_p, num_samples, threads, seed, decode, no_kv_cache,
                   dtype, compile_step)
    find(run_dir)  # a missing run or checkpoint fails before waiting on stdin
    text = read_prompt(prompt, prompt_file)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    session = _load(run_dir, device, dtype)
    ids = prompt_ids(session.tokenizer, text, skip_unknown, note=note)
    if seed is None:
        import random

        seed = random.SystemRandom().randrange(2**31)
    _check_compiled_path(session, decode, compile_step, not no_kv_cache)
    if not session.cfg.model.causal:  # once the options are known to be usable
        from tformer_cli.render.sample import warn_bidirectional

        warn_bidirectional()
    if compile_step != "off":  # the first token waits for it, with nothing else on the screen
        note(f"compiling the decode step ({compile_step}) before the first token: seconds on a CPU, "
             "tens of seconds on a GPU")
    settings = dict(temperature=temperature, top_k=top_k, top_p=top_p, decode=decode, compile_step=compile_step)
    if bench:
        _bench(session, ids, max_new_tokens or BENCH_NEW_TOKENS, seed, settings, json_)
    else:
        _sample(session, ids, max_new_tokens or DEFAULT_NEW_TOKENS, num_samples, seed, settings,
                not no_kv_cache, json_)


def register(app: typer.Typer) -> None:
    app.command(help=HELP, short_help="Generate text from a trained run and report its speed.")(sample)


# ---------------------------------------------------------------- input


def _check_options(max_new_tokens, temperature, top_k, top_p, num_samples, threads, seed=None,
                   decode="auto", no_kv_cache=False, dtype="float32", compile_step="off") -> None:
    from tformer_cli.core.config import PRECISIONS
    from tformer_cli.core.decode import compile_problems, decode_problems
    from tformer_cli.core.generate import sampling_problems
    from tformer_cli.errors import ConfigError

    problems = [f"--{p.replace('_', '-')}"
                for p in sampling_problems(temperature, top_k, top_p) + decode_problems(decode)
                + compile_problems(compile_step)]
    if dtype not in PRECISIONS:
        problems.append(f"--dtype must be one of {', '.join(PRECISIONS)}, got {dtype[:40]!r}")
    if no_kv_cache and decode != "auto":
        problems.append(f"--no-kv-cache recomputes every token: it cannot be combined with --decode {decode}")
    if no_kv_cache and compile_step != "off":
        problems.append("--no-kv-cache recomputes every token: there is no cached step for --compile-step to compile")
    if max_new_tokens is not None and max_new_tokens < 1:
        problems.append(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if num_samples < 1:
        problems.append(f"--num-samples must be >= 1, got {num_samples}")
    if threads is not None and threads < 1:
        problems.append(f"--threads must be >= 1, got {threads}")
    cpus = os.cpu_count() or 1
    if threads is not None and threads > cpus:
        problems.append(f"--threads must be at most {cpus} (the CPUs of this machine), got {threads}")
    if seed is not None and not 0 <= seed < 2**63:
        problems.append(f"--seed must be in [0, 2**63 - 1], got {str(seed)[:40]}")
    if max_new_tokens is not None and max_new_tokens > 10**9:
        problems.append(f"--max-new-tokens must be at most 1,000,000,000, got {str(max_new_tokens)[:40]}")
    if num_samples > 10**6:
        problems.append(f"--num-samples must be at most 1,000,000, got {str(num_samples)[:40]}")
    if problems:
        raise ConfigError(problems, hint="see tformer sample --help")


def _check_compiled_path(session, decode: str, compile_step: str, use_cache: bool) -> None:
    """--compile-step compiles the static step: refuse it where generation will not take one."""
    from tformer_cli.core.decode import STATIC_PATHS, choose_path
    from tformer_cli.errors import ConfigError

    path = choose_path(session.model, decode, use_cache)
    if compile_step == "off" or path in STATIC_PATHS:
        return
    if path == "recompute":  # --no-kv-cache is refused before loading: a bidirectional model
        raise ConfigError("--compile-step compiles the static decode step, and a bidirectional model "
                          "(model.causal=false) recomputes every token without one", hint="drop --compile-step")
    if not getattr(session.model, "supports_static_step", False):
        raise ConfigError(f"--compile-step compiles the static decode step, which this model does not have "
                          f"(it decodes with its {session.model.cache_name})", hint="drop --compile-step")
    raise ConfigError(f"--compile-step compiles the static decode step, and this generation takes the {path} "
                      f"path (--decode {decode}, {session.device})",
                      hint="add --decode static (on a CUDA device, auto takes the CUDA graph)")


def _label(session, path: str, compile_step: str) -> str:
    """The path's name in output, with the step's compile where there is one."""
    from tformer_cli.core.decode import path_label

    return path_label(session.model, path) + ("" if compile_step == "off" else f", step compiled {compile_step}")


class _Session:
    def __init__(self, model, tokenizer, cfg, device):
        self.model, self.tokenizer, self.cfg, self.device = model, tokenizer, cfg, device

    @property
    def dtype(self) -> str:
        from tformer_cli.core.device import dtype_name

        return dtype_name(next(self.model.parameters()).dtype)


def _load(run_dir: Path, device: str, dtype: str = "float32") -> _Session:
    """Load the run in ``dtype`` (--dtype) and refuse what cannot generate (the caller warns once
    for a bidirectional model)."""
    from tformer_cli.core.device import resolve_dtype
    from tformer_cli.errors import ConfigError, RunError
    from tformer_cli.run.load import load_for_inference

    model, tokenizer, cfg, ckpt, dev = load_for_inference(run_dir, device)
    if cfg.train.objective == "mlm":
        raise ConfigError(f"{run_dir} is a masked language model (train.objective=mlm): it predicts masked "
                          "tokens from both sides and has no next-token distribution to sample from",
                          hint="sample from a run trained with train.objective=clm")
    padded = tokenizer.kind == "hf" and tokenizer.vocab_size < ckpt.vocab_size  # imported: rows past the tokenizer
    if tokenizer.vocab_size != ckpt.vocab_size and not padded:
        raise RunError(f"tokenizer.json in {run_dir} has {tokenizer.vocab_size} tokens, the checkpoint's "
                       f"model {ckpt.vocab_size}", hint="the run directory mixes files of different runs")
    model.to(resolve_dtype(dtype, dev, what="--dtype"))
    return _Session(model, tokenizer, cfg, dev)


# ---------------------------------------------------------------- output


def _generator(session: _Session, seed: int):
    import torch

    return torch.Generator(device=session.device).manual_seed(seed)


def _sample(session: _Session, ids: list[int], n: int, num_samples: int, seed: int, settings: dict,
            use_cache: bool, json_: bool) -> None:
    from tformer_cli.core import generate as gen
    from tformer_cli.core.decode import choose_path
    from tformer_cli.core.prompt import IncrementalDecoder
    from tformer_cli.render.sample import TextStream

    g = _generator(session, seed)  # one generator for all samples: sample i differs, the run repeats
    samples, speeds = [], []
    for i in range(num_samples):
        stream = None if json_ else TextStream(IncrementalDecoder(session.tokenizer, ids))
        if stream is not None:
            stream.begin(i, session.tokenizer.decode(ids))
        new, speed = gen.timed(gen.generate(session.model, ids, n, generator=g, use_cache=use_cache, **settings),
                               on_token=stream)
        if stream is not None:
            stream.end()
        samples.append({"text": session.tokenizer.decode(new), "tokens": new, **speed.to_dict()})
        speeds.append(speed)
    total = gen.combine(speeds)
    path = choose_path(session.model, settings["decode"], use_cache)
    if json_:
        from tformer_cli.render.console import print_json

        print_json({"prompt": session.tokenizer.decode(ids), "prompt_tokens": len(ids), "seed": seed,
                    "device": str(session.device), "dtype": session.dtype, "kv_cache": path != "recompute",
                    **settings, "decode_path": path, "samples": samples, "total": total.to_dict()})
    else:
        from tformer_cli.render.sample import print_speed

        print_speed(total, _label(session, path, settings["compile_step"]), f"{session.device}, {session.dtype}", seed)


def _bench(session: _Session, ids: list[int], n: int, seed: int, settings: dict, json_: bool) -> None:
    import torch

    from tformer_cli.core.generate import bench_cache
    from tformer_cli.render.console import console, print_json
    from tformer_cli.render.sample import show_cache_bench

    r = bench_cache(session.model, ids, n, seed=seed, **settings)
    threads = torch.get_num_threads()
    if json_:
        print_json({"device": str(session.device), "dtype": session.dtype, "threads": threads, "seed": seed,
                    **settings, **r.to_dict()})
        return
    where = f"{session.device}, {session.dtype}" + (f", {threads} threads" if session.device.type == "cpu" else "")
    show_cache_bench(console(), r, session.cfg.model, where, session.dtype)
