"""Hyperparameters: non-finite and out-of-range values fail at once, with the
argument and the value as passed; numpy scalars work wherever numbers do.

Every optimizer of the shared suite (optimizer_cases.OPTIMIZERS) is checked
on each hyperparameter its constructor takes.
"""

import inspect
import json
import re

import keras
import numpy as np
import pytest

import keras_rmda as kr
from keras_rmda import groups

import optimizer_cases as cases

NAMES = sorted(cases.OPTIMIZERS)
INF, NAN = float("inf"), float("nan")

# Keras's own arguments, taken by every optimizer through **kwargs.
COMMON_BAD = {
    "learning_rate": [INF, NAN, -0.1, "0.1", None],
    "weight_decay": [INF, NAN, -1.0],
    "clipnorm": [INF, 0.0],
    "clipvalue": [NAN],
    "global_clipnorm": [INF],
    "loss_scale_factor": [NAN, INF],
}
# Arguments some optimizers take (found in the constructor's signature).
SPECIFIC_BAD = {
    "momentum": [INF, NAN, 0.0, np.float32(1.5), True],
    "epsilon": [INF, NAN, 0.0],
    "beta_1": [NAN, 1.0],
    "beta_2": [NAN, np.float64(-0.1)],
    "inner_tol": [NAN, INF],
    "newton_tol": [NAN],
    "max_inner_steps": [0, 2.5],
    "max_newton_steps": [0, np.float64(3.0)],
    "restart_epsilon_factor": [NAN, 0.0],
}
# Valid values of every argument, as numpy scalars.
NUMPY_GOOD = {
    "learning_rate": np.float32(0.01),
    "momentum": np.float32(0.1),
    "epsilon": np.float64(1e-6),
    "beta_1": np.float32(0.9),
    "beta_2": np.float32(0.999),
    "inner_tol": np.float32(1e-8),
    "newton_tol": np.float64(1e-6),
    "max_inner_steps": np.int64(10),
    "max_newton_steps": np.int32(5),
    "restart_epsilon_factor": np.float32(0.1),
    "weight_decay": np.float64(1e-4),
    "clipnorm": np.float32(1.0),
}


def _arguments(name):
    """The names of the specific hyperparameters optimizer `name` takes."""
    parameters = inspect.signature(type(cases.OPTIMIZERS[name]()).__init__).parameters
    return [arg for arg in SPECIFIC_BAD if arg in parameters]


def _shown(value):
    return repr(value) if isinstance(value, (str, type(None), bool)) else str(value)


def _bad_cases():
    for name in NAMES:
        for table in (COMMON_BAD, {a: SPECIFIC_BAD[a] for a in _arguments(name)}):
            for arg, values in table.items():
                for value in values:
                    yield pytest.param(name, arg, value, id=f"{name}-{arg}={value!r}")


@pytest.mark.parametrize("name,arg,value", list(_bad_cases()))
def test_bad_hyperparameter_is_rejected_naming_argument_and_value(name, arg, value):
    with pytest.raises(ValueError, match=re.escape(f"Received: {arg}={_shown(value)}")) as info:
        cases.OPTIMIZERS[name](**{arg: value})
    assert str(info.value).startswith(f"`{arg}`"), str(info.value)


def test_every_specific_hyperparameter_is_covered():
    # A new optimizer's argument missing from SPECIFIC_BAD would go unchecked.
    known = set(SPECIFIC_BAD) | {"learning_rate", "regularizer", "groups", "finalize",
                                 "name", "self", "kwargs"}
    for name in NAMES:
        parameters = inspect.signature(type(cases.OPTIMIZERS[name]()).__init__).parameters
        assert set(parameters) <= known, (name, set(parameters) - known)


@pytest.mark.parametrize("name", NAMES)
def test_numpy_scalars_are_accepted_and_stored_as_python_numbers(name):
    kwargs = {arg: NUMPY_GOOD[arg] for arg in ["learning_rate", "weight_decay", "clipnorm",
                                              *_arguments(name)]}
    optimizer = cases.OPTIMIZERS[name](**kwargs)
    config = optimizer.get_config()
    json.dumps(config)  # numpy scalars would not serialise
    for arg in _arguments(name):
        assert config[arg] == pytest.approx(float(kwargs[arg])), arg
    assert type(optimizer).from_config(config).get_config() == config
    variable = keras.Variable(np.ones((4, 3), "float32"), name="kernel")
    variable.constraint = groups.InputUnits()
    optimizer.build([variable])
    optimizer.apply([np.full((4, 3), 0.5, "float32")], [variable])
    weights = keras.ops.convert_to_numpy(variable)
    assert np.isfinite(weights).all() and not np.array_equal(weights, np.ones((4, 3)))


@pytest.mark.parametrize("name", NAMES)
def test_a_schedule_is_still_accepted(name):
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    optimizer = cases.OPTIMIZERS[name](learning_rate=schedule)
    assert optimizer.get_config()["learning_rate"]["class_name"] == "ExponentialDecay"


@pytest.mark.parametrize("name", NAMES)
def test_a_non_finite_learning_rate_set_later_is_rejected_and_the_old_one_kept(name):
    optimizer = cases.OPTIMIZERS[name](learning_rate=0.01)
    for bad in (INF, NAN, np.float32(-1.0)):
        with pytest.raises(ValueError, match=re.escape(f"Received: learning_rate={bad}")):
            optimizer.learning_rate = bad
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(0.01)
    optimizer.learning_rate = np.float32(0.05)
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(0.05)
    if "momentum" in _arguments(name):
        with pytest.raises(ValueError, match="Received: momentum=nan"):
            optimizer.momentum = NAN
        optimizer.momentum = np.float32(0.5)
        assert float(keras.ops.convert_to_numpy(optimizer.momentum)) == pytest.approx(0.5)


def test_a_callback_setting_an_infinite_learning_rate_stops_fit():
    model = cases.compile_model(cases.small_cnn(), cases.OPTIMIZERS["rmda"]())
    before = [keras.ops.convert_to_numpy(w) for w in model.trainable_variables]
    diverging = keras.callbacks.LearningRateScheduler(lambda epoch, lr: INF)
    x, y = cases.data(32)
    with pytest.raises(ValueError, match="Received: learning_rate=inf"):
        model.fit(x, y, epochs=1, callbacks=[diverging], verbose=0)
    for a, b in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(b))


def test_numpy_momentum_message_shows_the_value_as_passed():
    with pytest.raises(ValueError, match=r"Received: momentum=1\.5$"):
        kr.RMDA(momentum=np.float32(1.5))
    assert float(keras.ops.convert_to_numpy(kr.RMDA(momentum=np.float32(0.1)).momentum)) \
        == pytest.approx(0.1)


@pytest.mark.parametrize("cls", [kr.GroupLasso, kr.L1, kr.NuclearNorm])
def test_regularizer_strength(cls):
    for bad in (INF, NAN, -1, np.float32(-2.0), "1e-3", None, True):
        with pytest.raises(ValueError, match=re.escape(f"Received: strength={_shown(bad)}")):
            cls(bad)
    for good in (np.float32(1e-3), np.float64(2e-3), np.int64(0), 3):
        regularizer = cls(good)
        assert type(regularizer.strength) is float
        assert regularizer.strength == pytest.approx(float(good))
        json.dumps(regularizer.get_config())


@pytest.mark.parametrize(
    "make", [groups.InputUnits, groups.InputChannels, groups.OutputUnits,
             groups.OutputChannels, groups.Elementwise, lambda **kw: groups.AlongAxis(0, **kw)],
    ids=["InputUnits", "InputChannels", "OutputUnits", "OutputChannels", "Elementwise",
         "AlongAxis"])
def test_grouping_strength(make):
    for bad in (INF, NAN, -1.0):
        with pytest.raises(ValueError, match=f"Received: strength={bad}"):
            make(strength=bad)
    grouping = make(strength=np.float32(2.0))
    assert grouping.strength == 2.0 and type(grouping.strength) is float
    json.dumps(grouping.get_config())


def test_grouping_axis_takes_numpy_ints_only():
    grouping = groups.AlongAxis(np.int64(-1))
    assert grouping.axis == -1 and type(grouping.axis) is int
    assert grouping.resolve((3, 4)).num_groups == 4
    for bad in (1.5, np.float32(1.0), "0", None):
        with pytest.raises(ValueError, match=re.escape(f"Received: axis={_shown(bad)}")):
            groups.AlongAxis(bad)
