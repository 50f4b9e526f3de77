"""`tformer classify`: a fine-tuned classifier's predictions for new texts."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from tformer_cli.errors import DataError, RunError


@dataclass
class Prediction:
    text: str
    label: str
    probability: float
    probabilities: dict[str, float]  # every label's probability, in label order
    truncated: bool  # the text was longer than the model's block_size (its first tokens were read)

    def to_dict(self) -> dict:
        return asdict(self)


def load_classifier(run_dir: str | Path, device_name: str = "cpu"):
    """(classifier in eval mode, tokenizer, labels, spec, device) of a fine-tune directory."""
    from tformer_cli.core import device as dev
    from tformer_cli.core.classifier import build_classifier
    from tformer_cli.core.data import load_tokenizer
    from tformer_cli.run import finetune_dir as fdir
    from tformer_cli.run.finetune_dir import FinetuneDir

    fd = FinetuneDir(run_dir)
    spec = fd.read_spec()
    header, tensors = fdir.load_checkpoint(fd.path)
    labels = header["labels"]  # checked by load_checkpoint
    device = dev.select(device_name)
    f = spec.finetune
    model = build_classifier(spec.model, int(header["vocab_size"]), len(labels), f.pool, f.body)
    fdir.load_weights(model, tensors, fd.file(FinetuneDir.CHECKPOINT))
    try:
        tok = load_tokenizer(fd.file(FinetuneDir.TOKENIZER))
    except DataError as e:
        raise RunError(str(e), hint="the fine-tune directory is incomplete") from None
    return model.to(device).eval(), tok, labels, spec, device


def classify(run_dir: str | Path, texts: list[str], device_name: str = "cpu") -> list[Prediction]:
    """The predicted label of each text, with every label's probability."""
    from tformer_cli.train.finetune import predict

    model, tok, labels, spec, device = load_classifier(run_dir, device_name)
    seqs, cut = [], []
    for i, text in enumerate(texts):
        if missing := tok.unknown(text):
            shown = ", ".join(repr(c) for c in missing[:6])
            raise DataError(f"text {i + 1} has characters the classifier's tokenizer does not know: {shown}")
        ids = tok.encode(text)
        if not ids:
            raise DataError(f"text {i + 1} is empty", hint="give some text to classify")
        seqs.append(ids[:spec.model.block_size])
        cut.append(len(ids) > spec.model.block_size)
    probs = predict(model, seqs, device)
    out = []
    for text, p, c in zip(texts, probs.tolist(), cut):
        best = max(range(len(labels)), key=lambda k: p[k])
        out.append(Prediction(text, labels[best], p[best], dict(zip(labels, p)), c))
    return out
