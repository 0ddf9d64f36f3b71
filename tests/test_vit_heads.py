"""`keras_rmda.models.vit` and the `benchmarks/vit_heads.py` smoke run."""

import os
import re

import keras
import numpy as np
import pytest

from keras_rmda import groups
from keras_rmda import models
from offline_data import MNIST_DIR
from offline_data import needs_mnist

BENCHMARKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")


def expected_params(patch, channels, tokens, dim, heads, key_dim, units, classes):
    """Parameter count of a `models.vit`, added up by hand."""
    total = patch * patch * channels * dim + dim + tokens * dim  # patches, positions
    for h, u in zip(heads, units):
        if h:  # norm, q/k/v kernels and biases, output kernel and bias
            total += 2 * dim + 3 * (dim * h * key_dim + h * key_dim) + h * key_dim * dim + dim
        if u:  # norm, up and down projections
            total += 2 * dim + dim * u + u + u * dim + dim
    return total + 2 * dim + dim * classes + classes


@pytest.mark.parametrize("heads,units", [(4, 32), ([2, 0, 3], [16, 8, 0])])
def test_vit_widths_per_block(heads, units):
    model = models.vit(num_classes=10, input_shape=(28, 28, 1), patch_size=7, dim=16,
                       depth=3, num_heads=heads, key_dim=4, mlp_units=units, groups=False)
    per_block = heads if isinstance(heads, list) else [heads] * 3
    per_unit = units if isinstance(units, list) else [units] * 3
    assert model.count_params() == expected_params(7, 1, 16, 16, per_block, 4, per_unit, 10)
    attention = [layer for layer in model.layers
                 if isinstance(layer, keras.layers.MultiHeadAttention)]
    assert [layer.num_heads for layer in attention] == [h for h in per_block if h]
    assert model.output_shape == (None, 10)
    assert not any(isinstance(getattr(w, "constraint", None), groups.Grouping)
                   for w in model.weights)


def test_vit_declares_heads_and_neurons_and_round_trips(tmp_path):
    model = models.vit(patch_size=7, dim=16, depth=2, num_heads=2, key_dim=4, mlp_units=8)
    for layer in model.layers:
        if isinstance(layer, keras.layers.MultiHeadAttention):
            for w in layer.weights:
                assert isinstance(w.constraint, groups.AttentionHeads), w.path
        if isinstance(layer, keras.layers.Dense) and "_mlp_" in layer.name:
            shared = [w.constraint for w in layer.weights if w.path.endswith(("kernel", "bias"))
                      and isinstance(w.constraint, groups.SharedGroups)]
            expected = 2 if layer.name.endswith("up") else 1
            assert len(shared) == expected, layer.name
            assert {g.key for g in shared} == {f"vit/{layer.name.split('_')[0]}/mlp"}
    x = np.random.default_rng(0).standard_normal((3, 28, 28, 1)).astype("float32")
    path = str(tmp_path / "vit.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_vit_rejects_bad_widths():
    with pytest.raises(ValueError, match="num_heads"):
        models.vit(depth=2, num_heads=[4])
    with pytest.raises(ValueError, match="patch_size"):
        models.vit(patch_size=5)


@pytest.mark.slow
@needs_mnist
def test_vit_heads_quick_run(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(BENCHMARKS)
    import record
    import vit_heads

    monkeypatch.setattr(record, "RESULTS_DIR", str(tmp_path))
    result = vit_heads.main(["--quick", "--data-dir", MNIST_DIR])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    number = r"\d+\.\d+"
    match = re.fullmatch(
        rf"vit_heads acc ({number}) dense_acc ({number}) heads_kept (\d+)/16 "
        rf"neurons_kept (\d+)/512 slim_speedup ({number}) native_speedup ({number})", last)
    assert match, last
    assert (tmp_path / "vit_heads.json").exists()

    # The slim model computes the saved (prox-point) model's function on real images
    # and has exactly the kept widths, as the native model does.
    structured, slim, native = result["structured"], result["slim"], result["native"]
    images = next(iter(result["test"]))[0].numpy()[:64]
    want = keras.ops.convert_to_numpy(structured(images, training=False))
    have = keras.ops.convert_to_numpy(slim(images, training=False))
    np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    heads, neurons = vit_heads.kept_groups(structured)
    assert sum(heads) == int(match.group(3)) and sum(neurons) == int(match.group(4))
    assert slim.count_params() == native.count_params()
    assert [layer.num_heads for layer in slim.layers
            if isinstance(layer, keras.layers.MultiHeadAttention)] == [h for h in heads if h]
