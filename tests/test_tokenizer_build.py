"""Index building end to end on tiny catalogs: embeddings (cache, checks, image fusion), rqkmeans and a tiny RQ-VAE,
incremental `add_items`, the `llmrec index` commands, and the report statistics.

Every text embedding comes from `HashEncoder` (no model download); every quantizer is tiny.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from llmrec.cli import main
from llmrec.data.importers.common import RawData
from llmrec.data.io import DataError, sha256_file
from llmrec.data.prepare import prepare
from llmrec.schemas import Interaction, Item
from llmrec.sid import SemanticIdIndex, load_index, save_index
from tokenizer.assign import assign_codes
from tokenizer.build import add_items, build_index, embedding_config_of, load_quantizer, quantizer_path
from tokenizer.config import EmbeddingConfig, IndexConfig, QuantizerConfig, TextTemplate
from tokenizer.embed import HashEncoder, check_finite, embed_items
from tokenizer.report import code_stats, item_labels, semantic_coherence

GENRES = ("comedy", "horror", "western", "musical", "noir")
RQKMEANS = QuantizerConfig(method="rqkmeans", num_levels=3, codebook_size=8)
RQVAE = QuantizerConfig(
    method="rqvae", num_levels=3, codebook_size=8, hidden_dims=(32, 16), latent_dim=8, epochs=2, min_steps=30,
    batch_size=64, reseed_every=10,
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def genre_item(number: int) -> Item:
    genre = GENRES[number % len(GENRES)]
    return Item(f"i{number:02d}", f"{genre.title()} {genre}land saga part {number}", {"genres": genre.title()})


def genre_raw(numbers, name: str = "genres") -> RawData:
    """Items `i<number>` whose titles share their genre's words; 8 users over items i00..i11 (all kept by prepare)."""
    items = {f"i{n:02d}": genre_item(n) for n in numbers}
    rows = [Interaction(f"u{user}", f"i{(user + k) % 12:02d}", k) for user in range(8) for k in range(4)]
    return RawData(name, "test", items, rows, [])


def hash_config(quantizer: QuantizerConfig = RQKMEANS, **embedding) -> IndexConfig:
    return IndexConfig(EmbeddingConfig(text_encoder="hash-32", **embedding), quantizer)


class CountingEncoder:
    """`HashEncoder(32)` that counts its calls (the cache must spare them)."""

    def __init__(self) -> None:
        self.inner = HashEncoder(32)
        self.name, self.dim, self.calls = self.inner.name, self.inner.dim, 0

    def encode(self, inputs: list[str]) -> np.ndarray:
        self.calls += 1
        return self.inner.encode(inputs)


class FakeImageEncoder:
    """Mean RGB of the image plus a constant 1: a 4-d image 'embedding' that records the paths it was given."""

    name, dim = "fake-image", 4

    def __init__(self) -> None:
        self.paths: list[str] = []

    def encode(self, inputs: list[str]) -> np.ndarray:
        self.paths += inputs
        rows = [
            [*np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).mean(axis=(0, 1)), 1.0] for path in inputs
        ]
        return np.array(rows, dtype=np.float32)


@pytest.fixture(scope="module")
def dataset_a(tmp_path_factory):
    """40 items in 5 genre groups."""
    return prepare(genre_raw(range(40), "cat-a"), tmp_path_factory.mktemp("a") / "dataset")


@pytest.fixture(scope="module")
def dataset_b(tmp_path_factory):
    """`dataset_a`'s catalog plus 5 new items i40..i44 (no interactions; prepare keeps them)."""
    return prepare(genre_raw(range(45), "cat-b"), tmp_path_factory.mktemp("b") / "dataset")


@pytest.fixture(scope="module")
def rqkmeans_index(dataset_a, tmp_path_factory):
    out = tmp_path_factory.mktemp("rqkmeans") / "sid_index.json"
    return build_index(dataset_a, out, hash_config(), text_encoder=HashEncoder(32)), out


@pytest.fixture(scope="module")
def rqvae_index(dataset_a, tmp_path_factory):
    out = tmp_path_factory.mktemp("rqvae") / "sid_index.json"
    return build_index(dataset_a, out, hash_config(RQVAE), text_encoder=HashEncoder(32)), out


def same_as_saved(loaded: SemanticIdIndex, built: SemanticIdIndex) -> bool:
    """`built` as written to JSON (tuples inside `source` come back as lists) equals `loaded`."""
    return loaded.to_json() == json.loads(json.dumps(built.to_json())) and loaded.items == built.items


# --- build ----------------------------------------------------------------------------------------------------


def check_built_index(index: SemanticIdIndex, out, dataset, method: str) -> None:
    assert set(index.items) == set(dataset.items) and list(index.items) == list(dataset.items)
    assert len(set(index.items.values())) == len(index.items)
    assert index.stats["collision_rate_after"] == 0.0
    for key in ("usage", "perplexity", "collision_rate_before", "reconstruction_mse", "moved_by_sinkhorn"):
        assert key in index.stats
    assert len(index.stats["usage"]) == len(index.stats["perplexity"]) == index.num_levels
    assert index.stats["items"] == len(dataset.items)
    assert np.isfinite(index.stats["reconstruction_mse"])
    assert index.codebook_sizes[:3] == (8, 8, 8)
    assert index.num_levels == 3 + int(index.stats["extra_level"])
    assert index.source["dedup_level"] is index.stats["extra_level"]
    assert index.source["quantizer"]["method"] == method
    assert index.catalog_sha256 == dataset.meta["files"]["items.jsonl"]
    quantizer = quantizer_path(out)
    assert quantizer == out.with_name("sid_index.quantizer.safetensors") and quantizer.is_file()
    assert index.source["quantizer_file"] == quantizer.name
    assert index.source["quantizer_sha256"] == sha256_file(quantizer)
    assert same_as_saved(load_index(out, dataset.items), index)


def test_build_rqkmeans(rqkmeans_index, dataset_a):
    index, out = rqkmeans_index
    check_built_index(index, out, dataset_a, "rqkmeans")
    assert index.source["input_dim"] == 32 and index.source["embedding"]["text_dim"] == 32


def test_build_tiny_rqvae(rqvae_index, dataset_a):
    index, out = rqvae_index
    check_built_index(index, out, dataset_a, "rqvae")
    assert index.stats["training"]["steps"] == 30
    assert len(index.stats["training"]["reconstruction_loss"]) > 0


@pytest.mark.parametrize("fixture", ["rqkmeans_index", "rqvae_index"])
def test_saved_quantizer_reproduces_the_prefixes(fixture, dataset_a, request):
    """The reloaded quantizer assigns every catalog item its indexed prefix (collision handling keeps prefixes)."""
    index, out = request.getfixturevalue(fixture)
    quantizer = load_quantizer(index, out)
    assert (quantizer.encoder is not None) == (fixture == "rqvae_index")
    embeddings, _ = embed_items(dataset_a.items, hash_config().embedding, text_encoder=HashEncoder(32))
    greedy = assign_codes(quantizer.latents(embeddings), quantizer.codebooks)  # (N, 3)
    np.testing.assert_array_equal(greedy[:, :2], np.array(list(index.items.values()))[:, :2])


def test_rqkmeans_build_is_deterministic(dataset_a, rqkmeans_index, tmp_path):
    again = build_index(dataset_a, tmp_path / "again.json", hash_config(), text_encoder=HashEncoder(32))
    assert list(again.items.items()) == list(rqkmeans_index[0].items.items())


def test_build_records_the_encoder_actually_used(dataset_a, tmp_path):
    config = IndexConfig(quantizer=RQKMEANS)  # default text_encoder name, overridden below
    index = build_index(dataset_a, tmp_path / "sid_index.json", config, text_encoder=HashEncoder(32))
    assert index.source["embedding"]["text_encoder"] == "hash-32"


# --- incremental add ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["rqkmeans_index", "rqvae_index"])
def test_add_items_keeps_old_sids(fixture, dataset_b, tmp_path, request):
    index, path = request.getfixturevalue(fixture)
    out = tmp_path / "grown.json"
    grown = add_items(index, path, dataset_b, out, text_encoder=HashEncoder(32))
    assert list(grown.items) == list(dataset_b.items)
    for item_id, sid in index.items.items():
        assert grown.items[item_id] == sid
    new_ids = [f"i{n}" for n in range(40, 45)]
    new_sids = [grown.items[item_id] for item_id in new_ids]
    assert all(len(sid) == index.num_levels for sid in new_sids)
    assert len(set(grown.items.values())) == len(grown.items) == 45
    assert not set(new_sids) & set(index.items.values())
    assert grown.stats["added_items"] == 5 and grown.codebook_sizes == index.codebook_sizes
    assert grown.catalog_sha256 == dataset_b.meta["files"]["items.jsonl"]
    assert same_as_saved(load_index(out, dataset_b.items), grown)
    assert sha256_file(quantizer_path(out)) == index.source["quantizer_sha256"]  # copied beside the new index
    assert same_as_saved(load_index(path), index)  # the original index is untouched
    again = add_items(grown, out, dataset_b, out, text_encoder=HashEncoder(32))
    assert again.items == grown.items and again.stats["added_items"] == 5


def test_add_items_refuses_a_catalog_that_lost_items(rqkmeans_index, tmp_path):
    index, path = rqkmeans_index
    smaller = prepare(genre_raw([n for n in range(40) if n != 33]), tmp_path / "smaller")
    with pytest.raises(DataError, match=r"1 indexed item\(s\) are missing from the new catalog \(e\.g\. \['i33'\]\)"):
        add_items(index, path, smaller, tmp_path / "out.json", text_encoder=HashEncoder(32))
    assert not (tmp_path / "out.json").exists()


def test_add_items_refuses_a_modified_or_missing_quantizer(dataset_a, dataset_b, tmp_path):
    out = tmp_path / "sid_index.json"
    index = build_index(dataset_a, out, hash_config(), text_encoder=HashEncoder(32))
    quantizer = quantizer_path(out)
    quantizer.write_bytes(quantizer.read_bytes() + b"\0")
    with pytest.raises(DataError, match="sid_index.quantizer.safetensors does not match .*checksum differs"):
        add_items(index, out, dataset_b, tmp_path / "grown.json", text_encoder=HashEncoder(32))
    quantizer.unlink()
    with pytest.raises(DataError, match="sid_index.quantizer.safetensors not found"):
        add_items(index, out, dataset_b, tmp_path / "grown.json", text_encoder=HashEncoder(32))


# --- embeddings -----------------------------------------------------------------------------------------------


def test_embedding_cache_is_reused_and_invalidated_by_a_new_template(dataset_a, tmp_path):
    cache = tmp_path / "cache"
    encoder = CountingEncoder()
    first = build_index(dataset_a, tmp_path / "one.json", hash_config(), cache, text_encoder=encoder)
    assert encoder.calls == 1
    assert (cache / "text-hash-32.npy").is_file() and (cache / "text-hash-32.json").is_file()
    second = build_index(dataset_a, tmp_path / "two.json", hash_config(), cache, text_encoder=encoder)
    assert encoder.calls == 1  # served from the cache
    assert second.items == first.items
    embed_items(dataset_a.items, hash_config(template=TextTemplate(("title",))).embedding, cache, text_encoder=encoder)
    assert encoder.calls == 2  # the rendered texts changed
    embed_items(dataset_a.items, hash_config(template=TextTemplate(max_chars=999)).embedding, cache, None, encoder)
    assert encoder.calls == 3  # same texts, but the template is part of the key
    embed_items(dict(list(dataset_a.items.items())[:5]), hash_config().embedding, cache, text_encoder=encoder)
    assert encoder.calls == 4  # another catalog


def test_nan_embedding_names_the_item(dataset_a):
    class NanEncoder(HashEncoder):
        def encode(self, inputs: list[str]) -> np.ndarray:
            vectors = super().encode(inputs)
            vectors[7, 3] = np.nan
            return vectors

    with pytest.raises(DataError, match=r"1 item embedding\(s\) contain NaN or inf \(items \['i07'\]\)"):
        embed_items(dataset_a.items, hash_config().embedding, text_encoder=NanEncoder(32))


def test_check_finite():
    check_finite(np.ones((2, 3)), ["a", "b"], "here")
    with pytest.raises(DataError, match=r"^here: 2 item embedding\(s\).*\['a', 'c'\]"):
        check_finite(np.array([[np.inf, 0.0], [1.0, 1.0], [0.0, -np.nan]]), ["a", "b", "c"], "here")


@pytest.mark.parametrize("modalities", [("audio",), ("text", "video"), ()])
def test_embedding_config_rejects_unknown_modalities(modalities):
    with pytest.raises(ValueError, match="modalities must be distinct names among text, image, cf"):
        EmbeddingConfig(modalities=modalities)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "x"}, "method must be 'rqvae' or 'rqkmeans', got 'x'"),
        ({"codebook_size": 1}, "need num_levels >= 1 and codebook_size >= 2"),
        ({"num_levels": 0}, "need num_levels >= 1"),
        ({"epochs": 0}, "epochs and batch_size must be >= 1"),
    ],
)
def test_quantizer_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantizerConfig(**kwargs)


def test_image_modality_without_images(dataset_a):
    config = EmbeddingConfig(modalities=("text", "image"))
    with pytest.raises(DataError, match="modality 'image' asked for, but no item has a local image file"):
        embed_items(dataset_a.items, config, None, dataset_a.path, HashEncoder(32), FakeImageEncoder())


def image_raw(numbers, with_image=(0, 1, 2, 3)) -> RawData:
    raw = genre_raw(numbers, "pictures")
    for number in with_image:
        item = raw.items[f"i{number:02d}"]
        raw.items[item.item_id] = Item(item.item_id, item.title, item.fields, f"img/{item.item_id}.png")
    raw.items["i04"] = Item("i04", "Online only", {}, "https://example.com/i04.png")  # a URL is not a local image
    return raw


def write_images(folder, numbers=(0, 1, 2, 3)) -> None:
    (folder / "img").mkdir()
    for number in numbers:
        Image.new("RGB", (4, 4), (60 * number, 20, 200 - 40 * number)).save(folder / "img" / f"i{number:02d}.png")


@pytest.fixture
def image_dataset(tmp_path):
    dataset = prepare(image_raw(range(12)), tmp_path / "pictures")
    write_images(dataset.path)
    return dataset


def test_image_modality_fuses_text_and_image(image_dataset):
    config = EmbeddingConfig(modalities=("text", "image"), image_weight=0.5)
    images = FakeImageEncoder()
    fused, summary = embed_items(image_dataset.items, config, None, image_dataset.path, HashEncoder(32), images)
    assert fused.shape == (12, 32 + 4) and fused.dtype == np.float32
    assert summary == {"modalities": ["text", "image"], "text_dim": 32, "items_with_image": 4, "image_dim": 4}
    assert images.paths == [str(image_dataset.path / "img" / f"i{n:02d}.png") for n in range(4)]
    np.testing.assert_allclose(np.linalg.norm(fused[:, :32], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(fused[:4, 32:], axis=1), 0.5, rtol=1e-5)
    assert (fused[4:, 32:] == 0).all()  # no (local) image: zero image block
    assert not np.allclose(fused[0, 32:], fused[1, 32:])


def test_build_with_images(image_dataset, tmp_path):
    config = IndexConfig(
        EmbeddingConfig(modalities=("text", "image"), text_encoder="hash-32", image_encoder="fake-image"),
        QuantizerConfig(method="rqkmeans", num_levels=2, codebook_size=4),
    )
    out = tmp_path / "sid_index.json"
    index = build_index(image_dataset, out, config, text_encoder=HashEncoder(32), image_encoder=FakeImageEncoder())
    assert index.source["input_dim"] == 36 and index.source["embedding"]["items_with_image"] == 4
    assert same_as_saved(load_index(out, image_dataset.items), index)


def test_add_text_only_items_to_a_text_and_image_index(image_dataset, tmp_path):
    config = IndexConfig(
        EmbeddingConfig(modalities=("text", "image"), text_encoder="hash-32", image_encoder="fake-image"),
        QuantizerConfig(method="rqkmeans", num_levels=2, codebook_size=4),
    )
    out = tmp_path / "sid_index.json"
    index = build_index(image_dataset, out, config, text_encoder=HashEncoder(32), image_encoder=FakeImageEncoder())
    grown_dataset = prepare(image_raw(range(14)), tmp_path / "grown")  # i12, i13 are new and have no image
    write_images(grown_dataset.path)
    grown = add_items(index, out, grown_dataset, out, text_encoder=HashEncoder(32), image_encoder=FakeImageEncoder())
    assert len(grown.items) == 14


# --- command line ---------------------------------------------------------------------------------------------


def test_cli_build_add_report(tiny_dataset, tiny_raw, tmp_path, capsys):
    out = tmp_path / "idx" / "sid_index.json"
    argv = ["index", "build", "--dataset", str(tiny_dataset.path), "--out", str(out), "--method", "rqkmeans"]
    assert main([*argv, "--text-encoder", "hash-32", "--codebook-size", "8", "--report"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    for name in ("sid_index.json", "sid_index.quantizer.safetensors", "sid_index.report.json", "sid_index.report.png"):
        assert (out.parent / name).is_file(), name
    index = load_index(out, tiny_dataset.items)
    assert index.codebook_sizes[:3] == (8, 8, 8) and index.source["embedding"]["text_encoder"] == "hash-32"
    assert (tiny_dataset.path / "embeddings" / "text-hash-32.npy").is_file()  # default cache inside the dataset
    report = json.loads((out.parent / "sid_index.report.json").read_text(encoding="utf-8"))
    assert report["items"] == 6 and report["collision_rate_after"] == 0.0 and report["method"] == "rqkmeans"
    assert report["coherence"]["field"] == "genres" and "prefix_group_sizes" not in report
    assert report["sequence"]["training_pairs"] > 0 and "markov_hit@10" in report["sequence"]

    new_items = {i: Item(i, f"Title {i.upper()}", {"genres": "G3"}) for i in ("g", "h")}
    grown_raw = RawData("tiny", "fixture", {**tiny_raw.items, **new_items}, tiny_raw.interactions, [])
    grown_dataset = prepare(grown_raw, tmp_path / "grown")
    grown_path = tmp_path / "idx" / "grown.json"
    argv = ["index", "add", "--index", str(out), "--dataset", str(grown_dataset.path), "--out", str(grown_path)]
    assert main(argv) == 0
    assert f"added 2 items; wrote {grown_path}" in capsys.readouterr().out
    grown = load_index(grown_path, grown_dataset.items)
    assert all(grown.items[item_id] == sid for item_id, sid in index.items.items())
    assert (tmp_path / "idx" / "grown.quantizer.safetensors").is_file()

    report_path = tmp_path / "report" / "r.json"
    report_path.parent.mkdir()
    argv = ["index", "report", "--index", str(grown_path), "--dataset", str(grown_dataset.path), "--out"]
    assert main([*argv, str(report_path), "--field", "genres"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["items"] == 8 and printed["coherence"]["field"] == "genres"
    assert report_path.is_file() and report_path.with_suffix(".png").is_file()


def test_cli_bad_dataset_path(tmp_path, capsys):
    argv = ["index", "build", "--dataset", str(tmp_path / "missing"), "--out", str(tmp_path / "sid_index.json")]
    assert main([*argv, "--method", "rqkmeans", "--text-encoder", "hash-32"]) == 2
    assert "dataset.json not found" in capsys.readouterr().err
    assert not (tmp_path / "sid_index.json").exists()


def test_cli_add_with_a_missing_index(tiny_dataset, tmp_path, capsys):
    argv = ["index", "add", "--index", str(tmp_path / "nope.json"), "--dataset", str(tiny_dataset.path)]
    assert main(argv) == 2
    assert "nope.json not found" in capsys.readouterr().err


def test_cli_report_on_a_minimal_valid_index(tiny_dataset, tmp_path):
    path = tmp_path / "sid_index.json"
    save_index(SemanticIdIndex({item_id: (n, 0) for n, item_id in enumerate(tiny_dataset.items)}, (8, 4)), path)
    assert main(["index", "report", "--index", str(path), "--dataset", str(tiny_dataset.path)]) in (0, 2)


# --- report ---------------------------------------------------------------------------------------------------


def test_code_stats_exact():
    codes = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 2, 0]])
    stats = code_stats(codes, [2, 4, 3])
    assert stats["usage"] == [1.0, 0.75, 2 / 3]
    # level 0: p = (3/4, 1/4); level 1: p = (1/2, 1/4, 1/4) -> 2 ** 1.5; level 2: p = (3/4, 1/4).
    h0 = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    assert stats["perplexity"] == [round(float(np.exp(h0)), 4), round(2**1.5, 4), round(float(np.exp(h0)), 4)]
    assert stats["perplexity"][1] == 2.8284
    assert stats["first_level_groups"] == 2
    assert stats["largest_first_level_groups"] == [[0, 3], [1, 1]]
    assert stats["prefix_groups"] == 3
    assert stats["largest_prefix_groups"] == [[[0, 0], 2], [[0, 1], 1], [[1, 2], 1]]
    assert stats["prefix_group_sizes"] == [2, 1, 1]


def test_code_stats_single_level_and_top():
    stats = code_stats(np.array([[0], [0], [1], [2], [2], [2]]), [4], top=2)
    assert stats["usage"] == [0.75] and stats["largest_first_level_groups"] == [[2, 3], [0, 2]]
    assert stats["prefix_groups"] == 0 and stats["prefix_group_sizes"] == []


def labelled_items(field: str = "genres") -> dict[str, Item]:
    labels = ("Action", "Drama; Romance", "Horror", "Comedy")
    return {f"x{n}": Item(f"x{n}", f"t{n}", {field: labels[n % 4]}) for n in range(20)}


def test_semantic_coherence_lift_when_first_codes_follow_genres():
    items = labelled_items()
    index = SemanticIdIndex({f"x{n}": (n % 4, n // 4) for n in range(20)}, (4, 5))
    result = semantic_coherence(index, items, pairs=2000)
    assert result["field"] == "genres" and result["pairs"] == 2000
    assert result["same_first_code_agreement"] == 1.0
    assert 0.1 < result["random_pair_agreement"] < 0.4  # ~ 4/19: same group among the other 19 items
    assert result["lift"] > 1
    shuffled = SemanticIdIndex({f"x{n}": (n // 5, n % 5) for n in range(20)}, (4, 5))
    assert semantic_coherence(shuffled, items, pairs=2000)["lift"] < result["lift"]


def test_semantic_coherence_without_labels():
    items = {f"x{n}": Item(f"x{n}", f"t{n}", {"year": "1999"}) for n in range(6)}
    index = SemanticIdIndex({f"x{n}": (n % 2, n) for n in range(6)}, (2, 6))
    result = semantic_coherence(index, items)
    assert result["field"] is None and "no label field (genres, categories, brand)" in result["note"]
    lonely = SemanticIdIndex({f"x{n}": (n, 0) for n in range(6)}, (6, 1))
    result = semantic_coherence(lonely, labelled_items("brand"))
    assert result == {"field": "brand", "note": "no first-level code is shared by two labelled items"}


def test_item_labels_splits_and_picks_the_field():
    items = {
        "a": Item("a", "A", {"categories": "Office > Paper, Pens"}),
        "b": Item("b", "B", {"categories": "Office; Ink"}),
        "c": Item("c", "C", {"brand": "Acme"}),
    }
    assert item_labels(items) == ("categories", {"a": {"office", "paper", "pens"}, "b": {"office", "ink"}, "c": set()})
    assert item_labels(items, "brand") == (None, {})  # only 1 of 3 items has a brand


def test_rqvae_training_is_bit_for_bit_repeatable_on_several_threads():
    """Two trainings with one seed give the same codebooks even multi-threaded (the codebook lookup's backward
    adds in a varying order unless torch's deterministic algorithms are on), and the global flag is restored."""
    import torch

    from tokenizer.train import train_rqvae

    x = np.random.default_rng(0).standard_normal((2000, 64)).astype(np.float32)  # (N, D)
    # Without the deterministic algorithms, this size differed between two runs on 2 threads within 60 steps.
    config = QuantizerConfig(
        method="rqvae", num_levels=3, codebook_size=256, hidden_dims=(64,), latent_dim=32, epochs=1, min_steps=60,
        batch_size=1024,
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first, _ = train_rqvae(x, config)
        second, _ = train_rqvae(x, config)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(first.codebooks, second.codebooks)
    assert not torch.are_deterministic_algorithms_enabled()


# --- collaborative modality -------------------------------------------------------------------------------------


def test_cf_block_uses_training_interactions_only(dataset_a):
    """Users u0-u7 consume i(k)..i(k+3): training holds i00-i08; i09 and i10 appear only as validation or test
    targets, i11+ never, so their cf blocks are zero and only their text places them."""
    config = EmbeddingConfig(modalities=("text", "cf"), text_encoder="hash-32", cf_dim=4)
    histories = [user.train for user in dataset_a.load_split().users]
    fused, summary = embed_items(dataset_a.items, config, None, None, HashEncoder(32), histories=histories)
    cf = fused[:, 32:]  # (N, cf_dim) after the 32-d text block
    trained = {item for history in histories for item in history}
    assert trained == {f"i{n:02d}" for n in range(9)} and summary["items_with_cf"] == 9
    for row, item_id in enumerate(dataset_a.items):
        assert bool(cf[row].any()) == (item_id in trained), item_id
    with pytest.raises(DataError, match="modality 'cf' needs the users' training histories"):
        embed_items(dataset_a.items, config, None, None, HashEncoder(32))


def test_text_cf_index_builds_and_grows_new_items_by_text(dataset_a, dataset_b, tmp_path):
    out = tmp_path / "sid_index.json"
    index = build_index(dataset_a, out, hash_config(modalities=("text", "cf"), cf_dim=4), text_encoder=HashEncoder(32))
    check_built_index(index, out, dataset_a, "rqkmeans")
    assert index.source["embedding"]["cf_dim"] == 4 and index.source["input_dim"] == 36
    grown = add_items(index, out, dataset_b, tmp_path / "grown.json", text_encoder=HashEncoder(32))
    assert all(grown.items[item_id] == sid for item_id, sid in index.items.items())
    assert len(set(grown.items.values())) == len(grown.items) == 45


def test_cf_window_is_recorded_and_reused_when_the_index_grows(dataset_a, dataset_b, tmp_path):
    out = tmp_path / "sid_index.json"
    config = hash_config(modalities=("text", "cf"), cf_dim=4, cf_window=2)
    index = build_index(dataset_a, out, config, text_encoder=HashEncoder(32))
    check_built_index(index, out, dataset_a, "rqkmeans")
    saved = index.source["embedding"]
    assert saved["cf_window"] == 2 and saved["cf_matrix"] == "items within 2 places"
    assert embedding_config_of(index).cf_window == 2
    grown = add_items(index, out, dataset_b, tmp_path / "grown.json", text_encoder=HashEncoder(32))
    assert all(grown.items[item_id] == sid for item_id, sid in index.items.items())
    assert grown.source["embedding"]["cf_window"] == 2
    # An index written before cf windows existed reads back as the user x item kind.
    del index.source["embedding"]["cf_window"]
    assert embedding_config_of(index).cf_window == 0


def test_modalities_must_be_known_and_distinct():
    with pytest.raises(ValueError, match="distinct names among text, image, cf"):
        EmbeddingConfig(modalities=("text", "ratings"))
    with pytest.raises(ValueError, match="distinct names"):
        EmbeddingConfig(modalities=("text", "text"))
    with pytest.raises(ValueError, match="cf_dim must be >= 1"):
        EmbeddingConfig(modalities=("text", "cf"), cf_dim=0)
    with pytest.raises(ValueError, match="cf_window must be >= 0"):
        EmbeddingConfig(modalities=("text", "cf"), cf_window=-1)


def test_sequence_coherence_by_hand():
    from llmrec.data.split import UserSplit
    from tokenizer.report import sequence_coherence

    index = SemanticIdIndex({"a": (0, 0), "b": (0, 1), "c": (1, 0), "d": (1, 1)}, (2, 2))
    users = [
        UserSplit("u1", ("a", "b", "c"), "d", "a"),  # pairs 0->0, 0->1; last c (1), validation d (1)
        UserSplit("u2", ("c", "d"), "c", "a"),  # pair 1->1; last d (1), validation c (1)
        UserSplit("u3", ("b", "a"), "b", "c"),  # pair 0->0; last a (0), validation b (0)
    ]
    result = sequence_coherence(index, users, top=1)
    # 3 of 4 pairs keep their first code; previous codes 3:1, next codes 2:2, so chance = .75*.5 + .25*.5 = .5.
    assert result["next_same_first_code"] == 0.75 and result["chance"] == 0.5 and result["lift"] == 1.5
    assert result["training_pairs"] == 4 and result["validation_users"] == 3
    # Markov: code 1 follows code 1, code 0 follows code 0: all three hit. Most popular next code (tie -> 0): u3 only.
    assert result["markov_hit@1"] == 1.0 and result["popular_hit@1"] == 0.3333


# --- quantizer seed selection ---------------------------------------------------------------------------------


def test_select_seeds_keeps_the_best_first_code_markov_seed_and_records_every_candidate(dataset_a, tmp_path):
    from tokenizer.report import sequence_coherence

    out = tmp_path / "selected" / "sid_index.json"
    config = IndexConfig(EmbeddingConfig(text_encoder="hash-32"), RQKMEANS, select_seeds=(3, 1, 2))
    index = build_index(dataset_a, out, config, text_encoder=HashEncoder(32))
    selection = index.stats["seed_selection"]
    scores = {row["seed"]: row["markov_hit@10"] for row in selection["candidates"]}
    assert list(scores) == [3, 1, 2] and selection["metric"] == "markov_hit@10" and selection["split"] == "valid"
    best = max(scores.values())
    assert selection["chosen"] == next(seed for seed, score in scores.items() if score == best)
    assert index.source["quantizer"]["seed"] == selection["chosen"]
    # Every candidate's score is what the report computes for a plain build with that seed.
    users = dataset_a.load_split().users
    for seed, score in scores.items():
        plain = build_index(
            dataset_a, tmp_path / f"s{seed}" / "sid_index.json", hash_config(replace(RQKMEANS, seed=seed)),
            text_encoder=HashEncoder(32),
        )  # fmt: skip
        assert sequence_coherence(plain, users)["markov_hit@10"] == score
        if seed == selection["chosen"]:
            assert plain.items == index.items
    saved = load_index(out, dataset_a.items)
    assert saved.stats["seed_selection"] == selection and saved.items == index.items
    # The saved quantizer is the chosen one: new items get SIDs from it.
    load_quantizer(saved, out)


def test_select_seeds_breaks_ties_towards_the_earlier_seed(dataset_a, tmp_path, monkeypatch):
    import tokenizer.build as build

    scores = iter([0.25, 0.5, 0.5, 0.125])  # seeds 7, 8, 9, 10: 8 and 9 tie at the top
    monkeypatch.setattr(
        build,
        "sequence_coherence",
        lambda index, users: {"markov_hit@10": next(scores), "next_same_first_code": 0.0},
    )
    config = IndexConfig(EmbeddingConfig(text_encoder="hash-32"), RQKMEANS, select_seeds=(7, 8, 9, 10))
    index = build_index(dataset_a, tmp_path / "sid_index.json", config, text_encoder=HashEncoder(32))
    assert index.stats["seed_selection"]["chosen"] == 8 and index.source["quantizer"]["seed"] == 8


def test_select_seeds_needs_training_sequences(tmp_path):
    # 3 interactions per user: one training item each, so no consecutive pair to count.
    items = {f"i{n:02d}": genre_item(n) for n in range(12)}
    rows = [Interaction(f"u{user}", f"i{(user + k) % 12:02d}", k) for user in range(8) for k in range(3)]
    dataset = prepare(RawData("short", "test", items, rows, []), tmp_path / "dataset")
    config = IndexConfig(EmbeddingConfig(text_encoder="hash-32"), RQKMEANS, select_seeds=(1, 2))
    with pytest.raises(DataError, match="build with one --seed"):
        build_index(dataset, tmp_path / "sid_index.json", config, text_encoder=HashEncoder(32))
    assert not (tmp_path / "sid_index.json").exists()


@pytest.mark.parametrize(("seeds", "message"), [((1, 1), "must be distinct"), ((5,), "at least two seeds")])
def test_select_seeds_config_errors(seeds, message):
    with pytest.raises(ValueError, match=message):
        IndexConfig(select_seeds=seeds)


def test_cli_select_seeds(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "sid_index.json"
    args = ["index", "build", "--dataset", str(tiny_dataset.path), "--out", str(out), "--method", "rqkmeans",
            "--text-encoder", "hash-32", "--codebook-size", "8"]  # fmt: skip
    with pytest.raises(SystemExit):
        main([*args, "--select-seeds", "1,two"])
    assert "--select-seeds '1,two'" in capsys.readouterr().err
    assert main([*args, "--select-seeds", "1"]) != 0
    assert "at least two seeds" in capsys.readouterr().err
    assert main([*args, "--select-seeds", "2,1"]) == 0
    printed = capsys.readouterr().out
    chosen = load_index(out).stats["seed_selection"]["chosen"]
    assert f"seed {chosen} chosen by first-code markov_hit@10 on valid: 2 " in printed
    assert main(["index", "report", "--index", str(out), "--dataset", str(tiny_dataset.path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["seed_selection"]["chosen"] == chosen and len(report["seed_selection"]["candidates"]) == 2
