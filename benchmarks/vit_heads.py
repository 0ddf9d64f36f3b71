"""A ViT on MNIST with attention heads and MLP neurons removed by RMDA.

    python benchmarks/vit_heads.py            # ~12 min on 2 CPU cores
    python benchmarks/vit_heads.py --quick    # ~1 min smoke run

`keras_rmda.models.vit` (7×7 patches: 16 tokens of width 64, 4 pre-norm
blocks of 4 heads of key_dim 16 and an MLP of 128 units) trained twice on
the MNIST training split, for the same number of epochs:

- dense: AdamW with a linear warmup and a cosine decay, no groups declared;
- structured: RMDA (η 0.3, c 0.1) with the group LASSO on the groups the
  model declares (`groups=True`: one group per attention head, λ × 2, one
  per MLP neuron, λ = 2e-4; all other variables unregularised,
  `groups=None`), and a `StageSchedule` (milestones 6 and 10 of 14 epochs)
  that divides the learning rate by 10 at each milestone, raises the
  momentum to 1 before the last one and restarts the dual average at each.

Accuracies are on the 10,000 test images, the structured one of the model
`fit` leaves (finalised at RMDA's prox point), i.e. the model a user saves.
Heads and neurons are counted kept when any weight of their group is not
exactly zero. Then three models are timed, `model(x)` in a `tf.function`,
at batch 1 and 64 (interleaved repeats, median): the dense one, the
structured one slimmed by `keras_rmda.slim`, and a ViT built natively at the
slim model's widths (fresh weights, the same builder). Last line:

    vit_heads acc <a> dense_acc <b> heads_kept <k>/<n> neurons_kept <m>/<p>
    slim_speedup <s> native_speedup <t>

with the speedups dense / slim and dense / native latency at batch 64.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_rmda as kr  # noqa: E402
from keras_rmda import datasets  # noqa: E402
from keras_rmda import models  # noqa: E402

import record  # noqa: E402
import timing  # noqa: E402

DEFAULT_DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "shared", "data", "tensorflow_datasets")
ARCHITECTURE = dict(patch_size=7, dim=64, depth=4, num_heads=4, key_dim=16, mlp_units=128)


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("TFDS_DATA_DIR") or (
        DEFAULT_DATA_DIR if os.path.isdir(DEFAULT_DATA_DIR) else None),
        help="TFDS data dir holding mnist (default: $TFDS_DATA_DIR or the shared copy)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2,000 training / 500 test images, 1 epoch")
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--milestones", type=int, nargs="*", default=[6, 10],
                        help="StageSchedule milestones of the structured run (1-based epochs)")
    parser.add_argument("--lam", type=float, default=2e-4, help="group LASSO λ")
    parser.add_argument("--head-strength", type=float, default=2.0,
                        help="λ multiplier of the head groups (the neurons' is 1)")
    parser.add_argument("--lr", type=float, default=0.3, help="RMDA learning rate η")
    parser.add_argument("--momentum", type=float, default=0.1, help="RMDA momentum c")
    parser.add_argument("--dense-lr", type=float, default=2e-3, help="AdamW peak learning rate")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls at batch 64")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="vit_heads", help="results file name")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.milestones, args.repeats = 1, [], 3
    args.milestones = [m for m in args.milestones if m < args.epochs]
    return args


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def train_dense(data, args):
    """The ViT without groups, AdamW with warmup (half an epoch) and cosine decay."""
    train, test, steps = data
    keras.utils.set_random_seed(args.seed)
    model = models.vit(groups=False, name="vit_dense", **ARCHITECTURE)
    total = steps * args.epochs
    warmup = max(1, min(steps // 2, total // 4))
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, total - warmup, warmup_target=args.dense_lr, warmup_steps=warmup)
    model.compile(keras.optimizers.AdamW(schedule, weight_decay=0.05), _loss(),
                  metrics=["accuracy"])
    model.fit(train, epochs=args.epochs, steps_per_epoch=steps, verbose=0,
              callbacks=[_EpochPrinter("dense")])
    return model, float(model.evaluate(test, verbose=0, return_dict=True)["accuracy"])


def train_structured(data, args):
    """The ViT with head and neuron groups, RMDA + group LASSO; the model `fit` leaves."""
    train, test, steps = data
    keras.utils.set_random_seed(args.seed)
    model = models.vit(groups=True, head_strength=args.head_strength, name="vit",
                       **ARCHITECTURE)
    optimizer = kr.RMDA(args.lr, args.momentum, regularizer=kr.GroupLasso(args.lam),
                        groups=None)
    model.compile(optimizer, _loss(), metrics=["accuracy"])
    callbacks = [kr.StageSchedule(args.milestones), kr.callbacks.ProxPointValidation(test),
                 _EpochPrinter("rmda", model)]
    history = model.fit(train, epochs=args.epochs, steps_per_epoch=steps, verbose=0,
                        callbacks=callbacks)
    # fit has set the model to the prox point (finalize=True): this is what is saved.
    accuracy = float(model.evaluate(test, verbose=0, return_dict=True)["accuracy"])
    return model, accuracy, float(history.history["iterate_val_accuracy"][-1])


class _EpochPrinter(keras.callbacks.Callback):
    """One line per epoch (progress of a long run), with the kept groups if asked."""

    def __init__(self, label, counted=None):
        super().__init__()
        self.label, self.counted = label, counted

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        figures = " ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items()
                           if "acc" in k or k == "loss")
        kept = ""
        if self.counted is not None:
            # Counted at the prox point, where RMDA's zeros are.
            values = kr.structure.weight_values(self.counted, use_prox_point=True)
            heads, neurons = kept_groups(self.counted, lambda v: values[id(v)])
            kept = f" heads {sum(heads)} neurons {sum(neurons)}"
        print(f"  {self.label} epoch {epoch + 1}: {figures}{kept} "
              f"({time.perf_counter() - self._start:.0f} s)", flush=True)


def _nonzero_along(array, axis):
    """Per index along `axis`: does that slice hold a non-zero weight?"""
    array = np.asarray(array)
    others = tuple(a for a in range(array.ndim) if a != axis % array.ndim)
    return np.any(array != 0, axis=others)


def kept_groups(model, value=keras.ops.convert_to_numpy):
    """(heads kept per block, MLP neurons kept per block) of a `models.vit`.

    A head is kept when any weight of its group (query / key / value kernel
    and bias slices, output-projection rows) is non-zero; a neuron when its
    up-projection column, bias entry or down-projection row is.
    """
    heads, neurons = [], []
    for layer in model.layers:
        if isinstance(layer, keras.layers.MultiHeadAttention):
            alive = _nonzero_along(value(layer.output_dense.kernel), 0)
            for projection in (layer.query_dense, layer.key_dense, layer.value_dense):
                alive |= _nonzero_along(value(projection.kernel), -2)
                alive |= _nonzero_along(value(projection.bias), -2)
            heads.append(int(alive.sum()))
        elif layer.name.endswith("_mlp_up"):
            down = model.get_layer(layer.name[:-len("up")] + "down")
            alive = (_nonzero_along(value(layer.kernel), 1) | _nonzero_along(value(layer.bias), 0)
                     | _nonzero_along(value(down.kernel), 0))
            neurons.append(int(alive.sum()))
    return heads, neurons


def widths(model, depth):
    """(heads per block, MLP units per block) of a `models.vit` or its slimmed copy."""
    names = {layer.name: layer for layer in model.layers}
    heads = [names[f"block{i}_attn"].num_heads if f"block{i}_attn" in names else 0
             for i in range(depth)]
    units = [names[f"block{i}_mlp_up"].units if f"block{i}_mlp_up" in names else 0
             for i in range(depth)]
    return heads, units


def latencies(models_by_name, images, batch, repeats):
    """Median seconds of a traced `model(x)` per model, repeats interleaved."""
    x = tf.constant(images[:batch])
    calls = {}
    for name, model in models_by_name.items():
        fn = tf.function(lambda x, model=model: model(x, training=False))
        for _ in range(3):  # trace and warm up
            fn(x).numpy()
        calls[name] = lambda fn=fn: fn(x).numpy()
    return timing.interleaved_medians(calls, repeats)


def main(argv=None):
    args = _parse(argv)
    limit_train, limit_test = (2_000, 500) if args.quick else (None, None)
    train = datasets.load("mnist", "train", 128, data_dir=args.data_dir, seed=args.seed,
                          epochs=args.epochs, limit=limit_train)
    test = datasets.load("mnist", "test", 1000, data_dir=args.data_dir, limit=limit_test)
    data = (train, test, datasets.steps_per_epoch(train, args.epochs))
    print(f"vit_heads: ViT {ARCHITECTURE} on MNIST, {args.epochs} epochs; RMDA η {args.lr} "
          f"c {args.momentum} λ {args.lam} milestones {args.milestones}", flush=True)
    started = time.perf_counter()

    dense, dense_acc = train_dense(data, args)
    structured, acc, iterate_acc = train_structured(data, args)
    heads, neurons = kept_groups(structured)
    depth = ARCHITECTURE["depth"]
    total_heads = ARCHITECTURE["num_heads"] * depth
    total_neurons = ARCHITECTURE["mlp_units"] * depth
    print(f"dense acc {dense_acc:.4f}; structured acc {acc:.4f} (prox point, the saved model; "
          f"iterate {iterate_acc:.4f}); heads kept per block {heads}, neurons {neurons}; "
          f"training {time.perf_counter() - started:.0f} s", flush=True)

    slim = kr.slim(structured)
    # The native model has the slim model's widths: they are the kept counts,
    # except that a block whose heads are all zero keeps one (zero) head.
    slim_heads, slim_units = widths(slim, depth)
    print(f"slim widths: heads {slim_heads}, MLP units {slim_units}")
    keras.utils.set_random_seed(args.seed)
    native = models.vit(groups=False, name="vit_native",
                        **dict(ARCHITECTURE, num_heads=slim_heads, mlp_units=slim_units))
    timed = {"dense": dense, "slim": slim, "native": native}
    images = np.concatenate([x.numpy() for x, _ in test])[:64]  # all read: no cache warning
    at_1 = latencies(timed, images, 1, args.repeats * 4)
    at_64 = latencies(timed, images, 64, args.repeats)
    params = {name: model.count_params() for name, model in timed.items()}

    print(f"\n{'model':8}{'params':>10}{'ms @1':>9}{'ms @64':>9}")
    for name in timed:
        print(f"{name:8}{params[name]:>10}{at_1[name] * 1e3:>9.2f}{at_64[name] * 1e3:>9.2f}")
    slim_speedup = at_64["dense"] / at_64["slim"]
    native_speedup = at_64["dense"] / at_64["native"]
    print(f"batch-1 speedup: slim {at_1['dense'] / at_1['slim']:.2f} "
          f"native {at_1['dense'] / at_1['native']:.2f}")
    summary = (f"vit_heads acc {acc:.4f} dense_acc {dense_acc:.4f} "
               f"heads_kept {sum(heads)}/{total_heads} neurons_kept {sum(neurons)}/{total_neurons} "
               f"slim_speedup {slim_speedup:.2f} native_speedup {native_speedup:.2f}")
    rows = [{"model": name, "params": params[name], "ms_batch_1": at_1[name] * 1e3,
             "ms_batch_64": at_64[name] * 1e3,
             "test_acc": {"dense": dense_acc, "slim": acc}.get(name)} for name in timed]
    record.write(args.name, rows, summary, dict(
        vars(args), architecture=ARCHITECTURE, heads_kept=heads, neurons_kept=neurons,
        slim_heads=slim_heads, slim_mlp_units=slim_units,
        iterate_acc=iterate_acc, train_seconds=time.perf_counter() - started))
    print(summary)
    return {"summary": summary, "structured": structured, "slim": slim, "native": native,
            "dense": dense, "test": test}


if __name__ == "__main__":
    main()
