"""llmrec: an LLM-based generative recommender (semantic IDs, LoRA alignment, trie-constrained decoding).

`llmrec` is the hub: `tokenizer`, `eval` and `scripts` import it, and no library module of `llmrec` imports them.
The command line (`llmrec.cli`) is the one composition root that calls into them, lazily, per subcommand.
"""

from llmrec.data import DataError, Dataset, LeaveOneOutSplit, PrepareConfig, leave_one_out, load_dataset, prepare
from llmrec.schemas import Interaction, Item
from llmrec.version import __version__

__all__ = [
    "DataError",
    "Dataset",
    "Interaction",
    "Item",
    "LeaveOneOutSplit",
    "PrepareConfig",
    "__version__",
    "leave_one_out",
    "load_dataset",
    "prepare",
]
