"""grain pipeline: normalisation math, windows, determinism, resume, slicing, workers."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from hemo_jax.contract.keypoint_layout import NUM_KEYPOINTS
from hemo_jax.contract.schema import VideoRecord
from hemo_jax.data.pipeline import (
    PipelineConfig,
    frame_offsets,
    make_dataset,
    make_loader,
    normalize_keypoints,
    window_starts,
)
from hemo_jax.data.splits import select
from preprocess.shards import write_records

NECK, RS, LS = 1, 2, 5


def make_record(i: int, t: int, *, split: str = "train", label: int = 1, **kw) -> VideoRecord:
    rng = np.random.default_rng(i)
    kp = rng.uniform(100, 600, (t, NUM_KEYPOINTS, 3)).astype(np.float32)
    kp[..., 2] = rng.uniform(0.1, 1, (t, NUM_KEYPOINTS))
    kp[:, NECK, :2], kp[:, RS, :2], kp[:, LS, :2] = (300, 200), (250, 200), (350, 200)
    frames = np.arange(t, dtype=np.int32) * 2  # source frame index = 2 * row
    crop_frames = np.arange(0, 2 * t, 10, dtype=np.int32)
    # Each feature row holds its own source frame, so tests can see where it came from.
    feats = np.repeat(crop_frames[:, None], 4, axis=1).astype(np.float16)
    return VideoRecord(
        video_id=f"vid{i:03d}",
        subject_id=f"s{i % 4}",
        source="synthetic",
        split=split,
        fps=25.0,
        frame_size=(720, 1280),
        keypoints=kp,
        keypoint_frames=frames,
        label=label,
        crop_frames=crop_frames,
        boxes=np.zeros((len(crop_frames), 4), np.float32),
        **{"image_features": feats, **kw},
    )


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    """12 train records (40..95 rows), 5 test, 3 unlabeled with pseudo labels."""
    out = tmp_path_factory.mktemp("shards")
    recs = [make_record(i, 40 + 5 * i, label=i % 2) for i in range(12)]
    recs += [make_record(12 + i, 30 + 20 * i, split="test", label=i % 2) for i in range(5)]
    recs += [
        make_record(17 + i, 50, split="unlabeled", label=-1, pseudo_label=1, pseudo_confidence=c)
        for i, c in enumerate((0.9, 0.5, 0.2))
    ]
    write_records(recs, out, records_per_shard=4)
    return out


CFG = PipelineConfig(batch_size=4, max_frames=32, image_dim=4, image_max=3, seed=3)


def take(loader, n):
    return [next(loader) for _ in range(n)]


def test_normalisation_centres_on_neck_and_scales_by_shoulders():
    kp = np.zeros((3, NUM_KEYPOINTS, 3), np.float32)
    kp[:, NECK] = (100, 200, 0.9)
    kp[:, RS] = (50, 200, 0.8)
    kp[:, LS] = (150, 200, 0.8)
    kp[:, 4] = (150, 300, 0.5)
    kp[:, 10] = (999, 999, 0.0)  # a missing point with garbage coordinates
    kp[1, NECK] = 0  # neck missing: centre on the shoulders' midpoint
    kp[1, RS, :2], kp[1, LS, :2] = (60, 210), (160, 210)
    kp[2, LS] = 0  # a shoulder missing: scale by the sequence's median width (100)
    out = normalize_keypoints(kp, (720, 1280))
    np.testing.assert_allclose(out[0, NECK], [0, 0, 0.9], atol=1e-6)
    np.testing.assert_allclose(out[0, RS, :2], [-0.5, 0])
    np.testing.assert_allclose(out[0, LS, :2], [0.5, 0])
    np.testing.assert_allclose(out[0, 4], [0.5, 1.0, 0.5])
    np.testing.assert_allclose(out[1, 4, :2], [(150 - 110) / 100, (300 - 210) / 100])
    np.testing.assert_allclose(out[2, 4, :2], [0.5, 1.0])
    assert np.all(out[:, 10] == 0) and np.all(out[2, LS] == 0)
    # A collapsed shoulder width is clipped to half the sequence median (100), not trusted.
    kp = np.repeat(kp[:1], 5, axis=0)
    kp[0, RS, :2], kp[0, LS, :2] = (99, 200), (101, 200)
    out = normalize_keypoints(kp, (720, 1280))
    np.testing.assert_allclose(out[0, 4, :2], [50 / 50, 100 / 50])
    np.testing.assert_allclose(out[1, 4, :2], [0.5, 1.0])


def test_normalisation_without_neck_or_shoulders_uses_the_frame():
    kp = np.zeros((2, NUM_KEYPOINTS, 3), np.float32)
    kp[:, 0] = (640 + 128, 360, 1.0)
    out = normalize_keypoints(kp, (720, 1280))
    np.testing.assert_allclose(out[:, 0, :2], [[0.1, 0], [0.1, 0]])
    assert normalize_keypoints(np.zeros((0, NUM_KEYPOINTS, 3)), (720, 1280)).shape == (
        0,
        NUM_KEYPOINTS,
        3,
    )


def test_offsets_are_deltas_per_frame_step_and_zero_where_missing():
    n = np.zeros((3, NUM_KEYPOINTS, 3), np.float32)
    n[:, 7] = [(0.1, 0.2, 1), (0.4, 0.0, 1), (0.5, 0.5, 0)]
    n[:, 8] = [(0.0, 0.0, 0), (0.3, 0.3, 1), (0.6, 0.2, 1)]
    off = frame_offsets(n, np.array([0, 1, 2]))
    assert off.shape == (3, NUM_KEYPOINTS, 2)
    np.testing.assert_allclose(off[:, 7], [(0, 0), (0.3, -0.2), (0, 0)], atol=1e-6)
    np.testing.assert_allclose(off[:, 8], [(0, 0), (0, 0), (0.3, -0.1)], atol=1e-6)
    # Three frames between the last two rows: a third of the delta per frame step.
    off = frame_offsets(n, np.array([10, 11, 14]))
    np.testing.assert_allclose(off[:, 8], [(0, 0), (0, 0), (0.1, -0.1 / 3)], atol=1e-6)


def test_window_offsets_per_frame_step_across_gaps_and_strides(tmp_path):
    """A point moving at a constant speed per source frame gets the same offset in every
    row, whatever frames are missing between rows or the stride that thins them."""
    frames = np.array([0, 1, 2, 5, 6, 10, 11, 12, 20, 21, 22, 23], np.int32)  # gaps
    rec = make_record(0, len(frames))
    kp = rec.keypoints.astype(np.float32)
    kp[:, 7] = np.stack([300 + 2.0 * frames, 200 - 1.0 * frames, np.ones(len(frames))], -1)
    rec = dataclasses.replace(rec, keypoints=kp, keypoint_frames=frames)
    shards = write_records([rec], tmp_path)
    for stride in (1, 2, 3):
        cfg = dataclasses.replace(
            CFG, batch_size=1, max_frames=len(frames), frame_stride=stride, image_dim=None
        )
        (b,) = make_loader(shards, cfg, train=False, process_index=0, process_count=1)
        n = -(-len(frames) // stride)
        off = b["keypoint_offsets"][0, 1:n, 7]
        width = 100.0  # the record's shoulders are 100 px apart
        np.testing.assert_allclose(off, np.tile([2.0, -1.0], (n - 1, 1)) / width, rtol=1e-3)
        assert not b["keypoint_offsets"][0, 0].any()


def test_window_starts_are_even_and_in_bounds():
    assert window_starts(20, 32, 3) == [0]
    assert window_starts(100, 32, 3) == [0, 34, 68]
    assert window_starts(100, 32, 1) == [0]
    assert max(window_starts(1000, 32, 7)) == 1000 - 32


def test_short_record_is_padded_and_long_one_windowed_in_bounds(tmp_path):
    recs = [make_record(0, 20), make_record(1, 200)]
    shards = write_records(recs, tmp_path)
    cfg = dataclasses.replace(CFG, batch_size=1, num_epochs=4, max_frames=32)
    seen_starts = set()
    for b in make_loader(shards, cfg, train=True, process_index=0, process_count=1):
        rec = recs[int(b["video_index"][0])]
        full = normalize_keypoints(rec.keypoints, rec.frame_size)
        mask, kp = b["keypoint_mask"][0], b["keypoints"][0]
        if rec.num_frames == 20:
            assert mask.sum() == 20 and not mask[20:].any()
            np.testing.assert_allclose(kp[:20], full, rtol=1e-6)
            assert not kp[20:].any() and not b["keypoint_offsets"][0, 20:].any()
        else:
            assert mask.all()
            starts = [s for s in range(200 - 32 + 1) if np.allclose(full[s : s + 32], kp)]
            assert len(starts) == 1
            seen_starts.add(starts[0])
            lo, hi = rec.keypoint_frames[starts[0]], rec.keypoint_frames[starts[0] + 31]
            feats = b["image_features"][0][b["image_mask"][0]][:, 0]
            assert len(feats) == 3 and np.all((feats >= lo) & (feats <= hi))
    assert len(seen_starts) >= 2  # the window moves between epochs


def test_same_seed_same_batches_different_seed_different_order(shard_dir):
    def order(seed):
        cfg = dataclasses.replace(CFG, seed=seed)
        loader = make_loader(shard_dir, cfg, train=True, process_index=0, process_count=1)
        return take(loader, 6)

    a, b, c = order(3), order(3), order(4)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    va = np.concatenate([x["video_index"] for x in a])
    vc = np.concatenate([x["video_index"] for x in c])
    assert not np.array_equal(va, vc)
    assert set(va[:12]) == set(range(12))  # the first epoch is a permutation of train


def test_resume_equals_uninterrupted(shard_dir):
    cfg = dataclasses.replace(CFG, seed=9)
    full = take(make_loader(shard_dir, cfg, train=True, process_index=0, process_count=1), 7)
    first = make_loader(shard_dir, cfg, train=True, process_index=0, process_count=1)
    take(first, 3)
    state = first.get_state()
    resumed = make_loader(shard_dir, cfg, train=True, process_index=0, process_count=1)
    resumed.set_state(state)
    for x, y in zip(full[3:], take(resumed, 4), strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_two_processes_cover_every_record_exactly_once(shard_dir):
    cfg = dataclasses.replace(CFG, num_epochs=1, batch_size=2)
    seen = []
    for p in range(2):
        for b in make_dataset(shard_dir, cfg, train=True, process_index=p, process_count=2):
            assert len(b["video_index"]) == 1
            seen += b["video_index"].tolist()
    assert sorted(seen) == list(range(12))
    # Evaluation: every (video, window) once across processes, equal batch counts.
    ev = dataclasses.replace(CFG, splits=("test",), eval_windows=2, batch_size=4)
    per_process = [
        list(make_dataset(shard_dir, ev, train=False, process_index=p, process_count=2))
        for p in range(2)
    ]
    assert len(per_process[0]) == len(per_process[1])
    pairs = [
        (v, w)
        for batches in per_process
        for b in batches
        for v, w, ok in zip(b["video_index"], b["window_index"], b["valid"], strict=True)
        if ok
    ]
    # test records have 30, 50, 70, 90, 110 rows: 1 window for 30, 2 for the rest.
    expected = [(12, 0)] + [(v, w) for v in range(13, 17) for w in range(2)]
    assert sorted(pairs) == expected


def test_eval_padding_marks_filler_rows_invalid(shard_dir):
    ev = dataclasses.replace(CFG, splits=("test",), eval_windows=0, batch_size=4)
    batches = list(make_loader(shard_dir, ev, train=False, process_index=0, process_count=1))
    assert len(batches) == 2
    valid = np.concatenate([b["valid"] for b in batches])
    assert valid.tolist() == [True] * 5 + [False] * 3
    weights = np.concatenate([b["sample_weight"] for b in batches])
    assert weights[valid].tolist() == [1.0] * 5 and not weights[~valid].any()
    # Whole sequences: padded to the longest test record (110 rows), each fully present.
    assert batches[0]["keypoints"].shape[1] == 110
    lengths = np.concatenate([b["keypoint_mask"].sum(1) for b in batches])[valid]
    assert lengths.tolist() == [30, 50, 70, 90, 110]


def test_workers_give_the_same_batches_as_in_process(shard_dir):
    cfg = dataclasses.replace(CFG, seed=5)
    inline = take(make_loader(shard_dir, cfg, train=True, process_index=0, process_count=1), 4)
    cfg1 = dataclasses.replace(cfg, num_workers=1)
    with make_loader(shard_dir, cfg1, train=True, process_index=0, process_count=1) as loader:
        pooled = take(loader, 2)
        state = loader.get_state()
        pooled += take(loader, 2)
        # Saved worker state rewinds the running workers (one pool: start-up costs ~2 s).
        loader.set_state(state)
        resumed = take(loader, 2)
    for x, y in zip(inline, pooled, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    for x, y in zip(inline[2:], resumed, strict=True):
        np.testing.assert_array_equal(x["keypoints"], y["keypoints"])


def test_global_arrays_on_a_device_mesh(shard_dir):
    mesh = jax.make_mesh((8,), ("data",))
    cfg = dataclasses.replace(CFG, batch_size=8)
    plain = next(make_loader(shard_dir, cfg, train=True))
    batch = next(make_loader(shard_dir, cfg, train=True, mesh=mesh))
    kp = batch["keypoints"]
    assert isinstance(kp, jax.Array) and kp.shape == (8, 32, NUM_KEYPOINTS, 3)
    assert kp.sharding.spec[0] == "data" and len(kp.addressable_shards) == 8
    np.testing.assert_array_equal(np.asarray(kp), plain["keypoints"])
    with pytest.raises(ValueError, match="divisible"):
        make_loader(shard_dir, dataclasses.replace(CFG, batch_size=4), train=True, mesh=mesh)


def test_text_fn_hook_adds_arrays(shard_dir):
    def tokens(record):
        return {"text_ids": np.full((5,), len(record.video_id), np.int32)}

    b = next(make_loader(shard_dir, CFG, train=True, text_fn=tokens))
    assert b["text_ids"].shape == (4, 5) and np.all(b["text_ids"] == 6)
    assert "transcript" not in b


def test_image_dim_mismatch_names_the_video(shard_dir):
    cfg = dataclasses.replace(CFG, image_dim=16)
    with pytest.raises(ValueError, match="vid0.*image_features width 4"):
        next(make_loader(shard_dir, cfg, train=True))


def test_shards_without_image_features_are_refused_before_reading(tmp_path):
    out = tmp_path / "raw"
    write_records([make_record(i, 40, label=i % 2, image_features=None) for i in range(4)], out)
    with pytest.raises(ValueError, match=r"raw: no record of splits \('train',\) has image_"):
        make_loader(out, CFG, train=True)
    b = next(make_loader(out, dataclasses.replace(CFG, image_dim=None), train=True))
    assert "image_features" not in b and b["keypoints"].shape[0] == 4


def test_a_record_without_image_features_gets_no_image_rows(tmp_path):
    out = tmp_path / "mixed"
    recs = [make_record(0, 40, image_features=None), make_record(1, 40, label=0)]
    write_records(recs, out)
    cfg = dataclasses.replace(CFG, batch_size=2, eval_windows=1)
    b = next(make_loader(out, cfg, train=False))
    by_video = dict(
        zip(b["video_index"].tolist(), b["image_mask"].any(axis=1).tolist(), strict=True)
    )
    assert by_video == {0: False, 1: True}


def test_selection_pseudo_pool_weights_and_balance(shard_dir):
    from hemo_jax.contract.shards import open_shards

    infos = open_shards(shard_dir).infos
    sel = select(infos, splits=("train",), pseudo_pool="unlabeled", min_pseudo_confidence=0.4)
    assert sel.indices.tolist() == list(range(12)) + [17, 18]
    assert sel.target[-2:].tolist() == [1, 1] and sel.from_pool.sum() == 2
    np.testing.assert_allclose(sel.weight[-2:], [0.9, 0.5])
    bal = select(infos, splits=("train", "test"), balance_classes=True)
    for cls in (0, 1):  # each class carries half the total weight
        assert bal.weight[bal.target == cls].sum() == pytest.approx(bal.weight.sum() / 2)
    # With a confidence-weighted pool too, the summed weights balance, not the counts.
    mixed = select(infos, splits=("train",), pseudo_pool="unlabeled", balance_classes=True)
    assert mixed.from_pool.any() and not np.allclose(mixed.weight[mixed.from_pool], 1.0)
    for cls in (0, 1):
        share = mixed.weight[mixed.target == cls].sum() / mixed.weight.sum()
        assert share == pytest.approx(0.5)
    flat = select(infos, splits=("train",), pseudo_pool="unlabeled", confidence_weighting=False)
    np.testing.assert_allclose(flat.weight[flat.from_pool], 1.0)
    # Transductive pool: test records train on their pseudo label, never their label.
    infos_t = [
        dataclasses.replace(r, pseudo_label=1 - r.label, pseudo_confidence=0.9)
        if r.split == "test"
        else r
        for r in infos
    ]
    trans = select(infos_t, splits=("train",), pseudo_pool="test")
    test_idx = [i for i, r in enumerate(infos_t) if r.split == "test"]
    assert sorted(trans.indices[trans.from_pool].tolist()) == test_idx
    for i, t in zip(trans.indices, trans.target, strict=True):
        if i in test_idx:
            assert t == infos_t[i].pseudo_label != infos_t[i].label
    sampled = select(infos, splits=("train", "test"), balanced_sampling=True)
    counts = np.bincount(sampled.target)
    assert counts[0] == counts[1] == max(np.bincount(bal.target))
    with pytest.raises(ValueError, match="no records"):
        select(infos, splits=("val",))
    with pytest.raises(ValueError, match="pseudo_pool 'x'"):
        select(infos, splits=("train",), pseudo_pool="x")
    with pytest.raises(ValueError, match="unknown splits"):
        select(infos, splits=("training",))
