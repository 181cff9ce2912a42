"""scikit-learn's MLP estimators on nnkern's kernels: :class:`MLPClassifier` and
:class:`MLPRegressor`, drop-in replacements for ``sklearn.neural_network``'s::

    from nnkern.sklearn import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(256, 128), max_iter=20, random_state=0).fit(X, y)
    clf.predict(X_test); clf.predict_proba(X_test); clf.score(X_test, y_test)

They take every parameter of scikit-learn 1.9's estimators, in its order
(``MLPRegressor(loss="squared_error", hidden_layer_sizes=..., ...)``), and follow its
semantics: its Glorot-uniform initialisation, its losses (half squared error, half
Poisson deviance, log loss; a binary classifier has one logistic output, a multilabel one
a logistic output per label), its L2 penalty ``0.5 * alpha * ||W||^2 / n`` on the weights
(not the intercepts), "sgd" with ``momentum``, ``nesterovs_momentum`` and
``learning_rate`` constant / invscaling / adaptive, "adam" with ``beta_1``, ``beta_2``,
``epsilon``, "lbfgs" (``scipy.optimize.minimize(method="L-BFGS-B")``, one forward and
backward pass over the data per evaluation, ``max_iter``, ``max_fun``), its stopping rule
(an epoch counts as no improvement unless the training loss, or with ``early_stopping``
the validation score, beats the best by more than ``tol``; training stops after more than
``n_iter_no_change`` of them in a row; ``np.inf``: never) and its bookkeeping
(``n_iter_`` of the last call, ``t_``, ``loss_curve_``, ``best_loss_``,
``validation_scores_``, ``best_validation_score_``, ConvergenceWarning),
``sample_weight`` in the loss and in the validation score, scipy.sparse input (densified
one batch at a time), weights in the input's float dtype, ``coefs_`` / ``intercepts_``
as assignable lists of arrays, and ``verbose`` lines "Iteration N, loss = ...".
scikit-learn's own test file for these estimators runs on them
(tests/test_sklearn_upstream.py), and so does ``check_estimator``.

The network computes on an nnkern backend (``backend``) through the layer-by-layer
path of :class:`nnkern.nn.Sequential` (``model_``); the output activation, the loss and its
gradient are computed here in NumPy. At the same ``random_state`` the weights reached are
scikit-learn's to rounding, with one exception: while the rate of "sgd" changes
("invscaling", "adaptive"), its momentum is torch's (a velocity of gradients, scaled by the
current rate) where scikit-learn's velocity carries the rates of past steps. The stopping
rule's counter is kept as scikit-learn's, ``_no_improvement_count``.

Beyond scikit-learn:

* ``solver`` also takes nnkern's "adamw", "adagrad", "rmsprop" and "adadelta" (with
  ``learning_rate_init``; ``learning_rate`` schedules apply to them as to "sgd"), and
  ``learning_rate="cosine"`` decays the rate to 0 over ``max_iter`` epochs;
* ``activation`` also takes "leaky_relu" and "gelu";
* ``class_weight``: "balanced" or {label: weight}, multiplied into the sample weights;
* ``validation_data=(X_val, y_val)``: with ``early_stopping``, the set scored each epoch
  instead of a held-out part of the training data;
* ``callbacks``: nnkern callbacks (:class:`nnkern.nn.Callback`), called each epoch with
  ``{"loss": ..., "val_score": ...}``; one that sets ``model.stop_training`` ends ``fit``;
* ``backend`` (an nnkern backend; None: the current one) and ``dtype`` ("float32" or
  "float64"; None: the input's float dtype).

The thread count is nnkern's (:func:`nnkern.set_num_threads`); with ``n_jobs`` > 1 in
``GridSearchCV`` set ``NNKERN_NUM_THREADS=1`` so the jobs do not fight over the cores.

Needs scikit-learn: ``pip install nnkern[sklearn]``.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

try:
    import scipy.optimize
    import scipy.sparse
    from scipy.special import expit, xlogy
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import check_random_state, gen_batches
    from sklearn.utils import shuffle as shuffled
    from sklearn.utils.class_weight import compute_sample_weight
    from sklearn.utils.metaestimators import available_if
    from sklearn.utils.multiclass import type_of_target, unique_labels
    from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError("nnkern.sklearn needs scikit-learn; install it with: pip install nnkern[sklearn]") from exc

from . import _arrays, nn, ops, optim
from ._backend import backend_module, get_backend, unavailable_reason

__all__ = ["MLPClassifier", "MLPRegressor"]

# hidden activation name (scikit-learn's, plus nnkern's) -> the layer after each hidden Linear
ACTIVATIONS = {"identity": None, "logistic": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU,
               "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU}
STOCHASTIC_SOLVERS = ("adam", "sgd", "adamw", "adagrad", "rmsprop", "adadelta")
SOLVERS = ("lbfgs", *STOCHASTIC_SOLVERS)
LEARNING_RATES = ("constant", "invscaling", "adaptive", "cosine")
REGRESSION_LOSSES = ("squared_error", "poisson")
ADAPTIVE_DIVISOR = 5.0  # "adaptive": the rate is divided by 5 at each plateau...
ADAPTIVE_MIN_LR = 1e-6  # ...and training ends once it is at or below this rate
AUTO_BATCH = 200  # batch_size="auto": min(200, n_samples), as scikit-learn
CHUNK_ROWS = 4096  # rows per forward pass where the whole data is read (lbfgs, predict)


class _NesterovSGD(optim.SGD):
    """scikit-learn's SGD with Nesterov's momentum, in torch's form (the same steps at a
    constant rate): ``v = momentum * v + g; p -= lr * (g + momentum * v)``."""

    def _update(self, p, g, state):
        lr, momentum = self.hyperparameters["lr"], self.hyperparameters["momentum"]
        v = state["v"]
        ops.momentum_update(p, g, v, lr, momentum, backend=self.backend)  # v = m*v + g; p -= lr*v
        # then p -= lr * g and p += lr * (1 - momentum) * v, by the backend's axpy kernel
        self._kernels.sgd_update(p.reshape(-1), g.reshape(-1), lr)
        self._kernels.sgd_update(p.reshape(-1), v.reshape(-1), -lr * (1.0 - momentum))


class _ScikitLearnAdam(optim.Adam):
    """Adam with scikit-learn's placement of epsilon, ``p -= lr_t * m / (sqrt(v) + eps)`` with
    ``lr_t = lr * sqrt(1 - b2**t) / (1 - b1**t)``: torch's rule (nnkern's kernel) run with
    ``eps / sqrt(1 - b2**t)``. (It matters for weights whose gradient is about eps, such as
    those of always-zero inputs under the L2 penalty.)"""

    def _update(self, p, g, state):
        h = self.hyperparameters
        eps = h["eps"] / math.sqrt(1.0 - h["beta2"] ** self.t)
        ops.adam_update(p, g, state["m"], state["v"], self.t, h["lr"], h["beta1"], h["beta2"], eps,
                        backend=self.backend)


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


def _output_activation(name: str, z: np.ndarray) -> np.ndarray:
    """The output layer's activation on the logits ``z`` (a new array)."""
    if name == "softmax":
        shifted = z - z.max(axis=1, keepdims=True)
        p = np.exp(shifted)
        return p / p.sum(axis=1, keepdims=True)
    if name == "logistic":
        return expit(z)
    if name == "exp":
        return np.exp(z)
    return np.array(z, copy=True)


def _sample_losses(name: str, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Each sample's loss, as scikit-learn's loss functions average it: half the mean
    squared error over the outputs, or the sum over the outputs of half the Poisson
    deviance, the log loss (softmax) or the binary log loss (logistic)."""
    if name == "squared_error":
        return 0.5 * ((y - p) ** 2).mean(axis=1)
    if name == "poisson":
        return (xlogy(y, y / p) - y + p).sum(axis=1)
    eps = np.finfo(p.dtype).eps
    p = np.clip(p, eps, 1 - eps)
    if name == "log_loss":
        return -xlogy(y, p).sum(axis=1)
    return -(xlogy(y, p) + xlogy(1 - y, 1 - p)).sum(axis=1)


def _rows(X, index, dtype) -> np.ndarray:
    """Rows ``index`` (a slice or indices) of X as a dense C-contiguous array of ``dtype``:
    a sparse X is densified here, one batch at a time."""
    part = X[index]
    if scipy.sparse.issparse(part):
        part = part.toarray()
    return np.ascontiguousarray(part, dtype=dtype)


def _lbfgs_iterations(result, max_iter: int) -> int:
    """scikit-learn's reading of an L-BFGS-B result: the iterations run (at most
    ``max_iter``), with a ConvergenceWarning when it did not converge."""
    if result.status != 0:
        message = result.message.decode("latin1") if isinstance(result.message, bytes) else result.message
        warnings.warn(f"lbfgs failed to converge after {result.nit} iteration(s) (status={result.status}):\n"
                      f"{message}.\n\nIncrease the number of iterations to improve the convergence "
                      f"(max_iter={max_iter}).\nYou might also want to scale the data.",
                      ConvergenceWarning, stacklevel=4)
    return min(int(result.nit), max_iter)


class _BaseMLP(BaseEstimator):
    """What MLPClassifier and MLPRegressor share: parameters, the network, training."""

    # -- what subclasses define -----------------------------------------------------------

    def _validate_input(self, X, y, incremental: bool, reset: bool):
        """(X, y as a float array (n, outputs) of training targets) after scikit-learn's checks."""
        raise NotImplementedError

    def _predict(self, X, check_input: bool = True):
        raise NotImplementedError

    def _score(self, X, y, sample_weight=None) -> float:
        raise NotImplementedError

    # -- parameters -----------------------------------------------------------------------

    def _settings(self) -> dict:
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
        dtype = self.dtype
        if dtype is not None:
            if not isinstance(dtype, str) and dtype not in (np.float32, np.float64):
                raise TypeError(f"dtype must be None, 'float32' or 'float64', got {dtype!r}")
            dtype = np.dtype(dtype)
            if dtype not in (np.float32, np.float64):
                raise ValueError(f"dtype must be None, 'float32' or 'float64', got {self.dtype!r}")
        backend = get_backend() if self.backend is None else self.backend
        reason = unavailable_reason(backend) if isinstance(backend, str) else "not a backend name"
        if reason is not None:
            raise ValueError(f"backend {backend!r} is not usable here: {reason}")
        for name in ("shuffle", "warm_start", "early_stopping", "nesterovs_momentum"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.verbose, (bool, np.bool_)):
            _check("verbose", self.verbose, numbers.Integral, low=0)
        patience = self.n_iter_no_change
        if not (isinstance(patience, numbers.Real) and patience == np.inf):
            patience = int(_check("n_iter_no_change", patience, numbers.Integral, low=1))
        if self.callbacks is not None and not all(isinstance(c, nn.Callback) for c in self.callbacks):
            raise TypeError(f"callbacks must be a list of nnkern.nn.Callback objects, got {self.callbacks!r}")
        if self.validation_data is not None and (not isinstance(self.validation_data, (tuple, list))
                                                 or len(self.validation_data) != 2):
            raise ValueError("validation_data must be a pair (X_val, y_val)")
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
            "momentum": float(_check("momentum", self.momentum, numbers.Real, low=0, high=1)),
            "validation_fraction": float(_check("validation_fraction", self.validation_fraction, numbers.Real,
                                                low=0, high=1, high_open=True)),
            "beta_1": float(_check("beta_1", self.beta_1, numbers.Real, low=0, high=1, high_open=True)),
            "beta_2": float(_check("beta_2", self.beta_2, numbers.Real, low=0, high=1, high_open=True)),
            "epsilon": float(_check("epsilon", self.epsilon, numbers.Real, low=0, low_open=True)),
            "n_iter_no_change": patience,
            "max_fun": int(_check("max_fun", self.max_fun, numbers.Integral, low=1)),
            "backend": backend,
            "dtype": dtype,
        }

    # -- the network ------------------------------------------------------------------------

    def _init_coef(self, fan_in: int, fan_out: int, dtype):
        """scikit-learn's Glorot-uniform draw: bound sqrt(6 / (fan_in + fan_out)), with 2
        instead of 6 for the logistic activation; the intercepts from the same range."""
        bound = np.sqrt((2.0 if self.activation == "logistic" else 6.0) / (fan_in + fan_out))
        coef = self._random_state.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype, copy=False)
        intercept = self._random_state.uniform(-bound, bound, fan_out).astype(dtype, copy=False)
        return coef, intercept

    def _initialize(self, y, layer_units, dtype, solver: str) -> None:
        self.n_iter_, self.t_ = 0, 0
        self.n_outputs_ = y.shape[1]
        self.n_layers_ = len(layer_units)
        self.out_activation_ = self._output_activation_name()
        self.coefs_, self.intercepts_ = [], []
        for fan_in, fan_out in zip(layer_units, layer_units[1:]):
            coef, intercept = self._init_coef(fan_in, fan_out, dtype)
            self.coefs_.append(coef)
            self.intercepts_.append(intercept)
        self._best_coefs = [c.copy() for c in self.coefs_]
        self._best_intercepts = [i.copy() for i in self.intercepts_]
        if solver != "lbfgs":
            self.loss_curve_ = []
            self._no_improvement_count = 0
            if self.early_stopping:
                self.validation_scores_, self.best_validation_score_, self.best_loss_ = [], -np.inf, None
            else:
                self.best_loss_, self.validation_scores_, self.best_validation_score_ = np.inf, None, None

    def _network(self, backend: str, dtype) -> nn.Sequential:
        """The nnkern network holding the current ``coefs_`` and ``intercepts_`` (copied in:
        they may have been assigned or changed in place since the last call)."""
        widths = tuple([self.coefs_[0].shape[0], *(c.shape[1] for c in self.coefs_)])
        key = (widths, self.activation, backend, np.dtype(dtype))
        if getattr(self, "_model_key", None) != key:
            activation = ACTIVATIONS[self.activation]
            layers = []
            for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
                layers.append(nn.Linear(fan_in, fan_out, seed=0))  # the weights are set just below
                if activation is not None and i < len(widths) - 2:
                    layers.append(activation())
            self._model = nn.Sequential(*layers, backend=backend, dtype=dtype)
            self._model_key = key
        params = self._model.parameters()
        for i, (coef, intercept) in enumerate(zip(self.coefs_, self.intercepts_)):
            params[2 * i][...] = np.asarray(coef, dtype=dtype)
            params[2 * i + 1][...] = np.asarray(intercept, dtype=dtype).reshape(-1)
        return self._model

    def _take_weights(self, model: nn.Sequential) -> None:
        """``coefs_`` and ``intercepts_`` from the network (host copies)."""
        params = [_arrays.host_copy(p) for p in model.parameters()]
        self.coefs_, self.intercepts_ = params[0::2], params[1::2]

    @property
    def model_(self) -> nn.Sequential:
        """The fitted network as an nnkern Sequential (its output is the logits: the output
        activation ``out_activation_`` is applied by the estimator)."""
        check_is_fitted(self, "coefs_")
        settings = self._settings()
        return self._network(settings["backend"], self._model_dtype(settings))

    def _model_dtype(self, settings):
        return settings["dtype"] or np.dtype(self.coefs_[0].dtype if hasattr(self, "coefs_") else np.float64)

    def _forward_pass_fast(self, X, check_input: bool = True) -> np.ndarray:
        """The output layer's activations for X, in the network's dtype."""
        if check_input:
            X = validate_data(self, X, accept_sparse=["csr", "csc"], dtype=(np.float64, np.float32), reset=False)
        settings = self._settings()
        dtype = self._model_dtype(settings)
        model = self._network(settings["backend"], dtype)
        if scipy.sparse.issparse(X):
            X = X.tocsr()
            z = np.concatenate([model.predict(_rows(X, s, dtype)) for s in gen_batches(X.shape[0], CHUNK_ROWS)])
        else:
            z = model.predict(np.ascontiguousarray(X, dtype=dtype))
        return _output_activation(self.out_activation_, z)

    # -- loss and gradient ----------------------------------------------------------------

    def _loss_name(self) -> str:
        if not is_classifier(self):
            return self.loss
        return "log_loss" if self.out_activation_ == "softmax" else "binary_log_loss"

    def _backprop(self, model, xb, yb, swb, weight_sum: float) -> float:
        """Forward and backward on one batch: leaves in the network's gradients those of
        ``sum(sample loss * weight) / weight_sum`` (without the L2 term) and returns the
        numerator."""
        z = _arrays.to_host(model.forward(xb, training=True))
        p = _output_activation(self.out_activation_, z)
        losses = _sample_losses(self._loss_name(), yb, p)
        delta = p - yb  # the canonical link's gradient: softmax / logistic / exp / identity
        if swb is not None:
            delta *= swb[:, None]
        delta /= weight_sum
        model.backward(delta)
        return float(losses.sum() if swb is None else np.dot(swb, losses))

    def _add_l2(self, model, alpha: float, weight_sum: float) -> float:
        """Add ``alpha * W / weight_sum`` to each weight gradient (not the intercepts', as
        scikit-learn); returns the penalty ``0.5 * alpha * ||W||^2 / weight_sum``."""
        if not alpha:
            return 0.0
        params, grads = model.parameters(), model.gradients()
        squares = 0.0
        for W, dW in zip(params[0::2], grads[0::2]):
            host = _arrays.to_host(W).ravel()
            squares += float(np.dot(host, host))
            # dW += alpha / weight_sum * W by the backend's axpy (its sgd_update kernel, as
            # nnkern's optimizers apply weight decay)
            backend_module(model.backend).sgd_update(dW.reshape(-1), W.reshape(-1), -alpha / weight_sum)
        return 0.5 * alpha * squares / weight_sum

    # -- training -------------------------------------------------------------------------

    def _fit(self, X, y, sample_weight=None, incremental=False):
        settings = self._settings()
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        if scipy.sparse.issparse(X):
            X = X.tocsr()  # rows are read one batch at a time
        sample_weight = self._sample_weight(sample_weight, X, y)
        if y.ndim == 1:
            y = y.reshape(-1, 1)
        dtype = settings["dtype"] or X.dtype
        y = np.asarray(y, dtype=dtype)
        self.n_outputs_ = y.shape[1]
        layer_units = [X.shape[1], *settings["hidden"], self.n_outputs_]
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(y, layer_units, dtype, settings["solver"])
        if settings["solver"] == "lbfgs":
            self._fit_lbfgs(X, y, sample_weight, settings, dtype)
        else:
            self._fit_stochastic(X, y, sample_weight, settings, dtype, incremental)
        if not all(np.isfinite(w).all() for w in (*self.coefs_, *self.intercepts_)):
            raise ValueError("Solver produced non-finite parameter weights. The input data may contain large values "
                             "and need to be preprocessed.")
        return self

    def _sample_weight(self, sample_weight, X, y):
        """The checked sample weights (float64, shape (n,)) times the class weights; None
        when neither is given."""
        n = X.shape[0]
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight, dtype=np.float64)
            if sample_weight.ndim == 0:
                sample_weight = np.full(n, float(sample_weight))
            if sample_weight.shape != (n,):
                raise ValueError(f"sample_weight.shape == {sample_weight.shape}, expected ({n},)!")
            if not np.isfinite(sample_weight).all() or np.any(sample_weight < 0):
                raise ValueError("sample_weight must be finite and non-negative")
            if not np.any(sample_weight):
                raise ValueError("Sample weights must contain at least one non-zero number.")
        class_weight = getattr(self, "class_weight", None)
        if class_weight is not None:
            labels = self._label_binarizer.inverse_transform(y)
            if np.ndim(labels) != 1:
                raise ValueError("class_weight is for single-output classification, not multilabel targets")
            factors = compute_sample_weight(class_weight, labels)
            sample_weight = factors if sample_weight is None else sample_weight * factors
        return sample_weight

    def _new_optimizer(self, settings) -> optim.Optimizer:
        lr, solver = settings["learning_rate_init"], settings["solver"]
        if solver == "sgd":
            momentum = settings["momentum"]
            return (_NesterovSGD if self.nesterovs_momentum and momentum else optim.SGD)(lr, momentum=momentum)
        betas = (settings["beta_1"], settings["beta_2"])
        if solver == "adam":
            return _ScikitLearnAdam(lr, betas=betas, eps=settings["epsilon"])
        if solver == "adamw":  # its decoupled decay is alpha's L2 term here
            return optim.AdamW(lr, betas=betas, eps=settings["epsilon"], weight_decay=0.0)
        return {"adagrad": optim.Adagrad, "rmsprop": optim.RMSprop, "adadelta": optim.Adadelta}[solver](lr)

    def _optimizer_for(self, model, settings, incremental: bool) -> optim.Optimizer:
        """A new optimizer, or with ``partial_fit`` the one of the previous call (rebuilt
        from its state after unpickling), bound to the network's parameters."""
        saved = self.__dict__.pop("_optimizer_state", None)
        if not incremental or not hasattr(self, "optimizer_"):
            self.optimizer_ = self._new_optimizer(settings)
            if incremental and saved is not None:
                self.optimizer_.load_state_dict(saved)
        optimizer = self.optimizer_
        if not optimizer.is_bound_to(model.parameters()):
            state = optimizer.state_dict() if optimizer.params else None
            optimizer.bind(model.parameters(), model.gradients(), backend=model.backend)
            if state is not None:
                optimizer.load_state_dict(state)
        return optimizer

    def _validation_split(self, X, y, sample_weight, settings):
        """(X_train, y_train, sw_train, X_val, y_val as labels, sw_val)."""
        if self.validation_data is not None:
            X_val, y_val = self.validation_data
            X_val = validate_data(self, X_val, accept_sparse=["csr", "csc"], dtype=(np.float64, np.float32),
                                  reset=False)
            return X, y, sample_weight, X_val, np.asarray(y_val), None
        # stratified for a single output, by the binarized labels as scikit-learn (its errors name them)
        stratify = y.astype(bool) if is_classifier(self) and self.n_outputs_ == 1 else None
        arrays = (X, y) if sample_weight is None else (X, y, sample_weight)
        parts = train_test_split(*arrays, random_state=self._random_state,
                                 test_size=settings["validation_fraction"], stratify=stratify)
        X_train, X_val, y_train, y_val = parts[:4]
        sw_train, sw_val = (None, None) if sample_weight is None else parts[4:]
        if X_val.shape[0] < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of your "
                             "dataset.")
        if is_classifier(self):
            y_val = self._label_binarizer.inverse_transform(y_val)
        return X_train, y_train, sw_train, X_val, y_val, sw_val

    def _fit_stochastic(self, X, y, sample_weight, settings, dtype, incremental):
        model = self._network(settings["backend"], dtype)
        optimizer = self._optimizer_for(model, settings, incremental)
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        early_stopping = self.early_stopping
        if early_stopping:
            X_train, y_train, sw_train, X_val, y_val, sw_val = self._validation_split(X, y, sample_weight, settings)
        else:
            X_train, y_train, sw_train, X_val, y_val, sw_val = X, y, sample_weight, None, None, None
        n_samples = X_train.shape[0]
        if settings["batch_size"] == "auto":
            batch_size = min(AUTO_BATCH, n_samples)
        else:
            if settings["batch_size"] > n_samples:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped",
                              stacklevel=4)
            batch_size = int(np.clip(settings["batch_size"], 1, n_samples))
        sample_idx = np.arange(n_samples)
        callbacks = list(self.callbacks or ())
        history = nn.History()
        for callback in callbacks:
            callback.set_model(model)
            callback.on_train_begin({"epochs": 1 if incremental else settings["max_iter"],
                                     "steps": math.ceil(n_samples / batch_size), "samples": n_samples,
                                     "validation": early_stopping})
        model.stop_training = False
        self.n_iter_ = 0
        try:
            for _ in range(settings["max_iter"]):
                for callback in callbacks:
                    callback.on_epoch_begin(self.n_iter_ + 1, math.ceil(n_samples / batch_size))
                if self.shuffle:
                    sample_idx = shuffled(sample_idx, random_state=self._random_state)
                accumulated_loss = 0.0
                for batch in gen_batches(n_samples, batch_size):
                    index = sample_idx[batch] if self.shuffle else batch
                    swb = None if sw_train is None else sw_train[index]
                    weight_sum = (batch.stop - batch.start) if swb is None else float(swb.sum())
                    if not weight_sum:  # a batch of zero weights has no loss: no step
                        continue
                    loss = self._backprop(model, _rows(X_train, index, dtype), y_train[index], swb, weight_sum)
                    loss = loss / weight_sum + self._add_l2(model, settings["alpha"], weight_sum)
                    optimizer.step()
                    accumulated_loss += loss * (batch.stop - batch.start)
                self.n_iter_ += 1
                self.loss_ = accumulated_loss / n_samples
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
                self._update_no_improvement_count(early_stopping, model, X_val, y_val, sw_val)
                self._iteration_ends(optimizer, settings)
                logs = {"loss": self.loss_}
                if early_stopping:
                    logs["val_score"] = self.validation_scores_[-1]
                history.append(self.n_iter_, logs)
                for callback in callbacks:
                    callback.on_epoch_end(self.n_iter_, logs)
                if self._no_improvement_count > settings["n_iter_no_change"]:
                    what = "Validation score" if early_stopping else "Training loss"
                    message = (f"{what} did not improve more than tol={settings['tol']:f} for "
                               f"{settings['n_iter_no_change']} consecutive epochs.")
                    if self._trigger_stopping(optimizer, settings, message):
                        break
                    self._no_improvement_count = 0
                if incremental or model.stop_training:
                    break
                if self.n_iter_ == settings["max_iter"]:
                    warnings.warn(f"Stochastic Optimizer: Maximum iterations ({settings['max_iter']}) reached and "
                                  "the optimization hasn't converged yet.", ConvergenceWarning, stacklevel=4)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", stacklevel=4)
        for callback in callbacks:
            callback.on_train_end(history)
        if early_stopping:  # the best validation epoch's weights
            self.coefs_, self.intercepts_ = self._best_coefs, self._best_intercepts
        else:
            self._take_weights(model)

    def _iteration_ends(self, optimizer, settings) -> None:
        """The rate for the next epoch: "invscaling" from the samples seen so far (``t_``),
        "cosine" from the epochs run; "adam" keeps its rate, as scikit-learn's."""
        if settings["solver"] == "adam":
            return
        if settings["learning_rate"] == "invscaling":
            optimizer.lr = settings["learning_rate_init"] / (self.t_ + 1) ** settings["power_t"]
        elif settings["learning_rate"] == "cosine":
            progress = min(self.n_iter_, settings["max_iter"]) / settings["max_iter"]
            optimizer.lr = max(settings["learning_rate_init"] * 0.5 * (1 + math.cos(math.pi * progress)),
                               np.finfo(np.float64).tiny)

    def _trigger_stopping(self, optimizer, settings, message: str) -> bool:
        """At a plateau: stop, or with "adaptive" divide the rate by 5 (and stop once it is
        at or below 1e-6), as scikit-learn's SGD does."""
        if settings["solver"] == "adam" or settings["learning_rate"] != "adaptive":
            if self.verbose:
                print(message + " Stopping.")
            return True
        if optimizer.lr <= ADAPTIVE_MIN_LR:
            if self.verbose:
                print(message + " Learning rate too small. Stopping.")
            return True
        optimizer.lr = optimizer.lr / ADAPTIVE_DIVISOR
        if self.verbose:
            print(message + f" Setting learning rate to {optimizer.lr:f}")
        return False

    def _update_no_improvement_count(self, early_stopping, model, X_val, y_val, sw_val) -> None:
        if early_stopping:
            self._take_weights(model)  # the validation score reads coefs_
            score = self._score(X_val, y_val, sample_weight=sw_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print(f"Validation score: {score:f}")
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_coefs = [c.copy() for c in self.coefs_]
                self._best_intercepts = [i.copy() for i in self.intercepts_]
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    def _fit_lbfgs(self, X, y, sample_weight, settings, dtype):
        model = self._network(settings["backend"], dtype)
        params, grads = model.parameters(), model.gradients()
        shapes = [tuple(p.shape) for p in params]
        bounds = np.cumsum([0, *(int(np.prod(s)) for s in shapes)])
        n_samples = X.shape[0]
        weight_sum = float(n_samples if sample_weight is None else sample_weight.sum())
        packed_grad = np.empty(bounds[-1])
        alpha = settings["alpha"]

        def loss_and_gradient(theta):
            for p, shape, start, stop in zip(params, shapes, bounds, bounds[1:]):
                p[...] = theta[start:stop].reshape(shape).astype(dtype, copy=False)
            packed_grad[...] = 0
            total = 0.0
            for chunk in gen_batches(n_samples, CHUNK_ROWS):  # the gradients of the chunks add up
                swb = None if sample_weight is None else sample_weight[chunk]
                total += self._backprop(model, _rows(X, chunk, dtype), y[chunk], swb, weight_sum)
                for g, start, stop in zip(grads, bounds, bounds[1:]):
                    packed_grad[start:stop] += _arrays.to_host(g).ravel()
            squares = 0.0
            for W, start, stop in zip(params[0::2], bounds[0::2], bounds[1::2]):  # L2 on the weights
                host = _arrays.to_host(W).ravel().astype(np.float64)
                squares += float(np.dot(host, host))
                packed_grad[start:stop] += alpha / weight_sum * host
            return total / weight_sum + 0.5 * alpha * squares / weight_sum, packed_grad.copy()

        iteration = [0]

        def report(intermediate_result):
            iteration[0] += 1
            print(f"Iteration {iteration[0]}, loss = {intermediate_result.fun:.8f}")

        theta = np.concatenate([np.asarray(p, dtype=np.float64).ravel()
                                for pair in zip(self.coefs_, self.intercepts_) for p in pair])
        result = scipy.optimize.minimize(loss_and_gradient, theta, method="L-BFGS-B", jac=True,
                                         callback=report if self.verbose else None,
                                         options={"maxfun": settings["max_fun"], "maxiter": settings["max_iter"],
                                                  "gtol": settings["tol"]})
        self.n_iter_ = _lbfgs_iterations(result, settings["max_iter"])
        self.loss_ = float(result.fun)
        for p, shape, start, stop in zip(params, shapes, bounds, bounds[1:]):
            p[...] = result.x[start:stop].reshape(shape).astype(dtype, copy=False)
        self._take_weights(model)

    def fit(self, X, y, sample_weight=None):
        """Train on (X, y) (``sample_weight``: a weight per sample, in the loss and in the
        validation score); returns self."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    def _check_solver(self) -> bool:
        if self.solver == "lbfgs":
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. {self.solver} is not "
                                 "stochastic.")
        return True

    def _score_with_function(self, X, y, sample_weight, score_function) -> float:
        y_pred = self._predict(X, check_input=False)
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return float(score_function(y, y_pred, sample_weight=sample_weight))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    # -- pickling: the network is rebuilt from coefs_, the optimizer from its state ---------

    def __getstate__(self):
        state = dict(super().__getstate__())  # (object.__getstate__ returns __dict__ itself)
        state.pop("_model", None)
        state.pop("_model_key", None)
        if "optimizer_" in state:
            state["_optimizer_state"] = state.pop("optimizer_").state_dict()
        return state


_SHARED_PARAMETERS = """
    hidden_layer_sizes : int or tuple of int, default (100,)
        The width of each hidden layer.
    activation : {"identity", "logistic", "tanh", "relu", "leaky_relu", "gelu"}, default "relu"
        The activation after each hidden layer.
    solver : {"lbfgs", "sgd", "adam", "adamw", "adagrad", "rmsprop", "adadelta"}, default "adam"
        "lbfgs": scipy's L-BFGS-B over the whole data; the others are nnkern optimizers
        stepping per mini-batch.
    alpha : float, default 0.0001
        L2 penalty ``0.5 * alpha * ||W||^2 / n`` on the weights (n: the batch's samples,
        or its sum of sample weights).
    batch_size : int or "auto", default "auto"
        Samples per step; "auto" is ``min(200, n_samples)``.
    learning_rate : {"constant", "invscaling", "adaptive", "cosine"}, default "constant"
        The rate of "sgd" (and nnkern's other optimizers; "adam" keeps its rate):
        constant; ``learning_rate_init / (t + 1) ** power_t`` with t the samples seen,
        updated after each epoch; divided by 5 at each plateau (training ends once it is at
        or below 1e-6); or a cosine down to 0 over ``max_iter`` epochs.
    learning_rate_init : float, default 0.001
        The initial learning rate.
    power_t : float, default 0.5
        The exponent of "invscaling".
    max_iter : int, default 200
        The most epochs (iterations for "lbfgs") one ``fit`` runs.
    shuffle : bool, default True
        Draw a new sample order every epoch.
    random_state : int, RandomState or None, default None
        Seeds the initial weights, the order of the samples and the validation split.
    tol : float, default 1e-4
        The smallest improvement of the loss (or the validation score) that counts.
    verbose : bool or int, default False
        Print "Iteration N, loss = ..." after each epoch.
    warm_start : bool, default False
        ``fit`` continues from the weights of the previous fit (with a new optimizer).
    momentum : float, default 0.9
        The momentum of "sgd".
    nesterovs_momentum : bool, default True
        Nesterov's momentum for "sgd" (with momentum > 0).
    early_stopping : bool, default False
        Hold out ``validation_fraction`` of the training data (stratified for binary
        classification) and stop when its score (accuracy or R², with sample weights) has
        not improved by ``tol`` for ``n_iter_no_change`` epochs, keeping the best epoch's
        weights.
    validation_fraction : float, default 0.1
        The held-out part with ``early_stopping``.
    beta_1, beta_2, epsilon : float, default 0.9, 0.999, 1e-8
        Adam's parameters.
    n_iter_no_change : int or np.inf, default 10
        Epochs without improvement before training stops (np.inf: never).
    max_fun : int, default 15000
        The most loss evaluations of "lbfgs".
    class_weight : dict, "balanced" or None, default None
        (nnkern) Weights per class, multiplied into the sample weights (classifier only).
    validation_data : (X_val, y_val) or None, default None
        (nnkern) With ``early_stopping``, the set scored each epoch instead of a held-out
        part of the training data.
    callbacks : list of nnkern.nn.Callback or None, default None
        (nnkern) Called at the start and end of training and of each epoch.
    backend : str or None, default None
        (nnkern) The backend ("numpy", "cython", "numba", "cuda"); None: the current one.
    dtype : {"float32", "float64"} or None, default None
        (nnkern) The precision of the network; None: the input's float dtype.
"""


class MLPClassifier(ClassifierMixin, _BaseMLP):
    __doc__ = """A multi-layer perceptron classifier with scikit-learn's interface and behaviour,
    trained by nnkern: binary (one logistic output), multiclass (softmax) and multilabel
    (a logistic output per label, 2-D 0/1 targets).

    Parameters (scikit-learn's ``MLPClassifier``'s, in its order, then nnkern's):
    """ + _SHARED_PARAMETERS + """
    Attributes: ``classes_``, ``n_features_in_`` (and ``feature_names_in_``), ``coefs_``,
    ``intercepts_``, ``n_layers_``, ``n_outputs_``, ``out_activation_``, ``loss_``,
    ``loss_curve_``, ``best_loss_``, ``n_iter_``, ``t_``, ``validation_scores_``,
    ``best_validation_score_``, ``model_`` (the nnkern network), ``optimizer_``.
    """

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 class_weight=None, validation_data=None, callbacks=None, backend=None, dtype=None):
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
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.class_weight = class_weight
        self.validation_data = validation_data
        self.callbacks = callbacks
        self.backend = backend
        self.dtype = dtype

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def _output_activation_name(self) -> str:
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same classes as in the previous "
                                     f"call to fit. Previously got {self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has {self.classes_}. "
                                 f"'y' has {classes}.")
        return X, self._label_binarizer.transform(y).astype(bool)

    def predict(self, X):
        """The predicted classes: labels of ``classes_``, or a 0/1 indicator matrix for
        multilabel targets."""
        check_is_fitted(self, "coefs_")
        return self._predict(X)

    def _predict(self, X, check_input=True):
        y_pred = self._forward_pass_fast(X, check_input=check_input)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        return self._label_binarizer.inverse_transform(y_pred)

    def _score(self, X, y, sample_weight=None):
        return self._score_with_function(X, y, sample_weight, accuracy_score)

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y). The first call needs ``classes``, every label that will
        ever be seen; later calls continue with the same optimizer."""
        if classes is not None and hasattr(self, "classes_") and \
                not np.array_equal(self.classes_, unique_labels(classes)):
            raise ValueError(f"`classes={classes!r}` is not the same as on last call to partial_fit, was: "
                             f"{self.classes_!r}")
        if not hasattr(self, "classes_"):
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            self.classes_ = unique_labels(classes)
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y if type_of_target(y).startswith("multilabel") else classes)
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes), in the order of ``classes_``
        (per label for multilabel targets)."""
        check_is_fitted(self, "coefs_")
        y_pred = self._forward_pass_fast(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        if y_pred.ndim == 1:
            return np.vstack([1 - y_pred, y_pred]).T
        return y_pred

    def predict_log_proba(self, X):
        """The logarithms of :meth:`predict_proba`."""
        y_prob = self.predict_proba(X)
        return np.log(y_prob, out=y_prob)


class MLPRegressor(RegressorMixin, _BaseMLP):
    __doc__ = """A multi-layer perceptron regressor with scikit-learn's interface and behaviour,
    trained by nnkern on one or several outputs.

    loss : {"squared_error", "poisson"}, default "squared_error"
        Half the squared error (identity output), or half the Poisson deviance (an
        exponential output, for counts).

    The other parameters are :class:`MLPClassifier`'s (``class_weight`` aside):
    """ + _SHARED_PARAMETERS.replace("""    class_weight : dict, "balanced" or None, default None
        (nnkern) Weights per class, multiplied into the sample weights (classifier only).
""", "")

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 validation_data=None, callbacks=None, backend=None, dtype=None):
        self.loss = loss
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
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.validation_data = validation_data
        self.callbacks = callbacks
        self.backend = backend
        self.dtype = dtype

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _settings(self) -> dict:
        _choice("loss", self.loss, REGRESSION_LOSSES)
        return super()._settings()

    def _output_activation_name(self) -> str:
        return "exp" if self.loss == "poisson" else "identity"

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True, y_numeric=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if self.loss == "poisson" and np.any(y < 0):
            raise ValueError("loss='poisson' needs targets y >= 0")
        return X, y

    def predict(self, X):
        """The predicted targets, shape (n_samples,) for one output, else (n_samples, n_outputs)."""
        check_is_fitted(self, "coefs_")
        return self._predict(X)

    def _predict(self, X, check_input=True):
        y_pred = self._forward_pass_fast(X, check_input=check_input)
        return y_pred.ravel() if y_pred.shape[1] == 1 else y_pred

    def _score(self, X, y, sample_weight=None):
        return self._score_with_function(X, y, sample_weight, r2_score)

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), continuing with the same optimizer."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)
