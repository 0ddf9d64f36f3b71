"""The calls that make up a model's top-level graph, in topological order.

A Keras layer keeps one node per call in `_inbound_nodes` (private; Keras
offers no public view of a layer's calls), and a model's `layers` are not
all of its graph:

- A Sequential model builds its functional form again each time its input
  shape may have changed (`keras.saving.load_model` builds it several
  times), so each of its layers holds one node per build, and only the
  latest build's nodes lead to `model.outputs`.
- Functional models also contain operations that are not layers: `x + y`
  or `keras.ops.add(x, y)` on symbolic tensors (ConvNeXt's residual adds)
  is a `keras.ops` operation listed in `model.operations`, not in
  `model.layers`.

So the graph is read backwards from `model.outputs`: the nodes reached are
exactly the calls of this model, whichever builds or models the layers
also took part in.
"""

import keras


class Call:
    """One call of an operation (a layer or a `keras.ops` operation).

    Attributes:
        operation: the layer or operation called.
        node: the Keras node of this call (its arguments rebuild the call).
        inputs: the call's symbolic input tensors, flattened (first the
            positional ones).
        outputs: its output tensors, flattened.
    """

    def __init__(self, node):
        self.operation = node.operation
        self.node = node
        self.inputs = list(node.arguments.keras_tensors)
        self.outputs = list(node.outputs)

    @property
    def is_layer(self):
        return isinstance(self.operation, keras.layers.Layer)


def describe(operation):
    """`layer 'name' (Class)`, the way slim's errors name what they are about."""
    what = "layer" if isinstance(operation, keras.layers.Layer) else "operation"
    return f"{what} '{operation.name}' ({type(operation).__name__})"


def failure(doing, operation, error, step=None):
    """A one-line ValueError: slim cannot `doing` `operation` (`step` failed)
    because of `error`. Raise it `from error`: the traceback keeps the cause."""
    # The cause's first paragraph, on one line. Its type is kept where the
    # text alone is unclear: a KeyError's text is only the missing key.
    text = " ".join(str(error).strip().split("\n\n")[0].split())
    if not isinstance(error, ValueError) or not text:
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    where = f"{step} failed: " if step else ""
    return ValueError(f"slim cannot {doing} {describe(operation)}: {where}{text}")


def model_calls(model):
    """The `Call`s of `model`'s top-level graph, inputs first.

    Raises:
        ValueError: the model has no symbolic graph, a layer is called more
            than once in it, or a tensor cannot be traced to the inputs.
    """
    if not model.built or not getattr(model, "inputs", None):
        raise ValueError(
            f"Model '{model.name}' has no symbolic inputs: build it with a "
            "keras.Input (Sequential or Functional) first."
        )
    # A Sequential holds only layers; a Functional lists ops beside them.
    operations = getattr(model, "operations", None) or model.layers
    made_by = {}
    for operation in operations:
        # private: Keras has no public hook for an operation's calls (its graph nodes)
        for node in operation._inbound_nodes:
            for tensor in node.outputs:
                made_by[id(tensor)] = node
    model_inputs = {id(tensor) for tensor in model.inputs}

    def producer(tensor, consumer):
        if id(tensor) in model_inputs:
            return None
        node = made_by.get(id(tensor))
        if node is None:
            where = describe(consumer) if consumer is not None else "an output"
            raise ValueError(
                f"slim cannot trace tensor '{tensor.name}' (input of {where} in model "
                f"'{model.name}') to the model's inputs: it is made outside the model's graph."
            )
        return node

    # Iterative depth-first search (deep models exceed Python's recursion
    # limit); a node goes to `order` once all the nodes it reads are there.
    order, seen = [], set()
    stack = [
        (node, False)
        for node in (producer(t, None) for t in reversed(keras.tree.flatten(model.outputs)))
        if node is not None
    ]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for tensor in reversed(node.arguments.keras_tensors):
            parent = producer(tensor, node.operation)
            if parent is not None and id(parent) not in seen:
                stack.append((parent, False))

    calls, layer_calls = [], {}
    for node in order:
        call = Call(node)
        if call.is_layer:
            layer_calls.setdefault(id(call.operation), []).append(call)
        calls.append(call)
    for same_layer in layer_calls.values():
        # A shared layer's slices would have to suit all its calls at once.
        if len(same_layer) > 1:
            raise ValueError(
                f"{describe(same_layer[0].operation)} is called {len(same_layer)} times "
                f"in model '{model.name}'; slim supports layers called once."
            )
    return calls
