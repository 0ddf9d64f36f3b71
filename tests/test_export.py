"""export_for_serving: TF Serving layout, atomic versions, raw-pixel signatures, loads
without keras_rmda."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_rmda
from keras_rmda import cli
from keras_rmda import export as export_lib
from keras_rmda import groups

L = keras.layers


def _trained_model():
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [keras.Input((6, 6, 2)), L.Conv2D(8, 3, kernel_constraint=groups.InputChannels()),
         L.ReLU(), L.Conv2D(6, 3), L.GlobalAveragePooling2D(), L.Dense(3)],
        name="tiny",
    )
    model.compile(keras_rmda.RMDA(momentum=1.0, regularizer=keras_rmda.GroupLasso(0.05)), "mse")
    x = np.random.default_rng(0).standard_normal((16, 6, 6, 2)).astype("float32")
    model.fit(x, np.zeros((16, 3), "float32"), epochs=2, verbose=0)
    kernel = keras.ops.convert_to_numpy(model.layers[2].kernel).copy()
    kernel[:, :, [0, 5], :] = 0.0  # unread channels: the slim export drops them
    model.layers[2].kernel.assign(kernel)
    return model


def _saved_elements(path):
    names = tf.train.list_variables(os.path.join(path, "variables", "variables"))
    return sum(int(np.prod(shape)) for name, shape in names if "OBJECT_GRAPH" not in name)


def test_layout_versions_and_size(tmp_path):
    model = _trained_model()
    base = tmp_path / "tiny"
    first = export_lib.export_for_serving(model, base)
    second = export_lib.export_for_serving(model, base, slim=False)
    assert first == os.path.join(base, "1") and second == os.path.join(base, "2")
    for path in (first, second):
        assert os.path.isfile(os.path.join(path, "saved_model.pb"))
        assert os.path.isdir(os.path.join(path, "variables"))
    assert sorted(os.listdir(base)) == ["1", "2"]
    # Weights stored once each, no optimizer slots: slim 26 - 2 channels.
    slim_params = (3 * 3 * 2 * 6 + 6) + (3 * 3 * 6 * 6 + 6) + (6 * 3 + 3)
    assert _saved_elements(first) == slim_params
    assert _saved_elements(second) == model.count_params()
    with pytest.raises(FileExistsError, match=os.path.join(str(base), "2")):
        export_lib.export_for_serving(model, base, version=2)
    with pytest.raises(ValueError, match="version"):
        export_lib.export_for_serving(model, base, version=0)


def test_default_base_dir_is_saved_models_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = keras.Sequential([keras.Input((3,)), L.Dense(2)], name="small")
    path = export_lib.export_for_serving(model, version=7)
    assert path == os.path.join("saved_models", "small", "7")
    assert os.path.isfile(tmp_path / "saved_models" / "small" / "7" / "saved_model.pb")


def test_interrupted_export_leaves_no_version(tmp_path, monkeypatch):
    model = keras.Sequential([keras.Input((3,)), L.Dense(2)], name="small")
    real_save = export_lib.save_serving_model

    def crash_midway(model, directory, *args):
        real_save(model, directory, *args)  # files are written ...
        raise KeyboardInterrupt("killed")  # ... but the export never finishes

    monkeypatch.setattr(export_lib, "save_serving_model", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        export_lib.export_for_serving(model, tmp_path / "small")
    assert os.listdir(tmp_path / "small") == []
    monkeypatch.undo()
    assert export_lib.export_for_serving(model, tmp_path / "small").endswith("1")


# Serves each job {path, signature, input, x, y} in a fresh process in which
# keras_rmda cannot be imported: TensorFlow alone must run the SavedModels.
_SERVE_WITHOUT_KERAS_RMDA = """
import json, sys
sys.modules["keras_rmda"] = None  # any import of it now fails
import numpy as np, tensorflow as tf
for job in json.load(open(sys.argv[1])):
    serve = tf.saved_model.load(job["path"]).signatures[job["signature"]]
    outputs = serve(**{job["input"]: tf.constant(np.load(job["x"]))})
    np.save(job["y"], outputs["output_0"].numpy())
print("modules:", sorted(m for m, v in sys.modules.items() if m.split(".")[0] == "keras_rmda" and v))
try:
    import keras_rmda
    print("keras_rmda importable")
except ImportError:
    pass
"""

_ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def _serve_in_fresh_process(tmp_path, jobs):
    """`{name: output_0}` of `jobs`: name -> (path, signature, input name, x)."""
    listed = []
    for name, (path, signature, input_name, x) in jobs.items():
        np.save(tmp_path / f"{name}.x.npy", x)
        listed.append({"path": str(path), "signature": signature, "input": input_name,
                       "x": str(tmp_path / f"{name}.x.npy"), "y": str(tmp_path / f"{name}.y.npy")})
    (tmp_path / "jobs.json").write_text(json.dumps(listed))
    done = subprocess.run(
        [sys.executable, "-I", "-c", _SERVE_WITHOUT_KERAS_RMDA, str(tmp_path / "jobs.json")],
        capture_output=True, text=True, env=_ENV, timeout=1500,  # a hang guard
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "modules: []" in done.stdout and "importable" not in done.stdout
    return {name: np.load(tmp_path / f"{name}.y.npy") for name in jobs}


def _saved_model_cli_show(path):
    cli_path = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli_path, "show", "--all", "--dir", path], capture_output=True,
                           text=True, env=_ENV, timeout=1500)
    assert shown.returncode == 0, shown.stderr[-3000:]
    return shown.stdout


def _signature(shown, name):
    """The part of `saved_model_cli show --all` output describing signature `name`."""
    start = shown.index(f"signature_def['{name}']")
    end = shown.find("signature_def[", start + 1)
    return shown[start:end if end >= 0 else None]


# Per-channel mean and std of the tiny model's 2 input channels, in pixel units.
PIXEL_MEAN, PIXEL_STD = (120.0, 30.5), (60.0, 21.25)


@pytest.mark.slow
def test_serves_raw_or_normalised_input_in_a_fresh_process_without_keras_rmda(tmp_path):
    model = _trained_model()
    plain = export_lib.export_for_serving(model, tmp_path / "tiny")
    raw_slim = export_lib.export_for_serving(model, tmp_path / "tiny",
                                             input_normalization=(PIXEL_MEAN, PIXEL_STD))
    raw_full = export_lib.export_for_serving(
        model, tmp_path / "tiny", slim=False,
        input_normalization={"mean": PIXEL_MEAN, "std": PIXEL_STD})
    image = np.random.default_rng(5).integers(0, 256, (4, 6, 6, 2)).astype("uint8")
    normalised = (image.astype("float32") - np.float32(PIXEL_MEAN)) / np.float32(PIXEL_STD)
    x = np.random.default_rng(6).standard_normal((4, 6, 6, 2)).astype("float32")
    served = _serve_in_fresh_process(tmp_path, {
        "plain": (plain, "serving_default", "input_0", x),
        "slim_float": (raw_slim, "serving_default", "pixels", image.astype("float32")),
        "slim_uint8": (raw_slim, "serving_uint8", "pixels", image),
        "full_float": (raw_full, "serving_default", "pixels", image.astype("float32")),
        "full_uint8": (raw_full, "serving_uint8", "pixels", image),
    })
    np.testing.assert_allclose(served["plain"], keras.ops.convert_to_numpy(model(x)),
                               rtol=1e-4, atol=1e-5)
    # Raw pixels served = the Keras model on normalised input.
    expected = keras.ops.convert_to_numpy(model(normalised))
    assert np.abs(expected).max() > 0.1  # outputs that could differ
    for name in ("slim_float", "slim_uint8", "full_float", "full_uint8"):
        np.testing.assert_allclose(served[name], expected, rtol=1e-4, atol=1e-5, err_msg=name)

    shown = _saved_model_cli_show(plain)
    assert "input_0" in _signature(shown, "serving_default") and "serving_uint8" not in shown
    shown = _saved_model_cli_show(raw_slim)
    for name, dtype in (("serving_default", "DT_FLOAT"), ("serving_uint8", "DT_UINT8")):
        signature = _signature(shown, name)
        assert "inputs['pixels']" in signature and f"dtype: {dtype}" in signature
        assert "(-1, 6, 6, 2)" in signature and "outputs['output_0']" in signature


def _run_dir(tmp_path, name, run_json=None):
    """A run directory holding a small 28x28x1 model.keras (and `run_json`)."""
    keras.utils.set_random_seed(4)
    inputs = keras.Input((28, 28, 1))
    hidden = L.Conv2D(4, 5, strides=3, activation="relu")(inputs)
    model = keras.Model(inputs, L.Dense(3)(L.Flatten()(hidden)), name="digits")
    directory = tmp_path / name
    directory.mkdir()
    model.save(directory / "model.keras")
    if run_json is not None:
        (directory / "run.json").write_text(run_json)
    return model, str(directory / "model.keras")


def _cli(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_cli_builds_the_run_datasets_normalisation_in(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default --base-dir must not land in the repository
    model, run_model = _run_dir(tmp_path, "run", json.dumps(
        {"preset": {"name": "lenet5-mnist", "dataset": "mnist"}, "seed": 0}))
    _, bare_model = _run_dir(tmp_path, "bare")
    served = str(tmp_path / "served")

    code, out, _ = _cli(["export", run_model, "--base-dir", served], capsys)
    assert code == 0 and "'mnist'" in out and "run.json" in out
    assert "served/1" in out and "'pixels', raw pixel values 0-255" in out
    code, out, _ = _cli(["export", run_model, "--base-dir", served, "--normalized-input"], capsys)
    assert code == 0 and "served/2" in out and "normalised input" in out and "mnist" not in out
    assert "takes 'input_layer' float32 (None, 28, 28, 1)" in out
    code, out, _ = _cli(["export", bare_model, "--base-dir", served, "--no-slim"], capsys)
    assert code == 0 and "No run.json beside" in out and "served/3" in out
    assert "normalised input" in out and "'pixels'" not in out
    code, out, _ = _cli(["export", bare_model, "--base-dir", served, "--dataset", "fashion_mnist"],
                        capsys)
    assert code == 0 and "served/4" in out and "(fashion_mnist)" in out

    code, _, err = _cli(["export", bare_model, "--dataset", "cifar10"], capsys)
    assert code == 2 and "3 channels" in err and "Received: input_normalization='cifar10'" in err
    code, _, err = _cli(["export", run_model, "--dataset", "mnist", "--normalized-input"], capsys)
    assert code == 2 and "exclude each other" in err
    (tmp_path / "run" / "run.json").write_text("{not json")
    code, _, err = _cli(["export", run_model], capsys)
    assert code == 2 and "Cannot read the dataset from" in err and "--normalized-input" in err
    assert sorted(os.listdir(served)) == ["1", "2", "3", "4"]

    image = np.random.default_rng(7).integers(0, 256, (3, 28, 28, 1)).astype("uint8")
    outputs = _serve_in_fresh_process(tmp_path, {
        "mnist_uint8": (f"{served}/1", "serving_uint8", "pixels", image),
        "mnist_float": (f"{served}/1", "serving_default", "pixels", image.astype("float32")),
        "normalised": (f"{served}/2", "serving_default", "input_layer",
                       _normalise(image, "mnist")),
        "fashion": (f"{served}/4", "serving_uint8", "pixels", image),
    })
    for name, dataset in (("mnist_uint8", "mnist"), ("mnist_float", "mnist"),
                          ("normalised", "mnist"), ("fashion", "fashion_mnist")):
        expected = keras.ops.convert_to_numpy(model(_normalise(image, dataset)))
        assert np.abs(expected).max() > 0.1, name  # outputs that could differ
        np.testing.assert_allclose(outputs[name], expected, rtol=1e-4, atol=1e-5, err_msg=name)


def _normalise(image, dataset):
    """`image` as keras_rmda.datasets.load normalises it (the training input)."""
    from keras_rmda import datasets

    return datasets._normaliser(datasets.info(dataset))(tf.constant(image)).numpy()


def test_bad_input_normalization_is_one_clear_error(tmp_path):
    model = keras.Sequential([keras.Input((4, 4, 2)), L.Conv2D(3, 3)], name="small")
    cases = [
        ("cifar", "unknown dataset"),
        ("cifar10", "3 channels"),  # the model reads 2
        (((1.0, 2.0, 3.0), (1.0,)), "3 channels"),
        (((1.0, 2.0), (1.0, 0.0)), "std finite and > 0"),
        (((1.0, 2.0), (float("nan"), 1.0)), "std finite"),
        (((1.0, 2.0), (1.0, 2.0, 3.0)), "one per channel"),
        ({"mean": 1.0}, "dataset name, a pair"),
        (("a", "b"), "must be numbers"),
        (7, "dataset name, a pair"),
    ]
    for value, message in cases:
        with pytest.raises(ValueError, match=message) as raised:
            export_lib.export_for_serving(model, tmp_path / "bad", input_normalization=value)
        assert "Received: input_normalization=" in str(raised.value)
    a, b = keras.Input((2,)), keras.Input((2,))
    with pytest.raises(ValueError, match="one input; 'pair' has 2"):
        export_lib.export_for_serving(keras.Model([a, b], L.Add()([a, b]), name="pair"),
                                      tmp_path / "bad", input_normalization=((0.0,), (1.0,)))
    assert not os.path.exists(tmp_path / "bad")  # nothing written, not even a directory
