"""SASRec baseline (eval/sasrec.py): atomic export, RecBole split alignment, seen-item masking, an end-to-end run.

Tests that need RecBole call `pytest.importorskip("recbole")` themselves (`pip install -e ".[baselines]"`).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from eval.metrics import ndcg_gains
from eval.sasrec import export_atomic, rank_examples, recbole_name
from llmrec.data.importers.common import RawData
from llmrec.data.io import DataError
from llmrec.data.prepare import prepare
from llmrec.data.split import Example
from llmrec.schemas import Interaction, Item

# 24 items (RecBole evaluates a top 20), 4 users with 4+ interactions (RecBole's leave-one-out needs two rows
# before the test row), u2 repeats "b", item "x" has no interaction. Sequences by time:
SEQUENCES = {"u1": "abcde", "u2": "bcab", "u3": "cabdf", "u4": "abec"}
TINY_SASREC = {"hidden_size": 8, "inner_size": 16, "n_layers": 1, "n_heads": 1}


def make_raw() -> RawData:
    items = {i: Item(i, f"Title {i.upper()}") for i in "abcdefghijklmnopqrstuvwx"}
    rows = [Interaction(u, i, 100 * n) for u, seq in SEQUENCES.items() for n, i in enumerate(seq)]
    return RawData("tiny-seq", "fixture", items, rows, [])


@pytest.fixture
def seq_dataset(tmp_path):
    return prepare(make_raw(), tmp_path / "tiny-seq")


def read_inter(folder):
    lines = (folder / f"{folder.name}.inter").read_text(encoding="utf-8").splitlines()
    return lines[0], [line.split("\t") for line in lines[1:]]


def test_export_atomic_writes_positions_in_split_order(seq_dataset, tmp_path):
    folder = export_atomic(seq_dataset, tmp_path / "atomic")
    assert folder == tmp_path / "atomic" / "llmrec-tiny-seq" and folder.name == recbole_name(seq_dataset)
    header, rows = read_inter(folder)
    assert header == "user_id:token\titem_id:token\ttimestamp:float"
    # One row per interaction, the repeat of "b" kept, the timestamp = position in (train..., valid, test).
    assert len(rows) == sum(len(seq) for seq in SEQUENCES.values()) == 18
    assert [row[1:] for row in rows if row[0] == "u2"] == [["b", "0"], ["c", "1"], ["a", "2"], ["b", "3"]]
    for user in seq_dataset.load_split().users:
        ours = [[user.user_id, item_id, str(n)] for n, item_id in enumerate((*user.train, user.valid, user.test))]
        assert [row for row in rows if row[0] == user.user_id] == ours
    items = (folder / f"{folder.name}.item").read_text(encoding="utf-8").splitlines()
    assert items == ["item_id:token", *seq_dataset.items]  # the whole catalog, "x" included
    # A second export replaces the folder and leaves no temporary folder behind.
    (folder / "stale.txt").write_text("old")
    export_atomic(seq_dataset, tmp_path / "atomic")
    assert sorted(path.name for path in (tmp_path / "atomic").iterdir()) == ["llmrec-tiny-seq"]
    assert not (folder / "stale.txt").exists()


def test_export_atomic_rejects_ids_a_tab_separated_file_cannot_hold(tmp_path):
    raw = make_raw()
    raw.items["bad\tid"] = Item("bad\tid", "Tabbed")
    with pytest.raises(DataError, match=r"item_id 'bad\\tid' .* contains a tab or line break"):
        export_atomic(prepare(raw, tmp_path / "tabbed"), tmp_path / "atomic")


def load_recbole(dataset, work_dir, **overrides):
    from eval.sasrec import load_recbole_data, sasrec_config

    config = sasrec_config(dataset, work_dir / "atomic", work_dir, **overrides)
    return load_recbole_data(config)


def test_alignment_passes_on_our_export_and_names_the_user_of_a_tampered_one(seq_dataset, tmp_path):
    pytest.importorskip("recbole")
    from eval.sasrec import check_alignment

    split = seq_dataset.load_split()
    folder = export_atomic(seq_dataset, tmp_path / "atomic")
    check_alignment(split, seq_dataset.items, *load_recbole(seq_dataset, tmp_path))

    # Swap u3's validation and test positions: RecBole's test target becomes "d", ours is "f".
    header, rows = read_inter(folder)
    for row in rows:
        if row[0] == "u3" and row[2] in ("3", "4"):
            row[2] = "4" if row[2] == "3" else "3"
    (folder / f"{folder.name}.inter").write_text("\n".join([header, *map("\t".join, rows)]) + "\n")
    with pytest.raises(DataError, match=r"RecBole's test rows for user 'u3' are \[\(\('c', 'a', 'b', 'f'\), 'd'\)\]"):
        check_alignment(split, seq_dataset.items, *load_recbole(seq_dataset, tmp_path))


def test_alignment_rejects_a_filter_that_drops_items(seq_dataset, tmp_path):
    pytest.importorskip("recbole")
    from eval.sasrec import check_alignment

    export_atomic(seq_dataset, tmp_path / "atomic")
    data = load_recbole(seq_dataset, tmp_path, item_inter_num_interval="[1,inf)")
    with pytest.raises(DataError, match="RecBole kept 4 users and 6 items, our split has 4 users and 24 catalog"):
        check_alignment(seq_dataset.load_split(), seq_dataset.items, *data)


def test_alignment_rejects_users_with_a_single_training_item(tiny_dataset, tmp_path):
    """conftest's u2 (b c a) has one training item: RecBole would train on its validation item."""
    pytest.importorskip("recbole")
    from eval.sasrec import check_alignment

    export_atomic(tiny_dataset, tmp_path / "atomic")
    with pytest.raises(DataError, match=r"User 'u2' has a single training item.*--min-user 4"):
        check_alignment(tiny_dataset.load_split(), tiny_dataset.items, *load_recbole(tiny_dataset, tmp_path, topk=[5]))


class FixedScores:
    """Stands in for a RecBole sequential model: scores item index i as i, records its input."""

    ITEM_SEQ, ITEM_SEQ_LEN, max_seq_length = "item_id_list", "item_length", 4

    def full_sort_predict(self, interaction):
        self.inputs = interaction
        return torch.arange(7, dtype=torch.float).repeat(len(interaction[self.ITEM_SEQ]), 1)  # (B, N)


def test_rank_examples_excludes_padding_and_every_seen_item():
    pytest.importorskip("recbole")
    tokens = ["[PAD]", "a", "b", "c", "d", "e", "f"]  # index 0 is padding; raw scores rank f e d c b a [PAD]
    examples = [
        Example("u1", ("b", "f"), "c", frozenset({"a", "b", "f"})),  # history truncated, "a" seen earlier
        Example("u2", ("b", "c", "d", "e"), "f", frozenset("abcde")),  # only f is left
    ]
    model = FixedScores()
    assert rank_examples(model, examples[:1], tokens, k=3) == [["e", "d", "c"]]
    assert model.inputs["item_id_list"].tolist() == [[2, 6, 0, 0]] and model.inputs["item_length"].tolist() == [2]
    # k is capped at the catalog; a list is shorter only when fewer unseen items remain; batches split anywhere.
    assert rank_examples(model, examples, tokens, k=20, batch_size=1) == [["e", "d", "c"], ["f"]]


def test_unmasked_ranking_reproduces_recboles_own_evaluation(seq_dataset, tmp_path, one_torch_thread):
    """Parity: our interactions and scoring, history not masked, give RecBole's reported test metrics."""
    pytest.importorskip("recbole")
    from recbole.utils import get_model, init_seed

    from eval.metrics import ranking_metrics
    from eval.sasrec import fit_sasrec, make_trainer

    export_atomic(seq_dataset, tmp_path / "atomic")
    recbole_dataset, train_data, valid_data, test_data = load_recbole(seq_dataset, tmp_path, epochs=3, **TINY_SASREC)
    config = train_data.config
    init_seed(config["seed"], True)
    model = get_model("SASRec")(config, train_data.dataset)
    trainer = make_trainer(config, model, tmp_path)
    fit_sasrec(trainer, train_data, valid_data)
    model.eval()
    examples = seq_dataset.load_split().examples("test")
    tokens = recbole_dataset.field2id_token["item_id"]
    ranked = rank_examples(model, examples, tokens, 20, exclude_seen=False)
    # Per user: RecBole's own full-sort scores of its test rows give the same top 20, in the same order.
    theirs = {}
    for batch in test_data:
        interaction, scores, _, _ = trainer._full_sort_batch_eval(batch)  # scores: (B, N)
        users = recbole_dataset.field2id_token["user_id"][interaction["user_id"].numpy()]
        for user_id, top in zip(users, scores.topk(20, dim=1).indices.tolist(), strict=True):
            theirs[user_id] = [tokens[idx] for idx in top]
    assert theirs == {example.user_id: top for example, top in zip(examples, ranked, strict=True)}
    # And so the same metrics as RecBole's evaluation.
    reported = trainer.evaluate(test_data, load_best_model=False)
    ours = ranking_metrics(ranked, [example.target for example in examples], seq_dataset.items)
    for key in ("recall@5", "ndcg@5", "recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr@10"):
        assert ours[key] == pytest.approx(reported[key], abs=1e-4), key


def test_evaluate_sasrec_end_to_end(seq_dataset, tmp_path, monkeypatch, one_torch_thread):
    pytest.importorskip("recbole")
    from eval.sasrec import evaluate_sasrec

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    work = tmp_path / "work"
    metrics = evaluate_sasrec(seq_dataset, "test", seed=3, epochs=2, work_dir=work, **TINY_SASREC)
    assert metrics["model"] == "sasrec" and metrics["dataset"] == "tiny-seq" and metrics["split"] == "test"
    assert metrics["n_users"] == 4 and metrics["invalid_rate"] == 0.0
    for k in (5, 10, 20):
        assert 0.0 <= metrics[f"ndcg@{k}"] <= metrics[f"recall@{k}"] <= 1.0
    assert metrics["recall@5"] <= metrics["recall@10"] <= metrics["recall@20"]
    assert metrics["epochs_trained"] == 2 and metrics["best_epoch"] in (0, 1) and len(metrics["epoch_log"]) == 2
    assert metrics["best_valid_ndcg10"] == metrics["epoch_log"][metrics["best_epoch"]]["valid_ndcg@10"]
    assert {"recall@10", "ndcg@10", "mrr@10"} <= set(metrics["recbole_reported"])
    config = metrics["config"]
    assert config["seed"] == 3 and config["hidden_size"] == 8 and config["MAX_ITEM_LIST_LENGTH"] == 20
    assert config["loss_type"] == "CE" and config["exclude_seen"] is True and config["learning_rate"] == 1e-3
    assert metrics["dataset_sha256"] == seq_dataset.meta["files"]
    # Per-user ranks (for paired comparisons) agree with the aggregate metrics.
    ranks = np.array(metrics["target_ranks"])
    assert len(metrics["user_ids"]) == len(ranks) == 4 and ranks.min() >= 0 and ranks.max() <= 20
    assert ndcg_gains(ranks, 10).mean() == pytest.approx(metrics["ndcg@10"])
    json.dumps(metrics)  # saved as metrics.json by the caller
    # RecBole wrote under the work dir only: atomic files and TensorBoard events, nothing in the cwd.
    assert list(cwd.iterdir()) == []
    assert sorted(path.name for path in work.iterdir()) == ["atomic", "checkpoints", "tensorboard"]
    assert list((work / "tensorboard").iterdir())
    # Seeded: the same call gives the same numbers; a zero time budget stops after one epoch.
    again = evaluate_sasrec(seq_dataset, "test", seed=3, epochs=2, **TINY_SASREC)
    assert again["epoch_log"][-1]["train_loss"] == metrics["epoch_log"][-1]["train_loss"]
    assert again["ndcg@20"] == metrics["ndcg@20"]
    assert evaluate_sasrec(seq_dataset, "valid", epochs=5, max_seconds=0, **TINY_SASREC)["epochs_trained"] == 1
    assert list(cwd.iterdir()) == []


def test_evaluate_sasrec_without_recbole_says_how_to_install_it(seq_dataset, monkeypatch):
    from eval.sasrec import evaluate_sasrec

    monkeypatch.setitem(sys.modules, "recbole", None)  # makes `import recbole` fail, installed or not
    with pytest.raises(ImportError, match=r'pip install -e "\.\[baselines\]"'):
        evaluate_sasrec(seq_dataset)


def test_evaluate_sasrec_rejects_a_bad_split(seq_dataset):
    from eval.sasrec import evaluate_sasrec

    with pytest.raises(ValueError, match="split must be 'valid' or 'test', got 'train'"):
        evaluate_sasrec(seq_dataset, "train")
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        evaluate_sasrec(seq_dataset, epochs=0)


@pytest.mark.integration
def test_alignment_on_movielens_100k(tmp_path):
    """Real data: ml-100k (from the installed RecBole wheel) exported, rebuilt by RecBole, checked user by user."""
    pytest.importorskip("recbole")
    from eval.sasrec import check_alignment
    from llmrec.data.importers.movielens import import_recbole_movielens

    dataset = prepare(import_recbole_movielens("ml-100k"), tmp_path / "ml-100k")
    export_atomic(dataset, tmp_path / "atomic")
    recbole_dataset, train_data, valid_data, test_data = load_recbole(dataset, tmp_path)
    check_alignment(dataset.load_split(), dataset.items, recbole_dataset, train_data, valid_data, test_data)
    assert recbole_dataset.user_num - 1 == 943 and recbole_dataset.item_num - 1 == 1682
    assert len(train_data.dataset) == 100_000 - 3 * 943
