"""Shared fixtures: a tiny in-memory catalog and interaction log, and a prepared folder made from it."""

from __future__ import annotations

import pytest

from llmrec.data.importers.common import RawData
from llmrec.data.prepare import prepare
from llmrec.schemas import Interaction, Item


def make_raw() -> RawData:
    """6 items, 4 users. Item "f" has no interaction. Sequences by time:
    u1: a b c d e   u2: b c a   u3: c a b d   u4: a b e
    """
    items = {i: Item(i, f"Title {i.upper()}", {"genres": "G1" if i in "abc" else "G2"}) for i in "abcdef"}
    sequences = {"u1": "abcde", "u2": "bca", "u3": "cabd", "u4": "abe"}
    rows = [Interaction(u, i, 100 * n) for u, seq in sequences.items() for n, i in enumerate(seq)]
    return RawData("tiny", "fixture", items, rows, [])


@pytest.fixture
def tiny_raw() -> RawData:
    return make_raw()


@pytest.fixture
def tiny_dataset(tmp_path):
    return prepare(make_raw(), tmp_path / "tiny")
