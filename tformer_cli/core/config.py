"""Typed configuration: dataclasses, YAML files, ``--set a.b=c`` overrides, validation.

This module never imports torch, so the CLI can validate a configuration (and print
help) instantly.  One name per thing everywhere: the dataclass field, the YAML key,
the ``--set`` path, the sweep axis and the table column are all ``model.n_head`` etc.

Precedence: defaults < YAML file < flags and ``--set`` (later wins).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from tformer_cli.core.untrusted import UnreadableFile, read_text, short, yaml_load
from tformer_cli.errors import ConfigError

PRESET_DIR = Path(__file__).parent.parent / "experiments"

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "swiglu", "relu2")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
OPTIMIZERS = ("adamw", "muon")
POS_ENCODINGS = ("learned", "sinusoidal", "rope", "none")
ARCHS = ("gpt", "lstm")
OBJECTIVES = ("clm", "mlm")
TASK_KINDS = ("lm", "classify", "seq2seq")  # what a run learns (task.kind): one training loop for all three
POOLS = ("last", "mean", "first")
BODIES = ("transformer", "bag")
SEQ2SEQ_TASKS = ("reverse", "sort", "add")
TOKENIZERS = ("char", "bpe", "hf")  # hf: a Hugging Face tokenizer.json, from an imported run
PRECISIONS = ("float32", "bfloat16", "float16")  # a named dtype (sample --dtype takes these)
DTYPES = ("auto", *PRECISIONS)
INT_LIMIT = 2**62  # every integer key: beyond this, numpy and torch overflow
SEED_MAX = 2**63 - 1
VOCAB_MULTIPLE_MAX = 1024  # beyond it padding only wastes memory


@dataclass
class ModelConfig:
    arch: str = "gpt"  # gpt | lstm (a recurrent baseline with the same embedding and head)
    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    d_ff: Optional[int] = None  # None: 4 * d_model (relu/gelu/gelu_tanh), 8/3 * d_model for swiglu (same params)
    block_size: int = 64
    dropout: float = 0.0
    bias: bool = True
    activation: str = "gelu"  # relu | gelu | gelu_tanh (GPT-2's tanh approximation) | swiglu | relu2 (squared ReLU)
    pos_encoding: str = "learned"  # learned | sinusoidal | rope | none
    causal: bool = True  # False turns every block into a bidirectional (encoder) block
    ffn: bool = True  # False: attention-only blocks
    tie_weights: bool = True  # share the token embedding with the LM head
    rope_base: float = 10000.0
    norm: str = "layernorm"  # layernorm | rmsnorm (no mean subtraction, no bias)
    norm_position: str = "pre"  # pre: x + f(norm(x)) (GPT-2 on) | post: norm(x + f(x)) (Vaswani et al. 2017)
    n_kv_head: Optional[int] = None  # None: n_head (multi-head); fewer: grouped-query; 1: multi-query
    qk_norm: bool = False  # RMS-normalise each head's queries and keys before the dot product
    logit_softcap: Optional[float] = None  # None: off; c: logits = c * tanh(logits / c)
    vocab_multiple: int = 1  # pad the embedding/LM-head rows to a multiple (64 or 128 on GPUs); 1: none

    @property
    def kv_heads(self) -> int:
        """The key/value heads actually built (and cached)."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    def padded_vocab(self, vocab_size: int) -> int:
        """The rows of the embedding and the LM head: the vocabulary rounded up to vocab_multiple.
        Tensor cores run a matmul whose output width is a multiple of 64 faster; the padded rows
        never receive a probability (the model drops their logits), so nothing else changes."""
        return _round_up(vocab_size, max(1, self.vocab_multiple))

    @property
    def d_k(self) -> int:
        return self.d_model // self.n_head

    @property
    def d_ff_resolved(self) -> int:
        """The hidden width of the FFN actually built."""
        if self.d_ff is not None:
            return self.d_ff
        if self.activation == "swiglu":
            # Gated FFNs have three matrices; 2/3 of 4*d keeps the parameter count of a 4*d FFN.
            return _round_up(int(8 * self.d_model / 3), 8)
        return 4 * self.d_model


@dataclass
class DataConfig:
    corpus: str = "prose"  # a built-in name (see `tformer corpora`) or a path to a UTF-8 text file
    tokenizer: str = "char"  # char | bpe | hf (the tokenizer.json of an imported model)
    vocab_size: int = 512  # BPE only
    val_fraction: float = 0.1  # the last fraction of the corpus is the validation split
    max_chars: Optional[int] = None  # at most this many characters of the corpus (code: its size, 2 MB unless set)
    text_field: str = "text"  # a JSONL file's, Parquet file's or hf: dataset's field (column) that holds the text


@dataclass
class TrainConfig:
    steps: int = 600
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: Optional[float] = None  # None: lr / 10
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables clipping
    eval_interval: int = 100
    eval_iters: int = 20
    log_interval: int = 10
    ckpt_interval: Optional[int] = None  # None: at every evaluation
    tensorboard: bool = True  # TensorBoard event files in the run directory, beside metrics.jsonl
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere) | float32 | bfloat16 | float16
    tf32: bool = True  # CUDA: float32 matmuls as TensorFloat-32 (10-bit mantissa); false: full float32
    compile: Optional[bool] = None  # None: decided per run (train/compile_policy.py)
    cuda_graph: Optional[bool] = None  # None: on for an eager, launch-bound CUDA run (train/graph_step.py)
    objective: str = "clm"  # clm (next token) | mlm (BERT-style masked tokens, bidirectional)
    optimizer: str = "adamw"  # adamw | muon (Muon on the blocks' matrices, AdamW at train.lr on the rest)
    muon_lr: float = 0.02  # Muon's peak learning rate (same warm-up and decay as train.lr)
    muon_momentum: float = 0.95


@dataclass
class TaskConfig:
    """What a run learns.  lm: the next token (or masked tokens) of data.corpus, `tformer train`.
    classify: a label per text, `tformer finetune`.  seq2seq: a target sequence from a source,
    `tformer seq2seq`.  The same loop trains all three (train/loop.py)."""

    kind: str = "lm"  # lm | classify | seq2seq
    # classify: a built-in labelled task (source, order) or a TSV/JSONL file; seq2seq: reverse | sort | add
    data: str = ""
    source_run: Optional[str] = None  # classify: the run whose tokenizer (and weights) it starts from
    from_scratch: bool = False  # classify: random weights for the body
    body: str = "transformer"  # classify: transformer | bag (mean token embedding, no order)
    pool: str = "last"  # classify: last | mean | first, the hidden states the head reads
    freeze: bool = False  # classify: train the head only (a linear probe)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    task: TaskConfig = field(default_factory=TaskConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def get(self, path: str) -> Any:
        section, key = path.split(".", 1)
        return getattr(getattr(self, section), key)

    def replace(self, overrides: dict[str, Any]) -> "Config":
        """A validated copy with ``{"model.n_head": 8, ...}`` applied."""
        data = self.to_dict()
        for path, value in overrides.items():
            section, key = path.split(".", 1)
            data[section][key] = value
        return from_dict(data)


def _round_up(x: int, multiple: int) -> int:
    return (x + multiple - 1) // multiple * multiple


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "task": TaskConfig}


def all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(path: str, value: Any, hint: Any) -> tuple[Any, str | None]:
    """Check ``value`` against the annotated type; return (value, problem)."""
    optional = False
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
    if value is None or (optional and value in ("auto", "none", "null")):
        if optional:
            return None, None
        return value, f"{path}: a value is required (got null)"
    if hint is bool:
        if isinstance(value, bool):
            return value, None
        return value, f"{path}: expected true or false, got {short(value)}"
    if hint in (int, float) and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string; accept it as the number it means
            value = float(value) if hint is float else int(value)
        except ValueError:
            pass
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value, None
        if isinstance(value, float) and value.is_integer():
            return int(value), None
        return value, f"{path}: expected an integer, got {short(value)}"
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), None
        return value, f"{path}: expected a number, got {short(value)}"
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value), None
        return value, f"{path}: expected a string, got {short(value)}"
    return value, None


def from_dict(data: dict[str, Any], problems: list[str] | None = None) -> Config:
    """Build a Config from nested dicts, collecting every problem before raising."""
    own = problems is None
    problems = [] if own else problems
    if not isinstance(data, dict):
        raise ConfigError("the configuration must be a mapping with sections model:, data:, train:")
    sections = {}
    for name, section in data.items():
        if name not in SECTIONS:
            problems.append(f"unknown section {short(name)}{_suggest(str(name)[:80], list(SECTIONS))}")
            continue
        if section is None:
            section = {}
        if not isinstance(section, dict):
            problems.append(f"{name}: expected a mapping of keys, got {short(section)}")
            continue
        sections[name] = section
    built = {}
    for name, cls in SECTIONS.items():
        hints = _field_types(cls)
        kwargs = {}
        for key, value in sections.get(name, {}).items():
            if key not in hints:
                problems.append(
                    f"unknown key {short(f'{name}.{key}')}{_suggest(f'{name}.{key}'[:80], all_keys())}"
                )
                continue
            value, problem = _coerce(f"{name}.{key}", value, hints[key])
            if problem:
                problems.append(problem)
            else:
                kwargs[key] = value
        built[name] = cls(**kwargs)
    cfg = Config(**built)
    problems.extend(validate(cfg))
    if own and problems:
        raise ConfigError(problems, hint="see `tformer keys` for every key, its type and default")
    return cfg


def valid_head_counts(d_model: int) -> list[int]:
    return [h for h in range(1, d_model + 1) if d_model % h == 0]


def head_count_problem(d_model: int, n_head: int) -> str | None:
    if n_head <= 0 or d_model <= 0 or d_model % n_head == 0:
        return None
    valid = ", ".join(map(str, valid_head_counts(d_model)))
    return (
        f"model.n_head: d_model={d_model} is not divisible by n_head={n_head}; "
        f"valid head counts for d_model={d_model}: {valid}"
    )


def kv_head_count_problem(n_head: int, n_kv_head: int | None) -> str | None:
    if n_kv_head is None or n_head <= 0 or (0 < n_kv_head <= n_head and n_head % n_kv_head == 0):
        return None
    valid = ", ".join(str(h) for h in range(1, n_head + 1) if n_head % h == 0)
    return (f"model.n_kv_head: {n_kv_head} key/value heads cannot be shared evenly by n_head={n_head} "
            f"query heads; valid values for n_head={n_head}: {valid}")


def validate(cfg: Config) -> list[str]:
    """Every impossible value, named by its key."""
    p, bad = _number_problems(cfg)
    return (p + _model_problems(cfg, bad) + _data_problems(cfg, bad) + _train_problems(cfg, bad)
            + _task_problems(cfg))


def _task_problems(cfg: Config) -> list[str]:
    t = cfg.task
    p = _choice("task.kind", t.kind, TASK_KINDS) + _choice("task.pool", t.pool, POOLS) \
        + _choice("task.body", t.body, BODIES)
    if t.kind == "seq2seq" and t.data not in SEQ2SEQ_TASKS:
        p.append(f"task.data: '{short(t.data)}' is not one of {', '.join(SEQ2SEQ_TASKS)} (the seq2seq tasks)")
    if t.kind == "seq2seq" and cfg.model.arch not in ("encdec", "gpt"):
        p.append(f"model.arch: a seq2seq run takes encdec or gpt, got '{cfg.model.arch}'")
    if t.kind == "classify" and not t.data:
        p.append("task.data: empty; give a built-in labelled task (source, order) or a TSV/JSONL file")
    if t.kind == "classify" and t.freeze and (t.from_scratch or t.body == "bag"):
        p.append("task.freeze: a frozen random body learns nothing; freeze only a pretrained run")
    return p


def _number_problems(cfg: Config) -> tuple[list[str], set[str]]:
    """Every number first: finite, and an integer within what torch and numpy can hold.  A key
    that fails here (in the returned set) is not range-checked again (nan fails every comparison)."""
    p: list[str] = []
    bad: set[str] = set()
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            value, key = getattr(getattr(cfg, section), f.name), f"{section}.{f.name}"
            if isinstance(value, bool) or value is None:
                continue
            if isinstance(value, float) and not math.isfinite(value):
                p.append(f"{key}: must be a finite number, got {value}")
                bad.add(key)
            elif isinstance(value, int) and key != "train.seed" and not -INT_LIMIT <= value <= INT_LIMIT:
                p.append(f"{key}: {short(value)} is out of range (at most {INT_LIMIT:,})")
                bad.add(key)
    if "train.seed" not in bad and not 0 <= cfg.train.seed <= SEED_MAX:
        p.append(f"train.seed: must be in [0, 2**63 - 1], got {short(cfg.train.seed)}")
    return p, bad


def _choice(path: str, value: str, choices: tuple[str, ...]) -> list[str]:
    if value in choices:
        return []
    return [f"{path}: '{value}' is not one of {', '.join(choices)}{_suggest(value, list(choices))}"]


def _positive(path: str, value: float | int | None, bad: set[str]) -> list[str]:
    return [f"{path}: must be positive, got {value}"] if value is not None and path not in bad and value <= 0 else []


def _model_problems(cfg: Config, bad: set[str]) -> list[str]:
    m = cfg.model
    if m.arch == "encdec" and cfg.task.kind == "seq2seq":  # an encoder-decoder: its blocks are the GPT's
        return _positive("model.d_model", m.d_model, bad) + _positive("model.n_layer", m.n_layer, bad)
    if m.arch == "encdec":  # trained on sequence pairs, not on a corpus: its own command
        return ["model.arch: encdec (the T5-style encoder-decoder) is trained by `tformer seq2seq`; "
                "train, ablate and the sweeps take gpt or lstm"]
    p = (_choice("model.arch", m.arch, ARCHS) + _choice("model.activation", m.activation, ACTIVATIONS)
         + _choice("model.pos_encoding", m.pos_encoding, POS_ENCODINGS) + _choice("model.norm", m.norm, NORMS)
         + _choice("model.norm_position", m.norm_position, NORM_POSITIONS))
    for key in ("d_model", "n_layer", "n_head", "block_size", "d_ff"):
        p += _positive(f"model.{key}", getattr(m, key), bad)
    if problem := head_count_problem(m.d_model, m.n_head):
        p.append(problem)
    if "model.n_kv_head" not in bad and (problem := kv_head_count_problem(m.n_head, m.n_kv_head)):
        p.append(problem)
    if m.pos_encoding == "rope" and m.n_head > 0 and m.d_model % m.n_head == 0 and m.d_k % 2:
        p.append(f"model.pos_encoding: rope needs an even head size d_k, got d_k={m.d_k}")
    if m.pos_encoding == "sinusoidal" and m.d_model % 2:
        p.append(f"model.pos_encoding: sinusoidal needs an even d_model, got {m.d_model}")
    if "model.dropout" not in bad and not 0.0 <= m.dropout < 1.0:
        p.append(f"model.dropout: must be in [0, 1), got {m.dropout}")
    if "model.vocab_multiple" not in bad and not 1 <= m.vocab_multiple <= VOCAB_MULTIPLE_MAX:
        p.append(f"model.vocab_multiple: must be in [1, {VOCAB_MULTIPLE_MAX}] (1: no padding; 64 or 128 "
                 f"on GPUs), got {m.vocab_multiple}")
    return p + _positive("model.rope_base", m.rope_base, bad) + _positive("model.logit_softcap", m.logit_softcap, bad)


def _data_problems(cfg: Config, bad: set[str]) -> list[str]:
    d = cfg.data
    p = _choice("data.tokenizer", d.tokenizer, TOKENIZERS)
    if d.tokenizer == "bpe" and d.vocab_size < 257:
        p.append(f"data.vocab_size: byte-level BPE needs at least 257 (256 bytes + 1), got {d.vocab_size}")
    if "data.val_fraction" not in bad and not 0.0 < d.val_fraction < 1.0:
        p.append(f"data.val_fraction: must be in (0, 1), got {d.val_fraction}")
    if not d.corpus:
        p.append("data.corpus: empty; give a built-in name or a file path")
    if not d.text_field:
        p.append("data.text_field: empty; name the field (column) that holds the text")
    if d.max_chars is not None and "data.max_chars" not in bad and d.max_chars < 1000:
        p.append(f"data.max_chars: at least 1,000 characters (a validation split must hold a window), "
                 f"got {d.max_chars}")
    return p


def _train_problems(cfg: Config, bad: set[str]) -> list[str]:
    m, t = cfg.model, cfg.train
    p = (_choice("train.dtype", t.dtype, DTYPES) + _choice("train.objective", t.objective, OBJECTIVES)
         + _choice("train.optimizer", t.optimizer, OPTIMIZERS) + _positive("train.muon_lr", t.muon_lr, bad))
    for key in ("steps", "batch_size", "grad_accum", "lr", "eval_interval", "eval_iters", "log_interval",
                "ckpt_interval"):
        p += _positive(f"train.{key}", getattr(t, key), bad)
    for key in ("warmup_steps", "weight_decay", "grad_clip"):
        if f"train.{key}" not in bad and getattr(t, key) < 0:
            p.append(f"train.{key}: must be >= 0, got {getattr(t, key)}")
    if t.min_lr is not None and "train.min_lr" not in bad and t.min_lr < 0:
        p.append(f"train.min_lr: must be >= 0, got {t.min_lr}")
    for key in ("beta1", "beta2", "muon_momentum"):
        if f"train.{key}" not in bad and not 0.0 <= getattr(t, key) < 1.0:
            p.append(f"train.{key}: must be in [0, 1), got {getattr(t, key)}")
    if t.objective == "mlm" and m.causal:
        # MLM is defined with bidirectional attention; say so rather than silently change it.
        p.append("train.objective: mlm needs a bidirectional model; also set model.causal=false")
    if m.arch == "lstm" and t.objective == "mlm":
        p.append("train.objective: mlm needs model.arch=gpt (an LSTM reads left to right)")
    dev = t.device
    if not (dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        p.append(f"train.device: '{dev}' is not one of auto, cpu, cuda, cuda:N, mps")
    return p


# ---------------------------------------------------------------- files and overrides


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML file with the safe loader (tags that build Python objects are refused)."""
    path = Path(path)
    try:
        text = read_text(path)
    except UnreadableFile as e:
        if e.missing:
            raise ConfigError(f"config file not found: {path}",
                              hint="give a path to a YAML file, or --preset NAME") from None
        raise ConfigError(f"config file {e}") from None
    try:
        data = yaml_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        what = (e.problem or "invalid YAML")[:200]
        if "constructor" in type(e).__name__.lower() or "tag" in (e.problem or ""):
            what = f"{what} (tags that construct Python objects are not allowed)"
        raise ConfigError(f"cannot parse {path} at {where}: {what}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse {path}: {short(str(e), 200)}") from None
    except RecursionError:
        raise ConfigError(f"cannot parse {path}: nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with sections model:, data:, train:")
    return data


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(
            f"unknown preset '{name}'{_suggest(name, preset_names())}",
            hint=f"presets: {', '.join(preset_names())}",
        )
    return path


def split_assignment(item: str) -> tuple[str, str] | None:
    """``"KEY=VALUE"`` -> (KEY stripped, VALUE as written); None without an ``=``."""
    if "=" not in item:
        return None
    key, raw = item.split("=", 1)
    return key.strip(), raw


PRETRAIN_PREFIX = "pretrain."


def pretrain_key(key: str) -> tuple[str, str] | None:
    """``"pretrain.NAME.section.key"`` -> (NAME, "section.key"); None for a key of any other form."""
    parts = key.split(".")
    return (parts[1], f"{parts[2]}.{parts[3]}") if len(parts) == 4 and key.startswith(PRETRAIN_PREFIX) else None


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["model.n_head=8", "train.lr=3e-4"]`` -> ``{"model.n_head": 8, "train.lr": 0.0003}``."""
    out: dict[str, Any] = {}
    problems = []
    for item in items:
        pair = split_assignment(item)
        if pair is None:
            problems.append(f"--set {short(item)}: expected KEY=VALUE, e.g. model.n_head=8")
            continue
        key, raw = pair
        body = pretrain_key(key)  # pretrain.NAME.section.key: a model of a study's pretrain: section
        if key not in all_keys() and (body is None or body[1] not in all_keys()):
            problems.append(f"--set: unknown key {short(key)}{_suggest(key[:80], all_keys())}")
            continue
        try:
            value = yaml_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, RecursionError):
            value = raw
        out[key] = value
    if problems:
        raise ConfigError(problems, hint="see `tformer keys` for every key")
    return out


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply dotted overrides to a nested dict (a copy)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for path, value in overrides.items():
        section, key = path.split(".", 1)
        if not isinstance(out.get(section), dict):
            out[section] = {}
        out[section][key] = value
    return out


def resolve(
    config_file: str | Path | None = None,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """defaults < preset < YAML file < overrides (flags and --set), validated once."""
    data: dict[str, Any] = {}
    if preset is not None:
        data = load_yaml(preset_path(preset))
    if config_file is not None:
        file_data = load_yaml(config_file)
        for section, values in file_data.items():
            if isinstance(values, dict) and isinstance(data.get(section), dict):
                data[section] = {**data[section], **values}
            else:
                data[section] = values
    return from_dict(merge(data, overrides or {}))


def describe_keys() -> list[tuple[str, str, str]]:
    """(key, type, default) for every configuration key, for `tformer keys`."""
    rows = []
    default = Config()
    for section, cls in SECTIONS.items():
        hints = _field_types(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            name = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
            rows.append((f"{section}.{f.name}", name, repr(default.get(f"{section}.{f.name}"))))
    return rows
