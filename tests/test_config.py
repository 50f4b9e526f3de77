"""Configuration: precedence, overrides, validation messages and exit codes."""

from __future__ import annotations

import pytest

from tformer_cli.core import config as C
from tformer_cli.errors import ConfigError


def test_precedence_defaults_preset_file_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  n_head: 2\ntrain:\n  steps: 7\n")
    cfg = C.resolve(f, "quick", {"train.steps": 9})
    assert cfg.model.n_head == 2  # file beats preset
    assert cfg.train.steps == 9  # override beats file
    assert cfg.model.block_size == 64  # preset beats default
    assert cfg.train.beta2 == C.TrainConfig().beta2  # default


def test_parse_set_types():
    got = C.parse_set(["model.n_head=8", "train.lr=3e-4", "model.causal=false", "data.corpus=prose"])
    cfg = C.resolve(overrides=got)
    assert (cfg.model.n_head, cfg.train.lr, cfg.model.causal, cfg.data.corpus) == (8, 3e-4, False, "prose")


def test_every_problem_is_listed_at_once_with_suggestions():
    with pytest.raises(ConfigError) as e:
        C.from_dict({"model": {"n_heads": 4, "dropout": 1.5, "d_model": "wide"}, "train": {"lr": -1}})
    problems = e.value.problems
    assert "unknown key 'model.n_heads' (did you mean 'model.n_head'?)" in problems
    assert "model.dropout: must be in [0, 1), got 1.5" in problems
    assert "model.d_model: expected an integer, got 'wide'" in problems
    assert "train.lr: must be positive, got -1.0" in problems


def test_unknown_section_and_choice_suggestions():
    with pytest.raises(ConfigError) as e:
        C.from_dict({"modle": {}, "model": {"pos_encoding": "rop"}})
    assert "unknown section 'modle' (did you mean 'model'?)" in e.value.problems
    assert "model.pos_encoding: 'rop' is not one of learned, sinusoidal, rope, none (did you mean 'rope'?)" \
        in e.value.problems


def test_head_count_names_valid_ones():
    with pytest.raises(ConfigError) as e:
        C.from_dict({"model": {"d_model": 96, "n_head": 5}})
    assert str(e.value) == (
        "model.n_head: d_model=96 is not divisible by n_head=5; valid head counts for d_model=96: "
        "1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 96"
    )


def test_yaml_python_tags_are_refused(tmp_path):
    marker = tmp_path / "marker"
    f = tmp_path / "evil.yaml"
    f.write_text(f'model: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError, match="cannot parse"):
        C.load_yaml(f)
    assert not marker.exists()


def test_unparsable_yaml_names_line_and_column(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model:\n  n_head: [1, 2\n")
    with pytest.raises(ConfigError, match=r"line \d+, column \d+"):
        C.load_yaml(f)


def test_every_preset_is_valid():
    for name in C.preset_names():
        C.resolve(preset=name)
    assert {"quick", "shakespeare_char", "gpt2_small"} <= set(C.preset_names())


def test_round_trip_through_yaml(tmp_path):
    cfg = C.resolve(preset="quick", overrides={"model.n_head": 8})
    f = tmp_path / "c.yaml"
    f.write_text(cfg.to_yaml())
    assert C.from_dict(C.load_yaml(f)) == cfg


def test_cli_config_errors_exit_2(cli, tmp_path):
    r = cli("train", "--set", "model.n_head=3", "--steps", "1", "--out", tmp_path / "r")
    assert r.code == 2
    assert "error: model.n_head: d_model=128 is not divisible by n_head=3" in r.err
    assert "Traceback" not in r.err
    r = cli("train", "--set", "model.nhead=3")
    assert r.code == 2 and "did you mean 'model.n_head'" in r.err
    r = cli("train", "--no-such-flag")
    assert r.code == 2


def test_ctrl_c_outside_the_training_loop_says_interrupted(cli, monkeypatch):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(C, "describe_keys", interrupted)
    r = cli("keys")
    assert r.code == 130 and r.err == "error: interrupted\n"
