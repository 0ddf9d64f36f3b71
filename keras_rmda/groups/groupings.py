"""The groupings: Keras constraints that declare how a variable's weights
are grouped (see `keras_rmda.groups` for the overview).

This module imports nothing of keras_rmda but its `_checks`.
"""

import dataclasses
import json
import math

import keras

from keras_rmda import _checks

_PACKAGE = "keras_rmda"


@dataclasses.dataclass(frozen=True)
class VariableGroups:
    """A grouping resolved against one variable's shape.

    Attributes:
        reduce_axes: axes a group's norm is taken over; `()` means every
            weight is its own group.
        kept_axis: the axis indexing the groups (None for elementwise).
        num_groups: number of groups.
        group_size: |g|, weights per group (all groups of a variable have
            the same size).
        strength: multiplier of the regulariser's λ for this variable.
        shared: None, or the key of the groups this variable shares with
            the other variables declaring the same key: group i is then
            index i along `kept_axis` of all of them (see `SharedGroups`).
    """

    reduce_axes: tuple
    kept_axis: int | None
    num_groups: int
    group_size: int
    strength: float
    shared: str | None = None

    @property
    def group_weight(self):
        """w_g = √|g|, the group-LASSO weight of each group."""
        return math.sqrt(self.group_size)


class Grouping(keras.constraints.Constraint):
    """Base class: declares a grouping and applies an optional inner constraint.

    Args:
        strength: multiplier (finite, >= 0) of the regulariser's λ for this
            variable.
        constraint: None or a Keras constraint (an instance, its name or its
            config) that the variable also needs, e.g.
            `keras.constraints.NonNeg()`. Calling the grouping applies it;
            without one the grouping returns the weights unchanged.
    """

    regularized = True

    def __init__(self, strength=1.0, constraint=None):
        self.strength = _checks.number("strength", strength, minimum=0.0)
        self.constraint = _inner_constraint(constraint)

    def __call__(self, w):
        return w if self.constraint is None else self.constraint(w)

    def resolve(self, shape, name="variable"):
        """The `VariableGroups` of a variable of `shape`; ValueError if unfit."""
        raise NotImplementedError

    def get_config(self):
        return {"strength": self.strength, "constraint": _serialized(self.constraint)}

    def __repr__(self):
        config = {**self.get_config(), "constraint": self.constraint}
        args = [f"{k}={_describe(v) if k == 'constraint' else repr(v)}"
                for k, v in config.items() if v is not None]
        return f"{type(self).__name__}({', '.join(args)})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        # The config holds the inner constraint's (unhashable) config dict.
        config = json.dumps(self.get_config(), sort_keys=True, default=repr)
        return hash((type(self).__name__, config))


def _inner_constraint(constraint):
    """The Keras constraint a grouping wraps (None for none); ValueError if unfit."""
    if constraint is None:
        return None
    message = (
        "`constraint` must be None or a Keras constraint other than a grouping "
        "(an instance, its name or its config); a variable has one grouping. "
        f"Received: constraint={constraint!r}"
    )
    try:
        constraint = keras.constraints.get(constraint)
    except (ValueError, TypeError):
        raise ValueError(message) from None
    if isinstance(constraint, Grouping) or not callable(constraint):
        raise ValueError(message)
    return constraint


def _serialized(constraint):
    return None if constraint is None else keras.saving.serialize_keras_object(constraint)


def _describe(constraint):
    """`NonNeg()`, `MaxNorm(max_value=2, axis=0)`: Keras constraints have no repr."""
    get_config = getattr(constraint, "get_config", None)
    config = get_config() if callable(get_config) else {}
    args = ", ".join(f"{k}={v!r}" for k, v in config.items())
    return f"{getattr(constraint, '__name__', type(constraint).__name__)}({args})"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AlongAxis(Grouping):
    """One group per index along `axis`: the norm runs over all other axes.

    Args:
        axis: the axis indexing the groups (negative counts from the end).
        strength: multiplier of the regulariser's λ for this variable.
        constraint: an inner Keras constraint (see `Grouping`).
    """

    _min_rank, _max_rank = 1, None

    def __init__(self, axis, strength=1.0, constraint=None):
        converted = _checks.as_number(axis)
        if not isinstance(converted, int):
            raise ValueError(f"`axis` must be an int. Received: axis={_checks.shown(axis)}")
        super().__init__(strength, constraint)
        self.axis = converted

    def resolve(self, shape, name="variable"):
        shape = tuple(int(d) for d in shape)
        rank = len(shape)
        fits_rank = self._min_rank <= rank <= (self._max_rank or rank)
        if not fits_rank or not -rank <= self.axis < rank:
            raise ValueError(
                f"{self!r} does not fit variable '{name}' of shape {shape}: "
                f"{self._expects()}."
            )
        kept = self.axis % rank
        reduce_axes = tuple(a for a in range(rank) if a != kept)
        group_size = math.prod(shape[a] for a in reduce_axes)
        return VariableGroups(reduce_axes, kept, shape[kept], group_size, self.strength)

    def _expects(self):
        return f"it needs a variable with an axis {self.axis}"

    def get_config(self):
        return {"axis": self.axis, **super().get_config()}


class _KernelAxis(AlongAxis):
    """An `AlongAxis` with a fixed axis and an expected kernel rank."""

    _axis = None
    _kind = ""

    def __init__(self, strength=1.0, constraint=None):
        super().__init__(self._axis, strength, constraint)

    def _expects(self):
        return f"it groups {self._kind}"

    def get_config(self):
        config = super().get_config()
        del config["axis"]  # fixed by the class
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class InputChannels(_KernelAxis):
    """Channel-wise groups of a convolution kernel `(k…, in, out)`.

    One group per input channel (axis −2), the paper's default for
    convolutions; a zero group means that input channel is never read.
    """

    _axis, _min_rank, _max_rank = -2, 3, None
    _kind = "convolution kernels (k..., in, out) of rank >= 3"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class OutputChannels(_KernelAxis):
    """Filter-wise groups of a convolution kernel: one per output filter."""

    _axis, _min_rank, _max_rank = -1, 3, None
    _kind = "convolution kernels (k..., in, out) of rank >= 3"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class InputUnits(_KernelAxis):
    """Input-wise groups of a dense kernel `(in, out)`: one per input unit.

    The paper's default for dense layers: a group is all outgoing weights of
    one input neuron.
    """

    _axis, _min_rank, _max_rank = 0, 2, 2
    _kind = "dense kernels (in, out) of rank 2"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class OutputUnits(_KernelAxis):
    """Groups of a dense kernel `(in, out)`: one per output unit."""

    _axis, _min_rank, _max_rank = 1, 2, 2
    _kind = "dense kernels (in, out) of rank 2"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Elementwise(Grouping):
    """Every weight is its own group (with `GroupLasso` this is L1)."""

    def resolve(self, shape, name="variable"):
        num_weights = math.prod(int(d) for d in shape)
        return VariableGroups((), None, num_weights, 1, self.strength)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Unregularized(Grouping):
    """Excludes the variable from the regulariser (it is still trained).

    Declaring it also silences `groups="auto"`'s warning about the kernel;
    `constraint` is an inner Keras constraint as in `Grouping`.
    """

    regularized = False

    def __init__(self, constraint=None):
        super().__init__(0.0, constraint)

    def resolve(self, shape, name="variable"):
        return None

    def get_config(self):
        config = super().get_config()
        del config["strength"]  # nothing to scale
        return config


# --- groups that span several variables -------------------------------------


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SharedGroups(AlongAxis):
    """Groups that span several variables: index i along `axis` of every
    variable declaring the same `key` is one group.

    The group's norm runs over all its slices together, its weight is
    √|g| with |g| the weights of all slices, and the proximal step zeroes
    them at once. An MLP neuron j is the up-projection's kernel column j,
    its bias entry j and the down-projection's kernel row j:

        key = "block_0/mlp"
        up = Dense(512, "gelu", kernel_constraint=SharedGroups(key, axis=1),
                   bias_constraint=SharedGroups(key, axis=0))
        down = Dense(128, kernel_constraint=SharedGroups(key, axis=0))

    All variables of a key must have the same number of groups along their
    axes and the same `strength`; the optimizer checks this in `build`.

    Args:
        key: a non-empty string naming the groups, unique in the model.
        axis: the axis of this variable indexing the groups.
        strength: multiplier of the regulariser's λ for these groups.
        constraint: an inner Keras constraint (see `Grouping`).
    """

    def __init__(self, key, axis, strength=1.0, constraint=None):
        if not isinstance(key, str) or not key:
            raise ValueError(f"`key` must be a non-empty string. Received: key={key!r}")
        super().__init__(axis, strength, constraint)
        self.key = key

    def resolve(self, shape, name="variable"):
        return dataclasses.replace(super().resolve(shape, name), shared=self.key)

    def get_config(self):
        return {"key": self.key, **super().get_config()}


# `MultiHeadAttention`'s projections: sublayer name -> axis of the heads in
# its kernel and bias (None: the variable holds no per-head weights).
_HEAD_AXES = {
    "query": {"kernel": -2, "bias": -2},  # kernel (d, heads, key_dim), bias (heads, key_dim)
    "key": {"kernel": -2, "bias": -2},
    "value": {"kernel": -2, "bias": -2},
    "gate": {"kernel": -2, "bias": -2},
    "attention_output": {"kernel": 0, "bias": None},  # kernel (heads, value_dim, out...)
}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AttentionHeads(Grouping):
    """One group per attention head of a `keras.layers.MultiHeadAttention`.

    Pass it as the layer's `kernel_constraint` and `bias_constraint`: head h
    is then the slices `[..., h, :]` of the query, key, value (and gate)
    kernels and biases and the rows `[h]` of the output projection's
    kernel, all in one group (its key is the layer's path). A zero head
    contributes nothing to the output, and `keras_rmda.slim` rebuilds the
    layer with fewer heads. The output projection's bias is not per head
    and stays unregularised.

        keras.layers.MultiHeadAttention(
            8, 32, kernel_constraint=AttentionHeads(), bias_constraint=AttentionHeads())

    Args:
        strength: multiplier of the regulariser's λ for the heads.
        constraint: an inner Keras constraint (see `Grouping`).
    """

    def resolve(self, shape, name="variable"):
        parts = str(name).split("/")
        axes = _HEAD_AXES.get(parts[-2], {}) if len(parts) >= 3 else {}
        if parts[-1] not in axes:
            raise ValueError(
                f"{self!r} groups the kernels and biases of a MultiHeadAttention "
                f"layer ('<layer>/query/kernel', ...); variable '{name}' of shape "
                f"{tuple(shape)} is not one of them."
            )
        axis = axes[parts[-1]]
        if axis is None:
            return None
        layer_path = "/".join(parts[:-2])
        return SharedGroups(layer_path, axis, self.strength).resolve(shape, name)
