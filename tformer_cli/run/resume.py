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


def run_config(run_dir: Path, flag: str, config_given: bool, hint: str, refusal: str,
               refusal_hint: str | None = None) -> cfgmod.Config:
    """The config of the run ``flag`` (--resume, --init-from) names: refused when ``run_dir`` is not
    a run or a config file or preset was also given; a damaged config.yaml is named."""
    rd = RunDir(run_dir)
    if not rd.is_run():
        raise ConfigError(f"{flag} {run_dir}: not a tformer run directory (no {RunDir.CONFIG})", hint=hint)
    if config_given:
        raise ConfigError(refusal, hint=refusal_hint)
    try:
        return cfgmod.from_dict(cfgmod.load_yaml(rd.config))
    except ConfigError as e:  # name the file: the problem is in the run, not in the flags
        problems = [p if str(rd.config) in p else f"{rd.config}: {p}" for p in e.problems]
        raise ConfigError(problems, hint=f"fix or restore {rd.config} (checkpoint.json holds a copy of the "
                                         "config)") from None


def resume_config(run_dir: Path, overrides: dict[str, Any], config_given: bool = False) -> cfgmod.Config:
    """The run's own config with the allowed ``overrides`` applied; every other change refused."""
    base = run_config(run_dir, "--resume", config_given, "give a directory written by `tformer train`",
                      "--resume takes its config from the run; do not pass a config file or --preset")
    conflicts = [f"{k}={v!r} (the run has {base.get(k)!r})"
                 for k, v in overrides.items() if k not in RESUMABLE_CHANGES and base.get(k) != v]
    if conflicts:
        raise ConfigError(
            f"--resume {run_dir}: flags conflict with the run's config: {', '.join(conflicts)}",
            hint=f"only {', '.join(sorted(RESUMABLE_CHANGES))} may change on resume; start a new run otherwise",
        )
    return base.replace({k: v for k, v in overrides.items() if k in RESUMABLE_CHANGES})


def finished_notice(run_dir: Path, cfg: cfgmod.Config, steps_given: bool) -> str | None:
    """None when the run has steps left to train; the notice to print when it is finished.

    A run resumed with fewer steps than it has reached is refused (it would rewrite its config
    and summary to say it finished at step 20 of 10)."""
    from tformer_cli.run import checkpoint

    step = checkpoint.peek(run_dir)["train_state"]["step"]
    steps = cfg.train.steps
    if step > steps:
        raise ConfigError(f"--resume {run_dir}: train.steps={steps} is below step {step}, which the run has "
                          "already reached", hint=f"give --steps above {step} to train longer")
    if step == steps:
        more = "" if steps_given else " without --steps"
        return (f"{run_dir} is finished (step {step} of {steps}); resuming it{more} has nothing to do, "
                f"and nothing was changed. To train longer: tformer train --resume {run_dir} --steps M "
                f"(M > {step})")
    return None
