"""Amazon importer (2014 and 2018 formats) on the hand-written fixtures in `tests/fixtures/amazon/`.

The fixture design and the hand-computed 5-core result are in `tests/fixtures/amazon/README.md`.
"""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

import pytest

from llmrec.cli import main
from llmrec.data import PrepareConfig, load_dataset, prepare
from llmrec.data.importers import import_amazon
from llmrec.data.io import DataError
from llmrec.schemas import Item

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "amazon"
YEARS = (2014, 2018)
FIVE_CORE = PrepareConfig(min_user_interactions=5, min_item_interactions=5)

PEN, PAPER, STAPLER, NOTES, TAPE = "B000PEN001", "B000PAP002", "B000STA003", "B000NOT004", "B000TAP005"
FOLDERS, INK, CLIPS = "B000FOL006", "B000INK007", "B000CLP008"
ALL_ITEMS = [PEN, PAPER, STAPLER, NOTES, TAPE, FOLDERS, INK, CLIPS]

# Users left after the 5-core and their sequences in time order (README table, I6/I7 removed).
EXPECTED_SEQUENCES = {
    "A1FIXTUREUSR1": [STAPLER, PEN, PAPER, TAPE, NOTES],
    "A2FIXTUREUSR2": [PEN, PAPER, STAPLER, NOTES, TAPE],
    "A3FIXTUREUSR3": [TAPE, NOTES, STAPLER, PAPER, PEN],
    "A4FIXTUREUSR4": [PAPER, PEN, NOTES, STAPLER, TAPE],
    "A6FIXTUREUSR6": [TAPE, NOTES, STAPLER, PEN, PAPER],
}
EXPECTED_FILTERING = {
    "unknown_item_interactions": 1,
    "unknown_item_ids": 1,
    "identical_duplicate_rows": 0,
    "repeated_pair_rows_dropped": 0,
    "kcore_rounds": 3,
    "users_dropped": 3,
    "items_dropped": 2,
    "interactions_dropped_by_kcore": 18,
}


def paths(year: int) -> tuple[Path, Path]:
    return FIXTURES / f"reviews_{year}.json", FIXTURES / f"meta_{year}.json"


def gzip_copy(src: Path, folder: Path) -> Path:
    dst = folder / f"{src.name}.gz"
    with open(src, "rb") as plain, gzip.open(dst, "wb") as packed:
        shutil.copyfileobj(plain, packed)
    return dst


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# --- parsing -------------------------------------------------------------------------------------------------


def test_2014_items_parsed_and_cleaned():
    raw = import_amazon(*paths(2014))
    assert list(raw.items) == ALL_ITEMS
    assert raw.items[PEN] == Item(
        PEN,
        "Pilot G2 Gel Pens, Black",
        {
            "brand": "Pilot",
            "categories": "Office Products > Office & School Supplies > Writing & Correction Supplies > "
            "Pens & Refills; Office Products",
            "description": "Smooth writing & bold lines. Refillable.",
        },
        "http://ecx.images-amazon.com/images/I/41pen001.jpg",
    )
    # Python-literal quoting: a title with double quotes, a description with an apostrophe.
    assert raw.items[PAPER].title == 'Copy Paper, 8.5" x 11", 500 Sheets'
    assert raw.items[PAPER].fields == {"categories": "Office Products > Paper", "description": "Bright white paper."}
    assert raw.items[STAPLER].fields["description"] == "It's sturdy."
    # HTML comment and <style> block removed.
    assert raw.items[TAPE].fields["description"] == "Clear tape. Writes on."
    # No brand / description / features in the record: the keys are absent, not empty.
    assert raw.items[FOLDERS].fields == {"categories": "Office Products > Filing"}
    assert all("features" not in item.fields for item in raw.items.values())


def test_2018_items_parsed_and_cleaned():
    raw = import_amazon(*paths(2018))
    assert list(raw.items) == ALL_ITEMS
    assert raw.items[PEN] == Item(
        PEN,
        "Pilot G2 Gel Pens, Black",
        {
            "brand": "Pilot",
            "categories": "Office Products > Office & School Supplies > Writing & Correction Supplies",
            "description": "Smooth writing. Refillable & retractable.",
            "features": "Retractable; Gel ink & comfort grip",
        },
        "https://images-na.ssl-images-amazon.com/images/I/pen001-hi.jpg",
    )
    # imageURLHighRes empty: falls back to imageURL.
    assert raw.items[PAPER].image == "https://images-na.ssl-images-amazon.com/images/I/pap002-lo.jpg"
    assert raw.items[STAPLER].fields == {
        "brand": "Swingline",
        "categories": "Office Products > Staplers",
        "features": "Metal",
    }
    assert raw.items[NOTES].image is None
    # Entity in the title, whitespace around the brand.
    assert raw.items[TAPE].title == "Scotch Magic Tape & Dispenser"
    assert raw.items[TAPE].fields["brand"] == "Scotch"


@pytest.mark.parametrize("year", YEARS)
def test_untitled_dropped_and_counted(year):
    raw = import_amazon(*paths(year))
    assert "B000UNTTLD" not in raw.items
    assert raw.notes == {"items_without_title": 1, "identical_duplicate_items": 1 if year == 2018 else 0}
    assert raw.name == f"amazon-reviews_{year}"
    assert raw.inputs == list(paths(year))


@pytest.mark.parametrize("year", YEARS)
def test_reviews_parsed_in_file_order(year):
    raw = import_amazon(*paths(year))
    assert len(raw.interactions) == 44
    # Review files are sorted by asin; the first line is U2 on the folders at 2014-01-01 + 25 days.
    assert raw.interactions[0] == ("A2FIXTUREUSR2", FOLDERS, 1388534400 + 25 * 86400)
    assert sum(row.item_id == "B000GHOST0" for row in raw.interactions) == 1
    assert len({row.user_id for row in raw.interactions}) == 8


def test_both_formats_give_the_same_interactions():
    assert import_amazon(*paths(2014)).interactions == import_amazon(*paths(2018)).interactions


@pytest.mark.parametrize("year", YEARS)
def test_gzip_equals_plain(year, tmp_path):
    reviews, meta = paths(year)
    plain = import_amazon(reviews, meta)
    packed = import_amazon(gzip_copy(reviews, tmp_path), gzip_copy(meta, tmp_path))
    assert packed.items == plain.items
    assert list(packed.items) == list(plain.items)
    assert packed.interactions == plain.interactions
    assert packed.notes == plain.notes
    assert packed.name == plain.name


def test_gzip_detected_by_content_and_mixed_with_plain(tmp_path):
    reviews, meta = paths(2014)
    disguised = tmp_path / "meta.json"  # gzip bytes under a plain name
    disguised.write_bytes(gzip.compress(meta.read_bytes()))
    assert import_amazon(reviews, disguised).items == import_amazon(reviews, meta).items


def test_mixed_2014_and_2018_metadata_lines(tmp_path):
    lines_2014 = paths(2014)[1].read_text(encoding="utf-8").splitlines()
    lines_2018 = paths(2018)[1].read_text(encoding="utf-8").splitlines()
    meta = write_lines(tmp_path / "meta.json", [lines_2014[0], lines_2018[1]])
    raw = import_amazon(paths(2014)[0], meta)
    assert list(raw.items) == [PEN, PAPER]
    assert raw.items[PEN].image == "http://ecx.images-amazon.com/images/I/41pen001.jpg"
    assert raw.items[PAPER].title == "Copy Paper, 500 Sheets"


def test_description_cut_at_2000_characters(tmp_path):
    record = {"asin": PEN, "title": "Pen", "description": "<p>" + "x" * 2500}
    meta = write_lines(tmp_path / "meta.json", [repr(record)])
    raw = import_amazon(paths(2014)[0], meta)
    assert raw.items[PEN].fields == {"description": "x" * 2000}


# --- prepare: 5-core and unknown items -----------------------------------------------------------------------


@pytest.mark.parametrize("year", YEARS)
@pytest.mark.parametrize("packed", [False, True], ids=["plain", "gz"])
def test_prepare_five_core_exact(year, packed, tmp_path):
    reviews, meta = paths(year)
    if packed:
        reviews, meta = gzip_copy(reviews, tmp_path), gzip_copy(meta, tmp_path)
    dataset = prepare(import_amazon(reviews, meta), tmp_path / "out", FIVE_CORE)
    assert dataset.meta["counts"] == {"users": 5, "items": 5, "interactions": 25}
    assert list(dataset.items) == [PEN, PAPER, STAPLER, NOTES, TAPE]
    assert dataset.sequences() == EXPECTED_SEQUENCES
    filtering = {key: value for key, value in dataset.meta["filtering"].items() if key not in ("notes", "config")}
    assert filtering == EXPECTED_FILTERING
    assert dataset.meta["import_notes"]["items_without_title"] == 1

    loaded = load_dataset(tmp_path / "out")
    assert loaded.sequences() == EXPECTED_SEQUENCES
    split = {user.user_id: user for user in loaded.load_split().users}
    assert split["A1FIXTUREUSR1"].train == (STAPLER, PEN, PAPER)
    assert (split["A1FIXTUREUSR1"].valid, split["A1FIXTUREUSR1"].test) == (TAPE, NOTES)


def test_prepare_default_config_keeps_catalog_and_drops_only_unknown(tmp_path):
    dataset = prepare(import_amazon(*paths(2014)), tmp_path / "out")
    # min_user 3, min_item 0: every user has >= 4 known reviews; the catalog (8 titled items) is kept whole.
    assert dataset.meta["counts"] == {"users": 8, "items": 8, "interactions": 43}
    assert dataset.meta["filtering"]["unknown_item_interactions"] == 1
    assert dataset.meta["filtering"]["kcore_rounds"] == 0


def test_unknown_asin_strict_raises(tmp_path):
    config = PrepareConfig(min_user_interactions=5, min_item_interactions=5, strict=True)
    with pytest.raises(DataError, match=r"1 interaction\(s\) refer to 1 item id\(s\) missing .*'B000GHOST0'"):
        prepare(import_amazon(*paths(2014)), tmp_path / "out", config)
    assert not (tmp_path / "out").exists()


# --- errors --------------------------------------------------------------------------------------------------


def test_meta_neither_json_nor_literal(tmp_path):
    lines = paths(2014)[1].read_text(encoding="utf-8").splitlines()
    meta = write_lines(tmp_path / "meta.json", [lines[0], "asin,title", lines[1]])
    with pytest.raises(DataError, match=re.escape(f"{meta}:2: neither JSON nor a Python dict literal")):
        import_amazon(paths(2014)[0], meta)


def test_reviews_not_json_names_line(tmp_path):
    lines = paths(2018)[0].read_text(encoding="utf-8").splitlines()
    reviews = write_lines(tmp_path / "reviews.json", [*lines[:3], '{"reviewerID": "A1", "asin": '])
    with pytest.raises(DataError, match=re.escape(f"{reviews}:4: neither JSON nor a Python dict literal")):
        import_amazon(reviews, paths(2018)[1])


def test_meta_line_not_an_object(tmp_path):
    meta = write_lines(tmp_path / "meta.json", ["['B000PEN001', 'Pen']"])
    with pytest.raises(DataError, match=re.escape(f"{meta}:1: expected one object per line, got list")):
        import_amazon(paths(2014)[0], meta)


def test_meta_without_asin(tmp_path):
    meta = write_lines(tmp_path / "meta.json", ["{'title': 'Pen'}"])
    with pytest.raises(DataError, match=re.escape(f"{meta}:1: metadata record has no 'asin' string")):
        import_amazon(paths(2014)[0], meta)


@pytest.mark.parametrize("year", YEARS)
def test_swapped_reviews_and_meta(year):
    reviews, meta = paths(year)
    expected = f"{reviews}: no item has a title; is this an Amazon metadata file?"
    with pytest.raises(DataError, match=re.escape(expected)):
        import_amazon(meta, reviews)


@pytest.mark.parametrize("year", YEARS)
def test_meta_given_as_reviews(year):
    _, meta = paths(year)
    expected = re.escape(f"{meta}:1: review lacks ['reviewerID', 'unixReviewTime']") + r".*Did you swap"
    with pytest.raises(DataError, match=expected):
        import_amazon(meta, meta)


def test_review_with_bad_time(tmp_path):
    line = '{"reviewerID": "A1", "asin": "B000PEN001", "unixReviewTime": "yesterday"}'
    reviews = write_lines(tmp_path / "reviews.json", [line])
    with pytest.raises(DataError, match=re.escape(f"{reviews}:1: unixReviewTime 'yesterday' is not an integer")):
        import_amazon(reviews, paths(2014)[1])


def test_duplicate_asin_with_different_title_names_both_lines(tmp_path):
    lines = paths(2018)[1].read_text(encoding="utf-8").splitlines()
    changed = lines[0].replace('"title": "Pilot G2 Gel Pens, Black"', '"title": "Pilot G2 Gel Pens, Blue"')
    assert changed != lines[0]
    meta = write_lines(tmp_path / "meta.json", [*lines, changed])
    expected = f"{meta}:{len(lines) + 1}: item 'B000PEN001' appears again with different content than at {meta}:1"
    titles = "'Pilot G2 Gel Pens, Black' vs 'Pilot G2 Gel Pens, Blue'"
    with pytest.raises(DataError, match=re.escape(expected) + ".*" + re.escape(titles)):
        import_amazon(paths(2018)[0], meta)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "meta.json"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{empty} is empty")):
        import_amazon(paths(2014)[0], empty)
    with pytest.raises(DataError, match="does not exist"):
        import_amazon(tmp_path / "nope.json", paths(2014)[1])


def test_unhashable_literal_key_is_a_data_error(tmp_path):
    meta = write_lines(tmp_path / "meta.json", ["{['asin']: 'B000PEN001'}"])
    with pytest.raises(DataError, match=re.escape(f"{meta}:1:")):
        import_amazon(paths(2014)[0], meta)


# --- command line --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("year", YEARS)
def test_cli_prepare_amazon(year, tmp_path, capsys):
    reviews, meta = paths(year)
    out = tmp_path / "out"
    # No --min-user / --min-item: the amazon subcommand defaults to the 5-core.
    assert main(["data", "prepare", "amazon", "--reviews", str(reviews), "--meta", str(meta), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    dataset = load_dataset(out)
    assert dataset.name == f"amazon-reviews_{year}"
    assert dataset.meta["counts"] == {"users": 5, "items": 5, "interactions": 25}
    assert dataset.sequences() == EXPECTED_SEQUENCES
    assert dataset.meta["filtering"]["config"]["min_user_interactions"] == 5
    assert dataset.meta["filtering"]["config"]["min_item_interactions"] == 5


def test_cli_swapped_files_exit_2(tmp_path, capsys):
    reviews, meta = paths(2014)
    out = tmp_path / "out"
    code = main(["data", "prepare", "amazon", "--reviews", str(meta), "--meta", str(reviews), "--out", str(out)])
    assert code == 2
    assert "error:" in capsys.readouterr().err
    assert not out.exists()
