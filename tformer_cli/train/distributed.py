"""Training on several processes with PyTorch's own engine: torchrun + DistributedDataParallel.

Nothing here is home-made parallelism: torchrun (torch.distributed.run) starts the processes
and sets RANK, WORLD_SIZE and LOCAL_RANK; this module turns that environment into a process
group (NCCL on CUDA, one GPU per process; gloo on CPU), lets the ranks agree on the few
things only rank 0 decides (the run directory, whether a checkpoint was written, whether to
stop), and tears the group down.  The training loop itself (tformer_cli.train.loop.train) does the
DDP wrapping, the data sharding and the rank-0-only writing; docs/scaling.md describes it.

Collectives here carry plain integer tensors only: torch.distributed's *_object helpers
pickle, and this project never unpickles anything.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from tformer_cli.errors import ConfigError, RunError, TformerError


@dataclass
class DistInfo:
    """Process-group facts for DDP (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def env_dist() -> DistInfo:
    """Rank facts from the environment torchrun sets (1 process when absent)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


class PeerFailed(RunError):
    """Raised on the ranks that did nothing wrong when another rank (rank 0) failed.

    The failing rank prints its own error; the command exits quietly on this one so a
    failure is reported once, not once per process.
    """


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes (NCCL cannot move CPU tensors)."""
    return "nccl" if device.type == "cuda" else "gloo"


def collective_device(device: torch.device) -> torch.device:
    """Where tensors for a collective must live: the rank's GPU under NCCL, the CPU under gloo."""
    return device if device.type == "cuda" else torch.device("cpu")


@contextlib.contextmanager
def process_group(device_name: str = "auto") -> Iterator[DistInfo]:
    """Join the process group torchrun describes; yields the rank facts and always leaves it.

    Outside torchrun (or with WORLD_SIZE=1) nothing is initialised and rank 0 of 1 is yielded,
    so a command can use this unconditionally.
    """
    import torch.distributed as tdist

    from tformer_cli.core import device as dev

    info = env_dist()
    if info.world <= 1 or (tdist.is_available() and tdist.is_initialized()):
        yield info
        return
    if not tdist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed", hint="run without torchrun")
    device = dev.select(device_name)
    kwargs = {}
    if device.type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {info.local_rank} but only {torch.cuda.device_count()} CUDA device(s) visible",
                hint="start at most one process per GPU (--nproc_per_node <= number of GPUs)",
            )
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
        kwargs["device_id"] = device  # binds the NCCL communicator to this rank's GPU at once
    tdist.init_process_group(backend=backend_for(device), **kwargs)
    try:
        yield info
    finally:
        tdist.destroy_process_group()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one (a collective: all ranks call it)."""
    import torch.distributed as tdist

    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=collective_device(device))
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_text(text: str | None, device: torch.device) -> str | None:
    """Rank 0's ``text`` on every rank (None travels as None): a length, then UTF-8 bytes."""
    import torch.distributed as tdist

    where = collective_device(device)
    data = text.encode("utf-8") if text is not None else b""
    n = torch.tensor([len(data) if text is not None else -1], dtype=torch.int64, device=where)
    tdist.broadcast(n, src=0)
    size = int(n.item())
    if size < 0:
        return None
    buf = torch.zeros(size, dtype=torch.uint8, device=where)
    if tdist.get_rank() == 0:
        buf.copy_(torch.tensor(list(data), dtype=torch.uint8))
    tdist.broadcast(buf, src=0)
    return bytes(buf.cpu().tolist()).decode("utf-8")


def agree_run_dir(out, overwrite: bool, dist: DistInfo, device_name: str = "auto"):
    """Rank 0 creates the run directory (default: a timestamped name) and tells the others.

    Non-zero ranks never touch the file system here, so "--out exists" cannot fail on them,
    and a default name stamped at a slightly different second on another rank cannot split
    the run.  When rank 0 fails (say --out is a run), the others raise PeerFailed.
    """
    from pathlib import Path

    from tformer_cli.core import device as dev
    from tformer_cli.run.rundir import default_run_dir, prepare_run_dir

    if dist.world <= 1:
        path = Path(out) if out is not None else default_run_dir()
        prepare_run_dir(path, overwrite)
        return path
    device = _rank_device(dev.select(device_name), dist)
    chosen, error = None, None
    if dist.main:
        try:
            path = Path(out) if out is not None else default_run_dir()
            prepare_run_dir(path, overwrite)
            chosen = str(path)
        except TformerError as e:
            error = e
    chosen = broadcast_text(chosen, device)
    if error is not None:
        raise error
    if chosen is None:
        raise PeerFailed("rank 0 could not create the run directory")
    return Path(chosen)


def _rank_device(device: torch.device, dist: DistInfo) -> torch.device:
    return torch.device("cuda", dist.local_rank) if device.type == "cuda" else device


# ---------------------------------------------------------------- the --nproc convenience launcher


def torchrun_argv(nproc: int, tformer_args: Sequence[str]) -> list[str]:
    """The command that runs ``tformer ARGS`` as ``nproc`` processes on this machine.

    --standalone makes torchrun pick a free local port and run its own rendezvous, exactly
    what a user would type for a single node.
    """
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "tformer_cli", *tformer_args]


def launch(nproc: int, tformer_args: Sequence[str], cuda: bool = False) -> int:
    """Run ``tformer ARGS`` under torchrun with ``nproc`` processes; returns torchrun's exit code.

    ``cuda``: the run trains on GPUs, so at most one process per visible GPU.  Ctrl-C reaches
    torchrun (same terminal), which forwards it to every rank; this parent process waits
    through it, so the ranks can agree to stop and save a checkpoint.
    """
    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}: need at least one process")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--nproc inside torchrun: the processes are already launched",
                          hint="drop --nproc, or run without torchrun")
    if cuda and nproc > torch.cuda.device_count():
        raise ConfigError(f"--nproc {nproc}: only {torch.cuda.device_count()} CUDA device(s) visible",
                          hint="use one process per GPU")
    # A no-op handler rather than SIG_IGN: an ignored signal would stay ignored in torchrun.
    old = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        return subprocess.call(torchrun_argv(nproc, tformer_args))
    finally:
        signal.signal(signal.SIGINT, old)


def forwarded_args(ctx, drop: Sequence[str] = ("nproc",)) -> list[str]:
    """The command line of the running Typer command, rebuilt from what the user typed.

    ``ctx`` is the command's typer.Context.  Only parameters given on the command line are
    forwarded (defaults stay defaults on the ranks); ``drop`` names parameters to leave out.
    Rebuilt from the parsed parameters, not sys.argv, so it also works in-process.
    """
    args = list(ctx.command_path.split()[1:])  # the subcommand name(s), e.g. ["train"]
    for p in ctx.command.params:
        if p.name in drop:
            continue
        source = ctx.get_parameter_source(p.name)
        if source is None or source.name != "COMMANDLINE":
            continue
        value = ctx.params[p.name]
        if p.param_type_name == "argument":
            args += [str(v) for v in value] if p.nargs != 1 else [str(value)]
        elif p.is_flag:
            opts = p.opts if value else p.secondary_opts
            args += opts[:1]
        elif p.multiple:
            for v in value:
                args += [p.opts[0], str(v)]
        else:
            args += [p.opts[0], str(value)]
    return args
