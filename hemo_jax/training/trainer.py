"""The train and eval steps, shared by both stages.

A model is any NNX module called as ``model(batch, deterministic=...)`` that
returns ``(logits, aux)`` with ``aux["branch_logits"]`` (a dict, possibly
empty). The step is a pure function ``(state, batch, rng) -> (state, metrics)``
over the flat NNX state of (model, optimizer), jitted with donated state and
explicit shardings. Stage 1 and stage 2 differ only in the model and in which
parameters are trainable.
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

from hemo_jax.training import metrics, sharding


class NonFiniteError(FloatingPointError):
    """Loss or gradients stopped being finite."""


# float16 would need loss scaling; bfloat16 keeps float32's exponent range.
COMPUTE_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class StepOptions:
    compute_dtype: str = "float32"  # bfloat16: bf16 compute over float32 parameters
    grad_accum: int = 1
    aux_loss_weight: float = 0.0  # weight of each branch's own loss in the fused model

    def __post_init__(self):
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype {self.compute_dtype!r} is not one of {COMPUTE_DTYPES}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.aux_loss_weight < 0:
            raise ValueError(f"aux_loss_weight must be >= 0, got {self.aux_loss_weight}")


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


def _loss_sums(
    model: nnx.Module,
    inputs: Mapping[str, jax.Array],
    batch: Mapping[str, jax.Array],
    options: StepOptions,
):
    """Weighted cross-entropy sums of the fused logits (plus each branch's, if asked).

    The model reads ``inputs`` (the batch in the compute dtype); targets and
    weights come from ``batch`` in full precision. The data pipeline sets each
    example's ``target`` (its label, or its pseudo label for the pseudo-labelled
    pool) and ``sample_weight`` (class weights, labeler confidence, zero for padding).
    """
    logits, aux = model(inputs, deterministic=False)
    target, weight, valid = batch["target"], batch["sample_weight"], batch["valid"]
    sums = metrics.classification_sums(logits, target, weight, valid)
    loss_sum = sums["loss_sum"]
    if options.aux_loss_weight:
        for branch_logits in aux.get("branch_logits", {}).values():
            extra = metrics.classification_sums(branch_logits, target, weight, valid)
            loss_sum = loss_sum + options.aux_loss_weight * extra["loss_sum"]
    return loss_sum, sums


def _leaf_names(tree: Any) -> list[str]:
    return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def make_train_step(
    train_state: TrainState,
    mesh: Mesh,
    batch_example: Mapping[str, Any],
    *,
    options: StepOptions,
) -> Callable[[Any, Mapping[str, jax.Array], jax.Array], tuple[Any, dict[str, jax.Array]]]:
    """The jitted step ``(state, batch, rng) -> (state, metrics)``; state is donated.

    ``step.grad_names`` names the gradient leaves; ``step.lower(state, batch, rng)``
    traces and lowers the step without running it.
    """
    graphdef, trainable = train_state.graphdef, train_state.trainable
    compute_dtype = jnp.dtype(options.compute_dtype)
    accum = options.grad_accum
    batch_size = len(batch_example["target"])
    if batch_size % accum:
        raise ValueError(f"grad_accum {accum} must divide the global batch size {batch_size}")

    def step(state: Any, batch: Mapping[str, jax.Array], rng: jax.Array):
        model, optimizer = nnx.merge(graphdef, state)
        model_def, params, rest = nnx.split(model, trainable, ...)

        def loss_fn(params, micro, key):
            m = nnx.merge(
                model_def, _cast_floats(params, compute_dtype), _cast_floats(rest, compute_dtype)
            )
            nnx.reseed(m, dropout=key)
            return _loss_sums(m, _cast_floats(micro, compute_dtype), micro, options)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
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
        k: sharding.batch_sharding(mesh, np.ndim(v)) for k, v in batch_example.items()
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


def make_eval_step(
    train_state: TrainState, mesh: Mesh, batch_example: Mapping[str, Any], compute_dtype: str
) -> Callable[[Any, Mapping[str, jax.Array]], dict[str, jax.Array]]:
    """Jitted ``(state, batch) -> {prob, prob_<branch>, video_index, valid}``, replicated."""
    graphdef = train_state.graphdef
    dtype = jnp.dtype(compute_dtype)

    def step(state: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        model, _ = nnx.merge(graphdef, state)
        model = nnx.merge(*_split_cast(model, dtype))
        logits, aux = model(_cast_floats(batch, dtype), deterministic=True)
        # Identifiers pass through so every host sees them replicated, with the probabilities.
        out = {
            "prob": jax.nn.softmax(logits.astype(jnp.float32))[:, 1],
            "video_index": batch["video_index"],
            "valid": batch["valid"],
        }
        for name, branch_logits in aux.get("branch_logits", {}).items():
            out[f"prob_{name}"] = jax.nn.softmax(branch_logits.astype(jnp.float32))[:, 1]
        return out

    replicated = NamedSharding(mesh, PartitionSpec())
    batch_shardings = {
        k: sharding.batch_sharding(mesh, np.ndim(v)) for k, v in batch_example.items()
    }
    jitted = jax.jit(
        step, in_shardings=(train_state.shardings, batch_shardings), out_shardings=replicated
    )

    def run(state, batch):
        with jax.set_mesh(mesh), nnx.logical_axis_rules(sharding.LOGICAL_RULES):
            return jitted(state, batch)

    return run


def _split_cast(model: nnx.Module, dtype: jnp.dtype) -> tuple[Any, Any]:
    graphdef, state = nnx.split(model)
    return graphdef, _cast_floats(state, dtype)


def _str_keys(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {str(k): _str_keys(v) for k, v in tree.items()}
    return tree


def _like(template: Any, restored: Any) -> Any:
    """``restored`` (string keys) rebuilt with the keys of ``template`` (int or str)."""
    if isinstance(template, Mapping):
        return {k: _like(v, restored[str(k)]) for k, v in template.items()}
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


def restore_checkpoint_tree(train_state: TrainState, tree: Mapping[str, Any]) -> TrainState:
    """A TrainState whose params (and optimizer state, if given) come from ``tree``."""
    model, optimizer = nnx.merge(train_state.graphdef, train_state.state)
    params = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(params, _like(nnx.to_pure_dict(params), tree["params"]))
    nnx.update(model, params)
    if "opt" in tree:
        opt_state = nnx.state(optimizer)
        nnx.replace_by_pure_dict(opt_state, _like(nnx.to_pure_dict(opt_state), tree["opt"]))
        nnx.update(optimizer, opt_state)
    state = jax.device_put(nnx.state((model, optimizer)), train_state.shardings)
    return dataclasses.replace(train_state, state=state)
