"""A tuning study's storage and bookkeeping: opening the Optuna storage, the study folder's
lock, the study's identity (a resumed study must be the same study), and the trials an
interrupted run left behind (pipeline/tuning.py runs the trials)."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import Any

from stagepilot.core.config import ConfigError
from stagepilot.core.inputs import clip
from stagepilot.pipeline.tuning_space import Space

HEARTBEAT_S = 30  # a running trial's heartbeat in the storage; stale after GRACE_S without one
GRACE_S = 120


def _quiet_optuna() -> None:
    """Optuna's own log lines and experimental-feature warnings stay out of the progress output."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def open_storage(url: str, shared: bool = True):
    """An Optuna RDB storage, or a one-line ConfigError when the URL cannot be opened. A shared
    storage keeps heartbeats of running trials, so that a tuner that died leaves no trial
    running for ever (another tuner fails it once it is stale)."""
    import optuna

    _quiet_optuna()
    heartbeat = {"heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S} if shared else {}
    try:
        return optuna.storages.RDBStorage(url, **heartbeat)
    except Exception as exc:  # sqlalchemy's ArgumentError, OperationalError, a missing driver ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--storage {clip(url)}: cannot open the study storage ({clip(reason, 200)})") from None


class FolderLock:
    """An exclusive lock on the study folder, so that two tuners on one machine do not share a
    SQLite file by accident (several machines share a study through an RDB server instead)."""

    def __init__(self, folder: Path):
        self.path = folder / "tune.lock"
        self._file = None

    def __enter__(self) -> FolderLock:
        self._file = self.path.open("w")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.close()
            raise ConfigError(f"{self.path.parent}: another `stagepilot tune` is running on this study folder") from None
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


def study_identity(space: Space, suite: str, base_hash: str, objective: str, penalty: float) -> dict[str, Any]:
    return {"space": space.name, "space_digest": space.digest(), "suite": suite, "base_config": base_hash,
            "objective": objective, "comfort_penalty": penalty}


def check_identity(study, identity: dict[str, Any]) -> None:
    stored = study.user_attrs.get("stagepilot")
    if stored is None:
        study.set_user_attr("stagepilot", identity)
        return
    changed = [key for key in identity if stored.get(key) != identity[key]]
    if changed:
        raise ConfigError(f"study {study.study_name!r} was created with a different {', '.join(changed)} "
                          f"({', '.join(f'{k}: {stored.get(k)}' for k in changed)}); "
                          "resume it with the same command, or choose a new --study")


def recover(study, own_storage: bool) -> int:
    """Trials an interrupted run left behind: RUNNING ones are failed (all of them when this
    tuner owns the storage, else those whose heartbeat is stale), and every failed trial that
    was not queued again is queued with its parameters (not one whose values made no valid
    stack). Returns how many were queued."""
    import optuna
    from optuna.trial import TrialState

    if own_storage:
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    else:
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    queued = 0
    for trial in trials:
        if (trial.state == TrialState.FAIL and trial.number not in retried and trial.params
                and "invalid" not in trial.user_attrs):
            study.enqueue_trial(trial.params, user_attrs={**_kept_attrs(trial), "retry_of": trial.number},
                                skip_if_exists=False)
            queued += 1
    return queued


def _kept_attrs(trial) -> dict[str, Any]:
    return {k: v for k, v in trial.user_attrs.items() if k == "baseline"}


def finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def counted(study) -> int:
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return len(study.get_trials(deepcopy=False, states=states))
