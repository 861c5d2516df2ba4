"""`tokenizer.assign`: greedy residual codes, collision resolution (Sinkhorn, dedup level), SIDs for new items."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenizer.assign import (
    append_dedup_level,
    assign_codes,
    assign_new_items,
    collision_rate,
    nearest_free_sid,
    resolve_collisions,
    round_plan,
    sinkhorn,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def grid_codebooks() -> np.ndarray:
    """2 levels x 4 codes in 2-D: coarse corners, then small offsets. (M, K, d) = (2, 4, 2)."""
    coarse = [[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]]
    fine = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]
    return np.array([coarse, fine], dtype=np.float32)


def random_codebooks(seed: int, levels: int, size: int, dim: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.array([4.0, 1.0, 0.25, 0.0625])[:levels, None, None]
    return (rng.standard_normal((levels, size, dim)) * scales).astype(np.float32)


def last_residual(latent: np.ndarray, codebooks: np.ndarray, prefix: tuple[int, ...]) -> np.ndarray:
    return latent - sum(codebooks[level][code] for level, code in enumerate(prefix))


# --- greedy codes and collision rate ---------------------------------------------------------------------------


def test_assign_codes_on_a_hand_made_codebook():
    latents = np.array([[10.9, 0.1], [0.1, 11.0], [0.0, 0.0], [9.2, 9.9], [-0.8, 0.2]], dtype=np.float32)
    codes = assign_codes(latents, grid_codebooks())
    # (10.9, 0.1) -> corner 1, residual (0.9, 0.1) -> (1, 0); (0.1, 11) -> corner 2, residual (0.1, 1) -> (0, 1);
    # (9.2, 9.9) -> corner 3, residual (-0.8, -0.1) -> (-1, 0); (-0.8, 0.2) -> corner 0, residual itself -> (-1, 0).
    assert codes.tolist() == [[1, 1], [2, 2], [0, 0], [3, 3], [0, 3]]
    assert codes.dtype == np.int64 and codes.shape == (5, 2)


@pytest.mark.parametrize(
    ("codes", "rate"),
    [
        ([[0, 1], [0, 1], [0, 2], [1, 1]], 0.5),
        ([[0, 0], [1, 1], [2, 2]], 0.0),
        ([[3, 3], [3, 3], [3, 3], [0, 1], [0, 2]], 0.6),
        ([[1], [1], [2], [2]], 1.0),
        ([[0, 0, 0], [0, 0, 1], [0, 0, 1], [0, 0, 0], [5, 5, 5]], 0.8),
    ],
)
def test_collision_rate_exact(codes, rate):
    assert collision_rate(np.array(codes)) == rate


# --- Sinkhorn and rounding -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("m", "f"), [(3, 5), (5, 3), (2, 7), (1, 4), (4, 4)])
def test_sinkhorn_marginals_are_uniform(m, f):
    cost = np.random.default_rng(m * 10 + f).random((m, f))
    plan = sinkhorn(cost)
    assert plan.shape == (m, f) and (plan >= 0).all()
    np.testing.assert_allclose(plan.sum(axis=0), 1 / f, rtol=1e-6)
    np.testing.assert_allclose(plan.sum(axis=1), 1 / m, rtol=2e-2)  # rows converge last (v is updated last)
    np.testing.assert_allclose(plan.sum(), 1.0, rtol=1e-6)


def test_sinkhorn_prefers_cheap_cells():
    cost = np.array([[0.0, 5.0, 5.0], [5.0, 5.0, 0.0]])
    plan = sinkhorn(cost)
    assert plan[0].argmax() == 0 and plan[1].argmax() == 2


@pytest.mark.parametrize(("m", "f"), [(3, 5), (5, 3), (4, 4), (1, 3), (6, 1)])
def test_round_plan_gives_distinct_rows_and_columns(m, f):
    plan = np.random.default_rng(m + 7 * f).random((m, f))
    pairs = round_plan(plan)
    rows, cols = [row for row, _ in pairs], [col for _, col in pairs]
    assert len(pairs) == min(m, f)
    assert len(set(rows)) == len(rows) and len(set(cols)) == len(cols)
    assert all(0 <= row < m and 0 <= col < f for row, col in pairs)
    assert pairs[0] == divmod(int(plan.argmax()), f)  # largest entry first


def test_round_plan_is_greedy_on_largest_entries():
    plan = np.array([[0.9, 0.8, 0.1], [0.85, 0.2, 0.3]])
    assert round_plan(plan) == [(0, 0), (1, 2)]


# --- collision resolution --------------------------------------------------------------------------------------


def test_forced_collision_moves_all_but_the_nearest_item():
    codebooks = grid_codebooks()
    # Rows 0, 2, 3 all greedily get (0, 0); row 2 is nearest to code (0, 0) and keeps it. Row 1 is alone.
    latents = np.array([[0.3, 0.0], [10.0, 10.0], [0.05, 0.0], [0.0, 0.3], [0.2, 0.2]], dtype=np.float32)
    greedy = assign_codes(latents, codebooks)
    assert greedy.tolist() == [[0, 0], [3, 0], [0, 0], [0, 0], [0, 0]]
    codes, report = resolve_collisions(latents, codebooks, greedy)
    assert codes.shape == greedy.shape
    assert collision_rate(codes) == 0.0
    np.testing.assert_array_equal(codes[:, :-1], greedy[:, :-1])  # prefixes untouched
    assert codes[2].tolist() == [0, 0] and codes[1].tolist() == [3, 0]
    assert sorted(codes[[0, 3, 4], -1].tolist()) == [1, 2, 3]  # the three free codes of prefix (0,)
    assert report == {"moved_by_sinkhorn": 3, "overflowing_prefix_groups": 0, "extra_level": False}
    np.testing.assert_array_equal(greedy[:, -1], [0, 0, 0, 0, 0])  # input not modified


def test_identical_latents_keep_the_first_row_and_spread_the_rest():
    codebooks = random_codebooks(0, levels=3, size=8)
    latent = codebooks[0][2] + codebooks[1][5] + codebooks[2][1] + 0.01
    latents = np.repeat(latent[None, :], 5, axis=0).astype(np.float32)
    greedy = assign_codes(latents, codebooks)
    assert greedy.tolist() == [[2, 5, 1]] * 5
    codes, report = resolve_collisions(latents, codebooks, greedy)
    assert codes.shape == (5, 3) and collision_rate(codes) == 0.0
    np.testing.assert_array_equal(codes[:, :2], greedy[:, :2])
    assert codes[0].tolist() == [2, 5, 1]  # ties: argmin keeps the first member
    assert report["moved_by_sinkhorn"] == 4 and report["extra_level"] is False
    assert (codes[:, -1] < 8).all()


def test_overflowing_prefix_group_gets_a_dedup_level():
    codebooks = random_codebooks(1, levels=2, size=3)
    latent = codebooks[0][1] + codebooks[1][0]
    latents = np.vstack([np.repeat(latent[None, :], 5, axis=0), codebooks[0][2][None, :]]).astype(np.float32)
    greedy = assign_codes(latents, codebooks)
    assert greedy[:5].tolist() == [[1, 0]] * 5 and greedy[5, 0] == 2
    codes, report = resolve_collisions(latents, codebooks, greedy)
    assert codes.shape == (6, 3)
    assert collision_rate(codes) == 0.0
    np.testing.assert_array_equal(codes[:, 0], greedy[:, 0])
    assert sorted(map(tuple, codes[:5, :2].tolist())) == [(1, 0), (1, 0), (1, 0), (1, 1), (1, 2)]
    assert sorted(codes[:5, 2].tolist()) == [0, 0, 0, 1, 2] and codes[5, 2] == 0
    assert report == {"moved_by_sinkhorn": 2, "overflowing_prefix_groups": 1, "extra_level": True}


def test_no_collision_is_a_no_op():
    latents = np.array([[10.9, 0.1], [0.1, 11.0], [0.0, 0.0]], dtype=np.float32)
    greedy = assign_codes(latents, grid_codebooks())
    codes, report = resolve_collisions(latents, grid_codebooks(), greedy)
    np.testing.assert_array_equal(codes, greedy)
    assert report == {"moved_by_sinkhorn": 0, "overflowing_prefix_groups": 0, "extra_level": False}


def test_single_level_codes():
    codebooks = random_codebooks(2, levels=1, size=4)
    latents = np.repeat(codebooks[0][3][None, :], 3, axis=0)
    codes, report = resolve_collisions(latents, codebooks, assign_codes(latents, codebooks))
    assert codes.shape == (3, 1) and collision_rate(codes) == 0.0 and codes[0, 0] == 3
    assert report["moved_by_sinkhorn"] == 2


def test_append_dedup_level_numbers_shared_sids_in_row_order():
    codes = np.array([[1, 2], [3, 4], [1, 2], [1, 2], [3, 4], [0, 0]])
    out = append_dedup_level(codes)
    assert out.tolist() == [[1, 2, 0], [3, 4, 0], [1, 2, 1], [1, 2, 2], [3, 4, 1], [0, 0, 0]]
    assert out.dtype == codes.dtype
    assert append_dedup_level(np.zeros((0, 2), dtype=np.int64)).shape == (0, 3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    levels=st.integers(1, 3),
    size=st.integers(2, 4),
    dim=st.integers(1, 3),
    n=st.integers(1, 14),
    seed=st.integers(0, 2**16),
    duplicates=st.integers(0, 6),
)
def test_resolve_collisions_always_gives_unique_in_range_codes(levels, size, dim, n, seed, duplicates):
    rng = np.random.default_rng(seed)
    codebooks = rng.integers(-2, 3, (levels, size, dim)).astype(np.float32)
    latents = rng.integers(-3, 4, (n, dim)).astype(np.float32)  # a coarse grid: many exact collisions
    if duplicates:
        latents = np.vstack([latents, np.repeat(latents[:1], duplicates, axis=0)])
    greedy = assign_codes(latents, codebooks)
    codes, report = resolve_collisions(latents, codebooks, greedy)
    assert collision_rate(codes) == 0.0
    assert len({tuple(row) for row in codes.tolist()}) == len(latents)
    assert ((codes[:, :levels] >= 0) & (codes[:, :levels] < size)).all()
    np.testing.assert_array_equal(codes[:, : levels - 1], greedy[:, : levels - 1])
    assert codes.shape[1] == levels + int(report["extra_level"])
    if report["extra_level"]:
        assert report["overflowing_prefix_groups"] >= 1
        assert 0 <= codes[:, -1].min() and codes[:, -1].max() < len(latents)
    else:
        assert report["overflowing_prefix_groups"] == 0


# --- SIDs for new items ----------------------------------------------------------------------------------------


def test_nearest_free_sid_is_the_greedy_sid_when_free():
    codebooks = random_codebooks(3, levels=3, size=5)
    latents = np.random.default_rng(3).standard_normal((10, 3)).astype(np.float32) * 4
    greedy = assign_codes(latents, codebooks)
    for latent, sid in zip(latents, greedy.tolist(), strict=True):
        found = nearest_free_sid(latent, codebooks, {(0, 0, 0), (4, 4, 4)} - {tuple(sid)})
        assert found == tuple(sid)
        assert all(type(code) is int for code in found)


@pytest.mark.parametrize("seed", range(5))
def test_nearest_free_sid_takes_the_nearest_free_last_code_under_the_greedy_prefix(seed):
    codebooks = random_codebooks(seed, levels=3, size=6)
    rng = np.random.default_rng(100 + seed)
    latent = (rng.standard_normal(3) * 4).astype(np.float32)
    greedy = tuple(assign_codes(latent[None, :], codebooks)[0].tolist())
    taken_codes = {greedy[-1], *rng.choice(6, size=3, replace=False).tolist()}
    taken = {(*greedy[:-1], code) for code in taken_codes}
    # Brute force: every SID under the greedy prefix, nearest last residual first, first one not taken.
    residual = last_residual(latent, codebooks, greedy[:-1])
    candidates = [(*greedy[:-1], code) for code in range(6)]
    candidates.sort(key=lambda sid: float(((residual - codebooks[-1][sid[-1]]) ** 2).sum()))
    expected = next(sid for sid in candidates if sid not in taken)
    assert expected != greedy
    assert nearest_free_sid(latent, codebooks, taken) == expected


def test_nearest_free_sid_goes_to_a_sibling_prefix_when_the_prefix_is_full():
    codebooks = random_codebooks(7, levels=3, size=4)
    latent = (np.random.default_rng(7).standard_normal(3) * 4).astype(np.float32)
    g0, g1, _ = assign_codes(latent[None, :], codebooks)[0].tolist()
    taken = {(g0, g1, code) for code in range(4)}
    residual1 = latent - codebooks[0][g0]
    order1 = np.argsort(((codebooks[1] - residual1) ** 2).sum(axis=1), kind="stable").tolist()
    assert order1[0] == g1
    sibling = order1[1]
    residual2 = residual1 - codebooks[1][sibling]
    last = int(np.argmin(((codebooks[2] - residual2) ** 2).sum(axis=1)))
    assert nearest_free_sid(latent, codebooks, taken) == (g0, sibling, last)


def test_nearest_free_sid_with_a_dedup_level():
    codebooks = random_codebooks(8, levels=2, size=3)
    latent = (np.random.default_rng(8).standard_normal(3) * 4).astype(np.float32)
    greedy = tuple(assign_codes(latent[None, :], codebooks)[0].tolist())
    assert nearest_free_sid(latent, codebooks, set(), dedup_size=3) == (*greedy, 0)
    taken = {(*greedy, 0), (*greedy, 1)}
    assert nearest_free_sid(latent, codebooks, taken, dedup_size=3) == (*greedy, 2)
    taken.add((*greedy, 2))
    found = nearest_free_sid(latent, codebooks, taken, dedup_size=3)
    assert found[:1] == greedy[:1] and found[1] != greedy[1] and found[2] == 0
    assert nearest_free_sid(latent, codebooks, taken | {found}, dedup_size=3) != found


def test_nearest_free_sid_none_when_everything_is_taken():
    codebooks = random_codebooks(9, levels=2, size=2)
    every = set(itertools.product(range(2), range(2)))
    assert nearest_free_sid(np.zeros(3, dtype=np.float32), codebooks, every) is None
    every_dedup = {(*sid, dedup) for sid in every for dedup in range(2)}
    assert nearest_free_sid(np.zeros(3, dtype=np.float32), codebooks, every_dedup, dedup_size=2) is None
    assert nearest_free_sid(np.zeros(3, dtype=np.float32), codebooks, every_dedup - {(1, 0, 1)}, 2) == (1, 0, 1)


def test_assign_new_items_never_reuses_a_sid():
    codebooks = random_codebooks(10, levels=2, size=4)
    rng = np.random.default_rng(10)
    existing = {tuple(row) for row in assign_codes(rng.standard_normal((6, 3)).astype(np.float32) * 4, codebooks)}
    new = rng.standard_normal((5, 3)).astype(np.float32) * 4
    latents = np.vstack([new, np.repeat(new[:1], 4, axis=0)])  # identical new items must also differ
    sids = assign_new_items(latents, codebooks, existing)
    assert len(sids) == 9 and len(set(sids)) == 9
    assert not set(sids) & existing
    assert all(len(sid) == 2 and all(0 <= code < 4 for code in sid) for sid in sids)


def test_assign_new_items_fails_when_the_index_is_full():
    codebooks = random_codebooks(11, levels=2, size=2)
    existing = list(itertools.product(range(2), range(2)))[:3]
    assert len(assign_new_items(np.zeros((1, 3), dtype=np.float32), codebooks, existing)) == 1
    with pytest.raises(ValueError, match="every SID of this index is taken"):
        assign_new_items(np.zeros((2, 3), dtype=np.float32), codebooks, existing)
