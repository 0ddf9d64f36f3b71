"""Declarations of how a variable's weights are grouped.

A grouping is a Keras constraint so that it travels with the layer through
`get_config` and `.keras` files. The optimizers read it (in `build`) and
their proximal step makes whole groups exactly zero.

    keras.layers.Conv2D(64, 3, kernel_constraint=InputChannels())
    keras.layers.Dense(10, kernel_constraint=InputUnits(strength=2.0))

`strength` multiplies the regulariser's λ for that variable (per-layer λ).
A group's weight in the group LASSO is √|g|, |g| its number of weights.
A variable has one constraint, so a grouping carries any other constraint
it needs, `InputUnits(constraint=keras.constraints.NonNeg())`, and applies
it as that constraint alone would be; without one it leaves weights as
they are.

Groups may span several variables: `SharedGroups(key, axis)` joins index i
along `axis` of every variable declaring `key` into group i (an MLP neuron:
a column of the up-projection, its bias entry and a row of the
down-projection), and `AttentionHeads()` on a `MultiHeadAttention` makes
one group per head. `declare_transformer(model)` attaches both.

With `groups="auto"` (the optimizers' default) a variable without a grouping
is classified from its path, and only when that is certain: the kernel of a
layer with Keras's default name for `Dense` (`dense`, `dense_3`, ...) gets
`InputUnits`, the kernel of a default-named `Conv1D/2D/3D` gets
`InputChannels`, everything else is unregularised (the optimizers warn,
naming every kernel so left out). `declare_auto(model)` attaches the same
choices by layer *type* (so renamed layers, depthwise and transposed
convolutions are covered too), for users who want to see and edit them.
"""

from keras_rmda.groups.declare import auto_grouping
from keras_rmda.groups.declare import declare_auto
from keras_rmda.groups.declare import declare_transformer
from keras_rmda.groups.declare import grouping_of
from keras_rmda.groups.declare import left_out_by_auto
from keras_rmda.groups.declare import left_out_by_auto_warning
from keras_rmda.groups.declare import looks_like_kernel
from keras_rmda.groups.declare import validate_groups_argument
from keras_rmda.groups.groupings import AlongAxis
from keras_rmda.groups.groupings import AttentionHeads
from keras_rmda.groups.groupings import Elementwise
from keras_rmda.groups.groupings import Grouping
from keras_rmda.groups.groupings import InputChannels
from keras_rmda.groups.groupings import InputUnits
from keras_rmda.groups.groupings import OutputChannels
from keras_rmda.groups.groupings import OutputUnits
from keras_rmda.groups.groupings import SharedGroups
from keras_rmda.groups.groupings import Unregularized
from keras_rmda.groups.groupings import VariableGroups
