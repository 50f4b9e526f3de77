"""What may change when a run is resumed, and the config a resumed run trains with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tformer_cli.core import config as cfgmod
from tformer_cli.errors import ConfigError
from tformer_cli.run.rundir import RunDir

# Keys that may change when a run is resumed; anything else must match the run's config.
# train.batch_size may change with the number of processes; train() checks the global batch is kept.
RESUMABLE_CHANGES = {"train.steps", "train.device", "train.compile", "train.log_interval", "train.batch_size"}


def resume_config(run_dir: Path, overrides: dict[str, Any], config_given: bool = False) -> cfgmod.Config:
    """The run's own config with the allowed ``overrides`` applied; every other change refused."""
    rd = RunDir(run_dir)
    if not rd.is_run():
        raise ConfigError(f"--resume {run_dir}: not a tformer run directory (no {RunDir.CONFIG})",
                          hint="give a directory written by `tformer train`")
    if config_given:
        raise ConfigError("--resume takes its config from the run; do not pass a config file or --preset")
    base = cfgmod.from_dict(cfgmod.load_yaml(rd.config))
    conflicts = [f"{k}={v!r} (the run has {base.get(k)!r})"
                 for k, v in overrides.items() if k not in RESUMABLE_CHANGES and base.get(k) != v]
    if conflicts:
        raise ConfigError(
            f"--resume {run_dir}: flags conflict with the run's config: {', '.join(conflicts)}",
            hint=f"only {', '.join(sorted(RESUMABLE_CHANGES))} may change on resume; start a new run otherwise",
        )
    return base.replace({k: v for k, v in overrides.items() if k in RESUMABLE_CHANGES})
