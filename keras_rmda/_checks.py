"""Checks of hyperparameters, shared by groupings, regularisers and optimizers.

A number may be a Python number or a numpy scalar (`np.float32(0.1)`,
`np.int64(3)`, a 0-d array): sweeps over `np.linspace` and values read from
arrays give numpy scalars. Non-finite values are rejected: one inf or nan
in a step size or a threshold turns every weight it touches into nan, and
training would carry on silently. A message shows the value as passed
(`0.1`, not the float32 value 0.10000000149011612).

This module imports nothing of keras_rmda.
"""

import math
import numbers

import keras
import numpy as np

# Keras's own optimizer arguments checked here: name -> whether 0 is excluded.
# Keras checks none of them for finiteness; an inf clip norm or loss scale
# makes inf/inf = nan gradients, and every step is then skipped silently.
_OPTIMIZER_KWARGS = {
    "weight_decay": False,
    "clipnorm": True,
    "clipvalue": True,
    "global_clipnorm": True,
    "loss_scale_factor": True,
}


def as_number(value):
    """`value` as a Python int or float, or None if it is not a real number.

    bool is rejected: `True` as a rate or a threshold is a mistake, not 1.
    """
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return None
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def shown(value):
    """How a message shows a received value: numbers as written, others by repr."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return str(value)
    return repr(value)


def number(name, value, minimum=None, maximum=None, open_minimum=False,
           open_maximum=False, label=None):
    """`value` as a finite Python float within the bounds, else ValueError.

    `label` replaces `` `name` `` at the start of the message (to explain
    a convention, as `momentum`'s does).
    """
    converted = as_number(value)
    low_ok = minimum is None or converted is not None and (
        converted > minimum if open_minimum else converted >= minimum)
    high_ok = maximum is None or converted is not None and (
        converted < maximum if open_maximum else converted <= maximum)
    # nan fails every comparison, so only ±inf needs its own test.
    if converted is None or not math.isfinite(converted) or not (low_ok and high_ok):
        if minimum is not None and maximum is not None:
            bounds = (f"in {'(' if open_minimum else '['}{minimum:g}, "
                      f"{maximum:g}{')' if open_maximum else ']'}")
        elif minimum is not None:
            bounds = f"a finite number {'>' if open_minimum else '>='} {minimum:g}"
        elif maximum is not None:
            bounds = f"a finite number {'<' if open_maximum else '<='} {maximum:g}"
        else:
            bounds = "a finite number"
        raise ValueError(
            f"{label or f'`{name}`'} must be {bounds}. Received: {name}={shown(value)}"
        )
    return float(converted)


def integer(name, value, minimum):
    """`value` as a Python int >= `minimum` (numpy ints too), else ValueError."""
    converted = as_number(value)
    if not isinstance(converted, int) or converted < minimum:
        raise ValueError(
            f"`{name}` must be an int >= {minimum}. Received: {name}={shown(value)}"
        )
    return converted


def optional_number(name, value, **bounds):
    """None, or `number(name, value, **bounds)`."""
    return None if value is None else number(name, value, **bounds)


def learning_rate(value):
    """A schedule, callable or tensor as is; a number as a finite float >= 0.

    A tensor is passed on unchecked: reading it could mean a device sync.
    """
    if callable(value) or keras.ops.is_tensor(value) or isinstance(value, keras.Variable):
        return value
    try:
        return number("learning_rate", value, minimum=0.0)
    except ValueError:
        raise ValueError(
            "`learning_rate` must be a finite number >= 0, a LearningRateSchedule "
            f"or a callable. Received: learning_rate={shown(value)}"
        ) from None


def optimizer_kwargs(kwargs):
    """A copy of a Keras optimizer's `**kwargs` with its numbers checked."""
    kwargs = dict(kwargs)
    for name, open_minimum in _OPTIMIZER_KWARGS.items():
        kwargs[name] = optional_number(
            name, kwargs.get(name), minimum=0.0, open_minimum=open_minimum)
        if kwargs[name] is None:
            del kwargs[name]
    return kwargs
