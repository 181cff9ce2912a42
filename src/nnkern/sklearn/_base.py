"""What MLPClassifier and MLPRegressor share: parameters, the network, fit, pickling."""

from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.validation import check_is_fitted, validate_data

from .. import _arrays, nn
from .._backend import get_backend, unavailable_reason
from .._builders import build_mlp
from ._losses import _output_activation
from ._parameters import ACTIVATIONS, LEARNING_RATES, SOLVERS, _check, _choice
from ._solvers import CHUNK_ROWS, _batches, _rows, _Solvers


def _keep_parameters(estimator, parameters: dict) -> None:
    """Store each argument of ``estimator.__init__`` (its ``locals()``) as the attribute of
    its name, untouched: scikit-learn's rule for an estimator's constructor."""
    for name, value in parameters.items():
        if name not in ("self", "__class__"):
            setattr(estimator, name, value)


class _BaseMLP(_Solvers, BaseEstimator):
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
            # seeded only to skip drawing: the weights are set just below
            self._model = build_mlp(widths[1:-1], activation=ACTIVATIONS[self.activation], inputs=widths[0],
                                    outputs=widths[-1], backend=backend, dtype=dtype, seed=0)
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
            z = np.concatenate([model.predict(_rows(X, s, dtype)) for s in _batches(X.shape[0], CHUNK_ROWS)])
        else:
            z = model.predict(np.ascontiguousarray(X, dtype=dtype))
        return _output_activation(self.out_activation_, z)

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
