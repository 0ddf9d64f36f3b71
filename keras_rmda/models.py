"""The paper's models, carrying its groupings as constraints.

    model = keras_rmda.models.build("vgg19", num_classes=100, input_shape=(32, 32, 3))

Every model is a Functional Keras model for any class count and input shape,
returns logits (use `from_logits=True`), and leaves with the paper's
groupings declared on its kernels (`keras_rmda.groups.declare_auto`:
`InputChannels` on convolutions, `InputUnits` on dense kernels), so the
optimizers regularise the same groups with `groups=None` as with "auto".
"""

import keras
from keras import layers

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
