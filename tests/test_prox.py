"""The proximal maps: closed forms, optimality conditions, exact zeros."""

import keras
import numpy as np
import pytest

from keras_rmda import prox

import numpy_reference as ref

rng = np.random.default_rng(7)


def _np(x):
    return keras.ops.convert_to_numpy(x).astype(np.float64)


@pytest.mark.parametrize("in_runs", [False, True])
@pytest.mark.parametrize(
    "kept_axis,shape",
    # (600, 120), (3, 3, 128, 64): with in_runs, the last axis is summed in
    # runs (`FUSED_SUM_SIZE`).
    [(0, (8, 5)), (1, (8, 5)), (2, (3, 3, 6, 4)), (0, (600, 120)), (2, (3, 3, 128, 64))],
)
def test_group_lasso_closed_form_and_optimality(kept_axis, shape, in_runs):
    # Groups of different scales, so that some fall under the threshold
    # however large they are (the norms of large groups concentrate).
    scales = rng.uniform(0.5, 1.5, size=[n if a == kept_axis else 1 for a, n in enumerate(shape)])
    z = (rng.normal(size=shape) * scales).astype("float32")
    reduce_axes = tuple(a for a in range(len(shape)) if a != kept_axis)
    tau = 0.9 * float(np.median(np.sqrt((z.astype(np.float64) ** 2).sum(axis=reduce_axes))))
    x = _np(prox.prox_group_lasso(z, tau, reduce_axes, in_runs))
    z = z.astype(np.float64)
    # Closed form: groups with ‖z_g‖ ≤ τ are exactly zero, the others shrink.
    expected = ref.prox_group_lasso(z, tau / np.sqrt(z.size / shape[kept_axis]), kept_axis)
    np.testing.assert_allclose(x, expected, atol=1e-5)
    # Optimality: z_g − x_g = τ x_g/‖x_g‖ if x_g ≠ 0, else ‖z_g‖ ≤ τ.
    zs, xs = np.moveaxis(z, kept_axis, 0), np.moveaxis(x, kept_axis, 0)
    zero_groups = 0
    for zg, xg in zip(zs, xs):
        norm = np.linalg.norm(xg)
        if norm == 0.0:
            zero_groups += 1
            assert np.all(xg == 0.0) and np.linalg.norm(zg) <= tau * (1 + 1e-6)
        else:
            np.testing.assert_allclose(zg - xg, tau * xg / norm, atol=1e-5)
    assert 0 < zero_groups < zs.shape[0]


@pytest.mark.parametrize("in_runs", [False, True])
@pytest.mark.parametrize("shape,reduce_axes", [
    # With in_runs, the first three sum their last axis in runs
    # (`RUNS_MIN_SIZE` entries and more).
    ((700, 120), (1,)), ((700, 120), (-1,)), ((2, 3, 128, 96), (0, 1, 3)),
    ((500, 131), (1,)), ((7, 120), (1,)), ((96, 7), (0,)), ((40,), (0,)),
])
def test_group_norms_match_numpy_and_keep_nan_to_its_group(shape, reduce_axes, in_runs):
    z = rng.normal(size=shape).astype("float32")
    expected = np.sqrt((z.astype(np.float64) ** 2).sum(axis=reduce_axes, keepdims=True))
    np.testing.assert_allclose(_np(prox.group_norms(z, reduce_axes, in_runs)), expected,
                               rtol=1e-6)
    z.flat[0] = np.nan
    norms = _np(prox.group_norms(z, reduce_axes, in_runs))
    assert np.isnan(norms.flat[0]) and np.isnan(norms).sum() == 1


def test_group_lasso_zero_group_and_zero_threshold_are_safe():
    z = np.zeros((4, 3), "float32")
    z[1] = [3.0, 4.0, 0.0]
    x = _np(prox.prox_group_lasso(z, 1.0, (1,)))
    assert np.all(np.isfinite(x))
    np.testing.assert_allclose(x[1], [3 * 0.8, 4 * 0.8, 0.0], rtol=1e-6)
    assert np.all(x[[0, 2, 3]] == 0.0)
    np.testing.assert_array_equal(_np(prox.prox_group_lasso(z, 0.0, (1,))), z)


def test_l1_closed_form_and_optimality():
    z = rng.normal(size=(50,)).astype("float32")
    tau = 0.5
    x = _np(prox.prox_l1(z, tau))
    z = z.astype(np.float64)
    np.testing.assert_allclose(x, ref.prox_l1(z, tau), atol=1e-6)
    nonzero = x != 0
    np.testing.assert_allclose(z[nonzero] - x[nonzero], tau * np.sign(x[nonzero]), atol=1e-6)
    assert np.all(np.abs(z[~nonzero]) <= tau) and (~nonzero).any()


@pytest.mark.parametrize("shape", [(9, 5), (3, 3, 2, 4)])
def test_nuclear_norm_closed_form_and_optimality(shape):
    z = rng.normal(size=shape).astype("float32")
    singular = np.linalg.svd(z.reshape(-1, shape[-1]).astype(np.float64), compute_uv=False)
    tau = float(singular[1] + singular[2]) / 2  # keeps exactly two singular values
    x = _np(prox.prox_nuclear_norm(z, tau))
    z = z.astype(np.float64)
    np.testing.assert_allclose(x, ref.prox_nuclear(z, tau), atol=1e-4)
    # Optimality: z − x = τ·U_r V_rᵀ + W, ‖W‖₂ ≤ τ, so ‖z − x‖₂ ≤ τ and U_rᵀ(z − x)V_r = τ·I.
    matrix_x, residual = x.reshape(-1, shape[-1]), (z - x).reshape(-1, shape[-1])
    u, s, vt = np.linalg.svd(matrix_x, full_matrices=False)
    rank = int(np.sum(s > 1e-4))
    assert rank == 2
    assert np.linalg.norm(residual, 2) <= tau * (1 + 1e-4)
    projected = u[:, :rank].T @ residual @ vt[:rank].T
    np.testing.assert_allclose(projected, tau * np.eye(rank), atol=1e-4)


@pytest.mark.parametrize(
    "prox_fn,penalty_fn",
    [
        (lambda z, t: prox.prox_group_lasso(z, t, (1,)), lambda w: prox.group_lasso_penalty(w, (1,), 1.0)),
        (prox.prox_l1, prox.l1_penalty),
        (prox.prox_nuclear_norm, prox.nuclear_norm_penalty),
    ],
    ids=["group_lasso", "l1", "nuclear"],
)
def test_prox_is_the_argmin(prox_fn, penalty_fn):
    """No perturbation of the returned point has a lower objective."""
    z = rng.normal(size=(6, 4)).astype("float32")
    tau = 0.8

    def objective(x):
        return 0.5 * np.sum((x - z.astype(np.float64)) ** 2) + tau * float(penalty_fn(x.astype("float32")))

    x = _np(prox_fn(z, tau))
    best = objective(x)
    for _ in range(50):
        assert objective(x + 1e-2 * rng.normal(size=z.shape)) >= best - 1e-5


def test_penalty_values():
    w = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]], "float32")
    assert float(prox.group_lasso_penalty(w, (1,), np.sqrt(2))) == pytest.approx(np.sqrt(2) * 6.0)
    assert float(prox.l1_penalty(w)) == pytest.approx(8.0)
    expected = np.linalg.svd(w.astype(np.float64), compute_uv=False).sum()
    assert float(prox.nuclear_norm_penalty(w)) == pytest.approx(expected, rel=1e-5)
