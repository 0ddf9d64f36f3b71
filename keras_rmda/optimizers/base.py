"""What every proximal optimizer of keras_rmda shares.

`ProximalOptimizer` reads each variable's grouping once, in `build()`, and
keeps it by variable index: under `tf.distribute`, `update_step` receives
raw `tf.Variable`s without `.constraint`. It prepares each gradient (coupled
weight decay, non-finite entries made zero) and hands the variable's
proximal map to the subclass's `update_step`, which calls its optimizer's
pure update function and assigns the result, as Keras's own optimizers do.
Groups that span several variables (attention heads, MLP neurons) are
updated together, as one joint variable (see `joint`).

Only public Keras and TensorFlow APIs are used here: the variable index is
this class's own (see `VariableIndex`), and weight decay is coupled by this
class, not by Keras's (decoupled) base implementation.
"""

import contextlib
import re
import warnings

import keras
from keras import ops

from keras_rmda import _checks
from keras_rmda import groups as groups_lib
from keras_rmda import regularizers as regularizers_lib
from keras_rmda.optimizers import joint as joint_lib
from keras_rmda.optimizers.variable_index import DecayExclusions
from keras_rmda.optimizers.variable_index import VariableIndex


def proximal_optimizer_of(model_or_optimizer):
    """The `ProximalOptimizer` behind a model or a (loss-scale) optimizer."""
    optimizer = getattr(model_or_optimizer, "optimizer", model_or_optimizer)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    return optimizer if isinstance(optimizer, ProximalOptimizer) else None


def init_scope():
    """`tf.init_scope()` on TensorFlow (eager code inside a traced function)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.init_scope()
    return contextlib.nullcontext()


def zero_non_finite(gradient):
    """The gradient with NaN and Inf entries replaced by 0.

    A select that fuses into the update that reads the gradient (no pass of
    its own under XLA), so no NaN or Inf can reach weights or optimizer
    state; like `optax.zero_nans`, for Inf too.
    """
    return ops.where(ops.isfinite(gradient), gradient, 0.0)


class ProximalOptimizer(keras.optimizers.Optimizer):
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
            Decoupled decay would be undone by dual averaging. Kept as
            `l2_weight_decay` (Keras's `weight_decay` attribute means the
            decoupled kind and stays None).
        use_ema: not supported (an average of iterates loses the exact
            zeros); True raises ValueError.

    Gradient entries that are NaN or Inf count as 0: no NaN or Inf ever
    reaches the weights or the optimizer state.
    """

    def __init__(
        self,
        learning_rate,
        regularizer=None,
        groups="auto",
        finalize=True,
        use_ema=False,
        weight_decay=None,
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
        kwargs = _checks.optimizer_kwargs({**kwargs, "weight_decay": weight_decay})
        weight_decay = kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.regularizer = regularizers_lib.get(regularizer)
        self.groups = groups
        self.finalize = bool(finalize)
        self.l2_weight_decay = weight_decay
        self._decay_excluded = DecayExclusions([], None)
        self._saved_groupings = {}

    @property
    def learning_rate(self):
        return keras.optimizers.Optimizer.learning_rate.fget(self)

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        # Callbacks (ReduceLROnPlateau, LearningRateScheduler, StageSchedule)
        # set it between steps: a nan there would silently ruin the weights.
        learning_rate = _checks.learning_rate(learning_rate)
        keras.optimizers.Optimizer.learning_rate.fset(self, learning_rate)

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Exclude variables (or those whose name contains one of
        `var_names`) from the coupled weight decay; call before `build`."""
        if self.built:
            raise ValueError(
                "`exclude_from_weight_decay()` can only be configured before "
                "the optimizer is built."
            )
        pattern = "|".join(re.escape(name) for name in var_names) if var_names else None
        self._decay_excluded = DecayExclusions(list(var_list or []), pattern)

    # --- build: groups read once, kept by variable index ---------------------

    def build(self, variables):
        if self.built:
            return
        self._restore_saved_groupings(variables)
        # Resolve and check every grouping before any state is created.
        resolved = [self._resolve_groups(v) for v in variables]
        # Shared groups become joint variables, at positions after the model
        # variables' (only the group LASSO couples the members' weights).
        joint = joint_lib.JointVariables(variables, [r[0] for r in resolved], self.regularizer)
        super().build(variables)
        self.variable_index = VariableIndex(variables)
        self._joint = joint
        self._variable_groups = [r[0] for r in resolved] + joint.groups
        self._constraints = [r[1] for r in resolved] + [None] * len(joint.groups)
        self._decayed = [self._uses_weight_decay(v) for v in variables]
        if self.gradient_accumulation_steps:
            self._apply_calls = self.add_scalar("apply_calls", 0, dtype="int64")
        self._warn_about_unclassified_kernels(variables)

    def _restore_saved_groupings(self, variables):
        """Put back the groupings this optimizer's config saved (see
        `get_config`) on the variables that lost them, by path: groupings
        attached after a layer was built (`declare_transformer`) are not in
        its config."""
        for variable in variables:
            saved = self._saved_groupings.get(variable.path)
            if saved is not None and not isinstance(variable.constraint, groups_lib.Grouping):
                variable.constraint = saved

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

    def _uses_weight_decay(self, variable):
        if self.l2_weight_decay is None:
            return False
        excluded = self._decay_excluded
        if any(variable is v for v in excluded.variables):
            return False
        return excluded.pattern is None or re.search(excluded.pattern, variable.name) is None

    def _warn_about_unclassified_kernels(self, variables):
        if self.regularizer is not None and self.groups == "auto":
            message = groups_lib.left_out_by_auto_warning(type(self).__name__, variables)
            if message:
                warnings.warn(message, stacklevel=3)

    @property
    def _model_variables(self):
        return self.variable_index.variables

    def add_scalar(self, name, value=0.0, dtype="float32"):
        """A scalar optimizer variable, written once per step for the whole
        optimizer (under a strategy: from the first replica).

        Also for hyperparameters a callback changes between steps (c, ε): a
        Python float would be frozen into the traced train step.
        """
        return self.add_variable(
            (), initializer=keras.initializers.Constant(value), dtype=dtype,
            aggregation="only_first_replica", name=name,
        )

    def add_slots(self, variables, name, initializer="zeros"):
        """One optimizer variable of each model variable's shape.

        `initializer(variable)` gives a variable's initializer (default:
        zeros). Created eagerly (`tf.init_scope`), also when `apply` builds
        the optimizer inside a traced step, which cannot lift a creation
        that reads the model's weights.
        """
        with init_scope():
            return [
                self.add_variable_from_reference(
                    v, name, initializer if isinstance(initializer, str) else initializer(v))
                for v in variables
            ]

    def tracks(self, variable):
        """True if the optimizer was built on this model variable."""
        return self.built and self.variable_index.get(variable) is not None

    def groups_of(self, variable):
        """The resolved `VariableGroups` of a model variable (None: unregularised)."""
        return self._variable_groups[self.variable_index(variable)]

    # --- the step ---------------------------------------------------------------

    def apply(self, grads, trainable_variables=None):
        """Keras's `apply`, between `begin_step` and `end_step`.

        Keras calls `update_step` once per variable; state that is one per
        optimizer (a stage's t and α, Adam's step count) advances once per
        step, in `begin_step`.
        """
        if not self.built and trainable_variables is not None:
            with keras.name_scope(self.name, caller=self):
                self.build(list(trainable_variables))
            self.built = True
        if not self.built or not len(grads):
            return super().apply(grads, trainable_variables)
        self._joint.check_gradients(
            grads, self._model_variables if trainable_variables is None else trainable_variables,
            self.variable_index)
        updating = self._updating_call()
        self.begin_step(updating)
        super().apply(grads, trainable_variables)
        self.end_step(updating)

    def _updating_call(self):
        """None when every call updates the weights; with
        `gradient_accumulation_steps`, a scalar bool (this class's own count
        of calls, as the meaning of Keras's `iterations` changed with it)."""
        steps = self.gradient_accumulation_steps
        if not steps:
            return None
        calls = self._apply_calls + 1
        self._apply_calls.assign(calls)
        return ops.equal(ops.mod(calls, steps), 0)

    def begin_step(self, updating):
        """Advance the optimizer-wide state, where `updating` (None: always)."""

    def end_step(self, updating):
        """Runs after Keras's `apply` (weights updated, constraints applied)."""

    @staticmethod
    def advanced(updating, new, old):
        """`new` where this call updates the weights, else `old`."""
        if updating is None:
            return new
        return ops.where(updating, ops.convert_to_tensor(new), ops.convert_to_tensor(old))

    # --- what update_step uses -------------------------------------------------

    def target(self, gradient, variable):
        """What this `update_step` call updates: a `joint.Target` for the
        variable, or for its joint variable once the last member's gradient
        has arrived; None while other members of its shared groups are
        still to come (their update then includes this variable)."""
        index = self.variable_index(variable)
        gradient = self.prepared_gradient(index, gradient, variable)
        return self._joint.target(index, variable, gradient)

    def read(self, slots, index):
        """Slot `slots[index]`, or the joint variable's from its members'."""
        joint = self._joint.at(index)
        if joint is None:
            return ops.convert_to_tensor(slots[index])
        return joint_lib.joined([slots[m] for m in joint.members], joint.axes)

    def write(self, slots, index, value):
        """Assign `value` to slot `slots[index]` (split among a joint
        variable's members)."""
        joint = self._joint.at(index)
        if joint is None:
            self.assign(slots[index], value)
            return
        for member, part in zip(joint.members, self._joint.split(joint, value)):
            self.assign(slots[member], part)

    def write_weights(self, target, weights):
        """Assign the new weights to the target's variable(s)."""
        joint = self._joint.at(target.index)
        parts = [weights] if joint is None else self._joint.split(joint, weights)
        for variable, part in zip(target.variables, parts):
            self.assign(variable, part)

    def joint_set_of(self, variable_or_index):
        """The `joint.JointSet` a model variable belongs to, or None."""
        index = variable_or_index
        if not isinstance(index, int):
            index = self.variable_index(variable_or_index)
        return self._joint.set_of(index)

    def regularized(self, index):
        return self.regularizer is not None and self._variable_groups[index] is not None

    def prox_map(self, index):
        """`prox(z, step)`: prox of `step·λψ` for variable `index` at z
        (identity for an unregularised variable)."""
        if not self.regularized(index):
            return lambda z, step: z
        groups = self._variable_groups[index]
        scale = self.regularizer.threshold_scale(groups)

        def prox(z, step):
            return self.regularizer.prox(z, ops.cast(step, z.dtype) * scale, groups)

        return prox

    def prepared_gradient(self, index, gradient, variable):
        """The gradient in the variable's dtype, non-finite entries zeroed,
        plus the coupled weight decay."""
        gradient = zero_non_finite(ops.cast(gradient, variable.dtype))
        if self._decayed[index]:
            gradient = gradient + ops.cast(self.l2_weight_decay, variable.dtype) * variable
        return gradient

    def constrained(self, index, weights):
        """`weights` under the variable's non-grouping constraint (if any)."""
        constraint = self._constraints[index]
        return weights if constraint is None else constraint(weights)

    # --- end of fit ------------------------------------------------------------

    def prox_point(self, variable):
        """The point whose structure the optimizer guarantees (default: W)."""
        return ops.convert_to_tensor(variable)

    def finalize_variable_values(self, var_list):
        """Set every variable to its prox point when `finalize=True`."""
        if not self.finalize or not self.built:
            return
        for variable in [v for v in var_list if self.tracks(v)]:
            variable.assign(self.prox_point(variable))

    def penalty(self, variables=None):
        """λψ summed over `variables` (default: all the optimizer was built on)."""
        total = ops.convert_to_tensor(0.0)
        if self.regularizer is None:
            return total
        indices = {self.variable_index(v) for v in variables or self._model_variables}
        for index in sorted(indices):
            if self._joint.set_of(index) is None:
                total = total + ops.cast(self.regularizer.penalty(
                    self._model_variables[index], self._variable_groups[index]), "float32")
        for joint in self._joint.sets:  # a shared group counts once
            if indices.intersection(joint.members):
                value = joint_lib.joined(
                    [self._model_variables[m] for m in joint.members], joint.axes)
                penalty = self.regularizer.penalty(value, self._variable_groups[joint.index])
                total = total + ops.cast(penalty, "float32")
        return total

    def get_config(self):
        config = super().get_config()
        for key in ("use_ema", "ema_momentum", "ema_overwrite_frequency"):
            config.pop(key, None)
        config.update(
            {
                "regularizer": (
                    None
                    if self.regularizer is None
                    else keras.saving.serialize_keras_object(self.regularizer)
                ),
                "groups": self.groups,
                "finalize": self.finalize,
                "weight_decay": self.l2_weight_decay,
            }
        )
        if self.built:
            # The variables' groupings by path, so that `.keras` files keep
            # those no layer config holds.
            config["groupings"] = {
                v.path: keras.saving.serialize_keras_object(v.constraint)
                for v in self._model_variables
                if isinstance(getattr(v, "constraint", None), groups_lib.Grouping)
            }
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if isinstance(config.get("regularizer"), dict):
            config["regularizer"] = keras.saving.deserialize_keras_object(
                config["regularizer"], custom_objects=custom_objects
            )
        groupings = config.pop("groupings", None) or {}
        optimizer = super().from_config(config, custom_objects=custom_objects)
        optimizer._saved_groupings = {
            path: keras.saving.deserialize_keras_object(grouping, custom_objects=custom_objects)
            for path, grouping in groupings.items()
        }
        return optimizer
