"""Gradual magnitude pruning: the schedule, the final sparsity, the masks."""

import keras
import numpy as np
import pytest

from keras_rmda import pruning


@pytest.mark.parametrize("step", [0, 3, 10, 17, 25, 40, 55])
def test_schedule_is_zhu_and_gupta_cubic(step):
    s_i, s_f, t0, end = 0.1, 0.9, 10, 40
    if step <= t0:
        expected = s_i
    elif step >= end:
        expected = s_f
    else:
        expected = s_f + (s_i - s_f) * (1 - (step - t0) / (end - t0)) ** 3
    callback = pruning.GradualMagnitudePruning(s_f, t0, end, 5, initial_sparsity=s_i)
    assert callback.sparsity_at(step) == pytest.approx(expected, abs=1e-12)


def test_pruning_steps_are_every_frequency_steps_and_the_end_step():
    steps = [t for t in range(60) if pruning.is_pruning_step(t, 10, 32, 5)]
    assert steps == [10, 15, 20, 25, 30, 32]


def _model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((6, 6, 2)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(8, activation="relu"),
        keras.layers.Dense(3),
    ])


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6, 6, 2)).astype("float32")
    return x, (x[:, :3, :3, 0].mean(axis=(1, 2)) > 0).astype("int32")


def test_fit_reaches_the_target_and_pruned_weights_stay_zero():
    model = _model()
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = pruning.GradualMagnitudePruning(0.75, begin_step=2, end_step=20, frequency=3)
    model.fit(*_data(), batch_size=8, epochs=3, verbose=0, callbacks=[callback])  # 24 steps
    kernels = [layer.kernel for layer in model.layers if hasattr(layer, "kernel")]
    masks = {k.path: keras.ops.convert_to_numpy(k) != 0 for k in kernels}
    for kernel in kernels:
        w = keras.ops.convert_to_numpy(kernel)
        assert np.count_nonzero(w == 0) == round(0.75 * w.size)
        np.testing.assert_array_equal(callback.masks[kernel.path], masks[kernel.path])
    biases = [keras.ops.convert_to_numpy(layer.bias) for layer in model.layers
              if hasattr(layer, "bias")]
    assert all(np.count_nonzero(b) == b.size for b in biases)  # biases are not pruned
    model.fit(*_data(), batch_size=8, epochs=2, verbose=0, callbacks=[callback])
    for kernel in kernels:
        w = keras.ops.convert_to_numpy(kernel)
        assert np.all(w[~masks[kernel.path]] == 0.0)  # still pruned after the schedule
        assert np.any(w[masks[kernel.path]] != 0.0)


def test_pruned_weights_never_come_back_between_pruning_steps():
    model = _model()
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = pruning.GradualMagnitudePruning(0.6, begin_step=1, end_step=16, frequency=5)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(keras.ops.convert_to_numpy(model.layers[2].kernel) == 0)

    model.fit(*_data(), batch_size=8, epochs=2, verbose=0, callbacks=[callback, Record()])
    for before, after in zip(seen, seen[1:]):
        assert np.all(after[before]), "a pruned weight came back"
    assert seen[-1].mean() == pytest.approx(round(0.6 * seen[-1].size) / seen[-1].size)


def test_global_scope_prunes_the_smallest_weights_of_all_kernels_together():
    model = _model()
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = pruning.GradualMagnitudePruning(0.75, begin_step=2, end_step=20, frequency=3,
                                               scope="global")
    model.fit(*_data(), batch_size=8, epochs=3, verbose=0, callbacks=[callback])  # 24 steps
    kernels = [keras.ops.convert_to_numpy(layer.kernel) for layer in model.layers
               if hasattr(layer, "kernel")]
    every = np.concatenate([k.ravel() for k in kernels])
    assert np.count_nonzero(every == 0) == round(0.75 * every.size)
    shares = [np.mean(k == 0) for k in kernels]
    assert max(shares) - min(shares) > 0.05  # layers keep different sparsities
    # One threshold for all: a kernel of small weights goes first, whole.
    small, large = model.layers[0].kernel, model.layers[-1].kernel
    small.assign(np.full(small.shape, 1e-3, "float32"))
    large.assign(np.random.default_rng(1).uniform(1, 2, large.shape).astype("float32"))
    share = small.shape.num_elements() / (small.shape.num_elements() + large.shape.num_elements())
    callback._new_masks([small, large], [keras.ops.convert_to_numpy(v) for v in (small, large)],
                        share)
    assert not callback.masks[small.path].any() and callback.masks[large.path].all()


@pytest.mark.parametrize(
    "kwargs,message",
    [({"scope": "layer"}, "Received: scope='layer'"),
     ({"target_sparsity": 1.0}, "Received: target_sparsity=1.0"),
     ({"frequency": 0}, "Received: frequency=0"),
     ({"end_step": 1}, "Received: end_step=1"),
     ({"initial_sparsity": 0.9}, "Received: initial_sparsity=0.9")],
)
def test_bad_arguments_raise(kwargs, message):
    arguments = {"target_sparsity": 0.5, "begin_step": 2, "end_step": 10, "frequency": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        pruning.GradualMagnitudePruning(**arguments)
