"""The record contract: round trips and every refusal, on write and on read."""

from __future__ import annotations

import dataclasses

import msgpack
import numpy as np
import pytest

from hemo_jax.contract.schema import (
    NUM_KEYPOINTS,
    SCHEMA_VERSION,
    SchemaError,
    VideoRecord,
    decode_record,
    encode_record,
)


def make_record(t: int = 6, t_img: int = 3, *, features: bool = True, crops: bool = True):
    rng = np.random.default_rng(0)
    kp = rng.uniform(0, 700, (t, NUM_KEYPOINTS, 3)).astype(np.float32)
    kp[..., 2] = rng.uniform(0, 1, (t, NUM_KEYPOINTS))
    return VideoRecord(
        video_id="vid_007",
        subject_id="subj_3",
        source="synthetic",
        split="train",
        fps=25.0,
        frame_size=(720, 1280),
        keypoints=kp,
        keypoint_frames=np.arange(0, 2 * t, 2, dtype=np.int32),
        label=1,
        pseudo_label=0,
        pseudo_confidence=0.75,
        crops=[bytes([i]) * (10 + i) for i in range(t_img)] if crops else [],
        crop_frames=np.arange(0, 3 * t_img, 3, dtype=np.int32),
        boxes=rng.uniform(0, 500, (t_img, 4)).astype(np.float32),
        image_features=(rng.standard_normal((t_img, 8)).astype(np.float16) if features else None),
        transcript="Well, it was a tough match.",
        reasoning="The player looks down often.",
    )


def assert_same(a: VideoRecord, b: VideoRecord, *, skip: tuple[str, ...] = ()) -> None:
    for f in dataclasses.fields(VideoRecord):
        if f.name in skip:
            continue
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape, f.name
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert x == y, f.name


def tamper(record: VideoRecord, edit) -> bytes:
    """Encodes a valid record, then edits the msgpack map the way a bad writer would."""
    obj = msgpack.unpackb(encode_record(record), raw=False)
    edit(obj)
    return msgpack.packb(obj, use_bin_type=True)


def expect_refusal(fn, field: str, match: str | None = None) -> SchemaError:
    with pytest.raises(SchemaError, match=match) as info:
        fn()
    err = info.value
    assert err.field == field
    assert field in str(err)
    assert err.video_id in str(err)
    return err


@pytest.mark.parametrize(
    "features,crops", [(True, True), (False, True), (True, False), (False, False)]
)
def test_round_trip_keeps_every_field(features, crops):
    rec = make_record(features=features, crops=crops)
    back = decode_record(encode_record(rec))
    assert_same(rec, back)
    assert back.frame_size == (720, 1280) and isinstance(back.frame_size, tuple)
    assert (back.image_features is None) == (not features)


def test_skip_crops_leaves_default_and_keeps_the_rest():
    rec = make_record()
    back = decode_record(encode_record(rec), skip=("crops",))
    assert back.crops == []
    assert_same(rec, back, skip=("crops",))
    back = decode_record(encode_record(rec), skip=("image_features", "transcript"))
    assert back.image_features is None and back.transcript == ""
    assert back.crops == rec.crops


def test_skip_refuses_fields_that_cannot_be_left_out():
    data = encode_record(make_record())
    with pytest.raises(ValueError, match="keypoints"):
        decode_record(data, skip=("keypoints",))
    with pytest.raises(ValueError, match="crop"):
        decode_record(data, skip=("crop",))  # a typo is an error, not a no-op


def test_wrong_version_refused_on_write_and_read():
    rec = make_record()
    bad = dataclasses.replace(rec, schema_version=SCHEMA_VERSION + 1)
    err = expect_refusal(lambda: encode_record(bad), "schema_version")
    assert err.video_id == "vid_007"
    data = tamper(rec, lambda o: o.update(schema_version=99))
    expect_refusal(lambda: decode_record(data), "schema_version", "99")


def test_unknown_and_missing_fields_refused():
    data = tamper(make_record(), lambda o: o.update(emotion="happy"))
    expect_refusal(lambda: decode_record(data), "emotion", "unknown")
    data = tamper(make_record(), lambda o: o.pop("keypoint_frames"))
    expect_refusal(lambda: decode_record(data), "keypoint_frames", "missing")


def test_wrong_dtype_refused_on_write_and_read():
    rec = make_record()
    bad = dataclasses.replace(rec, keypoints=rec.keypoints.astype(np.float16))
    expect_refusal(lambda: encode_record(bad), "keypoints", "float16")

    def to_float16(o):
        arr = np.frombuffer(o["keypoints"]["data"], np.float32).astype(np.float16)
        o["keypoints"].update(dtype="<f2", data=arr.tobytes())

    expect_refusal(lambda: decode_record(tamper(rec, to_float16)), "keypoints", "float16")
    bad = dataclasses.replace(rec, crop_frames=rec.crop_frames.astype(np.int64))
    expect_refusal(lambda: encode_record(bad), "crop_frames", "int64")
    bad = dataclasses.replace(rec, label="1")
    expect_refusal(lambda: encode_record(bad), "label")
    bad = dataclasses.replace(rec, label=True)  # bool is an int in Python, not here
    expect_refusal(lambda: encode_record(bad), "label")


def test_wrong_shape_and_rank_refused_on_write_and_read():
    rec = make_record()
    bad = dataclasses.replace(rec, keypoints=rec.keypoints[:, :136])
    expect_refusal(lambda: encode_record(bad), "keypoints", "axis 1 must be 137")
    bad = dataclasses.replace(rec, keypoints=rec.keypoints[:, :, 0])
    expect_refusal(lambda: encode_record(bad), "keypoints", "rank")
    data = tamper(rec, lambda o: o["boxes"].update(shape=[3, 2, 2]))
    expect_refusal(lambda: decode_record(data), "boxes", "rank")
    data = tamper(rec, lambda o: o["keypoints"].update(shape=[7, NUM_KEYPOINTS, 3]))
    expect_refusal(lambda: decode_record(data), "keypoints", "do not fill")
    data = tamper(rec, lambda o: o["boxes"].update(shape="3x4"))
    expect_refusal(lambda: decode_record(data), "boxes", "not a list")


def test_inconsistent_lengths_refused():
    rec = make_record(t=6)
    bad = dataclasses.replace(rec, keypoint_frames=np.arange(5, dtype=np.int32))
    expect_refusal(lambda: encode_record(bad), "keypoint_frames", "T=5")
    bad = dataclasses.replace(rec, boxes=np.zeros((2, 4), np.float32))
    expect_refusal(lambda: encode_record(bad), "boxes", "T_img=2")
    bad = dataclasses.replace(rec, image_features=np.zeros((4, 8), np.float16))
    expect_refusal(lambda: encode_record(bad), "image_features", "T_img=4")


def test_crops_count_mismatch_refused():
    rec = make_record(t_img=3)
    bad = dataclasses.replace(rec, crops=rec.crops[:2])
    expect_refusal(lambda: encode_record(bad), "crops", "2 crops but 3")
    data = tamper(rec, lambda o: o["crops"].append(b"\xff\xd8"))
    expect_refusal(lambda: decode_record(data), "crops", "4 crops but 3")


@pytest.mark.parametrize(
    "field,value",
    [
        ("split", "training"),
        ("label", 2),
        ("pseudo_label", -2),
        ("pseudo_confidence", 1.5),
        ("fps", 0.0),
        ("frame_size", (720,)),
        ("video_id", ""),
    ],
)
def test_bad_scalar_values_refused(field, value):
    bad = dataclasses.replace(make_record(), **{field: value})
    expect_refusal(lambda: encode_record(bad), field)
    data = tamper(make_record(), lambda o: o.update({field: value}))
    expect_refusal(lambda: decode_record(data), field)


def test_unordered_frames_and_non_finite_values_refused():
    rec = make_record()
    frames = rec.keypoint_frames.copy()
    frames[[1, 2]] = frames[[2, 1]]
    expect_refusal(
        lambda: encode_record(dataclasses.replace(rec, keypoint_frames=frames)),
        "keypoint_frames",
        "increasing",
    )
    kp = rec.keypoints.copy()
    kp[2, 5, 0] = np.nan
    expect_refusal(lambda: encode_record(dataclasses.replace(rec, keypoints=kp)), "keypoints")
    feats = rec.image_features.copy()
    feats[0, 0] = np.inf
    bad = dataclasses.replace(rec, image_features=feats)
    expect_refusal(lambda: encode_record(bad), "image_features", "infinity")


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1garbage", b'{"video_id": "x"}', msgpack.packb([1, 2, 3]), msgpack.packb(7)],
)
def test_non_records_refused(data):
    with pytest.raises(SchemaError) as info:
        decode_record(data)
    assert info.value.field == "<record>"
    assert "msgpack" in str(info.value) or "expected a map" in str(info.value)


def test_random_bytes_never_escape_as_other_errors():
    rng = np.random.default_rng(1)
    for _ in range(300):
        data = rng.integers(0, 256, rng.integers(0, 80), dtype=np.uint8).tobytes()
        with pytest.raises(SchemaError):
            decode_record(data)


def test_keypoints_round_trip_exactly():
    # Sub-pixel positions on a 1280x720 frame: float16 would move them by up to 0.5 px.
    rec = make_record()
    rec.keypoints[..., :2] = np.float32(1279.37) - rec.keypoints[..., :2] / 7
    back = decode_record(encode_record(rec))
    assert back.keypoints.dtype == np.float32
    np.testing.assert_array_equal(back.keypoints, rec.keypoints)


def test_version_1_records_are_refused_with_how_to_rebuild():
    data = tamper(make_record(), lambda o: o.update(schema_version=1))
    err = expect_refusal(lambda: decode_record(data), "schema_version", "float16")
    assert "preprocess run" in str(err) and "hemo_jax.encode" in str(err)
