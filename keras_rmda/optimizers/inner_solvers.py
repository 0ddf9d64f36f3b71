r"""Pure solvers of the diagonally weighted proximal subproblem.

ProxGen, ProxSSI and RAMDA all need, per variable,

    x* = argmin_x ½ xᵀ D x − ⟨Da, x⟩ + τ ψ(x)  =  argmin_x ½‖x − a‖²_D + τ ψ(x)

with a positive diagonal D (a tensor `d` of the variable's shape) and the
vector `da` = D·a given directly (so no division by D is ever needed):

- ProxGen / ProxSSI: D = √v̂ + ε, da = D·W − η·m̂, τ = η·λ;
- RAMDA: D = P = U^{1/3} + ε, da = P·W⁰ − V, τ = α·λ.

The gradient of the smooth part is `D·x − da`. For the group LASSO with
group weight w_g the optimality conditions give

    x_g = 0  ⇔  ‖da_g‖₂ ≤ τ·w_g                         (the gradient at 0 is −da_g)
    x_g ≠ 0  ⇒  D_g x_g − da_g + τ w_g x_g/‖x_g‖ = 0,

so x_g = r·D_g a_g / (D_g r + τ w_g) with r = ‖x_g‖ > 0 the root of the
secular equation `‖D_g a_g / (D_g r + τ w_g)‖₂ = 1` (see
`group_lasso_newton`). For L1 (and singleton groups) the problem is
separable per entry: x = sign(da)·max(|da| − τ, 0)/D exactly.

Every function uses `keras.ops` only, with fixed shapes and bounded loops
(`while_loop` with `maximum_iterations`), so it compiles under XLA.
"""

from keras import ops

from keras_rmda import regularizers as regularizers_lib


# --- which blocks the solvers work on --------------------------------------------


def separable_axes(regularizer, groups, rank):
    """The axes one independent block of the subproblem spans.

    The group LASSO separates by group (its `reduce_axes`; `()` for
    singleton groups), L1 by entry (`()`); any other regulariser (nuclear
    norm) couples the whole variable (all axes).
    """
    if isinstance(regularizer, regularizers_lib.GroupLasso):
        return tuple(groups.reduce_axes)
    if isinstance(regularizer, regularizers_lib.L1):
        return ()
    return tuple(range(rank))


def zero_thresholds(regularizer, groups):
    """τ-multiplier of the exact zero test per block, or None if there is none.

    A block is zero at the solution iff ‖da_block‖₂ ≤ τ · λ · strength · w,
    with w = √|g| for the group LASSO, 1 for L1 (per entry).
    """
    scale = regularizer.threshold_scale(groups)
    if isinstance(regularizer, regularizers_lib.GroupLasso):
        return scale * groups.group_weight
    if isinstance(regularizer, regularizers_lib.L1):
        return scale
    return None


def block_norms(x, axes):
    """‖x_block‖₂ (keepdims) for blocks spanning `axes`; |x| for `()`."""
    if not axes:
        return ops.abs(x)
    return ops.sqrt(ops.sum(ops.square(x), axis=axes, keepdims=True))


def block_max(x, axes):
    """max over each block (keepdims); `x` itself for `()`."""
    if not axes:
        return x
    return ops.max(x, axis=axes, keepdims=True)


def zero_blocks(da, axes, threshold):
    """True (broadcastable to `da`) where the block is exactly zero at x*."""
    return block_norms(da, axes) <= threshold


# --- the solvers -----------------------------------------------------------------


def proximal_gradient_with_zero_test(d, da, tau, regularizer, groups, prox, x0, max_steps, tol):
    """`proximal_gradient` for τ·λψ, holding at 0 the blocks provably zero at x*.

    `prox(y, t)` is the variable's proximal map of t·λψ; the zero test is
    `zero_blocks` where the regulariser has one (not the nuclear norm).
    """
    axes = separable_axes(regularizer, groups, len(da.shape))
    zero_threshold = zero_thresholds(regularizer, groups)
    fixed_zero = None
    if zero_threshold is not None:
        fixed_zero = zero_blocks(da, axes, tau * ops.cast(zero_threshold, da.dtype))
    return proximal_gradient(
        d, da, lambda y, step: prox(y, tau * step), x0, axes, max_steps, tol, fixed_zero
    )


def proximal_gradient(d, da, prox_with_step, x0, axes, max_steps, tol, fixed_zero=None):
    r"""Inexact x* by proximal-gradient steps, each block with its own step 1/L.

    Iterates `x ← prox_{(τ/L)ψ}(x − (D·x − da)/L)` with `L = max(D_block)`
    (the block's Lipschitz constant; valid per block because the blocks are
    independent). `prox_with_step(y, step)` must return the prox of
    `step·τψ` at y, `step` broadcastable to y's block norms. Stops after
    `max_steps` iterations or as soon as the relative change
    `‖x_{k+1} − x_k‖₂ ≤ tol · ‖x_{k+1}‖₂` (whole variable). Blocks in
    `fixed_zero` (known zero at x*) are held at exactly 0 throughout.
    """
    step = 1.0 / block_max(d, axes)
    zero = ops.zeros_like(x0)

    def project(x):
        return x if fixed_zero is None else ops.where(fixed_zero, zero, x)

    def body(k, x, converged):
        x_new = project(prox_with_step(x - step * (d * x - da), step))
        change = ops.sqrt(ops.sum(ops.square(x_new - x)))
        size = ops.sqrt(ops.sum(ops.square(x_new)))
        return k + 1, x_new, change <= tol * size

    def keep_going(k, x, converged):
        return ops.logical_and(k < max_steps, ops.logical_not(converged))

    start = (ops.convert_to_tensor(0, "int32"), project(x0),
             ops.convert_to_tensor(False))
    _, x, _ = ops.while_loop(keep_going, body, start, maximum_iterations=max_steps)
    return x


def group_lasso_newton(d, da, threshold, axes, max_steps, tol):
    r"""x* for the group LASSO (blocks over `axes`), by Newton on each group's norm.

    For a non-zero group (‖da_g‖ > κ = τ w_g) the norm r = ‖x_g‖ solves

        G(r) = S(r)^{-1/2} − 1 = 0,   S(r) = Σ_i da_i² / (D_i r + κ)²,

    and then x_g = r · da_g / (D_g r + κ). G is increasing and concave in r
    (S^{-1/2} is a power mean with exponent −2 of the linear functions
    D_i r + κ), so Newton's iterates started left of the root stay left of it
    and increase monotonically; we start at r₀ = (‖da_g‖ − κ)/max(D_g) ≤ r*
    (exact when D is constant on the group) and stop after `max_steps` or
    once every group's |G(r)| ≤ tol (after taking that last step). G is nearly linear, so few steps are
    needed. Zero groups are exactly 0.
    """
    norms = block_norms(da, axes)
    zero = norms <= threshold
    one = ops.ones_like(norms)
    r0 = ops.where(zero, one, (norms - threshold) / block_max(d, axes))
    r0 = ops.maximum(r0, 1e-30)

    def secular(r):
        denominators = d * r + threshold
        s = ops.sum(ops.square(da / denominators), axis=axes, keepdims=True)
        s = ops.where(zero, one, s)
        slope_part = ops.sum(ops.square(da) * d / denominators**3, axis=axes, keepdims=True)
        g = ops.power(s, -0.5) - 1.0
        derivative = ops.power(s, -1.5) * slope_part
        return g, ops.where(zero, one, derivative)

    def body(k, r, converged):
        g, derivative = secular(r)
        converged = ops.max(ops.where(zero, ops.zeros_like(g), ops.abs(g))) <= tol
        return k + 1, ops.where(zero, one, r - g / derivative), converged

    def keep_going(k, r, converged):
        return ops.logical_and(k < max_steps, ops.logical_not(converged))

    start = (ops.convert_to_tensor(0, "int32"), r0, ops.convert_to_tensor(False))
    _, r, _ = ops.while_loop(keep_going, body, start, maximum_iterations=max_steps)
    x = r * da / (d * r + threshold)
    return ops.where(zero, ops.zeros_like(x), x)


def l1_diagonal(d, da, threshold):
    """x* for the (entrywise) L1 norm: sign(da)·max(|da| − κ, 0)/D, exact."""
    return ops.sign(da) * ops.maximum(ops.abs(da) - threshold, 0.0) / d
