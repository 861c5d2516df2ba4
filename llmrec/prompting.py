"""Render `prompts/*.yaml` templates into TRL prompt-completion rows for the alignment tasks.

Rows are `{"prompt", "completion", "task", "user_id", "target_item_id"}`; `prompt` is a list of chat messages
(system + user) and `completion` an assistant message for instruct models (`chat=True`), or plain strings for base
models. Sources, so that no evaluation target is ever a training target:

- `seqrec`, `fusion`: sliding windows over each user's *training* sequence (target = training item t, history =
  the `max_history` items before it); validation/test rows come from the split's validation/test examples.
- `sequence`: runs of up to `max_history + 1` consecutive *training* items as one completion (the loss on
  every SID trains next-item prediction at every position at once); validation/test rows are the history plus
  the target. With `sequence_context = c > 0` the first `c` items of each run (after a user's first run) move into
  the prompt as context without loss, so every trained position sees at least `c` earlier items, closer to
  inference, where the history is always whole. With `sequence_shifts = n > 1` every user's sequence is cut `n`
  times, each cut moved a further `1/n` of a run from the end (`shifted_sequence_windows`), so an item is trained
  at `n` different positions of its run: `n` times the distinct rows for the same training steps, instead of
  repeating one cut every epoch.
- `item2sid`, `sid2item`, `search`: one row per catalog item (item knowledge, not user behaviour).

`eval_task` (`seqrec` or `sequence`) is the task of the validation/test rows, and the prompt the recommender
uses at inference.

`build_prompt_datasets` writes `train.jsonl`, `valid.jsonl`, `test.jsonl` and `prompts.json` (config, counts,
checksums of the dataset, index and templates).
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from llmrec.data.dataset import Dataset
from llmrec.data.io import DataError, atomic_dir, sha256_file
from llmrec.data.split import Example
from llmrec.schemas import Item
from llmrec.sid import SemanticIdIndex

logger = logging.getLogger(__name__)

PROMPTS_DIR = Path(__file__).resolve().parents[1] / "prompts"
TASKS = ("seqrec", "item2sid", "sid2item", "fusion", "search", "sequence")
EVAL_TASKS = ("seqrec", "sequence")  # tasks that predict the next item from a history: evaluable
TEMPLATE_FORMAT_VERSION = 1
PLAIN_FORMAT = "{prompt}\nAnswer: "  # the separator ends the prompt: " <a_1>" would tokenize as " " + "<a_1>"


@dataclass
class PromptConfig:
    """
    > Parameters that control the prompt datasets

    Args:
        tasks (`dict[str, int]`, *optional*): task -> maximum training rows (0 = all). Rows over the limit are
            sampled uniformly (seeded). Default: every seqrec window, the item tasks once per item.
        max_history (`int`, *optional*, defaults to `20`): most recent items shown as history.
        min_history (`int`, *optional*, defaults to `1`): shortest history of a training window.
        chat (`bool`, *optional*, defaults to `True`): chat messages (instruct models) or plain text (base models).
        templates_dir (`str`, *optional*): folder with the task YAML files (default: the repository's `prompts/`).
        eval_templates (`str`, *optional*, defaults to `"first"`): validation/test rows use the first paraphrase
            (`"first"`, comparable across runs) or a random one (`"random"`).
        seed (`int`, *optional*, defaults to `42`).
        eval_task (`str`, *optional*, defaults to `"seqrec"`): the next-item task of the validation/test rows and
            of inference, `"seqrec"` (history in the prompt) or `"sequence"` (history continued in the completion).
        item_separator (`str`, *optional*, defaults to `", "`): text between the SIDs of a list of items (`""` is
            unambiguous: every SID has the same number of tokens).
        sequence_context (`int`, *optional*, defaults to `0`): `sequence` rows: items of each run written in the
            prompt as context, without loss (see `sequence_windows`). 0 cuts runs that share one item and trains
            every item of a run, the first from the instruction alone. Needs plain prompts (`chat=False`): a chat
            completion cannot start inside the prompt.
        sequence_shifts (`int`, *optional*, defaults to `1`): `sequence` rows: cuts of each user's sequence, each
            moved a further `1/n` of a run from the end (`sequence_shift_offsets`); every cut trains every item once.
    """

    tasks: dict[str, int] = field(
        default_factory=lambda: {"seqrec": 0, "item2sid": 0, "sid2item": 0, "fusion": 0, "search": 0}
    )
    max_history: int = 20
    min_history: int = 1
    chat: bool = True
    templates_dir: str = str(PROMPTS_DIR)
    eval_templates: str = "first"
    seed: int = 42
    eval_task: str = "seqrec"
    item_separator: str = ", "
    sequence_context: int = 0
    sequence_shifts: int = 1

    def __post_init__(self) -> None:
        unknown = set(self.tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown task(s) {sorted(unknown)}; choose from {TASKS}.")
        if self.eval_task not in EVAL_TASKS:
            raise ValueError(f"eval_task must be one of {EVAL_TASKS}, got {self.eval_task!r}.")
        if self.eval_task not in self.tasks:
            raise ValueError(
                f"the task mix must include '{self.eval_task}', the eval_task (validation prompts and inference)."
            )
        if any(limit < 0 for limit in self.tasks.values()):
            raise ValueError(f"task row limits must be >= 0 (0 = all), got {self.tasks}.")
        if not 1 <= self.min_history <= self.max_history:
            raise ValueError(f"need 1 <= min_history <= max_history, got {self.min_history}, {self.max_history}.")
        if not 0 <= self.sequence_context <= self.max_history:
            raise ValueError(
                f"sequence_context must be between 0 and max_history ({self.max_history}), "
                f"got {self.sequence_context}."
            )
        if self.sequence_context and self.chat:
            raise ValueError(
                f"sequence_context={self.sequence_context} needs plain prompts (chat=False): the context items are "
                "written at the end of the prompt, where a chat template would close the user turn."
            )
        stride = sequence_stride(self.max_history, self.sequence_context)
        if not 1 <= self.sequence_shifts <= stride:
            raise ValueError(
                f"sequence_shifts must be between 1 and the run stride ({stride} items for max_history "
                f"{self.max_history}, sequence_context {self.sequence_context}), got {self.sequence_shifts}: "
                "more cuts than that would repeat one."
            )
        if self.eval_templates not in ("first", "random"):
            raise ValueError(f"eval_templates must be 'first' or 'random', got {self.eval_templates!r}.")


@dataclass(frozen=True)
class TaskTemplates:
    task: str
    templates: tuple[tuple[str, str], ...]  # (prompt, completion) format strings
    path: Path


PLACEHOLDERS = {
    "history", "history_titles", "target_sid", "target_title", "title", "text", "sid", "query", "sequence"
}  # fmt: skip


def load_templates(folder: str | Path, tasks) -> tuple[dict[str, TaskTemplates], str]:
    """Read `<task>.yaml` for each task and `system.yaml`; validate versions and placeholders."""
    folder = Path(folder)
    loaded = {}
    for task in tasks:
        path = folder / f"{task}.yaml"
        if not path.is_file():
            raise DataError(f"{path} not found; every task in the mix needs a template file.")
        payload = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(payload, dict) or payload.get("format_version") != TEMPLATE_FORMAT_VERSION:
            raise DataError(f"{path}: expected a mapping with format_version {TEMPLATE_FORMAT_VERSION}.")
        if payload.get("task") != task or not payload.get("templates"):
            raise DataError(f"{path}: needs 'task: {task}' and a non-empty 'templates' list.")
        pairs = []
        for number, entry in enumerate(payload["templates"]):
            if not isinstance(entry, dict) or not {"prompt", "completion"} <= set(entry):
                raise DataError(f"{path}: template {number} needs 'prompt' and 'completion'.")
            used = set(re.findall(r"{(\w+)}", entry["prompt"] + entry["completion"]))
            if used - PLACEHOLDERS:
                raise DataError(
                    f"{path}: template {number} uses unknown placeholder(s) {sorted(used - PLACEHOLDERS)}."
                )
            pairs.append((entry["prompt"], entry["completion"]))
        loaded[task] = TaskTemplates(task, tuple(pairs), path)
    system_path = folder / "system.yaml"
    system = yaml.safe_load(system_path.read_text(encoding="utf-8"))["system"] if system_path.is_file() else ""
    return loaded, system


def item_text(item: Item, max_chars: int = 300) -> str:
    """Title plus the first fields (brand, categories, genres, year, description), cut to `max_chars`."""
    parts = [item.title]
    for name in ("brand", "categories", "genres", "year", "description"):
        if item.fields.get(name):
            parts.append(f"{name}: {item.fields[name]}")
    return "; ".join(parts)[:max_chars]


def search_query(item: Item) -> str:
    """A short intent query: the item's genres or categories (else its first title words), brand and year.

    Examples:
        >>> search_query(Item("1", "Toy Story", {"genres": "Animation, Comedy", "year": "1995"}))
        'animation, comedy from 1995'
        >>> search_query(Item("2", "Gel Pens, 12 Colors", {"brand": "Pilot"}))
        'Pens Colors by Pilot'
    """
    labels = item.fields.get("genres") or item.fields.get("categories")
    words = re.findall(r"[A-Za-z][A-Za-z'-]{3,}", item.title)[:3]
    parts = [labels.lower() if labels else " ".join(words) or item.title]
    if item.fields.get("brand"):
        parts.append(f"by {item.fields['brand']}")
    if item.fields.get("year"):
        parts.append(f"from {item.fields['year']}")
    return " ".join(parts)


class PromptRenderer:
    """Fills templates for one dataset and index; picks paraphrases with a seeded RNG."""

    def __init__(self, dataset: Dataset, index: SemanticIdIndex, config: PromptConfig) -> None:
        self.items, self.index, self.config = dataset.items, index, config
        self.templates, self.system = load_templates(config.templates_dir, config.tasks)

    def sid(self, item_id: str) -> str:
        return self.index.format(self.index.items[item_id])

    def row(self, task: str, values: dict[str, str], rng: random.Random | None, user_id: str, target: str) -> dict:
        """One prompt-completion row; `rng=None` takes the first paraphrase."""
        pairs = self.templates[task].templates
        prompt, completion = pairs[0] if rng is None else rng.choice(pairs)
        prompt, completion = prompt.format(**values), completion.format(**values)
        if self.config.chat:
            messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
                {"role": "user", "content": prompt}
            ]
            rendered = {"prompt": messages, "completion": [{"role": "assistant", "content": completion}]}
        else:
            rendered = {"prompt": PLAIN_FORMAT.format(prompt=prompt), "completion": completion}
        return {**rendered, "task": task, "user_id": user_id, "target_item_id": target}

    def sequence_values(self, history: tuple[str, ...] | list[str], target: str) -> dict[str, str]:
        return {
            "history": self.config.item_separator.join(self.sid(item_id) for item_id in history),
            "sequence": self.config.item_separator.join(self.sid(item_id) for item_id in [*history, target]),
            "history_titles": "; ".join(self.items[item_id].title for item_id in history),
            "target_sid": self.sid(target),
            "target_title": self.items[target].title,
        }

    def sequence_row(
        self, context: tuple[str, ...], run: tuple[str, ...], rng: random.Random | None, user_id: str
    ) -> dict:
        """A `sequence` training row: the SIDs of `context` end the prompt (no loss) and those of `run` are the
        completion, so the row is token for token the inference prompt of its first run item plus the rest."""
        row = self.row("sequence", self.sequence_values(run[:-1], run[-1]), rng, user_id, run[-1])
        if not context:
            return row
        assert not self.config.chat, "PromptConfig refuses sequence_context with chat prompts"
        prefix = self.config.item_separator.join(self.sid(item_id) for item_id in context) + self.config.item_separator
        return {**row, "prompt": row["prompt"] + prefix}

    def item_values(self, item_id: str) -> dict[str, str]:
        item = self.items[item_id]
        return {
            "title": item.title,
            "text": item_text(item),
            "sid": self.sid(item_id),
            "target_sid": self.sid(item_id),
            "target_title": item.title,
            "query": search_query(item),
        }


def training_windows(train: tuple[str, ...], max_history: int, min_history: int) -> list[tuple[tuple[str, ...], str]]:
    """Sliding windows over one training sequence: (history, target) for every target with enough history.

    Examples:
        >>> training_windows(("a", "b", "c"), max_history=1, min_history=1)
        [(('a',), 'b'), (('b',), 'c')]
    """
    return [(train[max(0, t - max_history) : t], train[t]) for t in range(min_history, len(train))]


def sequence_runs(train: tuple[str, ...], max_history: int) -> list[tuple[tuple[str, ...], str]]:
    """Cut one training sequence into runs of at most `max_history + 1` items, as (history, last item) pairs.

    Runs are cut from the end (the most recent run is always whole) and consecutive runs share one item, so every
    training item after the first is a target once with context; a leading run of one item is dropped.

    Examples:
        >>> sequence_runs(("a", "b", "c", "d", "e", "f"), max_history=2)
        [(('a',), 'b'), (('b', 'c'), 'd'), (('d', 'e'), 'f')]
    """
    runs = []
    end = len(train)
    while end >= 2:
        start = max(0, end - max_history - 1)
        runs.append((train[start : end - 1], train[end - 1]))
        end = start + 1
        if start == 0:
            break
    return runs[::-1]


def sequence_windows(
    train: tuple[str, ...], max_history: int, context: int
) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Cut one training sequence into `(context, run)` windows of at most `max_history + 1` items: the `run` items are
    trained (next-item targets), the `context` items only precede them.

    Windows are cut from the end, each run holds `max_history + 1 - context` items and its context the `context`
    items before it, so every training item is trained once (the very first one possibly only as context) and every
    trained item after the first window sees at least `context` earlier items. The first window (which reaches the
    start of the sequence) has no context and trains all of its items; a first window of a single item is dropped
    (it would train the first item from the instruction alone). `context=0` keeps `sequence_runs`' cut (consecutive
    runs share one item).

    Examples:
        >>> sequence_windows(("a", "b", "c", "d", "e", "f"), max_history=2, context=1)
        [((), ('a', 'b')), (('b',), ('c', 'd')), (('d',), ('e', 'f'))]
        >>> sequence_windows(("a", "b", "c", "d", "e"), max_history=3, context=2)
        [(('a',), ('b', 'c')), (('b', 'c'), ('d', 'e'))]
    """
    if context == 0:
        return [((), (*history, target)) for history, target in sequence_runs(train, max_history)]
    run_length = max_history + 1 - context
    windows = []
    end = len(train)
    while end > 0:
        start = max(0, end - run_length)
        windows.append((train[max(0, start - context) : start], train[start:end]))
        end = start
    if windows and not windows[-1][0] and len(windows[-1][1]) == 1:
        windows.pop()
    return windows[::-1]


def sequence_stride(max_history: int, context: int) -> int:
    """Items between the starts of consecutive `sequence_windows` runs: `max_history` for `context=0` (runs share
    one item), else the `max_history + 1 - context` trained items of a window."""
    return max_history if context == 0 else max_history + 1 - context


def sequence_shift_offsets(max_history: int, context: int, shifts: int) -> list[int]:
    """How far each of `shifts` cuts ends before the sequence's end: evenly spaced over one run stride.

    Examples:
        >>> sequence_shift_offsets(20, 0, 3)
        [0, 6, 13]
        >>> sequence_shift_offsets(20, 0, 1)
        [0]
    """
    stride = sequence_stride(max_history, context)
    return [k * stride // shifts for k in range(shifts)]


def shifted_sequence_windows(
    train: tuple[str, ...], max_history: int, context: int, offset: int
) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """`sequence_windows` of the sequence without its last `offset` items, then one window that trains those.

    The cut boundaries move by `offset` items, so runs hold other items at other positions than the unshifted cut,
    and every item is still trained once. The tail window joins the last head run as the cut's runs join each other
    (with `context=0` it repeats the run's last item as its own first; otherwise that run's last `context` items are
    its context). A sequence too short to leave two items before the tail keeps the unshifted cut.

    Examples:
        >>> shifted_sequence_windows(("a", "b", "c", "d", "e", "f"), max_history=2, context=0, offset=1)
        [((), ('a', 'b', 'c')), ((), ('c', 'd', 'e')), ((), ('e', 'f'))]
        >>> shifted_sequence_windows(("a", "b", "c", "d", "e", "f"), max_history=2, context=1, offset=1)
        [(('a',), ('b', 'c')), (('c',), ('d', 'e')), (('e',), ('f',))]
    """
    end = len(train) - offset
    if offset == 0 or end < 2:
        return sequence_windows(train, max_history, context)
    head = sequence_windows(train[:end], max_history, context)
    tail = ((), train[end - 1 :]) if context == 0 else (train[max(0, end - context) : end], train[end:])
    return [*head, tail]


def _limit(rows: list[dict], limit: int, rng: random.Random) -> list[dict]:
    return rows if limit == 0 or len(rows) <= limit else rng.sample(rows, limit)


def render_splits(dataset: Dataset, index: SemanticIdIndex, config: PromptConfig) -> dict[str, list[dict]]:
    """Training rows for every task in the mix; validation and test rows for `config.eval_task`."""
    missing = [item_id for item_id in dataset.items if item_id not in index.items]
    if missing:
        raise DataError(
            f"the index lacks {len(missing)} catalog item(s) (e.g. {missing[:5]}); run `llmrec index add`."
        )
    renderer = PromptRenderer(dataset, index, config)
    rng = random.Random(config.seed)
    split = dataset.load_split()
    windows = [
        (user.user_id, history, target)
        for user in split.users
        for history, target in training_windows(user.train, config.max_history, config.min_history)
    ]
    train: list[dict] = []
    for task, limit in config.tasks.items():
        if task in ("seqrec", "fusion"):
            rows = [renderer.row(task, renderer.sequence_values(h, t), rng, u, t) for u, h, t in windows]
        elif task == "sequence":
            offsets = sequence_shift_offsets(config.max_history, config.sequence_context, config.sequence_shifts)
            rows = [
                renderer.sequence_row(context, run, rng, user.user_id)
                for offset in offsets
                for user in split.users
                for context, run in shifted_sequence_windows(
                    user.train, config.max_history, config.sequence_context, offset
                )
            ]
        else:
            rows = [renderer.row(task, renderer.item_values(i), rng, "", i) for i in dataset.items]
        train += _limit(rows, limit, rng)
    rng.shuffle(train)
    eval_rng = rng if config.eval_templates == "random" else None

    def eval_rows(examples: list[Example]) -> list[dict]:
        history_of = {e.user_id: e.history[-config.max_history :] for e in examples}
        return [
            renderer.row(
                config.eval_task,
                renderer.sequence_values(history_of[e.user_id], e.target),
                eval_rng,
                e.user_id,
                e.target,
            )
            for e in examples
        ]

    return {"train": train, "valid": eval_rows(split.examples("valid")), "test": eval_rows(split.examples("test"))}


def templates_sha256(config: PromptConfig) -> dict[str, str]:
    folder = Path(config.templates_dir)
    names = [f"{task}.yaml" for task in config.tasks] + (["system.yaml"] if (folder / "system.yaml").is_file() else [])
    return {name: sha256_file(folder / name) for name in names}


def build_prompt_datasets(
    dataset: Dataset, index: SemanticIdIndex, index_path: Path, config: PromptConfig, out: str | Path, overwrite=False
) -> dict:
    """Render and write `train/valid/test.jsonl` + `prompts.json` into the folder `out` (atomically)."""
    splits = render_splits(dataset, index, config)
    counts = {name: len(rows) for name, rows in splits.items()}
    by_task: dict[str, int] = {}
    for row in splits["train"]:
        by_task[row["task"]] = by_task.get(row["task"], 0) + 1
    meta = {
        "format_version": TEMPLATE_FORMAT_VERSION,
        "config": asdict(config),
        "counts": counts,
        "train_rows_per_task": by_task,
        "dataset": dataset.name,
        "dataset_files_sha256": dataset.meta["files"],
        "index_sha256": sha256_file(index_path),
        "templates_sha256": templates_sha256(config),
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for name, rows in splits.items():
            with open(tmp / f"{name}.jsonl", "w", encoding="utf-8") as handle:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        meta["files_sha256"] = {f"{name}.jsonl": sha256_file(tmp / f"{name}.jsonl") for name in splits}
        (tmp / "prompts.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    logger.info("Wrote %s: %s rows, train per task %s", out, counts, by_task)
    return meta
