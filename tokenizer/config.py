"""Configuration of an index build: how items become text and vectors, and how vectors become codes.

Kept free of torch and faiss so the command line can build its parser without loading them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from llmrec.schemas import Item

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"
MODALITIES = ("text", "image", "cf")
DEFAULT_TEXT_FIELDS = ("title", "brand", "categories", "genres", "year", "features", "description")


@dataclass(frozen=True)
class TextTemplate:
    """How an item becomes one string for the text encoder.

    Args:
        fields (`tuple[str, ...]`, *optional*): fields in order; `title` first by default, missing ones skipped.
        max_chars (`int`, *optional*, defaults to `1000`): cut the rendered text here (MiniLM reads 256 tokens).

    Examples:
        >>> TextTemplate(("title", "genres")).render(Item("1", "Heat", {"genres": "Crime"}))
        'Heat. Genres: Crime'
    """

    fields: tuple[str, ...] = DEFAULT_TEXT_FIELDS
    max_chars: int = 1000

    def render(self, item: Item) -> str:
        parts = []
        for name in self.fields:
            value = item.title if name == "title" else item.fields.get(name, "")
            if value:
                parts.append(value if name == "title" else f"{name.capitalize()}: {value}")
        return ". ".join(parts)[: self.max_chars]


@dataclass(frozen=True)
class EmbeddingConfig:
    """
    > Parameters that control item embeddings

    Args:
        modalities (`tuple[str, ...]`, *optional*, defaults to `("text",)`): any of `text`, `image` and `cf`
            (collaborative: co-consumption in the training interactions, `tokenizer.collaborative`).
        text_encoder (`str`, *optional*): sentence-transformers name or path; default the offline MiniLM-L6.
        image_encoder (`str`, *optional*): `efficientnet-lite0` (offline) or a sentence-transformers image model.
        text_weight / image_weight / cf_weight (`float`, *optional*, defaults to `1.0`): fusion weights after L2
            normalisation.
        cf_dim (`int`, *optional*, defaults to `64`): singular vectors kept for the `cf` modality.
        cf_window (`int`, *optional*, defaults to `0`): `0` factors who consumed what (user x item); `w > 0` factors
            which items users consume within `w` places of each other (item x item, `tokenizer.collaborative`).
        template (`TextTemplate`, *optional*): how item fields become text.
    """

    modalities: tuple[str, ...] = ("text",)
    text_encoder: str = DEFAULT_TEXT_ENCODER
    image_encoder: str = DEFAULT_IMAGE_ENCODER
    text_weight: float = 1.0
    image_weight: float = 1.0
    cf_weight: float = 1.0
    cf_dim: int = 64
    cf_window: int = 0
    template: TextTemplate = TextTemplate()

    def __post_init__(self) -> None:
        unknown = set(self.modalities) - set(MODALITIES)
        if unknown or not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(
                f"modalities must be distinct names among {', '.join(MODALITIES)}; got {self.modalities}."
            )
        if self.cf_dim < 1:
            raise ValueError(f"cf_dim must be >= 1, got {self.cf_dim}.")
        if self.cf_window < 0:
            raise ValueError(f"cf_window must be >= 0 (0: user x item co-consumption), got {self.cf_window}.")

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class QuantizerConfig:
    """
    > Parameters that control the quantizer

    Args:
        method (`str`, *optional*, defaults to `"rqvae"`): `"rqvae"` (trained MLP autoencoder, LC-Rec/TIGER) or
            `"rqkmeans"` (faiss k-means on residuals, no training, GRID's strong baseline).
        num_levels (`int`, *optional*, defaults to `3`): code levels before collision handling.
        codebook_size (`int`, *optional*, defaults to `256`): codes per level. 3 x 256 = 16.7 M SIDs: sparse enough
            for 1k-100k items that first-level groups average 4-400 items and the last level has room to make
            every SID unique, short enough (3 LM tokens) for fast decoding.
        hidden_dims (`tuple[int, ...]`, *optional*): RQ-VAE encoder widths (the decoder mirrors them).
        latent_dim (`int`, *optional*, defaults to `32`): dimension the codes live in (LC-Rec, TIGER use 32).
        beta (`float`, *optional*, defaults to `0.25`): commitment weight (VQ-VAE).
        epochs (`int`, *optional*, defaults to `50`): passes over the catalog; at least `min_steps` steps are run
            so small catalogs still train: time is flat up to ~60k items and linear above.
        min_steps (`int`, *optional*, defaults to `3000`).
        batch_size (`int`, *optional*, defaults to `1024`).
        lr (`float`, *optional*, defaults to `1e-3`): AdamW learning rate.
        weight_decay (`float`, *optional*, defaults to `1e-4`).
        kmeans_iters (`int`, *optional*, defaults to `25`): faiss k-means iterations (codebook init / RQ-KMeans).
        reseed_every (`int`, *optional*, defaults to `200`): steps between re-seeding codes that went unused.
        seed (`int`, *optional*, defaults to `42`).
    """

    method: Literal["rqvae", "rqkmeans"] = "rqvae"
    num_levels: int = 3
    codebook_size: int = 256
    hidden_dims: tuple[int, ...] = (512, 256, 128)
    latent_dim: int = 32
    beta: float = 0.25
    epochs: int = 50
    min_steps: int = 3000
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 1e-4
    kmeans_iters: int = 25
    reseed_every: int = 200
    seed: int = 42

    def __post_init__(self) -> None:
        self.hidden_dims = tuple(self.hidden_dims)
        if self.method not in ("rqvae", "rqkmeans"):
            raise ValueError(f"method must be 'rqvae' or 'rqkmeans', got {self.method!r}.")
        if self.num_levels < 1 or self.codebook_size < 2:
            raise ValueError(
                f"need num_levels >= 1 and codebook_size >= 2, got {self.num_levels}, {self.codebook_size}."
            )
        if self.epochs < 1 or self.batch_size < 1 or self.min_steps < 0:
            raise ValueError("epochs and batch_size must be >= 1 and min_steps >= 0.")

    def to_json(self) -> dict:
        payload = asdict(self)
        payload["hidden_dims"] = list(self.hidden_dims)
        return payload


@dataclass
class IndexConfig:
    """
    > Parameters of an index build: what to embed and how to quantize

    Args:
        embedding (`EmbeddingConfig`): modalities, encoders, fusion weights, text template.
        quantizer (`QuantizerConfig`): method, levels, codebook size, training.
        per_modality (`bool`, *optional*, defaults to `False`): instead of one SID from the fused embedding, build
            one index per modality, each with its own codebooks and token names (MQL4GRec, arXiv:2502.16865): the
            first modality's index is written to the output path, the others beside it as
            `<stem>.<modality>.json`, with level names prefixed by the modality's initial (`<ia_12><ib_3>...`).
        select_seeds (`tuple[int, ...]`, *optional*): fit the quantizer once per seed and keep the index whose first
            codes follow users' sequences best on the validation split (`tokenizer.report.sequence_coherence`'s
            first-code Markov hit@10; ties keep the earlier seed). The RQ-VAE's seed alone moves that figure by
            several points (ml-100k text+cf: .460 to .492 over 4 seeds), and the LM must predict the first code
            first. Overrides `quantizer.seed`; the chosen seed is the one recorded, with every candidate's score.
    """

    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    per_modality: bool = False
    select_seeds: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.select_seeds = tuple(self.select_seeds)
        if len(set(self.select_seeds)) != len(self.select_seeds):
            raise ValueError(f"select_seeds must be distinct, got {list(self.select_seeds)}.")
        if len(self.select_seeds) == 1:
            raise ValueError(
                f"select_seeds needs at least two seeds to choose between, got {list(self.select_seeds)}; "
                "for a single build set the quantizer seed instead (`--seed`)."
            )
