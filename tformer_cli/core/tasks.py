"""Task-specific metrics for the synthetic corpora (data.BUILTIN ``repeat``, ``modadd``, ``induction``).

Both tasks are line-based, so every metric is computed on windows that start at a line start
of the validation split (the same text data.prepare holds out), with each target token tagged
by its role in its line:

- ``repeat`` ("qxmbtfzr|qxmbtfzr"): the first copy is random (the best loss is ln 26 per
  letter); the second copy is fully predictable by looking back (an induction head).  The
  in-context drop is loss(first copy) - loss(second copy).
- ``induction`` (random letters, a segment of 4-12 repeated later in the line): loss on the
  second copy after its first letter (only an induction head predicts it), on every other
  letter (random: ln 26 is the floor), and their difference.
- ``modadd`` ("aa+bb=cc", mod 97): the two answer digits.  Under teacher forcing, both answer
  digits being the arg-max equals greedy decoding getting the answer right.

Only causal language models have these metrics (an MLM predicts masked tokens, not the next).
"""

from __future__ import annotations

import math

TASKS = ("repeat", "modadd", "induction")
MAX_WINDOWS = 128  # enough for a stable figure (about 1,000 answers or copies), fast on a CPU
MAX_TOKENS = 65_536  # fewer windows for long blocks
CHUNK = 32  # windows per forward pass (bounds the (chunk, T, V) logits)


def is_task(corpus: str) -> bool:
    return corpus in TASKS


def _val_text(cfg) -> str:
    """The validation split of the corpus, from its first full line (as data.prepare splits it)."""
    from tformer_cli.core.data import read_corpus

    text, _ = read_corpus(cfg.data.corpus, cfg.data.max_chars, cfg.data.text_field)
    val = text[int(len(text) * (1.0 - cfg.data.val_fraction)):]
    return val[val.index("\n") + 1:]


def induction_val(cfg) -> tuple[str, list[str]]:
    """The ``induction`` corpus's validation text (from its first full line, as _val_text) and a
    role per character, from the generator's own record of where each line's copies are:
    "copy" for the letters of the second copy after its first, "random" for every other letter
    (the prefix, the first copy, the gap, the second copy's first letter), "sep" for newlines."""
    from tformer_cli.core.data import INDUCTION_LINES, induction_lines

    lines = induction_lines(INDUCTION_LINES, 0)
    text = "\n".join(line.text for line in lines) + "\n"  # exactly data._induction()
    start = text.index("\n", int(len(text) * (1.0 - cfg.data.val_fraction))) + 1
    roles, pos = [], 0
    for line in lines:
        if pos >= start:
            copy = range(line.second + 1, line.second + line.length)
            roles += ["copy" if i in copy else "random" for i in range(len(line.text))] + ["sep"]
        pos += len(line.text) + 1
    return text[start:], roles


def char_roles(corpus: str, text: str) -> list[str]:
    """A role per character of ``text`` (which starts at a line start).

    repeat: "first" / "second" for the letters of each copy, "sep" for '|' and '\\n'.
    modadd: "answer" for the two digits after '=', "question" for the rest.
    """
    roles = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\n")
        if corpus == "repeat":
            bar = body.find("|")
            roles += ["sep" if c == "|" else ("first" if i < bar else "second") for i, c in enumerate(body)]
        else:
            eq = body.find("=")
            roles += ["answer" if i > eq >= 0 else "question" for i in range(len(body))]
        roles += ["sep"] * (len(line) - len(body))
    return roles


def _tokens_with_roles(tokenizer, corpus: str, text: str, roles=None) -> tuple[list[int], list[str], list[bool]]:
    """Token ids, the role of each token's first character, and whether a token starts a line."""
    ids = tokenizer.encode(text)
    roles = char_roles(corpus, text) if roles is None else roles
    tok_roles, line_start, pos = [], [], 0
    for i in ids:
        piece = tokenizer.decode([i])
        tok_roles.append(roles[pos] if pos < len(roles) else "sep")
        line_start.append(pos == 0 or text[pos - 1] == "\n")
        pos += max(len(piece), 1)
    return ids, tok_roles, line_start


def _windows(ids, roles, line_start, block: int, limit: int):
    """Up to ``limit`` windows (x, y, target roles) of block + 1 tokens, each at a line start."""
    starts = [i for i, s in enumerate(line_start) if s and i + block + 1 <= len(ids)]
    step = max(1, len(starts) // limit)
    for s in starts[::step][:limit]:
        yield ids[s:s + block], ids[s + 1:s + block + 1], roles[s + 1:s + block + 1]


def task_metrics(model, cfg, dataset_or_tokenizer, device, dtype=None) -> dict[str, float]:
    """Metrics of ``cfg.data.corpus`` if it is a synthetic task, else {} (also {} for MLM).

    ``dataset_or_tokenizer``: a data.Dataset (its tokenizer is used) or a tokenizer.
    """
    if not is_task(cfg.data.corpus) or cfg.train.objective != "clm":
        return {}
    import torch

    tokenizer = getattr(dataset_or_tokenizer, "tokenizer", dataset_or_tokenizer)
    corpus = cfg.data.corpus
    text, char_role = induction_val(cfg) if corpus == "induction" else (_val_text(cfg), None)
    ids, roles, line_start = _tokens_with_roles(tokenizer, corpus, text, char_role)
    limit = max(8, min(MAX_WINDOWS, MAX_TOKENS // cfg.model.block_size))
    wins = list(_windows(ids, roles, line_start, cfg.model.block_size, limit))
    if not wins:
        return {}
    nll, correct = _score(model, [w[0] for w in wins], [w[1] for w in wins], device, dtype)
    codes = torch.tensor([[ROLE_CODES[r] for r in w[2]] for w in wins])  # (N, T) role of each target
    if corpus == "repeat":
        return _repeat_metrics(nll, codes)
    if corpus == "induction":
        return _induction_metrics(nll, codes)
    return _modadd_metrics(nll, correct, codes)


def _score(model, xs, ys, device, dtype):
    """Per-target loss and arg-max correctness, (N, T) each on the CPU, in eval mode."""
    import torch
    import torch.nn.functional as F

    from tformer_cli.core import device as dev

    was_training = model.training
    model.eval()
    nll, correct = [], []
    with torch.no_grad(), dev.autocast(device, dtype or torch.float32):
        for i in range(0, len(xs), CHUNK):
            x = torch.tensor(xs[i:i + CHUNK], device=device)
            y = torch.tensor(ys[i:i + CHUNK], device=device)
            logits = model(x).logits.float()  # (n, T, V)
            nll.append(F.cross_entropy(logits.transpose(1, 2), y, reduction="none").cpu())
            correct.append((logits.argmax(-1) == y).cpu())
    model.train(was_training)
    return torch.cat(nll), torch.cat(correct)


ROLE_CODES = {"sep": 0, "first": 1, "second": 2, "question": 3, "answer": 4, "random": 5, "copy": 6}


def _mean(values) -> float:
    return values.double().mean().item() if values.numel() else math.nan


def _repeat_metrics(nll, codes) -> dict[str, float]:
    a, b = _mean(nll[codes == 1]), _mean(nll[codes == 2])
    return {"repeat_loss_first_copy": a, "repeat_loss_second_copy": b, "repeat_in_context_drop": a - b}


def _induction_metrics(nll, codes) -> dict[str, float]:
    r, c = _mean(nll[codes == 5]), _mean(nll[codes == 6])
    return {"induction_loss_random": r, "induction_loss_second_copy": c, "induction_in_context_drop": r - c}


def _modadd_metrics(nll, correct, codes) -> dict[str, float]:
    import torch

    ans = codes == 4
    # An answer is two consecutive answer targets; its first digit is an answer target after a
    # non-answer one (windows start at a line start, so none begins mid-answer).
    first = ans[:, :-1] & ans[:, 1:]
    first &= ~torch.cat([torch.zeros_like(ans[:, :1]), ans[:, :-2]], dim=1)
    both = correct[:, :-1] & correct[:, 1:]
    losses = torch.cat([nll[:, :-1][first], nll[:, 1:][first]])
    return {"modadd_answer_accuracy": _mean(both[first].float()), "modadd_answer_loss": _mean(losses)}
