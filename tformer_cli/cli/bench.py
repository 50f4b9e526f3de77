"""`tformer bench`: step time, tokens/s, MFU, memory and where the time goes, for any config."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from tformer_cli.cli.options import ConfigArg, DeviceOpt, JsonOpt, PresetOpt, SetOpt, build_config


def register(app: typer.Typer) -> None:
    @app.command(
        short_help="Time training and forward steps: tokens/s, MFU, memory.",
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
        from tformer_cli.errors import ConfigError
        from tformer_cli.render.bench import show_bench
        from tformer_cli.render.console import console, err_console, print_json
        from tformer_cli.train.bench import bench as core_bench

        if steps < 1 or warmup < 0:
            raise ConfigError("--steps must be >= 1 and --warmup >= 0")
        extra = {}
        if dtype is not None:
            extra["train.dtype"] = dtype
        if compile_ is not None:
            extra["train.compile"] = compile_
        cfg = build_config(config, preset, set_, device=device, extra=extra)
        say = (lambda s: None) if json_ else (lambda s: err_console().print(f"[dim]{s}[/dim]"))
        result = core_bench(cfg, steps=steps, warmup=warmup, vocab_size=vocab_size, progress=say)
        if json_:
            print_json(result.to_dict())
        else:
            show_bench(console(), result)
