"""scikit-learn estimators trained by nnkern: :class:`MLPClassifier` and :class:`MLPRegressor`::

    from nnkern.sklearn import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(256, 128), max_iter=20, random_state=0).fit(X, y)
    clf.predict(X_test); clf.predict_proba(X_test); clf.score(X_test, y_test)

They take scikit-learn's ``MLPClassifier`` / ``MLPRegressor`` parameters (those of the
stochastic solvers) and follow its conventions: the constructor only stores its
arguments, ``fit`` checks them and the data, ``partial_fit`` runs one more epoch, fitted
attributes end in ``_``, any label type works, and the estimators drop into ``Pipeline``,
``GridSearchCV`` and ``clone``. They pass ``sklearn.utils.estimator_checks.check_estimator``
(tests/test_sklearn.py). The network is an :class:`nnkern.nn.Sequential` (``model_``) on
an nnkern backend: a classifier on "cython" or "numba" trains with the fused engine
(one compiled call per step, :mod:`nnkern.engine`); a regressor (mean squared error)
runs the layer-by-layer path.

Differences from scikit-learn, by design:

* ``solver`` is one of nnkern's optimizers: "adam" (default), "adamw", "sgd" (with
  ``momentum``; no Nesterov variant), "adagrad", "rmsprop", "adadelta"; no "lbfgs".
* ``learning_rate`` applies to every solver; besides scikit-learn's "constant",
  "invscaling" and "adaptive" there is "cosine" (down to 0 over ``max_iter`` epochs).
* ``alpha`` is scikit-learn's L2 penalty ``0.5 * alpha * ||W||^2 / batch_size``, given
  to the optimizer as ``weight_decay = alpha / batch_size`` (on biases too, as torch's
  weight decay; for "adamw" it is AdamW's decoupled decay).
* weights start as nnkern's ``Linear`` draws them (He for relu-like activations, Xavier
  for logistic and tanh), not scikit-learn's Glorot-uniform.
* a classifier has one output per class with a softmax (two for binary problems);
  ``loss_`` is the mean cross entropy, for a regressor the mean squared error (not
  halved). With ``early_stopping`` the validation *loss* decides (scikit-learn uses the
  score) and the best epoch's weights are kept.
* no ``sample_weight``, no sparse input (``X.toarray()`` first), no multilabel targets.
* extra parameters: ``backend`` (an nnkern backend; None: the current one) and
  ``dtype`` ("float32", the default, or "float64").

The thread count is nnkern's (:func:`nnkern.set_num_threads`); with ``n_jobs`` > 1 in
``GridSearchCV`` set ``NNKERN_NUM_THREADS=1`` so the jobs do not fight over the cores.

Needs scikit-learn: ``pip install nnkern[sklearn]``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import warnings

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError("nnkern.sklearn needs scikit-learn; install it with: pip install nnkern[sklearn]") from exc

from . import callbacks, nn, ops, optim
from ._backend import get_backend, unavailable_reason

__all__ = ["MLPClassifier", "MLPRegressor"]

# activation name (scikit-learn's, plus nnkern's) -> the layer after each hidden Linear
ACTIVATIONS = {"identity": None, "logistic": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU,
               "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU}
SOLVERS = ("adam", "adamw", "sgd", "adagrad", "rmsprop", "adadelta")
LEARNING_RATES = ("constant", "invscaling", "adaptive", "cosine")
# "adaptive": the rate is divided by 5 at each plateau; training ends below this rate
ADAPTIVE_FACTOR = 0.2
ADAPTIVE_MIN_LR = 1e-6
AUTO_BATCH = 200  # batch_size="auto": min(200, n_samples), as scikit-learn


def _invscaling(epoch: int, *, samples_per_epoch: int, power_t: float) -> float:
    """scikit-learn's "invscaling" factor: ``1 / (t + 1) ** power_t`` with t the number of
    samples seen, updated after each epoch (a named function, so estimators pickle)."""
    return 1.0 / (epoch * samples_per_epoch + 1) ** power_t


class _StopBelowRate(nn.Callback):
    """Ends training once the optimizer's rate has fallen below ``min_lr`` ("adaptive")."""

    def __init__(self, optimizer, min_lr: float):
        self.optimizer, self.min_lr = optimizer, min_lr
        self.stopped_epoch = None

    def on_epoch_end(self, epoch, logs):
        if self.optimizer.lr < self.min_lr:
            self.stopped_epoch, self.model.stop_training = epoch, True


def _check(name, value, kind, *, low=None, high=None, low_open=False, high_open=False):
    """A hyperparameter of ``kind`` (numbers.Integral or numbers.Real) within the bounds,
    or a TypeError / ValueError naming it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, kind):
        raise TypeError(f"{name} must be {'an integer' if kind is numbers.Integral else 'a real number'}, "
                        f"got {value!r}")
    if not math.isfinite(value) or (low is not None and (value <= low if low_open else value < low)) or \
            (high is not None and (value >= high if high_open else value > high)):
        bounds = (f"{'(' if low_open else '['}{'-inf' if low is None else low}, "
                  f"{'inf' if high is None else high}{')' if high_open or high is None else ']'}")
        raise ValueError(f"{name} must be in {bounds}, got {value!r}")
    return value


def _choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


class _BaseMLP(BaseEstimator):
    """What MLPClassifier and MLPRegressor share: parameters, the network, training."""

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, n_iter_no_change=10, backend=None, dtype="float32"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.backend = backend
        self.dtype = dtype

    # -- what subclasses define -----------------------------------------------------------

    _loss = ""  # the nnkern loss name

    def _validate_xy(self, X, y, *, reset: bool, classes=None):
        """(X, y as training targets), after scikit-learn's checks."""
        raise NotImplementedError

    def _output_width(self) -> int:
        raise NotImplementedError

    # -- parameters -----------------------------------------------------------------------

    def _checked_params(self) -> dict:
        """The constructor's arguments, checked (scikit-learn checks them in fit)."""
        sizes = self.hidden_layer_sizes
        sizes = (sizes,) if isinstance(sizes, numbers.Integral) and not isinstance(sizes, bool) else sizes
        try:
            sizes = tuple(sizes)
        except TypeError:
            raise TypeError(f"hidden_layer_sizes must be a sequence of layer widths, got {sizes!r}") from None
        for size in sizes:
            _check("hidden_layer_sizes entries", size, numbers.Integral, low=1)
        batch_size = self.batch_size
        if not (isinstance(batch_size, str) and batch_size == "auto"):
            _check("batch_size", batch_size, numbers.Integral, low=1)
        if not isinstance(self.dtype, str) and self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        dtype = np.dtype(self.dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        backend = get_backend() if self.backend is None else self.backend
        reason = unavailable_reason(backend) if isinstance(backend, str) else "not a backend name"
        if reason is not None:
            raise ValueError(f"backend {backend!r} is not usable here: {reason}")
        for name in ("shuffle", "verbose", "warm_start", "early_stopping"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        return {
            "hidden": tuple(int(s) for s in sizes),
            "activation": _choice("activation", self.activation, tuple(ACTIVATIONS)),
            "solver": _choice("solver", self.solver, SOLVERS),
            "alpha": float(_check("alpha", self.alpha, numbers.Real, low=0)),
            "batch_size": batch_size,
            "learning_rate": _choice("learning_rate", self.learning_rate, LEARNING_RATES),
            "learning_rate_init": float(_check("learning_rate_init", self.learning_rate_init, numbers.Real,
                                               low=0, low_open=True)),
            "power_t": float(_check("power_t", self.power_t, numbers.Real, low=0)),
            "max_iter": int(_check("max_iter", self.max_iter, numbers.Integral, low=1)),
            "tol": float(_check("tol", self.tol, numbers.Real, low=0)),
            "momentum": float(_check("momentum", self.momentum, numbers.Real, low=0, high=1, high_open=True)),
            "validation_fraction": float(_check("validation_fraction", self.validation_fraction, numbers.Real,
                                                low=0, high=1, low_open=True, high_open=True)),
            "beta_1": float(_check("beta_1", self.beta_1, numbers.Real, low=0, high=1, high_open=True)),
            "beta_2": float(_check("beta_2", self.beta_2, numbers.Real, low=0, high=1, high_open=True)),
            "epsilon": float(_check("epsilon", self.epsilon, numbers.Real, low=0, low_open=True)),
            "n_iter_no_change": int(_check("n_iter_no_change", self.n_iter_no_change, numbers.Integral, low=1)),
            "backend": backend,
            "dtype": dtype,
        }

    # -- the network and its optimizer ----------------------------------------------------

    def _build_model(self, params: dict, n_inputs: int, n_outputs: int, rng) -> nn.Sequential:
        activation = ACTIVATIONS[params["activation"]]
        init = "he" if params["activation"] in ("relu", "leaky_relu", "gelu") else "xavier"
        widths = (n_inputs, *params["hidden"], n_outputs)
        layers = []
        for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
            layers.append(nn.Linear(fan_in, fan_out, init=init, seed=int(rng.randint(np.iinfo(np.int32).max))))
            if activation is not None and i < len(widths) - 2:
                layers.append(activation())
        return nn.Sequential(*layers, backend=params["backend"], dtype=params["dtype"])

    def _new_optimizer(self, params: dict, batch_size: int, samples_per_epoch: int) -> optim.Optimizer:
        lr, solver = params["learning_rate_init"], params["solver"]
        weight_decay = params["alpha"] / batch_size
        if solver in ("adam", "adamw"):
            cls = optim.Adam if solver == "adam" else optim.AdamW
            opt = cls(lr, betas=(params["beta_1"], params["beta_2"]), eps=params["epsilon"],
                      weight_decay=weight_decay)
        elif solver == "sgd":
            opt = optim.SGD(lr, momentum=params["momentum"], weight_decay=weight_decay)
        else:
            opt = {"adagrad": optim.Adagrad, "rmsprop": optim.RMSprop, "adadelta": optim.Adadelta}[solver](
                lr, weight_decay=weight_decay)
        schedule = params["learning_rate"]
        if schedule == "invscaling":
            opt.schedule = optim.LambdaLR(functools.partial(_invscaling, samples_per_epoch=samples_per_epoch,
                                                            power_t=params["power_t"]))
        elif schedule == "adaptive":
            opt.schedule = optim.ReduceLROnPlateau(
                monitor="val_loss" if params["early_stopping"] else "loss", factor=ADAPTIVE_FACTOR,
                patience=params["n_iter_no_change"], threshold=params["tol"], threshold_mode="abs")
        elif schedule == "cosine":
            opt.schedule = optim.CosineAnnealingLR(params["max_iter"])
        return opt

    def _validation_split(self, X, y, fraction: float, rng):
        """(X_train, X_val, y_train, y_val): a random ``fraction`` held out, stratified by
        class for a classifier where every class has enough samples for that."""
        if len(X) < 2:
            raise ValueError(f"early_stopping needs at least 2 samples to hold some out, got {len(X)}")
        if self._loss == "cross_entropy":
            with contextlib.suppress(ValueError):  # too few samples of some class: unstratified
                return train_test_split(X, y, test_size=fraction, random_state=rng, stratify=y)
        return train_test_split(X, y, test_size=fraction, random_state=rng)

    def _batch_size(self, params: dict, n_samples: int) -> int:
        if params["batch_size"] == "auto":
            return min(AUTO_BATCH, n_samples)
        if params["batch_size"] > n_samples:
            warnings.warn(f"batch_size {params['batch_size']} is larger than the {n_samples} samples; "
                          f"using {n_samples}", UserWarning, stacklevel=3)
        return min(int(params["batch_size"]), n_samples)

    # -- training -------------------------------------------------------------------------

    def _fit(self, X, y, *, incremental: bool, classes=None):
        params = self._checked_params()
        params["early_stopping"] = self.early_stopping and not incremental
        fitted = hasattr(self, "model_")
        reset = not fitted or (not incremental and not self.warm_start)
        X, y = self._validate_xy(X, y, reset=reset, classes=classes)
        if reset:  # one generator for the weights, then every later epoch's order (as scikit-learn)
            self._random_state = check_random_state(self.random_state)
        rng = self._random_state
        if reset:
            self.model_ = self._build_model(params, X.shape[1], self._output_width(), rng)
            self.n_iter_, self.t_, self.loss_curve_ = 0, 0, []
        elif self.model_.dtype != params["dtype"] or self.model_.backend != params["backend"]:
            self.model_ = self.model_.clone(backend=params["backend"], dtype=params["dtype"])
        model = self.model_
        x_val = y_val = None
        if params["early_stopping"]:
            X, x_val, y, y_val = self._validation_split(X, y, params["validation_fraction"], rng)
        batch_size = self._batch_size(params, len(X))
        if not (incremental and hasattr(self, "optimizer_")):
            self._optimizer_setup = (batch_size, len(X))  # to rebuild the optimizer after unpickling
            self.optimizer_ = self._new_optimizer(params, *self._optimizer_setup)
        optimizer = self.optimizer_
        epochs = 1 if incremental else params["max_iter"]
        fit_callbacks = []
        stopper = None
        if not incremental:
            monitor = "val_loss" if params["early_stopping"] else "loss"
            if params["learning_rate"] == "adaptive":
                stopper = _StopBelowRate(optimizer, ADAPTIVE_MIN_LR)
            else:
                stopper = callbacks.EarlyStopping(monitor=monitor, patience=params["n_iter_no_change"],
                                                  min_delta=params["tol"],
                                                  restore_best_weights=params["early_stopping"])
            fit_callbacks.append(stopper)
        history = model.fit(X, y, epochs=epochs, batch_size=batch_size, optimizer=optimizer, loss=self._loss,
                            shuffle=self.shuffle, seed=int(rng.randint(np.iinfo(np.int32).max)),
                            validation_data=None if x_val is None else (x_val, y_val), verbose=self.verbose,
                            callbacks=fit_callbacks)
        self._record(history, len(X), params)
        if stopper is not None and stopper.stopped_epoch is None:
            warnings.warn(f"{type(self).__name__}: the maximum of {params['max_iter']} epochs (max_iter) was "
                          "reached and the loss has not converged yet", ConvergenceWarning, stacklevel=3)
        return self

    def _record(self, history: nn.History, n_train: int, params: dict) -> None:
        epochs = len(history.epochs)
        self.n_iter_ += epochs
        self.t_ += epochs * n_train
        self.loss_curve_ = [*self.loss_curve_, *history.history["loss"]]
        self.loss_ = self.loss_curve_[-1]
        if params["early_stopping"]:
            self.best_loss_ = None
            self.validation_loss_curve_ = list(history.history["val_loss"])
            if "val_accuracy" in history.history:
                self.validation_scores_ = list(history.history["val_accuracy"])
                self.best_validation_score_ = max(self.validation_scores_)
        else:
            self.best_loss_ = min(self.loss_curve_)
            self.validation_scores_ = self.best_validation_score_ = None

    def _forward(self, X) -> np.ndarray:
        """The network's outputs (logits for a classifier) for validated X, in float64."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32), accept_sparse=False)
        return self.model_.predict(X).astype(np.float64, copy=False)

    # -- the fitted network as arrays (scikit-learn's names) --------------------------------

    @property
    def coefs_(self) -> list[np.ndarray]:
        """The weight matrices, W[i] of shape (inputs, outputs) of layer i (host copies)."""
        check_is_fitted(self, "model_")
        return [p for name, p in self.model_.state_dict().items() if name.endswith(".W")]

    @property
    def intercepts_(self) -> list[np.ndarray]:
        """The bias vectors, one per layer (host copies)."""
        check_is_fitted(self, "model_")
        return [p for name, p in self.model_.state_dict().items() if name.endswith(".b")]

    @property
    def n_layers_(self) -> int:
        """Layers counted as scikit-learn counts them: input, hidden and output."""
        check_is_fitted(self, "model_")
        return len(self.coefs_) + 1

    # -- pickling: the network and optimizer travel as arrays and their descriptions --------

    def __getstate__(self):
        state = dict(super().__getstate__())  # (object.__getstate__ returns __dict__ itself)
        if "model_" in state:
            model = state.pop("model_")
            state["_model_state"] = (model.config(), model.state_dict(), model.backend)
        if "optimizer_" in state:
            state["_optimizer_state"] = state.pop("optimizer_").state_dict()
        return state

    def __setstate__(self, state):
        saved_model = state.pop("_model_state", None)
        saved_optimizer = state.pop("_optimizer_state", None)
        super().__setstate__(state)
        if saved_model is not None:
            config, weights, backend = saved_model
            if unavailable_reason(backend) is not None:  # pickled where another backend ran
                backend = get_backend()
            self.model_ = nn.Sequential.from_config(config, backend=backend)
            self.model_.load_state_dict(weights)
        if saved_optimizer is not None:
            params = self._checked_params()
            params["early_stopping"] = self.early_stopping
            self.optimizer_ = self._new_optimizer(params, *self._optimizer_setup)
            self.optimizer_.load_state_dict(saved_optimizer)
            self.optimizer_.bind(self.model_.parameters(), self.model_.gradients(), backend=self.model_.backend)


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """A multi-layer perceptron classifier with scikit-learn's interface, trained by nnkern.

    Parameters (scikit-learn's ``MLPClassifier`` names and defaults; see the module
    notes for the differences):

    hidden_layer_sizes : tuple of int, default (100,)
        The width of each hidden layer.
    activation : {"relu", "logistic", "tanh", "identity", "leaky_relu", "gelu"}, default "relu"
        The activation after each hidden layer.
    solver : {"adam", "adamw", "sgd", "adagrad", "rmsprop", "adadelta"}, default "adam"
        The nnkern optimizer.
    alpha : float, default 0.0001
        L2 penalty (``weight_decay = alpha / batch_size``).
    batch_size : int or "auto", default "auto"
        Samples per step; "auto" is ``min(200, n_samples)``.
    learning_rate : {"constant", "invscaling", "adaptive", "cosine"}, default "constant"
        The schedule of the rate: constant; ``learning_rate_init / (t + 1) ** power_t``
        with t the samples seen, updated after each epoch; divided by 5 whenever the
        loss has not improved by ``tol`` for ``n_iter_no_change`` epochs (training ends
        once it is below 1e-6); or a cosine down to 0 over ``max_iter`` epochs.
    learning_rate_init : float, default 0.001
        The initial learning rate.
    power_t : float, default 0.5
        The exponent of "invscaling".
    max_iter : int, default 200
        The most epochs ``fit`` runs.
    shuffle : bool, default True
        Draw a new sample order every epoch.
    random_state : int, RandomState or None, default None
        Seeds the initial weights, the order of the samples and the validation split.
    tol : float, default 1e-4
        The smallest improvement of the loss (or the validation loss) that counts.
    verbose : bool, default False
        Print a line per epoch.
    warm_start : bool, default False
        ``fit`` continues from the weights of the previous fit (with a new optimizer).
    momentum : float, default 0.9
        The momentum of the "sgd" solver.
    early_stopping : bool, default False
        Hold out ``validation_fraction`` of the training data (stratified) and stop when
        the validation loss has not improved by ``tol`` for ``n_iter_no_change`` epochs,
        keeping the best epoch's weights. Otherwise training stops when the training loss
        has not improved so for ``n_iter_no_change`` epochs.
    validation_fraction : float, default 0.1
        The held-out part with ``early_stopping``.
    beta_1, beta_2, epsilon : float, default 0.9, 0.999, 1e-8
        Adam's and AdamW's parameters.
    n_iter_no_change : int, default 10
        Epochs without improvement before training stops.
    backend : str or None, default None
        The nnkern backend ("numpy", "cython", "numba", "cuda"); None: the current one.
    dtype : {"float32", "float64"}, default "float32"
        The precision the network computes in.

    Attributes: ``classes_``, ``n_features_in_`` (and ``feature_names_in_`` for data
    frames), ``model_`` (the nnkern Sequential), ``optimizer_``, ``coefs_``,
    ``intercepts_``, ``n_layers_``, ``n_outputs_``, ``out_activation_`` ("softmax"),
    ``loss_``, ``loss_curve_``, ``best_loss_``, ``n_iter_`` (epochs), ``t_`` (samples
    seen), and with ``early_stopping`` ``validation_loss_curve_``, ``validation_scores_``
    (accuracy per epoch) and ``best_validation_score_``.
    """

    _loss = "cross_entropy"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = False
        return tags

    def _validate_xy(self, X, y, *, reset, classes=None):
        X, y = validate_data(self, X, y, reset=reset, dtype=(np.float64, np.float32), accept_sparse=False,
                             multi_output=False)
        check_classification_targets(y)
        if reset:
            labels = np.unique(y) if classes is None else np.unique(np.asarray(classes))
            if len(labels) < 2:
                raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes; got 1 class, "
                                 f"{labels[0]!r}" if len(labels) else f"{type(self).__name__}: no classes given")
            self.classes_ = labels
            self.n_outputs_ = 1
            self.out_activation_ = "softmax"
        position = np.searchsorted(self.classes_, y)
        position[position == len(self.classes_)] = 0
        unknown = self.classes_[position] != y
        if np.any(unknown):
            raise ValueError(f"y contains labels {np.unique(y[unknown]).tolist()} that are not among the classes "
                             f"{self.classes_.tolist()} of the first fit (warm_start / partial_fit)")
        return X, position.astype(np.int64)

    def _output_width(self):
        return len(self.classes_)

    def fit(self, X, y):
        """Train on (X, y) for up to ``max_iter`` epochs; returns self."""
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y). The first call (before any fit) needs ``classes``, every
        label that will ever be seen; later calls continue with the same optimizer."""
        if not hasattr(self, "model_") and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        if hasattr(self, "model_") and classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"classes {np.unique(classes).tolist()} differ from the classes "
                             f"{self.classes_.tolist()} of the first call")
        if self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        return self._fit(X, y, incremental=True, classes=classes)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape (n_samples, n_classes), in the order of ``classes_``."""
        return ops.softmax(self._forward(X), backend="numpy")

    def predict_log_proba(self, X) -> np.ndarray:
        """The logarithms of :meth:`predict_proba` (computed stably from the logits)."""
        logits = self._forward(X)
        shifted = logits - logits.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

    def predict(self, X) -> np.ndarray:
        """The most probable class of each sample, as labels of ``classes_``."""
        logits = self._forward(X)  # first: it raises NotFittedError before classes_ is looked up
        return self.classes_[np.argmax(logits, axis=1)]


class MLPRegressor(RegressorMixin, _BaseMLP):
    """A multi-layer perceptron regressor with scikit-learn's interface, trained by nnkern
    on the mean squared error; one or several outputs.

    Parameters and attributes are :class:`MLPClassifier`'s (without ``classes_``; the
    output layer has no activation, ``out_activation_`` is "identity"; with
    ``early_stopping`` there is ``validation_loss_curve_`` but no accuracy).
    """

    _loss = "mse"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _validate_xy(self, X, y, *, reset, classes=None):
        X, y = validate_data(self, X, y, reset=reset, dtype=(np.float64, np.float32), accept_sparse=False,
                             multi_output=True, y_numeric=True)
        y = y.reshape(len(y), -1)
        if reset:
            self.n_outputs_ = y.shape[1]
            self.out_activation_ = "identity"
        elif y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {y.shape[1]} outputs, but {type(self).__name__} was fitted with "
                             f"{self.n_outputs_}")
        return X, y

    def _output_width(self):
        return self.n_outputs_

    def fit(self, X, y):
        """Train on (X, y) for up to ``max_iter`` epochs; returns self."""
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X, y):
        """One epoch over (X, y), continuing with the same optimizer."""
        if self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        return self._fit(X, y, incremental=True)

    def predict(self, X) -> np.ndarray:
        """The predicted targets, shape (n_samples,) for one output, else (n_samples, n_outputs)."""
        output = self._forward(X)
        return output.ravel() if self.n_outputs_ == 1 else output
