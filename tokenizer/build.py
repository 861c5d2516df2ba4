"""Catalog -> semantic-ID index: embed, fit the quantizer, assign codes, resolve collisions, save; and add items.

Writes `sid_index.json` (see `llmrec.sid`) and beside it `<stem>.quantizer.safetensors` (codebooks, and for the
RQ-VAE its encoder and decoder), which `add_items` needs to give new items SIDs without retraining. The index's
`source` records the embedding and quantizer configs, the seed, and checksums of the catalog and quantizer.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from llmrec.data.dataset import Dataset
from llmrec.data.io import DataError, sha256_file
from llmrec.sid import DEFAULT_LEVEL_NAMES, SemanticIdIndex, check_covers_catalog, save_index
from llmrec.version import __version__
from tokenizer.assign import assign_codes, assign_new_items, collision_rate, resolve_collisions
from tokenizer.config import EmbeddingConfig, IndexConfig, QuantizerConfig, TextTemplate
from tokenizer.embed import Encoder, embed_items
from tokenizer.report import code_stats, sequence_coherence
from tokenizer.rqvae import RQVAE, ResidualCodebooks
from tokenizer.train import fit_rqkmeans, train_rqvae

logger = logging.getLogger(__name__)


def quantizer_path(index_path: Path) -> Path:
    """`runs/x/sid_index.json` -> `runs/x/sid_index.quantizer.safetensors`."""
    return index_path.with_name(index_path.stem + ".quantizer.safetensors")


def save_quantizer(codebooks: ResidualCodebooks, path: Path) -> None:
    tensors = {
        "codebooks": torch.from_numpy(np.ascontiguousarray(codebooks.codebooks)),
        "shift": torch.from_numpy(codebooks.shift),
        "scale": torch.tensor([codebooks.scale]),
    }
    for prefix, module in (("encoder.", codebooks.encoder), ("decoder.", codebooks.decoder)):
        if module is not None:
            tensors.update({prefix + key: value.detach().contiguous() for key, value in module.state_dict().items()})
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)


def load_quantizer(index: SemanticIdIndex, index_path: Path) -> ResidualCodebooks:
    """Rebuild the quantizer an index was made with and check it is the file the index recorded."""
    path = quantizer_path(index_path)
    source = index.source
    if not path.is_file():
        raise DataError(f"{path} not found; it is written by `llmrec index build` beside {index_path.name}.")
    if sha256_file(path) != source.get("quantizer_sha256"):
        raise DataError(f"{path} does not match {index_path} (checksum differs); rebuild the index.")
    tensors = load_file(str(path))
    config = QuantizerConfig(**source["quantizer"])
    codebooks = ResidualCodebooks(tensors["codebooks"].numpy(), tensors["shift"].numpy(), float(tensors["scale"][0]))
    if config.method == "rqvae":
        model = RQVAE(source["input_dim"], config)
        model.encoder.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("encoder.")})
        model.decoder.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("decoder.")})
        codebooks.encoder, codebooks.decoder = model.encoder.eval(), model.decoder.eval()
    return codebooks


def fit_quantizer(embeddings: np.ndarray, config: QuantizerConfig) -> tuple[ResidualCodebooks, dict]:
    if config.method == "rqkmeans":
        started = time.perf_counter()
        return fit_rqkmeans(embeddings, config), {"seconds": round(time.perf_counter() - started, 2)}
    return train_rqvae(embeddings, config)


def quantize_embeddings(
    embeddings: np.ndarray, config: QuantizerConfig
) -> tuple[ResidualCodebooks, np.ndarray, list[int], dict]:
    """Fit the quantizer on `embeddings` (N, D) and give every row a unique SID.

    Returns the fitted codebooks, the codes (N, M) or (N, M + 1) with a dedup level, the codebook size of each
    level, and build statistics (collision rates, reconstruction error, usage, perplexity, timings).
    """
    started = time.perf_counter()
    codebooks, history = fit_quantizer(embeddings, config)
    latents = codebooks.latents(embeddings)  # (N, d)
    greedy = assign_codes(latents, codebooks.codebooks)  # (N, M)
    codes, collisions = resolve_collisions(latents, codebooks.codebooks, greedy)
    codebook_sizes = [config.codebook_size] * config.num_levels
    if collisions["extra_level"]:
        codebook_sizes.append(int(codes[:, -1].max()) + 1)
    reconstruction = codebooks.reconstruct(greedy)
    target = codebooks.normalize(embeddings) if codebooks.decoder is not None else latents
    stats = {
        "items": len(embeddings),
        "collision_rate_before": collision_rate(greedy),
        "collision_rate_after": collision_rate(codes),
        **collisions,
        "reconstruction_mse": float(((reconstruction - target) ** 2).mean()),
        "relative_reconstruction_error": float(
            np.linalg.norm(reconstruction - target) / max(np.linalg.norm(target), 1e-12)
        ),
        **code_stats(codes, codebook_sizes),
        "quantizer_seconds": history["seconds"],
        "assignment_seconds": round(time.perf_counter() - started - history["seconds"], 2),
        "training": history,
    }
    return codebooks, codes, codebook_sizes, stats


SELECTION_METRIC = "markov_hit@10"


def select_quantizer_seed(
    embeddings: np.ndarray,
    quantizer: QuantizerConfig,
    seeds: tuple[int, ...],
    item_ids: list[str],
    users: list,
) -> tuple[QuantizerConfig, tuple[ResidualCodebooks, np.ndarray, list[int], dict]]:
    """Quantize `embeddings` (N, D) once per seed and keep the result whose first codes a first-order Markov model
    predicts best for the validation items (`sequence_coherence`'s `markov_hit@10`; ties keep the earlier seed).

    Only training sequences and validation targets are read, never a test item, so choosing here leaves the test
    split untouched. Returns the chosen config (its `seed` set) and `quantize_embeddings`' output for it, whose
    stats gain `seed_selection`: the metric and every candidate's score.
    """
    best, best_score, candidates = None, -1.0, []
    for seed in seeds:
        config = replace(quantizer, seed=seed)
        result = quantize_embeddings(embeddings, config)
        codes, codebook_sizes = result[1], result[2]
        probe = SemanticIdIndex(
            items={item_id: tuple(int(c) for c in row) for item_id, row in zip(item_ids, codes, strict=True)},
            codebook_sizes=tuple(codebook_sizes),
        )
        coherence = sequence_coherence(probe, users)
        if SELECTION_METRIC not in coherence:
            raise DataError(
                f"select_seeds ranks indices by how well first codes follow users' training sequences, but this "
                f"dataset has none to count ({coherence.get('note')}); build with one --seed instead."
            )
        score = coherence[SELECTION_METRIC]
        candidates.append(
            {"seed": seed, SELECTION_METRIC: score, "next_same_first_code": coherence["next_same_first_code"]}
        )
        logger.info("Quantizer seed %d: first-code %s on validation %.4f", seed, SELECTION_METRIC, score)
        if score > best_score:
            best, best_score = (config, result), score
    config, result = best
    result[3]["seed_selection"] = {
        "metric": SELECTION_METRIC,
        "split": "valid",
        "chosen": config.seed,
        "candidates": candidates,
    }
    logger.info("Chose quantizer seed %d of %s (%s %.4f)", config.seed, list(seeds), SELECTION_METRIC, best_score)
    return config, result


def build_index(
    dataset: Dataset,
    out: str | Path,
    config: IndexConfig | None = None,
    cache: Path | None = None,
    text_encoder: Encoder | None = None,
    image_encoder: Encoder | None = None,
) -> SemanticIdIndex:
    """Build and save the semantic-ID index of every item in `dataset`; returns it (stats include the report).

    With `config.per_modality`, one index per modality is written (see `IndexConfig`) and the first is returned.
    """
    config = config or IndexConfig()
    out = Path(out)
    if not config.per_modality:
        return build_one_index(
            dataset, out, config.embedding, config.quantizer, cache, text_encoder, image_encoder,
            select_seeds=config.select_seeds,
        )  # fmt: skip
    indices = []
    for position, modality in enumerate(config.embedding.modalities):
        embedding = replace(config.embedding, modalities=(modality,))
        path = out if position == 0 else out.with_name(f"{out.stem}.{modality}.json")
        names = DEFAULT_LEVEL_NAMES if position == 0 else tuple(modality[0] + name for name in DEFAULT_LEVEL_NAMES)
        indices.append(
            build_one_index(
                dataset,
                path,
                embedding,
                config.quantizer,
                cache,
                text_encoder,
                image_encoder,
                level_names=names,
                select_seeds=config.select_seeds,
            )
        )
    return indices[0]


def build_one_index(
    dataset: Dataset,
    out: Path,
    embedding: EmbeddingConfig,
    quantizer: QuantizerConfig,
    cache: Path | None,
    text_encoder: Encoder | None,
    image_encoder: Encoder | None,
    level_names: tuple[str, ...] = DEFAULT_LEVEL_NAMES,
    select_seeds: tuple[int, ...] = (),
) -> SemanticIdIndex:
    """Embed, quantize and save one index (one SID per item from the fused `embedding.modalities`); with
    `select_seeds`, quantize once per seed and keep the best on the validation split (`select_quantizer_seed`)."""
    # Record the encoders actually used, so that `add_items` embeds new items with the same ones.
    if text_encoder is not None:
        embedding = replace(embedding, text_encoder=text_encoder.name)
    if image_encoder is not None:
        embedding = replace(embedding, image_encoder=image_encoder.name)
    started = time.perf_counter()
    # The cf modality sees the training part of the leave-one-out split only: no validation or test target.
    histories = [user.train for user in dataset.load_split().users] if "cf" in embedding.modalities else None
    embeddings, embed_summary = embed_items(
        dataset.items, embedding, cache, dataset.path, text_encoder, image_encoder, histories=histories
    )  # (N, D)
    embed_seconds = time.perf_counter() - started
    if select_seeds:
        quantizer, (codebooks, codes, codebook_sizes, stats) = select_quantizer_seed(
            embeddings, quantizer, select_seeds, list(dataset.items), dataset.load_split().users
        )
    else:
        codebooks, codes, codebook_sizes, stats = quantize_embeddings(embeddings, quantizer)
    stats["embedding_seconds"] = round(embed_seconds, 2)
    stats["total_seconds"] = round(time.perf_counter() - started, 2)
    items = {item_id: tuple(int(c) for c in row) for item_id, row in zip(dataset.items, codes, strict=True)}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_quantizer(codebooks, quantizer_path(out))
    index = SemanticIdIndex(
        items=items,
        codebook_sizes=tuple(codebook_sizes),
        level_names=tuple(level_names[: len(codebook_sizes)]),
        catalog_sha256=dataset.meta["files"]["items.jsonl"],
        source={
            "dataset": dataset.name,
            "llmrec_version": __version__,
            "embedding": {**embedding.to_json(), **embed_summary},
            "input_dim": int(embeddings.shape[1]),
            "quantizer": quantizer.to_json(),
            "quantizer_file": quantizer_path(out).name,
            "quantizer_sha256": sha256_file(quantizer_path(out)),
            "dedup_level": bool(stats["extra_level"]),
        },
        stats=stats,
    )
    save_index(index, out)
    logger.info(
        "Index %s: %d items, %d levels %s, collisions %.2f%% -> %.2f%%, usage per level %s",
        out, len(items), index.num_levels, list(codebook_sizes), 100 * stats["collision_rate_before"],
        100 * stats["collision_rate_after"], [round(u, 3) for u in stats["usage"]],
    )  # fmt: skip
    return index


def embedding_config_of(index: SemanticIdIndex) -> EmbeddingConfig:
    """The embedding config recorded in an index, to embed new items exactly like the old ones."""
    saved = index.source["embedding"]
    template = TextTemplate(tuple(saved["template"]["fields"]), saved["template"]["max_chars"])
    return EmbeddingConfig(
        modalities=tuple(saved["modalities"]),
        text_encoder=saved["text_encoder"],
        image_encoder=saved["image_encoder"],
        text_weight=saved["text_weight"],
        image_weight=saved["image_weight"],
        cf_weight=saved.get("cf_weight", 1.0),  # indices built before the cf modality lack these two
        cf_dim=saved.get("cf_dim", 64),
        cf_window=saved.get("cf_window", 0),  # indices built before cf windows: user x item
        template=template,
    )


def add_items(
    index: SemanticIdIndex,
    index_path: Path,
    dataset: Dataset,
    out: str | Path,
    text_encoder: Encoder | None = None,
    image_encoder: Encoder | None = None,
) -> SemanticIdIndex:
    """Give SIDs to the items of `dataset` that `index` lacks, with the trained quantizer; existing SIDs stay.

    Each new item gets the free SID nearest to its latent (`tokenizer.assign.nearest_free_sid`). The catalog must
    contain every indexed item: an index may grow, never silently lose items.
    """
    removed = [item_id for item_id in index.items if item_id not in dataset.items]
    if removed:
        raise DataError(
            f"{dataset.path}: {len(removed)} indexed item(s) are missing from the new catalog (e.g. {removed[:5]}); "
            "`index add` only adds items. Rebuild the index for a catalog that drops items."
        )
    new_ids = [item_id for item_id in dataset.items if item_id not in index.items]
    codebooks = load_quantizer(index, Path(index_path))
    new_items = {item_id: dataset.items[item_id] for item_id in new_ids}
    items = dict(index.items)
    if new_ids:
        # No cache: it holds the whole catalog's vectors, which a subset must not overwrite.
        embeddings, _ = embed_items(
            new_items,
            embedding_config_of(index),
            None,
            dataset.path,
            text_encoder,
            image_encoder,
            image_dim=index.source["embedding"].get("image_dim"),
            cf_dim=index.source["embedding"].get("cf_dim"),
        )
        if embeddings.shape[1] != index.source["input_dim"]:
            raise DataError(
                f"new embeddings have {embeddings.shape[1]} dims, the quantizer expects {index.source['input_dim']}."
            )
        dedup = index.codebook_sizes[-1] if index.source.get("dedup_level") else None
        sids = assign_new_items(codebooks.latents(embeddings), codebooks.codebooks, index.items.values(), dedup)
        items.update(zip(new_ids, sids, strict=True))
    ordered = {item_id: items[item_id] for item_id in dataset.items}
    grown = SemanticIdIndex(
        items=ordered,
        codebook_sizes=index.codebook_sizes,
        level_names=index.level_names,
        token_template=index.token_template,
        catalog_sha256=dataset.meta["files"]["items.jsonl"],
        source={**index.source, "dataset": dataset.name},
        stats={**index.stats, "added_items": index.stats.get("added_items", 0) + len(new_ids)},
    )
    check_covers_catalog(grown, dataset.items, str(out))
    out = Path(out)
    if quantizer_path(out) != quantizer_path(Path(index_path)):
        quantizer_path(out).write_bytes(quantizer_path(Path(index_path)).read_bytes())
    save_index(grown, out)
    logger.info("Added %d items to %s (now %d).", len(new_ids), out, len(ordered))
    return grown
