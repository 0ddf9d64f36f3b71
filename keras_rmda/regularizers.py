"""Proximal regularisers: λ·ψ with a cheap proximal operator.

These are not `keras.regularizers.Regularizer`s: they add nothing to the loss.
An optimizer of keras_rmda calls `prox` on the variables its grouping marks as
regularised, so the zeros it makes are exact. Each regulariser holds λ
(`strength`) and can report the penalty value λψ(W) of a variable.

    optimizer = keras_rmda.RMDA(regularizer=keras_rmda.GroupLasso(1e-3))
"""

import functools

import keras
from keras import ops

from keras_rmda import _checks
from keras_rmda import prox

_PACKAGE = "keras_rmda"


class ProximalRegularizer:
    """Base class: λ·ψ(W) and its proximal map, per variable grouping.

    Subclasses implement `prox(z, threshold, groups)` =
    `argmin_x ½‖x − z‖² + threshold · ψ_groups(x)` and `penalty_value(w,
    groups)` = ψ_groups(w); `threshold` already includes λ and the
    grouping's strength (see `threshold_scale`).
    """

    # True when the prox couples a group's weights, so that groups spanning
    # several variables must be updated together (see optimizers/joint.py).
    couples_groups = False

    def __init__(self, strength):
        # A non-finite λ would make the prox return nan, and training would
        # carry on with nan weights.
        self.strength = _checks.number("strength", strength, minimum=0.0)

    def threshold_scale(self, groups):
        """λ times the variable's strength multiplier."""
        return self.strength * groups.strength

    def check(self, shape, groups, name):
        """Raise ValueError if this regulariser cannot act on the variable."""

    def prox(self, z, threshold, groups):
        raise NotImplementedError

    def penalty_value(self, w, groups):
        raise NotImplementedError

    def penalty(self, w, groups):
        """λψ(W) for one variable (0 for an unregularised one)."""
        if groups is None:
            return ops.convert_to_tensor(0.0)
        return self.threshold_scale(groups) * self.penalty_value(w, groups)

    def get_config(self):
        return {"strength": self.strength}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"{type(self).__name__}({self.strength!r})"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GroupLasso(ProximalRegularizer):
    r"""Group LASSO: ψ(W) = Σ_g √|g| · ‖W_g‖₂ over the declared groups.

    Zeroes whole groups (channels, units, ...). With `Elementwise` groups it
    is the L1 norm.

    `sums_in_runs` picks how the group norms are summed for the device the
    step is compiled for (`prox.group_sums_of_squares`): None (default) sums
    in runs when Keras sees no accelerator, for XLA's CPU backend. Set it to
    False on an instance to trace for a GPU this process cannot see (as
    `benchmarks/accelerator_step_time.py --hlo-target` does).
    """

    couples_groups = True
    sums_in_runs = None

    def prox(self, z, threshold, groups):
        in_runs = self.sums_in_runs
        if in_runs is None:
            in_runs = _cpu_only()
        return prox.prox_group_lasso(
            z, threshold * groups.group_weight, groups.reduce_axes, in_runs
        )

    def penalty_value(self, w, groups):
        return prox.group_lasso_penalty(w, groups.reduce_axes, groups.group_weight)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class L1(ProximalRegularizer):
    r"""L1 (unstructured sparsity): ψ(W) = Σ |W_ij| on every regularised variable.

    The declared groups only decide which variables are regularised.
    """

    def prox(self, z, threshold, groups):
        return prox.prox_l1(z, threshold)

    def penalty_value(self, w, groups):
        return prox.l1_penalty(w)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class NuclearNorm(ProximalRegularizer):
    r"""Nuclear norm (low rank): ψ(W) = Σ_i σ_i(W) of each regularised kernel.

    A convolution kernel `(k…, in, out)` is read as the matrix
    `(prod(k…)·in, out)`. Needs an SVD every step: under
    `jit_compile=True` on CPU XLA's SVD is slow for large kernels (see the
    README), the non-XLA SVD is fast.
    """

    def check(self, shape, groups, name):
        if len(shape) < 2:
            raise ValueError(
                f"NuclearNorm needs a variable of rank >= 2; variable '{name}' "
                f"has shape {tuple(shape)}. Mark it Unregularized()."
            )

    def prox(self, z, threshold, groups):
        return prox.prox_nuclear_norm(z, threshold)

    def penalty_value(self, w, groups):
        return prox.nuclear_norm_penalty(w)


@functools.cache
def _cpu_only():
    """True when Keras lists no accelerator (GPU, TPU) in this process."""
    return all(device.lower().startswith("cpu") for device in keras.distribution.list_devices())


def get(identifier):
    """A regulariser from an instance, a config dict, or None."""
    if identifier is None or isinstance(identifier, ProximalRegularizer):
        return identifier
    if isinstance(identifier, dict):
        regularizer = keras.saving.deserialize_keras_object(identifier)
        if isinstance(regularizer, ProximalRegularizer):
            return regularizer
    raise ValueError(
        "`regularizer` must be a keras_rmda regulariser (GroupLasso, L1, "
        f"NuclearNorm) or None. Received: regularizer={identifier!r}"
    )
