"""Hugging Face GPT-2 folders in and out: `tformer import` and `tformer export --format hf`.

A GPT-2 folder holds ``config.json``, ``model.safetensors`` and ``tokenizer.json``.  tformer's
GPT computes what GPT2LMHeadModel computes when its switches are set to GPT-2's (learned
positions, LayerNorm with bias, gelu_tanh, tied head), and the weights map one to one:

    HF (GPT2LMHeadModel, prefix ``transformer.``)    tformer (GPT)
    wte.weight (V, C)                                tok_emb.weight
    wpe.weight (n_positions, C)                      pos_emb.weight
    h.i.ln_1 / h.i.ln_2 (weight, bias)               blocks.i.ln1 / blocks.i.ln2
    h.i.attn.c_attn.weight (C, 3C), bias (3C)        blocks.i.attn.qkv.weight (3C, C) = its transpose
    h.i.attn.c_proj.weight (C, C)                    blocks.i.attn.proj.weight, transposed
    h.i.mlp.c_fc.weight (C, F)                       blocks.i.ffn.w1.weight (F, C), transposed
    h.i.mlp.c_proj.weight (F, C)                     blocks.i.ffn.w2.weight (C, F), transposed
    ln_f                                             ln_f
    lm_head.weight (only when untied)                lm_head.weight

GPT-2 stores its linear layers as Conv1D, (in, out); torch's Linear is (out, in): hence the
transposes.  The fused c_attn holds Q, K, V side by side, in tformer's order, each split into
heads the same way.  Only safetensors are read: a pickle (``pytorch_model.bin``) can run code
when loaded and is refused.  Torch is imported inside the functions that need it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tformer_cli.core.config import Config, DataConfig, ModelConfig, TrainConfig
from tformer_cli.errors import ConfigError, RunError
from tformer_cli.run.rundir import RunDir

HF_CONFIG, HF_WEIGHTS, HF_TOKENIZER = "config.json", "model.safetensors", "tokenizer.json"
HF_FILES = (HF_CONFIG, HF_WEIGHTS, HF_TOKENIZER)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
LN_EPS = 1e-5  # torch's LayerNorm default, which tformer's model uses

# GPT-2's activation names -> model.activation
ACTIVATIONS_IN = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": None,
                  "gelu": "gelu", "relu": "relu"}
ACTIVATIONS_OUT = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}

# What other families have that tformer's GPT lacks, for a refusal that says what is missing.
OTHER_FAMILIES = {
    "llama": "RMSNorm, grouped-query attention, SwiGLU without biases and rotary positions applied per head pair",
    "mistral": "RMSNorm, grouped-query attention and sliding-window attention",
    "gpt_neox": "parallel attention and FFN, partial rotary positions and an untied head",
    "gptj": "parallel attention and FFN and partial rotary positions",
    "opt": "positions offset by 2 and post-projection layouts that differ from GPT-2's",
    "bloom": "ALiBi position biases and an embedding LayerNorm",
    "falcon": "multi-query attention and parallel attention and FFN",
    "bert": "post-norm blocks, token-type embeddings and a bidirectional encoder",
}

# Defaults an imported run trains and evaluates with (a pretrained model: a small learning rate,
# a few windows per batch, since its windows are long).
IMPORTED_TRAIN = {"lr": 6e-5, "min_lr": 6e-6, "warmup_steps": 10, "steps": 100, "batch_size": 4,
                  "eval_iters": 4, "eval_interval": 50, "weight_decay": 0.0}


@dataclass
class ImportResult:
    run_dir: str
    source: str
    params: int
    config: dict[str, Any]
    vocab_size: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ExportResult:
    out_dir: str
    run_dir: str
    files: list[str]
    hf_config: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ---------------------------------------------------------------- finding the folder


def looks_like_hub_name(source: str) -> bool:
    """``gpt2``, ``distilgpt2``, ``openai-community/gpt2``: one or two name parts, no path syntax."""
    if source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1:
        return False
    return all(part and all(c.isalnum() or c in "-_." for c in part) for part in source.split("/"))


def fetch(source: str) -> Path:
    """A local folder, or the three files of a hub model downloaded through huggingface_hub."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{source} is a file; give the folder that holds {HF_CONFIG} and {HF_WEIGHTS}")
        return path
    if not looks_like_hub_name(source):
        raise ConfigError(f"folder not found: {source}",
                          hint="give a Hugging Face model folder or a hub name such as gpt2")
    return _download(source)


def _download(name: str) -> Path:
    try:
        import huggingface_hub
        from huggingface_hub import errors as hub_errors
    except ImportError:
        raise RunError(f"'{name}' is not a folder here, and downloading it needs the huggingface_hub package",
                       hint="pip install huggingface_hub, or download the folder elsewhere and give its path") \
            from None
    try:
        return Path(huggingface_hub.snapshot_download(name, allow_patterns=list(HF_FILES)))
    except hub_errors.RepositoryNotFoundError:
        raise ConfigError(f"no model named '{name}' on the Hugging Face hub (or it is private)",
                          hint="check the name, e.g. gpt2, gpt2-medium, distilgpt2") from None
    except hub_errors.LocalEntryNotFoundError:
        raise RunError(f"cannot download '{name}': the Hugging Face hub is unreachable from this machine "
                       "(offline) and the model is not in the local hub cache",
                       hint=f"on a machine with internet, download {', '.join(HF_FILES)} into a folder, "
                       "copy it here and give its path") from None
    except (hub_errors.HfHubHTTPError, OSError) as e:
        raise RunError(f"cannot download '{name}' from the Hugging Face hub: {str(e).splitlines()[0][:160]}",
                       hint="try again, or give the path of a downloaded folder") from None


# ---------------------------------------------------------------- reading a GPT-2 folder


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RunError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise RunError(f"{path} is not a JSON object")
    return data


def check_folder(folder: Path) -> None:
    """The three files are there, and the weights are safetensors (a pickle is refused, unread)."""
    if not (folder / HF_WEIGHTS).exists():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if (folder / "model.safetensors.index.json").exists():
            raise ConfigError(f"{folder} holds sharded safetensors (model.safetensors.index.json); "
                              f"tformer imports a single {HF_WEIGHTS}",
                              hint="GPT-2 checkpoints up to gpt2-xl ship as one file")
        if pickles:
            raise ConfigError(f"{folder} has only pickled weights ({', '.join(pickles)}); tformer never loads "
                              "a pickle, because unpickling can run code",
                              hint=f"convert it to {HF_WEIGHTS} on a machine you trust (transformers: "
                              "save_pretrained(dir, safe_serialization=True))")
        raise ConfigError(f"no {HF_WEIGHTS} in {folder}", hint=f"a GPT-2 folder holds {', '.join(HF_FILES)}")
    for name in (HF_CONFIG, HF_TOKENIZER):
        if not (folder / name).exists():
            raise ConfigError(f"no {name} in {folder}", hint=f"a GPT-2 folder holds {', '.join(HF_FILES)}")


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> tuple[ModelConfig, int]:
    """(model config, vocab size) of a GPT-2 config.json; refuses what tformer cannot hold, saying why."""
    kind = hf.get("model_type")
    if kind != "gpt2":
        missing = OTHER_FAMILIES.get(str(kind))
        what = f"; tformer's GPT has no {missing}" if missing else ""
        raise ConfigError(f"{source}: model_type '{kind}' is not GPT-2{what}",
                          hint="tformer imports GPT-2-shaped models (GPT2LMHeadModel): gpt2, gpt2-medium, "
                          "gpt2-large, gpt2-xl, distilgpt2 and fine-tunes of them")
    problems = []
    act = hf.get("activation_function", "gelu_new")
    if ACTIVATIONS_IN.get(act) is None:
        problems.append(f"activation_function '{act}' (tformer has gelu, gelu_tanh, relu)")
    if not math.isclose(float(hf.get("layer_norm_epsilon", LN_EPS)), LN_EPS):
        problems.append(f"layer_norm_epsilon {hf.get('layer_norm_epsilon')} (tformer's LayerNorm uses {LN_EPS})")
    if hf.get("scale_attn_by_inverse_layer_idx"):
        problems.append("scale_attn_by_inverse_layer_idx (tformer scales attention by 1/sqrt(d_k) only)")
    if not hf.get("scale_attn_weights", True):
        problems.append("scale_attn_weights=false (tformer always scales attention by 1/sqrt(d_k))")
    if hf.get("add_cross_attention"):
        problems.append("add_cross_attention (tformer is decoder-only)")
    n_embd, n_head = int(hf.get("n_embd", 768)), int(hf.get("n_head", 12))
    if n_embd % n_head:
        problems.append(f"n_embd={n_embd} not divisible by n_head={n_head}")
    if problems:
        raise ConfigError(f"{source}: tformer's GPT cannot hold this model: {'; '.join(problems)}",
                          hint="tformer imports GPT-2-shaped checkpoints; these switches have no tformer equivalent")
    n_inner = hf.get("n_inner")
    m = ModelConfig(
        arch="gpt", d_model=n_embd, n_layer=int(hf.get("n_layer", 12)), n_head=n_head,
        d_ff=int(n_inner) if n_inner else None, block_size=int(hf.get("n_positions", 1024)), dropout=0.0,
        bias=True, activation=ACTIVATIONS_IN[act], pos_encoding="learned", causal=True, ffn=True,
        tie_weights=bool(hf.get("tie_word_embeddings", True)),
    )
    return m, int(hf.get("vocab_size", 50257))


def hf_to_tformer(hf_tensors: dict[str, Any], m: ModelConfig) -> dict[str, Any]:
    """GPT-2's tensor names and layouts -> tformer's (see the table at the top)."""
    out = {}
    for key, t in hf_tensors.items():
        k = key.removeprefix("transformer.")
        if k.endswith((".attn.bias", ".attn.masked_bias")):  # causal-mask buffers of older checkpoints
            continue
        parts = k.split(".")
        if parts[0] == "h" and len(parts) >= 4:
            i, rest = parts[1], ".".join(parts[2:])
            name = {"ln_1": "ln1", "ln_2": "ln2", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj",
                    "mlp.c_fc": "ffn.w1", "mlp.c_proj": "ffn.w2"}.get(rest.rsplit(".", 1)[0])
            if name is None:
                raise RunError(f"unexpected tensor {key} in {HF_WEIGHTS}: not part of a GPT-2 block")
            param = rest.rsplit(".", 1)[1]
            if param == "weight" and not name.startswith("ln"):
                t = t.t()  # Conv1D (in, out) -> Linear (out, in)
            out[f"blocks.{i}.{name}.{param}"] = t.contiguous()
            continue
        name = {"wte.weight": "tok_emb.weight", "wpe.weight": "pos_emb.weight", "ln_f.weight": "ln_f.weight",
                "ln_f.bias": "ln_f.bias", "lm_head.weight": "lm_head.weight"}.get(k)
        if name is None:
            raise RunError(f"unexpected tensor {key} in {HF_WEIGHTS}: not part of GPT2LMHeadModel")
        if name == "lm_head.weight" and m.tie_weights:
            continue  # tied: the embedding is the head
        out[name] = t.contiguous()
    return out


def tformer_to_hf(state: dict[str, Any]) -> dict[str, Any]:
    """The reverse of hf_to_tformer, with transformers' ``transformer.`` prefix."""
    names = {"ln1": "ln_1", "ln2": "ln_2", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj",
             "ffn.w1": "mlp.c_fc", "ffn.w2": "mlp.c_proj"}
    top = {"tok_emb.weight": "wte.weight", "pos_emb.weight": "wpe.weight", "ln_f.weight": "ln_f.weight",
           "ln_f.bias": "ln_f.bias"}
    out = {}
    for k, t in state.items():
        if k == "lm_head.weight":
            out["lm_head.weight"] = t.contiguous()
        elif k in top:
            out[f"transformer.{top[k]}"] = t.contiguous()
        else:
            _, i, rest = k.split(".", 2)
            module, param = rest.rsplit(".", 1)
            if param == "weight" and not module.startswith("ln"):
                t = t.t()  # Linear (out, in) -> Conv1D (in, out)
            out[f"transformer.h.{i}.{names[module]}.{param}"] = t.contiguous()
    return out


def unpadded(state: dict[str, Any], vocab_size: int, notes: list[str]) -> dict[str, Any]:
    """The weights with model.vocab_multiple's padding rows cut off the embedding and the head, so
    the export has GPT-2's vocabulary_size rows; exact, since those rows never get a probability."""
    out = dict(state)
    for name in ("tok_emb.weight", "lm_head.weight"):
        if name in out and out[name].size(0) > vocab_size:
            rows = out[name].size(0) - vocab_size
            out[name] = out[name][:vocab_size]
            if name == "tok_emb.weight":
                notes.append(f"the {rows} padding rows of the embedding (model.vocab_multiple) were left out: "
                             f"the export has the {vocab_size:,} rows of the vocabulary")
    return out


def _load_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own types for torn or foreign files
        raise RunError(f"{path} is not a readable safetensors file ({type(e).__name__}: {str(e)[:120]})") from None


def import_hf(source: str, out: str | Path, overwrite: bool = False) -> ImportResult:
    """Read a GPT-2 folder (or hub name) and write a tformer run directory: config, weights, tokenizer."""
    import torch

    from tformer_cli.core.data import load_tokenizer
    from tformer_cli.core.model import GPT
    from tformer_cli.run import checkpoint

    folder = fetch(source)
    check_folder(folder)
    m, vocab = config_from_hf(_read_json(folder / HF_CONFIG), str(folder / HF_CONFIG))
    tok = load_tokenizer(folder / HF_TOKENIZER)
    if tok.vocab_size > vocab:
        raise RunError(f"{folder / HF_TOKENIZER} has {tok.vocab_size} tokens, the model only {vocab}",
                       hint="the tokenizer does not belong to these weights")
    state = hf_to_tformer(_load_safetensors(folder / HF_WEIGHTS), m)
    with torch.device("meta"):  # shapes only: no time spent on a random init that is overwritten
        model = GPT(m, vocab)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()
                if not (m.tie_weights and k == "lm_head.weight")}  # a tied head is the embedding
    problems = [f"missing {k}" for k in sorted(set(expected) - set(state))]
    problems += [f"{k} has shape {tuple(state[k].shape)}, config.json says {expected[k]}"
                 for k in sorted(set(expected) & set(state)) if tuple(state[k].shape) != expected[k]]
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise RunError(f"{folder / HF_WEIGHTS} does not match its config.json: {shown}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False, assign=True)  # meta -> real
    if m.tie_weights:
        model.lm_head.weight = model.tok_emb.weight
    cfg = Config(model=m, data=DataConfig(corpus="prose", tokenizer="hf", vocab_size=tok.vocab_size),
                 train=TrainConfig(**IMPORTED_TRAIN))
    rd = RunDir(out)
    rd.prepare(overwrite)
    from tformer_cli.core.io import atomic_write_text

    checkpoint.save(rd.path, model, None, cfg, vocab, {"step": 0, "imported_from": str(source)})
    atomic_write_text(rd.config, cfg.to_yaml())
    atomic_write_text(rd.tokenizer, (folder / HF_TOKENIZER).read_text(encoding="utf-8"))  # verbatim
    notes = ["dropout is 0 (inference); set model.dropout to fine-tune with it"]
    return ImportResult(str(rd.path), str(source), model.num_params(), cfg.to_dict()["model"], vocab, notes)


# ---------------------------------------------------------------- writing a GPT-2 folder


def _modern_switches(m) -> list[str]:
    """The switches of newer GPTs that GPT-2's architecture has no place for."""
    problems = []
    if m.norm != "layernorm":
        problems.append(f"model.norm={m.norm} (GPT-2 has LayerNorm)")
    if m.norm_position != "pre":
        problems.append(f"model.norm_position={m.norm_position} (GPT-2 is pre-norm)")
    if m.kv_heads != m.n_head:
        problems.append(f"model.n_kv_head={m.n_kv_head} (GPT-2 has one key/value head per query head)")
    if m.qk_norm:
        problems.append("model.qk_norm=true (GPT-2 does not normalise queries and keys)")
    if m.logit_softcap is not None:
        problems.append(f"model.logit_softcap={m.logit_softcap} (GPT-2 does not cap its logits)")
    return problems


def hf_config_for(cfg: Config, vocab_size: int) -> dict[str, Any]:
    """GPT-2's config.json for a tformer config, or a ConfigError naming every switch that does not map."""
    m = cfg.model
    problems = []
    if m.arch != "gpt":
        problems.append(f"model.arch={m.arch} (GPT-2 is a transformer: gpt)")
    if m.pos_encoding != "learned":
        problems.append(f"model.pos_encoding={m.pos_encoding} (GPT-2 has learned positions)")
    if m.activation not in ACTIVATIONS_OUT:
        problems.append(f"model.activation={m.activation} (GPT-2 takes gelu, gelu_tanh or relu)")
    if not m.bias:
        problems.append("model.bias=false (GPT-2's layers and LayerNorms have biases)")
    if not m.causal:
        problems.append("model.causal=false (GPT-2 is causal)")
    if not m.ffn:
        problems.append("model.ffn=false (every GPT-2 block has an FFN)")
    problems += _modern_switches(m)
    if problems:
        raise ConfigError(f"this run does not map onto GPT-2: {'; '.join(problems)}",
                          hint="export works for runs trained with GPT-2's switches")
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": vocab_size, "n_positions": m.block_size, "n_embd": m.d_model, "n_layer": m.n_layer,
        "n_head": m.n_head, "n_inner": m.d_ff_resolved, "activation_function": ACTIVATIONS_OUT[m.activation],
        "resid_pdrop": m.dropout, "embd_pdrop": m.dropout, "attn_pdrop": m.dropout,
        "layer_norm_epsilon": LN_EPS, "initializer_range": 0.02, "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": m.tie_weights, "use_cache": True,
    }


def export_hf(run_dir: str | Path, out: str | Path, overwrite: bool = False) -> ExportResult:
    """Write a run as a GPT-2 folder (config.json, model.safetensors, tokenizer.json when it has one)."""
    from safetensors.torch import save_file

    from tformer_cli.core.io import atomic_write_text
    from tformer_cli.run import checkpoint

    ckpt = checkpoint.load(run_dir, with_optimizer=False)
    cfg = ckpt.config
    hf = hf_config_for(cfg, ckpt.vocab_size)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(f"--out {out} exists and is not empty", hint="choose another --out, or --overwrite")
    notes = []
    tok_data = _read_json(RunDir(run_dir).tokenizer) if RunDir(run_dir).tokenizer.exists() else {}
    if "type" not in tok_data and "model" in tok_data:
        tok_json = tok_data  # an imported run: the Hugging Face tokenizer.json, as it came
    elif tok_data.get("type") == "bpe":
        tok_json = json.loads(tok_data["hf"])
    else:
        tok_json = None
        notes.append(f"no {HF_TOKENIZER}: a {tok_data.get('type', 'missing')} tokenizer has no Hugging Face "
                     "form; token ids are tformer's")
    eos = None
    if tok_json is not None:
        eos = next((t["id"] for t in tok_json.get("added_tokens", []) if t.get("content") == "<|endoftext|>"), None)
    hf.update({"bos_token_id": eos, "eos_token_id": eos})
    out.mkdir(parents=True, exist_ok=True)
    tensors = tformer_to_hf(unpadded(ckpt.model_state(), ckpt.vocab_size, notes))
    save_file(tensors, str(out / HF_WEIGHTS), metadata={"format": "pt"})
    atomic_write_text(out / HF_CONFIG, json.dumps(hf, indent=2) + "\n")
    files = [HF_CONFIG, HF_WEIGHTS]
    if tok_json is not None:
        atomic_write_text(out / HF_TOKENIZER, json.dumps(tok_json))
        files.append(HF_TOKENIZER)
    return ExportResult(str(out), str(run_dir), files, hf, notes)
