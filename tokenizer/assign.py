"""Codes for items: greedy residual assignment, collision resolution, and codes for new items.

Collisions (two items, one SID) are resolved on the last level with LC-Rec's uniform semantic mapping
(arXiv:2311.09049, sec. 3.1): within a group of items sharing the first M-1 codes, the item nearest to a shared
code keeps it, and the others are spread over the group's free last-level codes by an entropic optimal transport
(Sinkhorn-Knopp) with uniform code marginals, rounded to distinct codes. Only when a prefix group holds more
items than there are codes does a collision survive; then an extra level is appended whose code numbers the
items sharing a SID (TIGER's fallback), and the report says how often that happened.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import torch

from tokenizer.rqvae import nearest_codes

Sid = tuple[int, ...]


def assign_codes(latents: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """Greedy residual assignment: `latents` (N, d), `codebooks` (M, K, d) -> codes (N, M)."""
    residual = torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float32))
    codes = []
    for codebook in torch.from_numpy(codebooks):
        index = nearest_codes(residual, codebook)  # (N,)
        residual = residual - codebook[index]
        codes.append(index)
    return torch.stack(codes, dim=1).numpy().astype(np.int64)


def collision_rate(codes: np.ndarray) -> float:
    """Share of items whose SID is also another item's SID.

    Examples:
        >>> collision_rate(np.array([[0, 1], [0, 1], [0, 2], [1, 1]]))
        0.5
    """
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return float((counts[inverse.reshape(-1)] > 1).mean())


def sinkhorn(cost: np.ndarray, epsilon: float = 0.05, iters: int = 100) -> np.ndarray:
    """Entropic optimal transport with uniform marginals, in the log domain for stability.

    `cost` (m, f), rescaled to [0, 1]; rows carry mass 1/m, columns 1/f. Returns the plan (m, f).

    Examples:
        >>> plan = sinkhorn(np.array([[0.0, 1.0], [1.0, 0.0]]))
        >>> bool(plan[0, 0] > plan[0, 1] and plan[1, 1] > plan[1, 0])
        True
    """
    scaled = cost / max(float(cost.max()), 1e-12)
    log_kernel = -scaled / epsilon  # (m, f)
    m, f = cost.shape
    log_a, log_b = np.full(m, -np.log(m)), np.full(f, -np.log(f))
    u, v = np.zeros(m), np.zeros(f)
    for _ in range(iters):
        u = log_a - np.logaddexp.reduce(log_kernel + v[None, :], axis=1)
        v = log_b - np.logaddexp.reduce(log_kernel + u[:, None], axis=0)
    return np.exp(log_kernel + u[:, None] + v[None, :])


def round_plan(plan: np.ndarray) -> list[tuple[int, int]]:
    """Distinct (row, column) pairs, taking the largest plan entries first; at most min(m, f) pairs."""
    pairs, used_rows, used_cols = [], set(), set()
    for flat in np.argsort(-plan, axis=None, kind="stable"):
        row, col = divmod(int(flat), plan.shape[1])
        if row not in used_rows and col not in used_cols:
            pairs.append((row, col))
            used_rows.add(row)
            used_cols.add(col)
            if len(pairs) == min(plan.shape):
                break
    return pairs


def resolve_collisions(latents: np.ndarray, codebooks: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, dict]:
    """Make every SID unique; returns codes (N, M) or, if a prefix group overflows, (N, M + 1), and a report."""
    codes = codes.copy()
    num_levels, codebook_size = codebooks.shape[0], codebooks.shape[1]
    last = codebooks[-1]  # (K, d)
    prefix_sum = sum((codebooks[level][codes[:, level]] for level in range(num_levels - 1)), np.zeros_like(latents))
    residual = latents - prefix_sum  # (N, d) what the last level quantizes
    groups: dict[Sid, list[int]] = defaultdict(list)
    for row, prefix in enumerate(map(tuple, codes[:, :-1])):
        groups[prefix].append(row)
    moved = unresolved_groups = 0
    for rows in groups.values():
        by_code: dict[int, list[int]] = defaultdict(list)
        for row in rows:
            by_code[int(codes[row, -1])].append(row)
        if len(by_code) == len(rows):
            continue
        movers = []
        for code, members in by_code.items():
            distances = ((residual[members] - last[code]) ** 2).sum(axis=1)
            keeper = members[int(np.argmin(distances))]
            movers += [row for row in members if row != keeper]
        free = np.array([code for code in range(codebook_size) if code not in by_code])
        if free.size:
            cost = ((residual[movers][:, None, :] - last[free][None, :, :]) ** 2).sum(axis=2)  # (m, f)
            for mover, slot in round_plan(sinkhorn(cost)):
                codes[movers[mover], -1] = free[slot]
                moved += 1
        unresolved_groups += len(movers) > free.size
    report = {"moved_by_sinkhorn": moved, "overflowing_prefix_groups": unresolved_groups, "extra_level": False}
    if collision_rate(codes) > 0:
        codes = append_dedup_level(codes)
        report["extra_level"] = True
    return codes, report


def append_dedup_level(codes: np.ndarray) -> np.ndarray:
    """Append a level numbering the items that share a SID (0, 1, ...), in row order.

    Examples:
        >>> append_dedup_level(np.array([[1, 2], [1, 2], [3, 4]])).tolist()
        [[1, 2, 0], [1, 2, 1], [3, 4, 0]]
    """
    seen: dict[Sid, int] = defaultdict(int)
    extra = np.zeros((len(codes), 1), dtype=codes.dtype)
    for row, sid in enumerate(map(tuple, codes)):
        extra[row, 0] = seen[sid]
        seen[sid] += 1
    return np.concatenate([codes, extra], axis=1)


def nearest_free_sid(
    latent: np.ndarray, codebooks: np.ndarray, taken: set[Sid], dedup_size: int | None = None
) -> Sid | None:
    """The SID nearest to `latent` (d,) that no item holds: depth-first over levels, nearest codes first.

    The first leaf reached is the greedy SID when it is free, else the nearest free last-level code under the
    greedy prefix, and only then a sibling prefix. With a dedup level of `dedup_size` codes, the last code is the
    smallest free dedup number. Returns `None` when every SID is taken.
    """
    num_levels = codebooks.shape[0]

    def visit(level: int, residual: np.ndarray, prefix: Sid) -> Sid | None:
        order = np.argsort(((codebooks[level] - residual) ** 2).sum(axis=1), kind="stable")
        for code in map(int, order):
            sid = (*prefix, code)
            if level < num_levels - 1:
                found = visit(level + 1, residual - codebooks[level][code], sid)
                if found is not None:
                    return found
            elif dedup_size is None:
                if sid not in taken:
                    return sid
            else:
                for dedup in range(dedup_size):
                    if (*sid, dedup) not in taken:
                        return (*sid, dedup)
        return None

    return visit(0, np.asarray(latent, dtype=np.float32), ())


def assign_new_items(
    latents: np.ndarray, codebooks: np.ndarray, existing: Iterable[Sid], dedup_size: int | None = None
) -> list[Sid]:
    """SIDs for new items (in order), never reusing an existing or already-assigned SID."""
    taken = set(existing)
    sids = []
    for latent in latents:
        sid = nearest_free_sid(latent, codebooks, taken, dedup_size)
        if sid is None:
            raise ValueError("every SID of this index is taken; rebuild the index with more levels or codes.")
        taken.add(sid)
        sids.append(sid)
    return sids
