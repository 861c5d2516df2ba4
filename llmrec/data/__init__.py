"""Data layer: canonical dataset folders, importers, cleaning, leave-one-out split, stats."""

from llmrec.data.dataset import Dataset, load_dataset
from llmrec.data.io import DataError
from llmrec.data.prepare import PrepareConfig, prepare
from llmrec.data.split import Example, LeaveOneOutSplit, UserSplit, leave_one_out

__all__ = [
    "DataError",
    "Dataset",
    "Example",
    "LeaveOneOutSplit",
    "PrepareConfig",
    "UserSplit",
    "leave_one_out",
    "load_dataset",
    "prepare",
]
