r"""Pure proximal operators and penalty values.

Every function here is a pure function of tensors written with `keras.ops`,
so it traces under `tf.function(jit_compile=True)` and runs on every Keras
backend. For a function ψ and a threshold τ ≥ 0 the proximal operator is

    prox_{τψ}(z) = argmin_x ½‖x − z‖² + τ ψ(x).

The optimizers call these maps with τ = (their step-dependent factor) · λ,
where λ is the regulariser's strength; see `docs/algorithms.md`.

This module imports nothing of keras_rmda.
"""

import math

from keras import ops


# XLA's CPU backend rewrites a sum over more than this many entries of the
# last axis into a windowed reduction, which cannot fuse the ops that make
# its input: z and z² would each be written to memory and read back.
FUSED_SUM_SIZE = 32

# From this many entries `group_sums_of_squares(..., in_runs=True)` sums in
# runs; below, the extra kernel costs more than the memory traffic it saves
# (docs/performance.md).
RUNS_MIN_SIZE = 2**16


def group_sums_of_squares(z, reduce_axes, in_runs=False):
    """‖z_g‖₂² of every group, keeping the reduced axes (size 1).

    A group is one index along each axis *not* in `reduce_axes`; e.g. for a
    Conv2D kernel `(kh, kw, in, out)` and `reduce_axes=(0, 1, 3)` there is one
    group per input channel.

    `in_runs=True` sums a long last axis in runs of at most `FUSED_SUM_SIZE`
    first, for XLA's CPU backend, where the squares are then summed where
    they are made. The sums are the same up to rounding; a GPU fuses the
    plain sum with its input already, and the runs would cost it a kernel.
    """
    squares = ops.square(z)
    rank = len(z.shape)
    size = z.shape[-1] if rank else None
    sums_last_axis = rank and rank - 1 in {axis % rank for axis in reduce_axes}
    static = all(isinstance(d, int) for d in z.shape)
    if in_runs and sums_last_axis and static and size > FUSED_SUM_SIZE \
            and math.prod(z.shape) >= RUNS_MIN_SIZE:
        # `abs` is a no-op on the partial sums that keeps XLA from merging
        # the two sums back into one.
        run = max(d for d in range(1, FUSED_SUM_SIZE + 1) if size % d == 0)
        if run > 1:
            runs = ops.reshape(squares, tuple(z.shape[:-1]) + (size // run, run))
            squares = ops.abs(ops.sum(runs, axis=-1))
    return ops.sum(squares, axis=reduce_axes, keepdims=True)


def group_norms(z, reduce_axes, in_runs=False):
    """Euclidean norm of every group, keeping the reduced axes (size 1)."""
    return ops.sqrt(group_sums_of_squares(z, reduce_axes, in_runs))


def prox_group_lasso(z, threshold, reduce_axes, in_runs=False):
    r"""Proximal map of the group LASSO (block soft-thresholding).

    Returns

        argmin_x ½‖x − z‖² + threshold · Σ_g ‖x_g‖₂,

    i.e. `x_g = max(0, 1 − threshold / ‖z_g‖₂) · z_g` for each group `g`, and
    `x_g = 0` exactly when `‖z_g‖₂ ≤ threshold`. Include the group weight
    √|g| in `threshold`.

    Args:
        z: the point, any shape.
        threshold: a scalar ≥ 0.
        reduce_axes: the axes a group's norm is taken over (see
            `group_norms`); `()` makes every entry its own group (= L1).
        in_runs: how the group norms are summed (`group_sums_of_squares`).
    """
    if not reduce_axes:
        return prox_l1(z, threshold)
    # From the squared norms: one small kernel for the factor, not a square
    # root and then the factor.
    squares = group_sums_of_squares(z, reduce_axes, in_runs)
    keep = squares > threshold * threshold
    safe = ops.where(keep, squares, ops.ones_like(squares))
    return z * ops.where(keep, 1.0 - threshold * ops.rsqrt(safe), ops.zeros_like(squares))


def prox_l1(z, threshold):
    r"""Proximal map of the L1 norm (soft-thresholding).

    Returns `argmin_x ½‖x − z‖² + threshold · ‖x‖₁`
    `= sign(z) · max(|z| − threshold, 0)`, exactly 0 where `|z| ≤ threshold`.
    """
    return ops.sign(z) * ops.maximum(ops.abs(z) - threshold, 0.0)


def as_matrix(z):
    """A kernel `(k…, in, out)` read as the matrix `(prod(k…)·in, out)`."""
    shape = tuple(z.shape)
    return ops.reshape(z, (math.prod(shape[:-1]), shape[-1]))


def prox_nuclear_norm(z, threshold):
    r"""Proximal map of the nuclear norm (singular-value soft-thresholding).

    Returns `argmin_x ½‖x − z‖²_F + threshold · Σ_i σ_i(x)`
    `= U · diag(max(σ − threshold, 0)) · Vᵀ` where `z = U · diag(σ) · Vᵀ`.
    A kernel of rank > 2 is read as the matrix `(prod(k…)·in, out)`.

    Computed as `z · V · diag(max(σ − τ, 0)/σ) · Vᵀ` from the eigenpairs
    (σ², V) of the small Gram matrix `zᵀz` (or from the left side when `z`
    is wide): XLA's SVD on CPU takes seconds for a 400×250 kernel, its
    symmetric eigensolver milliseconds. Singular values at or below the
    threshold, including zero ones, get factor 0 (no 0/0).
    """
    shape = tuple(z.shape)
    matrix = as_matrix(z)
    rows, cols = matrix.shape
    wide = rows < cols
    if wide:
        matrix = ops.transpose(matrix)
    eigenvalues, vectors = ops.eigh(ops.matmul(ops.transpose(matrix), matrix))
    singular = ops.sqrt(ops.maximum(eigenvalues, 0.0))
    keep = singular > threshold
    factor = ops.where(keep, 1.0 - threshold / ops.where(keep, singular, 1.0), 0.0)
    shrunk = ops.matmul(matrix, ops.matmul(vectors * factor[None, :], ops.transpose(vectors)))
    if wide:
        shrunk = ops.transpose(shrunk)
    return ops.reshape(shrunk, shape)


def group_lasso_penalty(w, reduce_axes, group_weight):
    """`group_weight · Σ_g ‖w_g‖₂` (`reduce_axes=()`: the L1 norm)."""
    if not reduce_axes:
        return group_weight * l1_penalty(w)
    return group_weight * ops.sum(group_norms(w, reduce_axes))


def l1_penalty(w):
    """`Σ |w_ij|`."""
    return ops.sum(ops.abs(w))


def nuclear_norm_penalty(w):
    """`Σ_i σ_i(w)`, with `w` read as a matrix as in `prox_nuclear_norm`."""
    return ops.sum(ops.svd(as_matrix(w), compute_uv=False))
