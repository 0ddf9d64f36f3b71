"""A fingerprint of a model's weights, to notice writes from outside.

A strided sample of every variable's weights, in one float32 vector: the
dual-averaging optimizers record it after each step and compare it with the
weights before the next, one comparison for the whole model.
"""

import math

from keras import ops

# At most this many weights of each variable enter the fingerprint: any
# write that replaces a tensor (`set_weights`, `load_weights`) changes them,
# and a small fingerprint is compared in one reduction kernel on a GPU.
SAMPLES_PER_VARIABLE = 256

# Relative to the largest recorded weight. The recorded sample is read from
# the stored weights, but XLA may recompute a sampled weight inside the
# sampling loop with another rounding (FMA or not): an ulp of the operands.
# A real change is far larger.
RELATIVE_TOLERANCE = 1e-5


def sample_size(shape):
    """The number of weights a variable of `shape` contributes."""
    size = math.prod(int(d) for d in shape)
    return len(range(0, size, _stride(size)))


def _stride(size):
    return max(1, -(-size // SAMPLES_PER_VARIABLE))


def fingerprint(variables):
    """The concatenated strided samples of `variables`, in float32.

    A change confined to unsampled weights of a large variable goes
    unnoticed; a write that replaces the tensor never does.
    """
    samples = []
    for w in variables:
        w = ops.convert_to_tensor(w)
        if len(w.shape) != 1:  # a reshape to the same shape is still an op to trace
            w = ops.reshape(w, (-1,))
        stride = _stride(int(w.shape[0]))
        samples.append(ops.cast(w[::stride] if stride > 1 else w, "float32"))
    return ops.concatenate(samples) if len(samples) > 1 else samples[0]


def differs(current, recorded):
    """Scalar bool: do two fingerprints differ by more than rounding?"""
    largest_change = ops.max(ops.abs(current - recorded))
    return largest_change > RELATIVE_TOLERANCE * ops.max(ops.abs(recorded))
