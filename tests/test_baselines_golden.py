"""ProxSGD, ProxGen, ProxSSI and RAMDA against independent NumPy references.

Step by step for 24 steps on a Dense and a Conv2D kernel, with the group
LASSO and L1 (and the nuclear norm where the solver is generic). For the
subproblem solvers the returned point's optimality residual is checked too
(numpy_baselines.subproblem_residual), against the subproblem data of the
reference.
"""

import keras
import numpy as np
import pytest

import keras_rmda as kr
from keras_rmda import groups
from keras_rmda.optimizers import ProxGen, ProxSGD, ProxSSI, RAMDA

import compiled
import numpy_baselines as ref

DENSE, CONV = (6, 5), (3, 3, 4, 5)
REGULARIZERS = {"group_lasso": kr.GroupLasso, "l1": kr.L1, "nuclear": kr.NuclearNorm}

# (shape, grouping, regulariser kind, kept axis, λ per optimizer)
CASES = [
    (DENSE, groups.InputUnits(), "group_lasso", 0,
     {"proxsgd": 0.5, "proxgen": 0.5, "proxssi": 0.5, "ramda": 0.3}),
    (CONV, groups.InputChannels(), "group_lasso", 2,
     {"proxsgd": 0.7, "proxgen": 0.6, "proxssi": 0.6, "ramda": 0.35}),
    (DENSE, groups.InputUnits(), "l1", None,
     {"proxsgd": 0.5, "proxgen": 0.3, "proxssi": 0.3, "ramda": 0.2}),
    (CONV, groups.InputChannels(), "l1", None,
     {"proxsgd": 0.5, "proxgen": 0.3, "proxssi": 0.3, "ramda": 0.2}),
    (DENSE, groups.InputUnits(), "nuclear", None,
     {"proxsgd": 1.2, "proxgen": 0.8, "ramda": 0.5}),
]
LEARNING_RATE = 0.05
# Inner solvers run to convergence here, so the residual can be held to a tolerance.
SOLVER_OPTIONS = {"proxgen": {"max_inner_steps": 2000, "inner_tol": 1e-9},
                  "ramda": {"max_inner_steps": 2000, "inner_tol": 1e-9}}


def _make(name, strength, kind, kept_axis, start, options):
    regularizer = REGULARIZERS[kind](strength)
    if name == "proxsgd":
        return (ProxSGD(LEARNING_RATE, momentum=0.3, regularizer=regularizer),
                ref.ProxSGD(start, 0.3, strength, ref.make_prox(kind, kept_axis)))
    if name == "proxgen":
        steps, tol = options.get("max_inner_steps", 100), options.get("inner_tol", 1e-8)
        return (ProxGen(LEARNING_RATE, regularizer=regularizer, **options),
                ref.ProxGen(start, strength, kind, kept_axis, max_steps=steps, tol=tol))
    if name == "proxssi":
        return (ProxSSI(LEARNING_RATE, regularizer=regularizer, **options),
                ref.ProxSSI(start, strength, kind, kept_axis))
    steps, tol = options.get("max_inner_steps", 100), options.get("inner_tol", 1e-8)
    return (RAMDA(LEARNING_RATE, momentum=0.3, regularizer=regularizer, **options),
            ref.RAMDA(start, 0.3, strength, kind, kept_axis, max_steps=steps, tol=tol))


def _run(name, shape, grouping, kind, kept_axis, strength, options, steps=24, restart_at=12,
         jit=False):
    rng = np.random.default_rng(0)
    start = rng.normal(size=shape)
    target = rng.normal(size=shape) * 0.3
    variable = keras.Variable(start.astype("float32"), name="kernel")
    variable.constraint = grouping
    optimizer, reference = _make(name, strength, kind, kept_axis, start, options)
    optimizer.build([variable])
    # Traced, as `fit` runs it: eagerly the inner solvers' loops run op by op.
    apply = (compiled.jit_apply if jit else compiled.graph_apply)(optimizer, [variable])
    worst = worst_residual = 0.0
    zero_fractions = []
    for k in range(steps):
        if k == restart_at and name == "ramda":
            optimizer.restart()
            reference.restart()
        g = reference.w - target + 0.5 * rng.normal(size=shape)
        apply(g.astype("float32"))
        expected = reference.step(g, LEARNING_RATE)
        got = keras.ops.convert_to_numpy(variable).astype(np.float64)
        scale = max(1.0, np.abs(expected).max())
        worst = max(worst, np.abs(got - expected).max() / scale)
        solution, got_solution = expected, got
        if name == "ramda":
            solution = reference.w_tilde
            got_solution = keras.ops.convert_to_numpy(optimizer.prox_point(variable))
            worst = max(worst, np.abs(got_solution - solution).max() / scale)
        if name != "proxsgd" and kind != "nuclear":
            residual = ref.subproblem_residual(got_solution, *reference.subproblem, kind, kept_axis)
            worst_residual = max(worst_residual, residual)
        zero_fractions.append(_zero_fraction(solution, kind, kept_axis))
    return worst, worst_residual, zero_fractions


def _zero_fraction(w, kind, kept_axis):
    if kind == "nuclear":
        matrix = w.reshape(-1, w.shape[-1])
        return 1.0 - np.linalg.matrix_rank(matrix, tol=1e-9) / min(matrix.shape)
    if kind == "group_lasso":
        axes = tuple(a for a in range(w.ndim) if a != kept_axis)
        return float(np.mean(np.all(w == 0.0, axis=axes)))
    return float(np.mean(w == 0.0))


PARAMS = [
    pytest.param(name, *case[:4], case[4][name],
                 id=f"{name}-{case[2]}-{len(case[0])}d")
    for name in ("proxsgd", "proxgen", "proxssi", "ramda")
    for case in CASES
    if name in case[4]
]


@pytest.mark.parametrize("name,shape,grouping,kind,kept_axis,strength", PARAMS)
def test_matches_numpy_reference(name, shape, grouping, kind, kept_axis, strength):
    options = SOLVER_OPTIONS.get(name, {})
    worst, residual, zero_fractions = _run(name, shape, grouping, kind, kept_axis, strength,
                                           options)
    tolerance = 1e-4 if kind == "nuclear" else 2e-5
    assert worst <= tolerance
    assert residual <= 1e-4
    assert max(zero_fractions) > 0.0, "λ too small: no structure to test"
    assert min(zero_fractions[-5:]) < 1.0, "λ too large: everything is zero"


@pytest.mark.parametrize("name", ["proxgen", "ramda"])
def test_default_inner_solver_budget_matches_the_same_algorithm(name):
    """With the default cap (100 iterations, tol 1e-8) the inexact solve is the
    reference's proximal gradient, iteration for iteration."""
    case = CASES[1]
    worst, _, zero_fractions = _run(name, *case[:4], case[4][name], {})
    assert worst <= 2e-5
    assert max(zero_fractions) > 0.0


@pytest.mark.parametrize("name", ["proxsgd", "proxgen", "proxssi", "ramda"])
def test_matches_numpy_reference_under_xla(name):
    case = CASES[1]
    worst, residual, zero_fractions = _run(name, *case[:4], case[4][name],
                                           SOLVER_OPTIONS.get(name, {}), jit=True)
    assert worst <= 2e-5 and residual <= 1e-4
    assert max(zero_fractions) > 0.0
