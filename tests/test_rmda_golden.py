"""RMDA against the independent NumPy reference, step by step."""

import keras
import numpy as np
import pytest

import keras_rmda as kr
from keras_rmda import groups

import compiled
import numpy_reference as ref

DENSE, CONV = (6, 5), (3, 3, 4, 5)

# (shape, grouping, regulariser kind, kept axis for the reference, λ)
CASES = [
    (DENSE, groups.InputUnits(), "group_lasso", 0, 0.6),
    (DENSE, groups.OutputUnits(), "group_lasso", 1, 0.9),
    (DENSE, groups.Elementwise(), "group_lasso", None, 0.3),
    (CONV, groups.InputChannels(), "group_lasso", 2, 1.3),
    (CONV, groups.OutputChannels(), "group_lasso", 3, 0.9),
    (DENSE, groups.InputUnits(), "l1", None, 0.3),
    (CONV, groups.InputChannels(), "l1", None, 0.3),
    (DENSE, groups.InputUnits(), "nuclear", None, 1.5),
    (CONV, groups.InputChannels(), "nuclear", None, 6.0),
]
REGULARIZERS = {"group_lasso": kr.GroupLasso, "l1": kr.L1, "nuclear": kr.NuclearNorm}


def _run(shape, grouping, kind, kept_axis, strength, momentum, learning_rate,
         steps=24, restart_at=12, jit=False):
    rng = np.random.default_rng(0)
    start = rng.normal(size=shape)
    target = rng.normal(size=shape) * 0.3
    variable = keras.Variable(start.astype("float32"), name="kernel")
    variable.constraint = grouping
    optimizer = kr.RMDA(
        learning_rate=learning_rate,
        momentum=momentum,
        regularizer=REGULARIZERS[kind](strength),
    )
    optimizer.build([variable])
    reference = ref.RMDA(start, momentum, strength, ref.make_prox(kind, kept_axis))
    apply = lambda gradient: optimizer.apply([gradient], [variable])  # noqa: E731
    if jit:
        apply = compiled.jit_apply(optimizer, [variable])
    schedule = learning_rate if callable(learning_rate) else None
    worst, saw_structure = 0.0, False
    for k in range(steps):
        if k == restart_at:
            optimizer.restart()
            reference.restart()
        # The same gradient for both: grad of ½‖W − T‖² at the reference W, plus noise.
        g = reference.w - target + 0.5 * rng.normal(size=shape)
        lr = float(schedule(k)) if schedule else learning_rate
        apply(g.astype("float32"))
        expected = reference.step(g, lr)
        got = keras.ops.convert_to_numpy(variable)
        got_tilde = keras.ops.convert_to_numpy(optimizer.prox_point(variable))
        scale = 1.0 if kind != "nuclear" else max(1.0, np.abs(expected).max())
        worst = max(
            worst,
            np.abs(got - expected).max() / scale,
            np.abs(got_tilde - reference.w_tilde).max() / scale,
        )
        saw_structure |= _has_structure(reference.w_tilde, kind)
    return worst, saw_structure


def _has_structure(w_tilde, kind):
    """Zeros for the (group) LASSO, a rank drop for the nuclear norm."""
    if kind == "nuclear":
        matrix = w_tilde.reshape(-1, w_tilde.shape[-1])
        return np.linalg.matrix_rank(matrix, tol=1e-9) < min(matrix.shape)
    return bool(np.any(w_tilde == 0.0))


@pytest.mark.parametrize("momentum", [0.1, 1.0])
@pytest.mark.parametrize(
    "shape,grouping,kind,kept_axis,strength",
    CASES,
    ids=[f"{c[2]}-{type(c[1]).__name__}-{len(c[0])}d" for c in CASES],
)
def test_rmda_matches_numpy_reference(shape, grouping, kind, kept_axis, strength, momentum):
    worst, saw_structure = _run(shape, grouping, kind, kept_axis, strength, momentum, 0.05)
    tolerance = 1e-4 if kind == "nuclear" else 1e-5  # float32 SVD is less exact
    assert worst <= tolerance
    assert saw_structure, "λ too small: the test would not exercise the structure"


def test_rmda_matches_reference_with_a_learning_rate_schedule():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=5, decay_rate=0.7)
    worst, saw_zero = _run(DENSE, groups.InputUnits(), "group_lasso", 0, 1.2, 0.1, schedule)
    assert worst <= 1e-5 and saw_zero


def test_rmda_matches_reference_under_xla():
    worst, saw_zero = _run(CONV, groups.InputChannels(), "group_lasso", 2, 1.3, 0.1, 0.05, jit=True)
    assert worst <= 1e-5 and saw_zero


def test_the_pure_rule_matches_the_reference():
    """`rmda_update` alone, fed numpy state: the function a reader holds next
    to docs/algorithms.md, against the reference."""
    from keras_rmda.optimizers.rmda import rmda_update

    rng = np.random.default_rng(1)
    start = rng.normal(size=DENSE)
    strength, kept_axis = 0.6, 0
    reference = ref.RMDA(start, 0.1, strength, ref.make_prox("group_lasso", kept_axis))
    prox = lambda z, tau: kr.prox.prox_group_lasso(  # noqa: E731
        z, tau * strength * np.sqrt(DENSE[1]), (1,))
    target = rng.normal(size=DENSE) * 0.3
    w, w0, v, t, alpha = start.astype("float32"), start.astype("float32"), 0 * start, 0, 0.0
    for _ in range(24):
        g = reference.w - target + 0.5 * rng.normal(size=DENSE)
        t += 1
        alpha += 0.05 * np.sqrt(t)
        w, v = rmda_update(w, w0, v.astype("float32"), g.astype("float32"), learning_rate=0.05,
                           momentum=0.1, step=float(t), alpha=alpha, prox=prox)
        w, v = keras.ops.convert_to_numpy(w), keras.ops.convert_to_numpy(v)
        np.testing.assert_allclose(w, reference.step(g, 0.05), atol=1e-5)
    assert (reference.w_tilde == 0).any()
