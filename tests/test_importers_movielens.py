"""MovieLens importers (RecBole atomic files, GroupLens ml-100k and ml-1m raw files) and `prepare` on them.

The fixtures under `tests/fixtures/movielens/` are hand-written; the GroupLens ones are latin-1 bytes, as the real
files are. Expected items, orders and splits below are worked out by hand from those files.
"""

from __future__ import annotations

import importlib.util
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from llmrec.cli import main
from llmrec.data.dataset import load_dataset
from llmrec.data.importers.movielens import (
    find_recbole_dataset,
    import_grouplens_1m,
    import_grouplens_100k,
    import_recbole_movielens,
)
from llmrec.data.io import DataError, sha256_file
from llmrec.data.prepare import prepare
from llmrec.data.split import UserSplit, leave_one_out
from llmrec.schemas import Interaction, Item

FIXTURES = Path(__file__).parent / "fixtures" / "movielens"
RECBOLE_MINI = FIXTURES / "recbole-mini"
GROUPLENS_100K = FIXTURES / "grouplens-100k"
GROUPLENS_1M = FIXTURES / "grouplens-1m"
WHEEL_INNER = "recbole/dataset_example/ml-100k"

RECBOLE_ITEMS = {
    "10": Item("10", "Toy Story", {"year": "1995", "genres": "Animation, Children's, Comedy"}),
    "11": Item("11", "GoldenEye", {"year": "1995", "genres": "Action, Adventure, Thriller"}),
    "12": Item("12", "Seven (Se7en)", {"year": "1995", "genres": "Crime, Thriller"}),
    "13": Item("13", "Café au lait", {"year": "1993", "genres": "Comedy"}),
    "14": Item("14", "unknown", {"genres": "unknown"}),
    "15": Item("15", "Heat", {"year": "1995", "genres": "Action, Crime"}),
}
# Source order; "300.0" in the file is read as 300.
RECBOLE_INTERACTIONS = [
    Interaction("1", "10", 300),
    Interaction("1", "11", 100),
    Interaction("1", "13", 200),
    Interaction("1", "12", 200),
    Interaction("2", "10", 50),
    Interaction("2", "12", 60),
    Interaction("2", "14", 70),
    Interaction("2", "11", 80),
    Interaction("3", "13", 10),
    Interaction("3", "14", 20),
]


def make_wheel(path: Path, inter: bytes, item: bytes, inner: str = WHEEL_INNER) -> Path:
    """A fake RecBole wheel: a zip holding the example dataset where the real wheel has it."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{inner}/ml-100k.inter", inter)
        archive.writestr(f"{inner}/ml-100k.item", item)
        archive.writestr("recbole/__init__.py", "")
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """`LLMREC_CACHE` in tmp_path, and no installed `recbole` package, so lookups stay inside the test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LLMREC_CACHE", str(root))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "recbole" else real_find_spec(name, *a)
    )
    return root


# --- fixture sanity -------------------------------------------------------------------------------------------


def test_grouplens_fixtures_are_latin1_bytes():
    assert "Café au lait (1993)".encode("latin-1") in (GROUPLENS_100K / "u.item").read_bytes()
    assert b"Caf\xe9 au lait (1993)" in (GROUPLENS_1M / "movies.dat").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        (GROUPLENS_100K / "u.item").read_bytes().decode("utf-8")


# --- RecBole atomic files -------------------------------------------------------------------------------------


def test_recbole_folder_items_and_interactions():
    raw = import_recbole_movielens("ml-100k", path=RECBOLE_MINI)
    assert raw.name == "ml-100k"
    assert list(raw.items) == ["10", "11", "12", "13", "14", "15"]
    assert raw.items == RECBOLE_ITEMS
    assert raw.interactions == RECBOLE_INTERACTIONS
    assert raw.inputs == [RECBOLE_MINI / "ml-100k.inter", RECBOLE_MINI / "ml-100k.item"]


def test_find_recbole_dataset_folder_without_files_raises(tmp_path):
    (tmp_path / "u.data").write_text("1\t1\t5\t1\n")
    with pytest.raises(DataError, match=r"holds neither ml-100k\.inter nor a RecBole wheel"):
        find_recbole_dataset("ml-100k", tmp_path)
    with pytest.raises(DataError, match=r"holds neither ml-100k\.inter"):
        find_recbole_dataset("ml-100k", tmp_path / "missing")


def test_find_recbole_dataset_unknown_variant():
    with pytest.raises(ValueError, match=r"unknown MovieLens variant 'ml-20m'"):
        find_recbole_dataset("ml-20m", RECBOLE_MINI)


def test_recbole_wheel_as_path_is_extracted_into_cache(tmp_path, cache):
    wheel = make_wheel(
        tmp_path / "recbole-1.2.1-py3-none-any.whl",
        (RECBOLE_MINI / "ml-100k.inter").read_bytes(),
        (RECBOLE_MINI / "ml-100k.item").read_bytes(),
    )
    extracted = find_recbole_dataset("ml-100k", wheel)
    # One extraction folder per distinct wheel, keyed by the wheel's checksum.
    assert extracted == cache / "datasets" / f"ml-100k-{sha256_file(wheel)[:16]}"
    raw = import_recbole_movielens("ml-100k", path=wheel)
    assert raw.items == RECBOLE_ITEMS
    assert raw.interactions == RECBOLE_INTERACTIONS
    assert (extracted / "ml-100k.inter").read_bytes() == (RECBOLE_MINI / "ml-100k.inter").read_bytes()
    assert sorted(path.name for path in extracted.iterdir()) == ["ml-100k.inter", "ml-100k.item"]


def test_recbole_wheel_without_dataset_raises(tmp_path, cache):
    wheel = make_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl", b"x", b"y", inner="recbole/other")
    with pytest.raises(DataError, match=r"does not contain recbole/dataset_example/ml-100k/ml-100k\.inter"):
        find_recbole_dataset("ml-100k", wheel)


def test_recbole_cached_wheel_is_used_without_download(cache):
    wheels = cache / "wheels"
    wheels.mkdir(parents=True)
    wheel = make_wheel(
        wheels / "recbole-1.2.1-py3-none-any.whl",
        (RECBOLE_MINI / "ml-100k.inter").read_bytes(),
        (RECBOLE_MINI / "ml-100k.item").read_bytes(),
    )
    folder = find_recbole_dataset("ml-100k", download=False)
    assert folder == cache / "datasets" / f"ml-100k-{sha256_file(wheel)[:16]}"
    assert (folder / "ml-100k.item").read_bytes() == (RECBOLE_MINI / "ml-100k.item").read_bytes()


def test_recbole_not_found_without_download_raises(cache):
    with pytest.raises(DataError, match=r"ml-100k not found: install recbole==1\.2\.1 or pass --path"):
        find_recbole_dataset("ml-100k", download=False)


def test_recbole_second_wheel_is_not_shadowed_by_cache(tmp_path, cache):
    item = (RECBOLE_MINI / "ml-100k.item").read_bytes()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    header = b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    first = make_wheel(tmp_path / "a" / "recbole-1.2.1-py3-none-any.whl", header + b"1\t10\t4\t1\n", item)
    second = make_wheel(tmp_path / "b" / "recbole-1.2.1-py3-none-any.whl", header + b"9\t11\t4\t1\n", item)
    assert import_recbole_movielens("ml-100k", path=first).interactions == [Interaction("1", "10", 1)]
    assert import_recbole_movielens("ml-100k", path=second).interactions == [Interaction("9", "11", 1)]


def test_recbole_identical_duplicate_item_rows_collapse_and_conflicts_raise(tmp_path):
    shutil.copy(RECBOLE_MINI / "ml-100k.inter", tmp_path / "ml-100k.inter")
    item_text = (RECBOLE_MINI / "ml-100k.item").read_text(encoding="utf-8")
    (tmp_path / "ml-100k.item").write_text(item_text + "11\tGoldenEye\t1995\tAction Adventure Thriller\n")
    assert import_recbole_movielens("ml-100k", path=tmp_path).items == RECBOLE_ITEMS
    (tmp_path / "ml-100k.item").write_text(item_text + "11\tGoldenEye 2\t1995\tAction\n")
    with pytest.raises(DataError, match=r"ml-100k\.item:8: item '11' appears again .* than at .*/ml-100k\.item:3"):
        import_recbole_movielens("ml-100k", path=tmp_path)


def test_recbole_bad_timestamp_and_column_count(tmp_path):
    shutil.copy(RECBOLE_MINI / "ml-100k.item", tmp_path / "ml-100k.item")
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    (tmp_path / "ml-100k.inter").write_text(header + "1\t10\t4\tyesterday\n")
    with pytest.raises(DataError, match=r"ml-100k\.inter:2: timestamp 'yesterday' is not a finite number"):
        import_recbole_movielens("ml-100k", path=tmp_path)
    (tmp_path / "ml-100k.inter").write_text(header + "1\t10\t4\n")
    with pytest.raises(DataError, match=r"ml-100k\.inter:2: expected 4 tab-separated values, got 3"):
        import_recbole_movielens("ml-100k", path=tmp_path)


def test_recbole_infinite_timestamp_is_a_data_error(tmp_path):
    shutil.copy(RECBOLE_MINI / "ml-100k.item", tmp_path / "ml-100k.item")
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    (tmp_path / "ml-100k.inter").write_text(header + "1\t10\t4\tinf\n")
    with pytest.raises(DataError, match=r"ml-100k\.inter:2: timestamp 'inf' is not a finite number"):
        import_recbole_movielens("ml-100k", path=tmp_path)


# --- GroupLens raw files --------------------------------------------------------------------------------------


def test_grouplens_100k_items_and_interactions():
    raw = import_grouplens_100k(GROUPLENS_100K)
    assert raw.name == "ml-100k"
    assert raw.items == {
        "1": Item("1", "Toy Story", {"year": "1995", "genres": "Animation, Children's, Comedy"}),
        "2": Item("2", "GoldenEye", {"year": "1995", "genres": "Action, Adventure, Thriller"}),
        "3": Item("3", "Café au lait", {"year": "1993", "genres": "Comedy"}),
        "4": Item("4", "Seven (Se7en)", {"year": "1995", "genres": "Crime, Thriller"}),
        "5": Item("5", "unknown", {"genres": "unknown"}),
    }
    assert raw.interactions == [
        Interaction("1", "2", 100),
        Interaction("1", "3", 200),
        Interaction("1", "1", 200),
        Interaction("2", "1", 10),
        Interaction("2", "4", 30),
        Interaction("2", "5", 20),
        Interaction("3", "1", 5),
        Interaction("3", "2", 6),
    ]
    assert raw.inputs == [GROUPLENS_100K / "u.data", GROUPLENS_100K / "u.item"]


def test_grouplens_100k_wrong_field_count(tmp_path):
    shutil.copy(GROUPLENS_100K / "u.data", tmp_path / "u.data")
    (tmp_path / "u.item").write_bytes(b"1|Toy Story (1995)|01-Jan-1995\n")
    with pytest.raises(DataError, match=r"u\.item:1: expected 24 '\|'-separated values, got 3"):
        import_grouplens_100k(tmp_path)


def test_grouplens_1m_items_and_interactions():
    raw = import_grouplens_1m(GROUPLENS_1M)
    assert raw.name == "ml-1m"
    assert raw.items == {
        "1": Item("1", "Toy Story", {"year": "1995", "genres": "Animation, Children's, Comedy"}),
        "2": Item("2", "GoldenEye", {"year": "1995", "genres": "Action, Adventure, Thriller"}),
        "3": Item("3", "Café au lait", {"year": "1993", "genres": "Comedy"}),
        "4": Item(
            "4",
            "City of Lost Children, The (Cité des enfants perdus, La)",
            {"year": "1995", "genres": "Adventure, Sci-Fi"},
        ),
    }
    assert raw.interactions == [
        Interaction("1", "4", 978300760),
        Interaction("1", "2", 978300100),
        Interaction("1", "1", 978300760),
        Interaction("1", "3", 978300200),
        Interaction("2", "1", 978200000),
        Interaction("2", "3", 978200001),
        Interaction("2", "4", 978200002),
        Interaction("3", "2", 978100000),
    ]


def test_grouplens_1m_bad_rating_line(tmp_path):
    shutil.copy(GROUPLENS_1M / "movies.dat", tmp_path / "movies.dat")
    (tmp_path / "ratings.dat").write_bytes(b"1::1::5::978300760\n1::2::5\n")
    with pytest.raises(DataError, match=r"ratings\.dat:2: expected UserID::MovieID::Rating::Timestamp"):
        import_grouplens_1m(tmp_path)


# --- prepare on the imports: stable tie-break by file order ---------------------------------------------------


@pytest.mark.parametrize(
    ("load", "interactions", "splits"),
    [
        pytest.param(
            lambda: import_recbole_movielens("ml-100k", path=RECBOLE_MINI),
            # user 1: items 13 and 12 share timestamp 200 and keep file order (13 first); user 3 has 2 rows.
            [("1", "11", 100), ("1", "13", 200), ("1", "12", 200), ("1", "10", 300)]
            + [("2", "10", 50), ("2", "12", 60), ("2", "14", 70), ("2", "11", 80)],
            [UserSplit("1", ("11", "13"), "12", "10"), UserSplit("2", ("10", "12"), "14", "11")],
            id="recbole",
        ),
        pytest.param(
            lambda: import_grouplens_100k(GROUPLENS_100K),
            # user 1: items 3 and 1 share timestamp 200, file order 3 then 1.
            [("1", "2", 100), ("1", "3", 200), ("1", "1", 200), ("2", "1", 10), ("2", "5", 20), ("2", "4", 30)],
            [UserSplit("1", ("2",), "3", "1"), UserSplit("2", ("1",), "5", "4")],
            id="grouplens-100k",
        ),
        pytest.param(
            lambda: import_grouplens_1m(GROUPLENS_1M),
            # user 1: items 4 and 1 share timestamp 978300760, file order 4 then 1.
            [("1", "2", 978300100), ("1", "3", 978300200), ("1", "4", 978300760), ("1", "1", 978300760)]
            + [("2", "1", 978200000), ("2", "3", 978200001), ("2", "4", 978200002)],
            [UserSplit("1", ("2", "3"), "4", "1"), UserSplit("2", ("1",), "3", "4")],
            id="grouplens-1m",
        ),
    ],
)
def test_prepare_keeps_file_order_for_equal_timestamps(tmp_path, load, interactions, splits):
    raw = load()
    dataset = prepare(raw, tmp_path / "out")
    assert dataset.interactions == [Interaction(*row) for row in interactions]
    assert dataset.items == raw.items
    assert dataset.meta["filtering"]["users_dropped"] == 1
    split = dataset.load_split()
    assert split.users == tuple(splits)
    loaded = load_dataset(tmp_path / "out")
    assert loaded.interactions == dataset.interactions
    assert loaded.items == raw.items


def test_prepare_is_deterministic_across_runs(tmp_path):
    raw = import_grouplens_100k(GROUPLENS_100K)
    prepare(raw, tmp_path / "a")
    prepare(import_grouplens_100k(GROUPLENS_100K), tmp_path / "b")
    for name in ("items.jsonl", "interactions.csv", "split.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_prepared_items_file_is_utf8(tmp_path):
    prepare(import_grouplens_100k(GROUPLENS_100K), tmp_path / "out")
    text = (tmp_path / "out" / "items.jsonl").read_text(encoding="utf-8")
    assert '"title": "Café au lait"' in text


# --- CLI ------------------------------------------------------------------------------------------------------


def test_cli_prepare_grouplens_raw(tmp_path, capsys):
    out = tmp_path / "ml"
    assert main(["data", "prepare", "ml-100k", "--raw", str(GROUPLENS_100K), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    dataset = load_dataset(out)
    assert dataset.meta["counts"] == {"users": 2, "items": 5, "interactions": 6}
    assert dataset.sequences() == {"1": ["2", "3", "1"], "2": ["1", "5", "4"]}
    # A second run without --overwrite is refused with exit code 2.
    assert main(["data", "prepare", "ml-100k", "--raw", str(GROUPLENS_100K), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_prepare_recbole_path_and_1m_raw(tmp_path):
    assert main(["data", "prepare", "ml-100k", "--path", str(RECBOLE_MINI), "--out", str(tmp_path / "a")]) == 0
    assert load_dataset(tmp_path / "a").sequences() == {"1": ["11", "13", "12", "10"], "2": ["10", "12", "14", "11"]}
    assert main(["data", "prepare", "ml-1m", "--raw", str(GROUPLENS_1M), "--out", str(tmp_path / "b")]) == 0
    assert load_dataset(tmp_path / "b").name == "ml-1m"


# --- the real MovieLens-100K ----------------------------------------------------------------------------------


@pytest.mark.integration
def test_real_movielens_100k(tmp_path):
    raw = import_recbole_movielens("ml-100k")
    dataset = prepare(raw, tmp_path / "ml-100k")
    assert dataset.meta["counts"] == {"users": 943, "items": 1682, "interactions": 100_000}
    assert len(Counter(row.user_id for row in dataset.interactions)) == 943
    split = dataset.load_split()
    assert len(split.users) == 943
    assert min(len(user.train) for user in split.users) >= 18
    assert split == leave_one_out(dataset.sequences())
    loaded = load_dataset(tmp_path / "ml-100k")
    assert loaded.interactions == dataset.interactions
    assert loaded.items == dataset.items
    assert loaded.items["1"] == Item("1", "Toy Story", {"year": "1995", "genres": "Animation, Children's, Comedy"})
