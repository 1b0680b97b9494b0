"""The train and eval steps, shared by both stages, and the states they run on.

The trainer knows nothing of the model's insides: a ``LossFn`` turns (model, batch)
into weighted loss sums and a ``PredictFn`` into probabilities (the experiment
supplies both). The step is a pure function ``(state, batch, rng) -> (state, metrics)``
over the flat NNX state of (model, optimizer), jitted with donated state and
explicit shardings. Stage 1 and stage 2 differ only in the model, the loss and in
which parameters are trainable.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hemo_jax.training import sharding


class NonFiniteError(FloatingPointError):
    """Loss or gradients stopped being finite."""


# float16 would need loss scaling; bfloat16 keeps float32's exponent range.
COMPUTE_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class StepOptions:
    compute_dtype: str = "float32"  # bfloat16: bf16 compute over float32 parameters
    grad_accum: int = 1

    def __post_init__(self):
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype {self.compute_dtype!r} is not one of {COMPUTE_DTYPES}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")


# (model, inputs in the compute dtype, batch in full precision) -> (loss sum, metric sums
# with "loss_sum", "weight_sum", "correct" and "count").
LossFn = Callable[
    [nnx.Module, Mapping[str, jax.Array], Mapping[str, jax.Array]],
    tuple[jax.Array, dict[str, jax.Array]],
]
# (model, inputs) -> {"prob": P(class 1) [B], other "prob_*" entries}, deterministic.
PredictFn = Callable[[nnx.Module, Mapping[str, jax.Array]], dict[str, jax.Array]]


def make_optimizer(
    *,
    lr: float,
    warmup_steps: int,
    total_steps: int,
    weight_decay: float,
    clip_norm: float,
    b1: float = 0.9,
    b2: float = 0.999,
    lr_scale: float = 1.0,
    lr_scaled: Callable[[str], bool] | None = None,
) -> optax.GradientTransformation:
    """AdamW with linear warm-up and cosine decay, global-norm clipping.

    Weight decay applies to matrices only (kernels, embeddings), not to biases
    or normalisation scales. ``lr_scaled`` picks parameters by path
    ("branches/keypoints/encoder/...") whose learning rate is ``lr_scale`` times
    the others' (stage 2: pretrained branches that should move less than the
    fusion trained from scratch).
    """
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=lr,
        warmup_steps=max(warmup_steps, 1),
        decay_steps=max(total_steps, warmup_steps + 1),
        end_value=lr * 0.01,
    )

    def decay_mask(params: Any) -> Any:
        return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)

    tx = optax.chain(
        optax.clip_by_global_norm(clip_norm),
        optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask),
    )
    if lr_scaled is None or lr_scale == 1.0:
        return tx

    def scaled_mask(params: Any) -> Any:
        return jax.tree_util.tree_map_with_path(lambda path, _: lr_scaled(param_path(path)), params)

    # AdamW's update already holds the learning rate and the decay: scaling it scales both.
    return optax.chain(tx, optax.masked(optax.scale(lr_scale), scaled_mask))


def param_path(path: tuple) -> str:
    """A pytree path of a parameter as "branches/text/encoder/..." (the checkpoint keys)."""
    keys = [getattr(k, "key", getattr(k, "idx", None)) for k in path]
    return "/".join(str(k) for k in keys if k is not None)


def trainable_filter(frozen_prefixes: tuple[tuple[str, ...], ...] = ()) -> Any:
    """nnx.Param, less any parameter whose path starts with a frozen prefix."""
    if not frozen_prefixes:
        return nnx.Param

    def frozen(path: tuple, _value: Any) -> bool:
        names = tuple(str(p) for p in path)
        return any(names[: len(p)] == p for p in frozen_prefixes)

    return nnx.All(nnx.Param, nnx.Not(frozen))


@dataclasses.dataclass
class TrainState:
    """Graph definition, sharded flat state of (model, optimizer) and its shardings."""

    graphdef: Any
    state: Any
    shardings: Any
    trainable: Any

    def model(self) -> nnx.Module:
        model, _ = nnx.merge(self.graphdef, self.state)
        return model

    def params(self) -> Any:
        """The model's parameters as a pure dict of arrays (what checkpoints hold)."""
        return nnx.to_pure_dict(nnx.state(self.model(), nnx.Param))


# Builds the model from the key its parameters are drawn with.
ModelFn = Callable[[jax.Array], nnx.Module]


def abstract_train_state(
    model_fn: ModelFn,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    trainable: Any = nnx.Param,
) -> TrainState:
    """Shapes, dtypes and shardings of (model, optimizer), computed without allocating.

    Cheap: enough to check a checkpoint against the model before compiling anything.
    """

    def build() -> tuple[nnx.Module, nnx.Optimizer]:
        model = model_fn(jax.random.key(0))
        return model, nnx.Optimizer(model, tx, wrt=trainable)

    graphdef, abstract = nnx.split(nnx.eval_shape(build))
    return TrainState(graphdef, abstract, sharding.state_shardings(abstract, mesh), trainable)


def initialize(
    abstract: TrainState,
    model_fn: ModelFn,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    seed: int = 0,
) -> TrainState:
    """Builds the (model, optimizer) of ``abstract`` directly sharded, in one jitted call.

    The key is an argument of that program, not a constant in it: runs that differ
    only in their seed share one compilation (and one persistent-cache entry).
    """

    def build(key: jax.Array) -> Any:
        model = model_fn(key)
        return nnx.split((model, nnx.Optimizer(model, tx, wrt=abstract.trainable)))[1]

    @jax.jit
    def init(key: jax.Array) -> Any:
        return jax.lax.with_sharding_constraint(build(key), abstract.shardings)

    with jax.set_mesh(mesh):
        state = init(jax.random.key(seed))
    return dataclasses.replace(abstract, state=state)


def create_train_state(
    model_fn: ModelFn,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    seed: int = 0,
    trainable: Any = nnx.Param,
) -> TrainState:
    """Builds model and optimizer directly sharded, from their abstract shapes."""
    abstract = abstract_train_state(model_fn, tx, mesh, trainable=trainable)
    return initialize(abstract, model_fn, tx, mesh, seed=seed)


def _cast_floats(tree: Any, dtype: jnp.dtype) -> Any:
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def _leaf_names(tree: Any) -> list[str]:
    return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def make_train_step(
    train_state: TrainState,
    mesh: Mesh,
    batch_example: Mapping[str, Any],
    *,
    loss_fn: LossFn,
    options: StepOptions,
) -> Callable[[Any, Mapping[str, jax.Array], jax.Array], tuple[Any, dict[str, jax.Array]]]:
    """The jitted step ``(state, batch, rng) -> (state, metrics)``; state is donated.

    ``batch_example`` gives the batch's shapes (arrays or ``jax.ShapeDtypeStruct``).
    ``step.grad_names`` names the gradient leaves; ``step.lower(state, batch, rng)``
    traces and lowers the step without running it (abstract arguments will do).
    """
    graphdef, trainable = train_state.graphdef, train_state.trainable
    compute_dtype = jnp.dtype(options.compute_dtype)
    accum = options.grad_accum
    batch_size = batch_example["target"].shape[0]
    if batch_size % accum:
        raise ValueError(f"grad_accum {accum} must divide the global batch size {batch_size}")

    def step(state: Any, batch: Mapping[str, jax.Array], rng: jax.Array):
        model, optimizer = nnx.merge(graphdef, state)
        model_def, params, rest = nnx.split(model, trainable, ...)

        def loss(params, micro, key):
            m = nnx.merge(
                model_def, _cast_floats(params, compute_dtype), _cast_floats(rest, compute_dtype)
            )
            nnx.reseed(m, dropout=key)
            return loss_fn(m, _cast_floats(micro, compute_dtype), micro)

        grad_fn = jax.value_and_grad(loss, has_aux=True)
        if accum == 1:
            (_, sums), grads = grad_fn(params, batch, rng)
        else:
            # Micro-batch i holds rows i, i + accum, i + 2 * accum, ...: with the batch
            # split over devices in contiguous blocks, every device keeps its own rows
            # (a contiguous split would move rows between devices).
            def strided(x: jax.Array) -> jax.Array:
                x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:])
                return jnp.moveaxis(x, 1, 0)

            micro = jax.tree.map(strided, batch)

            def body(carry, inp):
                g_acc, s_acc = carry
                i, mb = inp
                (_, s), g = grad_fn(params, mb, jax.random.fold_in(rng, i))
                return (jax.tree.map(jnp.add, g_acc, g), jax.tree.map(jnp.add, s_acc, s)), None

            zeros_g = jax.tree.map(jnp.zeros_like, params)
            zeros_s = {
                k: jnp.zeros((), jnp.float32)
                for k in ("loss_sum", "weight_sum", "correct", "count")
            }
            (grads, sums), _ = jax.lax.scan(body, (zeros_g, zeros_s), (jnp.arange(accum), micro))
        # The loss is a weighted mean over the whole (global) batch.
        denom = jnp.maximum(sums["weight_sum"], 1e-12)
        grads = jax.tree.map(lambda g: (g / denom).astype(jnp.float32), grads)
        optimizer.update(model, grads)
        finite = jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
        out = dict(sums)
        out["grad_norm"] = optax.tree.norm(grads)
        out["grad_finite"] = finite
        return nnx.state((model, optimizer)), out

    replicated = NamedSharding(mesh, PartitionSpec())
    batch_shardings = {
        k: sharding.batch_sharding(mesh, len(v.shape)) for k, v in batch_example.items()
    }
    jitted = jax.jit(
        step,
        in_shardings=(train_state.shardings, batch_shardings, replicated),
        out_shardings=(train_state.shardings, replicated),
        donate_argnums=0,
    )
    model_def, params, _ = nnx.split(train_state.model(), trainable, ...)
    grad_names = _leaf_names(params)
    del model_def

    def run(state, batch, rng):
        with jax.set_mesh(mesh), nnx.logical_axis_rules(sharding.LOGICAL_RULES):
            return jitted(state, batch, rng)

    def lower(state, batch, rng) -> jax.stages.Lowered:
        """The step traced and lowered for these arguments, not compiled (for its HLO
        and XLA's cost analysis)."""
        with jax.set_mesh(mesh), nnx.logical_axis_rules(sharding.LOGICAL_RULES):
            return jitted.lower(state, batch, rng)

    run.grad_names = grad_names  # type: ignore[attr-defined]
    run.lower = lower  # type: ignore[attr-defined]
    return run


def check_finite(step: int, out: Mapping[str, Any], grad_names: list[str]) -> None:
    """Raises NonFiniteError naming the step and the offending values."""
    loss = float(out["loss_sum"]) / max(float(out["weight_sum"]), 1e-12)
    finite = np.asarray(out["grad_finite"])
    bad = [n for n, ok in zip(grad_names, finite, strict=True) if not ok]
    if not math.isfinite(loss) or bad or not math.isfinite(float(out["grad_norm"])):
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise NonFiniteError(
            f"step {step}: loss={loss}, grad_norm={float(out['grad_norm'])}; "
            f"non-finite gradients: {shown or 'none'}"
        )


@dataclasses.dataclass
class ModelState:
    """Graph definition and sharded state of a model alone: what inference runs on."""

    graphdef: Any
    state: Any

    def model(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.state)


def model_state(train_state: TrainState) -> ModelState:
    """The model part of a training state (its arrays shared, not copied)."""
    return ModelState(*nnx.split(train_state.model()))


def make_eval_step(
    graphdef: Any,
    mesh: Mesh,
    batch_example: Mapping[str, Any],
    *,
    predict_fn: PredictFn,
    compute_dtype: str,
) -> Callable[[Any, Mapping[str, jax.Array]], dict[str, jax.Array]]:
    """Jitted ``(model state, batch) -> {prob..., video_index, window_index, valid}``,
    replicated (so every process reads every row)."""
    dtype = jnp.dtype(compute_dtype)

    def step(state: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        model = nnx.merge(graphdef, _cast_floats(state, dtype))
        out = predict_fn(model, _cast_floats(batch, dtype))
        # Identifiers pass through so every host sees them replicated, with the probabilities.
        index = {k: batch[k] for k in ("video_index", "window_index", "valid")}
        return {**out, **index}

    replicated = NamedSharding(mesh, PartitionSpec())
    batch_shardings = {
        k: sharding.batch_sharding(mesh, np.ndim(v)) for k, v in batch_example.items()
    }
    # The state keeps the shardings it has (training's, or those it was loaded with).
    jitted = jax.jit(step, in_shardings=(None, batch_shardings), out_shardings=replicated)

    def run(state, batch):
        with jax.set_mesh(mesh), nnx.logical_axis_rules(sharding.LOGICAL_RULES):
            return jitted(state, batch)

    return run


def _str_keys(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {str(k): _str_keys(v) for k, v in tree.items()}
    return tree


def _like(template: Any, restored: Any) -> Any:
    """``restored`` (string keys, as checkpoints hold them, or the template's own) rebuilt
    with the keys of ``template`` (int or str)."""
    if isinstance(template, Mapping):
        return {
            k: _like(v, restored[k] if k in restored else restored[str(k)])
            for k, v in template.items()
        }
    return restored


def checkpoint_tree(train_state: TrainState) -> dict[str, Any]:
    """What a checkpoint holds: ``params`` (the model's) and ``opt`` (the optimizer's).

    Dropout RNG state is not saved: every step reseeds it from the step number.
    """
    model, optimizer = nnx.merge(train_state.graphdef, train_state.state)
    return {
        "params": _str_keys(nnx.to_pure_dict(nnx.state(model, nnx.Param))),
        "opt": _str_keys(nnx.to_pure_dict(nnx.state(optimizer))),
    }


def abstract_checkpoint_tree(train_state: TrainState) -> dict[str, Any]:
    """Shapes, dtypes and shardings of ``checkpoint_tree``, for a sharded restore."""
    shardings = TrainState(train_state.graphdef, train_state.shardings, None, train_state.trainable)
    spec = checkpoint_tree(shardings)
    tree = checkpoint_tree(train_state)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, spec)


def _fill(target: nnx.Object, tree: Mapping[str, Any], wrt: Any = nnx.Param) -> None:
    """Sets the ``wrt`` variables of ``target`` from a checkpoint tree (string keys)."""
    state = nnx.state(target, wrt)
    nnx.replace_by_pure_dict(state, _like(nnx.to_pure_dict(state), tree))
    nnx.update(target, state)


def _non_params(model_fn: ModelFn, seed: int) -> Any:
    """The model's variables that are not parameters (its dropout RNG state), made by a
    program whose parameter draws XLA removes as unused: no random weights are made."""

    @jax.jit
    def init(key: jax.Array) -> Any:
        return nnx.state(model_fn(key), nnx.Not(nnx.Param))

    return init(jax.random.key(seed))


def restore_train_state(
    abstract: TrainState, model_fn: ModelFn, tree: Mapping[str, Any], *, seed: int = 0
) -> TrainState:
    """The (model, optimizer) of ``abstract`` filled from a checkpoint tree holding both
    ``params`` and ``opt`` (restored already sharded, ``abstract_checkpoint_tree``)."""
    model, optimizer = nnx.merge(abstract.graphdef, abstract.state)
    nnx.update(model, _non_params(model_fn, seed))
    _fill(model, tree["params"])
    _fill(optimizer, tree["opt"], ...)
    state = jax.device_put(nnx.state((model, optimizer)), abstract.shardings)
    return dataclasses.replace(abstract, state=state)


def load_model_state(
    model_fn: ModelFn, params: Mapping[str, Any], mesh: Mesh, *, seed: int = 0
) -> ModelState:
    """The model with ``params`` (host arrays, string keys), sharded on ``mesh``: built
    from its abstract shapes, with no optimizer and no random weights."""
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: model_fn(jax.random.key(0))))
    model = nnx.merge(graphdef, abstract)
    nnx.update(model, _non_params(model_fn, seed))
    _fill(model, params)
    graphdef, state = nnx.split(model)
    return ModelState(graphdef, jax.device_put(state, sharding.state_shardings(abstract, mesh)))


def restore_checkpoint_tree(train_state: TrainState, tree: Mapping[str, Any]) -> TrainState:
    """A TrainState whose params (and optimizer state, if given) come from ``tree``."""
    model, optimizer = nnx.merge(train_state.graphdef, train_state.state)
    _fill(model, tree["params"])
    if "opt" in tree:
        _fill(optimizer, tree["opt"], ...)
    state = jax.device_put(nnx.state((model, optimizer)), train_state.shardings)
    return dataclasses.replace(train_state, state=state)
