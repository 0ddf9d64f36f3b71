"""Groups spanning several variables (`SharedGroups`, `AttentionHeads`)
against the independent NumPy references.

In the references a shared group is simply one group: the joint variable
is a matrix whose row k holds group k's slices of every member (built here
with `np.take`, slice by slice), and the reference algorithms run on it
with one group per row. Every optimizer must match them step by step, and
a group's slices must become zero together.
"""

import keras
import numpy as np
import pytest

import keras_rmda as kr
from keras_rmda import groups
from keras_rmda.optimizers import ProxGen, ProxSGD, ProxSSI, RAMDA

import compiled
import numpy_baselines as baselines
import numpy_reference as ref

# An attention-like set: query kernel (d, heads, k), its bias (heads, k),
# output kernel (heads, k, out); 3 groups along the marked axes.
MEMBERS = [((4, 3, 2), 1), ((3, 2), 0), ((3, 2, 4), 0)]
KEY = "block/attention"
LEARNING_RATE = 0.05


def to_rows(arrays):
    """Row k: group k's slices of every member, in member order."""
    return np.stack([
        np.concatenate([np.take(a, k, axis=axis).ravel() for a, (_, axis) in zip(arrays, MEMBERS)])
        for k in range(3)
    ])


def from_rows(rows):
    arrays, start = [], 0
    for shape, axis in MEMBERS:
        array = np.zeros(shape)
        width = array.size // 3
        for k in range(3):
            index = [slice(None)] * len(shape)
            index[axis] = k
            array[tuple(index)] = rows[k, start:start + width].reshape(np.take(array, k, axis).shape)
        arrays.append(array)
        start += width
    return arrays


def _make(name, strength):
    regularizer = kr.GroupLasso(strength)
    if name == "rmda":
        return kr.RMDA(LEARNING_RATE, momentum=0.3, regularizer=regularizer), \
            lambda w: ref.RMDA(w, 0.3, strength, ref.make_prox("group_lasso", 0))
    if name == "proxsgd":
        return ProxSGD(LEARNING_RATE, momentum=0.3, regularizer=regularizer), \
            lambda w: baselines.ProxSGD(w, 0.3, strength, ref.make_prox("group_lasso", 0))
    if name == "proxgen":
        options = {"max_inner_steps": 2000, "inner_tol": 1e-9}
        return ProxGen(LEARNING_RATE, regularizer=regularizer, **options), \
            lambda w: baselines.ProxGen(w, strength, "group_lasso", 0, max_steps=2000, tol=1e-9)
    if name == "proxssi":
        return ProxSSI(LEARNING_RATE, regularizer=regularizer), \
            lambda w: baselines.ProxSSI(w, strength, "group_lasso", 0)
    options = {"max_inner_steps": 2000, "inner_tol": 1e-9}
    return RAMDA(LEARNING_RATE, momentum=0.3, regularizer=regularizer, **options), \
        lambda w: baselines.RAMDA(w, 0.3, strength, "group_lasso", 0, max_steps=2000, tol=1e-9)


def _run(name, strength, jit=False, steps=20, restart_at=10):
    rng = np.random.default_rng(0)
    starts = [rng.normal(size=shape) for shape, _ in MEMBERS]
    targets = [0.3 * rng.normal(size=shape) for shape, _ in MEMBERS]
    variables = []
    for i, (start, (_, axis)) in enumerate(zip(starts, MEMBERS)):
        variable = keras.Variable(start.astype("float32"), name=f"member_{i}")
        variable.constraint = groups.SharedGroups(KEY, axis)
        variables.append(variable)
    # An ordinary variable beside the set keeps its own groups.
    other = keras.Variable(rng.normal(size=(5, 3)).astype("float32"), name="other")
    other.constraint = groups.InputUnits()
    optimizer, make_reference = _make(name, strength)
    optimizer.build(variables + [other])
    reference = make_reference(to_rows(starts))
    reference_other = make_reference(keras.ops.convert_to_numpy(other).astype(np.float64))
    apply = (compiled.jit_apply if jit else compiled.graph_apply)(optimizer, variables + [other])
    worst, zero_rows = 0.0, []
    for k in range(steps):
        if k == restart_at and name in ("rmda", "ramda"):
            optimizer.restart()
            reference.restart()
            reference_other.restart()
        gradients = [w - t + 0.5 * rng.normal(size=w.shape)
                     for w, t in zip(from_rows(reference.w), targets)]
        gradient_other = reference_other.w - 0.5 * rng.normal(size=(5, 3))
        apply(*[g.astype("float32") for g in gradients + [gradient_other]])
        expected = reference.step(to_rows(gradients), LEARNING_RATE)
        expected_other = reference_other.step(gradient_other, LEARNING_RATE)
        got = [keras.ops.convert_to_numpy(v).astype(np.float64) for v in variables]
        for want, have in zip(from_rows(expected), got):
            worst = max(worst, np.abs(have - want).max() / max(1.0, np.abs(want).max()))
        have_other = keras.ops.convert_to_numpy(other)
        worst = max(worst, np.abs(have_other - expected_other).max())
        points = [keras.ops.convert_to_numpy(optimizer.prox_point(v)) for v in variables]
        if name in ("rmda", "ramda"):
            solution = reference.w_tilde
            for want, have in zip(from_rows(solution), points):
                worst = max(worst, np.abs(have - want).max() / max(1.0, np.abs(want).max()))
        rows = to_rows(points)
        zero = np.all(rows == 0.0, axis=1)
        zero_rows.append(int(zero.sum()))
        for g in np.flatnonzero(zero):
            for member, (_, axis) in zip(points, MEMBERS):
                assert np.all(np.take(member, g, axis=axis) == 0.0)
    return worst, zero_rows


STRENGTHS = {"rmda": 1.5, "proxsgd": 1.0, "proxgen": 1.0, "proxssi": 1.0, "ramda": 0.6}


@pytest.mark.parametrize("name", sorted(STRENGTHS))
def test_matches_numpy_reference(name):
    worst, zero_rows = _run(name, STRENGTHS[name])
    assert worst <= 2e-5
    # Some steps with some groups zero and others not: where the joint norm matters.
    assert any(0 < zeros < 3 for zeros in zero_rows), zero_rows


@pytest.mark.parametrize("name", ["rmda", "proxsgd"])
def test_matches_numpy_reference_under_xla(name):
    worst, zero_rows = _run(name, STRENGTHS[name], jit=True)
    assert worst <= 2e-5
    assert any(0 < zeros < 3 for zeros in zero_rows), zero_rows
