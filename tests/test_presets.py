import keras
import pytest

import keras_rmda as kr
from keras_rmda import datasets
from keras_rmda import models
from keras_rmda import presets


def test_reference_settings():
    p = presets.get_preset("vgg19-cifar10", "rmda")
    assert (p.epochs, p.milestones, p.learning_rate, p.momentum, p.strength, p.batch_size,
            p.augment, p.dataset, p.model) == (1000, (200, 400, 600, 800), 0.1, 0.1, 1.5e-4,
                                               128, True, "cifar10", "vgg19")
    p = presets.get_preset("resnet50-imagenet", "rmda")
    assert (p.epochs, p.milestones, p.learning_rate, p.strength, p.batch_size) == (
        160, (40, 80, 120), 1.0, 1.35e-5, 256)
    assert presets.get_preset("resnet50-imagenet", "ramda").momentum == 0.01
    assert presets.get_preset("resnet50-cifar100", "proxgen").strength == 1e-6
    assert presets.get_preset("logreg-mnist", "proxsgd").strength == 1e-3
    msgd = presets.get_preset("vgg19-cifar100", "msgd")
    assert (msgd.regularizer, msgd.strength, msgd.momentum, msgd.weight_decay) == (
        None, 0.0, 0.9, 5e-4)
    assert presets.get_preset("mlp-fashion_mnist", "rmda").regularizer == "nuclear_norm"


@pytest.mark.parametrize("experiment", presets.EXPERIMENTS)
def test_every_preset_is_consistent(experiment):
    for optimizer in presets.available_optimizers():
        if experiment == "resnet50-imagenet" and optimizer == "proxssi":
            continue
        p = presets.get_preset(experiment, optimizer)
        datasets.info(p.dataset)
        assert p.model in models.NAMES
        assert all(m < p.epochs for m in p.milestones)


@pytest.mark.parametrize("optimizer", presets.OPTIMIZERS)
def test_make_optimizer(optimizer):
    if optimizer not in presets.available_optimizers():
        pytest.skip(f"{optimizer} is not in this installation")
    p = presets.get_preset("lenet5-mnist", optimizer)
    opt = presets.make_optimizer(p)
    assert float(opt.learning_rate) == pytest.approx(p.learning_rate)
    if optimizer == "msgd":
        assert isinstance(opt, keras.optimizers.SGD) and opt.momentum == 0.9
    else:
        assert isinstance(opt.regularizer, kr.GroupLasso)
        assert opt.regularizer.strength == p.strength
    nuclear = presets.make_optimizer(presets.get_preset("mlp-fashion_mnist", "rmda"))
    assert isinstance(nuclear.regularizer, kr.NuclearNorm)


def test_errors_name_the_bad_value_and_the_choices():
    with pytest.raises(ValueError, match="Unknown preset 'vgg16-cifar10'.*vgg19-cifar10"):
        presets.get_preset("vgg16-cifar10")
    with pytest.raises(ValueError, match="optimizer 'adam'.*rmda"):
        presets.get_preset("vgg19-cifar10", "adam")
    if "proxssi" in presets.available_optimizers():
        with pytest.raises(ValueError, match="no 'proxssi' setting"):
            presets.get_preset("resnet50-imagenet", "proxssi")
    p = presets.get_preset("lenet5-mnist").replace(epochs=3, strength=0.5)
    assert (p.epochs, p.strength) == (3, 0.5)
