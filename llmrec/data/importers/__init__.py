"""Importers: each reads one source format into `RawData`; `llmrec.data.prepare.prepare` does the rest."""

from llmrec.data.importers.amazon import import_amazon
from llmrec.data.importers.common import RawData
from llmrec.data.importers.generic import import_amazon_office, import_table
from llmrec.data.importers.movielens import import_grouplens_1m, import_grouplens_100k, import_recbole_movielens

__all__ = [
    "RawData",
    "import_amazon",
    "import_amazon_office",
    "import_grouplens_100k",
    "import_grouplens_1m",
    "import_recbole_movielens",
    "import_table",
]
