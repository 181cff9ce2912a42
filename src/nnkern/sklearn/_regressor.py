"""MLPRegressor."""

from __future__ import annotations

import numpy as np
from sklearn.base import RegressorMixin
from sklearn.metrics import r2_score
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from ._base import _BaseMLP, _keep_parameters
from ._parameters import _SHARED_PARAMETERS, REGRESSION_LOSSES, _choice


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
        _keep_parameters(self, locals())

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
