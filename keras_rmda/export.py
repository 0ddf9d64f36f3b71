"""Export a model for TF Serving: `<base_dir>/<version>/` SavedModels.

    path = keras_rmda.export.export_for_serving(model)  # saved_models/<name>/1

The SavedModel holds the model's weights once and a `serving_default`
signature over its inference call: no optimizer slots, no Keras objects,
no keras_rmda constraints, so it loads with TensorFlow alone.
"""

import os
import shutil
import tempfile

import keras
import tensorflow as tf

# Not `from keras_rmda import slim`: the package may export the function
# `slim` under the module's name.
from keras_rmda.slim import slim as _slim_model


def export_for_serving(model, base_dir=None, version=None, slim=True):
    """Write `model` as a SavedModel in TF Serving's versioned layout.

    The version directory is written under a temporary name next to it and
    renamed when complete, so a reader (TF Serving polls `base_dir`) never
    sees a partial version, and a failed export leaves none behind.

    Args:
        model: a built Keras model (Sequential or Functional when slimming).
        base_dir: the model's directory; defaults to
            `saved_models/<model.name>` relative to the working directory.
        version: a positive int; defaults to one more than the largest
            existing version (1 for the first).
        slim: export `keras_rmda.slim(model)` (weights at the optimizer's
            prox point, zero channels removed) instead of `model` as it is.

    Returns:
        The path of the new version directory.

    Raises:
        FileExistsError: `base_dir/version` exists already (never overwritten).
        ValueError: `version` is not a positive int.
    """
    base_dir = os.fspath(base_dir) if base_dir is not None else os.path.join(
        "saved_models", model.name
    )
    os.makedirs(base_dir, exist_ok=True)
    if version is None:
        version = max(existing_versions(base_dir), default=0) + 1
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"`version` must be a positive int. Received: version={version!r}")
    target = os.path.join(base_dir, str(version))
    if os.path.exists(target):
        raise FileExistsError(f"Version {version} exists already at '{target}'; not overwritten.")
    if slim:
        model = _slim_model(model)
    # A name TF Serving ignores (not an integer) while it is being written.
    staging = tempfile.mkdtemp(prefix=f".{version}.partial-", dir=base_dir)
    try:
        save_serving_model(model, staging)
        if os.path.exists(target):
            raise FileExistsError(f"Version {version} appeared at '{target}' meanwhile.")
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide it from a serving user
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def existing_versions(base_dir):
    """The integer version directories under `base_dir`."""
    if not os.path.isdir(base_dir):
        return []
    return [
        int(name)
        for name in os.listdir(base_dir)
        if name.isdigit() and os.path.isdir(os.path.join(base_dir, name))
    ]


class _ServingModule(tf.Module):
    """Tracks exactly the model's variables (each once) and one signature."""

    def __init__(self, model):
        super().__init__(name="serving")
        # The tf.Variables behind the Keras variables: traced calls capture
        # these, and tracking them here saves each exactly once.
        self.model_variables = [_tf_variable(v) for v in model.variables]
        specs = [
            tf.TensorSpec((None,) + tuple(t.shape[1:]), t.dtype, name=_input_name(t, i))
            for i, t in enumerate(model.inputs)
        ]
        output_names = [f"output_{i}" for i in range(len(keras.tree.flatten(model.outputs)))]

        def serve(*inputs):
            outputs = model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)
            return dict(zip(output_names, keras.tree.flatten(outputs)))

        self.serve = tf.function(serve, input_signature=specs)


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def _input_name(tensor, index):
    name = getattr(tensor, "name", "") or ""
    return name if name and not name.startswith("keras_tensor") else f"input_{index}"


def save_serving_model(model, directory):
    """Save `model`'s inference call as a SavedModel with `serving_default`."""
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "export_for_serving needs the TensorFlow backend "
            f"(KERAS_BACKEND={keras.backend.backend()!r})."
        )
    if not getattr(model, "inputs", None):
        raise ValueError(f"Model '{model.name}' has no symbolic inputs; build it with a keras.Input.")
    module = _ServingModule(model)
    tf.saved_model.save(module, directory, signatures={"serving_default": module.serve})
