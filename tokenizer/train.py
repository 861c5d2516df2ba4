"""Fitting the quantizers: faiss k-means (codebook init and RQ-KMeans) and the RQ-VAE training loop.

The RQ-VAE loop is a plain torch loop (the model is not a transformers model, so the HF Trainer brings nothing):
codebooks start from k-means on the untrained encoder's residuals (as in LC-Rec), and every `reseed_every` steps
codes that no item chose are moved onto random residuals of the current batch, which keeps codebook usage high.
"""

from __future__ import annotations

import logging
import math
import time

import faiss
import numpy as np
import torch
from tqdm.auto import tqdm

from tokenizer.config import QuantizerConfig
from tokenizer.rqvae import RQVAE, ResidualCodebooks, fit_normalizer, nearest_codes

logger = logging.getLogger(__name__)


def kmeans(x: np.ndarray, k: int, iters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """faiss k-means: centroids (k, d) and assignment (N,).

    With fewer distinct points than `k`, the surplus centroids are copies of random points plus small noise:
    unused at first, they are there for later items and for dead-code re-seeding.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, dim = x.shape
    k_fit = min(k, n)
    model = faiss.Kmeans(dim, k_fit, niter=iters, seed=seed, verbose=False, max_points_per_centroid=256)
    model.train(x)
    centroids = model.centroids  # (k_fit, d)
    if k_fit < k:
        rng = np.random.default_rng(seed)
        extra = x[rng.integers(0, n, k - k_fit)] + 1e-3 * rng.standard_normal((k - k_fit, dim)).astype(np.float32)
        centroids = np.concatenate([centroids, extra]).astype(np.float32)
    assignment = nearest_codes(torch.from_numpy(x), torch.from_numpy(centroids)).numpy()
    return centroids, assignment


def fit_rqkmeans(x: np.ndarray, config: QuantizerConfig) -> ResidualCodebooks:
    """Residual k-means on embeddings `x` (N, D): level m clusters what levels < m left. No training, no encoder."""
    shift, scale = fit_normalizer(x)
    residual = (x - shift) * scale
    codebooks = []
    for level in range(config.num_levels):
        centroids, assignment = kmeans(residual, config.codebook_size, config.kmeans_iters, config.seed + level)
        codebooks.append(centroids)
        residual = residual - centroids[assignment]
        logger.info("RQ-KMeans level %d: residual norm %.4f", level, float(np.linalg.norm(residual, axis=1).mean()))
    return ResidualCodebooks(np.stack(codebooks), shift, scale)


@torch.no_grad()
def init_codebooks_with_kmeans(model: RQVAE, x: torch.Tensor, config: QuantizerConfig) -> None:
    """Set each level's codebook to k-means centroids of the residuals of the (untrained) encoder's outputs."""
    residual = model.encoder(x).numpy()  # (N, d)
    for level in range(config.num_levels):
        centroids, assignment = kmeans(residual, config.codebook_size, config.kmeans_iters, config.seed + level)
        model.quantizer.codebooks.data[level] = torch.from_numpy(centroids)
        residual = residual - centroids[assignment]


@torch.no_grad()
def reseed_dead_codes(model: RQVAE, usage: torch.Tensor, residuals: list[torch.Tensor], generator) -> int:
    """Move codes with zero `usage` (M, K) onto random residual rows of the current batch; returns how many."""
    moved = 0
    for level, residual in enumerate(residuals):
        dead = torch.nonzero(usage[level] == 0).flatten()
        if dead.numel():
            rows = torch.randint(0, residual.shape[0], (dead.numel(),), generator=generator)
            noise = 1e-3 * torch.randn(dead.numel(), residual.shape[1], generator=generator)
            model.quantizer.codebooks.data[level, dead] = residual[rows] + noise
            moved += dead.numel()
    return moved


def train_rqvae(x: np.ndarray, config: QuantizerConfig) -> tuple[ResidualCodebooks, dict]:
    """Train an RQ-VAE on item embeddings `x` (N, D); returns the codebooks with encoder/decoder and a history.

    Runs with torch's deterministic algorithms: the multi-threaded backward of the codebook lookup adds in a
    varying order otherwise, and the rounding differences grow until two builds with the same seed share no SID.
    """
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train_rqvae(x, config)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _train_rqvae(x: np.ndarray, config: QuantizerConfig) -> tuple[ResidualCodebooks, dict]:
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    shift, scale = fit_normalizer(x)
    data = torch.from_numpy(np.ascontiguousarray((x - shift) * scale, dtype=np.float32))  # (N, D)
    model = RQVAE(data.shape[1], config)
    init_codebooks_with_kmeans(model, data, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    batch = min(config.batch_size, len(data))
    steps_per_epoch = math.ceil(len(data) / batch)
    total_steps = max(config.epochs * steps_per_epoch, config.min_steps)
    usage = torch.zeros(config.num_levels, config.codebook_size)  # (M, K) code counts since the last re-seed
    history: dict = {"step": [], "reconstruction_loss": [], "quantization_loss": [], "reseeded_codes": 0}
    started = time.perf_counter()
    order, cursor = torch.randperm(len(data), generator=generator), 0
    model.train()
    for step in tqdm(range(1, total_steps + 1), desc="rq-vae", unit="step", mininterval=2.0):
        if cursor + batch > len(data):
            order, cursor = torch.randperm(len(data), generator=generator), 0
        rows = order[cursor : cursor + batch]
        cursor += batch
        _, codes, recon_loss, quant_loss, residuals = model(data[rows])
        loss = recon_loss + quant_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        usage.scatter_add_(1, codes.T, torch.ones_like(codes.T, dtype=usage.dtype))
        if step % config.reseed_every == 0 and step < total_steps:
            history["reseeded_codes"] += reseed_dead_codes(model, usage, residuals, generator)
            usage.zero_()
        if step % max(total_steps // 50, 1) == 0 or step == total_steps:
            history["step"].append(step)
            history["reconstruction_loss"].append(recon_loss.item())
            history["quantization_loss"].append(quant_loss.item())
    history["steps"], history["seconds"] = total_steps, round(time.perf_counter() - started, 2)
    logger.info(
        "RQ-VAE: %d steps in %.1f s, reconstruction loss %.5f, re-seeded %d codes",
        total_steps, history["seconds"], history["reconstruction_loss"][-1], history["reseeded_codes"],
    )  # fmt: skip
    model.eval()
    codebooks = model.quantizer.codebooks.detach().numpy().copy()
    return ResidualCodebooks(codebooks, shift, scale, encoder=model.encoder, decoder=model.decoder), history
