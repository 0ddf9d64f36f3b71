"""`optimizers.tables`: per-variable entries of shared vectors, written once."""

import keras
import numpy as np
import pytest

import keras_rmda as kr
from keras_rmda.optimizers import tables


def _built_rmda(sizes=(2, 3, 1)):
    variables = [keras.Variable(np.ones((n,), "float32"), name=f"v{i}") for i, n in enumerate(sizes)]
    optimizer = kr.RMDA(0.1, 0.1)
    optimizer.build(variables)
    return optimizer


def _counting_assign(optimizer):
    written = []

    def assign(variable, value):
        written.append(variable)
        optimizer.assign(variable, value)

    return assign, written


def test_with_entries_sets_the_named_entries_in_any_order_and_keeps_the_rest():
    table = _built_rmda(sizes=(1,) * 6)._fingerprints
    table.variable.assign(np.arange(6, dtype="float32"))
    new = table.with_entries({table[4]: [40.0], table[1]: [10.0], table[2]: [20.0]})
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(new), [0, 10, 20, 3, 40, 5])


def test_held_writes_are_read_back_then_stored_once_per_table():
    optimizer = _built_rmda()
    steps, alphas = optimizer._steps, optimizer._alphas
    assign, written = _counting_assign(optimizer)
    with tables.held_writes([steps, alphas], assign):
        optimizer.assign(steps[0], 5.0)
        with tables.held_writes([steps, alphas], assign):  # nested: the outer block stores
            optimizer.assign(steps[2], 7.0)
        assert written == []
        optimizer.assign(steps[0], steps[0].read() + 1.0)  # reads the held 5
        optimizer.assign(alphas[1], 0.5)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(steps.variable), [0, 0, 0])
        assert float(steps[0].read()) == 6.0
    assert written == [steps.variable, alphas.variable]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(steps.variable), [6, 0, 7])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(alphas.variable), [0, 0.5, 0])


def test_held_writes_store_nothing_when_the_block_raises():
    optimizer = _built_rmda()
    steps = optimizer._steps
    assign, written = _counting_assign(optimizer)
    with pytest.raises(RuntimeError, match="rule failed"):
        with tables.held_writes([steps], assign):
            optimizer.assign(steps[1], 3.0)
            raise RuntimeError("rule failed")
    assert written == [] and steps.held is None
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(steps.variable), [0, 0, 0])
    optimizer.assign(steps[1], 3.0)  # outside the block: stored at once
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(steps.variable), [0, 3, 0])
