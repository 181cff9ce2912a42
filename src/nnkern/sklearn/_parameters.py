"""The estimators' parameters: the names they take, their checks, and their shared
documentation."""

from __future__ import annotations

import math
import numbers

import numpy as np

from .. import nn

# hidden activation name (scikit-learn's, plus nnkern's) -> the layer after each hidden Linear,
# from nnkern's one table of activation layers (scikit-learn says "logistic" for sigmoid)
# scikit-learn's activation names -> nnkern's (None: no activation layer)
ACTIVATIONS = {"identity": None, "logistic": "sigmoid", **{name: name for name in nn.ACTIVATION_LAYERS if name != "sigmoid"}}
STOCHASTIC_SOLVERS = ("adam", "sgd", "adamw", "adagrad", "rmsprop", "adadelta")
SOLVERS = ("lbfgs", *STOCHASTIC_SOLVERS)
LEARNING_RATES = ("constant", "invscaling", "adaptive", "cosine")
REGRESSION_LOSSES = ("squared_error", "poisson")
ADAPTIVE_DIVISOR = 5.0  # "adaptive": the rate is divided by 5 at each plateau...
ADAPTIVE_MIN_LR = 1e-6  # ...and training ends once it is at or below this rate
AUTO_BATCH = 200  # batch_size="auto": min(200, n_samples), as scikit-learn


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
        or its sum of sample weights); with "adamw", its decoupled weight decay
        ``W *= 1 - lr * alpha / n``.
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
        (nnkern) The backend ("numpy", "cython", "numba", "cuda"); None: the current one
        (:func:`nnkern.get_backend`: unless set, the fastest on the CPU).
    dtype : {"float32", "float64"} or None, default None
        (nnkern) The precision of the network; None: the input's float dtype.
"""


