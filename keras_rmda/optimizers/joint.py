"""Groups that span several variables, updated as one.

A `SharedGroups` key (an attention head, an MLP neuron) joins index i along
one axis of several variables into group i. The group LASSO's prox of such
a group needs the norm over all its slices, so the variables of a key are
updated together, as one *joint variable*: each member is laid out as rows
(its group axis first, the rest flattened) and the members are
concatenated side by side, `(num_groups, Σ member sizes)`, group i being row
i. Every update rule then runs unchanged on that matrix with one group per
row, and the result is split back into the members. The optimizer state
stays per member variable.

Keras calls `update_step` once per variable; a member's gradient waits in
`Pending` until the last member's arrives, and that call updates them all.
Under a `tf.distribute` strategy each replica's copies wait apart (keyed
by the copy's device), and the last member's update, run in that
replica's update context, writes every member's copy of that replica.
"""

import collections
import math

from keras import ops

from keras_rmda.groups import VariableGroups

# One joint variable: its position after the model variables' (`index`),
# the key, the member variables' positions and their group axes.
JointSet = collections.namedtuple("JointSet", ["index", "key", "members", "axes"])

# What one update works on: a model variable or a joint one. `weights` and
# `gradient` are tensors of its shape (the gradient already prepared);
# `variables` are the model variables (or replica copies) to write.
Target = collections.namedtuple("Target", ["index", "weights", "gradient", "variables"])


def joint_sets(variables, variable_groups):
    """The `JointSet`s of the variables whose groups share a key with others,
    and the matching `VariableGroups` of each joint variable.

    Raises ValueError when the variables of a key disagree on the number of
    groups or on the strength.
    """
    by_key = collections.defaultdict(list)
    for position, groups in enumerate(variable_groups):
        if groups is not None and groups.shared is not None:
            by_key[groups.shared].append(position)
    sets, joint_groups = [], []
    for key, members in by_key.items():
        if len(members) < 2:
            continue  # a key of one variable is an ordinary grouping
        names = [str(getattr(variables[m], "path", variables[m].name)) for m in members]
        counts = [variable_groups[m].num_groups for m in members]
        strengths = [variable_groups[m].strength for m in members]
        if len(set(counts)) > 1 or len(set(strengths)) > 1:
            raise ValueError(
                f"The variables of the shared groups '{key}' must have the same "
                "number of groups along their axes and the same strength. "
                f"Received: {dict(zip(names, zip(counts, strengths)))} "
                "(variable: (groups, strength))."
            )
        sets.append(JointSet(len(variables) + len(sets), key, tuple(members),
                             tuple(variable_groups[m].kept_axis for m in members)))
        size = sum(math.prod(int(d) for d in variables[m].shape) for m in members)
        joint_groups.append(VariableGroups(
            reduce_axes=(1,), kept_axis=0, num_groups=counts[0],
            group_size=size // counts[0], strength=strengths[0], shared=key))
    return sets, joint_groups


def as_rows(tensor, axis):
    """`tensor` as `(size along axis, rest)`: one row per group."""
    rank = len(tensor.shape)
    axis %= rank
    if axis:
        tensor = ops.transpose(tensor, (axis,) + tuple(a for a in range(rank) if a != axis))
    return ops.reshape(tensor, (int(tensor.shape[0]), -1))


def joined(tensors, axes):
    """The joint variable's value from its members' values."""
    return ops.concatenate([as_rows(t, a) for t, a in zip(tensors, axes)], axis=1)


def split(value, shapes, axes):
    """The members' values from the joint variable's `value` (inverse of `joined`)."""
    parts, start = [], 0
    for shape, axis in zip(shapes, axes):
        shape = tuple(int(d) for d in shape)
        moved = (shape[axis],) + tuple(d for a, d in enumerate(shape) if a != axis % len(shape))
        width = math.prod(moved[1:])
        part = ops.reshape(value[:, start:start + width], moved)
        axis %= len(shape)
        if axis:  # the group axis back in its place
            order = list(range(1, len(shape)))
            part = ops.transpose(part, tuple(order[:axis]) + (0,) + tuple(order[axis:]))
        parts.append(part)
        start += width
    return parts


class Pending:
    """Members' prepared gradients waiting for the rest of their joint set.

    A plain object, not a dict attribute of the optimizer: Keras would
    track the variables held in it as the optimizer's own.
    """

    def __init__(self):
        self._waiting = {}

    def clear(self):
        self._waiting = {}

    def add(self, joint, member, variable, gradient):
        """Hold one member; returns all `(variable, gradient)` in member order
        once the set is complete on this variable's device, else None."""
        key = (joint.index, str(getattr(variable, "device", "") or ""))
        waiting = self._waiting.setdefault(key, {})
        waiting[member] = (variable, gradient)
        if len(waiting) < len(joint.members):
            return None
        del self._waiting[key]
        return [waiting[m] for m in joint.members]


class JointVariables:
    """An optimizer's joint variables and their pending members (a plain
    object: Keras would track the variables held by a list attribute)."""

    def __init__(self, variables, variable_groups, regularizer):
        self.sets, self.groups = [], []
        if regularizer is not None and regularizer.couples_groups:
            self.sets, self.groups = joint_sets(variables, variable_groups)
        self.first_index = len(variables)
        self.shapes = [tuple(v.shape) for v in variables]
        self._of_member = {m: joint for joint in self.sets for m in joint.members}
        self.pending = Pending()

    def target(self, index, variable, gradient):
        """The `Target` of one `update_step` call (see `ProximalOptimizer.target`)."""
        joint = self.set_of(index)
        if joint is None:
            return Target(index, variable, gradient, (variable,))
        members = self.pending.add(joint, index, variable, gradient)
        if members is None:
            return None
        variables, gradients = zip(*members)
        # A gradient's static shape can be unknown in a traced step (e.g.
        # a Dense kernel's on a 3-D input); the variable's is always known.
        gradients = [ops.reshape(g, v.shape) for g, v in zip(gradients, variables)]
        return Target(joint.index, joined(variables, joint.axes),
                      joined(gradients, joint.axes), variables)

    def set_of(self, index):
        return self._of_member.get(index)

    def at(self, index):
        """The joint set at position `index` (None for a model variable)."""
        return None if index < self.first_index else self.sets[index - self.first_index]

    def split(self, joint, value):
        return split(value, [self.shapes[m] for m in joint.members], joint.axes)

    def check_gradients(self, grads, variables, variable_index):
        """All members of a joint set get a gradient, or none do: a member
        without one could not take part in its groups' update."""
        self.pending.clear()
        if not self.sets:
            return
        present = {variable_index.get(v) for g, v in zip(grads, variables) if g is not None}
        for joint in self.sets:
            missing = [m for m in joint.members if m not in present]
            if missing and len(missing) < len(joint.members):
                names = [_path(variable_index.variables[m]) for m in missing]
                raise ValueError(
                    f"The shared groups '{joint.key}' span several variables, "
                    f"which are updated together; these have no gradient: {names}. "
                    "Train all of them or none."
                )


def _path(variable):
    return str(getattr(variable, "path", None) or variable.name)
