"""Presets: the settings of the paper's experiments, one per (experiment, optimizer).

    preset = keras_rmda.presets.get_preset("vgg19-cifar10", "rmda")
    optimizer = keras_rmda.presets.make_optimizer(preset)

Values come from the authors' public code (docs/algorithms.md, "Reference
settings"). Where that table is silent this module chooses,
and says so in the preset's `notes`:

- MSGD: momentum 0.9 and weight decay 5e-4 (1e-4 on ImageNet) everywhere,
  no weight decay for logistic regression (a convex model: the ceiling is
  the unregularised optimum);
- `lenet5-mnist` (group LASSO) and `mlp-fashion_mnist` (nuclear norm on the
  dense kernels): 100 epochs, milestones 25/50/75, batch 128, no
  augmentation, learning rates as on CIFAR; λ = 1e-3 for RMDA/ProxSGD and
  1e-5 for the Adam-type methods (RAMDA/ProxGen/ProxSSI), inside the range
  `benchmarks/paper_mnist.py` sweeps, by the ~100× ratio of the CIFAR table;
  not tuned for the 100-epoch budget;
- momentum c of RMDA/RAMDA follows the "ramda" rule (the code these
  settings come from); ProxSGD's EMA weight is c = 0.1.

ProxSSI has no ImageNet setting in the reference code, so that preset does
not exist.
"""

import dataclasses

OPTIMIZERS = ("rmda", "ramda", "proxsgd", "proxgen", "proxssi", "msgd")
# Optimizer name -> class name in keras_rmda.optimizers (msgd is keras.optimizers.SGD).
_CLASS_NAMES = {"rmda": "RMDA", "ramda": "RAMDA", "proxsgd": "ProxSGD",
                "proxgen": "ProxGen", "proxssi": "ProxSSI"}
_LEARNING_RATES = {"rmda": 0.1, "ramda": 1e-2, "proxsgd": 0.1, "proxgen": 1e-3,
                   "proxssi": 1e-3, "msgd": 0.1}
_MOMENTA = {"rmda": 0.1, "ramda": 0.1, "proxsgd": 0.1, "msgd": 0.9}


@dataclasses.dataclass(frozen=True)
class Preset:
    """Everything `keras-rmda train` needs for one run.

    `momentum` is the optimizer's own convention: c (weight of the new
    point) for RMDA/RAMDA/ProxSGD, Keras SGD's 0.9 for MSGD, None for the
    Adam-based ProxGen/ProxSSI. `strength` is λ (0 for MSGD).
    """

    name: str
    optimizer: str
    dataset: str
    model: str
    epochs: int
    milestones: tuple
    learning_rate: float
    momentum: float | None
    regularizer: str | None  # "group_lasso", "nuclear_norm" or None
    strength: float
    batch_size: int
    augment: bool
    weight_decay: float | None = None
    lr_factor: float = 0.1
    momentum_rule: str = "ramda"
    notes: str = ""

    def replace(self, **changes):
        """A copy with some fields changed (`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self):
        data = dataclasses.asdict(self)
        data["milestones"] = list(self.milestones)
        return data


_EXPERIMENTS = {
    # name: (dataset, model, epochs, milestones, batch, augment, regularizer, λ per method, wd)
    "logreg-mnist": ("mnist", "logreg", 500, (100, 200, 300, 400), 128, False,
                     "group_lasso", dict(rmda=1e-3, ramda=1e-3, proxsgd=1e-3, proxgen=1e-3,
                                         proxssi=1e-3), 0.0),
    "lenet5-mnist": ("mnist", "lenet5", 100, (25, 50, 75), 128, False, "group_lasso",
                     dict(rmda=1e-3, ramda=1e-5, proxsgd=1e-3, proxgen=1e-5, proxssi=1e-5),
                     5e-4),
    "mlp-fashion_mnist": ("fashion_mnist", "mlp", 100, (25, 50, 75), 128, False,
                          "nuclear_norm", dict(rmda=1e-3, ramda=1e-5, proxsgd=1e-3,
                                               proxgen=1e-5, proxssi=1e-5), 5e-4),
    "vgg19-cifar10": ("cifar10", "vgg19", 1000, (200, 400, 600, 800), 128, True,
                      "group_lasso", dict(rmda=1.5e-4, ramda=8e-7, proxsgd=3e-5,
                                          proxgen=1e-6, proxssi=1e-6), 5e-4),
    "vgg19-cifar100": ("cifar100", "vgg19", 1000, (200, 400, 600, 800), 128, True,
                       "group_lasso", dict(rmda=1e-4, ramda=2e-7, proxsgd=4e-5,
                                           proxgen=1e-6, proxssi=1e-6), 5e-4),
    "resnet50-cifar10": ("cifar10", "resnet50", 1000, (200, 400, 600, 800), 128, True,
                         "group_lasso", dict(rmda=5e-5, ramda=1e-6, proxsgd=5e-5,
                                             proxgen=5e-7, proxssi=5e-7), 5e-4),
    "resnet50-cifar100": ("cifar100", "resnet50", 1000, (200, 400, 600, 800), 128, True,
                          "group_lasso", dict(rmda=2e-4, ramda=5e-7, proxsgd=4e-5,
                                              proxgen=1e-6, proxssi=1e-6), 5e-4),
    "resnet50-imagenet": ("imagenet2012", "resnet50", 160, (40, 80, 120), 256, True,
                          "group_lasso", dict(rmda=1.35e-5, ramda=4e-7, proxsgd=1.25e-5,
                                              proxgen=1.3e-7), 1e-4),
}
EXPERIMENTS = tuple(_EXPERIMENTS)
_CHOSEN_HERE = ("lenet5-mnist", "mlp-fashion_mnist")


def get_preset(name, optimizer="rmda"):
    """The `Preset` of experiment `name` (one of `EXPERIMENTS`) for `optimizer`.

    Raises:
        ValueError: unknown experiment or optimizer, an optimizer this
            installation lacks, or a pair the reference code never ran.
    """
    if name not in _EXPERIMENTS:
        raise ValueError(f"Unknown preset {name!r}. Available: {', '.join(EXPERIMENTS)}.")
    check_optimizer(optimizer)
    dataset, model, epochs, milestones, batch, augment, reg, strengths, wd = _EXPERIMENTS[name]
    if optimizer != "msgd" and optimizer not in strengths:
        raise ValueError(f"Preset {name!r} has no {optimizer!r} setting (the reference "
                         f"code has none). Available: {', '.join(sorted(strengths) + ['msgd'])}.")
    lr = _LEARNING_RATES[optimizer]
    if name == "resnet50-imagenet" and optimizer == "rmda":
        lr = 1.0
    momentum = _MOMENTA.get(optimizer)
    if name == "resnet50-imagenet" and optimizer == "ramda":
        momentum = 0.01
    notes = "λ and schedule chosen by keras_rmda (the table is silent)." if (
        name in _CHOSEN_HERE) else "From the authors' public code."
    if optimizer == "msgd":
        notes += " MSGD: no regulariser, Keras SGD momentum 0.9"
        notes += f", weight decay {wd}." if wd else ", no weight decay."
    return Preset(
        name=name, optimizer=optimizer, dataset=dataset, model=model, epochs=epochs,
        milestones=milestones, learning_rate=lr, momentum=momentum,
        regularizer=None if optimizer == "msgd" else reg,
        strength=0.0 if optimizer == "msgd" else strengths[optimizer],
        batch_size=batch, augment=augment,
        weight_decay=(wd or None) if optimizer == "msgd" else None, notes=notes,
    )


def available_optimizers():
    """The optimizer names usable in this installation (always rmda and msgd)."""
    return tuple(name for name in OPTIMIZERS if name == "msgd" or _optimizer_class(name))


def check_optimizer(optimizer):
    """Raise ValueError naming the available optimizers if `optimizer` is not one."""
    if optimizer not in available_optimizers():
        raise ValueError(f"Unknown or unavailable optimizer {optimizer!r}. "
                         f"Available: {', '.join(available_optimizers())}.")


def _optimizer_class(name):
    from keras_rmda import optimizers

    return getattr(optimizers, _CLASS_NAMES.get(name, ""), None)


def make_regularizer(preset):
    """The preset's proximal regulariser (None for MSGD)."""
    from keras_rmda import regularizers

    if preset.regularizer is None:
        return None
    classes = {"group_lasso": regularizers.GroupLasso, "nuclear_norm": regularizers.NuclearNorm,
               "l1": regularizers.L1}
    if preset.regularizer not in classes:
        raise ValueError(f"Unknown regularizer {preset.regularizer!r}. "
                         f"Available: {', '.join(classes)}.")
    return classes[preset.regularizer](preset.strength)


def make_optimizer(preset, **kwargs):
    """A fresh optimizer for `preset`; `kwargs` go to its constructor."""
    import keras

    check_optimizer(preset.optimizer)
    if preset.optimizer == "msgd":
        if preset.weight_decay:
            kwargs.setdefault("weight_decay", preset.weight_decay)
        return keras.optimizers.SGD(learning_rate=preset.learning_rate,
                                    momentum=preset.momentum, **kwargs)
    if preset.momentum is not None:
        kwargs.setdefault("momentum", preset.momentum)
    if preset.weight_decay:
        kwargs.setdefault("weight_decay", preset.weight_decay)
    return _optimizer_class(preset.optimizer)(
        learning_rate=preset.learning_rate, regularizer=make_regularizer(preset), **kwargs)
