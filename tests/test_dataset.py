"""Canonical dataset folder (save/load, validation, atomic writes), cleaning, leave-one-out split and stats.

Every expected value is worked out by hand from the small hand-made data below.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import stat
from pathlib import Path

import pytest

from llmrec.data.dataset import load_dataset, read_interactions, read_items
from llmrec.data.filtering import FilterReport, handle_duplicates, k_core
from llmrec.data.importers.common import RawData
from llmrec.data.io import DataError, write_json_atomic, write_text_atomic
from llmrec.data.prepare import PrepareConfig, prepare
from llmrec.data.split import Example, LeaveOneOutSplit, UserSplit, leave_one_out
from llmrec.data.stats import dataset_stats
from llmrec.schemas import Interaction, Item

# `llmrec.data.prepare` as an attribute is the function (re-exported by llmrec.data), so fetch the module itself.
prepare_module = importlib.import_module("llmrec.data.prepare")

ITEMS = {
    "a": Item("a", "Alpha pen", {"brand": "Acme", "categories": "Office, Pens"}),
    "b": Item("b", "Beta paper", {"description": "Ream of 500 sheets"}, image="images/b.jpg"),
    "c": Item("c", "Gamma ink"),
    "d": Item("d", "Delta stapler", {"brand": "Stapl"}),
    "e": Item("e", "Epsilon clip"),
}


def rows(*triples) -> list[Interaction]:
    return [Interaction(user, item, ts) for user, item, ts in triples]


def make_raw() -> RawData:
    """u1: 4 events, two tied at t=5 (c before a in source order); u2: 3 events; u3: 2 events (dropped)."""
    interactions = rows(
        ("u1", "b", 7),
        ("u1", "c", 5),
        ("u1", "a", 5),
        ("u2", "d", 2),
        ("u1", "d", 1),
        ("u2", "a", 3),
        ("u3", "a", 1),
        ("u2", "b", 1),
        ("u3", "b", 2),
    )
    return RawData("tiny", "hand-made", dict(ITEMS), interactions, [])


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def loc(path: Path, line: int) -> str:
    return re.escape(f"{path}:{line}")


@pytest.fixture
def prepared(tmp_path) -> Path:
    out = tmp_path / "ds"
    prepare(make_raw(), out, PrepareConfig(max_history=2))
    return out


# --- round trip -----------------------------------------------------------------------------------------------


def test_prepare_orders_filters_and_splits(tmp_path):
    dataset = prepare(make_raw(), tmp_path / "ds", PrepareConfig(max_history=2))
    assert dataset.interactions == rows(
        ("u1", "d", 1), ("u1", "c", 5), ("u1", "a", 5), ("u1", "b", 7), ("u2", "b", 1), ("u2", "d", 2), ("u2", "a", 3)
    )
    assert dataset.sequences() == {"u1": ["d", "c", "a", "b"], "u2": ["b", "d", "a"]}
    assert dataset.items == ITEMS  # min_item_interactions=0 keeps the whole catalog, including "e"
    assert dataset.meta["counts"] == {"users": 2, "items": 5, "interactions": 7}
    assert dataset.meta["filtering"]["users_dropped"] == 1
    assert dataset.meta["filtering"]["interactions_dropped_by_kcore"] == 2
    assert dataset.meta["split"] == {"protocol": "leave-one-out", "max_history": 2}
    assert sorted(os.listdir(tmp_path / "ds")) == ["dataset.json", "interactions.csv", "items.jsonl", "split.jsonl"]
    assert (tmp_path / "ds" / "interactions.csv").read_text() == (
        "user_id,item_id,timestamp\nu1,d,1\nu1,c,5\nu1,a,5\nu1,b,7\nu2,b,1\nu2,d,2\nu2,a,3\n"
    )


def test_round_trip(tmp_path):
    dataset = prepare(make_raw(), tmp_path / "ds", PrepareConfig(max_history=2))
    loaded = load_dataset(tmp_path / "ds")
    assert loaded.items == dataset.items
    assert list(loaded.items) == list(dataset.items)
    assert loaded.interactions == dataset.interactions
    assert loaded.meta == dataset.meta
    assert loaded.path == tmp_path / "ds"
    split = loaded.load_split()
    assert split == leave_one_out(loaded.sequences(), max_history=2)
    assert split.users == (UserSplit("u1", ("d", "c"), "a", "b"), UserSplit("u2", ("b",), "d", "a"))
    assert split.max_history == 2


def test_dataset_without_split_file_raises(prepared):
    dataset = load_dataset(prepared)
    dataset.meta["files"].pop("split.jsonl")
    with pytest.raises(DataError, match=r"dataset 'tiny' has no split\.jsonl"):
        dataset.load_split()


# --- atomic output --------------------------------------------------------------------------------------------


def test_failed_prepare_leaves_nothing(tmp_path, monkeypatch):
    def broken_save(dataset, folder, split=None):
        (folder / "items.jsonl").write_text("half written")
        raise RuntimeError("disk full")

    monkeypatch.setattr(prepare_module, "save_dataset", broken_save)
    parent = tmp_path / "parent"
    parent.mkdir()
    with pytest.raises(RuntimeError, match="disk full"):
        prepare(make_raw(), parent / "ds")
    assert list(parent.iterdir()) == []


def test_failed_overwrite_keeps_old_folder(prepared, monkeypatch):
    before = {path.name: path.read_bytes() for path in prepared.iterdir()}

    def broken_save(dataset, folder, split=None):
        raise RuntimeError("disk full")

    monkeypatch.setattr(prepare_module, "save_dataset", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare(make_raw(), prepared, overwrite=True)
    assert {path.name: path.read_bytes() for path in prepared.iterdir()} == before
    assert os.listdir(prepared.parent) == ["ds"]


def test_existing_out_needs_overwrite(prepared):
    (prepared / "marker.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"ds already exists; pass --overwrite"):
        prepare(make_raw(), prepared)
    assert (prepared / "marker.txt").read_text() == "keep me"
    raw = make_raw()
    raw.name = "tiny-v2"
    prepare(raw, prepared, overwrite=True)
    assert not (prepared / "marker.txt").exists()
    assert load_dataset(prepared).name == "tiny-v2"
    assert os.listdir(prepared.parent) == ["ds"]  # no temporary or old folder left beside it


def test_prepared_folder_permissions_follow_umask(tmp_path):
    umask = os.umask(0o022)
    try:
        prepare(make_raw(), tmp_path / "ds")
    finally:
        os.umask(umask)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in (tmp_path / "ds", *(tmp_path / "ds").iterdir())}
    assert modes == {name: 0o755 if name == "ds" else 0o644 for name in modes}


def test_write_text_atomic_replaces_whole_file_or_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "results" / "table.md"
    write_text_atomic(target, "| a |\n")
    write_text_atomic(target, "| b |\n")
    assert target.read_text(encoding="utf-8") == "| b |\n"

    def killed_rename(src, dst):
        raise KeyboardInterrupt  # the writer is stopped after the new text is on disk, before the rename

    monkeypatch.setattr(os, "replace", killed_rename)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(target, "| half |")
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(target, {"half": True})
    assert target.read_text(encoding="utf-8") == "| b |\n"
    assert os.listdir(target.parent) == ["table.md"]  # no temporary file left beside it


# --- load_dataset errors --------------------------------------------------------------------------------------


def test_missing_dataset_json(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'nope' / 'dataset.json'} not found")):
        load_dataset(tmp_path / "nope")


def test_wrong_format_version(prepared):
    meta = json.loads((prepared / "dataset.json").read_text())
    meta["format_version"] = 2
    (prepared / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"format_version 2, this llmrec reads 1"):
        load_dataset(prepared)


def test_items_edited_after_prepare(prepared):
    path = prepared / "items.jsonl"
    path.write_text(path.read_text().replace("Alpha pen", "Alpha pencil"))
    with pytest.raises(DataError, match=re.escape(f"{path} changed after it was prepared")):
        load_dataset(prepared)


def test_missing_listed_file(prepared):
    (prepared / "split.jsonl").unlink()
    with pytest.raises(DataError, match=re.escape(f"{prepared / 'split.jsonl'} not found")):
        load_dataset(prepared)


def test_dataset_json_not_an_object(prepared):
    (prepared / "dataset.json").write_text("[]\n")
    with pytest.raises(DataError, match=r"dataset\.json"):
        load_dataset(prepared)


# --- read_items -----------------------------------------------------------------------------------------------


def test_read_items_valid(tmp_path):
    path = write(
        tmp_path / "items.jsonl",
        '{"item_id": "a", "title": "A", "brand": "X", "note": null, "blank": "  ", "image": ""}\n'
        "\n"
        '{"item_id": "b", "title": "B", "image": "b.png"}\n',
    )
    assert read_items(path) == {"a": Item("a", "A", {"brand": "X"}), "b": Item("b", "B", image="b.png")}


def test_read_items_invalid_json(tmp_path):
    path = write(tmp_path / "items.jsonl", '{"item_id": "a", "title": "A"}\n{"item_id": "b", "title": \n')
    with pytest.raises(DataError, match=loc(path, 2) + r": not valid JSON"):
        read_items(path)


def test_read_items_missing_title(tmp_path):
    path = write(tmp_path / "items.jsonl", '{"item_id": "a"}\n')
    with pytest.raises(DataError, match=loc(path, 1) + r": item 'a' needs a non-empty string 'title', got None"):
        read_items(path)


def test_read_items_duplicate_id_names_first_line(tmp_path):
    path = write(
        tmp_path / "items.jsonl",
        '{"item_id": "a", "title": "A"}\n\n{"item_id": "b", "title": "B"}\n{"item_id": "a", "title": "A2"}\n',
    )
    with pytest.raises(DataError, match=loc(path, 4) + r": duplicate item_id 'a' \(first on line 1\)"):
        read_items(path)


def test_read_items_non_string_field(tmp_path):
    path = write(tmp_path / "items.jsonl", '{"item_id": "a", "title": "A", "year": 1995}\n')
    with pytest.raises(DataError, match=loc(path, 1) + r": item 'a' field 'year' is int; text fields must be strings"):
        read_items(path)


def test_read_items_not_an_object_and_bad_image(tmp_path):
    path = write(tmp_path / "items.jsonl", '["a", "A"]\n')
    with pytest.raises(DataError, match=loc(path, 1) + r": expected a JSON object per line, got list"):
        read_items(path)
    path = write(tmp_path / "items.jsonl", '{"item_id": "a", "title": "A", "image": 3}\n')
    with pytest.raises(DataError, match=r"item 'a' has 'image' 3"):
        read_items(path)


def test_read_items_non_utf8(tmp_path):
    path = write(tmp_path / "items.jsonl", b'{"item_id": "a", "title": "A"}\n{"item_id": "b", "title": "Caf\xe9"}\n')
    with pytest.raises(DataError, match=loc(path, 2) + r": byte 31 \(b'\\xe9\"}\\n'\) is not valid utf-8"):
        read_items(path)


def test_read_items_empty_file(tmp_path):
    path = write(tmp_path / "items.jsonl", "\n  \n")
    with pytest.raises(DataError, match=re.escape(f"{path} is empty")):
        read_items(path)


# --- read_interactions ----------------------------------------------------------------------------------------


def test_read_interactions_valid_with_column_order_and_quoting(tmp_path):
    path = write(tmp_path / "interactions.csv", 'timestamp,item_id,user_id\n3,a,"u,1"\n\n-4,b,u2\n')
    assert read_interactions(path, ITEMS) == rows(("u,1", "a", 3), ("u2", "b", -4))


def test_read_interactions_missing_column(tmp_path):
    path = write(tmp_path / "interactions.csv", "user_id,item_id\nu1,a\n")
    with pytest.raises(
        DataError, match=loc(path, 1) + r": header \['user_id', 'item_id'\] lacks column\(s\) \['timestamp'\]"
    ):
        read_interactions(path, ITEMS)


def test_read_interactions_unknown_item(tmp_path):
    path = write(tmp_path / "interactions.csv", "user_id,item_id,timestamp\nu1,a,1\nu1,zz,2\n")
    with pytest.raises(DataError, match=loc(path, 3) + r": item_id 'zz' is not in items\.jsonl"):
        read_interactions(path, ITEMS)


def test_read_interactions_non_integer_timestamp(tmp_path):
    path = write(tmp_path / "interactions.csv", "user_id,item_id,timestamp\nu1,a,1.5\n")
    with pytest.raises(DataError, match=loc(path, 2) + r": timestamp '1\.5' is not an integer"):
        read_interactions(path, ITEMS)


def test_read_interactions_wrong_column_count_and_empty_user(tmp_path):
    path = write(tmp_path / "interactions.csv", "user_id,item_id,timestamp\nu1,a\n")
    with pytest.raises(DataError, match=loc(path, 2) + r": expected 3 columns, found 2"):
        read_interactions(path, ITEMS)
    path = write(tmp_path / "interactions.csv", "user_id,item_id,timestamp\n,a,1\n")
    with pytest.raises(DataError, match=loc(path, 2) + r": empty user_id"):
        read_interactions(path, ITEMS)


def test_read_interactions_non_utf8(tmp_path):
    path = write(tmp_path / "interactions.csv", b"user_id,item_id,timestamp\nu1,a,1\nu\xe9,a,2\n")
    with pytest.raises(DataError, match=loc(path, 3) + r": byte 2 \(b'\\xe9,a,'\) is not valid utf-8"):
        read_interactions(path, ITEMS)


def test_read_interactions_empty(tmp_path):
    path = write(tmp_path / "interactions.csv", "")
    with pytest.raises(DataError, match=re.escape(f"{path} is empty")):
        read_interactions(path, ITEMS)
    path = write(tmp_path / "interactions.csv", "user_id,item_id,timestamp\n")
    with pytest.raises(DataError, match=re.escape(f"{path} has a header but no interactions")):
        read_interactions(path, ITEMS)


# --- filtering ------------------------------------------------------------------------------------------------

DUPLICATES = rows(
    ("u1", "a", 1),
    ("u1", "b", 2),
    ("u1", "a", 3),
    ("u1", "a", 3),  # identical to the row above: always collapsed
    ("u1", "c", 4),
    ("u1", "b", 5),
    ("u2", "a", 1),
    ("u2", "a", 1),  # identical
)


@pytest.mark.parametrize(
    ("policy", "expected", "repeated_dropped"),
    [
        ("keep", [("u1", "a", 1), ("u1", "b", 2), ("u1", "a", 3), ("u1", "c", 4), ("u1", "b", 5), ("u2", "a", 1)], 0),
        ("first", [("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 4), ("u2", "a", 1)], 2),
        ("last", [("u1", "a", 3), ("u1", "c", 4), ("u1", "b", 5), ("u2", "a", 1)], 2),
    ],
)
def test_handle_duplicates(policy, expected, repeated_dropped):
    report = FilterReport()
    assert handle_duplicates(DUPLICATES, policy, report) == rows(*expected)
    assert report.identical_duplicate_rows == 2
    assert report.repeated_pair_rows_dropped == repeated_dropped


def test_handle_duplicates_bad_policy():
    with pytest.raises(ValueError, match=r"duplicates must be 'keep', 'first' or 'last', got 'all'"):
        handle_duplicates(DUPLICATES, "all", FilterReport())


def test_k_core_needs_two_rounds():
    # Round 1 drops u4 (2 rows) and items d, e (1 row each): u3 falls to 2 rows. Round 2 drops u3.
    interactions = rows(
        ("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3),
        ("u2", "a", 1), ("u2", "b", 2), ("u2", "c", 3),
        ("u3", "a", 1), ("u3", "b", 2), ("u3", "d", 3),
        ("u4", "c", 1), ("u4", "e", 2),
    )  # fmt: skip
    report = FilterReport()
    kept = k_core(interactions, min_user=3, min_item=2, report=report)
    assert kept == rows(("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u2", "a", 1), ("u2", "b", 2), ("u2", "c", 3))
    assert report.kcore_rounds == 2
    assert report.users_dropped == 2
    assert report.items_dropped == 2
    assert report.interactions_dropped_by_kcore == 5


def test_prepare_with_item_threshold_drops_items_from_catalog(tmp_path):
    # Item rows: a 3, b 3, c 1, d 2. min_item=2 drops c, then u1 keeps d, a, b; u3 (2 rows) goes.
    dataset = prepare(make_raw(), tmp_path / "ds", PrepareConfig(min_item_interactions=2))
    assert list(dataset.items) == ["a", "b", "d"]
    assert dataset.sequences() == {"u1": ["d", "a", "b"], "u2": ["b", "d", "a"]}
    assert load_dataset(tmp_path / "ds").items == {key: ITEMS[key] for key in ("a", "b", "d")}


def test_prepare_duplicates_policy_and_unknown_items(tmp_path):
    raw = make_raw()
    raw.interactions += rows(("u2", "b", 9), ("u2", "b", 9), ("u2", "zz", 4))
    dataset = prepare(raw, tmp_path / "ds", PrepareConfig(duplicates="last"))
    assert dataset.sequences()["u2"] == ["d", "a", "b"]
    filtering = dataset.meta["filtering"]
    assert (filtering["identical_duplicate_rows"], filtering["repeated_pair_rows_dropped"]) == (1, 1)
    assert (filtering["unknown_item_interactions"], filtering["unknown_item_ids"]) == (1, 1)
    assert filtering["config"]["duplicates"] == "last"
    with pytest.raises(DataError, match=r"1 interaction\(s\) refer to 1 item id\(s\) missing from the item file"):
        prepare(raw, tmp_path / "strict", PrepareConfig(strict=True))
    assert not (tmp_path / "strict").exists()


def test_short_users_dropped_or_rejected_under_strict(tmp_path):
    dataset = prepare(make_raw(), tmp_path / "ds")
    assert dataset.meta["filtering"]["users_dropped"] == 1
    assert "u3" not in dataset.sequences()
    with pytest.raises(DataError, match=r"1 user\(s\) have fewer than 3 interactions \(e\.g\. 'u3'\)"):
        prepare(make_raw(), tmp_path / "strict", PrepareConfig(strict=True))
    assert not (tmp_path / "strict").exists()


def test_prepare_nothing_left(tmp_path):
    with pytest.raises(DataError, match=r"no interactions left after filtering \(min_user_interactions=10"):
        prepare(make_raw(), tmp_path / "ds", PrepareConfig(min_user_interactions=10))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_user_interactions": 2}, r"min_user_interactions must be >= 3 for leave-one-out, got 2"),
        ({"min_item_interactions": -1}, r"min_item_interactions must be >= 0, got -1"),
        ({"duplicates": "all"}, r"duplicates must be 'keep', 'first' or 'last', got 'all'"),
        ({"max_history": 0}, r"max_history must be >= 1, got 0"),
    ],
)
def test_prepare_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PrepareConfig(**kwargs)


# --- split ----------------------------------------------------------------------------------------------------


def test_leave_one_out():
    split = leave_one_out({"u1": ["a", "b", "c", "d", "e"], "u2": ["x", "y", "z"]}, max_history=3)
    assert split == LeaveOneOutSplit(
        (UserSplit("u1", ("a", "b", "c"), "d", "e"), UserSplit("u2", ("x",), "y", "z")), max_history=3
    )
    assert split.train_counts() == {"a": 1, "b": 1, "c": 1, "x": 1}


def test_leave_one_out_errors():
    with pytest.raises(DataError, match=r"user 'u2' has 2 interaction\(s\); leave-one-out needs at least 3"):
        leave_one_out({"u1": ["a", "b", "c"], "u2": ["a", "b"]})
    with pytest.raises(ValueError, match=r"max_history must be >= 1, got 0"):
        leave_one_out({"u1": ["a", "b", "c"]}, max_history=0)


def test_examples_truncate_history_but_not_seen():
    split = leave_one_out({"u1": ["a", "b", "c", "d", "e"], "u2": ["x", "y", "z"]}, max_history=2)
    assert split.examples("test") == [
        Example("u1", ("c", "d"), "e", frozenset({"a", "b", "c", "d"})),
        Example("u2", ("x", "y"), "z", frozenset({"x", "y"})),
    ]
    assert split.examples("valid") == [
        Example("u1", ("b", "c"), "d", frozenset({"a", "b", "c"})),
        Example("u2", ("x",), "y", frozenset({"x"})),
    ]


def test_examples_train_raises():
    split = leave_one_out({"u1": ["a", "b", "c"]})
    with pytest.raises(ValueError, match=r"examples\(\) takes 'valid' or 'test', got 'train'"):
        split.examples("train")


# --- stats ----------------------------------------------------------------------------------------------------


def test_dataset_stats_exact():
    # Lengths u1 3, u2 2, u3 4 -> sorted [2, 3, 4]; 9 rows over 3 users x 5 items; u1 repeats a once.
    interactions = rows(
        ("u1", "a", 1), ("u1", "b", 2), ("u1", "a", 3),
        ("u2", "a", 1), ("u2", "c", 2),
        ("u3", "b", 1), ("u3", "c", 2), ("u3", "d", 3), ("u3", "a", 4),
    )  # fmt: skip
    stats = dataset_stats(ITEMS, interactions)
    assert stats == {
        "users": 3,
        "items": 5,
        "interactions": 9,
        "items_with_interactions": 4,
        "repeated_user_item_rows": 1,
        "sequence_length": {
            "min": 2,
            # numpy linear interpolation over [2, 3, 4]: position q/100 * 2.
            "p10": pytest.approx(2.2),
            "p25": 2.5,
            "p50": 3.0,
            "p75": 3.5,
            "p90": pytest.approx(3.8),
            "max": 4,
            "mean": 3.0,
        },
        "sparsity": 0.4,  # 1 - 9 / 15
        "items_with_image": 1,
    }
