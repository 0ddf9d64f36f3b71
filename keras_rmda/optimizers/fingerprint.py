"""Fingerprints of the weights an optimizer wrote, to notice outside changes.

Weights changed between steps by `set_weights` or `load_weights` must start a
new stage instead of being pulled back by the dual average; a small sample
of the weights, kept after every write, tells them apart at no cost.
"""

import math

from keras import ops

# At most this many weights make a variable's fingerprint: enough to see any
# write that replaces the tensor (set_weights, load_weights), at no
# measurable cost.
FINGERPRINT_SAMPLES = 4096

# Two fingerprints of the same weights may differ by rounding: XLA may
# compute the value it stores and the value it fingerprints in different
# fused loops (with and without FMA), off by an ulp of the *operands*, which
# is relative to the tensor's scale, not to a cancelled result near zero.
# A real change is far larger.
FINGERPRINT_RTOL = 1e-5


def fingerprint(w):
    """An evenly strided sample of at most `FINGERPRINT_SAMPLES` weights.

    All weights of a smaller tensor. Compared with `fingerprints_differ`, it
    notices any write that touches a sampled weight by more than rounding,
    which replacing the tensor always does; a change confined to unsampled
    weights of a large tensor goes unnoticed. In float32, so that every
    variable's fingerprint fits one table (`tables.Table`): exact for
    16-bit weights, rounded for float64 ones.
    """
    w = ops.reshape(ops.convert_to_tensor(w), (-1,))
    stride = -(-int(w.shape[0]) // FINGERPRINT_SAMPLES)
    return ops.cast(w[::stride] if stride > 1 else w, "float32")


def fingerprint_size(shape):
    size = math.prod(int(d) for d in shape)
    return len(range(0, size, -(-size // FINGERPRINT_SAMPLES)))


def fingerprints_differ(current, recorded):
    """True if two fingerprints differ by more than rounding."""
    # Two independent reductions over the same shape, which XLA fuses into
    # one loop; `any(|d| > tol(max |recorded|))` would be two loops in a row.
    largest_change = ops.max(ops.abs(current - recorded))
    return largest_change > FINGERPRINT_RTOL * ops.max(ops.abs(recorded))
