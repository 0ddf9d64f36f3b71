"""TFDS input pipelines with the paper's preprocessing, reproducible per epoch.

    train = keras_rmda.datasets.load("cifar10", "train", epochs=200, seed=0)
    test = keras_rmda.datasets.load("cifar10", "test")
    model.fit(train, epochs=200, steps_per_epoch=steps_per_epoch(train, 200),
              validation_data=test)

Images are normalised with per-dataset mean / std constants; CIFAR training
images get a random 32×32 crop of the image zero-padded by 4 pixels and a
horizontal flip, ImageNet training images a random-resized crop to 224 and a
flip (evaluation: resize to 256, central 224 crop).

**Reproducible, resumable order.** The shuffle order and every random
augmentation of epoch `e` depend only on `(seed, e)`: they use stateless
random ops seeded with `(seed, e)` (and the example's index), and the stream
of several epochs is `Dataset.range(initial_epoch, epochs).flat_map(one
epoch)`. A run resumed at `initial_epoch=k` therefore sees exactly the batches
an uninterrupted run sees from epoch k on. MNIST, Fashion-MNIST and CIFAR are
held in memory as uint8 (the cache, before augmentation) and shuffled by a
full stateless permutation. ImageNet streams from disk with a shuffle buffer
seeded from `(seed, e)` (TensorFlow's global seed also enters that one: set
it, e.g. with `keras.utils.set_random_seed`, for exact resumes).

Nothing reaches the network unless `download=True`; data is read from
`data_dir`, else `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`.
"""

import dataclasses
import math
import os

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset (static, no data read)."""

    name: str
    num_classes: int
    input_shape: tuple
    num_examples: dict  # split -> examples in the full split
    mean: tuple
    std: tuple
    augmentation: str  # "none", "crop_flip" or "resized_crop_flip"
    eval_split: str


_INFOS = {
    info.name: info
    for info in (
        DatasetInfo("mnist", 10, (28, 28, 1), {"train": 60000, "test": 10000},
                    (0.1307,), (0.3081,), "none", "test"),
        DatasetInfo("fashion_mnist", 10, (28, 28, 1), {"train": 60000, "test": 10000},
                    (0.2860,), (0.3530,), "none", "test"),
        # The std constants the public CIFAR training code uses (kuangliu/pytorch-cifar).
        DatasetInfo("cifar10", 10, (32, 32, 3), {"train": 50000, "test": 10000},
                    (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), "crop_flip", "test"),
        DatasetInfo("cifar100", 100, (32, 32, 3), {"train": 50000, "test": 10000},
                    (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "crop_flip", "test"),
        DatasetInfo("imagenet2012", 1000, (224, 224, 3),
                    {"train": 1281167, "validation": 50000},
                    (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "resized_crop_flip",
                    "validation"),
    )
}
NAMES = tuple(_INFOS)


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not prepared in the data directory and download=False."""


def info(name):
    """The `DatasetInfo` of a supported dataset (ValueError for others)."""
    if name not in _INFOS:
        raise ValueError(f"Unknown dataset {name!r}. Available: {', '.join(NAMES)}.")
    return _INFOS[name]


def resolve_data_dir(data_dir=None):
    """`data_dir`, else `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`."""
    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return os.path.abspath(os.path.expanduser(os.fspath(data_dir)))


def load(name, split="train", batch_size=128, *, data_dir=None, download=False,
         augment=None, shuffle=None, seed=0, epochs=None, initial_epoch=0,
         limit=None, manual_dir=None):
    """A `tf.data.Dataset` of `(float32 normalised image, int32 label)` batches.

    Args:
        name: one of `NAMES`.
        split: a TFDS split ("train", "test", "validation", "train[:10%]").
        batch_size: examples per batch (the last batch of an epoch may be smaller).
        data_dir: TFDS data directory (default: `$TFDS_DATA_DIR` or
            `~/tensorflow_datasets`).
        download: download and prepare the dataset when it is missing.
        augment: apply the dataset's training augmentation (CIFAR: crop and
            flip; ImageNet: random-resized crop and flip). Default: on for
            "train" splits of datasets that have one; MNIST and
            Fashion-MNIST have none, and `augment=True` on them raises.
        shuffle: default: on for "train" splits.
        seed: with the epoch index, fixes the order and the augmentation.
        epochs: None: one epoch, the one of index `initial_epoch`. An int:
            the stream of epochs `initial_epoch .. epochs - 1`, for
            `fit(..., epochs=epochs, initial_epoch=initial_epoch,
            steps_per_epoch=steps_per_epoch(dataset, epochs, initial_epoch))`.
        initial_epoch: index of the first epoch produced.
        limit: use only the first `limit` examples of the split.
        manual_dir: where ImageNet's manually downloaded archives are
            (default `<data_dir>/downloads/manual`), for `download=True`.

    Raises:
        ValueError: unknown dataset or bad argument (`augment=True` on a
            dataset without augmentation among them).
        DatasetNotFoundError: the data is not in `data_dir` and download=False.
    """
    spec = info(name)
    for arg, value in (("batch_size", batch_size), ("limit", limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise ValueError(f"`{arg}` must be a positive int. Received: {arg}={value!r}")
    if epochs is not None and (not isinstance(epochs, int) or epochs <= initial_epoch):
        raise ValueError(f"`epochs` must be an int > initial_epoch={initial_epoch}. "
                         f"Received: epochs={epochs!r}")
    training = split.startswith("train")
    if augment and spec.augmentation == "none":
        raise ValueError(f"Dataset {name!r} has no training augmentation (the paper trains "
                         f"it on the plain images). Received: augment={augment!r}")
    augment = training and spec.augmentation != "none" if augment is None else bool(augment)
    shuffle = training if shuffle is None else bool(shuffle)
    raw = _tfds_load(name, split, data_dir, download, manual_dir)
    if limit is not None:
        raw = raw.take(limit)
    last = initial_epoch + 1 if epochs is None else epochs
    seed = tf.constant(int(seed), tf.int64)
    if spec.augmentation == "resized_crop_flip":
        one_epoch = _streamed_epochs(raw, spec, batch_size, augment, shuffle, seed)
    else:
        one_epoch = _in_memory_epochs(raw, spec, batch_size, augment, shuffle, seed)
    stream = tf.data.Dataset.range(initial_epoch, last).flat_map(one_epoch)
    count = int(raw.cardinality())
    if count >= 0:  # flat_map forgets the length; Keras and users want it
        steps = math.ceil(count / batch_size) * (last - initial_epoch)
        stream = stream.apply(tf.data.experimental.assert_cardinality(steps))
    return stream.prefetch(AUTOTUNE)


def steps_per_epoch(dataset, epochs=None, initial_epoch=0):
    """Batches per epoch of a `load(..., epochs=epochs, initial_epoch=...)` result."""
    total = int(dataset.cardinality())
    if total < 0:
        raise ValueError("The dataset's length is unknown (streamed data): pass "
                         "steps_per_epoch = ceil(examples / batch_size) yourself.")
    return total // ((epochs or initial_epoch + 1) - initial_epoch)


def _tfds_load(name, split, data_dir, download, manual_dir):
    import tensorflow_datasets as tfds

    data_dir = resolve_data_dir(data_dir)
    kwargs = {}
    if download and name == "imagenet2012":
        manual_dir = manual_dir or os.path.join(data_dir, "downloads", "manual")
        kwargs["download_and_prepare_kwargs"] = {
            "download_config": tfds.download.DownloadConfig(manual_dir=manual_dir)}
    try:
        return tfds.load(name, split=split, data_dir=data_dir, download=download,
                         as_supervised=True, shuffle_files=False, **kwargs)
    except AssertionError as error:  # TFDS's way of saying "not prepared"
        if "could not find data" not in str(error):
            raise
        raise DatasetNotFoundError(
            f"Dataset {name!r} was not found in data dir '{data_dir}' and "
            "download=False. Point --data-dir (or TFDS_DATA_DIR) at a TFDS data "
            "directory holding it, or allow downloading (download=True / --download)"
            + (" with the ImageNet archives in <data_dir>/downloads/manual."
               if name == "imagenet2012" else ".")
        ) from None


def _in_memory_epochs(raw, spec, batch_size, augment, shuffle, seed):
    """One epoch as a function of its index; the uint8 data is held in memory."""
    images, labels = [], []
    for x, y in raw.batch(8192):  # the cache: decoded once, kept as uint8
        images.append(x)
        labels.append(tf.cast(y, tf.int32))
    if not images:
        raise ValueError(f"Dataset {spec.name!r}: the selected split holds no examples.")
    images, labels = tf.concat(images, 0), tf.concat(labels, 0)
    count = int(labels.shape[0])
    normalise = _normaliser(spec)

    def one_epoch(epoch):
        epoch_seed = tf.stack([seed, epoch])
        order = tf.range(count, dtype=tf.int64)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(order, seed=epoch_seed)
        indices = tf.data.Dataset.from_tensor_slices(order)
        if not augment:  # gather and normalise whole batches: much faster
            ds = indices.batch(batch_size).map(
                lambda i: (normalise(tf.gather(images, i)), tf.gather(labels, i)),
                num_parallel_calls=AUTOTUNE)
        else:
            def example(i):
                image = _crop_flip(images[i], _example_seed(epoch_seed, i))
                return normalise(image), labels[i]

            ds = indices.map(example, num_parallel_calls=AUTOTUNE).batch(batch_size)
        return ds

    return one_epoch


def _streamed_epochs(raw, spec, batch_size, augment, shuffle, seed):
    """One ImageNet epoch as a function of its index (read from disk each epoch)."""
    normalise = _normaliser(spec)
    numbered = raw.enumerate()

    def one_epoch(epoch):
        epoch_seed = tf.stack([seed, epoch])
        ds = numbered
        if shuffle:
            ds = ds.shuffle(10_000, seed=seed * 1_000_003 + epoch)

        def example(i, pair):
            image, label = pair
            if augment:
                image = _resized_crop_flip(image, _example_seed(epoch_seed, i))
            else:
                image = _center_crop(image)
            return normalise(image), tf.cast(label, tf.int32)

        return ds.map(example, num_parallel_calls=AUTOTUNE).batch(batch_size)

    return one_epoch


# --- preprocessing -------------------------------------------------------------


def _normaliser(spec):
    mean = tf.constant(spec.mean, tf.float32) * 255.0
    std = tf.constant(spec.std, tf.float32) * 255.0
    return lambda image: (tf.cast(image, tf.float32) - mean) / std


def _example_seed(epoch_seed, index):
    return tf.random.experimental.stateless_fold_in(epoch_seed, index)


def _crop_flip(image, seed):
    """Random 32×32 (input size) crop of the zero-padded image, random flip."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.shape(image)
    # Padding with 0 in pixel space, as torchvision's RandomCrop(padding=4) does.
    padded = tf.pad(image, [[4, 4], [4, 4], [0, 0]])
    image = tf.image.stateless_random_crop(padded, shape, seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def _resized_crop_flip(image, seed, size=224):
    """Inception-style random-resized crop (scale 8–100 %, ratio 3/4–4/3), flip."""
    box_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=box_seed, min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
    image = tf.slice(image, begin, crop_size)
    image = tf.image.resize(image, (size, size), method="bilinear")
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def _center_crop(image, size=224, resize=256):
    """Resize the shorter side to 256, then the central 224×224 crop."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = resize / tf.reduce_min(shape)
    new_shape = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.image.resize(image, new_shape, method="bilinear")
    top = (new_shape[0] - size) // 2
    left = (new_shape[1] - size) // 2
    return tf.image.crop_to_bounding_box(image, top, left, size, size)
