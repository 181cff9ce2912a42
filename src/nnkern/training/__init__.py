"""Training: the one loop (:func:`fit`, which every model's ``fit``, the scikit-learn
estimators and ``nnkern bench`` train through), the step objects of the engines and the
choice between them (:func:`select_step`), and what training reports (:class:`History`,
:class:`Callback`)."""

from .history import Callback, EpochPrinter, History, NonFiniteLossError, dispatch
from .loop import Meter, bound_optimizer, fit
from .steps import DeviceEpochStep, FusedStep, LayerStep, TrainingStep, select_step

__all__ = ["fit", "select_step", "TrainingStep", "LayerStep", "FusedStep", "DeviceEpochStep", "History",
           "Callback", "EpochPrinter", "NonFiniteLossError", "Meter", "bound_optimizer", "dispatch"]
