"""`StageSchedule`: the reference experiments' stage-wise schedule with restarts.

Lives apart from `callbacks.py` to keep that module short; import it as
`keras_rmda.callbacks.StageSchedule`.
"""

import math

import keras
import numpy as np

from keras_rmda import structure

MOMENTUM_RULES = ("ramda", "iclr", None)


class StageSchedule(keras.callbacks.Callback):
    """Stage-wise learning rate and momentum with restarts at milestones.

    Milestone `m` means a new stage starts after epoch `m` (1-based, as Keras
    prints epochs), i.e. at the beginning of the 0-based epoch index `m`.
    There the schedule

    - sets the learning rate to `η₀ · lr_factor^n` (n = milestones passed);
    - sets the momentum c of `RMDA`/`RAMDA` by `momentum_rule`:
      - `"iclr"` (ICLR 2022 code): `c = min(c₀ / lr_factor^n, 1)`;
      - `"ramda"` (RAMDA code, default): `c = c₀` until the epoch before
        the last milestone, then, per step, `c_k = min(c₀·√k, 1)` with
        k = 2, 3, ... counting from the first step of that epoch (the
        reference code tests `epoch + 1 >= last milestone` and increments
        its counter before the first use, so c reaches 1 during the epoch
        before the last restart and the last stage starts from it);
      - `None`: the momentum is left alone;
    - calls `optimizer.restart()` when the optimizer has one (W⁰ ← W, V ← 0,
      α ← 0, t ← 0). Optimizers without it (SGD, ProxSGD, ...) only get the
      learning rate; their momentum is never touched.

    **Resuming.** Nothing is accumulated across epochs: at every epoch begin
    (and, once the `"ramda"` rule raises c, every batch begin) the learning rate
    and the momentum are *set* from `(η₀, c₀, epoch, step in epoch)`, and the
    restart happens exactly when the epoch index equals a milestone. So
    `fit(..., initial_epoch=k)` continues exactly like an uninterrupted run,
    provided the optimizer state (W⁰, V, α, t) is restored with the weights,
    as `BackupAndRestore` or a `.keras` checkpoint do. η₀ and c₀ are read
    from the optimizer when the callback first sees the model (before
    `BackupAndRestore` restores anything); when you resume from a checkpoint
    whose optimizer was already rescaled, pass `learning_rate` and `momentum`
    (the stage-0 values) explicitly. Step counts in the last `"ramda"` stage
    use the epoch length Keras knows (`steps_per_epoch` or the dataset's
    cardinality); if it is unknown they are counted during the first epoch.
    With no milestones the schedule keeps η₀ and c₀ for the whole run.

    Args:
        milestones: increasing positive epoch numbers (may be empty).
        lr_factor: γ, multiplies the learning rate at each milestone (> 0).
        momentum_rule: `"ramda"`, `"iclr"` or None.
        learning_rate: η₀; defaults to the optimizer's value at first sight.
        momentum: c₀; defaults to the optimizer's value at first sight.
        restart: call `optimizer.restart()` at the milestones.
        verbose: 1 prints a line at each stage change.
    """

    def __init__(self, milestones, lr_factor=0.1, momentum_rule="ramda",
                 learning_rate=None, momentum=None, restart=True, verbose=0):
        super().__init__()
        self.milestones = _check_milestones(milestones)
        if not isinstance(lr_factor, (int, float)) or not lr_factor > 0:
            raise ValueError(f"`lr_factor` must be a number > 0. Received: lr_factor={lr_factor!r}")
        if momentum_rule not in MOMENTUM_RULES:
            raise ValueError(
                f"`momentum_rule` must be one of {MOMENTUM_RULES}. "
                f"Received: momentum_rule={momentum_rule!r}"
            )
        self.lr_factor = float(lr_factor)
        self.momentum_rule = momentum_rule
        self.learning_rate = _as_float32(learning_rate)
        self.momentum = _as_float32(momentum)
        self.restart = bool(restart)
        self.verbose = verbose
        self._epoch = 0
        self._counted_steps = None  # epoch length when Keras does not know it
        self._batches_this_epoch = 0

    # --- the schedule as a pure function of the epoch -------------------------

    def stage(self, epoch):
        """Milestones passed at the 0-based epoch index `epoch`."""
        return sum(1 for m in self.milestones if m <= epoch)

    def learning_rate_at(self, epoch):
        """η of the 0-based epoch `epoch`."""
        return self.learning_rate * self.lr_factor ** self.stage(epoch)

    def momentum_at(self, epoch, step=0, steps_per_epoch=None):
        """c at step `step` (0-based) of the 0-based epoch `epoch`."""
        n = self.stage(epoch)
        if self.momentum_rule == "iclr":
            return min(self.momentum / self.lr_factor**n, 1.0)
        if self.momentum_rule is None or epoch < self._ramp_start():
            return self.momentum
        if steps_per_epoch is None and epoch > self._ramp_start():
            raise ValueError(
                "StageSchedule(momentum_rule='ramda') needs the number of steps "
                "per epoch after the epoch before the last milestone: pass "
                "`steps_per_epoch` to fit."
            )
        k = (epoch - self._ramp_start()) * (steps_per_epoch or 0) + step + 2
        return min(self.momentum * math.sqrt(k), 1.0)

    def _ramp_start(self):
        """0-based epoch from which the "ramda" rule raises c (never without milestones)."""
        return self.milestones[-1] - 1 if self.milestones else math.inf

    # --- Keras hooks ----------------------------------------------------------

    def set_model(self, model):
        super().set_model(model)
        optimizer = getattr(model, "optimizer", None)
        if optimizer is None:
            return
        if self.learning_rate is None:
            self.learning_rate = _learning_rate_of(optimizer)
        dual = self._dual_averaging()
        if self.momentum is None and dual is not None:
            self.momentum = _as_float32(keras.ops.convert_to_numpy(dual.momentum))

    def on_train_begin(self, logs=None):
        if self.learning_rate is None:
            raise ValueError("StageSchedule needs a compiled model (no optimizer found).")
        _learning_rate_of(self.model.optimizer)  # fails early on a schedule

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._batches_this_epoch = 0
        lr = self.learning_rate_at(epoch)
        self.model.optimizer.learning_rate = lr
        dual = self._dual_averaging()
        if epoch in self.milestones and self.restart and hasattr(dual, "restart"):
            dual.restart()
        if epoch in self.milestones and self.verbose:
            print(f"\nStageSchedule: stage {self.stage(epoch)} from epoch {epoch + 1}, "
                  f"learning rate {lr:.4g}")
        if dual is not None and self.momentum_rule is not None:
            dual.momentum = self._momentum(epoch, 0)

    def on_train_batch_begin(self, batch, logs=None):
        self._batches_this_epoch = batch + 1
        dual = self._dual_averaging()
        if (dual is not None and self.momentum_rule == "ramda"
                and self._epoch >= self._ramp_start()):
            dual.momentum = self._momentum(self._epoch, batch)

    def on_epoch_end(self, epoch, logs=None):
        if self.params.get("steps") is None and self._counted_steps is None:
            self._counted_steps = self._batches_this_epoch
        if logs is not None:
            logs["learning_rate"] = float(self.learning_rate_at(epoch))
            dual = self._dual_averaging()
            if dual is not None:
                logs["momentum"] = float(keras.ops.convert_to_numpy(dual.momentum))

    # --- helpers --------------------------------------------------------------

    def _momentum(self, epoch, step):
        steps = self.params.get("steps") if self.params else None
        return self.momentum_at(epoch, step, steps or self._counted_steps)

    def _dual_averaging(self):
        """The optimizer whose momentum and restart the schedule drives, or None."""
        optimizer = structure.structured_optimizer_of(self.model)
        if optimizer is not None and hasattr(optimizer, "restart") and hasattr(
            optimizer, "momentum"
        ):
            return optimizer
        return None

    def get_config(self):
        return {
            "milestones": list(self.milestones), "lr_factor": self.lr_factor,
            "momentum_rule": self.momentum_rule, "learning_rate": self.learning_rate,
            "momentum": self.momentum, "restart": self.restart,
        }


def _check_milestones(milestones):
    try:
        values = [int(m) for m in milestones]
    except (TypeError, ValueError):
        raise ValueError(
            f"`milestones` must be a list of positive ints. Received: milestones={milestones!r}"
        ) from None
    if any(v != m for v, m in zip(values, milestones)) or any(v < 1 for v in values) or any(
        b <= a for a, b in zip(values, values[1:])
    ):
        raise ValueError(
            "`milestones` must be strictly increasing positive ints (epochs, "
            f"1-based). Received: milestones={list(milestones)!r}"
        )
    return tuple(values)


def _learning_rate_of(optimizer):
    """The optimizer's float learning rate; raises if it is a schedule or a callable.

    A float learning rate is one of the optimizer's own variables (the one
    `optimizer.learning_rate = x` assigns, also through a
    `LossScaleOptimizer`); for a `LearningRateSchedule` or a callable the
    `learning_rate` property returns the value it computes instead.
    """
    lr = optimizer.learning_rate
    if not any(lr is variable for variable in optimizer.variables):
        raise ValueError(
            "StageSchedule sets the learning rate itself; the optimizer has a "
            f"learning-rate schedule ({_schedule_name(optimizer)}). Pass a float "
            "learning_rate to the optimizer."
        )
    return _as_float32(keras.ops.convert_to_numpy(lr))


def _schedule_name(optimizer):
    """The class of the optimizer's learning-rate schedule, for the error message."""
    try:
        config = getattr(optimizer, "inner_optimizer", optimizer).get_config()
        learning_rate = config["learning_rate"]
    except Exception:  # Keras cannot serialise every callable (a lambda, an object)
        return "callable"
    # A serialised LearningRateSchedule (or function) is a dict naming its class.
    if isinstance(learning_rate, dict):
        return learning_rate.get("class_name", "callable")
    return "callable"


def _as_float32(value):
    # The optimizer holds float32 variables: rounding the stage-0 values the
    # same way whether given or read back makes resumed runs bit-identical.
    return None if value is None else float(np.float32(value))
