"""Declarations of how a variable's weights are grouped.

A grouping is a Keras constraint so that it travels with the layer through
`get_config` and `.keras` files. The optimizers read it (in `build`) and
their proximal step makes whole groups exactly zero.

    keras.layers.Conv2D(64, 3, kernel_constraint=InputChannels())
    keras.layers.Dense(10, kernel_constraint=InputUnits(strength=2.0))

`strength` multiplies the regulariser's λ for that variable (per-layer λ).
A group's weight in the group LASSO is √|g|, |g| its number of weights.
A variable has one constraint, so a grouping carries any other constraint
it needs, `InputUnits(constraint=keras.constraints.NonNeg())`, and applies
it as that constraint alone would be; without one it leaves weights as
they are.

With `groups="auto"` (the optimizers' default) a variable without a grouping
is classified from its path, and only when that is certain: the kernel of a
layer with Keras's default name for `Dense` (`dense`, `dense_3`, ...) gets
`InputUnits`, the kernel of a default-named `Conv1D/2D/3D` gets
`InputChannels`, everything else is unregularised (the optimizers warn,
naming every kernel so left out). `declare_auto(model)` attaches the same
choices by layer *type* (so renamed layers, depthwise and transposed
convolutions are covered too), for users who want to see and edit them.

This module imports nothing of keras_rmda but its `_checks`.
"""

import dataclasses
import functools
import json
import math
import re

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
    """

    reduce_axes: tuple
    kept_axis: int | None
    num_groups: int
    group_size: int
    strength: float

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


# --- the automatic choice ---------------------------------------------------

# Keras names a layer after its class (`Conv2D` -> `conv2d`, `conv2d_3`, ...);
# a kernel whose layer still has such a name comes from that class for sure.
_AUTO_BY_DEFAULT_LAYER_NAME = {
    "dense": (2, InputUnits),
    "conv1d": (3, InputChannels),
    "conv2d": (4, InputChannels),
    "conv3d": (5, InputChannels),
}


def auto_grouping(variable):
    """The grouping `groups="auto"` gives a variable without a declaration.

    Returns `InputChannels()` / `InputUnits()` for kernels of default-named
    convolution / dense layers and `Unregularized()` for everything else.
    """
    path = str(getattr(variable, "path", None) or variable.name)
    parts = path.split("/")
    if len(parts) >= 2 and parts[-1] == "kernel":
        layer_class_name = re.sub(r"_\d+$", "", parts[-2])
        rank, grouping = _AUTO_BY_DEFAULT_LAYER_NAME.get(layer_class_name, (None, None))
        if grouping is not None and len(variable.shape) == rank:
            return grouping()
    return Unregularized()


def looks_like_kernel(variable):
    """True for a variable a user probably meant to regularise (a kernel)."""
    name = str(getattr(variable, "path", None) or variable.name).split("/")[-1]
    return len(variable.shape) >= 2 and "kernel" in name


def left_out_by_auto(variable):
    """True for a kernel `groups="auto"` leaves unregularised without being told to.

    A non-grouping constraint (NonNeg, MaxNorm, ...) is no such declaration:
    only a grouping, `Unregularized()` included, is.
    """
    if isinstance(getattr(variable, "constraint", None), Grouping):
        return False
    return looks_like_kernel(variable) and not auto_grouping(variable).regularized


def grouping_of(variable, groups="auto"):
    """The `Grouping` that applies to `variable` under the optimizer's `groups`.

    A `Grouping` constraint on the variable always wins; otherwise
    `groups="auto"` uses `auto_grouping` and `groups=None` leaves the
    variable unregularised.
    """
    validate_groups_argument(groups)
    declared = getattr(variable, "constraint", None)
    if isinstance(declared, Grouping):
        return declared
    if groups == "auto":
        return auto_grouping(variable)
    return Unregularized()


def validate_groups_argument(groups):
    if groups not in ("auto", None):
        raise ValueError(
            '`groups` must be "auto" or None (declare other groupings as '
            f"constraints from keras_rmda.groups). Received: groups={groups!r}"
        )


# --- declaring by layer type ------------------------------------------------


def _declaration_for(layer):
    """(kernel attribute, constraint attribute, grouping(constraint=...)) or None."""
    L = keras.layers
    # Transposed kernels are (k..., out, in): the input channel is the last axis.
    transposed = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
    if isinstance(layer, transposed):
        return "kernel", "kernel_constraint", functools.partial(AlongAxis, -1)
    depthwise = (L.DepthwiseConv1D, L.DepthwiseConv2D)
    if isinstance(layer, depthwise):
        return "kernel", "depthwise_constraint", InputChannels
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        return "depthwise_kernel", "depthwise_constraint", InputChannels
    if isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D)):
        return "kernel", "kernel_constraint", InputChannels
    if isinstance(layer, L.Dense):
        return "kernel", "kernel_constraint", InputUnits
    return None


def _all_layers(model):
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _all_layers(layer)


def declare_auto(model, overwrite=False):
    """Attach the paper's groupings to `model`'s layers, by layer type.

    Convolutions get `InputChannels` (transposed ones group their last axis,
    which holds the input channels), depthwise kernels `InputChannels`,
    dense layers `InputUnits`. Embeddings, einsum and other kernels are left
    alone. A grouping already declared is kept unless `overwrite=True`; any
    other constraint (NonNeg, MaxNorm, ...) is always kept, wrapped in the
    grouping (`InputUnits(constraint=NonNeg())`), and `overwrite=True` keeps
    the inner constraint of a grouping it replaces. The model must be built.
    Returns `{variable path: grouping}` of what was attached.
    """
    if not model.built:
        raise ValueError(
            f"declare_auto needs a built model; build '{model.name}' first "
            "(e.g. give it a keras.Input)."
        )
    attached = {}
    for layer in _all_layers(model):
        declaration = _declaration_for(layer)
        if declaration is None:
            continue
        kernel_attr, constraint_attr, grouping_class = declaration
        kernel = getattr(layer, kernel_attr, None)
        if kernel is None:
            continue
        existing = getattr(kernel, "constraint", None)
        if isinstance(existing, Grouping):
            if not overwrite:
                continue
            existing = existing.constraint  # the user's own constraint stays
        grouping = grouping_class(constraint=existing)
        grouping.resolve(kernel.shape, kernel.path)  # fails loudly if unfit
        kernel.constraint = grouping
        setattr(layer, constraint_attr, grouping)  # so get_config carries it
        attached[kernel.path] = grouping
    return attached
