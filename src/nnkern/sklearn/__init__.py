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

The network (``model_``, a :class:`nnkern.nn.Sequential` on the backend ``backend``)
trains through nnkern's training steps (:func:`nnkern.training.select_step`), on
scikit-learn's batches (its shuffle and batch order): a multiclass classifier's softmax
output with cross entropy on the class indices, on the fused engine of the "cython" and
"numba" backends (one compiled call per step) and the "cuda" backend's device engine
(sample weights and the L2 penalty included) with "adam", "sgd" without Nesterov's
momentum and nnkern's other optimizers; the other outputs (logistic, identity, exp) and
"sgd" with Nesterov's momentum train layer by layer, the output activation, loss and its
gradient computed in NumPy (``verbose`` says why a fit trains layer by layer). The L2
penalty is the optimizer's weight decay on the weight matrices. At the same
``random_state`` the weights reached are scikit-learn's to rounding, with one exception:
while the rate of "sgd" changes ("invscaling", "adaptive"), its momentum is torch's (a
velocity of gradients, scaled by the current rate) where scikit-learn's velocity carries
the rates of past steps. The stopping rule's counter is kept as scikit-learn's,
``_no_improvement_count``.

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
* ``backend`` (an nnkern backend; None: the current one, by default the fastest on the
  CPU) and ``dtype`` ("float32" or
  "float64"; None: the input's float dtype).

The thread count is nnkern's (:func:`nnkern.set_num_threads`), within the budget the host
sets (joblib's and Dask's workers: see the README's "Scaling out").

Needs scikit-learn: ``pip install nnkern[sklearn]``.
"""

try:
    import sklearn  # noqa: F401 (the estimators' modules import its parts)
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError("nnkern.sklearn needs scikit-learn; install it with: pip install nnkern[sklearn]") from exc

from ..interop import register_skl2onnx
from ._classifier import MLPClassifier
from ._regressor import MLPRegressor

__all__ = ["MLPClassifier", "MLPRegressor"]

# Pickles name the public path, whichever module of the package defines the classes.
MLPClassifier.__module__ = MLPRegressor.__module__ = __name__

# With skl2onnx installed, skl2onnx.to_onnx(estimator, X) converts these estimators.
register_skl2onnx(MLPClassifier, MLPRegressor)
