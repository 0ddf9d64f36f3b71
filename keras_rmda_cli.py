"""The `keras-rmda` console script: parses its arguments before TensorFlow loads.

`import keras_rmda` imports Keras, hence TensorFlow (several seconds; far more
on a busy machine), because it registers the package's classes for
`keras.saving.load_model`. The arguments need none of that: this launcher
imports `keras_rmda.cli` (standard library and the pure-data presets only)
with the package's `__init__` left unexecuted, so `--help`, `train --help`
and flag mistakes answer at once. Once the arguments parse, the package is
imported for real and the command runs. `python -m keras_rmda` runs the same
command but imports the package first.
"""

import importlib.util
import sys


def main(argv=None):
    """Entry point of `keras-rmda`; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "keras_rmda" not in sys.modules:
        _parse_without_importing_the_package(argv)  # exits on --help and flag mistakes
    from keras_rmda import cli

    return cli.main(argv)


def _parse_without_importing_the_package(argv):
    spec = importlib.util.find_spec("keras_rmda")
    # The package object without its __init__: submodules import from its path.
    sys.modules["keras_rmda"] = importlib.util.module_from_spec(spec)
    try:
        from keras_rmda import cli

        cli.parse_args(argv)
    finally:
        for name in [n for n in sys.modules if n == "keras_rmda" or n.startswith("keras_rmda.")]:
            del sys.modules[name]  # the real import below runs __init__ as usual


if __name__ == "__main__":
    sys.exit(main())
