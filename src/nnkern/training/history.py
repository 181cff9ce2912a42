"""What training reports: the :class:`History` that ``fit`` returns, the :class:`Callback`
hooks it calls, the one-line-per-epoch printer of ``verbose=True``, and the error a
non-finite loss raises."""

from __future__ import annotations


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss (the message names the epoch and step)."""


class History:
    """What :meth:`Sequential.fit` returns: ``history`` maps "loss", "accuracy" (for
    classification losses), and "val_loss", "val_accuracy" (with validation data) to
    per-epoch lists."""

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.epochs: list[int] = []

    def append(self, epoch: int, metrics: dict) -> None:
        self.epochs.append(epoch)
        for key, value in metrics.items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epochs)}, keys={list(self.history)})"


class Callback:
    """Hooks :meth:`Sequential.fit` calls (subclass and override what you need; any
    object with some of these methods works too):

    * ``set_model(model)``: the model being trained, before ``on_train_begin``;
    * ``on_train_begin(info)``: info has "epochs", "steps" (batches per epoch), "samples",
      "validation" (whether fit has validation data, so "val_*" logs will come);
    * ``on_epoch_begin(epoch, steps)``: epochs count from 1;
    * ``on_batch_end(epoch, step, steps, logs)``: steps count from 1; logs hold the
      running means of the epoch so far, "loss" and (classification) "accuracy";
    * ``on_epoch_end(epoch, logs)``: logs hold the epoch's "loss", "accuracy",
      "val_loss", "val_accuracy" (those that apply) and "seconds";
    * ``on_train_end(history)``.

    Setting ``model.stop_training = True`` in a hook ends training after the epoch.
    """

    model = None

    def set_model(self, model) -> None:
        self.model = model

    def on_train_begin(self, info: dict) -> None: ...

    def on_epoch_begin(self, epoch: int, steps: int) -> None: ...

    def on_batch_end(self, epoch: int, step: int, steps: int, logs: dict) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict) -> None: ...

    def on_train_end(self, history: History) -> None: ...


class EpochPrinter(Callback):
    """``verbose=True``: one line per epoch."""

    def __init__(self, epochs: int):
        self.width = len(str(epochs))
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs):
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "seconds")
        print(f"epoch {epoch:>{self.width}}/{self.epochs}  {metrics}  ({logs['seconds']:.1f} s)", flush=True)


class PlanPrinter(Callback):
    """``verbose=True`` on a fused CPU step: its thread plan (:mod:`nnkern._plan`), once
    known: at the start when cached or fixed, else after the steps that timed it."""

    def __init__(self, plan):
        self.plan = plan
        self.printed = False

    def _print_when_known(self) -> None:
        line = self.plan.describe()
        if line is not None:
            print(line, flush=True)
            self.printed = True

    def on_train_begin(self, info):
        self._print_when_known()

    def on_batch_end(self, epoch, step, steps, logs):
        if not self.printed:
            self._print_when_known()

    def on_train_end(self, history):
        if not self.printed and self.plan.last_share is not None:
            print("plan: the fit ended while the thread counts were being timed; a later fit of this network "
                  "in this process goes on timing them", flush=True)


def dispatch(callbacks, hook: str, *args) -> None:
    for callback in callbacks:
        method = getattr(callback, hook, None)
        if method is not None:
            method(*args)
