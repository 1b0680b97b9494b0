"""Keypoint branch: skeleton graphs, the four backbones, padding and input checks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hemo_jax.models import keypoints as kp
from hemo_jax.models.keypoints import KeypointBranch, KeypointConfig
from hemo_jax.models.transformer import TransformerConfig

# Tests compile many small programs: XLA's cheapest CPU settings (no backend
# optimisation, the classic fusion emitters) compile them about 3x faster.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
fast_jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)
B, F = 4, 6


def make_batch(seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    points = rng.uniform(size=(B, F, 137, 3)).astype(np.float32)
    points[:, :, 19:25] = 0.0  # legs and feet of a seated player: missing
    lengths = np.array([6, 4, 5, 3])
    return {
        "keypoints": jnp.asarray(points),
        "keypoint_offsets": jnp.asarray(0.1 * rng.normal(size=(B, F, 137, 2)), jnp.float32),
        "keypoint_mask": jnp.asarray(np.arange(F)[None] < lengths[:, None]),
    }


@functools.partial(fast_jit, static_argnums=0)
def _apply(graphdef, state, batch):
    return nnx.merge(graphdef, state)(batch, deterministic=True)


def apply(model, batch):
    return _apply(*nnx.split(model), batch)


def train(model, batch, labels, *, steps: int, lr: float):
    """AdamW steps on one batch: the losses and the first step's outputs."""
    opt = nnx.Optimizer(model, optax.adamw(lr), wrt=nnx.Param)
    graphdef, state = nnx.split((model, opt))

    @fast_jit
    def step(state):
        model, opt = nnx.merge(graphdef, state)

        def loss_fn(model):
            logits, aux = model(batch, deterministic=False)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, (logits, aux)

        (loss, outputs), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        opt.update(model, grads)
        return loss, outputs, nnx.state((model, opt))

    losses, first_outputs = [], None
    for _ in range(steps):
        loss, outputs, state = step(state)
        losses.append(float(loss))
        first_outputs = first_outputs or outputs
    return losses, first_outputs


def _is_tree(num_nodes: int, edges) -> bool:
    parent = list(range(num_nodes))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j in edges:
        ri, rj = find(i), find(j)
        if ri == rj:
            return False
        parent[ri] = rj
    return len(edges) == num_nodes - 1


def test_skeleton_edge_lists():
    assert len(kp.BODY_25_EDGES) == 24 and _is_tree(25, kp.BODY_25_EDGES)
    assert len(kp.HAND_21_EDGES) == 20 and _is_tree(21, kp.HAND_21_EDGES)
    assert len(kp.HANDS_42_EDGES) == 40
    # 16 jaw + 4 + 4 brows + 3 + 4 nose + 6 + 6 eyes + 12 + 8 lips + 6 + 6 pupils.
    assert len(kp.FACE_70_EDGES) == 75
    for joints, edges in kp.STREAMS.values():
        pairs = {frozenset(e) for e in edges}
        assert len(pairs) == len(edges), "duplicate edge"
        assert all(0 <= i < joints and 0 <= j < joints and i != j for i, j in edges)
    a = kp.adjacency(70, kp.FACE_70_EDGES)
    assert a[68, 36:42].all() and a[69, 42:48].all() and not a[68, 42:48].any()
    assert a[36, 41] and a[48, 59] and a[60, 67]  # eyes and lips are closed loops
    assert a[16, 17] == 0  # the jaw does not run into the brows
    hands = kp.adjacency(42, kp.HANDS_42_EDGES)
    assert hands[:21, 21:].sum() == 0  # two separate hands
    assert [int(d) for d in hands[:21].sum(1)[[0, 1, 4, 8]]] == [5, 2, 1, 1]
    body = kp.adjacency(25, kp.BODY_25_EDGES)
    assert body[1, 8] and body[4, 3] and body[11, 24] and body[14, 19]


def test_bad_edges_are_refused():
    with pytest.raises(ValueError, match=r"\(3, 25\)"):
        kp.adjacency(25, ((3, 25),))


def test_gcn_propagation_matrix():
    a_hat = kp.normalized_adjacency(25, kp.BODY_25_EDGES)
    np.testing.assert_allclose(a_hat, a_hat.T)
    degree = kp.adjacency(25, kp.BODY_25_EDGES).sum(1) + 1
    np.testing.assert_allclose(np.diag(a_hat), 1.0 / degree, rtol=1e-6)
    assert np.max(np.abs(np.linalg.eigvalsh(a_hat))) <= 1.0 + 1e-5


@pytest.mark.parametrize("backbone", kp.BACKBONES)
def test_every_backbone_trains_with_the_same_interface(backbone):
    model = KeypointBranch(KeypointConfig.tiny(backbone=backbone), rngs=nnx.Rngs(0))
    batch = make_batch()
    losses, (logits, aux) = train(model, batch, jnp.array([0, 1, 1, 0]), steps=10, lr=3e-3)
    assert logits.shape == (B, 2)
    assert aux["pooled"].shape == (B, 32) and aux["tokens"].shape == (B, F, 32)
    np.testing.assert_array_equal(aux["mask"], batch["keypoint_mask"])
    assert all(np.isfinite(losses))
    assert losses[0] == pytest.approx(np.log(2), abs=1e-5)  # the zero-initialised head
    assert losses[-1] < 0.5 * losses[0], losses


def test_padded_frames_and_missing_joints_do_not_change_the_output():
    model = KeypointBranch(KeypointConfig.tiny(), rngs=nnx.Rngs(0))
    batch = make_batch(0)
    other = make_batch(1)
    valid = batch["keypoint_mask"][:, :, None, None]
    changed = dict(batch)
    for key in ("keypoints", "keypoint_offsets"):
        changed[key] = jnp.where(valid, batch[key], 50.0 * other[key])
    missing = batch["keypoints"][..., 2:3] == 0  # offsets of undetected joints are ignored
    changed["keypoint_offsets"] = jnp.where(missing, 9.0, changed["keypoint_offsets"])
    logits, aux = apply(model, batch)
    logits2, aux2 = apply(model, changed)
    np.testing.assert_allclose(logits, logits2, atol=1e-5)
    np.testing.assert_allclose(aux["pooled"], aux2["pooled"], atol=1e-5)
    # A real frame does count.
    moved = dict(batch, keypoints=batch["keypoints"].at[0, 0, :, :2].add(0.3))
    assert not np.allclose(apply(model, moved)[1]["pooled"][0], aux["pooled"][0], atol=1e-5)


@pytest.mark.parametrize(
    "key, shape",
    [("keypoints", (B, F, 25, 3)), ("keypoint_offsets", (B, F, 137, 3)), ("keypoint_mask", (B,))],
)
def test_wrong_input_shapes_name_the_field(key, shape):
    model = KeypointBranch(KeypointConfig.tiny(), rngs=nnx.Rngs(0))
    batch = dict(make_batch(), **{key: jnp.zeros(shape)})
    with pytest.raises(ValueError, match=key):
        model.frame_features(batch)
    with pytest.raises(KeyError, match="keypoint_offsets"):
        model.frame_features({k: v for k, v in batch.items() if k != "keypoint_offsets"})


def test_unknown_backbone_is_refused():
    with pytest.raises(ValueError, match="transformer_xl"):
        KeypointConfig(backbone="transformer_xl")


@pytest.mark.slow
def test_remat_gives_the_same_loss_and_gradients():
    """config.model.remat rematerialises the streams and the Transformer blocks: the
    backward recomputes them (dropout masks included) and must get the same numbers."""
    batch = make_batch(3)

    @functools.partial(fast_jit, static_argnums=0)
    def loss_and_grads(graphdef, state, batch):
        def loss(model):
            logits, _ = model(batch, deterministic=False)
            return jnp.sum(logits**2)

        return nnx.value_and_grad(loss)(nnx.merge(graphdef, state))

    results = []
    for remat in (False, True):
        transformer = TransformerConfig.tiny(depth=1, dropout=0.2, remat=remat)
        cfg = KeypointConfig.tiny(dropout=0.2, remat=remat, transformer=transformer)
        model = KeypointBranch(cfg, rngs=nnx.Rngs(0, dropout=1))
        # The head starts at zero; random weights make every gradient non-trivial.
        nnx.update(model.head, jax.tree.map(lambda x: x + 0.1, nnx.state(model.head, nnx.Param)))
        loss, grads = loss_and_grads(*nnx.split(model), batch)
        results.append((loss, jax.tree.leaves(grads)))
    (loss_a, grads_a), (loss_b, grads_b) = results
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
    assert loss_a > 0 and len(grads_a) == len(grads_b) > 0
    for ga, gb in zip(grads_a, grads_b, strict=True):
        np.testing.assert_allclose(ga, gb, rtol=1e-4, atol=1e-6)


def pooled(model, batch):
    """The branch's pooled features (its logits start at zero: the head is zero-initialised)."""
    return apply(model, batch)[1]["pooled"]


def test_offsets_switch_removes_the_motion_input():
    batch = make_batch()
    moved = {**batch, "keypoint_offsets": batch["keypoint_offsets"] + 0.5}
    on = KeypointBranch(KeypointConfig.tiny(), rngs=nnx.Rngs(0))
    off = KeypointBranch(KeypointConfig.tiny(offsets=False), rngs=nnx.Rngs(0))
    assert not np.allclose(pooled(on, batch), pooled(on, moved))
    np.testing.assert_array_equal(pooled(off, batch), pooled(off, moved))
    # The same parameters either way: a stage-1 run of one loads into the other.
    shapes = [jax.tree.map(jnp.shape, nnx.state(m, nnx.Param)) for m in (on, off)]
    assert shapes[0] == shapes[1]


def test_per_frame_pooling_ignores_frame_order_and_has_no_transformer():
    batch = make_batch()
    order = np.random.default_rng(0).permutation(batch["keypoints"].shape[1])
    shuffled = {k: v[:, order] if v.ndim > 1 else v for k, v in batch.items()}
    mean = KeypointBranch(KeypointConfig.tiny(temporal="mean"), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(pooled(mean, batch), pooled(mean, shuffled), atol=1e-5)
    full = KeypointBranch(KeypointConfig.tiny(), rngs=nnx.Rngs(0))
    assert not np.allclose(pooled(full, batch), pooled(full, shuffled), atol=1e-5)
    assert not isinstance(mean.encoder, kp.TransformerEncoder)
    with pytest.raises(ValueError, match="temporal 'lstm'"):
        KeypointConfig(temporal="lstm")
