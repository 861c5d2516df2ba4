"""`llmrec.sid`: SID <-> token strings, and the `sid_index.json` artifact (save/load round trip, every load error)."""

from __future__ import annotations

import json

import pytest

from llmrec.data.io import DataError
from llmrec.sid import (
    INDEX_FORMAT_VERSION,
    SemanticIdIndex,
    check_covers_catalog,
    load_index,
    save_index,
    validate_codes,
)


def make_index() -> SemanticIdIndex:
    """4 items over a (8, 4, 6) codebook, ids deliberately not sorted so that order is checked."""
    return SemanticIdIndex(
        items={"z9": (7, 3, 5), "a1": (0, 0, 0), "m5": (7, 3, 4), "b2": (1, 2, 3)},
        codebook_sizes=(8, 4, 6),
        catalog_sha256="0" * 64,
        source={"dataset": "tiny", "quantizer": {"method": "rqkmeans", "hidden_dims": [32, 16]}, "seed": 42},
        stats={"collision_rate_before": 0.25, "collision_rate_after": 0.0, "usage": [0.25, 0.5, 0.5]},
    )


def write_payload(path, **changes) -> None:
    """A valid 2-level payload (sizes 4, 4; items a, b, c), with top-level keys replaced or (value None) removed."""
    payload = {
        "format_version": INDEX_FORMAT_VERSION,
        "num_levels": 2,
        "codebook_sizes": [4, 4],
        "level_names": ["a", "b"],
        "token_template": "<{level}_{code}>",
        "catalog_sha256": "",
        "source": {},
        "stats": {},
        "items": {"a": [0, 1], "b": [1, 2], "c": [3, 3]},
    }
    for key, value in changes.items():
        if value is None:
            del payload[key]
        else:
            payload[key] = value
    path.write_text(json.dumps(payload), encoding="utf-8")


# --- token strings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sid", [(0, 0, 0), (12, 3, 200), (255, 255, 255), (7, 0, 31)])
def test_format_parse_round_trip(sid):
    index = SemanticIdIndex({}, (256, 256, 256))
    text = index.format(sid)
    assert text == "".join(f"<{name}_{code}>" for name, code in zip("abc", sid, strict=True))
    assert index.parse(text) == sid
    assert index.sid_tokens(sid) == [f"<{name}_{code}>" for name, code in zip("abc", sid, strict=True)]


@pytest.mark.parametrize("text", ["<a_1>", "<a_1><b_2><c_3>", "<b_1><a_2>", "<a_1><c_2>"])
def test_parse_rejects_wrong_level_count_or_order(text):
    with pytest.raises(ValueError, match=r"is not a 2-level SID like '<a_0><b_0>'"):
        SemanticIdIndex({}, (16, 4)).parse(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<a_16><b_0>", r"code 16 at level 0 is outside 0\.\.15"),
        ("<a_3><b_4>", r"code 4 at level 1 is outside 0\.\.3"),
    ],
)
def test_parse_rejects_code_out_of_range(text, message):
    with pytest.raises(ValueError, match=message):
        SemanticIdIndex({}, (16, 4)).parse(text)


@pytest.mark.parametrize("text", ["", "hello", "<a_x><b_1>", "<a_-1><b_2>", "<a_1 ><b_2>", "<a_1><b_2>junk", "a_1b_2"])
def test_parse_rejects_garbage(text):
    with pytest.raises(ValueError, match="is not a 2-level SID"):
        SemanticIdIndex({}, (16, 4)).parse(text)


@pytest.mark.parametrize("text", ["<a_\u0663><b_1>", "<a_01><b_3>"])
def test_parse_rejects_text_that_format_never_writes(text):
    with pytest.raises(ValueError):
        SemanticIdIndex({}, (16, 4)).parse(text)


def test_custom_template_and_level_names():
    index = SemanticIdIndex({}, (10, 10), level_names=("x", "yy"), token_template="[{level}.{code}]")
    assert index.token(1, 3) == "[yy.3]"
    assert index.format((4, 9)) == "[x.4][yy.9]"
    assert index.parse("[x.4][yy.9]") == (4, 9)  # the template's "[" and "." are literal, not regex
    with pytest.raises(ValueError, match="is not a 2-level SID"):
        index.parse("[x-4][yy.9]")


def test_default_level_names_and_their_limits():
    assert SemanticIdIndex({}, (4,) * 3).level_names == ("a", "b", "c")
    assert SemanticIdIndex({}, (4,) * 8).level_names[-1] == "h"
    with pytest.raises(ValueError, match="9 levels need explicit level_names"):
        SemanticIdIndex({}, (4,) * 9)
    with pytest.raises(ValueError, match="1 level_names for 2 levels"):
        SemanticIdIndex({}, (4, 4), level_names=("a",))


def test_all_tokens_level_by_level():
    index = SemanticIdIndex({}, (3, 5, 2))
    tokens = index.all_tokens()
    assert len(tokens) == 3 + 5 + 2
    assert len(set(tokens)) == len(tokens)
    assert tokens[:4] == ["<a_0>", "<a_1>", "<a_2>", "<b_0>"]
    assert tokens[-1] == "<c_1>"


def test_item_of_inverts_items():
    index = make_index()
    assert index.item_of() == {sid: item_id for item_id, sid in index.items.items()}
    assert index.item_of()[(7, 3, 4)] == "m5"


def test_sids_checksum_covers_the_sids_and_tokens_but_not_build_diagnostics():
    index = make_index()
    same_sids = SemanticIdIndex(
        dict(index.items), index.codebook_sizes, source={"other": 1}, stats={"total_seconds": 99.0}
    )
    assert same_sids.sids_sha256() == index.sids_sha256()
    moved = dict(index.items)
    moved["z9"] = (0, 0, 0)
    assert SemanticIdIndex(moved, index.codebook_sizes).sids_sha256() != index.sids_sha256()
    renamed = SemanticIdIndex(dict(index.items), index.codebook_sizes, level_names=("x", "y", "z"))
    assert renamed.sids_sha256() != index.sids_sha256()


# --- save / load -----------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    index = make_index()
    path = tmp_path / "sid_index.json"
    save_index(index, path)
    loaded = load_index(path, ["a1", "b2", "m5", "z9"])
    assert loaded == index
    assert list(loaded.items) == ["z9", "a1", "m5", "b2"]  # catalog order, not sorted
    assert loaded.codebook_sizes == (8, 4, 6)
    assert loaded.level_names == ("a", "b", "c")
    assert loaded.source == index.source and loaded.stats == index.stats
    assert all(type(code) is int for sid in loaded.items.values() for code in sid)
    payload = json.loads(path.read_text(encoding="utf-8"))
    assert payload["format_version"] == INDEX_FORMAT_VERSION and payload["num_levels"] == 3
    assert payload["items"]["z9"] == [7, 3, 5]


def test_save_index_refuses_duplicate_sids(tmp_path):
    index = make_index()
    index.items["dup"] = (1, 2, 3)
    path = tmp_path / "sid_index.json"
    with pytest.raises(DataError, match=r"items 'b2' and 'dup' share the SID \[1, 2, 3\]"):
        save_index(index, path)
    assert not path.exists()


def test_load_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"not found; build it with `llmrec index build --dataset DIR"):
        load_index(tmp_path / "nope.json")


def test_load_invalid_json(tmp_path):
    path = tmp_path / "sid_index.json"
    path.write_text('{"format_version": 1,\n  "items": {', encoding="utf-8")
    with pytest.raises(DataError, match=r"sid_index\.json:2: not valid JSON"):
        load_index(path)


def test_load_json_that_is_not_an_object(tmp_path):
    path = tmp_path / "sid_index.json"
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(DataError, match="sid_index.json"):
        load_index(path)


@pytest.mark.parametrize("version", [2, 0, "1"])
def test_load_wrong_format_version(tmp_path, version):
    path = tmp_path / "sid_index.json"
    write_payload(path, format_version=version)
    with pytest.raises(DataError, match=rf"format_version {version!r}, this llmrec reads 1; rebuild the index"):
        load_index(path)


def test_load_without_format_version(tmp_path):
    path = tmp_path / "sid_index.json"
    write_payload(path, format_version=None)
    with pytest.raises(DataError, match="format_version None"):
        load_index(path)


@pytest.mark.parametrize("key", ["codebook_sizes", "items", "token_template", "level_names"])
def test_load_missing_key(tmp_path, key):
    path = tmp_path / "sid_index.json"
    write_payload(path, **{key: None})
    with pytest.raises(DataError, match=f"missing key '{key}'; the file is not a complete sid_index.json"):
        load_index(path)


@pytest.mark.parametrize("sizes", [[], [4, 0], [4, "4"], [4, 2.5]])
def test_load_bad_codebook_sizes(tmp_path, sizes):
    path = tmp_path / "sid_index.json"
    write_payload(path, codebook_sizes=sizes)
    with pytest.raises(DataError, match="codebook_sizes .* must be a non-empty list of positive integers"):
        load_index(path)


@pytest.mark.parametrize("items", [{}, [["a", [0, 1]]]])
def test_load_items_not_a_non_empty_object(tmp_path, items):
    path = tmp_path / "sid_index.json"
    write_payload(path, items=items)
    with pytest.raises(DataError, match="'items' must be a non-empty object"):
        load_index(path)


def test_load_duplicate_sid_names_both_items(tmp_path):
    path = tmp_path / "sid_index.json"
    write_payload(path, items={"first": [1, 2], "other": [0, 0], "second": [1, 2]})
    with pytest.raises(DataError, match=r"items 'first' and 'second' share the SID \[1, 2\]; SIDs must be unique"):
        load_index(path)


@pytest.mark.parametrize(
    ("codes", "message"),
    [([0, 4], r"code 4 at level 1 is outside 0\.\.3"), ([-1, 0], r"code -1 at level 0 is outside 0\.\.3")],
)
def test_load_code_out_of_range(tmp_path, codes, message):
    path = tmp_path / "sid_index.json"
    write_payload(path, items={"a": [0, 1], "bad": codes})
    with pytest.raises(DataError, match=rf"item 'bad' {message}"):
        load_index(path)


@pytest.mark.parametrize("codes", [[0, 1, 2], [3]])
def test_load_wrong_code_count(tmp_path, codes):
    path = tmp_path / "sid_index.json"
    write_payload(path, items={"a": [0, 1], "bad": codes})
    with pytest.raises(DataError, match=rf"item 'bad' has {len(codes)} codes, the index has 2 levels"):
        load_index(path)


@pytest.mark.parametrize(("code", "shown"), [(1.5, "1.5"), ("3", "'3'"), (True, "True"), (None, "None")])
def test_load_non_integer_code(tmp_path, code, shown):
    path = tmp_path / "sid_index.json"
    write_payload(path, items={"a": [0, 1], "bad": [1, code]})
    with pytest.raises(DataError, match=rf"item 'bad' code {shown} at level 1"):
        load_index(path)


@pytest.mark.parametrize("codes", ["12", 3, {"a": 1}])
def test_load_codes_not_a_list(tmp_path, codes):
    path = tmp_path / "sid_index.json"
    write_payload(path, items={"a": [0, 1], "bad": codes})
    with pytest.raises(DataError, match="item 'bad' codes .* must be a list of integers"):
        load_index(path)


def test_load_level_names_of_wrong_length(tmp_path):
    path = tmp_path / "sid_index.json"
    write_payload(path, level_names=["a"])
    with pytest.raises(DataError, match="sid_index.json"):
        load_index(path)


def test_load_checks_catalog_coverage(tmp_path):
    path = tmp_path / "sid_index.json"
    write_payload(path)
    assert set(load_index(path, ["c", "b", "a"]).items) == {"a", "b", "c"}
    with pytest.raises(DataError, match=r"1 catalog item\(s\) have no SID \(e\.g\. \['d'\]\).*`llmrec index add`"):
        load_index(path, ["a", "b", "c", "d"])
    with pytest.raises(DataError, match=r"2 indexed item\(s\) are not in the catalog.*belongs to another dataset"):
        load_index(path, ["a"])


def test_validate_codes_and_check_covers_catalog_directly():
    validate_codes({"a": (0, 1), "b": (1, 0)}, (2, 2), "here")
    with pytest.raises(DataError, match="^here: items 'a' and 'b' share"):
        validate_codes({"a": (0, 1), "b": (0, 1)}, (2, 2), "here")
    index = SemanticIdIndex({"a": (0, 1), "b": (1, 0)}, (2, 2))
    check_covers_catalog(index, iter(["b", "a"]), "here")
    with pytest.raises(DataError, match="^here: 1 catalog item"):
        check_covers_catalog(index, ["a", "b", "c"], "here")
