"""Loading a run for the probes: a GPT, or a clear error for a model without attention."""

from __future__ import annotations

from pathlib import Path

from tformer_cli.errors import RunError


def load_gpt(run_dir: str | Path, device_name: str = "auto"):
    """(model, tokenizer, cfg, device) of a run; a clear error for an LSTM (no attention)."""
    from tformer_cli.run.load import load_for_inference

    model, tok, cfg, _ckpt, device = load_for_inference(run_dir, device_name)
    if cfg.model.arch != "gpt":
        raise RunError(f"{run_dir} is an {cfg.model.arch.upper()} run: it has no attention heads",
                       hint="attention and heads work on GPT runs (model.arch=gpt)")
    return model, tok, cfg, device
