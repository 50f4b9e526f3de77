"""The `induction` corpus, its task metrics, and the in-distribution induction probe of
`tformer attention` (issue 12, item 5)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import rule_oracle
from tformer_cli.core import data, hooks, tasks
from tformer_cli.core.config import ModelConfig, from_dict
from tformer_cli.inside import attention

CFG = {
    "model": {"d_model": 32, "n_layer": 2, "n_head": 2, "block_size": 64, "dropout": 0.0, "ffn": False},
    "data": {"corpus": "induction", "tokenizer": "char"},
    "train": {"steps": 4, "batch_size": 4, "lr": 0.01, "warmup_steps": 1, "eval_interval": 4,
              "eval_iters": 1, "log_interval": 2, "device": "cpu"},
}


# ---------------------------------------------------------------- the corpus


def test_the_corpus_is_deterministic_and_repeats_a_varying_segment():
    lines = data.induction_lines(2000, 0)
    assert lines == data.induction_lines(2000, 0)
    assert lines != data.induction_lines(2000, 1)
    lengths, gaps, starts = set(), set(), set()
    for line in lines:
        t, k = line.text, line.length
        assert set(t) <= set(data.INDUCTION_LETTERS)
        assert t[line.first:line.first + k] == t[line.second:line.second + k]  # the property
        assert line.second >= line.first + k and line.second + k == len(t)  # after it; ends the line
        assert data.INDUCTION_SEGMENT[0] <= k <= data.INDUCTION_SEGMENT[1]
        lengths.add(k), gaps.add(line.second - line.first), starts.add(line.first)
    # no fixed offset or length: only looking up the earlier occurrence predicts the copy
    assert len(lengths) == data.INDUCTION_SEGMENT[1] - data.INDUCTION_SEGMENT[0] + 1
    assert len(gaps) > 10 and len(starts) > 3
    text, label = data.read_corpus("induction")
    assert label == "induction" and text == data.read_corpus("induction")[0]
    assert text.startswith("\n".join(line.text for line in lines[:50]) + "\n")
    assert "induction" in data.BUILTIN


def test_corpora_command_lists_it():
    from conftest import run_cli

    r = run_cli("corpora")
    assert r.code == 0 and "induction" in r.out


# ---------------------------------------------------------------- task metrics


def test_roles_mark_the_second_copy_after_its_first_letter():
    cfg = from_dict(CFG)
    text, roles = tasks.induction_val(cfg)
    full, _ = data.read_corpus("induction")
    assert full.endswith(text) and full[len(full) - len(text) - 1] == "\n" and len(roles) == len(text)
    pos = 0
    for line in text.splitlines(keepends=True)[:500]:
        r = roles[pos:pos + len(line)]
        pos += len(line)
        assert r[-1] == "sep" and "sep" not in r[:-1]
        c = r.count("copy")
        assert r[-1 - c:-1] == ["copy"] * c and "copy" not in r[:-1 - c]  # the line's end, one run
        body = line[:-1]
        seg = body[len(body) - c - 1:]  # the second copy, with its first (unpredictable) letter
        assert data.INDUCTION_SEGMENT[0] <= len(seg) <= data.INDUCTION_SEGMENT[1]
        assert seg in body[:len(body) - len(seg)]  # it occurred earlier in the line


def _longest_match_rule(s: str, t: int):
    """An induction rule with no knowledge of the corpus: find the earlier position of the current
    line whose preceding letters match the current ones longest (the most recent on a tie), and
    predict the letter that followed it."""
    start = s.rfind("\n", 0, t) + 1
    best, best_n = None, 0
    for p in range(start, t):
        n = 0
        while p - n >= start and s[p - n] == s[t - n]:
            n += 1
        if n and n >= best_n:
            best, best_n = p, n
    return None if best is None else s[best + 1]


def test_task_metrics_of_an_induction_oracle_and_a_blind_model():
    cfg = from_dict(CFG)
    ds = data.prepare(cfg.data)
    m = tasks.task_metrics(rule_oracle(ds.tokenizer, _longest_match_rule, logit=6.0), cfg, ds, torch.device("cpu"))
    assert set(m) == {"induction_loss_random", "induction_loss_second_copy", "induction_in_context_drop"}
    assert m["induction_in_context_drop"] == pytest.approx(m["induction_loss_random"] - m["induction_loss_second_copy"])
    # right about 98% of the time on the copy (a right guess costs 0.07 nats, a wrong one 6)
    assert m["induction_loss_second_copy"] < 0.4 and m["induction_loss_random"] > 3.0
    blind = tasks.task_metrics(rule_oracle(ds.tokenizer, lambda s, t: None, logit=6.0), cfg, ds, torch.device("cpu"))
    v = ds.tokenizer.vocab_size
    assert blind["induction_loss_second_copy"] == pytest.approx(math.log(v), abs=1e-4)
    assert blind["induction_in_context_drop"] == pytest.approx(0.0, abs=1e-4)


def test_training_on_the_induction_corpus_reports_its_metrics(tmp_path):
    import json

    import yaml

    from conftest import run_cli

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CFG))
    r = run_cli("train", tmp_path / "c.yaml", "--out", tmp_path / "run", "--json")
    assert r.code == 0, r
    extra = json.loads(r.out)["extra"]
    assert set(extra) == {"induction_loss_random", "induction_loss_second_copy", "induction_in_context_drop"}
    assert all(math.isfinite(v) for v in extra.values())


# ---------------------------------------------------------------- the probe


class _Tok:
    kind = "char"

    def __init__(self):
        self.chars = "\n" + data.INDUCTION_LETTERS
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    def encode(self, s):
        return [self.stoi[c] for c in s]


class _FakeModel:
    """Attention of a fixed rule on the token ids: induction (longest earlier match, then the
    token after it) or a fixed offset back."""

    def __init__(self, rule: str, block: int, offset: int = 15, shift: int = 0):
        self.cfg = ModelConfig(d_model=8, n_layer=1, n_head=2, block_size=block)
        self.rule, self.offset, self.shift = rule, offset, shift

    blocks = [None]  # one layer: what the hook points ask of a model (core/hooks.py)

    def __call__(self, seqs):
        S, T = seqs.shape
        w = torch.zeros(S, 2, T, T)
        for b in range(S):
            s = "".join(_Tok().chars[i] for i in seqs[b].tolist())
            for t in range(T):
                if self.rule == "induction":
                    nxt = _longest_match_rule(s, t)
                    p = None
                    if nxt is not None:  # the key: the position after the match
                        start, best_n = s.rfind("\n", 0, t) + 1, 0
                        for q in range(start, t):
                            n = 0
                            while q - n >= start and s[q - n] == s[t - n]:
                                n += 1
                            if n and n >= best_n:
                                p, best_n = q + 1, n
                    k = p + self.shift if p is not None and p + self.shift <= t else 0
                else:
                    k = max(0, t - self.offset)
                w[b, :, t, k] = 1.0
        hooks.apply("blocks.0.attn.pattern", w)  # where a GPT's attention hands its weights to a probe
        return type("Out", (), {})()


def test_the_probe_draws_lines_like_the_corpus():
    probe = attention.induction_corpus_probe(_Tok(), 64)
    assert len(probe.seqs) == 2 * attention.INDUCTION_SEQS and all(len(s) == 64 for s in probe.seqs)
    assert sum(map(len, probe.pairs)) > 100
    for seq, pairs in zip(probe.seqs, probe.pairs):
        for q, k in pairs:
            assert k <= q and seq[k - 1] == seq[q]  # the key follows an earlier occurrence of the query
    assert len({q - k for p in probe.pairs for q, k in p}) > 10  # offsets vary: no fixed offset fits


def test_an_induction_pattern_is_labelled_induction_and_a_fixed_offset_is_not():
    probe = attention.induction_corpus_probe(_Tok(), 64)
    ind = attention.induction_scores(_FakeModel("induction", 64), 27, torch.device("cpu"), probe=probe)
    off = attention.induction_scores(_FakeModel("offset", 64), 27, torch.device("cpu"), probe=probe)
    assert ind.min() > 0.85 and off.max() < 0.2
    # the same circuit reading the copied token 6 positions later (a layer-0 head that copies each
    # token 6 forward, instead of a previous-token head): found with its shift
    score, shift = attention.probe_scores(_FakeModel("induction", 64, shift=6), probe, torch.device("cpu"))
    assert score.min() > 0.8 and (shift == 6).all()
    score, shift = attention.probe_scores(_FakeModel("offset", 64), probe, torch.device("cpu"))
    assert score.max() < 0.2
    # on the prompt, an induction head of a once-repeated prompt looks like a fixed offset; the
    # probe's score names it
    T = 20
    w = torch.zeros(T, T)
    w[torch.arange(T), (torch.arange(T) - 9).clamp(min=0)] = 1
    s = attention.score_heads(w[None, None], ind[:, :1], causal=True)[0]
    assert s.label == "induction" and s.offset == 9
    s = attention.score_heads(w[None, None], off[:, :1], causal=True)[0]
    assert s.label == "offset -9"


def test_the_probe_follows_the_runs_corpus():
    cfg = from_dict(CFG)
    tok = data.prepare(cfg.data).tokenizer
    assert "induction-corpus" in attention.induction_probe(cfg, tok).source
    other = from_dict({**CFG, "data": {"corpus": "repeat", "tokenizer": "char"}})
    tok = data.prepare(other.data).tokenizer
    probe = attention.induction_probe(other, tok)
    assert "validation text" in probe.source and all(len(s) == 64 for s in probe.seqs)
    assert all(set(tok.decode(s)) <= set("|\n" + data.INDUCTION_LETTERS) for s in probe.seqs)
    gone = from_dict({**CFG, "data": {"corpus": "/nonexistent/corpus.txt", "tokenizer": "char"}})
    assert "random ids" in attention.induction_probe(gone, tok).source
