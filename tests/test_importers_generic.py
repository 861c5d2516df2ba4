"""Generic table importer (CSV / TSV / JSON lines with a column mapping) and the amazon-office layout."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from pathlib import Path

import pytest

from llmrec.cli import main
from llmrec.data import load_dataset, prepare
from llmrec.data.importers import import_amazon_office, import_table
from llmrec.data.importers.generic import parse_timestamp
from llmrec.data.io import DataError
from llmrec.schemas import Interaction, Item

AMAZON_OFFICE = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon-office"

COLUMNS = {"user_id": "uid", "item_id": "iid", "timestamp": "when", "title": "name", "image": "pic"}
ITEM_ROWS = [
    {"iid": "i1", "name": "Alpha", "maker": "Acme", "genre": "Drama", "pic": "a.jpg"},
    {"iid": "i2", "name": "Beta", "maker": "Bolt", "genre": "Comedy", "pic": ""},
    {"iid": "i3", "name": "Gamma", "maker": "", "genre": "Drama", "pic": ""},
]
EVENT_ROWS = [
    {"uid": "u1", "iid": "i2", "when": "2020-01-03"},
    {"uid": "u1", "iid": "i1", "when": "2020-01-01"},
    {"uid": "u2", "iid": "i3", "when": "2020-01-02T12:00:00+02:00"},
    {"uid": "u1", "iid": "i3", "when": "2020-01-02"},
    {"uid": "u2", "iid": "i1", "when": "2020-01-01T00:00:00"},
    {"uid": "u2", "iid": "i2", "when": "1577836800.5"},
]
DAY = 86400
JAN1 = 1577836800  # 2020-01-01T00:00:00Z
EXPECTED_EVENTS = [
    Interaction("u1", "i2", JAN1 + 2 * DAY),
    Interaction("u1", "i1", JAN1),
    Interaction("u2", "i3", JAN1 + DAY + 10 * 3600),  # 12:00 at +02:00 is 10:00 UTC
    Interaction("u1", "i3", JAN1 + DAY),
    Interaction("u2", "i1", JAN1),
    Interaction("u2", "i2", JAN1),  # float truncated
]
EXPECTED_ITEMS = {
    "i1": Item("i1", "Alpha", {"maker": "Acme", "genre": "Drama"}, "a.jpg"),
    "i2": Item("i2", "Beta", {"maker": "Bolt", "genre": "Comedy"}, None),
    "i3": Item("i3", "Gamma", {"genre": "Drama"}, None),
}


def write_table(path: Path, rows: list[dict], header: list[str] | None = None) -> Path:
    """Write `rows` as CSV, TSV or JSON lines according to the suffix (ignoring `.gz`, which is compressed)."""
    kind = [suffix for suffix in path.suffixes if suffix != ".gz"][-1]
    if kind == ".jsonl":
        text = "".join(json.dumps(row) + "\n" for row in rows)
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter="\t" if kind == ".tsv" else ",", lineterminator="\n")
        writer.writerow(header or list(rows[0]))
        writer.writerows([list(row.values()) for row in rows])
        text = buffer.getvalue()
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- formats -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".csv.gz", ".jsonl.gz"])
def test_import_table_formats(suffix, tmp_path):
    events = write_table(tmp_path / f"events{suffix}", EVENT_ROWS)
    items = write_table(tmp_path / f"items{suffix}", ITEM_ROWS)
    raw = import_table(events, items, columns=COLUMNS)
    assert raw.items == EXPECTED_ITEMS
    assert list(raw.items) == ["i1", "i2", "i3"]
    assert raw.interactions == EXPECTED_EVENTS
    assert raw.notes == {"identical_duplicate_items": 0, "timestamp": "column"}
    assert raw.name == tmp_path.name
    assert raw.inputs == [events, items]


def test_import_table_prepare_orders_by_time_ties_in_file_order(tmp_path):
    events = write_table(tmp_path / "events.csv", EVENT_ROWS)
    items = write_table(tmp_path / "items.csv", ITEM_ROWS)
    dataset = prepare(import_table(events, items, columns=COLUMNS, name="toy"), tmp_path / "out")
    # u2: i1 and i2 share the timestamp JAN1; i1 comes first in the file.
    assert dataset.sequences() == {"u1": ["i1", "i3", "i2"], "u2": ["i1", "i2", "i3"]}
    assert dataset.meta["counts"] == {"users": 2, "items": 3, "interactions": 6}
    assert dataset.name == "toy"


def test_missing_timestamp_column_uses_row_order(tmp_path):
    events = write_table(tmp_path / "events.csv", [{"uid": r["uid"], "iid": r["iid"]} for r in EVENT_ROWS])
    items = write_table(tmp_path / "items.csv", ITEM_ROWS)
    raw = import_table(events, items, columns={k: v for k, v in COLUMNS.items() if k != "timestamp"})
    assert raw.notes["timestamp"] == "row order"
    assert [row.timestamp for row in raw.interactions] == [0, 1, 2, 3, 4, 5]
    dataset = prepare(raw, tmp_path / "out")
    assert dataset.sequences() == {"u1": ["i2", "i1", "i3"], "u2": ["i3", "i1", "i2"]}


def test_text_fields_selection(tmp_path):
    events = write_table(tmp_path / "events.csv", EVENT_ROWS)
    items = write_table(tmp_path / "items.csv", ITEM_ROWS)
    raw = import_table(events, items, columns=COLUMNS, text_fields=["genre"])
    assert {item_id: item.fields for item_id, item in raw.items.items()} == {
        "i1": {"genre": "Drama"},
        "i2": {"genre": "Comedy"},
        "i3": {"genre": "Drama"},
    }
    # A text field can be mapped to another column name, like the fixed keys.
    raw = import_table(events, items, columns={**COLUMNS, "brand": "maker"}, text_fields=["brand", "genre"])
    assert raw.items["i1"].fields == {"brand": "Acme", "genre": "Drama"}
    assert raw.items["i3"].fields == {"genre": "Drama"}


def test_unmapped_names_are_looked_up_as_themselves(tmp_path):
    events = write_text(tmp_path / "events.csv", "user_id,item_id,timestamp\nu1,a,3\nu1,b,1\n")
    items = write_text(tmp_path / "items.csv", "item_id,title,year\na,A,1999\nb,B,2001\n")
    raw = import_table(events, items)
    assert raw.interactions == [Interaction("u1", "a", 3), Interaction("u1", "b", 1)]
    assert raw.items["a"] == Item("a", "A", {"year": "1999"})


def test_clean_html_only_when_asked(tmp_path):
    events = write_text(tmp_path / "events.csv", "user_id,item_id\nu1,a\n")
    items = write_text(tmp_path / "items.csv", 'item_id,title,note\na,Fish &amp; Chips,"<b>hot</b>  food"\n')
    assert import_table(events, items).items["a"] == Item("a", "Fish &amp; Chips", {"note": "<b>hot</b>  food"})
    cleaned = import_table(events, items, clean_html=True).items["a"]
    assert cleaned == Item("a", "Fish & Chips", {"note": "hot food"})


# --- errors --------------------------------------------------------------------------------------------------


def test_missing_mapped_column_suggests_columns(tmp_path):
    events = write_table(tmp_path / "events.csv", EVENT_ROWS)
    items = write_table(tmp_path / "items.csv", ITEM_ROWS)
    with pytest.raises(
        DataError, match=r"missing column\(s\) user_id \(column 'user'\).*--columns user_id=<your column>"
    ):
        import_table(events, items, columns={**COLUMNS, "user_id": "user"})
    with pytest.raises(DataError, match=re.escape(f"{items}: missing column(s) title (column 'title')")):
        import_table(events, items, columns={k: v for k, v in COLUMNS.items() if k != "title"})


def test_unknown_mapping_key_is_rejected(tmp_path):
    events = write_table(tmp_path / "events.csv", EVENT_ROWS)
    items = write_table(tmp_path / "items.csv", ITEM_ROWS)
    with pytest.raises(ValueError, match=r"unknown llmrec name\(s\) \['rating'\]"):
        import_table(events, items, columns={**COLUMNS, "rating": "stars"})


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_non_utf8_names_file_and_line(suffix, tmp_path):
    events = write_table(tmp_path / "events.csv", EVENT_ROWS)
    first = b'{"iid": "i1", "name": "Alpha"}\n' if suffix == ".jsonl" else b"iid,name\ni1,Alpha\n"
    bad = b'{"iid": "i2", "name": "caf\xe9"}\n' if suffix == ".jsonl" else b"i2,caf\xe9\n"
    items = tmp_path / f"items{suffix}"
    items.write_bytes(first + bad)
    line = 2 if suffix == ".jsonl" else 3
    byte = bad.index(b"\xe9") + 1
    # The message quotes the bad byte and the 3 after it, then names the encoding.
    expected = re.escape(f"{items}:{line}: byte {byte} (b'\\xe9") + r".*\) is not valid utf-8"
    with pytest.raises(DataError, match=expected):
        import_table(events, items, columns=COLUMNS)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_empty_file(suffix, tmp_path):
    events = write_table(tmp_path / "events.csv", EVENT_ROWS)
    items = write_text(tmp_path / f"items{suffix}", "")
    with pytest.raises(DataError, match=re.escape(f"{items} is empty")):
        import_table(events, items, columns=COLUMNS)


def test_header_only_file(tmp_path):
    events = write_text(tmp_path / "events.csv", "uid,iid,when\n")
    items = write_table(tmp_path / "items.csv", ITEM_ROWS)
    with pytest.raises(DataError, match=re.escape(f"{events} has a header but no rows")):
        import_table(events, items, columns=COLUMNS)
    items = write_text(tmp_path / "items.tsv", "iid\tname\n")
    with pytest.raises(DataError, match=re.escape(f"{items} has a header but no rows")):
        import_table(events, items, columns=COLUMNS)


def test_empty_title_names_line(tmp_path):
    events = write_table(tmp_path / "events.csv", EVENT_ROWS)
    items = write_text(tmp_path / "items.csv", "iid,name\ni1,Alpha\ni2,\ni3,Gamma\n")
    with pytest.raises(
        DataError, match=re.escape(f"{items}:3: item needs a non-empty item_id and title, got 'i2' / ''")
    ):
        import_table(events, items, columns=COLUMNS)


def test_empty_user_id_names_line(tmp_path):
    events = write_text(tmp_path / "events.csv", "uid,iid,when\nu1,i1,1\n ,i2,2\n")
    items = write_table(tmp_path / "items.csv", ITEM_ROWS)
    with pytest.raises(DataError, match=re.escape(f"{events}:3: empty user_id or item_id")):
        import_table(events, items, columns=COLUMNS)


def test_bad_timestamp_names_line(tmp_path):
    events = write_text(tmp_path / "events.csv", "uid,iid,when\nu1,i1,2020-01-01\nu1,i2,last week\n")
    items = write_table(tmp_path / "items.csv", ITEM_ROWS)
    with pytest.raises(DataError, match=re.escape(f"{events}:3: timestamp 'last week' is neither a number nor")):
        import_table(events, items, columns=COLUMNS)


def test_too_many_values_names_line(tmp_path):
    events = write_table(tmp_path / "events.csv", EVENT_ROWS)
    items = write_text(tmp_path / "items.csv", "iid,name\ni1,Alpha\ni2,Beta,extra\n")
    with pytest.raises(DataError, match=re.escape(f"{items}:3: more values than header columns ['iid', 'name']")):
        import_table(events, items, columns=COLUMNS)


def test_invalid_json_line_and_unknown_suffix(tmp_path):
    events = write_table(tmp_path / "events.csv", EVENT_ROWS)
    items = write_text(tmp_path / "items.jsonl", '{"iid": "i1", "name": "Alpha"}\n{"iid": "i2", "name": \n')
    with pytest.raises(DataError, match=re.escape(f"{items}:2: not valid JSON")):
        import_table(events, items, columns=COLUMNS)
    items = write_text(tmp_path / "items.xlsx", "iid,name\ni1,Alpha\n")
    with pytest.raises(DataError, match=re.escape(f"{items}: unknown table format '.xlsx'")):
        import_table(events, items, columns=COLUMNS)


def test_duplicate_item_with_different_text(tmp_path):
    events = write_table(tmp_path / "events.csv", EVENT_ROWS)
    items = write_text(tmp_path / "items.csv", "iid,name,genre\ni1,Alpha,Drama\ni2,Beta,Comedy\ni1,Alpha,Horror\n")
    expected = f"{items}:4: item 'i1' appears again with different content than at {items}:2"
    with pytest.raises(DataError, match=re.escape(expected)):
        import_table(events, items, columns=COLUMNS)


def test_duplicate_identical_item_collapses(tmp_path):
    events = write_table(tmp_path / "events.csv", EVENT_ROWS)
    items = write_text(
        tmp_path / "items.csv", "iid,name,genre\ni1,Alpha,Drama\ni2,Beta,Comedy\ni1,Alpha,Drama\ni3,Gamma,Drama\n"
    )
    raw = import_table(events, items, columns=COLUMNS)
    assert list(raw.items) == ["i1", "i2", "i3"]
    assert raw.items["i1"] == Item("i1", "Alpha", {"genre": "Drama"})
    assert raw.notes["identical_duplicate_items"] == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1577836800, 1577836800),
        (1577836800.9, 1577836800),
        ("1577836800", 1577836800),
        (" 42 ", 42),
        ("2020-01-01", JAN1),
        ("2020-01-01T01:00:00", JAN1 + 3600),
        ("2020-01-01T01:00:00-01:00", JAN1 + 7200),
    ],
)
def test_parse_timestamp(value, expected):
    assert parse_timestamp(value, "f:1") == expected


def test_parse_timestamp_rejects_bool_and_text():
    with pytest.raises(DataError, match=re.escape("f:7: timestamp 'True' is neither")):
        parse_timestamp(True, "f:7")
    with pytest.raises(DataError, match=re.escape("f:7: timestamp '' is neither")):
        parse_timestamp("", "f:7")


# --- library bugs (documented, expected to fail until fixed) -------------------------------------------------


def test_jsonl_integer_zero_ids(tmp_path):
    events = write_text(tmp_path / "events.jsonl", '{"user_id": 0, "item_id": 0, "timestamp": 5}\n')
    items = write_text(tmp_path / "items.jsonl", '{"item_id": 0, "title": "Zero"}\n')
    raw = import_table(events, items)
    assert raw.items == {"0": Item("0", "Zero")}
    assert raw.interactions == [Interaction("0", "0", 5)]


def test_jsonl_row_without_timestamp_is_a_data_error(tmp_path):
    events = write_text(
        tmp_path / "events.jsonl",
        '{"user_id": "u1", "item_id": "a", "ts": 1}\n{"user_id": "u1", "item_id": "a"}\n',
    )
    items = write_text(tmp_path / "items.jsonl", '{"item_id": "a", "title": "A"}\n')
    with pytest.raises(DataError, match=re.escape(f"{events}:2:")):
        import_table(events, items, columns={"timestamp": "ts"})


@pytest.mark.parametrize("value", ["inf", "1e400"])
def test_parse_timestamp_infinite_is_a_data_error(value):
    with pytest.raises(DataError, match="f:3"):
        parse_timestamp(value, "f:3")


def test_csv_with_utf8_bom(tmp_path):
    events = write_text(tmp_path / "events.csv", "user_id,item_id,timestamp\nu1,a,1\n")
    items = tmp_path / "items.csv"
    items.write_bytes(b"\xef\xbb\xbfitem_id,title\na,A\n")
    assert import_table(events, items).items == {"a": Item("a", "A")}


# --- amazon-office layout ------------------------------------------------------------------------------------


def make_office_folder(folder: Path) -> Path:
    folder.mkdir()
    items = [
        {"item_id": "0", "title": "Pen &amp; Pencil Set", "brand": "Acme", "categories": "",
         "description": "<b>Nice</b> set. <!-- .x {color:red} -->"},
        {"item_id": "1", "title": "Stapler", "brand": "", "categories": "Office > Staplers", "description": " "},
        {"item_id": "2", "title": "Tape", "brand": "Scotch", "categories": "", "description": "Clear."},
        {"item_id": "3", "title": "Notes", "brand": "Post-it", "categories": "", "description": ""},
    ]  # fmt: skip
    write_table(folder / "items.jsonl", items)
    # Shuffled rows; positions compare as numbers (string order would put "10" before "9").
    write_text(
        folder / "interactions.csv",
        "user_id,item_id,position\nB,1,2\nA,1,10\nA,0,0\nB,3,0\nA,3,11\nB,0,1\nA,2,9\n",
    )
    return folder


def test_import_amazon_office_tiny(tmp_path):
    raw = import_amazon_office(make_office_folder(tmp_path / "office"))
    assert raw.name == "amazon-office"
    assert raw.source.startswith("amazon-office")
    assert raw.items == {
        "0": Item("0", "Pen & Pencil Set", {"brand": "Acme", "description": "Nice set."}),
        "1": Item("1", "Stapler", {"categories": "Office > Staplers"}),
        "2": Item("2", "Tape", {"brand": "Scotch", "description": "Clear."}),
        "3": Item("3", "Notes", {"brand": "Post-it"}),
    }
    assert raw.interactions[:2] == [Interaction("B", "1", 2), Interaction("A", "1", 10)]
    dataset = prepare(raw, tmp_path / "out")
    assert dataset.sequences() == {"B": ["3", "0", "1"], "A": ["0", "2", "1", "3"]}
    assert dataset.meta["counts"] == {"users": 2, "items": 4, "interactions": 7}
    split = {user.user_id: user for user in load_dataset(tmp_path / "out").load_split().users}
    assert (split["A"].train, split["A"].valid, split["A"].test) == (("0", "2"), "1", "3")


def test_cli_prepare_csv(tmp_path, capsys):
    events = write_table(tmp_path / "events.tsv", EVENT_ROWS)
    items = write_table(tmp_path / "items.tsv", ITEM_ROWS)
    out = tmp_path / "out"
    argv = ["data", "prepare", "csv", "--interactions", str(events), "--items", str(items)]
    argv += [
        "--columns",
        ",".join(f"{k}={v}" for k, v in COLUMNS.items()),
        "--text-fields",
        "genre",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    dataset = load_dataset(out)
    assert dataset.items["i1"] == Item("i1", "Alpha", {"genre": "Drama"}, "a.jpg")
    assert dataset.sequences() == {"u1": ["i1", "i3", "i2"], "u2": ["i1", "i2", "i3"]}


# --- the real amazon-office folder ---------------------------------------------------------------------------


@pytest.fixture
def office_folder() -> Path:
    if not (AMAZON_OFFICE / "items.jsonl").is_file():
        pytest.skip(f"amazon-office data not found at {AMAZON_OFFICE}")
    return AMAZON_OFFICE


@pytest.mark.integration
def test_amazon_office_real(office_folder, tmp_path):
    dataset = prepare(import_amazon_office(office_folder), tmp_path / "out")
    assert dataset.meta["counts"] == {"users": 3231, "items": 3459, "interactions": 22447}
    assert dataset.meta["filtering"]["unknown_item_interactions"] == 0
    assert dataset.meta["filtering"]["users_dropped"] == 0
    # HTML comments/styles in descriptions are gone.
    assert not any("<!--" in item.fields.get("description", "") for item in dataset.items.values())


@pytest.mark.integration
def test_amazon_office_real_cli(office_folder, tmp_path):
    out = tmp_path / "out"
    assert main(["data", "prepare", "amazon-office", "--path", str(office_folder), "--out", str(out)]) == 0
    dataset = load_dataset(out)
    assert dataset.name == "amazon-office"
    assert dataset.meta["counts"] == {"users": 3231, "items": 3459, "interactions": 22447}
