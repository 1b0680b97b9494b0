"""Event files: CRC32C, framing, and protos that TensorBoard's own parser reads back."""

import os
import struct

import pytest

from hemo_jax.training import tensorboard


def test_crc32c_known_vectors():
    # RFC 3720 (iSCSI) test vectors for CRC-32C.
    assert tensorboard.crc32c(b"") == 0
    assert tensorboard.crc32c(b"123456789") == 0xE3069283
    assert tensorboard.crc32c(bytes(32)) == 0x8A9136AA


def test_event_file_parses_with_tensorboard_protos(tmp_path):
    event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
    w = tensorboard.ScalarWriter(str(tmp_path))
    w.add_scalars(7, {"train/loss": 0.25, "train/accuracy": 0.75})
    w.close()
    with open(w.path, "rb") as f:
        data = f.read()
    events = []
    while data:
        (length,) = struct.unpack("<Q", data[:8])
        payload = data[12 : 12 + length]
        assert struct.unpack("<I", data[12 + length : 16 + length])[0] == (
            tensorboard._masked_crc(payload)
        )
        event = event_pb2.Event()
        event.ParseFromString(payload)
        events.append(event)
        data = data[16 + length :]
    assert events[0].file_version == "brain.Event:2"
    assert events[1].step == 7
    values = {v.tag: v.simple_value for v in events[1].summary.value}
    assert values == {"train/loss": 0.25, "train/accuracy": 0.75}


def test_crc32c_and_framing_match_tensorboardx_byte_for_byte(tmp_path):
    record_writer = pytest.importorskip("tensorboardX.record_writer")
    crc = pytest.importorskip("tensorboardX.crc32c")
    payloads = [b"", b"x", os.urandom(1000), os.urandom(70_000)]
    for data in payloads:
        assert tensorboard.crc32c(data) == crc.crc32c(data)
    path = tmp_path / "theirs.tfrecord"
    writer = record_writer.RecordWriter(str(path))
    for data in payloads:
        writer.write(data)
    writer.close()
    assert path.read_bytes() == b"".join(tensorboard.frame_record(d) for d in payloads)
