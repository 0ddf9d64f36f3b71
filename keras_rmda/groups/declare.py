"""Which grouping applies to a variable, and attaching groupings to a model.

`grouping_of` is the optimizers' choice for one variable (a declared
grouping, else `groups="auto"`'s classification by path); `declare_auto`
and `declare_transformer` attach groupings to a built model's variables.
"""

import functools
import re

import keras

from keras_rmda.groups.groupings import AlongAxis
from keras_rmda.groups.groupings import AttentionHeads
from keras_rmda.groups.groupings import Grouping
from keras_rmda.groups.groupings import InputChannels
from keras_rmda.groups.groupings import InputUnits
from keras_rmda.groups.groupings import SharedGroups
from keras_rmda.groups.groupings import Unregularized


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


def left_out_by_auto_warning(optimizer_name, variables):
    """The warning about the kernels `groups="auto"` leaves unregularised
    (see `left_out_by_auto`), or None when there are none."""
    # Every kernel left out, also those with a non-grouping constraint:
    # NonNeg on a renamed layer is no sign the user meant no regulariser.
    unclassified = [
        v.path if getattr(v, "constraint", None) is None
        else f"{v.path} (constraint {type(v.constraint).__name__})"
        for v in variables
        if left_out_by_auto(v)
    ]
    if not unclassified:
        return None
    return (
        f"{optimizer_name}: groups='auto' left these kernels "
        f"unregularised because their layer type is not certain from "
        f"the variable alone: {unclassified}. Declare a grouping "
        "(kernel_constraint=keras_rmda.groups.InputChannels(), ...; "
        "another constraint goes inside it: InputUnits(constraint="
        "keras.constraints.NonNeg())), call keras_rmda.groups."
        "declare_auto(model) or declare_transformer(model) before compile "
        "(they keep such constraints), or mark them Unregularized() to "
        "silence this warning."
    )


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


def _attached(variable, grouping, overwrite):
    """Put `grouping` on `variable` (keeping its other constraint); returns
    the grouping now on it, or None if a grouping was already there."""
    existing = getattr(variable, "constraint", None)
    if isinstance(existing, Grouping):
        if not overwrite:
            return None
        existing = existing.constraint  # the user's own constraint stays
    grouping = type(grouping).from_config({**grouping.get_config(), "constraint": existing})
    grouping.resolve(variable.shape, variable.path)  # fails loudly if unfit
    variable.constraint = grouping
    return grouping


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
        grouping = _attached(kernel, grouping_class(), overwrite)
        if grouping is not None:
            setattr(layer, constraint_attr, grouping)  # so get_config carries it
            attached[kernel.path] = grouping
    return attached


# --- transformers: attention heads and MLP neurons ----------------------------


def declare_transformer(model, overwrite=False):
    """Attach head groups to attention layers and neuron groups to MLPs.

    - Every `keras.layers.MultiHeadAttention` (subclasses included, e.g.
      KerasHub's attention layers) gets `AttentionHeads()` on its kernels
      and biases: one group per head.
    - Every MLP it can identify for sure gets `SharedGroups`: neuron j is
      the up-projection's kernel column j, its bias entry j and the
      down-projection's kernel row j. An MLP is a `Dense` layer whose output
      feeds only another `Dense`, possibly through dropout and elementwise
      activations, in a Functional or Sequential model's graph, or the
      feed-forward pair of a KerasHub `TransformerEncoder`.

    Other variables are left alone (pass `groups=None` to the optimizer to
    regularise only what is declared). A grouping already declared is kept
    unless `overwrite=True`; a variable's other constraint is kept inside
    its grouping. The model must be built. The groupings live on the
    variables; the optimizer saves them in its config, so they come back
    with `keras.saving.load_model`.

    Returns:
        `{variable path: grouping}` of what was attached.
    """
    if not model.built:
        raise ValueError(
            f"declare_transformer needs a built model; build '{model.name}' "
            "first (e.g. give it a keras.Input)."
        )
    attached = {}

    def attach(variable, grouping, layer=None, attribute=None):
        if variable is not None:
            grouping = _attached(variable, grouping, overwrite)
            if grouping is not None:
                attached[variable.path] = grouping
                if layer is not None:  # a Dense: so that its config carries it
                    setattr(layer, attribute, grouping)

    for layer in _layers_within(model):
        if isinstance(layer, keras.layers.MultiHeadAttention):
            for variable in layer.weights:
                if variable.path.split("/")[-1] in ("kernel", "bias"):
                    if AttentionHeads().resolve(variable.shape, variable.path) is not None:
                        attach(variable, AttentionHeads())
    for up, down in _mlp_pairs(model):
        key = up.path
        attach(up.kernel, SharedGroups(key, axis=-1), up, "kernel_constraint")
        attach(up.bias, SharedGroups(key, axis=0), up, "bias_constraint")
        attach(down.kernel, SharedGroups(key, axis=0), down, "kernel_constraint")
    return attached


def _layers_within(layer, seen=None):
    """`layer` and every layer inside it: a model's layers and the layers a
    layer holds as attributes (KerasHub blocks keep theirs that way)."""
    seen = set() if seen is None else seen
    if id(layer) in seen:
        return
    seen.add(id(layer))
    yield layer
    children = list(getattr(layer, "layers", None) or [])
    for value in vars(layer).values():
        children.extend(v for v in keras.tree.flatten(value) if isinstance(v, keras.layers.Layer))
    for child in children:
        yield from _layers_within(child, seen)


def _is_plain_dense(layer):
    return type(layer) is keras.layers.Dense and len(layer.kernel.shape) == 2


def _mlp_pairs(model):
    """(up, down) Dense pairs that are MLPs for sure (see `declare_transformer`)."""
    pairs = []
    for layer in _layers_within(model):
        if _is_keras_hub_transformer_encoder(layer):
            # KerasHub keeps the feed-forward pair in these attributes; its
            # `call` applies them in sequence with an elementwise activation.
            pairs.append((layer._feedforward_intermediate_dense,
                          layer._feedforward_output_dense))
        elif isinstance(layer, keras.Model) and getattr(layer, "inputs", None):
            pairs.extend(_graph_mlp_pairs(layer))
    return [(up, down) for up, down in pairs if _is_plain_dense(up) and _is_plain_dense(down)]


def _is_keras_hub_transformer_encoder(layer):
    kind = type(layer)
    return kind.__name__ == "TransformerEncoder" and kind.__module__.startswith("keras_hub.")


def _graph_mlp_pairs(model):
    from keras_rmda import _channel_graph
    from keras_rmda import _graph_walk

    calls = _graph_walk.model_calls(model)
    consumers = {}
    for call in calls:
        for tensor in call.inputs:
            consumers.setdefault(id(tensor), []).append(call)
    outputs = {id(t) for t in keras.tree.flatten(model.outputs)}

    def only_consumer(tensor):
        found = consumers.get(id(tensor), [])
        return found[0] if len(found) == 1 and id(tensor) not in outputs else None

    pairs = []
    for call in calls:
        if not (call.is_layer and _is_plain_dense(call.operation)):
            continue
        if _channel_graph.kind_of(call) != "producer" or len(call.outputs) != 1:
            continue
        if not _channel_graph._elementwise_activation(call.operation):
            continue
        following = only_consumer(call.outputs[0])
        while following is not None and _channel_graph.kind_of(following) == "pass" \
                and len(following.inputs) == 1 and len(following.outputs) == 1:
            following = only_consumer(following.outputs[0])
        if following is not None and following.is_layer \
                and _is_plain_dense(following.operation) and len(following.inputs) == 1:
            pairs.append((call.operation, following.operation))
    return pairs
