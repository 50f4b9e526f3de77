"""Fine-tuning for classification: the classify task of the one training loop (train/loop.py,
whose ``finetune`` runs it), into a fine-tune directory (run/finetune_dir.py); a FinetuneResult.

As in pretraining, the batch of step s is drawn from a generator seeded by (seed, s) and the
loop seeds the dropout of step s, so a resumed fine-tune replays exactly what an uninterrupted
one would have done, with only weights, AdamW moments and the step saved.  The held-out split is
scored once, at the end (tformer_cli.core.cls_metrics), and its accuracy is also probed at
PROBE_AT of the steps (did the last fifth still change it?).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tformer_cli.core import cls_metrics
from tformer_cli.core import device as dev
from tformer_cli.core.classifier import Classifier, body_weights, build_classifier
from tformer_cli.core.data import CharTokenizer, load_tokenizer, mix_seed
from tformer_cli.core.finetune_config import PROBE_AT, FinetuneSpec
from tformer_cli.core.io import atomic_write_text
from tformer_cli.core.labelled import Labelled, check_labels, load_labelled
from tformer_cli.errors import ConfigError, DataError, RunError
from tformer_cli.run import finetune_dir as fdir
from tformer_cli.run.finetune_dir import FinetuneDir
from tformer_cli.run.result import FinetuneResult
from tformer_cli.train.task import LoopStats, Saved, Task

TRAIN_ACC_EXAMPLES = 512  # training accuracy on this many examples: is the model still far from fitting?
__all__ = ["ClassifyTask", "FinetuneResult", "PROBE_AT", "predict", "encode_texts"]


def encode_texts(tok, texts: list[str], block_size: int, split: str) -> list[list[int]]:
    """Token ids of each text, cut to its first ``block_size`` tokens; unknown characters refused."""
    out = []
    for i, text in enumerate(texts):
        if missing := tok.unknown(text):
            shown = ", ".join(repr(c) for c in missing[:6])
            raise DataError(f"{split} example {i + 1} ({text[:30]!r}) has characters the tokenizer does not "
                            f"know: {shown}", hint="use a run with a BPE tokenizer, or --from-scratch without a "
                            "run (a character tokenizer is built from the data)")
        ids = tok.encode(text)[:block_size]
        if not ids:
            raise DataError(f"{split} example {i + 1} encodes to no tokens", hint="every text needs some text")
        out.append(ids)
    return out


class ClassifyTask(Task):
    label = "fine-tuning"

    def __init__(self, spec: FinetuneSpec, run_dir: Path, resume: bool, data: Labelled | None = None):
        self.spec, self.f, self.run_dir, self.resume = spec, spec.finetune, Path(run_dir), resume
        self.cfg = spec.to_config()
        self._data = data
        self.fd = FinetuneDir(run_dir)

    def setup(self, device, dtype, resume: bool) -> None:
        self.device, self.dtype = device, dtype
        self.data = self._data or load_labelled(self.f.data)
        self.header, self.tensors = fdir.load_checkpoint(self.run_dir) if resume else ({}, {})
        if resume:
            check_labels(self.data.name, self.data.labels, self.header["labels"])
            if self.header["state"]["step"] > self.f.steps:
                raise ConfigError(f"--steps {self.f.steps} is below step {self.header['state']['step']}, which "
                                  "the fine-tune has already reached", hint="give more --steps to train longer")
        self.tok, self.vocab_size, self.init = self._tokenizer_and_vocab(resume)
        block = self.spec.model.block_size
        self.train_ids = encode_texts(self.tok, self.data.train_texts, block, "training")
        self.test_ids = encode_texts(self.tok, self.data.test_texts, block, "test")
        self.probe_step = self.cfg.train.eval_interval

    def _tokenizer_and_vocab(self, resume: bool):
        """(tokenizer, vocabulary size, the source weights or None)."""
        if resume:
            return load_tokenizer(self.fd.file(FinetuneDir.TOKENIZER)), int(self.header["vocab_size"]), None
        if self.f.source_run is not None:
            from tformer_cli.run.init import load_source

            src = load_source(self.f.source_run, self.spec.model.block_size)
            return src.tokenizer, src.vocab_size, (None if self.f.from_scratch else src.weights)
        texts = self.data.train_texts + self.data.test_texts
        tok = CharTokenizer.train("".join(texts))  # every character of the set: no unknowns
        return tok, tok.vocab_size, None

    def saved(self) -> Saved | None:
        if not self.tensors:
            return None
        file = self.fd.file(FinetuneDir.CHECKPOINT)
        tensors, groups = self.tensors, self.header["optim_groups"]
        return Saved(dict(self.header["state"]), lambda m: fdir.load_weights(m, tensors, file),
                     lambda: fdir.optimizer_state(tensors, groups), file)

    def build_model(self) -> torch.nn.Module:
        f = self.f  # the loop has seeded the head (and a scratch body) from the seed alone
        model = build_classifier(self.spec.model, self.vocab_size, len(self.data.labels), f.pool, f.body)
        if self.init is not None:
            missing, unexpected = model.load_state_dict(body_weights(self.init), strict=False)
            if unexpected or [k for k in missing if not k.startswith("head.")]:
                raise RunError(f"{f.source_run}: its weights do not fit the body "
                               f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        if f.freeze:
            model.freeze_body()  # before the optimizer is built: it takes the trainable parameters only
        self.model = model
        return model

    def write_files(self, state: dict[str, Any]) -> None:
        fd = self.fd
        atomic_write_text(fd.file(fd.CONFIG), self.spec.to_yaml())
        atomic_write_text(fd.file(fd.TOKENIZER), json.dumps(self.tok.to_json()))
        fd.write_json(fd.LABELS, {str(i): name for i, name in enumerate(self.data.labels)})

    # ------------------------------------------------------------ steps

    def batch(self, step: int, micro: int):
        # a fine-tune has one micro-batch per step (train.grad_accum 1): its batch depends on (seed, step)
        rng = np.random.Generator(np.random.PCG64(mix_seed(self.f.seed, step)))
        idx = rng.integers(0, len(self.train_ids), size=self.f.batch_size)
        return [self.train_ids[i] for i in idx], [self.data.train_y[i] for i in idx]

    def loss(self, model, x, y) -> torch.Tensor:
        if self.f.freeze:
            self.model.body.eval()  # a frozen body keeps its dropout off too
        return model.loss(x, y, self.device)

    def tokens(self, x) -> int:
        return sum(len(ids) for ids in x)

    def wants_eval(self, step: int) -> bool:
        return step == self.probe_step and step < self.f.steps

    def evaluate(self, model, step: int, state: dict[str, Any], should_stop) -> dict[str, Any] | None:
        acc = _accuracy(self.model, self.test_ids, self.data.test_y, self.device)
        state["probe"] = [step, acc]
        return {"probe_accuracy": acc}

    # ------------------------------------------------------------ files and the end

    def save(self, step: int, model, optimizer, state: dict[str, Any]) -> None:
        header = {"spec": self.spec.to_dict(), "labels": self.data.labels, "vocab_size": self.vocab_size,
                  "state": state}
        fdir.save_checkpoint(self.run_dir, model, optimizer, header)

    def has_checkpoint(self) -> bool:
        return self.fd.has_checkpoint()

    def result(self, model, s: LoopStats) -> FinetuneResult:
        f, k = self.f, len(self.data.labels)
        test, train_acc = None, None
        if not s.interrupted:
            pred = predict(model, self.test_ids, self.device).argmax(-1).tolist()
            test = cls_metrics.score(self.data.test_y, pred, k)
            n = min(TRAIN_ACC_EXAMPLES, len(self.train_ids))
            train_acc = _accuracy(model, self.train_ids[:n], self.data.train_y[:n], self.device)
        result = FinetuneResult(
            run_dir=str(self.run_dir), steps_done=s.step, steps=f.steps, interrupted=s.interrupted, task=f.task,
            data=self.data.name, labels=self.data.labels, body=f.body, pool=f.pool, source_run=f.source_run,
            from_scratch=f.from_scratch, freeze=f.freeze, params=model.num_params(),
            trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
            n_train=len(self.train_ids), train_loss=s.state.get("last_train_loss"), train_accuracy=train_acc,
            test=test, elapsed_s=s.elapsed_s, resumed_from=s.resumed_from, tokens_per_s=s.tokens_per_s,
            arithmetic=dev.arithmetic(self.device, self.dtype))
        if s.state.get("probe") and test is not None:  # [step, held-out accuracy] at PROBE_AT of the steps
            result.extra["probe_step"], result.extra["probe_accuracy"] = s.state["probe"]
        self.fd.write_json(FinetuneDir.SUMMARY, result.to_dict())
        return result


def _accuracy(model: Classifier, seqs: list[list[int]], labels: list[int], device) -> float:
    pred = predict(model, seqs, device).argmax(-1).tolist()
    return sum(int(a == b) for a, b in zip(pred, labels)) / len(pred)


def predict(model: Classifier, seqs: list[list[int]], device, chunk: int = 256) -> torch.Tensor:
    """Class probabilities (N, n_labels) on the CPU, in eval mode."""
    was = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(seqs), chunk):
            out.append(torch.softmax(model.logits(seqs[i:i + chunk], device), dim=-1).cpu())
    model.train(was)
    return torch.cat(out) if out else torch.empty(0, model.head.out_features)
