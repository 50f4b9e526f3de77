"""Fine-tuning for classification: silent, reports through the training loop's Events,
returns a FinetuneResult.

As in pretraining, the batch of step s is drawn from a generator seeded by (seed, s) and the
dropout of step s by (seed, s, 1), so a resumed fine-tune replays exactly what an
uninterrupted one would have done, with only weights, AdamW moments and the step saved.
The held-out split is scored once, at the end (tformer_cli.core.cls_metrics).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from tformer_cli.core import cls_metrics, device as dev
from tformer_cli.core.classifier import Classifier, body_weights, build_classifier
from tformer_cli.core.data import CharTokenizer, load_tokenizer, mix_seed
from tformer_cli.core.finetune_config import FinetuneSpec
from tformer_cli.core.io import atomic_write_text
from tformer_cli.core.labelled import Labelled, check_labels, load_labelled
from tformer_cli.errors import ConfigError, DataError, RunError, Stopped
from tformer_cli.run import finetune_dir as fdir
from tformer_cli.run.finetune_dir import FinetuneDir
from tformer_cli.train.loop import Event

TRAIN_ACC_EXAMPLES = 512  # training accuracy on this many examples: is the model still far from fitting?
PROBE_AT = 0.8  # the held-out accuracy is also taken here: did the last fifth of training still change it?


@dataclass
class FinetuneResult:
    run_dir: str
    steps_done: int
    steps: int
    interrupted: bool
    task: str
    data: str
    labels: list[str]
    body: str
    pool: str
    source_run: str | None
    from_scratch: bool
    freeze: bool
    params: int
    trainable_params: int
    n_train: int
    train_loss: float | None
    train_accuracy: float | None
    test: dict[str, Any] | None  # cls_metrics.Scores as a dict; None when interrupted
    elapsed_s: float
    resumed_from: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def finetune(spec: FinetuneSpec, run_dir: str | Path, *, resume: bool = False,
             progress: Callable[[Event], None] | None = None,
             should_stop: Callable[[], bool] | None = None, data: Labelled | None = None) -> FinetuneResult:
    """Fine-tune ``spec`` into ``run_dir`` (claimed by the caller), or continue it with ``resume``.
    ``data``: the labelled set already loaded (a study shares one across members)."""
    return _Finetuner(spec, Path(run_dir), resume, progress, should_stop, data).run()


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to lr / 10 at the last step."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return lr / 10 + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - lr / 10)


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


class _Finetuner:
    def __init__(self, spec: FinetuneSpec, run_dir: Path, resume: bool, progress, should_stop, data):
        self.spec, self.f, self.run_dir = spec, spec.finetune, run_dir
        self.report = progress or (lambda e: None)
        self.stop = should_stop or (lambda: False)
        self.t0 = time.perf_counter()
        self.device = dev.select(self.f.device)
        self.data = data or load_labelled(self.f.data)
        self.fd = FinetuneDir(run_dir)
        header, tensors = fdir.load_checkpoint(run_dir) if resume else ({}, {})
        if resume:
            check_labels(self.data.name, self.data.labels, header["labels"])
            if header["state"]["step"] > self.f.steps:
                raise ConfigError(f"--steps {self.f.steps} is below step {header['state']['step']}, which the "
                                  "fine-tune has already reached", hint="give more --steps to train longer")
        self.tok, self.vocab_size, init = self._tokenizer_and_vocab(resume, header)
        block = spec.model.block_size
        self.train_ids = encode_texts(self.tok, self.data.train_texts, block, "training")
        self.test_ids = encode_texts(self.tok, self.data.test_texts, block, "test")
        self._build(init, header, tensors)
        self._write_files()

    def _tokenizer_and_vocab(self, resume: bool, header):
        """(tokenizer, vocabulary size, the source weights or None)."""
        if resume:
            return load_tokenizer(self.fd.file(FinetuneDir.TOKENIZER)), int(header["vocab_size"]), None
        if self.f.source_run is not None:
            from tformer_cli.run.init import load_source

            src = load_source(self.f.source_run, self.spec.model.block_size)
            return src.tokenizer, src.vocab_size, (None if self.f.from_scratch else src.weights)
        texts = self.data.train_texts + self.data.test_texts
        tok = CharTokenizer.train("".join(texts))  # every character of the set: no unknowns
        return tok, tok.vocab_size, None

    def _build(self, init, header, tensors) -> None:
        f = self.f
        torch.manual_seed(f.seed)  # head (and a scratch body) depend on the seed alone
        self.model = build_classifier(self.spec.model, self.vocab_size, len(self.data.labels), f.pool, f.body)
        if init is not None:
            missing, unexpected = self.model.load_state_dict(body_weights(init), strict=False)
            if unexpected or [k for k in missing if not k.startswith("head.")]:
                raise RunError(f"{f.source_run}: its weights do not fit the body "
                               f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        if f.freeze:
            self.model.freeze_body()
        self.model.to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": f.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=f.lr, betas=(0.9, 0.99))
        self.state: dict[str, Any] = {"step": 0, "loss_sum": 0.0, "loss_count": 0, "last_train_loss": None}
        self.resumed_from = None
        if tensors:
            file = self.fd.file(FinetuneDir.CHECKPOINT)
            fdir.load_weights(self.model, tensors, file)
            try:
                self.optimizer.load_state_dict(fdir.optimizer_state(tensors, header["optim_groups"]))
            except (ValueError, KeyError, RuntimeError) as e:
                raise RunError(f"cannot restore the optimizer from {file}: {str(e)[:100]}") from None
            self.state.update(header["state"])
            self.resumed_from = int(self.state["step"])

    def _write_files(self) -> None:
        fd = self.fd
        atomic_write_text(fd.file(fd.CONFIG), self.spec.to_yaml())
        atomic_write_text(fd.file(fd.TOKENIZER), json.dumps(self.tok.to_json()))
        fd.write_json(fd.LABELS, {str(i): name for i, name in enumerate(self.data.labels)})
        step = int(self.state["step"])
        rows = []
        if fd.file(fd.METRICS).exists():
            for text in fd.file(fd.METRICS).read_text().splitlines():
                try:
                    row = json.loads(text)
                except ValueError:
                    continue  # a line torn by a crash
                if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                    rows.append(text + "\n")
        atomic_write_text(fd.file(fd.METRICS), "".join(rows))

    # ------------------------------------------------------------ the loop

    def run(self) -> FinetuneResult:
        f, step = self.f, int(self.state["step"])
        self.tokens, self.t_log = 0, time.perf_counter()
        self.report(Event("start", step, f.steps, message=f"{self.device.type} float32"))
        interrupted = False
        with open(self.fd.file(self.fd.METRICS), "a") as log:
            while step < f.steps:
                if self.stop():
                    interrupted = True
                    break
                lr = self._step(step)
                step += 1
                if step % f.log_interval == 0 or step == f.steps:
                    self._log(log, step, lr)
                if step == max(1, round(PROBE_AT * f.steps)) and step < f.steps:
                    self.state["probe"] = [step, self._test_accuracy()]
                if step % f.ckpt_interval == 0 or step == f.steps:
                    self._checkpoint(step)
        if interrupted and step > int(self.state["step"]):
            self._checkpoint(step)
        if interrupted and not self.fd.has_checkpoint():
            raise Stopped("before the first checkpoint: nothing was saved, there is nothing to resume",
                          hint="run the same command again to start over")
        return self._finish(step, interrupted)

    def _step(self, step: int) -> float:
        f = self.f
        lr = lr_at(step, f.steps, f.lr, f.warmup_steps)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        rng = np.random.Generator(np.random.PCG64(mix_seed(f.seed, step)))
        idx = rng.integers(0, len(self.train_ids), size=f.batch_size)
        self.tokens += sum(len(self.train_ids[i]) for i in idx)
        torch.manual_seed(mix_seed(f.seed, step, 1))  # dropout of this step
        self.model.train()
        if f.freeze:
            self.model.body.eval()
        loss = self.model.loss([self.train_ids[i] for i in idx], [self.data.train_y[i] for i in idx], self.device)
        loss.backward()
        if f.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], f.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state["loss_sum"] += float(loss.item())
        self.state["loss_count"] += 1
        return lr

    def _log(self, log, step: int, lr: float) -> None:
        mean = self.state["loss_sum"] / max(1, self.state["loss_count"])
        if not math.isfinite(mean):
            raise RunError(f"the loss became NaN or infinite at step {step}",
                           hint=f"lower --lr (now {self.f.lr:g})")
        self.state.update(loss_sum=0.0, loss_count=0, last_train_loss=mean)
        log.write(json.dumps({"step": step, "train_loss": round(mean, 6), "lr": lr}) + "\n")
        log.flush()
        now = time.perf_counter()
        rate = self.tokens / max(now - self.t_log, 1e-9)  # training tokens per second since the last log
        self.tokens, self.t_log = 0, now
        self.report(Event("log", step, self.f.steps, train_loss=mean, lr=lr, tokens_per_s=rate, elapsed=now - self.t0))

    def _checkpoint(self, step: int) -> None:
        self.state["step"] = step
        header = {"spec": self.spec.to_dict(), "labels": self.data.labels, "vocab_size": self.vocab_size,
                  "state": self.state}
        fdir.save_checkpoint(self.run_dir, self.model, self.optimizer, header)
        self.report(Event("checkpoint", step, self.f.steps, elapsed=time.perf_counter() - self.t0))

    def _test_accuracy(self) -> float:
        pred = predict(self.model, self.test_ids, self.device).argmax(-1).tolist()
        return sum(int(a == b) for a, b in zip(pred, self.data.test_y)) / len(pred)

    def _finish(self, step: int, interrupted: bool) -> FinetuneResult:
        f, k = self.f, len(self.data.labels)
        test, train_acc = None, None
        if not interrupted:
            pred = predict(self.model, self.test_ids, self.device).argmax(-1).tolist()
            test = cls_metrics.score(self.data.test_y, pred, k).to_dict()
            n = min(TRAIN_ACC_EXAMPLES, len(self.train_ids))
            tp = predict(self.model, self.train_ids[:n], self.device).argmax(-1).tolist()
            train_acc = sum(int(a == b) for a, b in zip(tp, self.data.train_y[:n])) / n
        result = FinetuneResult(
            run_dir=str(self.run_dir), steps_done=step, steps=f.steps, interrupted=interrupted, task=f.task,
            data=self.data.name, labels=self.data.labels, body=f.body, pool=f.pool, source_run=f.source_run,
            from_scratch=f.from_scratch, freeze=f.freeze, params=self.model.num_params(),
            trainable_params=sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            n_train=len(self.train_ids), train_loss=self.state.get("last_train_loss"), train_accuracy=train_acc,
            test=test, elapsed_s=time.perf_counter() - self.t0, resumed_from=self.resumed_from)
        if self.state.get("probe") and test is not None:  # [step, held-out accuracy] at PROBE_AT of the steps
            result.extra["probe_step"], result.extra["probe_accuracy"] = self.state["probe"]
        self.fd.write_json(FinetuneDir.SUMMARY, result.to_dict())
        self.report(Event("end", step, f.steps, elapsed=result.elapsed_s))
        return result


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
