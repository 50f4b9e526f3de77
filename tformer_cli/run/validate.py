"""The schema of everything a run directory holds, checked before anything is allocated.

A run directory may have been damaged by a disk, edited by hand or crafted.  Every file that
tformer reads back goes through one of the readers here, which check types, ranges, and, for
the checkpoint, every tensor's name, dtype, shape and byte range against the config in its
own header *before* a byte of tensor data is read or a model is built.  Each violation is one
line naming the file and the field (a RunError, exit 1).

The checkpoint is a safetensors file: 8 bytes (little-endian header length N), N bytes of
JSON, then the raw tensor bytes.  That header is parsed here with a bounded read, so a
truncated file, a 10 GB header length or a symlink to /dev/zero is refused without reading it.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from tformer_cli.core.untrusted import UnreadableFile, read_text, regular_file_size, short
from tformer_cli.errors import ConfigError, RunError

HEADER_LIMIT = 16 << 20  # a tformer checkpoint's JSON header is a few kB; 16 MiB is generous
ROW_LIMIT = 64 << 20  # metrics.jsonl / perf.jsonl read at most this many bytes
VOCAB_LIMIT = 1 << 24

# safetensors dtype names and their sizes in bytes
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
RETRAIN = "retrain, or restore the file from a backup"


def damaged(path: Path | str, field: str, problem: str, hint: str = RETRAIN) -> RunError:
    """One line: which file, which field, what is wrong."""
    where = f" field {field}:" if field else ""
    return RunError(f"{path} is damaged:{where} {problem}", hint=hint)


# ---------------------------------------------------------------- small typed checks


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class Fields:
    """Typed access to a mapping read from ``path``: each getter raises ``damaged`` on a bad value."""

    def __init__(self, path: Path | str, data: Any, prefix: str = ""):
        self.path, self.prefix = path, prefix
        if not isinstance(data, dict):
            raise damaged(path, prefix.rstrip("."), f"expected a JSON object, got {type(data).__name__}")
        self.data = data

    def _bad(self, key: str, want: str) -> RunError:
        if key not in self.data:
            return damaged(self.path, self.prefix + key, "missing")
        return damaged(self.path, self.prefix + key, f"expected {want}, got {short(self.data[key])}")

    def int(self, key: str, lo: int = 0, hi: int = 2**62, optional: bool = False) -> int | None:
        v = self.data.get(key)
        if v is None and optional:
            return None
        if not is_int(v) or not lo <= v <= hi:
            raise self._bad(key, f"an integer in [{lo}, {hi}]")
        return v

    def num(self, key: str, lo: float = -math.inf, hi: float = math.inf, optional: bool = False) -> float | None:
        v = self.data.get(key)
        if v is None and optional:
            return None
        if not is_num(v) or not lo <= v <= hi:
            raise self._bad(key, "a finite number" + (f" in [{lo:g}, {hi:g}]" if (lo, hi) != (-math.inf, math.inf)
                                                      else ""))
        return v

    def bool(self, key: str, optional: bool = False) -> bool | None:
        v = self.data.get(key)
        if v is None and optional:
            return None
        if not isinstance(v, bool):
            raise self._bad(key, "true or false")
        return v

    def str(self, key: str, optional: bool = False) -> str | None:
        v = self.data.get(key)
        if v is None and optional:
            return None
        if not isinstance(v, str):
            raise self._bad(key, "a string")
        return v

    def obj(self, key: str, optional: bool = False) -> dict | None:
        v = self.data.get(key)
        if v is None and optional:
            return None
        if not isinstance(v, dict):
            raise self._bad(key, "a JSON object")
        return v

    def list(self, key: str, optional: bool = False) -> list | None:
        v = self.data.get(key)
        if v is None and optional:
            return None
        if not isinstance(v, list):
            raise self._bad(key, "a list")
        return v


def read_json(path: Path, limit: int = 64 << 20, what: str = "") -> Any:
    """A JSON file read with a size bound; RunError naming the file when it cannot be parsed."""
    try:
        text = read_text(path, limit)
    except UnreadableFile as e:
        raise RunError(f"cannot read {what or path.name}: {e}", hint=RETRAIN) from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise damaged(path, "", f"not valid JSON ({short(str(e), 80)})") from None


# ---------------------------------------------------------------- checkpoint


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """(the safetensors JSON header, the size of the data section), refusing a torn or foreign file."""
    try:
        size = regular_file_size(path)
    except UnreadableFile as e:
        raise RunError(f"checkpoint {e}", hint=RETRAIN) from None
    head = read_prefix(path, 9)
    if looks_like_pickle(head):
        raise RunError(f"checkpoint {path} is a pickle, which tformer refuses to load (pickles can run code)",
                       hint="only checkpoint.safetensors written by tformer is loaded")
    if len(head) < 8:
        raise RunError(f"checkpoint {path} is corrupt or truncated ({size} bytes)", hint=RETRAIN)
    (n,) = struct.unpack("<Q", head[:8])
    if n > HEADER_LIMIT:
        if n > size - 8:
            raise RunError(f"checkpoint {path} is corrupt or truncated (its header claims "
                           f"{n:,} bytes, the file has {size:,})", hint=RETRAIN)
        raise damaged(path, "", f"its header is {n:,} bytes, more than the {HEADER_LIMIT:,} allowed")
    if n > size - 8:
        raise RunError(f"checkpoint {path} is corrupt or truncated (its header claims {n:,} bytes, the file has "
                       f"{size:,})",
                       hint=RETRAIN)
    raw = read_prefix(path, 8 + n)[8:]
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RunError(f"checkpoint {path} is corrupt or truncated (its header is not valid JSON)",
                       hint=RETRAIN) from None
    if not isinstance(header, dict):
        raise damaged(path, "", "its header is not a JSON object")
    return header, size - 8 - n


def looks_like_pickle(head: bytes) -> bool:
    """Whether a file's first 9 bytes are a pickle's (0x80, then its protocol) or torch.save's zip
    ('PK').  A safetensors file starts with its header's size, 8 bytes little-endian, which can
    begin with 0x80 too (a header of 0x1280 bytes does): its 9th byte, the header's '{', tells."""
    return head[8:9] != b"{" and (head[:1] == b"\x80" or head[:2] == b"PK")


def read_prefix(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise RunError(f"cannot read checkpoint {path}: {e.strerror or e}") from None


def tensor_table(path: Path, header: dict[str, Any], data_size: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (dtype, shape)} of every tensor, each byte range checked against the file."""
    table = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        f = Fields(path, entry, f"{name}.")
        dtype = f.str("dtype")
        if dtype not in DTYPE_SIZES:
            raise damaged(path, f"{name}.dtype", f"unknown dtype {short(dtype)}")
        shape = f.list("shape")
        if len(shape) > 8 or not all(is_int(d) and 0 <= d <= 2**40 for d in shape):
            raise damaged(path, f"{name}.shape", f"expected a list of sizes, got {short(shape)}")
        offsets = f.list("data_offsets")
        if len(offsets) != 2 or not all(is_int(o) and o >= 0 for o in offsets) or offsets[0] > offsets[1]:
            raise damaged(path, f"{name}.data_offsets", f"expected [begin, end], got {short(offsets)}")
        numel = math.prod(shape)
        if offsets[1] - offsets[0] != numel * DTYPE_SIZES[dtype]:
            raise damaged(path, f"{name}.data_offsets", f"{offsets[1] - offsets[0]} bytes for a {dtype} tensor "
                          f"of shape {tuple(shape)}")
        if offsets[1] > data_size:
            raise RunError(f"checkpoint {path} is corrupt or truncated: tensor {short(name, 40)} ends at byte "
                           f"{offsets[1]:,} of a {data_size:,}-byte data section", hint=RETRAIN)
        table[name] = (dtype, tuple(shape))
    return table


def parse_metadata(path: Path, header: dict[str, Any]) -> dict[str, Any]:
    """The tformer fields of the safetensors metadata, each a JSON value."""
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise damaged(path, "__metadata__", "missing or not a map of strings (not a tformer checkpoint?)")
    out = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except (ValueError, RecursionError):
            raise damaged(path, k, "not valid JSON") from None
    return out


def check_train_state(path: Path, state: Any) -> dict[str, Any]:
    f = Fields(path, state, "train_state.")
    f.int("step")
    f.num("loss_sum", optional=True)
    f.int("loss_count", optional=True)
    for key in ("best_val_loss", "last_val_loss", "last_train_loss"):
        f.num(key, optional=True)
    f.int("world", lo=1, hi=1 << 20, optional=True)
    scaler = f.obj("grad_scaler", optional=True)
    if scaler:
        g = Fields(path, scaler, "train_state.grad_scaler.")
        for key in scaler:
            g.num(key)
        if "scale" in scaler:
            g.num("scale", lo=0.0)
    return state


def check_header(path: Path, meta: dict[str, Any], fmt: str):
    """(config, vocab_size) of a checkpoint header, with every field typed; the config validated."""
    from tformer_cli.core.config import from_dict

    f = Fields(path, meta)
    if meta.get("format") != fmt:
        raise RunError(f"{path} is not a tformer checkpoint (format {short(meta.get('format'))})",
                       hint="only checkpoints written by tformer train are loaded")
    config = f.obj("config")
    try:
        cfg = from_dict(config)
    except ConfigError as e:
        raise damaged(path, "config", e.problems[0] + (f" (and {len(e.problems) - 1} more)"
                                                       if len(e.problems) > 1 else "")) from None
    vocab = f.int("vocab_size", lo=1, hi=VOCAB_LIMIT)
    check_train_state(path, f.obj("train_state"))
    groups = f.list("optim_groups", optional=True) or []
    for i, g in enumerate(groups):
        gf = Fields(path, g, f"optim_groups.{i}.")
        params = gf.list("params")
        if not all(is_int(p) and 0 <= p < 1 << 20 for p in params):
            raise damaged(path, f"optim_groups.{i}.params", "expected a list of parameter indices")
        _check_group(path, i, g, gf)
    return cfg, vocab


OPTIMIZER_STATE_NAMES = ("exp_avg", "exp_avg_sq", "step", "momentum_buffer")  # AdamW's and Muon's
GROUP_NUMBERS = ("lr", "eps", "weight_decay", "lr_scale", "momentum")  # AdamW's and Muon's
MUON_ADJUST = ("original", "match_rms_adamw")


def _check_group(path: Path, i: int, g: dict, gf: Fields) -> None:
    """One saved optimizer group: AdamW's or Muon's hyper-parameters, every value in range."""
    for key in GROUP_NUMBERS:
        gf.num(key, lo=0.0, optional=True)
    gf.int("ns_steps", lo=1, hi=100, optional=True)
    for key, n, lo, hi in (("betas", 2, 0, 1), ("ns_coefficients", 3, -100, 100)):
        got = gf.list(key, optional=True)
        if got is not None and (len(got) != n or not all(is_num(b) and lo <= b < hi for b in got)):
            raise damaged(path, f"optim_groups.{i}.{key}", f"expected {n} numbers in [{lo}, {hi}), got {short(got)}")
    if g.get("adjust_lr_fn") not in (None, *MUON_ADJUST):
        raise damaged(path, f"optim_groups.{i}.adjust_lr_fn", f"expected one of {', '.join(MUON_ADJUST)} or null")
    known = ("params", *GROUP_NUMBERS, "ns_steps", "betas", "ns_coefficients", "adjust_lr_fn")
    for key, value in g.items():
        if key not in known and not isinstance(value, (bool, type(None))):
            raise damaged(path, f"optim_groups.{i}.{key}", f"expected true, false or null, got {short(value)}")


def meta_model(cfg, vocab_size: int):
    """The model of ``cfg`` on the meta device: every shape, no memory."""
    import torch

    from tformer_cli.core.encdec import build_any

    with torch.device("meta"):
        return build_any(cfg.model, vocab_size)


def model_shapes(model) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the tensors a checkpoint holds (a tied LM head is stored once)."""
    sd = model.state_dict()
    if getattr(model.cfg, "tie_weights", False) and "lm_head.weight" in sd and "tok_emb.weight" in sd:
        sd.pop("lm_head.weight")
    return {k: tuple(v.shape) for k, v in sd.items()}


def plausible_size(path: Path, cfg, vocab_size: int, data_size: int, n_tensors: int) -> None:
    """Refuse a header whose config needs far more weights than the file holds, before even a
    meta model is built (a crafted n_layer of 10**9 would take minutes to build)."""
    from tformer_cli.core import anatomy

    if cfg.model.n_layer > n_tensors:
        raise damaged(path, "config.model.n_layer", f"{cfg.model.n_layer} layers, but the file holds only "
                      f"{n_tensors} tensors")
    try:
        params = anatomy.totals(cfg.model, vocab_size).params
    except Exception:  # an arch anatomy does not know: the tensor check below still applies
        return
    if params * 4 > 4 * data_size + (1 << 20):  # only the absurd: the exact check names the tensor
        raise damaged(path, "config", f"the config needs {params:,} float32 weights ({params * 4:,} bytes), "
                      f"the file holds {data_size:,} bytes of tensors")


def _group_numbering(groups, header_groups) -> list[str]:
    if groups is None or not header_groups:
        return []
    first, want = 0, []
    for _, shapes in groups:
        want.append(list(range(first, first + len(shapes))))
        first += len(shapes)
    got = [g.get("params") for g in header_groups]
    return [] if got == want else [f"optim_groups number the parameters {short(got)}, the model needs {short(want)}"]


def _optimizer_state_problems(optim: dict, per_param: list, complete: bool) -> list[str]:
    """Each parameter's saved state: exactly the names its group keeps, float32, its shape."""
    problems = []
    for idx, state in sorted(optim.items()):
        if idx >= len(per_param):
            problems.append(f"optimizer state for parameter {idx}, the model has {len(per_param)}")
            continue
        names, shape = per_param[idx]
        for name, (dtype, got) in state.items():
            want = () if name == "step" else shape
            if name not in names:
                problems.append(f"unexpected tensor optim.{idx}.{name}")
            elif dtype != "F32" or got != want:
                problems.append(f"optim.{idx}.{name} is {dtype} {got}, expected F32 {want}")
        if missing := set(names) - set(state):
            problems.append(f"optim.{idx} lacks {', '.join(sorted(missing))}")
    if complete and len(optim) != len(per_param):
        problems.append(f"the optimizer state covers {len(optim)} of {len(per_param)} parameters "
                        "(a resume without it would not be exact)")
    return problems


def check_tensors(path: Path, table: dict[str, tuple[str, tuple[int, ...]]], model: dict[str, tuple[int, ...]],
                  groups: list[tuple[tuple[str, ...], list[tuple[int, ...]]]] | None, with_optimizer: bool,
                  step: int, header_groups: list | None = None) -> None:
    """Every tensor name, dtype and shape against what the config needs; optimizer state complete.

    ``groups``: (state names, parameter shapes) of each optimizer group, in index order (the order
    the optimizer numbers them); None skips the optimizer (inference)."""
    problems = _group_numbering(groups, header_groups)
    for name, shape in model.items():
        key = f"model.{name}"
        if key not in table:
            problems.append(f"missing {name}")
        elif table[key][0] != "F32":
            problems.append(f"{name} is {table[key][0]}, expected F32")
        elif table[key][1] != shape:
            problems.append(f"{name} has shape {table[key][1]}, the config needs {shape}")
    per_param = [(names, s) for names, shapes in (groups or []) for s in shapes]
    # without the groups (inference skips the optimizer) any optimizer's state names are known
    every_name = {n for names, _ in per_param for n in names} or set(OPTIMIZER_STATE_NAMES)
    optim = {}
    for key in table:
        if key.startswith("model."):
            if key[6:] not in model:
                problems.append(f"unexpected {short(key[6:])}")
        elif key.startswith("optim."):
            parts = key.split(".")
            if len(parts) != 3 or not parts[1].isdigit() or parts[2] not in every_name:
                problems.append(f"unexpected tensor {short(key)}")
                continue
            optim.setdefault(int(parts[1]), {})[parts[2]] = table[key]
        else:
            problems.append(f"unexpected tensor {short(key)}")
    if groups is not None:
        problems += _optimizer_state_problems(optim, per_param, with_optimizer and step > 0)
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise RunError(f"checkpoint {path} does not match its config: {shown}",
                       hint="the file may have been edited or come from another run")


# ---------------------------------------------------------------- summary.json, metrics.jsonl


NUMERIC_ROW_KEYS = ("train_loss", "val_loss", "val_bpb", "lr", "tokens", "tokens_per_s")


def metric_rows(path: Path, upto: int | None, strict: bool) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl-style file; see RunDir.metric_rows."""
    try:
        text = read_text(path, ROW_LIMIT)
    except UnreadableFile as e:
        if e.missing:
            return []
        if strict:
            raise RunError(f"cannot read {e}", hint=f"move {path} aside to start its records afresh") from None
        return []
    lines = text.splitlines()
    torn = len(lines) - 1 if lines and not text.endswith("\n") else None  # a crash mid-write
    rows = []
    for i, line in enumerate(lines):
        problem = None
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            row, problem = None, "not valid JSON"
        if problem is None:
            if not isinstance(row, dict):
                problem = "not a JSON object"
            elif not (is_int(row.get("step")) and row["step"] >= 0):
                problem = f"field step: expected an integer >= 0, got {short(row.get('step'))}"
            else:
                bad = next((k for k in NUMERIC_ROW_KEYS if k in row and not (is_num(row[k]) or row[k] is None)),
                           None)
                if bad is not None:
                    problem = f"field {short(bad, 40)}: expected a number, got {short(row[bad])}"
        if problem is not None:
            if strict and i != torn and line.strip():
                raise RunError(f"{path} is damaged: line {i + 1}: {problem}",
                               hint="delete that line (or the file, to lose the curve) and resume again")
            continue
        if upto is None or row["step"] <= upto:
            rows.append(row)
    return rows
