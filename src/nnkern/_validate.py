"""The checks of numeric and named-choice parameters at the Python boundary, in one place.

    lr = _validate.real("SGD", "lr", lr, low=0)                    # a finite float >= 0
    beta = _validate.real("adam_update", "beta1", beta1, low=0, high=1, high_open=True)
    n = _validate.integer("StepLR", "step_size", step_size, minimum=1)
    mode = _validate.choice("EarlyStopping", "mode", mode, ("auto", "min", "max"))

A number is refused with a TypeError when it is no number at all (a bool counts as none:
Python's bool is an int, NumPy's is no number to the ``numbers`` ABCs, while NumPy's
integers and floats are), and with a ValueError when it is non-finite or out of bounds.
The messages read ``"<owner>: <name> must be <what>, got <value>"``; <what> names the
condition the value broke ("finite", ">= 0", "< 1"), or is the caller's ``expected``
text, which then stands for every failure. Callers whose contract is a ValueError for
any bad value (a wrong type included) pass ``type_error=ValueError``.

No NumPy import: :mod:`nnkern._threads` uses this module and must stay light (it runs
before any library that might load an OpenMP runtime).
"""

from __future__ import annotations

import math
import numbers


def _prefix(owner: str) -> str:
    return f"{owner}: " if owner else ""


def _wrong_type(owner, name, value, kind, expected, type_error) -> Exception:
    """The error for a value of the wrong type: a ValueError says the caller's ``expected``
    (its one message for every bad value), a TypeError the ``kind`` of number wanted."""
    what = expected or kind if type_error is ValueError else kind
    return type_error(f"{_prefix(owner)}{name} must be {what}, got {value!r}")


def _broken_bound(value, low, high, low_open, high_open) -> str | None:
    """The bound ``value`` breaks, as "<op> <bound>", or None when it is within them."""
    if low is not None and (value <= low if low_open else value < low):
        return f"{'>' if low_open else '>='} {low}"
    if high is not None and (value >= high if high_open else value > high):
        return f"{'<' if high_open else '<='} {high}"
    return None


def real(owner: str, name: str, value, *, low=None, high=None, low_open: bool = False, high_open: bool = False,
         expected: str | None = None, type_error: type[Exception] = TypeError) -> float:
    """``value`` as a float: a real number (not a bool), finite, and within ``[low, high]``
    (an end left None is open; ``low_open``/``high_open`` exclude the bound itself)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _wrong_type(owner, name, value, "a real number", expected, type_error)
    value = float(value)
    broken = "finite" if not math.isfinite(value) else _broken_bound(value, low, high, low_open, high_open)
    if broken is not None:
        raise ValueError(f"{_prefix(owner)}{name} must be {expected or broken}, got {value}")
    return value


def integer(owner: str, name: str, value, *, minimum=None, maximum=None, expected: str | None = None,
            type_error: type[Exception] = TypeError) -> int:
    """``value`` as an int: an integer (Python's or NumPy's, not a bool) within
    ``[minimum, maximum]`` (an end left None is open)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _wrong_type(owner, name, value, "an integer", expected, type_error)
    value = int(value)
    broken = _broken_bound(value, minimum, maximum, False, False)
    if broken is not None:
        raise ValueError(f"{_prefix(owner)}{name} must be {expected or broken}, got {value}")
    return value


def choice(owner: str, name: str, value, choices):
    """``value`` when it is one of ``choices``, else a ValueError listing them
    ("mode must be 'auto', 'min' or 'max', got 'up'")."""
    if value in choices:
        return value
    listed = [repr(c) for c in choices]
    alternatives = listed[0] if len(listed) == 1 else f"{', '.join(listed[:-1])} or {listed[-1]}"
    raise ValueError(f"{_prefix(owner)}{name} must be {alternatives}, got {value!r}")
