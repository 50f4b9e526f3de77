"""`tformer sample`: stream text from a trained run, with a KV cache, and report its speed."""

from __future__ import annotations

import sys
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
    "Examples:\n\n"
    "  tformer sample runs/<RUN> --prompt 'ROMEO:' --max-new-tokens 300\n\n"
    "  tformer sample runs/<RUN> --temperature 0 --json\n\n"
    "  echo 'First Citizen:' | tformer sample runs/<RUN> --top-k 40 --seed 7\n\n"
    "  tformer sample runs/<RUN> --bench"
)

DEFAULT_NEW_TOKENS = 200
BENCH_NEW_TOKENS = 500


def register(app: typer.Typer) -> None:
    @app.command(help=HELP)
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
        threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads for torch "
                                                       "[default: torch's choice]. One thread is often "
                                                       "fastest for small models on a busy machine.",
                                                       show_default=False)] = None,
        no_kv_cache: Annotated[bool, typer.Option("--no-kv-cache", help="Recompute the whole window at "
                                                  "every step (for comparison).")] = False,
        skip_unknown: Annotated[bool, typer.Option("--skip-unknown", help="Drop prompt characters the "
                                                   "tokenizer does not know instead of failing.")] = False,
        json_: JsonOpt = False,
        bench: Annotated[bool, typer.Option("--bench", help="Time generation with and without the KV cache "
                                            "and print both tokens/s and their ratio.")] = False,
    ) -> None:
        from tformer_cli.run.checkpoint import find

        _check_options(max_new_tokens, temperature, top_k, top_p, num_samples, threads)
        find(run_dir)  # a missing run or checkpoint fails before waiting on stdin
        text = read_prompt(prompt, prompt_file)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        session = _load(run_dir, device)
        ids = prompt_ids(session.tokenizer, text, skip_unknown)
        if seed is None:
            import random

            seed = random.SystemRandom().randrange(2**31)
        settings = dict(temperature=temperature, top_k=top_k, top_p=top_p)
        if bench:
            _bench(session, ids, max_new_tokens or BENCH_NEW_TOKENS, seed, settings, json_)
        else:
            _sample(session, ids, max_new_tokens or DEFAULT_NEW_TOKENS, num_samples, seed, settings,
                    not no_kv_cache, json_)


# ---------------------------------------------------------------- input


def _check_options(max_new_tokens, temperature, top_k, top_p, num_samples, threads) -> None:
    from tformer_cli.errors import ConfigError
    from tformer_cli.core.generate import sampling_problems

    problems = [f"--{p.replace('_', '-')}" for p in sampling_problems(temperature, top_k, top_p)]
    if max_new_tokens is not None and max_new_tokens < 1:
        problems.append(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if num_samples < 1:
        problems.append(f"--num-samples must be >= 1, got {num_samples}")
    if threads is not None and threads < 1:
        problems.append(f"--threads must be >= 1, got {threads}")
    if problems:
        raise ConfigError(problems, hint="see tformer sample --help")


def read_prompt(prompt: Optional[str], prompt_file: Optional[Path]) -> str:
    """The prompt text from --prompt, --prompt-file (- is stdin), or a piped stdin; else ''."""
    from tformer_cli.errors import ConfigError, DataError

    if prompt is not None and prompt_file is not None:
        raise ConfigError("give --prompt or --prompt-file, not both")
    if prompt is not None:
        return prompt
    if prompt_file is not None and str(prompt_file) != "-":
        try:
            return prompt_file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DataError(f"--prompt-file {prompt_file} is not UTF-8 text") from None
        except OSError as e:
            raise ConfigError(f"--prompt-file {prompt_file}: {e.strerror or e}") from None
    if prompt_file is None and _stdin_is_terminal():
        return ""
    try:
        return sys.stdin.read()
    except UnicodeDecodeError:
        raise DataError("the prompt on stdin is not UTF-8 text") from None
    except (OSError, ValueError):  # stdin closed or unreadable: no prompt
        return ""


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin is None or sys.stdin.isatty()
    except (AttributeError, ValueError):
        return True


def prompt_ids(tokenizer, text: str, skip_unknown: bool) -> list[int]:
    """Encode the prompt: unknown characters fail (or are dropped); empty starts from a newline."""
    from tformer_cli.errors import DataError

    unknown = tokenizer.unknown(text)
    if unknown and not skip_unknown:
        shown = " ".join(repr(c) for c in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
        raise DataError(f"the prompt has {len(unknown)} character(s) outside the tokenizer's vocabulary: {shown}",
                        hint="--skip-unknown drops them")
    if unknown:
        text = "".join(c for c in text if c not in set(unknown))
        _note(f"dropped {len(unknown)} unknown character(s) from the prompt: "
              + " ".join(repr(c) for c in unknown[:20]))
    ids = tokenizer.encode(text)
    if ids:
        return ids
    newline = tokenizer.encode("\n") if not tokenizer.unknown("\n") else []
    if len(newline) == 1:
        _note("empty prompt and the tokenizer has no start token: starting from a newline token")
        return newline
    _note(f"empty prompt, no start token and no newline in the vocabulary: starting from token 0 "
          f"({tokenizer.decode([0])!r})")
    return [0]


def _note(msg: str) -> None:
    from rich.markup import escape

    from tformer_cli.render import report

    report.err_console().print(f"[dim]note: {escape(msg)}[/dim]")


class _Session:
    def __init__(self, model, tokenizer, cfg, device):
        self.model, self.tokenizer, self.cfg, self.device = model, tokenizer, cfg, device


def _load(run_dir: Path, device: str) -> _Session:
    """Load the run and refuse what cannot generate; warn once for a bidirectional model."""
    from tformer_cli.errors import ConfigError, RunError
    from tformer_cli.run.load import load_for_inference

    model, tokenizer, cfg, ckpt, dev = load_for_inference(run_dir, device)
    if cfg.train.objective == "mlm":
        raise ConfigError(f"{run_dir} is a masked language model (train.objective=mlm): it predicts masked "
                          "tokens from both sides and has no next-token distribution to sample from",
                          hint="sample from a run trained with train.objective=clm")
    if tokenizer.vocab_size != ckpt.vocab_size:
        raise RunError(f"tokenizer.json in {run_dir} has {tokenizer.vocab_size} tokens, the checkpoint's "
                       f"model {ckpt.vocab_size}", hint="the run directory mixes files of different runs")
    if not cfg.model.causal:
        from tformer_cli.render import report

        report.err_console().print(
            "[yellow]warning:[/yellow] this model was trained with model.causal=false: it saw future tokens "
            "during training, so its next-token predictions are unreliable; each step recomputes the "
            "window (no KV cache for bidirectional attention)")
    return _Session(model, tokenizer, cfg, dev)


# ---------------------------------------------------------------- output


class IncrementalDecoder:
    """Text of a growing token list, returned as the new suffix at each token.

    Characters map one to one; byte-level BPE may split a UTF-8 character across tokens, so the
    whole list is decoded and a trailing replacement character is held back until complete.
    """

    def __init__(self, tokenizer, prefix: list[int] | None = None):
        self.tok = tokenizer
        self.char = tokenizer.kind == "char"
        self.ids = list(prefix or [])
        self.shown = "" if self.char else tokenizer.decode(self.ids)

    def push(self, token: int) -> str:
        if self.char:
            return self.tok.decode([token])
        self.ids.append(token)
        text = self.tok.decode(self.ids).rstrip("\ufffd")
        if not text.startswith(self.shown):  # a merge rewrote earlier text: show nothing new
            return ""
        new, self.shown = text[len(self.shown):], text
        return new


def _generator(session: _Session, seed: int):
    import torch

    return torch.Generator(device=session.device).manual_seed(seed)


def _sample(session: _Session, ids: list[int], n: int, num_samples: int, seed: int, settings: dict,
            use_cache: bool, json_: bool) -> None:
    from tformer_cli.core import generate as gen

    g = _generator(session, seed)  # one generator for all samples: sample i differs, the run repeats
    samples, speeds = [], []
    for i in range(num_samples):
        decoder = IncrementalDecoder(session.tokenizer, ids)
        write = None
        if not json_:
            sys.stdout.write(("---\n" if i else "") + session.tokenizer.decode(ids))
            sys.stdout.flush()
            write = lambda t: (sys.stdout.write(decoder.push(t)), sys.stdout.flush())  # noqa: E731
        new, speed = gen.timed(gen.generate(session.model, ids, n, generator=g, use_cache=use_cache, **settings),
                               on_token=write)
        if not json_:
            sys.stdout.write("\n")
        samples.append({"text": session.tokenizer.decode(new), "tokens": new, **speed.to_dict()})
        speeds.append(speed)
    total = gen.combine(speeds)
    cached = gen.uses_cache(session.model, use_cache)
    if json_:
        from tformer_cli.render import report

        report.print_json({"prompt": session.tokenizer.decode(ids), "prompt_tokens": len(ids), "seed": seed,
                           "device": str(session.device), "kv_cache": cached, **settings,
                           "samples": samples, "total": total.to_dict()})
    else:
        _print_speed(total, cached, session, seed)


def _print_speed(s, cached: bool, session: _Session, seed: int) -> None:
    from tformer_cli.render import report

    ttft = "-" if s.time_to_first_token_s is None else f"{1000 * s.time_to_first_token_s:.1f} ms"
    rate = "-" if s.tokens_per_s is None else f"{s.tokens_per_s:,.0f}"
    path = session.model.cache_name if cached else "recompute"
    report.err_console().print(
        f"[bold]{s.new_tokens}[/bold] new tokens · time to first token [bold]{ttft}[/bold] · "
        f"[bold]{rate}[/bold] tokens/s · {path} · {session.device} · seed {seed}", soft_wrap=True)


def _bench(session: _Session, ids: list[int], n: int, seed: int, settings: dict, json_: bool) -> None:
    import torch

    from tformer_cli.render import report
    from tformer_cli.core.generate import bench_cache

    r = bench_cache(session.model, ids, n, seed=seed, **settings)
    threads = torch.get_num_threads()
    if json_:
        report.print_json({"device": str(session.device), "threads": threads, "seed": seed, **settings,
                           **r.to_dict()})
        return
    from rich.table import Table

    m = session.cfg.model
    where = f"{session.device}" + (f", {threads} threads" if session.device.type == "cpu" else "")
    report.console().print(f"[bold]tformer sample --bench[/bold]: {r.new_tokens} new tokens, {m.n_layer} layers, "
                           f"d_model {m.d_model}, block {r.block_size}, {where}", soft_wrap=True)
    t = Table()
    for col in ("path", "tokens/s", "time to first token"):
        t.add_column(col, justify="left" if col == "path" else "right")
    for name, s in (("KV cache" if r.cache_used else "no cache (bidirectional): recompute", r.cached),
                    ("recompute (same window as the cache)", r.recompute),
                    ("recompute, sliding crop (nanoGPT-style)", r.sliding)):
        if s is not None:
            t.add_row(name, f"{s.tokens_per_s or 0:,.0f}", f"{1000 * (s.time_to_first_token_s or 0):.1f} ms")
    report.console().print(t)
    ratio = "-" if r.speedup is None else f"{r.speedup:.1f}x"
    vs_sliding = "" if r.speedup_vs_sliding is None else f" ({r.speedup_vs_sliding:.1f}x the sliding crop)"
    report.console().print(f"speed-up of the cache: [bold]{ratio}[/bold]{vs_sliding} · same tokens: "
                           f"{'yes' if r.identical else 'no'}", soft_wrap=True)
