"""Step time of RMDA against SGD with momentum on Keras's JAX backend (GPU).

The accelerator machine has JAX but no TensorFlow, so this runs the
package's update rules (written with `keras.ops`) through Keras's JAX
backend, the way Keras's JAX trainer does: one `jax.jit`-compiled step of
`stateless_call` + `value_and_grad` + `optimizer.stateless_apply`, with the
state donated so updates happen in place.

1. Training steps, batch 128, on data already on the device: LeNet-5
   (6-16-120-84, MNIST shape) and VGG19-BN (CIFAR-10 shape), RMDA(GroupLasso)
   against `keras.optimizers.SGD(momentum=0.9)`.
2. The optimizer update alone on the ~25M-parameter kernel set of
   `benchmarks/step_time.py`: RMDA(GroupLasso), RMDA(L1) against SGD.

Repeats are interleaved (A B A B ...) and the median ratio is printed.

    KERAS_BACKEND=jax python benchmarks/accelerator_step_time.py [--repeats 7]
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_rmda as kr  # noqa: E402
from timing import big_variable_set  # noqa: E402
from timing import interleaved_medians  # noqa: E402

BATCH = 128


def make_optimizer(name):
    return {
        "sgd": lambda: keras.optimizers.SGD(0.01, momentum=0.9),
        # finalize=False: the prox point at the end of fit is not part of a step.
        "group_lasso": lambda: kr.RMDA(0.1, 0.1, regularizer=kr.GroupLasso(1e-4),
                                       finalize=False),
        "l1": lambda: kr.RMDA(0.1, 0.1, regularizer=kr.L1(1e-4), finalize=False),
    }[name]()


def training_steps(model_name, input_shape, optimizer_name, steps):
    """A function running `steps` jitted training steps on device-resident data."""
    keras.utils.set_random_seed(0)
    model = kr.models.build(model_name, 10, input_shape)
    optimizer = make_optimizer(optimizer_name)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.normal(size=(BATCH,) + input_shape).astype("float32"))
    y = jax.device_put(rng.integers(0, 10, size=BATCH).astype("int32"))

    def loss(trainable, non_trainable):
        logits, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
        return loss_fn(y, logits), non_trainable

    def step(state, _):
        trainable, non_trainable, optimizer_state = state
        (_, non_trainable), grads = jax.value_and_grad(loss, has_aux=True)(
            trainable, non_trainable)
        trainable, optimizer_state = optimizer.stateless_apply(optimizer_state, grads, trainable)
        return (trainable, non_trainable, optimizer_state), None

    @jax.jit
    def many_steps(state):
        return jax.lax.scan(step, state, None, length=steps)[0]

    state = ([v.value for v in model.trainable_variables],
             [v.value for v in model.non_trainable_variables],
             [v.value for v in optimizer.variables])
    holder = {"state": jax.block_until_ready(many_steps(state))}  # compile and warm up

    def run():
        holder["state"] = jax.block_until_ready(many_steps(holder["state"]))

    return run, sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def update_alone(optimizer_name, updates, distinct=4):
    variables = big_variable_set()
    optimizer = make_optimizer(optimizer_name)
    optimizer.build(variables)
    # `distinct` stored gradients used in turn, as backprop would write them:
    # with one loop-invariant gradient XLA would hoist the non-finite check
    # out of the loop, and computing one per step would add passes.
    rng = np.random.default_rng(1)
    stacks = [jax.device_put((1e-3 * rng.standard_normal((distinct,) + tuple(v.shape)))
                             .astype("float32")) for v in variables]

    def update(state, step):
        trainable, optimizer_state = state
        grads = [jax.lax.dynamic_index_in_dim(s, step % distinct, keepdims=False)
                 for s in stacks]
        trainable, optimizer_state = optimizer.stateless_apply(optimizer_state, grads, trainable)
        return (trainable, optimizer_state), None

    @jax.jit
    def many_updates(state):
        return jax.lax.scan(update, state, jax.numpy.arange(updates))[0]

    holder = {"state": jax.block_until_ready(many_updates(
        ([v.value for v in variables], [v.value for v in optimizer.variables])))}

    def run():
        holder["state"] = jax.block_until_ready(many_updates(holder["state"]))

    return run, sum(int(np.prod(v.shape)) for v in variables)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=50, help="steps per timed repeat")
    parser.add_argument("--parts", default="train,update",
                        help="comma-separated: train (training steps), update (update alone)")
    args = parser.parse_args()
    parts = args.parts.split(",")
    device = jax.devices()[0]
    print(f"JAX {jax.__version__}, Keras {keras.__version__}, backend "
          f"{keras.backend.backend()}, device {device.device_kind} ({device.platform}); "
          f"interleaved repeats: {args.repeats}, {args.steps} steps each")

    models = (("lenet5", (28, 28, 1)), ("vgg19", (32, 32, 3))) if "train" in parts else ()
    for model_name, shape in models:
        runs, n = {}, 0
        for name in ("sgd", "group_lasso"):
            runs[name], n = training_steps(model_name, shape, name, args.steps)
        medians = interleaved_medians(runs, args.repeats)
        per_step = {k: f"{1e3 * v / args.steps:.3f} ms" for k, v in medians.items()}
        print(f"train step {model_name} ({n / 1e6:.2f}M params), batch {BATCH}: {per_step}  "
              f"step_ratio {model_name} {medians['group_lasso'] / medians['sgd']:.3f}")

    if "update" not in parts:
        return
    runs, n = {}, 0
    for name in ("sgd", "group_lasso", "l1"):
        runs[name], n = update_alone(name, args.steps)
    medians = interleaved_medians(runs, args.repeats)
    per_update = {k: f"{1e3 * v / args.steps:.3f} ms" for k, v in medians.items()}
    print(f"update alone, {n / 1e6:.1f}M parameters: {per_update}")
    print(f"update_ratio group_lasso {medians['group_lasso'] / medians['sgd']:.3f} "
          f"l1 {medians['l1'] / medians['sgd']:.3f}")


if __name__ == "__main__":
    main()
