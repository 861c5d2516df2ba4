import json
from dataclasses import replace
from pathlib import Path

import pytest

from llmrec.data.io import DataError
from llmrec.prompting import (
    PLAIN_FORMAT,
    PROMPTS_DIR,
    TASKS,
    PromptConfig,
    build_prompt_datasets,
    load_templates,
    render_splits,
    sequence_runs,
    sequence_shift_offsets,
    sequence_windows,
    shifted_sequence_windows,
    training_windows,
)
from llmrec.sid import SemanticIdIndex, save_index


@pytest.fixture
def tiny_index(tiny_dataset, tmp_path):
    """Distinct 2-level SIDs for the 6 tiny items."""
    items = {item_id: (n // 3, n % 3) for n, item_id in enumerate(tiny_dataset.items)}
    index = SemanticIdIndex(items, (4, 4))
    path = tmp_path / "sid_index.json"
    save_index(index, path)
    return index, path


def test_repository_templates_cover_every_task_with_paraphrases():
    templates, system = load_templates(PROMPTS_DIR, TASKS)
    assert set(templates) == set(TASKS) and "semantic IDs" in system
    assert all(len(t.templates) >= 3 for t in templates.values())


def test_training_windows():
    assert training_windows(("a", "b", "c", "d"), max_history=2, min_history=1) == [
        (("a",), "b"),
        (("a", "b"), "c"),
        (("b", "c"), "d"),
    ]
    assert training_windows(("a", "b", "c"), max_history=5, min_history=2) == [(("a", "b"), "c")]


def test_seqrec_rows_come_from_training_sequences_only(tiny_dataset, tiny_index):
    index, _ = tiny_index
    splits = render_splits(tiny_dataset, index, PromptConfig(tasks={"seqrec": 0}, max_history=2))
    split = tiny_dataset.load_split()
    train_of = {user.user_id: user.train for user in split.users}
    # Sequences: u1 a b c d e -> train a b c; u2 b c a -> train b; u3 c a b d -> train c a; u4 a b e -> train a.
    expected = sum(len(train) - 1 for train in train_of.values())
    assert len(splits["train"]) == expected == 3
    for row in splits["train"]:
        assert row["target_item_id"] in train_of[row["user_id"]][1:]
    held_out = {(u.user_id, u.valid) for u in split.users} | {(u.user_id, u.test) for u in split.users}
    assert not {(row["user_id"], row["target_item_id"]) for row in splits["train"]} & held_out
    # Validation rows: history = the last max_history training items, target = the validation item.
    valid_u1 = next(row for row in splits["valid"] if row["user_id"] == "u1")
    assert valid_u1["target_item_id"] == "d"
    assert valid_u1["completion"] == [{"role": "assistant", "content": index.format(index.items["d"])}]
    user_text = valid_u1["prompt"][-1]["content"]
    assert f"{index.format(index.items['b'])}, {index.format(index.items['c'])}" in user_text
    assert index.format(index.items["a"]) not in user_text  # truncated to max_history=2
    assert valid_u1["prompt"][0]["role"] == "system"
    assert len(splits["test"]) == 4 and {r["task"] for r in splits["valid"] + splits["test"]} == {"seqrec"}


def test_sequence_runs_cover_every_training_target_once_with_context():
    train = tuple("abcdefghij")
    for max_history in (1, 2, 3, 9, 20):
        runs = sequence_runs(train, max_history)
        predicted = [item for history, target in runs for item in [*history[1:], target]]
        assert predicted == list(train[1:])  # each item after the first is predicted once, in order
        assert all(len(history) <= max_history for history, _ in runs)
        assert runs[-1][1] == "j" and len(runs[-1][0]) == min(max_history, 9)  # the most recent run is whole
    assert sequence_runs(("a",), 3) == []


def test_sequence_rows_come_from_training_sequences_only(tiny_dataset, tiny_index):
    index, _ = tiny_index
    config = PromptConfig(tasks={"sequence": 0}, max_history=2, chat=False, eval_task="sequence")
    splits = render_splits(tiny_dataset, index, config)
    split = tiny_dataset.load_split()
    sid = {item_id: index.format(codes) for item_id, codes in index.items.items()}
    train_of = {user.user_id: user.train for user in split.users}
    # u1 trains on a b c (runs: a b c with max_history 2), u3 on c a; u2 and u4 have one training item: no run.
    assert sorted((r["user_id"], r["completion"]) for r in splits["train"]) == [
        ("u1", f"{sid['a']}, {sid['b']}, {sid['c']}"),
        ("u3", f"{sid['c']}, {sid['a']}"),
    ]
    for row in splits["train"]:
        assert row["task"] == "sequence" and row["target_item_id"] == train_of[row["user_id"]][-1]
    valid_u1 = next(row for row in splits["valid"] if row["user_id"] == "u1")
    assert valid_u1["completion"] == f"{sid['b']}, {sid['c']}, {sid['d']}"  # history (max 2) + validation item
    assert {r["task"] for r in splits["valid"] + splits["test"]} == {"sequence"}
    # SIDs have a fixed length, so runs can also be written without a separator (3 tokens per item, not 5).
    joined = render_splits(tiny_dataset, index, replace(config, item_separator=""))
    assert sorted(r["completion"] for r in joined["train"]) == sorted(
        [sid["a"] + sid["b"] + sid["c"], sid["c"] + sid["a"]]
    )


def test_sequence_windows_train_every_item_once_with_at_least_the_context():
    train = tuple("abcdefghijklmnopq")
    for max_history, context in [(1, 1), (3, 1), (3, 3), (5, 2), (9, 4), (20, 10), (20, 20)]:
        windows = sequence_windows(train, max_history, context)
        trained = [item for _, run in windows for item in run]
        assert trained in (list(train), list(train[1:]))  # in order, once each; the first item may be context only
        for number, (ctx, run) in enumerate(windows):
            assert run and len(ctx) + len(run) <= max_history + 1
            start = train.index(run[0])
            assert ctx == train[max(0, start - context) : start]  # the items right before the run
            if number > 0:
                assert len(ctx) == min(context, start) and len(run) == max_history + 1 - context
        assert not (windows[0][0] == () and len(windows[0][1]) == 1)  # no run trained from the instruction alone
    # context 0 is sequence_runs' cut, written as windows without context
    assert sequence_windows(train, 4, 0) == [((), (*h, t)) for h, t in sequence_runs(train, 4)]
    assert sequence_windows(("a",), 3, 1) == [] and sequence_windows((), 3, 2) == []


def test_shifted_cuts_train_every_item_once_with_other_run_boundaries():
    """Every shifted cut is a valid cut (each item trained once, in order, runs within `max_history + 1` items,
    context right before its run) whose run starts differ from the unshifted cut's."""
    train = tuple("abcdefghijklmnopqrstuvwxyz")

    def starts(windows):
        return {train.index(run[0]) for _, run in windows}

    for max_history, context in [(3, 0), (5, 0), (20, 0), (4, 1), (5, 2), (9, 4)]:
        unshifted = sequence_windows(train, max_history, context)
        offsets = sequence_shift_offsets(max_history, context, 3 if max_history > 3 else 2)
        assert offsets[0] == 0 and len(set(offsets)) == len(offsets)
        for offset in offsets:
            windows = shifted_sequence_windows(train, max_history, context, offset)
            trained = [item for _, run in windows for item in run]
            if context == 0:  # consecutive runs share one item, as in sequence_runs
                trained = [*windows[0][1]] + [item for _, run in windows[1:] for item in run[1:]]
            assert trained in (list(train), list(train[1:]))
            for ctx, run in windows:
                start = train.index(run[0])
                assert run and len(ctx) + len(run) <= max_history + 1
                assert ctx == train[max(0, start - len(ctx)) : start]
                if context == 0 and start > 0:
                    assert train[start] == windows[windows.index((ctx, run)) - 1][1][-1]
            if offset:
                assert windows[-1][1][-1] == "z" and starts(windows) != starts(unshifted)
            else:
                assert windows == unshifted
    # a sequence too short to leave two items before the tail keeps the unshifted cut
    assert shifted_sequence_windows(("a", "b"), 4, 0, 1) == sequence_windows(("a", "b"), 4, 0)


def test_sequence_shifts_multiply_the_distinct_training_rows(tiny_dataset, tiny_index):
    """`sequence_shifts=2` renders the unshifted cut plus one moved by half a run; validation and test rows stay."""
    index, _ = tiny_index
    config = PromptConfig(tasks={"sequence": 0}, max_history=2, chat=False, eval_task="sequence", item_separator="")
    shifted = render_splits(tiny_dataset, index, replace(config, sequence_shifts=2))
    plain = render_splits(tiny_dataset, index, config)
    sid = {item_id: index.format(codes) for item_id, codes in index.items.items()}
    # u1 trains on a b c: unshifted (a b c), shifted by 1: (a b) + (b c); u3's c a is too short to shift.
    assert sorted((r["user_id"], r["completion"]) for r in shifted["train"]) == sorted(
        [
            ("u1", sid["a"] + sid["b"] + sid["c"]),
            ("u1", sid["a"] + sid["b"]),
            ("u1", sid["b"] + sid["c"]),
            ("u3", sid["c"] + sid["a"]),
            ("u3", sid["c"] + sid["a"]),
        ]
    )
    assert shifted["valid"] == plain["valid"] and shifted["test"] == plain["test"]
    with pytest.raises(ValueError, match=r"sequence_shifts must be between 1 and the run stride \(2 items"):
        replace(config, sequence_shifts=3)
    with pytest.raises(ValueError, match="sequence_shifts must be between 1"):
        replace(config, sequence_shifts=0)


def test_sequence_context_moves_the_run_start_into_the_prompt(tiny_dataset, tiny_index):
    """With `sequence_context`, a row's prompt is the inference prompt of its first trained item (instruction, the
    context SIDs, the separator) and the completion holds only the trained SIDs."""
    index, _ = tiny_index
    config = PromptConfig(tasks={"sequence": 0}, max_history=2, chat=False, eval_task="sequence", sequence_context=1)
    splits = render_splits(tiny_dataset, index, config)
    sid = {item_id: index.format(codes) for item_id, codes in index.items.items()}
    instructions = {
        PLAIN_FORMAT.format(prompt=prompt)
        for prompt, _ in load_templates(PROMPTS_DIR, ["sequence"])[0]["sequence"].templates
    }
    for row in splits["train"]:
        assert row["prompt"].split("Answer: ")[0] + "Answer: " in instructions
    # u1 trains on a b c: window (a | b c); u3 on c a: (| c a), whole.
    assert sorted((r["user_id"], r["prompt"].split("Answer: ")[1], r["completion"]) for r in splits["train"]) == [
        ("u1", f"{sid['a']}, ", f"{sid['b']}, {sid['c']}"),
        ("u3", "", f"{sid['c']}, {sid['a']}"),
    ]
    # validation and test rows do not change with the training cut
    plain = render_splits(tiny_dataset, index, replace(config, sequence_context=0))
    assert splits["valid"] == plain["valid"] and splits["test"] == plain["test"]


def test_sequence_context_errors():
    with pytest.raises(ValueError, match=r"sequence_context must be between 0 and max_history \(2\), got 3"):
        PromptConfig(tasks={"sequence": 0}, max_history=2, chat=False, eval_task="sequence", sequence_context=3)
    with pytest.raises(ValueError, match=r"needs plain prompts \(chat=False\)"):
        PromptConfig(tasks={"sequence": 0}, chat=True, eval_task="sequence", sequence_context=1)


def test_item_tasks_plain_format_and_limits(tiny_dataset, tiny_index):
    index, _ = tiny_index
    config = PromptConfig(tasks={"seqrec": 2, "item2sid": 0, "sid2item": 3, "search": 0}, chat=False)
    splits = render_splits(tiny_dataset, index, config)
    per_task = {}
    for row in splits["train"]:
        per_task[row["task"]] = per_task.get(row["task"], 0) + 1
    assert per_task == {"seqrec": 2, "item2sid": 6, "sid2item": 3, "search": 6}
    row = next(r for r in splits["train"] if r["task"] == "sid2item")
    assert isinstance(row["prompt"], str) and row["prompt"].endswith("\nAnswer: ")
    assert row["completion"] == tiny_dataset.items[row["target_item_id"]].title
    search = next(r for r in splits["train"] if r["task"] == "search" and r["target_item_id"] == "a")
    assert "g1" in search["prompt"]  # the genre label of item a, lower-cased


def test_rendering_is_deterministic_and_seed_dependent(tiny_dataset, tiny_index):
    index, _ = tiny_index
    config = PromptConfig(tasks={"seqrec": 0, "fusion": 0})
    first, second = render_splits(tiny_dataset, index, config), render_splits(tiny_dataset, index, config)
    assert first == second
    other = render_splits(tiny_dataset, index, PromptConfig(tasks={"seqrec": 0, "fusion": 0}, seed=7))
    assert [r["prompt"] for r in other["train"]] != [r["prompt"] for r in first["train"]]


def test_build_writes_files_with_checksums(tiny_dataset, tiny_index, tmp_path):
    index, path = tiny_index
    out = tmp_path / "prompts"
    meta = build_prompt_datasets(tiny_dataset, index, path, PromptConfig(), out)
    assert sorted(p.name for p in out.iterdir()) == ["prompts.json", "test.jsonl", "train.jsonl", "valid.jsonl"]
    saved = json.loads((out / "prompts.json").read_text())
    assert saved["counts"] == meta["counts"] and saved["counts"]["valid"] == 4
    assert set(saved["templates_sha256"]) == {f"{t}.yaml" for t in PromptConfig().tasks} | {"system.yaml"}
    assert len((out / "train.jsonl").read_text().splitlines()) == meta["counts"]["train"]
    with pytest.raises(FileExistsError):
        build_prompt_datasets(tiny_dataset, index, path, PromptConfig(), out)


def test_bad_configs_and_templates(tiny_dataset, tiny_index, tmp_path):
    index, _ = tiny_index
    with pytest.raises(ValueError, match="unknown task"):
        PromptConfig(tasks={"seqrec": 0, "translate": 0})
    with pytest.raises(ValueError, match="must include 'seqrec'"):
        PromptConfig(tasks={"item2sid": 0})
    with pytest.raises(ValueError, match="must include 'sequence'"):
        PromptConfig(tasks={"seqrec": 0}, eval_task="sequence")
    with pytest.raises(ValueError, match="eval_task must be one of"):
        PromptConfig(tasks={"seqrec": 0, "fusion": 0}, eval_task="fusion")
    with pytest.raises(ValueError, match="min_history <= max_history"):
        PromptConfig(min_history=3, max_history=2)
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "seqrec.yaml").write_text(
        "format_version: 1\ntask: seqrec\ntemplates:\n  - prompt: 'x {histroy}'\n    completion: '{target_sid}'\n"
    )
    with pytest.raises(DataError, match=r"unknown placeholder\(s\) \['histroy'\]"):
        render_splits(tiny_dataset, index, PromptConfig(tasks={"seqrec": 0}, templates_dir=str(tmp_path / "tpl")))
    with pytest.raises(DataError, match="item2sid.yaml not found"):
        load_templates(tmp_path / "tpl", ["item2sid"])
    partial = SemanticIdIndex({"a": (0, 0)}, (4, 4))
    with pytest.raises(DataError, match="index lacks 5 catalog item"):
        render_splits(tiny_dataset, partial, PromptConfig())


def test_templates_dir_default_is_the_repository_folder():
    assert PromptConfig().templates_dir == str(PROMPTS_DIR) and Path(PROMPTS_DIR, "seqrec.yaml").is_file()
