import keras
import numpy as np
import pytest

import keras_rmda as kr
from keras_rmda import groups
from keras_rmda import models


@pytest.mark.parametrize("name,shape,classes,params", [
    ("logreg", (28, 28, 1), 10, 7850),
    ("lenet5", (28, 28, 1), 10, 61706),
    ("lenet5_large", (28, 28, 1), 10, 431080),
    ("mlp", (28, 28, 1), 10, 577178),
    # Big models train on tiny inputs: a step costs mostly tracing, not compute
    # (still the slowest of the fast suite: in the slow one).
    pytest.param("vgg19", (8, 8, 3), 100, None, marks=pytest.mark.slow),
    pytest.param("resnet50", (8, 8, 3), 10, None, marks=pytest.mark.slow),
])
def test_model_builds_declares_groups_and_trains_a_step(name, shape, classes, params):
    model = models.build(name, classes, shape)
    if params is not None:
        assert model.count_params() == params
    kernels = [w for w in model.trainable_weights if w.path.endswith("kernel")]
    assert kernels and all(isinstance(k.constraint, (groups.InputChannels, groups.InputUnits))
                           for k in kernels)
    assert model.output_shape == (None, classes)
    optimizer = kr.RMDA(regularizer=kr.GroupLasso(1e-4), groups=None)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=False)  # XLA compiles the big graphs for minutes on CPU
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2,) + shape).astype("float32")
    loss = model.train_on_batch(x, np.array([0, 1]))
    assert np.isfinite(loss)


def test_paper_sizes():
    assert models.vgg19(10, (32, 32, 3)).count_params() == 20_051_530  # VGG19-BN CIFAR: 20.0M
    assert models.resnet50(10, (32, 32, 3)).count_params() == 23_573_962  # ResNet50 CIFAR: 23.5M
    assert models.logistic_regression().get_layer("logits").kernel.numpy().any() == 0


def test_other_shapes_and_stems():
    small = models.vgg19(3, (16, 16, 1))
    assert small.output_shape == (None, 3)
    imagenet = models.resnet50(5, (64, 64, 3))
    assert imagenet.get_layer("stem_conv").kernel.shape == (7, 7, 3, 64)


def test_bad_arguments():
    with pytest.raises(ValueError, match="Unknown model 'alexnet'"):
        models.build("alexnet")
    with pytest.raises(ValueError, match="num_classes"):
        models.mlp(num_classes=1)
    with pytest.raises(ValueError, match="input_shape"):
        models.lenet5(input_shape=(28, 28))
    with pytest.raises(ValueError, match="size"):
        models.lenet5(size="medium")
