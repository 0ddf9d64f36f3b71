"""Declarations of how a variable's weights are grouped.

A grouping is a Keras constraint so that it travels with the layer through
`get_config` and `.keras` files, but it never changes the weights: calling it
returns them unchanged. The optimizers read it (in `build`) and their
proximal step makes whole groups exactly zero.

    keras.layers.Conv2D(64, 3, kernel_constraint=InputChannels())
    keras.layers.Dense(10, kernel_constraint=InputUnits(strength=2.0))

`strength` multiplies the regulariser's λ for that variable (per-layer λ).
A group's weight in the group LASSO is √|g|, |g| its number of weights.

With `groups="auto"` (the optimizers' default) a variable without a grouping
is classified from its path, and only when that is certain: the kernel of a
layer with Keras's default name for `Dense` (`dense`, `dense_3`, ...) gets
`InputUnits`, the kernel of a default-named `Conv1D/2D/3D` gets
`InputChannels`, everything else is unregularised. `declare_auto(model)`
attaches the same choices by layer *type* (so renamed layers, depthwise and
transposed convolutions are covered too), for users who want to see and edit
them.

This module imports nothing of keras_rmda.
"""

import dataclasses
import math
import re

import keras

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
    """Base class: declares a grouping and leaves the weights unchanged."""

    regularized = True

    def __init__(self, strength=1.0):
        if not isinstance(strength, (int, float)) or not strength >= 0:
            raise ValueError(
                f"`strength` must be a number >= 0. Received: strength={strength}"
            )
        self.strength = float(strength)

    def __call__(self, w):
        return w

    def resolve(self, shape, name="variable"):
        """The `VariableGroups` of a variable of `shape`; ValueError if unfit."""
        raise NotImplementedError

    def get_config(self):
        return {"strength": self.strength}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AlongAxis(Grouping):
    """One group per index along `axis`: the norm runs over all other axes.

    Args:
        axis: the axis indexing the groups (negative counts from the end).
        strength: multiplier of the regulariser's λ for this variable.
    """

    _min_rank, _max_rank = 1, None

    def __init__(self, axis, strength=1.0):
        super().__init__(strength)
        if not isinstance(axis, int):
            raise ValueError(f"`axis` must be an int. Received: axis={axis!r}")
        self.axis = axis

    def resolve(self, shape, name="variable"):
        shape = tuple(int(d) for d in shape)
        rank = len(shape)
        fits_rank = rank >= self._min_rank and (
            self._max_rank is None or rank <= self._max_rank
        )
        if not fits_rank or not -rank <= self.axis < rank:
            raise ValueError(
                f"{self!r} does not fit variable '{name}' of shape {shape}: "
                f"{self._expects()}."
            )
        kept = self.axis % rank
        reduce_axes = tuple(a for a in range(rank) if a != kept)
        return VariableGroups(
            reduce_axes=reduce_axes,
            kept_axis=kept,
            num_groups=shape[kept],
            group_size=math.prod(shape[a] for a in reduce_axes),
            strength=self.strength,
        )

    def _expects(self):
        return f"it needs a variable with an axis {self.axis}"

    def get_config(self):
        return {"axis": self.axis, **super().get_config()}


class _KernelAxis(AlongAxis):
    """An `AlongAxis` with a fixed axis and an expected kernel rank."""

    _axis = None
    _kind = ""

    def __init__(self, strength=1.0):
        super().__init__(self._axis, strength)

    def _expects(self):
        return f"it groups {self._kind}"

    def get_config(self):
        return {"strength": self.strength}


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
        shape = tuple(int(d) for d in shape)
        return VariableGroups(
            reduce_axes=(),
            kept_axis=None,
            num_groups=math.prod(shape),
            group_size=1,
            strength=self.strength,
        )


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Unregularized(Grouping):
    """Excludes the variable from the regulariser (it is still trained)."""

    regularized = False

    def __init__(self):
        super().__init__(0.0)

    def resolve(self, shape, name="variable"):
        return None

    def get_config(self):
        return {}


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
    """True for an unclassified variable a user probably meant to regularise."""
    name = str(getattr(variable, "path", None) or variable.name).split("/")[-1]
    return len(variable.shape) >= 2 and "kernel" in name


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
    """(attribute of the kernel, constraint attribute, grouping) or None."""
    L = keras.layers
    # Transposed kernels are (k..., out, in): the input channel is the last axis.
    transposed = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
    if isinstance(layer, transposed):
        return "kernel", "kernel_constraint", AlongAxis(-1)
    depthwise = (L.DepthwiseConv1D, L.DepthwiseConv2D)
    if isinstance(layer, depthwise):
        return "kernel", "depthwise_constraint", InputChannels()
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        return "depthwise_kernel", "depthwise_constraint", InputChannels()
    if isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D)):
        return "kernel", "kernel_constraint", InputChannels()
    if isinstance(layer, L.Dense):
        return "kernel", "kernel_constraint", InputUnits()
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
    alone. A layer's existing constraint is kept unless `overwrite=True`.
    The model must be built. Returns `{variable path: grouping}` of what
    was attached.
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
        kernel_attr, constraint_attr, grouping = declaration
        kernel = getattr(layer, kernel_attr, None)
        if kernel is None:
            continue
        if getattr(kernel, "constraint", None) is not None and not overwrite:
            continue
        grouping.resolve(kernel.shape, kernel.path)  # fails loudly if unfit
        kernel.constraint = grouping
        setattr(layer, constraint_attr, grouping)  # so get_config carries it
        attached[kernel.path] = grouping
    return attached
