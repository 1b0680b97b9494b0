"""The data a training config names: its shard set, the pipeline settings for training and
evaluation, and the text hook that tokenises each record for the text branch."""

from __future__ import annotations

import ml_collections

from hemo_jax.contract.shards import ShardSet, open_shards
from hemo_jax.data import pipeline, splits
from hemo_jax.data.text import HashingTokenizer, PretrainedTokenizer, RecordText
from hemo_jax.experiment.model import HASH_VOCAB


def shard_set(config: ml_collections.ConfigDict) -> ShardSet:
    """The shard set ``config.data.shards`` names; unset, an error that says how to set it
    (an empty path would otherwise be read as the current directory)."""
    if not config.data.shards:
        raise ValueError(
            "config.data.shards is not set: pass --config.data.shards=DIR, a shard set "
            "with image features (the output of hemo_jax.encode)"
        )
    return open_shards(config.data.shards)


def pipeline_config(
    config: ml_collections.ConfigDict, *, train: bool, split: str | None = None
) -> pipeline.PipelineConfig:
    """Training reads ``data.train_splits`` (+ the pseudo pool in stage 2); evaluation
    reads ``split`` (default ``data.eval_split``) in evenly spaced windows; ``data.fold``
    holds a fold out of training only; ``data.val_fraction`` carves split ``val`` out of
    ``data.train_splits``."""
    d = config.data
    use_pool = train and config.pseudo.pool != "none"
    evaluated = split or d.eval_split
    return pipeline.PipelineConfig(
        batch_size=d.batch_size if train else d.eval_batch_size,
        max_frames=d.max_frames,
        frame_stride=d.frame_stride,
        image_dim=config.model.image_feature_dim if "image" in config.branches else None,
        image_max=d.max_images,
        eval_windows=d.eval_windows,
        splits=tuple(d.train_splits) if train else (evaluated,),
        # The carve decides what training reads and what "val" is; any other split is
        # evaluated as the shard set names it ("train" with the carved videos: the
        # stacked fusion's out-of-fold rows, hemo_jax.predict).
        val_fraction=d.get("val_fraction", 0.0) if train or evaluated == "val" else 0.0,
        val_from=tuple(d.train_splits),
        pseudo_pool=config.pseudo.pool if use_pool else "none",
        min_pseudo_confidence=config.pseudo.threshold,
        confidence_weighting=config.pseudo.confidence_weighting,
        balance_classes=train and config.train.class_weighting and not d.balanced_sampling,
        balanced_sampling=train and d.balanced_sampling,
        hold_out=splits.parse_fold(d.get("fold", "")) if train else None,
        seed=config.seed,
        num_workers=d.num_workers if train else 0,
    )


def text_fn(config: ml_collections.ConfigDict, *, text_encoder: str | None) -> RecordText | None:
    """The pipeline hook that tokenises each record's text, when there is a text branch:
    with the tokenizer of the BERT directory ``text_encoder``, else by hashing words."""
    if "text" not in config.branches:
        return None
    tokenizer = PretrainedTokenizer(text_encoder) if text_encoder else HashingTokenizer(HASH_VOCAB)
    return RecordText(tokenizer, config.data.text_source, config.data.max_text_tokens)
