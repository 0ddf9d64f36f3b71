"""Small per-variable optimizer state, packed into one variable per quantity.

A scalar step count per model variable would be one optimizer variable per
model variable, and every variable a compiled call reads is one more
argument to pass and lock (LeNet-5 `fit` step without `jit_compile`: reading
20 such scalars cost about 3% of the step, one shared vector a call nothing
measurable). So `t`, `α` and the fingerprints live in one float32 vector
each, and every model variable owns an `Entry` of it: still per-variable
state, in a single variable. Measured on the whole step: with `jit_compile`
1.08-1.09x -> 1.05-1.06x SGD's; without it no change, as the calls that
all write a shared vector now run one after another.

Inside a compiled call each entry write is a kernel of its own (a dynamic
update slice, often with a copy of the table: LeNet-5's calls ran 55 XLA
kernels for two variables, 30 of them for the tables), so `held_writes`
holds them back and writes each table once when the call's rules are done
(35 kernels; `fit` step without `jit_compile` 1.11-1.14x -> 1.06-1.11x SGD's).
"""

import contextlib
import itertools
import math

from keras import ops


class Entry:
    """Model variable `index`'s part of a `Table`: `shape` values from `start`."""

    def __init__(self, owner, start, shape):
        self.owner = owner
        self.table = owner.variable
        self.start = start
        self.shape = tuple(shape)
        self.size = math.prod(self.shape)

    def read(self):
        held = self.owner.held
        if held is not None and self in held:
            return ops.reshape(held[self], self.shape)
        values = ops.slice(ops.convert_to_tensor(self.table), (self.start,), (self.size,))
        return ops.reshape(values, self.shape)

    def flat(self, value):
        return ops.reshape(ops.cast(value, self.table.dtype), (self.size,))

    def table_with(self, value):
        """The whole table with this entry set to `value`."""
        return ops.slice_update(ops.convert_to_tensor(self.table), (self.start,), self.flat(value))


class Table:
    """One optimizer variable holding an entry of `shapes[i]` for variable i."""

    def __init__(self, optimizer, shapes, name):
        sizes = [math.prod(shape) for shape in shapes]
        self.variable = optimizer.add_variable(
            (max(1, sum(sizes)),), initializer="zeros", dtype="float32", name=name
        )
        starts = itertools.accumulate(sizes, initial=0)
        self.entries = [Entry(self, s, shape) for s, shape in zip(starts, shapes)]
        # {entry: flat value} written but not yet stored, inside `held_writes`.
        self.held = None

    def __getitem__(self, index):
        return self.entries[index]

    def __len__(self):
        return len(self.entries)

    def with_entries(self, values):
        """The whole table with `{entry: value}` set, built in one piece (one
        pass, where setting n entries one by one would copy the table n times)."""
        table = ops.convert_to_tensor(self.variable)
        pieces, position = [], 0
        for entry in sorted(values, key=lambda e: e.start):
            if entry.start > position:
                pieces.append(ops.slice(table, (position,), (entry.start - position,)))
            pieces.append(entry.flat(values[entry]))
            position = entry.start + entry.size
        if position < table.shape[0]:
            pieces.append(ops.slice(table, (position,), (table.shape[0] - position,)))
        return ops.concatenate(pieces) if len(pieces) > 1 else pieces[0]


def write(assign, entry, value):
    """Set `entry` to `value`: held inside `held_writes`, else stored now."""
    if entry.owner.held is not None:
        entry.owner.held[entry] = entry.flat(value)
    else:
        assign(entry.table, entry.table_with(value))


@contextlib.contextmanager
def held_writes(tables, assign):
    """Within, `write`s to entries of `tables` are held (and read back by
    `Entry.read`); on a normal exit each table is stored once, with `assign`.
    Nested inside another block for the same tables, it leaves the storing
    to that block."""
    if any(table.held is not None for table in tables):
        yield
        return
    for table in tables:
        table.held = {}
    try:
        yield
    finally:
        held = [(table, table.held) for table in tables]
        for table in tables:
            table.held = None
    for table, values in held:
        if values:
            assign(table.variable, table.with_entries(values))


def assign_all(assign, pairs):
    """`assign(target, value)` for every pair, with ONE write per table for
    its entries (entry by entry, writing n entries would copy the table n
    times: seconds for a restart of a model of a thousand variables).
    `assign` must route entries through `write`, as the optimizer's does."""
    tables = list({id(t.owner): t.owner for t, _ in pairs if is_entry(t)}.values())
    with held_writes(tables, assign):
        for target, value in pairs:
            assign(target, value)


def read(target):
    """The value of a variable or of a table `Entry`."""
    if isinstance(target, Entry):
        return target.read()
    return ops.convert_to_tensor(target)


def is_entry(target):
    return isinstance(target, Entry)

