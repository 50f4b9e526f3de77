"""Loading a finished (or interrupted) run for inference."""

from __future__ import annotations

from pathlib import Path

from tformer_cli.core import device as dev
from tformer_cli.core.memory import check_fits
from tformer_cli.core.model import build_model
from tformer_cli.errors import DataError, RunError
from tformer_cli.run import checkpoint
from tformer_cli.run.rundir import RunDir


def load_for_inference(run_dir: str | Path, device_name: str = "auto"):
    """(model in eval mode, tokenizer, config, checkpoint) from a run directory."""
    from tformer_cli.core.data import load_tokenizer

    ckpt = checkpoint.load(run_dir, with_optimizer=False)
    cfg = ckpt.config
    if cfg.task.kind == "seq2seq":  # pairs in, pairs out: no prompt to continue, no tokenizer
        raise RunError(f"{run_dir} is a seq2seq run (model.arch {cfg.model.arch} on task {cfg.task.data}), not a "
                       "language model", hint="its held-out exact match is in its summary.json; `tformer seq2seq` "
                       "trains and scores these")
    device = dev.select(device_name)
    check_fits(cfg.model, ckpt.vocab_size, 1, device, training=False, what="loading the model")
    model = build_model(cfg.model, ckpt.vocab_size)
    checkpoint.load_model_weights(model, ckpt)
    model.to(device).eval()
    tok_path = RunDir(run_dir).tokenizer
    if not tok_path.exists():
        raise RunError(f"no tokenizer.json in {run_dir}", hint="the run directory is incomplete")
    try:
        tok = load_tokenizer(tok_path)
    except DataError as e:  # a run's file, not the user's input: a runtime error (exit 1)
        raise RunError(str(e), hint="restore tokenizer.json from a backup, or retrain") from None
    return model, tok, cfg, ckpt, device
