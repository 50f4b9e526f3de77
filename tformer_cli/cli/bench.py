"""`tformer bench`: step time, tokens/s, MFU, memory and where the time goes, for any config."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from tformer_cli.cli.options import ConfigArg, DeviceOpt, JsonOpt, PresetOpt, SetOpt, build_config


def register(app: typer.Typer) -> None:
    @app.command(
        help="Benchmark training and forward steps of a config: step time, tokens/s, MFU, peak memory, "
        "and the share of time and FLOPs in attention vs FFN vs the rest.\n\n"
        "Random token ids are used, so the figures measure the model and the optimizer, not the data. "
        "MFU = (6N + 12 L T d) x tokens/s / peak, the peak being a timed matmul of the same dtype in "
        "this process (CPU) or the card's datasheet bf16 figure (known GPUs).\n\n"
        "Examples:\n\n"
        "  tformer bench --preset shakespeare_char\n\n"
        "  tformer bench --preset shakespeare_char --dtype bfloat16 --steps 50\n\n"
        "  tformer bench --preset gpt2_small --device cuda --compile --json"
    )
    def bench(
        config: ConfigArg = None,
        preset: PresetOpt = None,
        set_: SetOpt = None,
        steps: Annotated[int, typer.Option("--steps", help="Timed steps (after warm-up).")] = 20,
        warmup: Annotated[int, typer.Option("--warmup", help="Untimed warm-up steps.")] = 5,
        device: DeviceOpt = None,
        dtype: Annotated[Optional[str], typer.Option("--dtype", help="float32, bfloat16, float16 or auto.",
                                                     show_default=False)] = None,
        compile_: Annotated[Optional[bool], typer.Option("--compile/--no-compile",
                                                         help="torch.compile (default: on for CUDA only).",
                                                         show_default=False)] = None,
        vocab_size: Annotated[int, typer.Option("--vocab-size", help="Vocabulary of the random ids.")] = 65,
        json_: JsonOpt = False,
    ) -> None:
        from tformer_cli.render import report
        from tformer_cli.train.bench import bench as core_bench
        from tformer_cli.errors import ConfigError

        if steps < 1 or warmup < 0:
            raise ConfigError("--steps must be >= 1 and --warmup >= 0")
        extra = {}
        if dtype is not None:
            extra["train.dtype"] = dtype
        if compile_ is not None:
            extra["train.compile"] = compile_
        cfg = build_config(config, preset, set_, device=device, extra=extra)
        say = (lambda s: None) if json_ else (lambda s: report.err_console().print(f"[dim]{s}[/dim]"))
        result = core_bench(cfg, steps=steps, warmup=warmup, vocab_size=vocab_size, progress=say)
        if json_:
            report.print_json(result.to_dict())
        else:
            report.console().print(bench_table(result.to_dict()))


def bench_table(r: dict):
    from rich.table import Table

    from tformer_cli.render import report

    t = Table(title=f"tformer bench: {r['shape']}, {r['device']} {r['dtype']}"
              + (" compiled" if r["compiled"] else ""), show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    share = lambda d: "  ".join(f"{k} {100 * v:.0f}%" for k, v in d.items()) if d else "-"  # noqa: E731
    rows = [
        ("training step", f"{r['step_ms']:.1f} ms median ({r['step_ms_min']:.1f} to {r['step_ms_max']:.1f}, "
                          f"{r['steps_timed']} steps)"),
        ("training tokens/s", f"{r['train_tokens_per_s']:,.0f}"),
        ("forward step", f"{r['forward_ms']:.1f} ms ({r['forward_tokens_per_s']:,.0f} tokens/s)"),
        ("MFU", f"{100 * r['mfu']:.1f}%  ({r['flops_per_token'] / 1e6:.2f} MFLOP/token, peak "
                f"{r['peak_flops'] / 1e9:,.0f} GFLOP/s: {r['peak_source']})"),
        ("peak memory", f"{report.fmt_bytes(r['peak_memory_bytes'])} ({r['memory_source']})"),
        ("parameters", f"{r['params']:,}"),
        ("FLOPs share", share(r["flops_share"])),
        ("forward time share", share(r["time_share"])),
    ]
    for k, v in rows:
        t.add_row(k, v)
    return t
