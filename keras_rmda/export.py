"""Export a model for TF Serving: `<base_dir>/<version>/` SavedModels.

    path = keras_rmda.export_for_serving(model, input_normalization="mnist")

The SavedModel holds the model's weights once and a `serving_default`
signature over its inference call: no optimizer slots, no Keras objects,
no keras_rmda constraints, so it loads with TensorFlow alone.

What the signature takes:

- with `input_normalization` (a dataset name or a per-channel mean and std
  in pixel units) the normalisation is built in: `serving_default` takes
  raw pixel values in [0, 255] as float32 under the input name `pixels`, and
  `serving_uint8` takes the same pixels as uint8;
- without it, `serving_default` takes exactly what the Keras model takes:
  for the presets that is mean/std-normalised images, not raw pixels.

Outputs are named `output_0`, `output_1`, ... either way.
"""

import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

# Not `from keras_rmda import slim`: the package may export the function
# `slim` under the module's name.
from keras_rmda.slim import slim as _slim_model

PIXELS = "pixels"  # the input name of the raw-pixel signatures


def export_for_serving(model, base_dir=None, version=None, slim=True,
                       input_normalization=None, verbose=True):
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
        input_normalization: build the input normalisation into the export,
            so that it serves raw pixels. One of:
            - a dataset name of `keras_rmda.datasets` (e.g. `"mnist"`): its
              `mean` and `std` (in [0, 1] units) times 255, exactly as
              `keras_rmda.datasets.load` normalises;
            - a pair `(mean, std)` or a dict `{"mean": ..., "std": ...}` in
              pixel units (0–255 scale), each a number or one per channel
              (the last axis of the model's single input).
            The model then receives `(pixels - mean) / std`. Signatures:
            `serving_default` (input `pixels`, float32) and `serving_uint8`
            (input `pixels`, uint8). None (default): no normalisation, the
            `serving_default` signature takes the model's own (normalised)
            input, as before.
        verbose: print where the export went and what its signature takes.

    Returns:
        The path of the new version directory.

    Raises:
        FileExistsError: `base_dir/version` exists already (never overwritten).
        ValueError: `version` is not a positive int, or `input_normalization`
            does not fit the model.
    """
    normalization = resolve_normalization(model, input_normalization)
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
        save_serving_model(model, staging, normalization)
        if os.path.exists(target):
            raise FileExistsError(f"Version {version} appeared at '{target}' meanwhile.")
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide it from a serving user
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if verbose:
        print(f"Exported {'slim ' if slim else ''}'{model.name}' to {target}: "
              f"{describe_signature(model, normalization)}")
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


class Normalization:
    """A resolved `input_normalization`: float32 per-channel mean and std in pixel units."""

    def __init__(self, mean, std, source):
        self.mean = mean
        self.std = std
        self.source = source  # the dataset name, or None when given as numbers

    def __repr__(self):
        return (f"Normalization(mean={_fmt(self.mean)}, std={_fmt(self.std)}, "
                f"source={self.source!r})")


def resolve_normalization(model, input_normalization):
    """`input_normalization` as a `Normalization` checked against `model`, or None."""
    if input_normalization is None:
        return None
    received = f"Received: input_normalization={input_normalization!r}"
    source = None
    if isinstance(input_normalization, str):
        from keras_rmda import datasets

        if input_normalization not in datasets.NAMES:
            raise ValueError(f"`input_normalization`: unknown dataset; available: "
                             f"{', '.join(datasets.NAMES)}. {received}")
        spec = datasets.info(input_normalization)
        # float32 products, as datasets' own normaliser computes them, so the
        # served normalisation is the training pipeline's to the bit.
        mean = np.asarray(spec.mean, np.float32) * np.float32(255.0)
        std = np.asarray(spec.std, np.float32) * np.float32(255.0)
        source = input_normalization
    elif isinstance(input_normalization, dict) and set(input_normalization) == {"mean", "std"}:
        mean, std = _pixel_values(input_normalization["mean"], input_normalization["std"],
                                  received)
    elif isinstance(input_normalization, (tuple, list)) and len(input_normalization) == 2:
        mean, std = _pixel_values(*input_normalization, received)
    else:
        raise ValueError("`input_normalization` must be a dataset name, a pair (mean, std) or "
                         f"a dict with keys 'mean' and 'std'. {received}")
    inputs = getattr(model, "inputs", None) or []
    if len(inputs) != 1:
        raise ValueError(f"`input_normalization` needs a model with one input; '{model.name}' "
                         f"has {len(inputs)}. {received}")
    if not np.issubdtype(np.dtype(keras.backend.standardize_dtype(inputs[0].dtype)),
                         np.floating):
        raise ValueError(f"`input_normalization` needs a float input; '{model.name}' takes "
                         f"{inputs[0].dtype}. {received}")
    channels = inputs[0].shape[-1]
    if mean.size not in (1, channels):
        raise ValueError(f"`input_normalization` has {mean.size} channels, the input of "
                         f"'{model.name}' {channels} (shape {tuple(inputs[0].shape)}). {received}")
    return Normalization(mean, std, source)


def _pixel_values(mean, std, received):
    try:
        mean = np.asarray(mean, np.float32).reshape(-1)
        std = np.asarray(std, np.float32).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"`input_normalization`: mean and std must be numbers. {received}") \
            from None
    if 0 in (mean.size, std.size) or (mean.size != std.size and 1 not in (mean.size, std.size)):
        raise ValueError(f"`input_normalization`: mean and std need one value each, or one "
                         f"per channel. {received}")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
        raise ValueError("`input_normalization`: mean must be finite and std finite and > 0. "
                         f"{received}")
    mean, std = np.broadcast_arrays(mean, std)
    return mean.copy(), std.copy()


def describe_signature(model, normalization):
    """One sentence saying what the export's `serving_default` takes."""
    spec = model.inputs[0] if getattr(model, "inputs", None) else None
    shape = (None,) + tuple(spec.shape[1:]) if spec is not None else "?"
    if normalization is None:
        names = ", ".join(f"'{_input_name(t, i)}'" for i, t in enumerate(model.inputs))
        dtype = model.inputs[0].dtype
        return (f"signature 'serving_default' takes {names} {dtype} {shape} exactly as the "
                "Keras model does: normalised input (for images (pixels - mean) / std, as in "
                "training), not raw pixels; pass input_normalization= to build the "
                "normalisation in.")
    source = f" ({normalization.source})" if normalization.source else ""
    return (f"signature 'serving_default' takes '{PIXELS}', raw pixel values 0-255 as "
            f"float32 {shape} ('serving_uint8': the same as uint8), and normalises them "
            f"inside with mean {_fmt(normalization.mean)} and std "
            f"{_fmt(normalization.std)}{source}.")


def _fmt(values):
    return "(" + ", ".join(f"{v:.4g}" for v in np.asarray(values).reshape(-1)) + ")"


class _ServingModule(tf.Module):
    """Tracks exactly the model's variables (each once) and its signatures."""

    def __init__(self, model, normalization=None):
        super().__init__(name="serving")
        # The tf.Variables behind the Keras variables: traced calls capture
        # these, and tracking them here saves each exactly once.
        self.model_variables = [_tf_variable(v) for v in model.variables]
        output_names = [f"output_{i}" for i in range(len(keras.tree.flatten(model.outputs)))]

        def serve(*inputs):
            outputs = model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)
            return dict(zip(output_names, keras.tree.flatten(outputs)))

        if normalization is None:
            specs = [
                tf.TensorSpec((None,) + tuple(t.shape[1:]), t.dtype, name=_input_name(t, i))
                for i, t in enumerate(model.inputs)
            ]
            self.serve = tf.function(serve, input_signature=specs)
            return
        shape = (None,) + tuple(model.inputs[0].shape[1:])
        model_dtype = model.inputs[0].dtype
        mean, std = normalization.mean, normalization.std

        def serve_pixels(pixels):
            # Constants made inside the trace: the graph holds them, no
            # captured eager tensors.
            x = (tf.cast(pixels, tf.float32) - tf.constant(mean)) / tf.constant(std)
            return serve(tf.cast(x, model_dtype))

        self.serve = tf.function(
            serve_pixels, input_signature=[tf.TensorSpec(shape, tf.float32, name=PIXELS)])
        self.serve_uint8 = tf.function(
            serve_pixels, input_signature=[tf.TensorSpec(shape, tf.uint8, name=PIXELS)])

    def signatures(self):
        signatures = {"serving_default": self.serve}
        if hasattr(self, "serve_uint8"):
            signatures["serving_uint8"] = self.serve_uint8
        return signatures


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def _input_name(tensor, index):
    name = getattr(tensor, "name", "") or ""
    return name if name and not name.startswith("keras_tensor") else f"input_{index}"


def save_serving_model(model, directory, normalization=None):
    """Save `model`'s inference call as a SavedModel with `serving_default`.

    `normalization`: a `Normalization` (see `resolve_normalization`) to
    serve raw pixels, or None to serve the model's own input.
    """
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "export_for_serving needs the TensorFlow backend "
            f"(KERAS_BACKEND={keras.backend.backend()!r})."
        )
    if not getattr(model, "inputs", None):
        raise ValueError(f"Model '{model.name}' has no symbolic inputs; build it with a keras.Input.")
    module = _ServingModule(model, normalization)
    tf.saved_model.save(module, directory, signatures=module.signatures())
