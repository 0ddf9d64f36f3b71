"""`keras-rmda`: reproduce the paper's experiments from the command line.

    keras-rmda demo [--out DIR]
    keras-rmda train --preset vgg19-cifar10 --optimizer rmda [--epochs N ...]
                     [--strategy default|mirrored|multiworker]
    keras-rmda report runs/vgg19-cifar10-rmda/model.keras
    keras-rmda export runs/vgg19-cifar10-rmda/model.keras [--no-slim] [--base-dir D]

Also `python -m keras_rmda ...`. Mistakes a user can make (unknown names,
missing data, unreadable files, an output directory holding another run)
end with one line on stderr and exit status 2; set KERAS_RMDA_DEBUG=1 to
see the traceback instead.
"""

import argparse
import json
import os
import sys


STRATEGIES = ("default", "mirrored", "multiworker")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _parser():
    parser = argparse.ArgumentParser(
        prog="keras-rmda",
        description="Structured-sparse training with RMDA (Huang & Lee, ICLR 2022).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="offline demo on data with planted structure")
    demo.add_argument("--out", default="saved_models",
                      help="where the plot and the SavedModel go (default: %(default)s)")
    demo.add_argument("--epochs", type=_positive_int, default=30)
    demo.add_argument("--seed", type=int, default=0)

    train = commands.add_parser("train", help="train a preset of the paper")
    train.add_argument("--preset", required=True, help="experiment, e.g. vgg19-cifar10")
    train.add_argument("--optimizer", default="rmda",
                       help="rmda, ramda, proxsgd, proxgen, proxssi or msgd")
    train.add_argument("--epochs", type=_positive_int)
    train.add_argument("--milestones", type=_int_list,
                       help="comma-separated epochs where a stage starts, e.g. 30,60")
    train.add_argument("--lambda", dest="strength", type=_non_negative_float,
                       help="regularisation strength λ")
    train.add_argument("--lr", type=_non_negative_float, help="learning rate")
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
                       help="Keras progress output (default: bar on a terminal)")
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
    return parser


def main(argv=None):
    """Entry point of the `keras-rmda` console script; returns the exit status."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args) or 0
    except KeyboardInterrupt:
        print("keras-rmda: interrupted (a train run continues with --resume).", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 (user errors become one line)
        if os.environ.get("KERAS_RMDA_DEBUG") or not _is_user_error(error):
            raise
        print(f"keras-rmda {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2


def _is_user_error(error):
    from keras_rmda.datasets import DatasetNotFoundError

    return isinstance(error, (CLIError, ValueError, OSError, DatasetNotFoundError))


def _one_line(error):
    return " ".join(str(error).split()) or type(error).__name__


# --- commands --------------------------------------------------------------------


def _demo(args):
    from keras_rmda import _demo as demo

    demo.run(args.out, epochs=args.epochs, seed=args.seed)


def _train(args):
    from keras_rmda import _train as train
    from keras_rmda import presets

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

    model = load_model(args.model)
    base_dir = args.base_dir or os.path.join("saved_models", model.name)
    path = export_for_serving(model, base_dir=base_dir, version=args.version, slim=args.slim)
    print(f"Exported {'slim ' if args.slim else ''}'{model.name}' to {path}")


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
    if not os.path.isfile(path):
        raise CLIError(f"No model file at '{path}'.")
    import keras

    import keras_rmda  # noqa: F401 (registers the optimizers, regularisers, groups)

    try:
        return keras.saving.load_model(path)
    except Exception as error:  # noqa: BLE001 (any reader failure means unreadable)
        raise CLIError(f"Cannot read '{path}' as a Keras model: {_one_line(error)}") from None


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
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _int_list(text):
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated epochs like 30,60, got {text!r}") from None
    return values


if __name__ == "__main__":
    sys.exit(main())
