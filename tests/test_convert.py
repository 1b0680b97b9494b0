"""The strict HF → NNX converter and the torch-free checkpoint readers."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers

from hemo_jax.models import bert, convert


def _tiny_bert(directory, **save_kw) -> transformers.BertModel:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=8,
    )
    model = transformers.BertModel(cfg).eval()
    model.save_pretrained(directory, **save_kw)
    return model


def _leaves(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(model)]


def test_missing_extra_and_misshaped_reported_together(tmp_path):
    _tiny_bert(tmp_path)
    tensors = safetensors.torch.load_file(tmp_path / "model.safetensors")
    del tensors["encoder.layer.1.attention.self.key.bias"]
    tensors["encoder.layer.0.attention.self.rotary.weight"] = torch.zeros(4)
    tensors["encoder.layer.0.intermediate.dense.weight"] = torch.zeros(31, 16)
    safetensors.torch.save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(convert.ConversionError) as info:
        bert.load_bert(tmp_path)
    err = info.value
    assert err.missing == ["layers.1.attention.qkv.bias (48,) (no tensor for key)"]
    assert err.unexpected == ["encoder.layer.0.attention.self.rotary.weight (4,)"]
    assert len(err.mismatched) == 1
    assert "encoder.layer.0.intermediate.dense.weight (31, 16)" in err.mismatched[0]
    assert "expected (16, 32)" in err.mismatched[0]
    message = str(err)
    for name in ("qkv.bias", "rotary.weight", "intermediate.dense.weight", str(tmp_path)):
        assert name in message


def test_transform_failure_and_duplicate_targets_are_reported():
    rules = [
        convert.Rule(r"w", "dense.kernel", convert.linear_kernel),
        convert.Rule(r"(?:m\.)?b", "dense.bias"),
    ]
    targets = {("dense", "kernel"): (3, 2), ("dense", "bias"): (2,)}
    tensors = {"w": np.zeros((2, 3, 1)), "b": np.zeros(2), "m.b": np.zeros(2)}
    with pytest.raises(convert.ConversionError) as info:
        convert.convert_tensors(tensors, targets, rules)
    assert not info.value.missing  # the mis-shaped kernel is not reported twice
    assert any("Linear weight is 2-D" in m for m in info.value.mismatched)
    assert any("already filled" in m for m in info.value.mismatched)
    ok = convert.convert_tensors(
        {"w": np.arange(6.0).reshape(2, 3), "b": np.ones(2)}, targets, rules
    )
    np.testing.assert_array_equal(ok[("dense", "kernel")], np.arange(6.0).reshape(2, 3).T)


def test_chunk_splits_fused_weights():
    rule = convert.Rule(
        r"x", ("a.kernel", "b.kernel"), convert.chunk(2, then=convert.linear_kernel)
    )
    w = np.arange(24.0).reshape(6, 4)
    out = convert.convert_tensors(
        {"x": w}, {("a", "kernel"): (4, 3), ("b", "kernel"): (4, 3)}, [rule]
    )
    np.testing.assert_array_equal(out[("a", "kernel")], w[:3].T)
    np.testing.assert_array_equal(out[("b", "kernel")], w[3:].T)


def test_concat_joins_pieces_in_order_and_reports_bad_ones():
    rules = [
        convert.Rule(
            r"(?:m\.)?(\d)\.(query|key|value)",
            "l.{0}.qkv.kernel",
            convert.linear_kernel,
            concat=convert.QKV,
        )
    ]
    targets = {("l", 0, "qkv", "kernel"): (3, 6), ("l", 1, "qkv", "kernel"): (3, 6)}
    w = {p: np.full((2, 3), i, np.float32) for i, p in enumerate(("query", "key", "value"))}
    tensors = {f"{layer}.{p}": w[p] for layer in "01" for p in reversed(tuple(w))}
    out = convert.convert_tensors(tensors, targets, rules)
    # Columns in query, key, value order, each piece transposed first.
    np.testing.assert_array_equal(out[("l", 1, "qkv", "kernel")][0], [0, 0, 1, 1, 2, 2])
    bad = {
        "0.query": w["query"],
        "0.key": np.zeros((2, 4)),
        "0.value": w["value"],
        "1.query": w["query"],
        "m.1.query": w["query"],
        "1.value": w["value"],
    }
    with pytest.raises(convert.ConversionError) as info:
        convert.convert_tensors(bad, targets, rules)
    err = info.value
    assert err.missing == ["l.1.qkv.kernel (3, 6) (no tensor for key)"]
    assert len(err.mismatched) == 2
    assert any("0.key (2, 4)" in m and "expected (3, 6)" in m for m in err.mismatched)
    assert any("piece 'query' already given by 1.query" in m for m in err.mismatched)


def test_torch_bin_reader_matches_torch_load(tmp_path):
    base = torch.randn(5, 6)
    state = {
        "plain": torch.randn(3, 4),
        "transposed": base.t(),  # non-contiguous view
        "offset_view": base[2:, 1:4],  # shares storage, non-zero offset
        "bf16": torch.randn(7, dtype=torch.bfloat16),
        "half": torch.randn(2, 2, dtype=torch.float16),
        "ints": torch.arange(5, dtype=torch.int64),
        "scalar": torch.tensor(3.5),
        "param": torch.nn.Parameter(torch.randn(2)),
    }
    torch.save(state, tmp_path / "pytorch_model.bin")
    got = convert.read_torch_bin(tmp_path / "pytorch_model.bin")
    assert set(got) == set(state)
    for key, tensor in state.items():
        expected = tensor.detach().float().numpy() if key == "bf16" else tensor.detach().numpy()
        assert got[key].shape == tuple(tensor.shape), key
        np.testing.assert_array_equal(got[key].astype(expected.dtype), expected, err_msg=key)
    assert got["bf16"].dtype == ml_dtypes.bfloat16


class _Exploit:
    def __reduce__(self):
        return (os.getcwd, ())


def test_torch_bin_reader_refuses_other_globals(tmp_path):
    torch.save({"w": torch.zeros(2), "x": _Exploit()}, tmp_path / "evil.bin")
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load (posix|os)\.getcwd"):
        convert.read_torch_bin(tmp_path / "evil.bin")
    torch.save({"w": torch.zeros(2)}, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="legacy pre-1.6 format"):
        convert.read_torch_bin(tmp_path / "legacy.bin")


def test_safetensors_reader_handles_bfloat16(tmp_path):
    tensors = {"a": torch.randn(3, 5, dtype=torch.bfloat16), "b": torch.randn(4)}
    safetensors.torch.save_file(tensors, tmp_path / "x.safetensors")
    got = convert.read_safetensors(tmp_path / "x.safetensors")
    assert got["a"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(got["a"].astype(np.float32), tensors["a"].float().numpy())
    np.testing.assert_array_equal(got["b"], tensors["b"].numpy())


def test_bin_sharded_and_safetensors_checkpoints_load_the_same(tmp_path):
    _tiny_bert(tmp_path / "safe")
    _tiny_bert(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    (tmp_path / "bin").mkdir()
    torch.save(
        safetensors.torch.load_file(tmp_path / "safe" / "model.safetensors"),
        tmp_path / "bin" / "pytorch_model.bin",
    )
    shutil.copy(tmp_path / "safe" / "config.json", tmp_path / "bin")
    reference = _leaves(bert.load_bert(tmp_path / "safe"))
    for variant in ("sharded", "bin"):
        leaves = _leaves(bert.load_bert(tmp_path / variant))
        assert len(leaves) == len(reference)
        for a, b in zip(leaves, reference, strict=True):
            np.testing.assert_array_equal(a, b)


def test_missing_weights_and_config_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        convert.read_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="no weights found"):
        convert.read_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a checkpoint directory"):
        convert.resolve_checkpoint(tmp_path / "nope")


def test_repo_id_resolves_in_offline_hf_cache(tmp_path, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = tmp_path / "hub" / "models--acme--tiny-bert"
    hf = _tiny_bert(repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert convert.resolve_checkpoint("acme/tiny-bert") == repo_dir / "snapshots" / commit
    ours = bert.load_bert("acme/tiny-bert")
    ids = np.array([[1, 2, 3]], np.int32)
    with torch.inference_mode():
        expected = hf(torch.from_numpy(ids.astype(np.int64))).pooler_output.numpy()
    with jax.default_matmul_precision("float32"):
        np.testing.assert_allclose(ours(ids)[0], expected, atol=1e-5, rtol=0)
    with pytest.raises(FileNotFoundError, match="acme/absent: not in"):
        convert.resolve_checkpoint("acme/absent")


def test_index_json_names_every_shard(tmp_path):
    _tiny_bert(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    tensors = convert.read_checkpoint(tmp_path)
    assert set(tensors) == set(index["weight_map"])
