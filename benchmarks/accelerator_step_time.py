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

`--hlo` counts instead of timing, on whatever JAX device is present (CPU
too): the kernels in the compiled, optimised HLO of the optimizer update
alone (`optimizer.stateless_apply` under `jax.jit`, trainable and optimizer
variables donated as Keras's trainer donates them) on VGG19-BN's trainable
variables (CIFAR shape), RMDA(GroupLasso) and SGD(momentum=0.9). A kernel
is an instruction of the ENTRY computation other than parameter, constant,
tuple, get-tuple-element and bitcast: each fusion, copy, custom-call or
unfused op is one launch on a GPU (control flow, if any, is counted as one
and listed by opcode). Prints each count with its fusions and opcodes,
`hlo_kernels sgd <n> group_lasso <m> l1 <k>`, and last `hlo_kernel_ratio <m / n>`;
the rows go to `benchmarks/results/hlo_kernels_<platform>.json`.

    KERAS_BACKEND=jax python benchmarks/accelerator_step_time.py --hlo [--hlo-dump DIR]

`--hlo-target h100` compiles for an NVIDIA H100 without one, through JAX's
deviceless ahead-of-time path: the CUDA PJRT plugin's compile-only client
runs XLA's GPU pipeline on the target `h100_sxm.txtpb` beside this script
(XLA's `xla/backends/gpu/target_config/specs/h100_sxm.txtpb`). It needs the
plugin of the installed JAX's version, no GPU and no CUDA libraries:

    pip install --no-deps "jax-cuda12-plugin==$V" "jax-cuda12-pjrt==$V"  # V: jax.__version__
"""

import argparse
import collections
import os
import re
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_rmda as kr  # noqa: E402
import record  # noqa: E402
from timing import big_variable_set  # noqa: E402
from timing import interleaved_medians  # noqa: E402

BATCH = 128


def make_optimizer(name, accelerator=None):
    """`accelerator=True` traces the group norms for an accelerator even
    where this process sees none (`GroupLasso.sums_in_runs`)."""
    group_lasso = kr.GroupLasso(1e-4)
    if accelerator:
        group_lasso.sums_in_runs = False
    return {
        "sgd": lambda: keras.optimizers.SGD(0.01, momentum=0.9),
        # finalize=False: the prox point at the end of fit is not part of a step.
        "group_lasso": lambda: kr.RMDA(0.1, 0.1, regularizer=group_lasso, finalize=False),
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


# Instructions that launch nothing: arguments, literals, tuple plumbing, reinterpretations.
NOT_KERNELS = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}


def h100_sharding():
    """Placement on a compile-only NVIDIA H100 (JAX's deviceless AOT path)."""
    from jax.experimental import topologies

    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "h100_sxm.txtpb")) as f:
        target_config = f.read()
    topology = topologies.get_topology_desc(
        platform="cuda", target_config=target_config, topology="1x1x1")
    mesh = topologies.make_mesh(topo=topology, mesh_shape=(1,), axis_names=("x",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def compiled_update_hlo(optimizer_name, sharding=None):
    """Optimised HLO text of one `stateless_apply` on VGG19-BN's trainable
    variables, for the local device or the one `sharding` places them on."""
    keras.utils.set_random_seed(0)
    model = kr.models.build("vgg19", 10, (32, 32, 3))
    optimizer = make_optimizer(optimizer_name, accelerator=sharding is not None)
    optimizer.build(model.trainable_variables)

    def update(trainable, optimizer_state, grads):
        return optimizer.stateless_apply(optimizer_state, grads, trainable)

    def spec(v):
        return jax.ShapeDtypeStruct(tuple(v.shape), v.dtype, sharding=sharding)

    trainable = [spec(v.value) for v in model.trainable_variables]
    # Donated in the order they come back, as in Keras's trainer: JAX pairs a
    # donated buffer with an output by shape, so another order adds copies.
    lowered = jax.jit(update, donate_argnums=(0, 1)).lower(
        trainable, [spec(v.value) for v in optimizer.variables], trainable)
    start = time.perf_counter()
    text = lowered.compile().as_text()
    return text, time.perf_counter() - start, len(trainable)


def entry_instructions(hlo_text):
    """[(name, opcode)] of the ENTRY computation's instructions."""
    instructions, inside = [], False
    for line in hlo_text.splitlines():
        if line.startswith("ENTRY "):
            inside = True
        elif inside and line.startswith("}"):
            break
        elif inside and " = " in line:
            # "  [ROOT ]%name = <type> opcode(operands), attributes"; a type
            # holds no "word(", so the first one is the opcode.
            match = re.match(r"\s*(?:ROOT\s+)?%?([\w.-]+) = .*?([a-z][a-z0-9-]*)\(", line)
            instructions.append(match.groups())
    if not instructions:
        raise ValueError("no ENTRY computation in the HLO text")
    return instructions


def hlo_main(dump_dir, target):
    sharding = h100_sharding() if target == "h100" else None
    device = jax.devices()[0] if sharding is None else sharding.mesh.devices.flat[0]
    compiled_for = "compiled" if sharding is None else "compiled ahead of time, no device"
    print(f"JAX {jax.__version__}, Keras {keras.__version__}, backend "
          f"{keras.backend.backend()}, device {device.device_kind} ({device.platform}, "
          f"{compiled_for}); optimised HLO of the update alone on VGG19-BN's trainable "
          "variables", flush=True)
    rows, kernels = [], {}
    for name in ("sgd", "group_lasso", "l1"):
        text, compile_s, n_variables = compiled_update_hlo(name, sharding)
        if dump_dir:
            os.makedirs(dump_dir, exist_ok=True)
            with open(os.path.join(dump_dir, f"update_{name}.hlo.txt"), "w") as f:
                f.write(text)
        instructions = entry_instructions(text)
        opcodes = collections.Counter(op for _, op in instructions)
        launched = {op: n for op, n in opcodes.items() if op not in NOT_KERNELS}
        kernels[name] = sum(launched.values())
        # XLA's fusion wrapper puts a lone op (a reduce, a slice) in a fusion
        # of its own named wrapped_<op>: a kernel, but nothing fused in it.
        wrapped = sum(op == "fusion" and n.startswith("wrapped_") for n, op in instructions)
        rows.append({"optimizer": name, "kernels": kernels[name],
                     "fusions": launched.get("fusion", 0), "wrapped_single_ops": wrapped,
                     "variables": n_variables, "entry_opcodes": dict(opcodes),
                     "compile_s": compile_s, "device": device.platform})
        print(f"{name}: {kernels[name]} kernels in the entry computation "
              f"({launched.get('fusion', 0)} fusions, {wrapped} of them a lone wrapped op; "
              f"{kernels[name] / n_variables:.1f} per variable, {n_variables} variables); "
              "by opcode "
              f"{dict(sorted(launched.items(), key=lambda kv: -kv[1]))}; "
              f"compiled in {compile_s:.1f} s", flush=True)
    print(f"hlo_kernels sgd {kernels['sgd']} group_lasso {kernels['group_lasso']} "
          f"l1 {kernels['l1']}")
    print(f"hlo_kernel_ratio_l1 {kernels['l1'] / kernels['sgd']:.3f}")
    summary = f"hlo_kernel_ratio {kernels['group_lasso'] / kernels['sgd']:.3f}"
    record.write(f"hlo_kernels_{device.platform}", rows, summary, {
        "model": "vgg19", "input_shape": (32, 32, 3), "device": device.device_kind,
        "ahead_of_time": sharding is not None, "not_kernels": sorted(NOT_KERNELS)})
    print(summary)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=50, help="steps per timed repeat")
    parser.add_argument("--parts", default="train,update",
                        help="comma-separated: train (training steps), update (update alone)")
    parser.add_argument("--hlo", action="store_true",
                        help="count the kernels of the compiled update instead of timing")
    parser.add_argument("--hlo-dump", help="with --hlo: write each optimised HLO text here")
    parser.add_argument("--hlo-target", choices=("local", "h100"), default="local",
                        help="with --hlo: compile for the local device, or for an H100 "
                             "without one (needs jax-cuda12-plugin, see above)")
    args = parser.parse_args()
    if args.hlo:
        hlo_main(args.hlo_dump, args.hlo_target)
        return
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
