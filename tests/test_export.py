"""export_for_serving: TF Serving layout, atomic versions, loads without keras_rmda."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_rmda
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

    def crash_midway(model, directory):
        real_save(model, directory)  # files are written ...
        raise KeyboardInterrupt("killed")  # ... but the export never finishes

    monkeypatch.setattr(export_lib, "save_serving_model", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        export_lib.export_for_serving(model, tmp_path / "small")
    assert os.listdir(tmp_path / "small") == []
    monkeypatch.undo()
    assert export_lib.export_for_serving(model, tmp_path / "small").endswith("1")


_LOAD_WITHOUT_KERAS_RMDA = """
import sys
sys.modules["keras_rmda"] = None  # any import of it now fails
import numpy as np, tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
serve = loaded.signatures["serving_default"]
x = np.load(sys.argv[2])
np.save(sys.argv[3], serve(input_0=tf.constant(x))["output_0"].numpy())
print("modules:", sorted(m for m, v in sys.modules.items() if m.split(".")[0] == "keras_rmda" and v))
try:
    import keras_rmda
    print("keras_rmda importable")
except ImportError:
    pass
"""


def test_loads_and_serves_in_a_fresh_process_without_keras_rmda(tmp_path):
    model = _trained_model()
    path = export_lib.export_for_serving(model, tmp_path / "tiny")
    x = np.random.default_rng(5).standard_normal((4, 6, 6, 2)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, "-I", "-c", _LOAD_WITHOUT_KERAS_RMDA, path,
         str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "modules: []" in done.stdout and "importable" not in done.stdout
    expected = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-4, atol=1e-5)

    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run(
        [cli, "show", "--all", "--dir", path], capture_output=True, text=True, env=env,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "signature_def['serving_default']" in shown.stdout
    assert "input_0" in shown.stdout and "output_0" in shown.stdout
