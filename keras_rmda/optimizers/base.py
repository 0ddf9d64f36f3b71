"""Plumbing shared by every proximal optimizer of keras_rmda.

`ProximalOptimizer` reads each variable's grouping once, in `build()`, and
keeps it by variable index (under `tf.distribute` `update_step` receives raw
`tf.Variable`s without `.constraint`). It folds `weight_decay` into the
gradient, skips a variable's step when its gradient is not finite, commits
the new values a subclass's update rule returns (to variables, or to entries
of `tables`), and keeps a per-variable fingerprint (a small sample) of the
last weights it wrote, so weights changed from outside can be noticed. A
subclass implements `update_rule` (the rule only), or splits it into
`slot_rule` and `weight_rule` (see `update_rule`).
"""

import warnings

import keras
from keras import ops

from keras_rmda import _checks
from keras_rmda import groups as groups_lib
from keras_rmda import regularizers as regularizers_lib
from keras_rmda.optimizers import tables
from keras_rmda.optimizers.finite import all_finite
from keras_rmda.optimizers.fingerprint import fingerprint
from keras_rmda.optimizers.fingerprint import fingerprint_size
from keras_rmda.optimizers.fingerprint import fingerprints_differ
from keras_rmda.optimizers.plain_graph import PlainGraphFusion
from keras_rmda.optimizers.plain_graph import in_xla_context


def proximal_optimizer_of(model_or_optimizer):
    """The `ProximalOptimizer` behind a model or a (loss-scale) optimizer."""
    optimizer = getattr(model_or_optimizer, "optimizer", model_or_optimizer)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    return optimizer if isinstance(optimizer, ProximalOptimizer) else None


class ProximalOptimizer(PlainGraphFusion, keras.optimizers.Optimizer):
    """Base class of optimizers with a proximal step for a regulariser.

    Args:
        learning_rate: a finite float ≥ 0, a `LearningRateSchedule`, or a
            callable; a number set later is checked the same way.
        regularizer: a `keras_rmda` regulariser (`GroupLasso`, `L1`,
            `NuclearNorm`) or None (plain training).
        groups: `"auto"` (default: the paper's grouping for kernels of
            default-named convolution and dense layers, see
            `keras_rmda.groups`) or None (only variables with a declared
            grouping are regularised). A grouping declared as a variable's
            constraint always wins.
        finalize: if True (default), set every variable to its prox point
            when `fit` ends (`finalize_variable_values`), so the model leaves
            `fit` with the optimizer's exact structure.
        weight_decay: coupled L2: `weight_decay · W` is added to the gradient
            (the smooth term ½·wd·‖W‖² in the loss, like PyTorch SGD's
            `weight_decay`); `exclude_from_weight_decay` is honoured.
            Decoupled decay would be undone by dual averaging.
        use_ema: not supported (an average of iterates loses the exact
            zeros); True raises ValueError.

    A step whose gradient for a variable holds NaN or Inf leaves that
    variable and all of its optimizer state unchanged.
    """

    def __init__(
        self,
        learning_rate,
        regularizer=None,
        groups="auto",
        finalize=True,
        use_ema=False,
        **kwargs,
    ):
        if use_ema:
            raise ValueError(
                f"{type(self).__name__} does not support `use_ema=True`: an "
                "exponential average of the iterates is never exactly zero on "
                "a group, so it would undo the structure the proximal step "
                "makes. Received: use_ema=True"
            )
        learning_rate = _checks.learning_rate(learning_rate)
        groups_lib.validate_groups_argument(groups)
        kwargs = _checks.optimizer_kwargs(kwargs)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.regularizer = regularizers_lib.get(regularizer)
        self.groups = groups
        self.finalize = bool(finalize)

    @property
    def learning_rate(self):
        return keras.optimizers.Optimizer.learning_rate.fget(self)

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        # Callbacks (ReduceLROnPlateau, LearningRateScheduler, StageSchedule)
        # set it between steps: a nan there would silently ruin the weights.
        learning_rate = _checks.learning_rate(learning_rate)
        keras.optimizers.Optimizer.learning_rate.fset(self, learning_rate)

    # --- build: groups read once, kept by variable index ---------------------

    def build(self, variables):
        if self.built:
            return
        # Resolve and check every grouping before any state is created.
        resolved = [self._resolve_groups(v) for v in variables]
        super().build(variables)
        self._variable_groups = [r[0] for r in resolved]
        self._extra_constraints = [r[1] for r in resolved]
        self._decayed = [
            self.weight_decay is not None and self._use_weight_decay(v)
            for v in variables
        ]
        self._tables = []
        self._fingerprints = self.add_table(
            [(fingerprint_size(v.shape),) for v in variables], "fingerprints"
        )
        self._fused_updates = {}
        self._warn_about_unclassified_kernels(variables)

    def _resolve_groups(self, variable):
        name = getattr(variable, "path", variable.name)
        grouping = groups_lib.grouping_of(variable, self.groups)
        groups = grouping.resolve(variable.shape, name) if grouping.regularized else None
        if groups is not None and self.regularizer is not None:
            self.regularizer.check(variable.shape, groups, name)
        declared = getattr(variable, "constraint", None)
        # A grouping's inner constraint is applied as the bare one would be.
        if isinstance(declared, groups_lib.Grouping):
            declared = declared.constraint
        return groups, declared

    def _warn_about_unclassified_kernels(self, variables):
        if self.regularizer is None or self.groups != "auto":
            return
        # Every kernel left out, also those with a non-grouping constraint:
        # NonNeg on a renamed layer is no sign the user meant no regulariser.
        unclassified = [
            v.path if getattr(v, "constraint", None) is None
            else f"{v.path} (constraint {type(v.constraint).__name__})"
            for v in variables
            if groups_lib.left_out_by_auto(v)
        ]
        if unclassified:
            warnings.warn(
                f"{type(self).__name__}: groups='auto' left these kernels "
                f"unregularised because their layer type is not certain from "
                f"the variable alone: {unclassified}. Declare a grouping "
                "(kernel_constraint=keras_rmda.groups.InputChannels(), ...; "
                "another constraint goes inside it: InputUnits(constraint="
                "keras.constraints.NonNeg())), call keras_rmda.groups."
                "declare_auto(model) before compile (it keeps such constraints), "
                "or mark them Unregularized() to silence this warning.",
                stacklevel=3,
            )

    def add_table(self, shapes, name):
        """One optimizer variable holding an entry of `shapes[i]` for model
        variable i (a `tables.Table`: small per-variable state)."""
        table = tables.Table(self, shapes, name)
        self._tables.append(table)
        return table

    def add_hyperparameter(self, value, name):
        """A non-trainable scalar variable the traced step reads.

        A variable, not a Python float: callbacks change it between steps,
        and a float would be frozen into the traced train step.
        """
        with keras.name_scope(self.name, caller=self):
            return keras.Variable(
                value,
                name=name,
                dtype=keras.backend.floatx(),
                trainable=False,
                aggregation="only_first_replica",
            )

    def tracks(self, variable):
        """True if the optimizer was built on this model variable."""
        return self.built and self._var_key(variable) in self._trainable_variables_indices

    def groups_of(self, variable):
        """The resolved `VariableGroups` of a model variable (None: unregularised)."""
        return self._variable_groups[self._get_variable_index(variable)]

    # --- the regularised proximal map ----------------------------------------

    def regularized(self, index):
        return self.regularizer is not None and self._variable_groups[index] is not None

    def prox(self, index, z, step_threshold):
        """prox of `step_threshold · λ·ψ` for variable `index` (identity if unregularised)."""
        if not self.regularized(index):
            return z
        groups = self._variable_groups[index]
        threshold = ops.cast(step_threshold, z.dtype) * self.regularizer.threshold_scale(groups)
        return self.regularizer.prox(z, threshold, groups)

    # --- the step: decay, non-finite guard, commit ---------------------------

    def _apply_weight_decay(self, variables):
        """Weight decay is folded into the gradient in `update_step`."""

    def update_step(self, gradient, variable, learning_rate):
        """One variable's step (under XLA, under a strategy, on other backends,
        and in the compiled calls of `PlainGraphFusion` for small variables)."""
        index = self._get_variable_index(variable)
        # Inside XLA a select fuses into the update's pass while a conditional
        # would copy the slots through its outputs; in a plain graph a rarely
        # taken branch costs nothing while a select is one more pass.
        branch_free = in_xla_context() or keras.backend.backend() != "tensorflow"
        self._start_stage_if_due(index, variable, branch_free=branch_free)
        self._update_variable(index, gradient, variable, learning_rate)

    def _update_variable(self, index, gradient, variable, learning_rate, record_fingerprint=True):
        gradient, learning_rate = self._prepare(index, gradient, variable, learning_rate)
        new_weights, slot_updates = self.update_rule(index, variable, gradient, learning_rate)
        new_weights = self._constrain(index, new_weights)
        commits = slot_updates + [(variable, new_weights)]
        if record_fingerprint:
            commits.append((self._fingerprints[index], fingerprint(new_weights)))
        self._commit_if(all_finite(gradient), commits)

    def _prepare(self, index, gradient, variable, learning_rate):
        """The gradient in the variable's dtype with coupled weight decay, and η."""
        gradient = ops.cast(ops.convert_to_tensor(gradient), variable.dtype)
        learning_rate = ops.cast(learning_rate, variable.dtype)
        if self._decayed[index]:
            gradient = gradient + ops.cast(self.weight_decay, variable.dtype) * variable
        return gradient, learning_rate

    def _constrain(self, index, new_weights):
        extra = self._extra_constraints[index]
        # Applied before the fingerprint is taken.
        return new_weights if extra is None else extra(new_weights)

    def _commit_if(self, finite, commits):
        # Selecting on a scalar fuses into the update's single pass under XLA.
        for target, value in commits:
            self.assign(target, ops.where(finite, value, tables.read(target)))

    def assign(self, variable, value):
        """Keras's `assign`, which also sets a `tables.Entry` (`tables.write`)."""
        if tables.is_entry(variable):
            tables.write(super().assign, variable, value)
        else:
            super().assign(variable, value)

    def held_table_writes(self):
        """Context in which entry writes are held, then each table written once."""
        return tables.held_writes(self._tables, self.assign)

    # --- stages: state a subclass resets at restart() and when due -------------

    def stage_due(self, index, variable):
        """Scalar bool: must the variable start a new stage now? (None: no stages)."""
        return None

    def stage_reset(self, index, variable):
        """`[(slot, value), ...]` that starts a new stage from the current weights."""
        return []

    def _start_stage_if_due(self, index, variable, branch_free):
        """Reset the variable's stage state where `stage_due`.

        A stage that is due starts even if this step's gradient turns out not
        finite: the state it resets is unused at t = 0 either way.
        """
        due = self.stage_due(index, variable)
        if due is None:
            return
        if branch_free:
            for slot, value in self.stage_reset(index, variable):
                self.assign(slot, ops.where(due, value, tables.read(slot)))
            return
        import tensorflow as tf

        def reset():
            for slot, value in self.stage_reset(index, variable):
                self.assign(slot, value)

        tf.cond(due, reset, lambda: None)

    def update_rule(self, index, variable, gradient, learning_rate):
        """One variable's step: `(new weights, [(slot, new value), ...])`.

        Pure: the base assigns the values (or drops them on a non-finite
        gradient). Slots are read as they are before the step.

        A rule whose new weights depend on the gradient only through the new
        slot values implements `slot_rule` and `weight_rule` instead; the
        base then runs them in two passes where that is faster.
        """
        if not self._split_rule():
            raise NotImplementedError
        slot_updates = self.slot_rule(index, variable, gradient, learning_rate)
        new_values = {id(slot): value for slot, value in slot_updates}

        def read(slot):
            return new_values[id(slot)] if id(slot) in new_values else tables.read(slot)

        return self.weight_rule(index, variable, read), slot_updates

    def slot_rule(self, index, variable, gradient, learning_rate):
        """The first half of a split rule: `[(slot, new value), ...]`."""
        raise NotImplementedError

    def weight_rule(self, index, variable, read):
        """The second half: the new weights, reading slots' new values as `read(slot)`."""
        raise NotImplementedError

    def _split_rule(self):
        return type(self).slot_rule is not ProximalOptimizer.slot_rule

    def changed_from_outside(self, index, variable):
        """True when `variable` no longer holds the weights this optimizer wrote."""
        return fingerprints_differ(fingerprint(variable), self._fingerprints[index].read())

    def record_fingerprints(self, variables=None):
        """Accept the variables' current weights as written by this optimizer."""
        tables.assign_all(self.assign, [
            (self._fingerprints[self._get_variable_index(v)], fingerprint(v))
            for v in variables or self._trainable_variables
        ])

    # --- end of fit ------------------------------------------------------------

    def prox_point(self, variable):
        """The point whose structure the optimizer guarantees (default: W)."""
        return ops.convert_to_tensor(variable)

    def finalize_variable_values(self, var_list):
        """Set every variable to its prox point when `finalize=True`."""
        if not self.finalize or not self.built:
            return
        tracked = [v for v in var_list if self.tracks(v)]
        for variable in tracked:
            variable.assign(self.prox_point(variable))
        self.record_fingerprints(tracked)

    def penalty(self, variables=None):
        """λψ summed over `variables` (default: all the optimizer was built on)."""
        total = ops.convert_to_tensor(0.0)
        if self.regularizer is None:
            return total
        for variable in variables or self._trainable_variables:
            groups = self.groups_of(variable)
            total = total + ops.cast(self.regularizer.penalty(variable, groups), "float32")
        return total

    def get_config(self):
        config = super().get_config()
        config.pop("use_ema", None)
        config.pop("ema_momentum", None)
        config.pop("ema_overwrite_frequency", None)
        config.update(
            {
                "regularizer": (
                    None
                    if self.regularizer is None
                    else keras.saving.serialize_keras_object(self.regularizer)
                ),
                "groups": self.groups,
                "finalize": self.finalize,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if isinstance(config.get("regularizer"), dict):
            config["regularizer"] = keras.saving.deserialize_keras_object(
                config["regularizer"], custom_objects=custom_objects
            )
        return super().from_config(config, custom_objects=custom_objects)

