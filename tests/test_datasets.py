import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_rmda import datasets

from offline_data import MNIST_DIR, needs_mnist


def _batches(dataset):
    return [(x.numpy(), y.numpy()) for x, y in dataset]


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10", "cifar100", "imagenet2012"])
def test_mock_pipelines_have_the_documented_shapes(name):
    spec = datasets.info(name)
    with tfds.testing.mock_data(num_examples=6):
        train = datasets.load(name, "train", batch_size=4, epochs=2)
        evaluation = datasets.load(name, spec.eval_split, batch_size=4)
        assert int(train.cardinality()) == 4 and datasets.steps_per_epoch(train, 2) == 2
        for dataset in (train, evaluation):
            x, y = next(iter(dataset))
            assert x.shape == (4,) + spec.input_shape and x.dtype == "float32"
            assert y.dtype == "int32" and np.all((y.numpy() >= 0) & (y.numpy() < spec.num_classes))


def test_same_seed_same_epochs_and_resumed_streams_match():
    with tfds.testing.mock_data(num_examples=10):
        first = _batches(datasets.load("cifar10", batch_size=4, epochs=3, seed=5))
        again = _batches(datasets.load("cifar10", batch_size=4, epochs=3, seed=5))
        resumed = _batches(datasets.load("cifar10", batch_size=4, epochs=3, initial_epoch=1,
                                         seed=5))
        other = _batches(datasets.load("cifar10", batch_size=4, epochs=3, seed=6))
    assert len(first) == 9 and len(resumed) == 6
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a[0], b[0])
    for a, b in zip(first[3:], resumed):  # epoch 2 on: identical batches
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    # Epochs differ from each other and from another seed (order or augmentation).
    assert not np.array_equal(first[0][0], first[3][0])
    assert not np.array_equal(first[3][0], other[3][0])


def test_cifar_augmentation_is_crop_and_flip_of_the_padded_image():
    with tfds.testing.mock_data(num_examples=4):
        plain = _batches(datasets.load("cifar10", batch_size=4, augment=False, shuffle=False))
        augmented = _batches(datasets.load("cifar10", batch_size=4, shuffle=False))
    x, a = plain[0][0], augmented[0][0]
    assert not np.array_equal(x, a)
    zero = (0.0 - np.array([0.4914, 0.4822, 0.4465])) / np.array([0.2023, 0.1994, 0.2010])
    for image, crop in zip(x, a):
        padded = np.broadcast_to(zero, (40, 40, 3)).astype("float32").copy()
        padded[4:36, 4:36] = image
        windows = [padded[i:i + 32, j:j + 32] for i in range(9) for j in range(9)]
        candidates = windows + [w[:, ::-1] for w in windows]
        assert any(np.allclose(crop, w, atol=1e-5) for w in candidates)


@needs_mnist
def test_offline_mnist_is_normalised_and_resumable():
    kwargs = dict(data_dir=MNIST_DIR, batch_size=50, limit=200, seed=1)
    train = datasets.load("mnist", epochs=2, **kwargs)
    resumed = datasets.load("mnist", epochs=2, initial_epoch=1, **kwargs)
    batches, later = _batches(train), _batches(resumed)
    assert len(batches) == 8 and batches[0][0].shape == (50, 28, 28, 1)
    np.testing.assert_array_equal(batches[4][0], later[0][0])
    assert sorted(np.concatenate([y for _, y in batches[:4]])) == sorted(
        np.concatenate([y for _, y in batches[4:]]))  # same examples, new order
    test = _batches(datasets.load("mnist", "test", data_dir=MNIST_DIR, batch_size=500,
                                  limit=1000))
    pixels = np.concatenate([x for x, _ in test])
    assert abs(pixels.mean()) < 0.1 and abs(pixels.std() - 1.0) < 0.1


@needs_mnist
def test_mnist_training_batches_are_the_plain_images_in_a_permuted_order():
    # MNIST has no augmentation in the paper: a training epoch must be exactly
    # the normalised raw images, shuffled (no crops, no flips).
    raw = tfds.load("mnist", split="train[:300]", data_dir=MNIST_DIR, download=False,
                    as_supervised=True, shuffle_files=False).batch(300)
    images, labels = next(iter(tfds.as_numpy(raw)))
    expected = (images.astype("float32") - 0.1307 * 255) / (0.3081 * 255)
    batches = _batches(datasets.load("mnist", "train[:300]", batch_size=64,
                                     data_dir=MNIST_DIR, seed=3))
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    order = [int(np.argmin(np.abs(expected - image).reshape(300, -1).max(1))) for image in x]
    assert sorted(order) == list(range(300)) and order != list(range(300))
    np.testing.assert_allclose(x, expected[order], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(y, labels[order])
    with pytest.raises(ValueError, match="'mnist' has no training augmentation"):
        datasets.load("mnist", data_dir=MNIST_DIR, augment=True)


def test_fashion_mnist_gets_no_augmentation_and_cifar_does_by_default():
    with tfds.testing.mock_data(num_examples=4):
        for name, augmented in (("fashion_mnist", False), ("cifar10", True)):
            plain = _batches(datasets.load(name, batch_size=4, augment=False, shuffle=False))
            default = _batches(datasets.load(name, batch_size=4, shuffle=False))
            assert np.array_equal(plain[0][0], default[0][0]) is not augmented, name
        with pytest.raises(ValueError, match="'fashion_mnist'.*Received: augment=True"):
            datasets.load("fashion_mnist", augment=True)


def test_data_dir_falls_back_to_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    assert datasets.resolve_data_dir() == str(tmp_path)
    assert datasets.resolve_data_dir(tmp_path / "x") == str(tmp_path / "x")


def test_missing_data_and_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(datasets.DatasetNotFoundError, match=f"'cifar10'.*{tmp_path}"):
        datasets.load("cifar10", data_dir=str(tmp_path))
    assert os.listdir(tmp_path) == []  # nothing downloaded or written
    with pytest.raises(ValueError, match="Unknown dataset 'svhn'"):
        datasets.load("svhn")
    with pytest.raises(ValueError, match="batch_size"):
        datasets.load("mnist", batch_size=0)
    with pytest.raises(ValueError, match="epochs"):
        datasets.load("mnist", epochs=2, initial_epoch=2)
