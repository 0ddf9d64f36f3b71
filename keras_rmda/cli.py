"""`keras-rmda`: reproduce the paper's experiments from the command line.

    keras-rmda demo [--out DIR]
    keras-rmda train --preset vgg19-cifar10 --optimizer rmda [--epochs N ...]
                     [--strategy default|mirrored|multiworker]
    keras-rmda report runs/vgg19-cifar10-rmda/model.keras
    keras-rmda export runs/vgg19-cifar10-rmda/model.keras [--no-slim] [--base-dir D]
                      [--dataset NAME | --normalized-input]

Also `python -m keras_rmda ...`. Mistakes a user can make (bad flag values,
unknown names, missing data, unreadable files, an output directory holding
another run) end with one line on stderr and exit status 2; a training run
that diverges (non-finite loss or weights) stops with one line and exit
status 1, keeping its last good checkpoint. Set KERAS_RMDA_DEBUG=1 to see
the traceback instead.

This module imports only the standard library and the pure-data
`keras_rmda.presets` before the arguments are parsed; the commands import
TensorFlow when they need it.
"""

import argparse
import json
import math
import os
import sys

from keras_rmda import presets

STRATEGIES = ("default", "mirrored", "multiworker")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """Flag mistakes as one line naming the command, like every other user error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _parser():
    parser = _Parser(
        prog="keras-rmda",
        description="Structured-sparse training with RMDA (Huang & Lee, ICLR 2022).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="offline demo on data with planted structure")
    demo.add_argument("--out", default="saved_models",
                      help="where the plot and the SavedModel go (default: %(default)s)")
    demo.add_argument("--epochs", type=_positive_int, default=30)
    demo.add_argument("--seed", type=int, default=0)

    train = commands.add_parser("train", help="train a preset of the paper")
    train.add_argument("--preset", required=True,
                       help=f"experiment: {', '.join(presets.EXPERIMENTS)}")
    train.add_argument("--optimizer", default="rmda",
                       help=f"{', '.join(presets.OPTIMIZERS)} (default: %(default)s)")
    train.add_argument("--epochs", type=_positive_int)
    train.add_argument("--milestones", type=_milestones,
                       help="comma-separated epochs where a stage starts, e.g. 30,60, or "
                       "'none' for a single stage")
    train.add_argument("--lambda", dest="strength", type=_non_negative_float,
                       help="regularisation strength λ (finite, >= 0)")
    train.add_argument("--lr", type=_non_negative_float, help="learning rate (finite, >= 0)")
    train.add_argument("--batch-size", type=_positive_int)
    train.add_argument("--dataset", help="train the preset's model on another dataset")
    train.add_argument("--data-dir", help="TFDS data directory (default: $TFDS_DATA_DIR "
                       "or ~/tensorflow_datasets)")
    train.add_argument("--download", action="store_true",
                       help="download missing data (needs network)")
    train.add_argument("--out", help="run directory (default: runs/PRESET-OPTIMIZER)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its last epoch checkpoint")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--limit-train", type=_positive_int, help="use N training examples")
    train.add_argument("--limit-val", type=_positive_int, help="use N validation examples")
    train.add_argument("--verbose", type=int, choices=(0, 1, 2), default=None,
                       help="Keras progress output: 0 none, 1 bar, 2 a line per epoch "
                       "(default: 1 on a terminal, else 2)")
    train.add_argument("--strategy", choices=STRATEGIES, default="default",
                       help="tf.distribute strategy: mirrored (this machine's GPUs) or "
                       "multiworker (the cluster in $TF_CONFIG; run the same command on "
                       "every worker) (default: %(default)s)")

    report = commands.add_parser("report", help="structure report of a .keras model")
    report.add_argument("model", help="a .keras file")
    report.add_argument("--json", action="store_true", help="print JSON instead of a table")

    export = commands.add_parser("export", help="export a .keras model for TF Serving")
    export.add_argument("model", help="a .keras file")
    export.add_argument("--slim", action=argparse.BooleanOptionalAction, default=True,
                        help="remove zero channels first (default: on)")
    export.add_argument("--base-dir", help="default: saved_models/<model name>")
    export.add_argument("--version", type=_positive_int, help="default: next free version")
    export.add_argument("--dataset",
                        help="serve raw pixels, normalised inside as DATASET's pipeline does "
                        "(default: the dataset in run.json beside the model)")
    export.add_argument("--normalized-input", action="store_true",
                        help="serve the model's own normalised input: build no normalisation "
                        "in (the default when no run.json is beside the model)")
    return parser


def parse_args(argv=None):
    """The parsed command line (exits with the help text or a one-line mistake)."""
    return _parser().parse_args(argv)


def main(argv=None):
    """Runs one `keras-rmda` command; returns the exit status.

    The console script enters through `keras_rmda_cli.main`, which parses the
    arguments before TensorFlow is imported.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    args = parse_args(argv)
    try:
        return _COMMANDS[args.command](args) or 0
    except KeyboardInterrupt:
        print("keras-rmda: interrupted (a train run continues with --resume).", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 (user errors become one line)
        if not os.environ.get("KERAS_RMDA_DEBUG") and _is_divergence(error):
            print(f"keras-rmda {args.command}: {_one_line(error)}", file=sys.stderr)
            return 1
        if os.environ.get("KERAS_RMDA_DEBUG") or not _is_user_error(error):
            raise
        print(f"keras-rmda {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2


def _is_user_error(error):
    from keras_rmda.datasets import DatasetNotFoundError

    return isinstance(error, (CLIError, ValueError, OSError, DatasetNotFoundError))


def _is_divergence(error):
    train = sys.modules.get("keras_rmda._train")  # imported by any run that can diverge
    return train is not None and isinstance(error, train.TrainingDiverged)


def _one_line(error):
    return " ".join(str(error).split()) or type(error).__name__


# --- commands --------------------------------------------------------------------


def _demo(args):
    from keras_rmda import _demo as demo

    demo.run(args.out, epochs=args.epochs, seed=args.seed)


def _train(args):
    from keras_rmda import _train as train

    preset = presets.get_preset(args.preset, args.optimizer)
    changes = {
        "epochs": args.epochs, "milestones": args.milestones, "strength": args.strength,
        "learning_rate": args.lr, "batch_size": args.batch_size, "dataset": args.dataset,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if args.dataset is not None:
        from keras_rmda import datasets

        datasets.info(args.dataset)  # unknown names fail here, before any work
    if args.strength is not None and preset.optimizer == "msgd":
        raise CLIError("--lambda: msgd trains without a regulariser.")
    preset = preset.replace(**changes)
    out = args.out or os.path.join("runs", f"{preset.name}-{preset.optimizer}")
    strategy = make_strategy(args.strategy)
    train.run(preset, out, resume=args.resume, seed=args.seed, data_dir=args.data_dir,
              download=args.download, limit_train=args.limit_train,
              limit_val=args.limit_val, verbose="auto" if args.verbose is None else args.verbose,
              strategy=strategy)


def _report(args):
    from keras_rmda import structure

    model = load_model(args.model)
    report = structure.structure_report(model)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=_jsonable))
    else:
        print(f"Structure of '{model.name}' ({args.model}):")
        print(report.table())


def _export(args):
    from keras_rmda.export import export_for_serving

    if args.normalized_input and args.dataset:
        raise CLIError("--dataset and --normalized-input exclude each other. Received: "
                       f"--dataset {args.dataset}")
    model = load_model(args.model)
    dataset = _export_dataset(args)
    base_dir = args.base_dir or os.path.join("saved_models", model.name)
    # export_for_serving prints the path and what the signature takes.
    export_for_serving(model, base_dir=base_dir, version=args.version, slim=args.slim,
                       input_normalization=dataset)


def _export_dataset(args):
    """The dataset whose normalisation `export` builds in, or None (normalised input)."""
    if args.normalized_input:
        return None
    if args.dataset:
        return args.dataset
    run_json = os.path.join(os.path.dirname(os.path.abspath(args.model)), "run.json")
    if not os.path.isfile(run_json):
        print(f"No run.json beside '{args.model}': the signature takes the model's "
              "normalised input, not raw pixels (pass --dataset NAME to build the "
              "normalisation in).")
        return None
    try:
        with open(run_json) as f:
            dataset = json.load(f)["preset"]["dataset"]
    except (OSError, ValueError, TypeError, KeyError):
        dataset = None
    if not isinstance(dataset, str):
        raise CLIError(f"Cannot read the dataset from '{run_json}'; pass --dataset NAME or "
                       "--normalized-input.")
    print(f"Input normalisation of '{dataset}' (from {run_json}) built in; "
          "--normalized-input leaves it out.")
    return dataset


_COMMANDS = {"demo": _demo, "train": _train, "report": _report, "export": _export}


# --- helpers ---------------------------------------------------------------------


def make_strategy(name):
    """The `tf.distribute` strategy `--strategy name` asks for (None: the default)."""
    if name == "default":
        return None
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    config = os.environ.get("TF_CONFIG")
    if not config:
        raise CLIError("--strategy multiworker needs TF_CONFIG in the environment (the "
                       "cluster's workers and this one's task); see docs/distributed.md.")
    try:
        parsed = json.loads(config)
        parsed["cluster"], parsed["task"]
    except (ValueError, TypeError, KeyError):
        raise CLIError("--strategy multiworker: TF_CONFIG is not JSON with 'cluster' and "
                       f"'task' keys. Received: TF_CONFIG={config!r}") from None
    return tf.distribute.MultiWorkerMirroredStrategy()


def load_model(path):
    """Load a `.keras` file, turning every failure into a one-line `CLIError`."""
    import zipfile

    if not os.path.isfile(path):
        raise CLIError(f"No model file at '{path}'.")
    # Keras answers "File not found" for a file that is not a zip archive.
    if not zipfile.is_zipfile(path):
        raise CLIError(f"Cannot read '{path}': the file exists but is not a Keras model "
                       "(a .keras file is a zip archive; this one is truncated or of "
                       "another format).")
    import keras

    import keras_rmda  # noqa: F401 (registers the optimizers, regularisers, groups)

    try:
        return keras.saving.load_model(path)
    except Exception as error:  # noqa: BLE001 (any reader failure means unreadable)
        raise CLIError(f"Cannot read '{path}': the file exists but is not a readable Keras "
                       f"model: {_one_line(error)}") from None


def _jsonable(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return value


def _non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    # inf and nan would only turn the weights into NaN during training.
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _milestones(text):
    """`30,60` -> (30, 60); `none` -> () (one stage); anything else is an error."""
    if text.strip().lower() == "none":
        return ()
    message = (f"expected increasing positive epochs like 30,60 (or 'none'), got {text!r}")
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:  # also '', ',' and '30,,60'
        raise argparse.ArgumentTypeError(message) from None
    if any(v < 1 for v in values) or any(a >= b for a, b in zip(values, values[1:])):
        raise argparse.ArgumentTypeError(message)
    return values


if __name__ == "__main__":
    sys.exit(main())
