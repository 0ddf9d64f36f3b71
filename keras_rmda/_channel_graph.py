"""Which channels of a model can be removed: liveness through the layer graph.

Every channel of every tensor in the model's top-level graph is a *slot*.
Layers that pass channels through unchanged (normalisation, elementwise
activations, dropout, pooling, ...) give their output the same slots as
their input; so do channelwise convolutions (depthwise, or grouped with one
channel per group), output channel k being made from input channel k alone;
Flatten repeats its input's slots once per spatial position (channels_last:
position p holds channel p mod C); Add, the other elementwise merges and
elementwise `keras.ops` on symbolic tensors (`x + y`) make the channels at
the same index of all their inputs one slot (union-find); Concatenate lays
its inputs' slots side by side.

A slot is *live* when any layer reads it: a convolution or dense layer
(Dense on any rank: on a 4-D tensor it is a 1x1 convolution) reads input
channel k when its kernel slice `kernel[..., k, :]` has a non-zero weight,
any other layer (unknown ones included) reads every channel, and model
outputs are read. Slots of model inputs and of outputs of layers that cannot
be sliced are pinned live. Everything else is dead: no consumer depends on
it, so it can be cut from its producers, from the normalisation layers on
the way and from the (zero) kernel rows of its consumers without changing
the model's outputs.

LayerNormalization is one of the layers that read every channel: its mean
and variance run over all of them, so dropping even an exactly-zero channel
changes the statistics (the count) and every output. It is a barrier, and
what lies between two barriers still slims (in a ConvNeXt or transformer
block, the hidden units of the pointwise MLP whose rows in the second Dense
are zero). ConvNeXt's LayerScale, a class private to keras.applications,
is an unknown layer; it scales the residual stream, whose channels the
LayerNormalizations read anyway.

MultiHeadAttention reads every channel and its output is live, as an
unknown layer's; slim removes whole heads inside it, and an EinsumDense
used as a Dense is a dense layer here (`keras_rmda._slim_attention`).

Only the top-level graph is analysed; a nested model is an unknown layer.
Any failure while analysing a call is a ValueError that names it.
"""

import math

import keras
import numpy as np

from keras_rmda import _graph_walk
from keras_rmda import _slim_attention

L = keras.layers

_CONVOLUTIONS = (L.Conv1D, L.Conv2D, L.Conv3D)
_DEPTHWISE = (L.DepthwiseConv1D, L.DepthwiseConv2D)
_PASS_THROUGH = (
    L.ReLU, L.LeakyReLU, L.ELU, L.Identity,
    L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D,
    L.GaussianNoise, L.GaussianDropout, L.AlphaDropout, L.ActivityRegularization,
    L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D,
    L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D,
    L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
    L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
    L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D,
    L.Cropping1D, L.Cropping2D, L.Cropping3D,
    L.UpSampling1D, L.UpSampling2D, L.UpSampling3D,
)
_ELEMENTWISE_MERGES = (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)
# Activations that act on each value alone (softmax & co. mix channels).
_ELEMENTWISE_ACTIVATIONS = {
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "silu",
    "swish", "sigmoid", "hard_sigmoid", "hard_silu", "hard_swish", "tanh",
    "softplus", "softsign", "exponential", "mish", "celu",
}


def _elementwise_activation(layer):
    fn = getattr(layer, "activation", None)
    return fn is None or getattr(fn, "__name__", None) in _ELEMENTWISE_ACTIVATIONS


def _channels_last(layer):
    return getattr(layer, "data_format", "channels_last") == "channels_last"



def _width(tensor):
    """The size of the channel (last) axis; None when unknown or absent."""
    return tensor.shape[-1] if len(tensor.shape) else None


# `keras.ops` operations that act on each value alone: on symbolic tensors
# they are graph nodes of their own. Their classes are not public; each is
# recognised by its name and by being defined beside its public function
# (the class `Add` of `keras.ops.add`), so that no other class of that name
# matches.
_ELEMENTWISE_OPS = {
    "Add": "add", "Subtract": "subtract", "Multiply": "multiply", "Divide": "divide",
    "TrueDivide": "true_divide", "Maximum": "maximum", "Minimum": "minimum",
    "Negative": "negative", "Abs": "abs", "Absolute": "absolute", "Square": "square",
    "Tanh": "tanh",
    "Relu": "relu", "Relu6": "relu6", "Sigmoid": "sigmoid", "Silu": "silu", "Gelu": "gelu",
    "Elu": "elu", "Selu": "selu", "LeakyRelu": "leaky_relu", "HardSigmoid": "hard_sigmoid",
    "HardSilu": "hard_silu", "Softplus": "softplus", "Softsign": "softsign",
}


def _is_elementwise_op_class(op):
    function = getattr(keras.ops, _ELEMENTWISE_OPS.get(op.__name__, ""), None)
    return function is not None and op.__module__ == function.__module__


def _elementwise_op(call):
    if not _is_elementwise_op_class(type(call.operation)):
        return False
    arguments = call.node.arguments
    constants = [
        a for a in keras.tree.flatten((arguments.args, arguments.kwargs))
        if not isinstance(a, keras.KerasTensor)
    ]
    # A constant array could broadcast over the channels: it would not be
    # sliced with them. Python scalars are the same for every channel.
    return all(isinstance(a, (bool, int, float, np.number)) or a is None for a in constants)


def kind_of(call):
    """How channels flow through a `_graph_walk.Call`: one of "producer",
    "channelwise", "normalization", "pass", "flatten", "merge", "concat",
    "attention", "unknown".

    Only exact Keras classes are recognised: a subclass may change `call`.
    """
    if not call.is_layer:
        return "merge" if _elementwise_op(call) else "unknown"
    layer = call.operation
    # Attention heads and einsum projections: see keras_rmda._slim_attention.
    if _slim_attention.is_attention(call):
        return "attention"
    if _slim_attention.is_dense_einsum(layer):
        return "producer"
    kind = type(layer)
    plain = len(layer.weights) == (2 if getattr(layer, "use_bias", False) else 1)
    in_width = _width(call.inputs[0]) if call.inputs else None
    if kind in _CONVOLUTIONS or kind is L.Dense:
        if not (plain and _channels_last(layer)):
            return "unknown"
        groups = getattr(layer, "groups", 1)
        if groups == 1:
            return "producer"
        # One input channel per group and per filter: a depthwise convolution.
        one_each = groups == layer.filters == in_width
        return "channelwise" if one_each and _elementwise_activation(layer) else "unknown"
    if kind in _DEPTHWISE:
        fine = plain and _channels_last(layer) and layer.depth_multiplier == 1
        return "channelwise" if fine and _elementwise_activation(layer) else "unknown"
    if kind is L.BatchNormalization:
        axis = layer.axis if isinstance(layer.axis, int) else tuple(layer.axis)
        rank = len(call.inputs[0].shape)
        return "normalization" if axis in (-1, rank - 1, (rank - 1,), (-1,)) else "unknown"
    if kind in _PASS_THROUGH or kind is L.Activation:
        fine = _channels_last(layer) and _elementwise_activation(layer)
        return "pass" if fine else "unknown"
    if kind is L.Flatten:
        return "flatten" if _channels_last(layer) else "unknown"
    if kind in _ELEMENTWISE_MERGES:
        return "merge"
    if kind is L.Concatenate:
        return "concat"
    return "unknown"


class ChannelPlan:
    """The outcome: which channels of each graph tensor survive slimming.

    Attributes:
        calls: `(call, kind)` for each `_graph_walk.Call` of the model's
            graph (layers and `keras.ops` operations), in topological order.
        steps: `(operation, kind)` of the same calls.
        inputs, outputs: the model's input / output KerasTensors.
    """

    def __init__(self, calls, inputs, outputs, keep):
        self.calls = calls
        self.steps = [(call.operation, kind) for call, kind in calls]
        self.inputs = inputs
        self.outputs = outputs
        self._keep = keep
        self._call_of_layer = {id(call.operation): call for call, _ in calls if call.is_layer}

    def keep(self, tensor):
        """Boolean mask over the last axis of `tensor` (all True if untracked);
        None when that axis has no static size."""
        mask = self._keep.get(id(tensor))
        if mask is None:
            width = _width(tensor)
            return None if width is None else np.ones(width, dtype=bool)
        return mask

    def _call(self, layer_or_call):
        if isinstance(layer_or_call, _graph_walk.Call):
            return layer_or_call
        call = self._call_of_layer.get(id(layer_or_call))
        if call is None:
            raise ValueError(
                f"{_graph_walk.describe(layer_or_call)} is not called in the analysed "
                "model's top-level graph."
            )
        return call

    def kept_in(self, layer_or_call):
        return self.keep(self._call(layer_or_call).inputs[0])

    def kept_out(self, layer_or_call):
        return self.keep(self._call(layer_or_call).outputs[0])


class _Slots:
    """Union-find over channel slots with a live flag per class."""

    def __init__(self):
        self.parent = []
        self.live = []

    def new(self, count, live=False):
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        self.live.extend([live] * count)
        return np.arange(start, start + count)

    def find(self, slot):
        root = slot
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[slot] != root:  # path compression
            self.parent[slot], slot = root, self.parent[slot]
        return root

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            self.live[ra] = self.live[ra] or self.live[rb]

    def mark_live(self, slots):
        for s in np.asarray(slots).ravel():
            self.live[self.find(int(s))] = True

    def is_live(self, slots):
        return np.array([self.live[self.find(int(s))] for s in slots], dtype=bool)


def _static_size(shape):
    dims = shape[1:]
    return math.prod(dims) if all(d is not None for d in dims) else None


def plan_channels(model, value_of):
    """Analyse `model`'s graph; `value_of(variable)` gives a weight as numpy.

    Returns a `ChannelPlan`. Raises ValueError (naming the layer) when the
    model has no symbolic graph, shares a layer between calls, or has a
    call whose channels cannot be followed.
    """
    calls = _graph_walk.model_calls(model)
    slots = _Slots()
    of_tensor = {}  # id(KerasTensor) -> np.array of slot ids, None if untracked

    def fresh(tensor, live):
        width = _width(tensor)
        of_tensor[id(tensor)] = None if width is None else slots.new(width, live=live)

    for tensor in model.inputs:
        fresh(tensor, live=True)
    planned = []
    for call in calls:
        try:
            kind = _propagate(call, kind_of(call), slots, of_tensor, fresh, value_of)
        except Exception as error:  # a layer this analysis did not foresee
            raise _graph_walk.failure(
                "follow the channels through", call.operation, error
            ) from error
        planned.append((call, kind))

    for tensor in keras.tree.flatten(model.outputs):
        # Every call's outputs have an entry (None where untracked).
        if of_tensor[id(tensor)] is not None:
            slots.mark_live(of_tensor[id(tensor)])
    # Keep one channel of a tensor that would lose all of them: Keras layers
    # cannot be zero wide, and the kept channel's consumers weigh it by zero.
    for tensor_slots in of_tensor.values():
        if tensor_slots is not None and len(tensor_slots) and not slots.is_live(tensor_slots).any():
            slots.mark_live(tensor_slots[:1])
    keep = {key: slots.is_live(s) for key, s in of_tensor.items() if s is not None}
    return ChannelPlan(planned, list(model.inputs), keras.tree.flatten(model.outputs), keep)


def _propagate(call, kind, slots, of_tensor, fresh, value_of):
    """Give `call`'s outputs their slots and mark the slots it reads live.

    Returns the kind the call was treated as: "unknown" where its shapes do
    not fit `kind` (slim then copies it unchanged, as the plan assumes).
    """
    ins = []
    for tensor in call.inputs:
        if id(tensor) not in of_tensor:  # `model_calls` orders producers first
            raise ValueError(f"its input '{tensor.name}' is made by no earlier call")
        ins.append(of_tensor[id(tensor)])
    outs = call.outputs
    out_width = _width(outs[0]) if len(outs) == 1 else None
    if not ins or any(s is None for s in ins) or out_width is None:
        kind = "unknown"  # a channel axis without a static size is not followed
    layer = call.operation
    if kind == "producer" and len(ins) == 1:
        kernel = value_of(layer.kernel)
        if kernel.shape[-2] != len(ins[0]):
            raise ValueError(f"kernel {kernel.shape} does not match {len(ins[0])} input channels")
        others = tuple(a for a in range(kernel.ndim) if a != kernel.ndim - 2)
        read = np.any(kernel != 0, axis=others)
        slots.mark_live(ins[0][read])
        # A channel-mixing activation makes every output depend on all.
        fresh(outs[0], live=not _elementwise_activation(layer))
        return kind
    if kind in ("normalization", "pass", "channelwise") and out_width == len(ins[0]):
        of_tensor[id(outs[0])] = ins[0]
        return kind
    if kind == "flatten" and _static_size(call.inputs[0].shape) is not None:
        repeats = _static_size(call.inputs[0].shape) // len(ins[0])
        of_tensor[id(outs[0])] = np.tile(ins[0], repeats)
        return kind
    if kind == "merge" and {len(s) for s in ins} == {out_width}:
        for other in ins[1:]:
            for a, b in zip(ins[0], other):
                slots.union(int(a), int(b))
        of_tensor[id(outs[0])] = ins[0]
        return kind
    if kind == "concat" and layer.axis in (-1, len(outs[0].shape) - 1):
        of_tensor[id(outs[0])] = np.concatenate(ins)
        return kind
    if kind == "attention":
        # Channels as for an unknown layer; slim drops heads inside it only.
        for s in ins:
            slots.mark_live(s)
        fresh(outs[0], live=True)
        return kind
    # Unknown: reads everything, its outputs cannot be sliced.
    for s in ins:
        if s is not None:
            slots.mark_live(s)
    for t in outs:
        fresh(t, live=True)
    return "unknown"
