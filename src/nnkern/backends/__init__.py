"""The kernel interface every backend implements, and the registry that finds backends.

A backend is a module ``nnkern.backends.<name>_backend`` that exports every name in
``KERNELS``. The public functions in :mod:`nnkern.ops` validate their arguments (shapes,
dtypes, label ranges, ``out=`` buffers) and then call these raw kernels, so a kernel can
assume:

* every float array is C-contiguous and of one dtype, float32 or float64;
* every output buffer is allocated, of the right shape and dtype, and writeable;
* integer labels are int64, in range;
* sizes are non-zero (the ops layer answers empty problems itself).

Raw kernel signatures (outputs are written in place; losses return a Python float):

    matmul(a, b, trans_a, trans_b, out)
    linear(x, w, b, act, slope, out)               # out = act(x @ w + b)
    activation(act, x, slope, out)
    activation_grad(act, x, y, grad_out, slope, out)   # x or y is None when act does not need it
    softmax(x, out)
    softmax_cross_entropy(logits, labels, dlogits) -> float   # labels: int64 (N,) or targets (N, C)
    mse(pred, target, half_sum, dpred) -> float
    binary_cross_entropy(prob, target, dprob) -> float
    bias_grad(dy, out)                              # column sums of dy
    sgd_update(p, g, lr)                            # p, g and state arrays: 1-D, same length
    momentum_update(p, g, v, lr, momentum)
    nesterov_update(p, g, v, lr, momentum)          # v = momentum*v + g; p -= lr*(g + momentum*v)
    adagrad_update(p, g, h, lr, eps)
    rmsprop_update(p, g, h, lr, alpha, eps)
    adadelta_update(p, g, h, d, lr, rho, eps)
    adam_update(p, g, m, v, t, lr, beta1, beta2, eps)
    adamw_update(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay)
    batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum, eps, out, mean, invstd)
    batch_norm_backward(x, grad_out, weight, mean, invstd, training, dx, dweight, dbias)
    layer_norm_forward(x, weight, bias, eps, out, mean, invstd)
    layer_norm_backward(x, grad_out, weight, mean, invstd, dx, dweight, dbias)
    sum_squares(x) -> float                         # x: 1-D; sum of x*x accumulated in double
    max_abs(x) -> float                             # max |x|, NaN when x holds a NaN
    scale(x, alpha)                                 # x *= alpha in place (alpha may be inf or NaN)

Normalisation (x of shape (N, C); weight and bias always given, ones and zeros for a layer
without them): BatchNorm over the rows, per column, statistics (N >= 2 in training) and
weight, bias, running_*, mean, invstd of shape (C,); LayerNorm over the columns, per row,
mean and invstd of shape (N,). ``invstd`` is 1 / sqrt(var + eps) with the biased variance,
accumulated in double. batch_norm_forward in training writes the batch's mean and invstd
and, unless running_mean is None, updates running_mean and running_var in place with
``momentum`` (running_var takes the unbiased variance, as torch's); in evaluation it reads
running_mean and running_var and writes the mean and invstd it normalised with.
batch_norm_backward with ``training`` differentiates through the batch statistics,
without it through the fixed ones. dweight and dbias are written, not accumulated.

``act`` is one of ``ACTIVATIONS``; ``slope`` is leaky_relu's negative slope (ignored by
the others). ``ACTIVATION_CODES`` gives the integer code compiled kernels switch on.
"""

from __future__ import annotations

KERNELS = (
    "matmul",
    "linear",
    "activation",
    "activation_grad",
    "softmax",
    "softmax_cross_entropy",
    "mse",
    "binary_cross_entropy",
    "bias_grad",
    "sgd_update",
    "momentum_update",
    "nesterov_update",
    "adagrad_update",
    "rmsprop_update",
    "adadelta_update",
    "adam_update",
    "adamw_update",
    "batch_norm_forward",
    "batch_norm_backward",
    "layer_norm_forward",
    "layer_norm_backward",
    "sum_squares",
    "max_abs",
    "scale",
)

# "gelu" is the exact erf form; "gelu_tanh" the tanh approximation (ops.activation maps
# approximate="tanh" onto it). "step" is the source material's step function (gradient 0).
ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu", "leaky_relu", "gelu", "gelu_tanh", "step")
ACTIVATION_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}

# The optimizer update rules of the fused training engines, by code: the one definition.
# The Cython enum (kernels/cython/nnk_update.h, exported as _cy_train.UPDATE_RULE_CODES)
# lists them in this order, and numba_train and cuda_train take their codes from here
# (tests/test_tables.py checks all three). Each rule's hyperparameters (a, b):
# - | momentum | - | alpha | rho | beta1, beta2 | beta1, beta2 | momentum.
UPDATE_RULES = ("sgd", "momentum", "adagrad", "rmsprop", "adadelta", "adam", "adamw", "nesterov")
UPDATE_RULE_CODES = {name: code for code, name in enumerate(UPDATE_RULES)}

# The loss heads of the fused CPU engines, by code: the one definition (the Cython enum,
# _cy_train.OUTPUT_HEAD_CODES, and numba_train take their codes from here; tests/test_tables.py
# checks). What each makes of the last Linear's output z and its targets:
# - softmax_cross_entropy: softmax, cross entropy on integer labels (CrossEntropyLoss);
# - identity_squared: z itself, squared error on float targets (MSELoss; scikit-learn's
#   identity output with "squared_error");
# - logistic_log_loss: sigmoid(z), binary log loss with p clipped to [eps, 1 - eps] of the
#   dtype (scikit-learn's logistic output with "binary_log_loss");
# - sigmoid_bce: sigmoid(z) as a Sigmoid layer computes it, BCELoss (logs clamped at
#   log(1e-12)) and its gradient back through the sigmoid, as the layer path.
OUTPUT_HEADS = ("softmax_cross_entropy", "identity_squared", "logistic_log_loss", "sigmoid_bce")
OUTPUT_HEAD_CODES = {name: code for code, name in enumerate(OUTPUT_HEADS)}

# Which forward quantity each activation's gradient is computed from.
GRAD_NEEDS_OUTPUT = frozenset({"sigmoid", "tanh"})

BACKENDS = ("numpy", "cython", "numba", "cuda")
