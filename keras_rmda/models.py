"""The paper's models, carrying its groupings as constraints.

    model = keras_rmda.models.build("vgg19", num_classes=100, input_shape=(32, 32, 3))

Every model is a Functional Keras model for any class count and input shape,
returns logits (use `from_logits=True`), and leaves with the paper's
groupings declared on its kernels (`keras_rmda.groups.declare_auto`:
`InputChannels` on convolutions, `InputUnits` on dense kernels), so the
optimizers regularise the same groups with `groups=None` as with "auto".

`vit` (not in `build`'s registry: it is no model of the paper) declares
transformer groups instead, attention heads and MLP neurons, or none.
"""

import keras
from keras import layers
from keras import ops

from keras_rmda import groups as groups_lib

# VGG19: numbers are 3×3 convolutions (+ BN + ReLU), "M" a 2×2 max-pool.
_VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
          512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
_RESNET50_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))


def _check(num_classes, input_shape):
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an int >= 2. Received: num_classes={num_classes!r}")
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError("`input_shape` must be (height, width, channels) of positive ints. "
                         f"Received: input_shape={input_shape!r}")
    return shape


def _finish(inputs, outputs, name):
    model = keras.Model(inputs, outputs, name=name)
    groups_lib.declare_auto(model)
    return model


def logistic_regression(num_classes=10, input_shape=(28, 28, 1), name="logreg"):
    """Multinomial logistic regression, zero-initialised as in the paper."""
    inputs = keras.Input(_check(num_classes, input_shape))
    x = layers.Flatten()(inputs)
    outputs = layers.Dense(num_classes, kernel_initializer="zeros", name="logits")(x)
    return _finish(inputs, outputs, name)


def lenet5(num_classes=10, input_shape=(28, 28, 1), size="small", name=None):
    """LeNet-5: "small" 6-16-120-84 (first conv padded), "large" 20-50-500."""
    if size not in ("small", "large"):
        raise ValueError(f"`size` must be 'small' or 'large'. Received: size={size!r}")
    inputs = keras.Input(_check(num_classes, input_shape))
    if size == "small":
        x = layers.Conv2D(6, 5, padding="same", activation="relu", name="conv1")(inputs)
        x = layers.MaxPooling2D(name="pool1")(x)
        x = layers.Conv2D(16, 5, activation="relu", name="conv2")(x)
        x = layers.MaxPooling2D(name="pool2")(x)
        x = layers.Flatten()(x)
        x = layers.Dense(120, activation="relu", name="fc1")(x)
        x = layers.Dense(84, activation="relu", name="fc2")(x)
    else:  # Caffe's LeNet: no padding
        x = layers.Conv2D(20, 5, activation="relu", name="conv1")(inputs)
        x = layers.MaxPooling2D(name="pool1")(x)
        x = layers.Conv2D(50, 5, activation="relu", name="conv2")(x)
        x = layers.MaxPooling2D(name="pool2")(x)
        x = layers.Flatten()(x)
        x = layers.Dense(500, activation="relu", name="fc1")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return _finish(inputs, outputs, name or f"lenet5_{size}")


def mlp(num_classes=10, input_shape=(28, 28, 1), hidden=(512, 256, 128, 64, 32, 16),
        name="mlp"):
    """The 7-layer ReLU MLP 784-512-256-128-64-32-16-10 (nuclear-norm experiments)."""
    inputs = keras.Input(_check(num_classes, input_shape))
    x = layers.Flatten()(inputs)
    for i, units in enumerate(hidden):
        x = layers.Dense(units, activation="relu", name=f"fc{i + 1}")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return _finish(inputs, outputs, name)


def vgg19(num_classes=10, input_shape=(32, 32, 3), name="vgg19_bn"):
    """VGG19 with batch normalisation and a single linear head.

    On 32×32 inputs the five max-pools leave 1×1×512, so the global average
    pool before the head is the plain flatten of the CIFAR reference; "same"
    pooling keeps smaller inputs valid.
    """
    inputs = keras.Input(_check(num_classes, input_shape))
    x, block, index = inputs, 1, 1
    for v in _VGG19:
        if v == "M":
            x = layers.MaxPooling2D(padding="same", name=f"pool{block}")(x)
            block, index = block + 1, 1
            continue
        x = layers.Conv2D(v, 3, padding="same", name=f"block{block}_conv{index}")(x)
        x = layers.BatchNormalization(name=f"block{block}_bn{index}")(x)
        x = layers.ReLU(name=f"block{block}_relu{index}")(x)
        index += 1
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return _finish(inputs, outputs, name)


def resnet50(num_classes=10, input_shape=(32, 32, 3), stem=None, name="resnet50"):
    """ResNet50 (bottleneck blocks 3-4-6-3).

    `stem="cifar"` (default for inputs under 64 pixels): a 3×3 stride-1
    convolution and no initial max-pool, as in the CIFAR reference code;
    `stem="imagenet"`: 7×7 stride-2 convolution and a 3×3 stride-2 max-pool.
    """
    shape = _check(num_classes, input_shape)
    stem = stem or ("cifar" if min(shape[:2]) < 64 else "imagenet")
    if stem not in ("cifar", "imagenet"):
        raise ValueError(f"`stem` must be 'cifar' or 'imagenet'. Received: stem={stem!r}")
    inputs = keras.Input(shape)
    if stem == "cifar":
        x = layers.Conv2D(64, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    else:
        x = layers.Conv2D(64, 7, strides=2, padding="same", use_bias=False,
                          name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    if stem == "imagenet":
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    in_channels = 64
    for stage, (width, blocks, stride) in enumerate(_RESNET50_STAGES, start=1):
        for block in range(blocks):
            x = _bottleneck(x, in_channels, width, stride if block == 0 else 1,
                            f"stage{stage}_block{block + 1}")
            in_channels = 4 * width
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return _finish(inputs, outputs, name)


def _bottleneck(x, in_channels, width, stride, name):
    """1×1 reduce, 3×3 (strided), 1×1 expand ×4; projection shortcut if needed."""
    shortcut = x
    y = x
    for i, (filters, kernel, s) in enumerate(((width, 1, 1), (width, 3, stride),
                                              (4 * width, 1, 1))):
        y = layers.Conv2D(filters, kernel, strides=s, padding="same", use_bias=False,
                          name=f"{name}_conv{i + 1}")(y)
        y = layers.BatchNormalization(name=f"{name}_bn{i + 1}")(y)
        if i < 2:
            y = layers.ReLU(name=f"{name}_relu{i + 1}")(y)
    if stride != 1 or in_channels != 4 * width:
        shortcut = layers.Conv2D(4 * width, 1, strides=stride, use_bias=False,
                                 name=f"{name}_proj")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


@keras.saving.register_keras_serializable(package="keras_rmda")
class PositionEmbedding(layers.Layer):
    """Adds a learned embedding of shape (tokens, dim) to a (batch, tokens, dim) input."""

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            shape=tuple(input_shape[1:]), name="embeddings",
            initializer=keras.initializers.RandomNormal(stddev=0.02))

    def call(self, inputs):
        return inputs + ops.cast(self.embeddings, inputs.dtype)


def _per_block(arg, value, depth):
    """`value` as a tuple of `depth` non-negative ints (an int is repeated)."""
    values = (value,) * depth if isinstance(value, int) else tuple(value)
    if len(values) != depth or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError(f"`{arg}` must be a non-negative int or a list of {depth} of them "
                         f"(one per block). Received: {arg}={value!r}")
    return values


def _attention(x, num_heads, key_dim, strength, name):
    """`x + MHA(LN(x))`; with `strength` (not None) the heads are declared as groups."""
    def heads():
        return None if strength is None else groups_lib.AttentionHeads(strength)

    y = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_attn_norm")(x)
    y = layers.MultiHeadAttention(num_heads, key_dim, kernel_constraint=heads(),
                                  bias_constraint=heads(), name=f"{name}_attn")(y, y)
    return layers.Add(name=f"{name}_attn_add")([x, y])


def _mlp(x, units, strength, key, name):
    """`x + Dense(dim)(Dense(units, gelu)(LN(x)))`; hidden unit j is group j of `key`."""
    def neurons(axis):
        return None if strength is None else groups_lib.SharedGroups(key, axis, strength)

    y = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_mlp_norm")(x)
    y = layers.Dense(units, activation="gelu", kernel_constraint=neurons(1),
                     bias_constraint=neurons(0), name=f"{name}_mlp_up")(y)
    y = layers.Dense(x.shape[-1], kernel_constraint=neurons(0), name=f"{name}_mlp_down")(y)
    return layers.Add(name=f"{name}_mlp_add")([x, y])


def vit(num_classes=10, input_shape=(28, 28, 1), patch_size=7, dim=64, depth=4,
        num_heads=4, key_dim=16, mlp_units=128, groups=True, head_strength=1.0,
        neuron_strength=1.0, name="vit"):
    """A small pre-norm Vision Transformer returning logits.

    Tokens are the non-overlapping `patch_size`² patches, embedded by a
    Conv2D of that stride, plus a learned `PositionEmbedding`. Each block is
    `x + MHA(LN(x))` then `x + Dense(dim)(Dense(mlp_units, gelu)(LN(x)))`;
    a final LayerNormalization, the mean over tokens and a Dense head follow.

    Args:
        num_classes, input_shape: as for the other models.
        patch_size: must divide the image height and width.
        dim: token width.
        depth: number of blocks.
        num_heads: heads per block (each of `key_dim`), an int or one per
            block: a slimmed ViT keeps different heads in different blocks.
            0 leaves the block's attention out.
        key_dim: width of every head.
        mlp_units: hidden units of each block's MLP, an int or one per
            block; 0 leaves the block's MLP out.
        groups: declare the transformer groupings: `AttentionHeads` on every
            MHA kernel and bias (one group per head: its query / key / value
            slices and output-projection rows) and, per block, `SharedGroups`
            tying hidden unit j of the MLP (first kernel's column j, its
            bias j, second kernel's row j) into one group. False: none.
        head_strength, neuron_strength: the groupings' `strength`, the
            multiplier of the regulariser's λ for heads and for neurons.
        name: the model's name; the `SharedGroups` keys start with it.
    """
    shape = _check(num_classes, input_shape)
    if shape[0] % patch_size or shape[1] % patch_size:
        raise ValueError(f"`patch_size` must divide the image size {shape[:2]}. "
                         f"Received: patch_size={patch_size!r}")
    heads = _per_block("num_heads", num_heads, depth)
    units = _per_block("mlp_units", mlp_units, depth)
    if not groups:
        head_strength = neuron_strength = None
    inputs = keras.Input(shape)
    x = layers.Conv2D(dim, patch_size, strides=patch_size, name="patch_embed")(inputs)
    x = layers.Reshape((-1, dim), name="tokens")(x)
    x = PositionEmbedding(name="position_embedding")(x)
    for i in range(depth):
        if heads[i]:
            x = _attention(x, heads[i], key_dim, head_strength, f"block{i}")
        if units[i]:
            x = _mlp(x, units[i], neuron_strength, f"{name}/block{i}/mlp", f"block{i}")
    x = layers.LayerNormalization(epsilon=1e-6, name="final_norm")(x)
    x = layers.GlobalAveragePooling1D(name="token_mean")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)

_BUILDERS = {
    "logreg": logistic_regression,
    "lenet5": lenet5,
    "lenet5_large": lambda **kw: lenet5(size="large", **kw),
    "mlp": mlp,
    "vgg19": vgg19,
    "resnet50": resnet50,
}
NAMES = tuple(_BUILDERS)


def build(name, num_classes=10, input_shape=(28, 28, 1), **kwargs):
    """Build a model by name (one of `NAMES`)."""
    if name not in _BUILDERS:
        raise ValueError(f"Unknown model {name!r}. Available: {', '.join(NAMES)}.")
    return _BUILDERS[name](num_classes=num_classes, input_shape=input_shape, **kwargs)
