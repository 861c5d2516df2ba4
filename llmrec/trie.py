"""`SidTrie`: the prefix trie of a catalog's semantic IDs, stored as tensors for batched constrained decoding.

Constrained decoding must only ever emit SIDs of real items. HF's `PrefixConstrainedLogitsProcessor` asks a Python
callback once per beam per step; here the trie is a few integer tensors, so the allowed codes of every (user, beam)
at a step come from one gather:

- nodes at level `m` are the distinct SID prefixes of length `m` (level 0 has one node, the root);
- `children[m]` `(N_m, K_m)` holds the level-`m + 1` node reached from each level-`m` node by each code, or -1;
  at the last level the "node" is the leaf, i.e. the item's row in `item_ids`;
- `token_ids[m]` `(K_m,)` maps a level-`m` code to its LM token id, so the decoder scores only the `K_m` code
  tokens of the current level instead of scattering a mask over the whole vocabulary.

Excluding items per user (e.g. their history) must not leave a beam on a prefix whose every item is excluded: that
beam would reach the last level with nothing to emit. `remaining_leaves` therefore counts, per user and node, the
leaves that are not excluded (the full trie's leaf counts minus one along the path of each excluded item; histories
are short, so this is cheap), and a child is allowed only while its count is positive.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from llmrec.sid import SemanticIdIndex

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class SidTrie:
    """Prefix trie over the SID tokens of `index`'s items (or of a subset of them).

    Args:
        index (`SemanticIdIndex`): items and their SIDs.
        token_ids_of (`Mapping[str, int]` or `PreTrainedTokenizerBase`): the LM token id of every SID token string
            (`index.token(level, code)`); a tokenizer is read through its `get_vocab()`, which includes the tokens
            added by `llmrec.model.add_sid_tokens`.
        item_ids (`Iterable[str]`, *optional*): build the trie over these items only (candidate restriction);
            defaults to every item of `index`.

    Attributes:
        item_ids (`list[str]`): the trie's items; a leaf id is a row of this list.
        children (`list[torch.LongTensor]`): per level `m`, `(N_m, K_m)` child node (leaf at the last level) or -1.
        token_ids (`list[torch.LongTensor]`): per level `m`, `(K_m,)` LM token id of each code.
        paths (`torch.LongTensor`): `(num_items, M + 1)` node id of each item at levels `0..M` (column `M` is the
            leaf id).
        leaf_counts (`list[torch.LongTensor]`): per level `m` in `0..M`, `(N_m,)` number of leaves below each node.

    Examples:
        >>> index = SemanticIdIndex({"x": (0, 1), "y": (0, 2), "z": (1, 0)}, (2, 3))
        >>> trie = SidTrie(index, {token: 100 + i for i, token in enumerate(index.all_tokens())})
        >>> trie.allowed_token_ids([]), trie.allowed_token_ids([100]), trie.allowed_token_ids([101])
        ([100, 101], [103, 104], [102])
        >>> trie.allowed_token_ids([100], exclude=["y"])
        [103]
        >>> trie.allowed_token_ids([], exclude=["z"])
        [100]
        >>> trie.item_of_token_ids([100, 104])
        'y'
    """

    def __init__(
        self,
        index: SemanticIdIndex,
        token_ids_of: Mapping[str, int] | PreTrainedTokenizerBase,
        item_ids: Iterable[str] | None = None,
    ) -> None:
        vocab = token_ids_of if isinstance(token_ids_of, Mapping) else token_ids_of.get_vocab()
        missing = [token for token in index.all_tokens() if token not in vocab]
        if missing:
            raise ValueError(
                f"{len(missing)} SID token(s) have no LM token id (e.g. {missing[:3]}); add them with "
                "llmrec.model.add_sid_tokens(tokenizer, model, index) before building the trie."
            )
        self.num_levels = index.num_levels
        self.codebook_sizes = index.codebook_sizes
        self.token_ids = [
            torch.tensor([vocab[index.token(level, code)] for code in range(size)], dtype=torch.long)
            for level, size in enumerate(self.codebook_sizes)
        ]
        all_token_ids = torch.cat(self.token_ids)
        if all_token_ids.unique().numel() != all_token_ids.numel():
            raise ValueError("Two SID tokens share one LM token id; every (level, code) needs its own token.")
        # Python lookup for the per-sequence helpers (`allowed_token_ids`, `item_of_token_ids`).
        self._code_of_token = [{int(token): code for code, token in enumerate(ids)} for ids in self.token_ids]

        self.item_ids = list(index.items) if item_ids is None else list(dict.fromkeys(item_ids))
        unknown = [item_id for item_id in self.item_ids if item_id not in index.items]
        if unknown:
            raise ValueError(f"{len(unknown)} item_ids are not in the index (e.g. {unknown[:3]}); pass indexed items.")
        if not self.item_ids:
            raise ValueError("A SidTrie needs at least one item; item_ids is empty.")
        self._leaf_of_item = {item_id: leaf for leaf, item_id in enumerate(self.item_ids)}

        codes = torch.tensor([index.items[item_id] for item_id in self.item_ids], dtype=torch.long)  # (N, M)
        num_items, num_levels = codes.shape
        # Node id of each item at each level: the rank of its length-m prefix among the distinct prefixes.
        self.paths = torch.zeros(num_items, num_levels + 1, dtype=torch.long)  # (N, M + 1)
        for level in range(1, num_levels):
            self.paths[:, level] = torch.unique(codes[:, :level], dim=0, return_inverse=True)[1]
        self.paths[:, num_levels] = torch.arange(num_items)
        num_nodes = [int(self.paths[:, level].max()) + 1 for level in range(num_levels + 1)]
        self.leaf_counts = [
            torch.bincount(self.paths[:, level], minlength=num_nodes[level]) for level in range(num_levels + 1)
        ]
        self.children = []
        for level, size in enumerate(self.codebook_sizes):
            child = torch.full((num_nodes[level], size), -1, dtype=torch.long)  # (N_m, K_m)
            child[self.paths[:, level], codes[:, level]] = self.paths[:, level + 1]
            self.children.append(child)

    def __len__(self) -> int:
        return len(self.item_ids)

    def to(self, device: torch.device | str) -> SidTrie:
        """Move the tensors to `device` (in place; returns `self`)."""
        self.token_ids = [ids.to(device) for ids in self.token_ids]
        self.children = [child.to(device) for child in self.children]
        self.paths = self.paths.to(device)
        self.leaf_counts = [counts.to(device) for counts in self.leaf_counts]
        return self

    def remaining_leaves(self, exclude: Sequence[Iterable[str]]) -> list[torch.LongTensor]:
        """Per user, the number of non-excluded leaves below every node.

        Args:
            exclude (`Sequence[Iterable[str]]`): one collection of item ids per user; ids outside the trie are
                ignored (e.g. history items outside a candidate subset).

        Returns:
            `list[torch.LongTensor]`: per level `m` in `0..M`, a `(B, N_m)` tensor (`B = len(exclude)`).
        """
        pairs = [
            (user, self._leaf_of_item[item_id])
            for user, items in enumerate(exclude)
            for item_id in set(items)
            if item_id in self._leaf_of_item
        ]
        device = self.paths.device
        users = torch.tensor([user for user, _ in pairs], dtype=torch.long, device=device)  # (E,)
        leaves = torch.tensor([leaf for _, leaf in pairs], dtype=torch.long, device=device)  # (E,)
        remaining = []
        for level, counts in enumerate(self.leaf_counts):
            counts = counts.expand(len(exclude), -1).clone()  # (B, N_m)
            counts.index_put_((users, self.paths[leaves, level]), torch.tensor(-1, device=device), accumulate=True)
            remaining.append(counts)
        return remaining

    def allowed(
        self, level: int, nodes: torch.LongTensor, remaining: list[torch.LongTensor] | None = None
    ) -> tuple[torch.LongTensor, torch.BoolTensor]:
        """Children of a batch of level-`level` nodes and which of them may be taken.

        Args:
            level (`int`): the level of `nodes`, i.e. the number of codes generated so far.
            nodes (`torch.LongTensor` of shape `(B, K)`): node ids at `level`, e.g. one per (user, beam).
            remaining (`list[torch.LongTensor]`, *optional*): `remaining_leaves(exclude)` for the `B` users; without
                it every child is allowed.

        Returns:
            `tuple[torch.LongTensor, torch.BoolTensor]`: `(B, K, K_level)` child node ids (leaf ids at the last level;
            -1 where there is no child) and the `(B, K, K_level)` mask of allowed codes.
        """
        child = self.children[level][nodes]  # (B, K, K_m)
        allowed = child >= 0
        if remaining is not None:
            batch, beams, size = child.shape
            left = remaining[level + 1].gather(1, child.clamp(min=0).view(batch, beams * size))  # (B, K * K_m)
            allowed &= left.view(batch, beams, size) > 0
        return child, allowed

    def _walk(self, prefix_token_ids: Sequence[int]) -> int | None:
        """Node id reached by `prefix_token_ids` (a leaf id after `M` tokens), or None if it leaves the trie."""
        if len(prefix_token_ids) > self.num_levels:
            return None
        node = 0
        for level, token_id in enumerate(prefix_token_ids):
            code = self._code_of_token[level].get(int(token_id))
            if code is None:
                return None
            node = int(self.children[level][node, code])
            if node < 0:
                return None
        return node

    def allowed_token_ids(self, prefix_token_ids: Sequence[int], exclude: Iterable[str] = ()) -> list[int]:
        """LM token ids that may follow `prefix_token_ids` (the SID tokens generated so far), for one sequence.

        Suits HF's `prefix_allowed_tokens_fn` (pass the generated part only, without the prompt). Returns `[]` for a
        complete SID, a prefix outside the trie, or a prefix whose items are all in `exclude`.
        """
        level = len(prefix_token_ids)
        node = self._walk(prefix_token_ids)
        if node is None or level == self.num_levels:
            return []
        remaining = self.remaining_leaves([exclude])
        if remaining[level][0, node] == 0:
            return []
        _, allowed = self.allowed(level, torch.tensor([[node]], device=self.paths.device), remaining)
        return self.token_ids[level][allowed[0, 0]].tolist()

    def item_of_leaf(self, leaf: int | torch.Tensor) -> str:
        """Item id of a leaf id (a node id at the last level)."""
        return self.item_ids[int(leaf)]

    def item_of_token_ids(self, token_ids: Sequence[int]) -> str | None:
        """Item id whose SID tokens are exactly `token_ids`, or None if they are not a complete SID in the trie."""
        leaf = self._walk(token_ids)
        if leaf is None or len(token_ids) != self.num_levels:
            return None
        return self.item_of_leaf(leaf)
