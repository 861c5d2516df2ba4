"""Image embedders: EfficientNet-Lite0 on real photos (the shipped ImageNet weights) and the sentence-transformers
wrapper with a stand-in model (no CLIP checkpoint is installable offline)."""

from __future__ import annotations

import re
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from tokenizer.image import (
    EfficientNetLite0,
    EfficientNetLite0Embedder,
    SentenceTransformerImageEmbedder,
    default_weights_path,
    load_image_embedder,
    preprocess,
)

# The shipped weights are a real offline asset: tests that run them carry the integration marker.
integration = pytest.mark.integration


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, str]:
    """scikit-learn's two sample photos saved as JPEG files: {"china": path, "flower": path}."""
    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for filename, pixels in zip(load_sample_images().filenames, load_sample_images().images, strict=True):
        name = filename.rsplit("/", 1)[-1].removesuffix(".jpg")
        paths[name] = str(folder / f"{name}.jpg")
        Image.fromarray(pixels).save(paths[name], quality=95)
    return paths


@pytest.fixture(scope="module")
def embedder() -> EfficientNetLite0Embedder:
    return EfficientNetLite0Embedder(batch_size=2)


def test_preprocess_shape_and_range():
    x = preprocess(Image.new("RGB", (640, 427), (255, 0, 128)))
    assert x.shape == (3, 224, 224)
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, -1.0, 128 / 255 * 2 - 1]), atol=1e-6)


@integration
def test_state_dict_loads_strictly():
    state_dict = torch.load(default_weights_path(), map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    model.load_state_dict(state_dict, strict=True)
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    del state_dict["_blocks.0._bn1.weight"]
    with pytest.raises(RuntimeError, match="Missing key"):
        EfficientNetLite0().load_state_dict(state_dict, strict=True)


@integration
def test_imagenet_predictions_on_real_photos(embedder, photos):
    """Observed top-5: china.jpg palace .28, bell cote .18, monastery .07, lakeside .07, boathouse .04;
    flower.jpg daisy .30, bee .06, sea anemone .05, mushroom .04, ant .03. A wrong padding or block layout
    gives near-uniform or identical predictions."""
    pixels = torch.stack([preprocess(Image.open(photos[name]).convert("RGB")) for name in ("china", "flower")])
    with torch.inference_mode():
        probs = embedder.model._fc(embedder.model(pixels)).softmax(dim=-1)  # (2, 1000)
    top_probs, top_classes = probs.topk(5)
    china, flower = top_classes.tolist()
    assert china[0] == 698  # palace
    assert {442, 663} <= set(china)  # bell cote, monastery
    assert flower[0] == 985  # daisy
    assert 309 in flower  # bee
    assert (top_probs[:, 0] > 0.2).all()


@integration
def test_encode_shape_dtype_and_distinct_images(embedder, photos):
    rows = embedder.encode([photos["china"], photos["flower"], photos["flower"]])  # batches of 2 and 1
    assert rows.shape == (3, embedder.dim) == (3, 1280)
    assert rows.dtype == np.float32 and np.isfinite(rows).all()
    cosine = rows[0] @ rows[1] / np.linalg.norm(rows[0]) / np.linalg.norm(rows[1])
    assert cosine < 0.95
    twice = embedder.encode([photos["china"], photos["china"]])  # one batch
    np.testing.assert_array_equal(twice[0], twice[1])
    np.testing.assert_array_equal(twice[0], rows[0])


@integration
def test_batched_equals_single(embedder, photos):
    paths = [photos["china"], photos["flower"]]
    single = EfficientNetLite0Embedder(batch_size=1).encode(paths)
    np.testing.assert_allclose(embedder.encode(paths), single, atol=1e-4)


@integration
def test_empty_list(embedder):
    assert embedder.encode([]).shape == (0, 1280)


@integration
def test_missing_or_unreadable_image_names_the_path(embedder, photos, tmp_path):
    missing = tmp_path / "no_such.jpg"
    with pytest.raises(ValueError, match=rf"{re.escape(str(missing))}.*set its item's image to null in items.jsonl"):
        embedder.encode([photos["china"], missing])
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("not a JPEG")
    with pytest.raises(ValueError, match="notes.jpg"):
        embedder.encode([not_an_image])


class FakeImageModel:
    """Stands in for a sentence-transformers CLIP model: embeds an image as (width, height, red of pixel 0)."""

    def __init__(self, name_or_path: str = "fake", device: str = "cpu"):
        self.name_or_path, self.calls = name_or_path, []

    def get_sentence_embedding_dimension(self) -> int:
        return 3

    def encode(self, images, batch_size, convert_to_numpy, show_progress_bar):
        assert convert_to_numpy and all(isinstance(image, Image.Image) for image in images)
        self.calls.append(len(images))
        return np.array([[*image.size, image.getpixel((0, 0))[0]] for image in images], dtype=np.float64)


def test_sentence_transformer_embedder_returns_model_arrays(tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.new("L", (10 + i, 20), 7 * i).save(paths[-1])  # grayscale: the embedder must convert to RGB
    fake = FakeImageModel()
    image_embedder = SentenceTransformerImageEmbedder("fake-clip", batch_size=2, model=fake)
    rows = image_embedder.encode(paths)
    assert image_embedder.dim == 3 and fake.calls == [2, 1]
    assert rows.dtype == np.float32
    np.testing.assert_array_equal(rows, [[10, 20, 0], [11, 20, 7], [12, 20, 14]])
    with pytest.raises(ValueError, match="missing.png"):
        image_embedder.encode([tmp_path / "missing.png"])


def test_load_image_embedder_picks_by_name(monkeypatch):
    fake_module = types.SimpleNamespace(SentenceTransformer=FakeImageModel)
    monkeypatch.setitem(sys.modules, "sentence_transformers", fake_module)
    image_embedder = load_image_embedder("some/clip-model")
    assert isinstance(image_embedder, SentenceTransformerImageEmbedder)
    assert image_embedder.model.name_or_path == "some/clip-model" and image_embedder.dim == 3


@integration
def test_load_image_embedder_default():
    assert isinstance(load_image_embedder("efficientnet-lite0"), EfficientNetLite0Embedder)
