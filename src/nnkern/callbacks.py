"""Callbacks for :meth:`nnkern.nn.Sequential.fit`: early stopping and best-weights restore::

    from nnkern import callbacks
    history = model.fit(x, y, epochs=100, optimizer=optim.AdamW(1e-3), validation_data=(x_val, y_val),
                        callbacks=[callbacks.EarlyStopping(patience=5, restore_best_weights=True)])

Both watch one of the epoch's logs (``monitor``: "val_loss" by default, which needs
``validation_data``; or "loss", "accuracy", "val_accuracy") and compare it with the best
value so far: lower is better for losses, higher for accuracies (``mode="auto"``).
Learning-rate schedules, which fit steps too, are in :mod:`nnkern.optim`.
"""

from __future__ import annotations

import math

from . import _validate
from .training import Callback, History

__all__ = ["BestWeights", "EarlyStopping", "FIT_LOGS"]

# The epoch logs Sequential.fit reports (accuracies for classification losses, "val_*"
# with validation_data).
FIT_LOGS = ("loss", "accuracy", "val_loss", "val_accuracy")


class _Monitor:
    """Which log to watch and what counts as better: the value must beat the best so far by
    more than ``min_delta`` (lower in mode "min", higher in mode "max"); NaN never does."""

    def __init__(self, owner: str, monitor: str, mode: str, min_delta: float):
        if not isinstance(monitor, str):
            raise TypeError(f"{owner}: monitor must be the name of a fit log such as 'val_loss', got {monitor!r}")
        _validate.choice(owner, "mode", mode, ("auto", "min", "max"))
        self.owner, self.monitor = owner, monitor
        self.min_delta = _validate.real(owner, "min_delta", min_delta, low=0, expected="a finite number >= 0",
                                        type_error=ValueError)
        self.mode = mode if mode != "auto" else ("max" if "acc" in monitor else "min")
        self.reset()

    def reset(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf

    def check_available(self, info: dict) -> None:
        """Refuse, before training starts, a log that fit will not report."""
        if self.monitor not in FIT_LOGS:
            raise ValueError(f"{self.owner} monitors {self.monitor!r}; fit reports {', '.join(FIT_LOGS)}")
        if self.monitor.startswith("val_") and info.get("validation") is False:
            raise ValueError(f"{self.owner} monitors {self.monitor!r}, which fit reports only with validation_data; "
                             "pass validation_data, or monitor='loss'")

    def value(self, logs: dict) -> float:
        if self.monitor not in logs:
            raise ValueError(f"{self.owner} monitors {self.monitor!r}, but fit reports only "
                             f"{', '.join(sorted(k for k in logs if k != 'seconds'))}")
        return float(logs[self.monitor])

    def improved(self, value: float) -> bool:
        """Whether ``value`` beats the best so far (and if so, it becomes the best)."""
        better = (value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta)
        if better:
            self.best = value
        return better


class BestWeights(Callback):
    """Keep a copy of the weights of the epoch with the best ``monitor`` value and load
    them back into the model when training ends, so the model ``fit`` leaves is its best
    epoch's rather than its last's. ``best`` and ``best_epoch`` say which."""

    def __init__(self, monitor: str = "val_loss", mode: str = "auto", min_delta: float = 0.0, verbose: bool = False):
        self._monitor = _Monitor("BestWeights", monitor, mode, min_delta)
        self.verbose = verbose
        self.best_epoch: int | None = None
        self.best_state: dict | None = None

    @property
    def monitor(self) -> str:
        return self._monitor.monitor

    @property
    def best(self) -> float:
        return self._monitor.best

    def on_train_begin(self, info: dict) -> None:
        self._monitor.check_available(info)
        self._monitor.reset()
        self.best_epoch, self.best_state = None, None

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if self._monitor.improved(self._monitor.value(logs)):
            self.best_epoch = epoch
            self.best_state = self.model.state_dict()  # host copies

    def on_train_end(self, history: History) -> None:
        if self.best_state is None:
            return
        self.model.load_state_dict(self.best_state)
        if self.verbose:
            print(f"restored the weights of epoch {self.best_epoch} ({self.monitor} {self.best:.4f})", flush=True)


class EarlyStopping(Callback):
    """Stop training once ``monitor`` has not improved (by more than ``min_delta``) for
    ``patience`` epochs in a row. With ``restore_best_weights`` the model is left with
    the weights of its best epoch (see :class:`BestWeights`). After training,
    ``stopped_epoch`` is the epoch it stopped after (None if it ran to the end) and
    ``best_epoch`` the best one."""

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0, mode: str = "auto",
                 restore_best_weights: bool = False, verbose: bool = False):
        self.patience = _validate.integer("EarlyStopping", "patience", patience, minimum=1,
                                          expected="an integer >= 1", type_error=ValueError)
        self._monitor = _Monitor("EarlyStopping", monitor, mode, min_delta)
        self.verbose = verbose
        self._best_weights = BestWeights(monitor, mode, min_delta) if restore_best_weights else None
        self.wait = 0
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None

    @property
    def monitor(self) -> str:
        return self._monitor.monitor

    @property
    def best(self) -> float:
        return self._monitor.best

    def set_model(self, model) -> None:
        super().set_model(model)
        if self._best_weights is not None:
            self._best_weights.set_model(model)

    def on_train_begin(self, info: dict) -> None:
        self._monitor.check_available(info)
        self._monitor.reset()
        self.wait, self.best_epoch, self.stopped_epoch = 0, None, None
        if self._best_weights is not None:
            self._best_weights.on_train_begin(info)

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if self._best_weights is not None:
            self._best_weights.on_epoch_end(epoch, logs)
        if self._monitor.improved(self._monitor.value(logs)):
            self.wait, self.best_epoch = 0, epoch
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, history: History) -> None:
        if self.verbose and self.stopped_epoch is not None:
            print(f"early stopping after epoch {self.stopped_epoch}: {self.monitor} has not improved for "
                  f"{self.patience} epoch(s) (best {self.best:.4f} at epoch {self.best_epoch})", flush=True)
        if self._best_weights is not None:
            self._best_weights.verbose = self.verbose
            self._best_weights.on_train_end(history)
