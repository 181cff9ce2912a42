"""nnkern._validate: the one owner of the numeric and named-choice parameter checks."""

import math
import subprocess
import sys

import numpy as np
import pytest

from nnkern import _validate


@pytest.mark.parametrize("value", [0, 2, 0.5, 1e300, np.float32(0.25), np.float64(3.0), np.int64(7), np.uint8(1)])
def test_real_accepts_python_and_numpy_numbers_and_returns_a_float(value):
    got = _validate.real("Owner", "x", value, low=0)
    assert type(got) is float and got == float(value)


@pytest.mark.parametrize("value", [True, False, np.True_, np.False_, "1.0", None, 1j, [1.0], np.array(1.0)])
def test_real_refuses_bools_and_non_numbers_with_a_type_error(value):
    with pytest.raises(TypeError, match=r"^Owner: x must be a real number, got "):
        _validate.real("Owner", "x", value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float32("nan"), np.float64("inf")])
def test_real_refuses_non_finite_values(value):
    with pytest.raises(ValueError, match=r"^op: lr must be finite, got (nan|-?inf)$"):
        _validate.real("op", "lr", value)


@pytest.mark.parametrize("value, bounds, message", [
    (-0.1, {"low": 0}, ">= 0, got -0.1"),
    (0.0, {"low": 0, "low_open": True}, "> 0, got 0.0"),
    (1.0, {"low": 0, "high": 1, "high_open": True}, "< 1, got 1.0"),
    (1.5, {"low": 0, "high": 1}, "<= 1, got 1.5"),
    (-2, {"low": -1, "high": 1}, ">= -1, got -2.0"),
])
def test_real_names_the_bound_the_value_breaks(value, bounds, message):
    with pytest.raises(ValueError, match=rf"^op: p must be {message}$"):
        _validate.real("op", "p", value, **bounds)


@pytest.mark.parametrize("value, bounds", [
    (0.0, {"low": 0}),
    (1.0, {"high": 1}),
    (0.999, {"low": 0, "high": 1, "high_open": True}),
    (1e-300, {"low": 0, "low_open": True}),
    (-5.0, {}),
])
def test_real_accepts_values_on_closed_bounds_and_inside_open_ones(value, bounds):
    assert _validate.real("op", "p", value, **bounds) == value


def test_expected_text_stands_for_every_value_error():
    for value in (-1.0, math.nan):
        with pytest.raises(ValueError, match=r"^SGD: lr must be finite and >= 0, got (-1.0|nan)$"):
            _validate.real("SGD", "lr", value, low=0, expected="finite and >= 0")
    # a wrong type stays a TypeError naming the kind of number, unless the caller asks otherwise
    with pytest.raises(TypeError, match="lr must be a real number, got 'a'"):
        _validate.real("SGD", "lr", "a", low=0, expected="finite and >= 0")
    with pytest.raises(ValueError, match="min_delta must be a finite number >= 0, got True"):
        _validate.real("BestWeights", "min_delta", True, low=0, expected="a finite number >= 0",
                       type_error=ValueError)


def test_no_owner_means_no_prefix():
    with pytest.raises(ValueError, match=r"^momentum must be < 1, got 1.0$"):
        _validate.real("", "momentum", 1.0, low=0, high=1, high_open=True)


@pytest.mark.parametrize("value", [1, 10**20, np.int8(3), np.int64(4), np.uint64(5)])
def test_integer_accepts_python_and_numpy_integers_and_returns_an_int(value):
    got = _validate.integer("Owner", "n", value, minimum=1)
    assert type(got) is int and got == int(value)


@pytest.mark.parametrize("value", [True, np.True_, 2.0, 2.5, np.float64(2.0), "2", None, math.nan])
def test_integer_refuses_bools_floats_and_non_numbers(value):
    with pytest.raises(TypeError, match=r"^StepLR: step_size must be an integer, got "):
        _validate.integer("StepLR", "step_size", value, minimum=1)
    with pytest.raises(ValueError, match=r"^DataLoader: batch_size must be a positive integer, got "):
        _validate.integer("DataLoader", "batch_size", value, minimum=1, expected="a positive integer",
                          type_error=ValueError)


def test_integer_bounds():
    with pytest.raises(ValueError, match=r"^StepLR: step_size must be >= 1, got 0$"):
        _validate.integer("StepLR", "step_size", 0, minimum=1)
    with pytest.raises(ValueError, match=r"^n must be <= 3, got 4$"):
        _validate.integer("", "n", np.int64(4), maximum=3)
    with pytest.raises(ValueError, match=r"^EarlyStopping: patience must be an integer >= 1, got 0$"):
        _validate.integer("EarlyStopping", "patience", 0, minimum=1, expected="an integer >= 1")
    assert _validate.integer("", "n", 3, minimum=3, maximum=3) == 3
    assert _validate.integer("", "n", -(10**30)) == -(10**30)


def test_choice():
    assert _validate.choice("op", "mode", "min", ("min", "max")) == "min"
    assert _validate.choice("load_mnist", "normalize", None, ("unit", None)) is None
    with pytest.raises(ValueError, match=r"^EarlyStopping: mode must be 'auto', 'min' or 'max', got 'up'$"):
        _validate.choice("EarlyStopping", "mode", "up", ("auto", "min", "max"))
    with pytest.raises(ValueError, match=r"^load_mnist: normalize must be 'unit', 'symmetric' or None, got 1$"):
        _validate.choice("load_mnist", "normalize", 1, ("unit", "symmetric", None))
    with pytest.raises(ValueError, match=r"^mse: reduction must be 'mean' or 'half_sum', got 'sum'$"):
        _validate.choice("mse", "reduction", "sum", ("mean", "half_sum"))
    with pytest.raises(ValueError, match=r"^x: y must be 'only', got 'other'$"):
        _validate.choice("x", "y", "other", ("only",))


def test_the_module_imports_no_numpy():
    """nnkern._threads imports it before any kernel library; it must stay free of NumPy."""
    code = "import runpy, sys; runpy.run_path(sys.argv[1]); sys.exit('numpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code, _validate.__file__], check=False).returncode == 0
