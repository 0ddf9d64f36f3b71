"""Which channels of a model can be removed: liveness through the layer graph.

Every channel of every tensor in the model's top-level graph is a *slot*.
Layers that pass channels through unchanged (normalisation, elementwise
activations, dropout, pooling, ...) give their output the same slots as
their input; Flatten repeats its input's slots once per spatial position
(channels_last: position p holds channel p mod C); Add and the other
elementwise merges make the channels at the same index of all their inputs
one slot (union-find); Concatenate lays its inputs' slots side by side.

A slot is *live* when any layer reads it: a convolution or dense layer
reads input channel k when its kernel slice `kernel[..., k, :]` has a
non-zero weight, any other layer (unknown ones included) reads every
channel, and model outputs are read. Slots of model inputs and of outputs of
layers that cannot be sliced are pinned live. Everything else is dead: no
consumer depends on it, so it can be cut from its producers, from the
normalisation layers on the way and from the (zero) kernel rows of its
consumers without changing the model's outputs.

Only the top-level graph is analysed; a nested model is an unknown layer.
"""

import math

import keras
import numpy as np

L = keras.layers

_CONVOLUTIONS = (L.Conv1D, L.Conv2D, L.Conv3D)
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


def layer_kind(layer):
    """How channels flow through `layer`: one of "input", "producer",
    "normalization", "pass", "flatten", "merge", "concat", "unknown".

    Only exact Keras classes are recognised: a subclass may change `call`.
    """
    kind = type(layer)
    if kind is L.InputLayer:
        return "input"
    plain = len(layer.weights) == (2 if getattr(layer, "use_bias", False) else 1)
    if kind in _CONVOLUTIONS or kind is L.Dense:
        sliceable = plain and _channels_last(layer) and getattr(layer, "groups", 1) == 1
        return "producer" if sliceable else "unknown"
    if kind is L.BatchNormalization:
        axis = layer.axis if isinstance(layer.axis, int) else tuple(layer.axis)
        rank = len(layer.input.shape)
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
        steps: `(layer, kind)` for the model's non-input layers, in
            topological order.
        inputs, outputs: the model's input / output KerasTensors.
    """

    def __init__(self, steps, inputs, outputs, keep):
        self.steps = steps
        self.inputs = inputs
        self.outputs = outputs
        self._keep = keep

    def keep(self, tensor):
        """Boolean mask over the last axis of `tensor` (all True if untracked)."""
        mask = self._keep.get(id(tensor))
        if mask is None:
            return np.ones(tensor.shape[-1], dtype=bool)
        return mask

    def kept_in(self, layer):
        return self.keep(_first(layer.input))

    def kept_out(self, layer):
        return self.keep(layer.output)


def _first(structure):
    return keras.tree.flatten(structure)[0]


def _graph_steps(model):
    """`(layer, kind)` of the model's top-level layers, topologically ordered."""
    if not model.built or not getattr(model, "inputs", None):
        raise ValueError(
            f"Model '{model.name}' has no symbolic inputs: build it with a "
            "keras.Input (Sequential or Functional) first."
        )
    steps = []
    for layer in model.layers:
        # Keras offers no public count of a layer's calls; a shared layer's
        # `input`/`output` would describe only its first call.
        if len(layer._inbound_nodes) != 1:
            raise ValueError(
                f"Layer '{layer.name}' is called {len(layer._inbound_nodes)} "
                "times; channel analysis supports layers called once."
            )
        kind = layer_kind(layer)
        if kind != "input":
            steps.append((layer, kind))
    return steps


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

    Returns a `ChannelPlan`. Raises ValueError when the model has no
    symbolic graph or shares a layer between calls.
    """
    steps = _graph_steps(model)
    slots = _Slots()
    of_tensor = {}  # id(KerasTensor) -> np.array of slot ids

    def slots_of(tensor):
        if id(tensor) not in of_tensor:  # a tensor we know nothing about
            of_tensor[id(tensor)] = slots.new(tensor.shape[-1], live=True)
        return of_tensor[id(tensor)]

    for tensor in model.inputs:
        of_tensor[id(tensor)] = slots.new(tensor.shape[-1], live=True)

    for layer, kind in steps:
        ins = keras.tree.flatten(layer.input)
        outs = keras.tree.flatten(layer.output)
        in_slots = [slots_of(t) for t in ins]
        if kind == "producer":
            kernel = value_of(layer.kernel)
            read = np.any(kernel != 0, axis=tuple(a for a in range(kernel.ndim) if a != kernel.ndim - 2))
            slots.mark_live(in_slots[0][read])
            # A channel-mixing activation makes every output depend on all.
            of_tensor[id(outs[0])] = slots.new(
                outs[0].shape[-1], live=not _elementwise_activation(layer)
            )
        elif kind in ("normalization", "pass") and outs[0].shape[-1] == ins[0].shape[-1]:
            of_tensor[id(outs[0])] = in_slots[0]
        elif kind == "flatten" and _static_size(ins[0].shape) is not None:
            repeats = _static_size(ins[0].shape) // ins[0].shape[-1]
            of_tensor[id(outs[0])] = np.tile(in_slots[0], repeats)
        elif kind == "merge" and {len(s) for s in in_slots} == {outs[0].shape[-1]}:
            for other in in_slots[1:]:
                for a, b in zip(in_slots[0], other):
                    slots.union(int(a), int(b))
            of_tensor[id(outs[0])] = in_slots[0]
        elif kind == "concat" and layer.axis in (-1, len(outs[0].shape) - 1):
            of_tensor[id(outs[0])] = np.concatenate(in_slots)
        else:  # unknown: reads everything, its outputs cannot be sliced
            for s in in_slots:
                slots.mark_live(s)
            for t in outs:
                of_tensor[id(t)] = slots.new(t.shape[-1], live=True)

    for tensor in keras.tree.flatten(model.outputs):
        slots.mark_live(slots_of(tensor))
    # Keep one channel of a tensor that would lose all of them: Keras layers
    # cannot be zero wide, and the kept channel's consumers weigh it by zero.
    for tensor_slots in of_tensor.values():
        if len(tensor_slots) and not slots.is_live(tensor_slots).any():
            slots.mark_live(tensor_slots[:1])
    keep = {key: slots.is_live(s) for key, s in of_tensor.items()}
    return ChannelPlan(steps, list(model.inputs), keras.tree.flatten(model.outputs), keep)
