"""preprocess.labeling.cache: keys that separate what must not be mixed, files that survive."""

from __future__ import annotations

import hashlib

from preprocess.labeling.cache import LabelCache, cache_key, file_sha256


def test_every_key_field_makes_another_key():
    base = ("a" * 64, "m", "prompt-v1", "gemini-api")
    keys = {cache_key(*base)}
    for i, other in enumerate(("b" * 64, "m2", "other-prompt", "127.0.0.1")):
        keys.add(cache_key(*base[:i], other, *base[i + 1 :]))
    assert len(keys) == 5


def test_keys_keep_the_names_of_caches_already_on_disk():
    # A change to how keys are made would orphan every cached answer (paid for) silently.
    key = cache_key("a" * 64, "gemini-2.5-pro", "prompt-v1", "gemini-api")
    assert key == "97666a7d4807c3fef40e4e10ad5ec24d5f85bb955dd590999f5ccac213a8dd80"


def test_file_sha256_reads_the_whole_file(tmp_path):
    data = bytes(range(256)) * 9000  # more than one read block
    path = tmp_path / "video.mp4"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_store_load_discard_and_unreadable_files(tmp_path, caplog):
    cache = LabelCache(tmp_path / "cache")
    key = cache_key("a" * 64, "m", "p", "e")
    assert cache.load(key) is None
    cache.store(key, {"label": 1})
    cache.store(key, {"text": "first"}, ".turn1")
    assert cache.load(key) == {"label": 1}
    assert cache.load(key, ".turn1") == {"text": "first"}
    cache.discard(key, ".turn1")
    assert cache.load(key, ".turn1") is None
    assert cache.load(key) == {"label": 1}  # the answer stays
    (tmp_path / "cache" / f"{key}.json").write_text("{not json")
    assert cache.load(key) is None
    assert "ignoring unreadable cache file" in caplog.text
