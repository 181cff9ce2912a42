"""The solvers: the optimizers of "sgd" and "adam" as scikit-learn's, the stochastic
training loop with scikit-learn's batches, stopping rule and learning-rate schedules, and
"lbfgs" through scipy."""

from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.optimize
import scipy.sparse
from sklearn.base import is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils.validation import validate_data

from .. import _arrays, nn, ops, optim
from .._threads import claim
from ..training import select_step
from ._losses import OutputLoss, _output_activation, _sample_losses
from ._parameters import ADAPTIVE_DIVISOR, ADAPTIVE_MIN_LR, AUTO_BATCH

CHUNK_ROWS = 4096  # rows per forward pass where the whole data is read (lbfgs, predict)


# scikit-learn's L2 penalty, alpha * W / weight_sum in the gradient of the weight matrices
# (not the intercepts), is each optimizer's weight_decay, set to alpha / the batch's weight
# before every step (by the layer path and by the fused engines, which read update_rule()
# at every step); DECAY_BIASES = False leaves the intercepts out.

class _SGD(optim.SGD):
    """SGD (momentum and Nesterov's momentum in torch's form, the velocity of gradients:
    scikit-learn's steps at a constant rate)."""

    DECAY_BIASES = False


class _ScikitLearnAdam(optim.Adam):
    """Adam with scikit-learn's placement of epsilon, ``p -= lr_t * m / (sqrt(v) + eps)`` with
    ``lr_t = lr * sqrt(1 - b2**t) / (1 - b1**t)``: torch's rule (nnkern's kernels, layer by
    layer and fused) run with ``eps / sqrt(1 - b2**t)``. (It matters for weights whose
    gradient is about eps, such as those of always-zero inputs under the L2 penalty.)"""

    RULE = ("adam", "beta1", "beta2")
    DECAY_BIASES = False

    def _eps_at(self, t: int) -> float:
        """The epsilon of torch's rule that is scikit-learn's at step ``t`` (1-based)."""
        return self.hyperparameters["eps"] / math.sqrt(1.0 - self.hyperparameters["beta2"] ** t)

    def _rule_eps(self, step: int) -> float:
        return self._eps_at(step)

    def _update(self, p, g, state):
        h = self.hyperparameters
        ops.adam_update(p, g, state["m"], state["v"], self.t, h["lr"], h["beta1"], h["beta2"], self._eps_at(self.t),
                        backend=self.backend)


class _AdamW(optim.AdamW):
    """AdamW, its decoupled decay (``p *= 1 - lr * alpha / weight_sum``) the L2 penalty."""

    DECAY_BIASES = False


class _Adagrad(optim.Adagrad):
    DECAY_BIASES = False


class _RMSprop(optim.RMSprop):
    DECAY_BIASES = False


class _Adadelta(optim.Adadelta):
    DECAY_BIASES = False


class _L2Penalty:
    """scikit-learn's L2 penalty on one fit's weight matrices (the intercepts go free).
    ``before_step(weight_sum)`` sets the optimizer's weight decay to the penalty's gradient
    ``alpha / weight_sum`` (times W) for the coming step and returns the penalty ``0.5 *
    alpha * ||W||^2 / weight_sum`` of the weights before it. Called before every step (a
    small network's lasts tens of microseconds), it reads host weights through views made
    once: the engines update the parameter arrays in place."""

    def __init__(self, model, optimizer, alpha: float):
        self.optimizer, self.alpha = optimizer, alpha
        weights = model.parameters()[0::2]
        self.views = [W.ravel() for W in weights] if all(isinstance(W, np.ndarray) for W in weights) else None
        self.weights = weights

    def gradient(self, weight_sum):
        """The weight decay that is the penalty's gradient (times W), of a batch or batches."""
        return self.alpha / weight_sum

    def value(self, squares, weight_sum):
        """The penalty of weights whose squares sum to ``squares``, of a batch or batches."""
        return 0.5 * self.alpha * squares / weight_sum

    def before_step(self, weight_sum: float) -> float:
        decay = self.gradient(weight_sum)
        if self.optimizer.hyperparameters.get("weight_decay") != decay:
            self.optimizer.weight_decay = decay
        if not self.alpha:
            return 0.0
        views = self.views if self.views is not None else [_arrays.to_host(W).ravel() for W in self.weights]
        squares = 0.0
        for view in views:
            squares += float(np.dot(view, view))
        return self.value(squares, weight_sum)


class _EpochCall:
    """An epoch of one fit in the engine's one call (``step.epochs``): ``call(order)`` is
    the epoch's summed (loss + L2 penalty) * batch rows as the loop over batches adds them
    up, or None where the engine trained nothing (the loop then does it)."""

    def __init__(self, run, n_samples: int, batch_size: int, optimizer, l2_penalty: _L2Penalty):
        self.run, self.batch_size, self.optimizer, self.l2_penalty = run, batch_size, optimizer, l2_penalty
        self.rows = np.diff(np.append(np.arange(0, n_samples, batch_size), n_samples)).astype(np.float64)
        self.weight_decay = l2_penalty.gradient(self.rows)

    def __call__(self, order):
        t, rule_eps = self.optimizer.t, self.optimizer._rule_eps
        eps = [rule_eps(t + k + 1) for k in range(len(self.rows))]
        done = self.run(order, self.batch_size, eps, self.weight_decay, weight_squares=bool(self.l2_penalty.alpha))
        if done is None:
            return None
        losses, _, squares = done
        return float(np.sum((losses + self.l2_penalty.value(squares, self.rows)) * self.rows))


def _sgd(lr: float, momentum: float, nesterov: bool) -> optim.Optimizer:
    return _SGD(lr, momentum=momentum, nesterov=bool(nesterov and momentum))


def _rows(X, index, dtype, out=None) -> np.ndarray:
    """Rows ``index`` (a slice or indices) of X as a dense C-contiguous array of ``dtype``:
    a sparse X is densified here, one batch at a time. ``out``: a C-contiguous array of at
    least as many rows, which gathered rows of a dense X of ``dtype`` fill (a new batch of
    a wide X costs page faults on every step)."""
    if (out is not None and isinstance(index, np.ndarray) and isinstance(X, np.ndarray)
            and X.dtype == out.dtype == dtype):
        # mode="clip": the indices are in range, and "raise" would copy through a buffer
        return X.take(index, axis=0, out=out[:len(index)], mode="clip")
    part = X[index]
    if scipy.sparse.issparse(part):
        part = part.toarray()
    return np.ascontiguousarray(part, dtype=dtype)


def _batches(n_samples: int, batch_size: int):
    """The slices of ``sklearn.utils.gen_batches(n_samples, batch_size)``, without its
    per-call parameter validation (~0.1 ms: a third of a small network's step)."""
    for start in range(0, n_samples, batch_size):
        yield slice(start, min(start + batch_size, n_samples))


def _shuffled(indices: np.ndarray, random_state: np.random.RandomState) -> np.ndarray:
    """``sklearn.utils.shuffle(indices, random_state=random_state)``: the same draw from
    the same generator (one ``shuffle`` of ``arange``), without its parameter validation."""
    order = np.arange(len(indices))
    random_state.shuffle(order)
    return indices[order]


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



class _Solvers:
    """The training of :class:`_BaseMLP` (a mixin): its stochastic solvers and "lbfgs"."""

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

    def _new_optimizer(self, settings) -> optim.Optimizer:
        lr, solver = settings["learning_rate_init"], settings["solver"]
        if solver == "sgd":
            momentum = settings["momentum"]
            return _sgd(lr, momentum, bool(self.nesterovs_momentum and momentum))
        betas = (settings["beta_1"], settings["beta_2"])
        if solver == "adam":
            return _ScikitLearnAdam(lr, betas=betas, eps=settings["epsilon"])
        if solver == "adamw":
            return _AdamW(lr, betas=betas, eps=settings["epsilon"], weight_decay=0.0)
        return {"adagrad": _Adagrad, "rmsprop": _RMSprop, "adadelta": _Adadelta}[solver](lr)

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

    def _training_step(self, model, optimizer, X, y, batch_size: int, dtype):
        """(the step object that trains ``model`` on batches of (X, y), the targets it takes:
        ``y``, or for a softmax output the class indices). A softmax output trains with
        cross entropy on the class indices, the others on scikit-learn's loss
        (:class:`OutputLoss`); :func:`nnkern.training.select_step` picks the engine: the
        fused CPU engines where they have the loss's head (softmax, logistic, identity),
        else layer by layer (exp / poisson), saying why."""
        if self.out_activation_ == "softmax":
            targets, loss = y.argmax(axis=1), "cross_entropy"
        else:
            targets, loss = y, OutputLoss(self.out_activation_, self._loss_name())
        # a sparse X stays sparse (its batches are densified one at a time): the engine is
        # shown its first batch, for the input's width and density
        data = _rows(X, slice(0, batch_size), dtype) if scipy.sparse.issparse(X) else X
        step = select_step(model, optimizer, model._objective(loss), [data], [targets[:len(data)]], batch_size)
        return step, targets

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
        step, targets = self._training_step(model, optimizer, X_train, y_train, batch_size, dtype)
        if self.verbose and step.fallback_reason:
            print(f"Training layer by layer, not on a fused engine: {step.fallback_reason}")
        l2_penalty = _L2Penalty(model, optimizer, settings["alpha"])
        # a whole epoch in one compiled call where the engine has one (the Cython step): the
        # rows of a dense C-contiguous X, unweighted (a weighted batch of weight 0 takes no step)
        epochs = getattr(step, "epochs", None)
        epoch_call = None
        if epochs is not None and isinstance(X_train, np.ndarray) and X_train.flags.c_contiguous and sw_train is None:
            epoch_call = _EpochCall(epochs(X_train, targets), n_samples, batch_size, optimizer, l2_penalty)
        sample_idx = np.arange(n_samples)
        batch_rows = np.empty((batch_size, X_train.shape[1]), dtype) if self.shuffle else None
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
                    sample_idx = _shuffled(sample_idx, self._random_state)
                accumulated_loss = 0.0
                done = epoch_call(sample_idx) if epoch_call is not None else None
                if done is not None:
                    accumulated_loss = done
                for batch in _batches(n_samples, batch_size) if done is None else ():
                    index = sample_idx[batch] if self.shuffle else batch
                    swb = None if sw_train is None else sw_train[index]
                    weight_sum = (batch.stop - batch.start) if swb is None else float(swb.sum())
                    if not weight_sum:  # a batch of zero weights has no loss: no step
                        continue
                    penalty = l2_penalty.before_step(weight_sum)
                    loss, _, _ = step.step(_rows(X_train, index, dtype, batch_rows), targets[index], swb)
                    accumulated_loss += (loss + penalty) * (batch.stop - batch.start)
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
            self.best_loss_ = min(self.best_loss_, self.loss_curve_[-1])

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
            for chunk in _batches(n_samples, CHUNK_ROWS):  # the gradients of the chunks add up
                swb = None if sample_weight is None else sample_weight[chunk]
                with claim(model.largest_product(chunk.stop - chunk.start)):
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
