"""Residual quantization models: the RQ-VAE (TIGER, LC-Rec) and the plain residual codebook stack it shares with
RQ-KMeans (GRID).

Both end as `latents = encode(x)` (the RQ-VAE's MLP encoder, or the identity for RQ-KMeans) plus codebooks
`(M, K, d)`: level m quantizes the residual left by levels < m with its nearest code. Everything downstream
(code assignment, collision resolution, adding new items) works on that pair only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tokenizer.config import QuantizerConfig


def fit_normalizer(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Shift (D,) and scale that centre `x` (N, D) and give its rows a mean norm of sqrt(D)."""
    shift = x.mean(axis=0).astype(np.float32)
    mean_norm = float(np.linalg.norm(x - shift, axis=1).mean())
    return shift, float(np.sqrt(x.shape[1]) / max(mean_norm, 1e-12))


def nearest_codes(residual: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code (squared L2) for each row. `residual` (B, d), `codebook` (K, d) -> (B,)."""
    distances = residual.pow(2).sum(1, keepdim=True) - 2 * residual @ codebook.T + codebook.pow(2).sum(1)  # (B, K)
    return distances.argmin(dim=1)


class ResidualQuantizer(nn.Module):
    """M codebooks of K codes in d dimensions, applied to successive residuals, with straight-through gradients."""

    def __init__(self, num_levels: int, codebook_size: int, dim: int) -> None:
        super().__init__()
        self.codebooks = nn.Parameter(torch.randn(num_levels, codebook_size, dim) * 0.01)  # (M, K, d)

    def forward(
        self, latents: torch.Tensor, beta: float = 0.25
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
        """Quantize `latents` (B, d).

        Returns the straight-through quantized latents (B, d), codes (B, M), the codebook + commitment loss, and
        the residual entering each level (for re-seeding dead codes).
        """
        residual = latents
        quantized = torch.zeros_like(latents)
        codes, residuals, loss = [], [], latents.new_zeros(())
        for codebook in self.codebooks:
            residuals.append(residual.detach())
            index = nearest_codes(residual.detach(), codebook.detach())  # (B,)
            chosen = codebook[index]  # (B, d)
            loss = loss + F.mse_loss(chosen, residual.detach()) + beta * F.mse_loss(residual, chosen.detach())
            quantized = quantized + chosen
            residual = residual - chosen.detach()
            codes.append(index)
        straight_through = latents + (quantized - latents).detach()
        return straight_through, torch.stack(codes, dim=1), loss, residuals


def mlp(dims: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for index, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(d_in, d_out))
        if index < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    """MLP encoder -> residual quantizer -> MLP decoder, trained to reconstruct item embeddings."""

    def __init__(self, input_dim: int, config: QuantizerConfig) -> None:
        super().__init__()
        dims = [input_dim, *config.hidden_dims, config.latent_dim]
        self.encoder = mlp(dims)
        self.quantizer = ResidualQuantizer(config.num_levels, config.codebook_size, config.latent_dim)
        self.decoder = mlp(dims[::-1])
        self.beta = config.beta

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list]:
        """`x` (B, D) -> reconstruction (B, D), codes (B, M), reconstruction loss, quantization loss, residuals."""
        latents = self.encoder(x)  # (B, d)
        quantized, codes, quant_loss, residuals = self.quantizer(latents, self.beta)
        reconstruction = self.decoder(quantized)  # (B, D)
        return reconstruction, codes, F.mse_loss(reconstruction, x), quant_loss, residuals


@dataclass
class ResidualCodebooks:
    """What assignment needs from a trained quantizer: a way to latents and the codebooks.

    Embeddings are first centred and scaled (`(x - shift) * scale`, fitted once on the catalog) so that
    coordinates are of order 1: sentence embeddings are unit vectors whose coordinates are ~0.05, too small for
    an MLP at its default initialisation to train, and they share a common mean direction that carries no signal.

    Args:
        codebooks (`np.ndarray`): `(M, K, d)` float32.
        shift (`np.ndarray`): `(D,)` mean of the catalog embeddings.
        scale (`float`): `sqrt(D) / mean norm` of the centred embeddings.
        encoder (`nn.Module`, *optional*): the RQ-VAE encoder; `None` means latents are the scaled embeddings.
        decoder (`nn.Module`, *optional*): the RQ-VAE decoder, for reconstruction diagnostics.
    """

    codebooks: np.ndarray
    shift: np.ndarray
    scale: float
    encoder: nn.Module | None = None
    decoder: nn.Module | None = None

    def normalize(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float32) - self.shift) * self.scale).astype(np.float32)

    @torch.inference_mode()
    def latents(self, x: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """Raw embeddings `x` (N, D) -> latents (N, d)."""
        x = self.normalize(x)
        if self.encoder is None:
            return x
        self.encoder.eval()
        parts = [self.encoder(torch.from_numpy(x[i : i + batch_size])).numpy() for i in range(0, len(x), batch_size)]
        return np.concatenate(parts).astype(np.float32)

    @torch.inference_mode()
    def reconstruct(self, codes: np.ndarray) -> np.ndarray:
        """Sum of the chosen codes (N, d), decoded back to (normalized) embedding space when there is a decoder."""
        summed = sum(self.codebooks[level][codes[:, level]] for level in range(codes.shape[1]))  # (N, d)
        if self.decoder is None:
            return summed.astype(np.float32)
        self.decoder.eval()
        return self.decoder(torch.from_numpy(np.ascontiguousarray(summed, dtype=np.float32))).numpy()
