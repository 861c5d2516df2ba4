"""SASRec (RecBole 1.2.1) as a baseline in our harness: trained on exactly our leave-one-out split, scored like
every other model here (full ranking, items the user has already seen excluded, `eval.metrics.ranking_metrics`).

Pipeline of `evaluate_sasrec`:

1. `export_atomic` writes our split as RecBole atomic files: one `.inter` row per interaction, the timestamp
   replaced by the position in the user's sequence (train..., valid, test), and an `.item` file with the whole
   catalog. RecBole's sequential leave-one-out (`eval_args: split LS valid_and_test, order TO, group_by user`) then
   holds out exactly our validation and test targets, with exactly our `max_history` most recent items as input.
   The RecBole dataset is named `llmrec-<name>`: RecBole treats the name `ml-100k` specially (it reads its own
   bundled copy and its own `ml-100k.yaml` settings instead of our files).
2. `check_alignment` verifies that claim on the datasets RecBole built: every user's validation and test
   history and target equal ours, no user, item or interaction was filtered. It raises `DataError` otherwise.
3. `fit_sasrec` trains with RecBole's own `Trainer` (`_train_epoch`, `_valid_epoch`, `early_stopping`), epoch by
   epoch, so that we can stop on a wall-clock budget and keep the best-validation state in memory.
4. `rank_examples` scores our examples with the model's `full_sort_predict`, masks the padding item and every
   item in `Example.seen` (as `evaluate_popularity` and the LLM do with `exclude_seen=True`), and keeps the top K.
   RecBole's own `Trainer.evaluate` result, which does not mask the history for sequential models, is returned
   beside it under `recbole_reported`, for comparison with BENCHMARKS.md.

Settings follow BENCHMARKS.md (CE loss over the full catalog, no negative sampling, Adam lr 1e-3, batch 256,
dropout .5, early stopping on RecBole's valid NDCG@10 with patience 10); `**overrides` replaces any RecBole key.

RecBole 1.2.1 under numpy 2 and torch 2.x needs shims, kept to what we reach:

- `np.float_`, `np.complex_` and `np.unicode_` (removed in numpy 2) are set to `np.float64`, `np.complex128` and
  `np.str_` before RecBole is imported, if missing. (RecBole's `Config` itself also sets `np.float`, `np.int`, ...)
- `torch.load` (which RecBole calls without `weights_only=False` on its own pickled checkpoints) is never reached:
  we keep the best state in memory and call `Trainer.evaluate(load_best_model=False)`; no checkpoint is written.
- `Trainer.__init__` opens a TensorBoard writer under `./log_tensorboard`; we point it at `<work_dir>/tensorboard`.
- `Config` reads `--key=value` arguments from `sys.argv` and sets `CUDA_VISIBLE_DEVICES`; we hide our process's
  arguments from it and restore the variable afterwards.
- `recbole.quick_start` is not imported: it imports ray, which needs `pkg_resources`.

Install with `pip install -e ".[baselines]"`. Users with a single training item (3 interactions) cannot be
reproduced: RecBole's leave-one-out then keeps their validation item for training; prepare with `--min-user 4`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from tqdm.auto import tqdm

from eval.evaluate import per_user_ranks
from eval.metrics import ranking_metrics
from llmrec.data.dataset import Dataset
from llmrec.data.io import DataError, atomic_dir
from llmrec.data.split import Example, LeaveOneOutSplit, SplitName

logger = logging.getLogger(__name__)

RECBOLE_VERSION = "1.2.1"
KS = (5, 10, 20)
# RecBole settings reported in the result's `config` (with any override): training, then SASRec's own.
REPORTED_KEYS = (
    "seed",
    "epochs",
    "stopping_step",
    "valid_metric",
    "learner",
    "learning_rate",
    "train_batch_size",
    "train_neg_sample_args",
    "MAX_ITEM_LIST_LENGTH",
    "n_layers",
    "n_heads",
    "hidden_size",
    "inner_size",
    "hidden_dropout_prob",
    "attn_dropout_prob",
    "hidden_act",
    "layer_norm_eps",
    "initializer_range",
    "loss_type",
)


def _require_recbole() -> None:
    """Apply the numpy shims, then import the RecBole pieces we use, with an install hint if they are missing."""
    for name, value in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
        if not hasattr(np, name):
            setattr(np, name, value)
    try:
        import recbole
        import recbole.config
        import recbole.data
        import recbole.trainer
        import recbole.utils  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"The SASRec baseline needs RecBole {RECBOLE_VERSION} and its dependencies ({err}); install them with "
            '`pip install -e ".[baselines]"`.'
        ) from err
    if recbole.__version__ != RECBOLE_VERSION:
        raise ImportError(
            f"The SASRec baseline is written against RecBole {RECBOLE_VERSION}, found {recbole.__version__}; "
            'install the pinned version with `pip install -e ".[baselines]"`.'
        )


def recbole_name(dataset: Dataset) -> str:
    """The RecBole dataset name of `dataset`: never a name RecBole ships settings or data for."""
    return f"llmrec-{dataset.name}"


def export_atomic(dataset: Dataset, out_dir: str | Path) -> Path:
    """Write `dataset`'s leave-one-out split as RecBole atomic files in `out_dir/<recbole_name>/` (atomically).

    `<recbole_name>.inter` has the header `user_id:token  item_id:token  timestamp:float` (tab-separated) and one
    row per interaction, users in split order; the timestamp is the position in the user's sequence
    `(*train, valid, test)`, so RecBole's time-ordered leave-one-out reproduces our split, repeats included.
    `<recbole_name>.item` lists every catalog item, so that RecBole ranks the whole catalog.

    Returns:
        `Path`: the folder written; pass its parent as RecBole's `data_path`.
    """
    split = dataset.load_split()
    for item_id in dataset.items:
        _check_token(item_id, "item_id", dataset)
    name = recbole_name(dataset)
    final = Path(out_dir) / name
    with atomic_dir(final, overwrite=True) as tmp:
        with open(tmp / f"{name}.inter", "w", encoding="utf-8") as handle:
            handle.write("user_id:token\titem_id:token\ttimestamp:float\n")
            for user in split.users:
                _check_token(user.user_id, "user_id", dataset)
                for position, item_id in enumerate((*user.train, user.valid, user.test)):
                    handle.write(f"{user.user_id}\t{item_id}\t{position}\n")
        with open(tmp / f"{name}.item", "w", encoding="utf-8") as handle:
            handle.write("item_id:token\n")
            handle.writelines(f"{item_id}\n" for item_id in dataset.items)
    return final


def _check_token(value: str, field: str, dataset: Dataset) -> None:
    if any(char in value for char in "\t\r\n"):
        raise DataError(
            f"{field} {value!r} in {dataset.path} contains a tab or line break, which RecBole's tab-separated atomic "
            "files cannot hold; rename it in the source data and re-run `llmrec data prepare`."
        )


def sasrec_config(dataset: Dataset, data_path: str | Path, work_dir: str | Path, seed: int = 42, **overrides):
    """RecBole `Config` for SASRec on the files `export_atomic(dataset, data_path)` wrote.

    Our settings (BENCHMARKS.md, our split, no filtering) come first; `overrides` replace any RecBole key.
    """
    _require_recbole()
    from recbole.config import Config

    settings = {
        # Our files and split, nothing filtered or de-duplicated.
        "data_path": str(data_path),
        "checkpoint_dir": str(Path(work_dir) / "checkpoints"),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]},
        "rm_dup_inter": None,
        "val_interval": None,
        "filter_inter_by_user_or_item": False,
        "user_inter_num_interval": "[0,inf)",
        "item_inter_num_interval": "[0,inf)",
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "repeatable": True,
        "MAX_ITEM_LIST_LENGTH": dataset.load_split().max_history,
        # Model and training.
        "loss_type": "CE",
        "train_neg_sample_args": None,
        "hidden_dropout_prob": 0.5,
        "attn_dropout_prob": 0.5,
        "learner": "adam",
        "learning_rate": 1e-3,
        "train_batch_size": 256,
        "epochs": 200,
        "stopping_step": 10,
        "metrics": ["Recall", "NDCG", "MRR"],
        "topk": list(KS),
        "valid_metric": "NDCG@10",
        "seed": seed,
        "reproducibility": True,
        "show_progress": False,
        **overrides,
    }
    cuda_visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        with mock.patch.object(sys, "argv", sys.argv[:1]):
            config = Config(model="SASRec", dataset=recbole_name(dataset), config_dict=settings)
    finally:
        if cuda_visible is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = cuda_visible
    if max(config["topk"]) > len(dataset.items):
        raise ValueError(
            f"RecBole evaluates the top {max(config['topk'])} items but {dataset.name} has {len(dataset.items)}; "
            "pass a smaller `topk` override."
        )
    return config


def load_recbole_data(config):
    """RecBole's dataset and its train / valid / test dataloaders, built by RecBole from the atomic files."""
    _require_recbole()
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    init_seed(config["seed"], config["reproducibility"])
    recbole_dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, recbole_dataset)
    return recbole_dataset, train_data, valid_data, test_data


def _rows(loader) -> dict[str, list[tuple[tuple[str, ...], str]]]:
    """`user_id -> [(history, target), ...]` for every row of a RecBole dataloader's dataset, as tokens."""
    data = loader.dataset
    config = data.config
    feat = data.inter_feat
    users = data.field2id_token[data.uid_field][feat[data.uid_field].numpy()]
    tokens = data.field2id_token[data.iid_field]
    targets = tokens[feat[data.iid_field].numpy()]
    lists = feat[config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]].numpy()  # (R, L)
    lengths = feat[config["ITEM_LIST_LENGTH_FIELD"]].numpy()  # (R,)
    rows: dict[str, list[tuple[tuple[str, ...], str]]] = {}
    for user_id, target, item_idxs, length in zip(users, targets, lists, lengths, strict=True):
        rows.setdefault(str(user_id), []).append((tuple(str(t) for t in tokens[item_idxs[:length]]), str(target)))
    return rows


def check_alignment(split: LeaveOneOutSplit, catalog: dict, recbole_dataset, train_data, valid_data, test_data):
    """Raise `DataError` unless RecBole's split is ours: same users and items (nothing filtered), and for every
    user the same test and validation history and target; the remaining rows must then be our training targets.
    """
    n_users, n_items = recbole_dataset.user_num - 1, recbole_dataset.item_num - 1  # id 0 is RecBole's padding
    if n_users != len(split.users) or n_items != len(catalog):
        raise DataError(
            f"RecBole kept {n_users} users and {n_items} items, our split has {len(split.users)} users and "
            f"{len(catalog)} catalog items; a RecBole filter is on (check the overrides)."
        )
    train_items = {user.user_id: len(user.train) for user in split.users}
    for name, loader in (("test", test_data), ("valid", valid_data)):
        rows = _rows(loader)
        for example in split.examples(name):
            ours = (example.history, example.target)
            theirs = rows.get(example.user_id, [])
            if not theirs and name == "valid" and train_items[example.user_id] == 1:
                raise DataError(
                    f"User {example.user_id!r} has a single training item: RecBole's leave-one-out needs two "
                    "rows before the test row and keeps this user's validation item for training. Prepare the "
                    "dataset with `llmrec data prepare ... --min-user 4` to compare SASRec on the same split."
                )
            if theirs != [ours]:
                raise DataError(
                    f"RecBole's {name} rows for user {example.user_id!r} are {theirs}, ours is {[ours]} "
                    "(history, target); the atomic files do not reproduce split.jsonl: re-export them with "
                    "`export_atomic`, and do not override MAX_ITEM_LIST_LENGTH or eval_args."
                )
    expected = sum(count - 1 for count in train_items.values())  # the first item of a sequence has no history
    if len(train_data.dataset) != expected:
        raise DataError(f"RecBole has {len(train_data.dataset)} training rows, our split gives {expected}.")


def make_trainer(config, model, work_dir: str | Path):
    """RecBole's trainer for `model`, its TensorBoard writer under `work_dir` instead of the working directory."""
    _require_recbole()
    import recbole.trainer.trainer as trainer_module
    from recbole.utils import get_trainer
    from torch.utils.tensorboard import SummaryWriter

    log_dir = str(Path(work_dir) / "tensorboard")
    with mock.patch.object(trainer_module, "get_tensorboard", lambda _logger: SummaryWriter(log_dir)):
        return get_trainer(config["MODEL_TYPE"], config["model"])(config, model)


def fit_sasrec(trainer, train_data, valid_data, max_seconds: float | None = None) -> dict:
    """Train epoch by epoch with RecBole's early stopping on its valid metric, for at most `config["epochs"]`
    epochs and, if `max_seconds` is set, until the epoch that crosses it ends. Loads the best-validation state
    into `trainer.model` and returns the training summary."""
    from recbole.utils import early_stopping

    config = trainer.config
    model = trainer.model
    best_score, bad_epochs, best_epoch, best_state, best_result = -np.inf, 0, -1, None, None
    history = []
    trainer.eval_collector.data_collect(train_data)
    started = time.perf_counter()
    for epoch in range(config["epochs"]):
        epoch_start = time.perf_counter()
        loss = trainer._train_epoch(train_data, epoch) / len(train_data)  # RecBole sums the batch losses
        trained = time.perf_counter()
        score, result = trainer._valid_epoch(valid_data)
        trainer.tensorboard.add_scalar("Loss/Train", loss, epoch)
        trainer.tensorboard.add_scalar(f"valid/{trainer.valid_metric}", score, epoch)
        best_score, bad_epochs, stop, improved = early_stopping(
            score, best_score, bad_epochs, max_step=config["stopping_step"], bigger=trainer.valid_metric_bigger
        )
        if improved:
            best_epoch, best_result = epoch, dict(result)
            best_state = {key: value.detach().clone() for key, value in model.state_dict().items()}
        history.append(
            {
                "epoch": epoch,
                "train_loss": round(float(loss), 6),
                f"valid_{trainer.valid_metric}": score,
                "train_s": round(trained - epoch_start, 3),
                "valid_s": round(time.perf_counter() - trained, 3),
            }
        )
        logger.info(
            "SASRec epoch %d: train loss %.4f (%.1f s), valid %s %.4f (%.1f s)%s",
            epoch,
            loss,
            trained - epoch_start,
            trainer.valid_metric,
            score,
            time.perf_counter() - trained,
            " *" if improved else "",
        )
        if stop:
            logger.info("Early stop: no valid improvement for %d epochs.", bad_epochs)
            break
        if max_seconds is not None and time.perf_counter() - started >= max_seconds:
            logger.info("Stopping after epoch %d: the %.0f s training budget is spent.", epoch, max_seconds)
            break
    model.load_state_dict(best_state)
    return {
        "train_time_s": round(time.perf_counter() - started, 3),
        "epochs_trained": len(history),
        "best_epoch": best_epoch,
        "best_valid_result": best_result,
        "history": history,
    }


@torch.no_grad()
def rank_examples(
    model,
    examples: Sequence[Example],
    item_tokens: Sequence[str],
    k: int,
    device="cpu",
    batch_size: int = 256,
    exclude_seen: bool = True,
) -> list[list[str]]:
    """Top-`k` item ids per example from `model.full_sort_predict`, never the padding item (index 0) nor, with
    `exclude_seen`, an item in `example.seen`; a list is shorter than `k` only when fewer items remain.

    Args:
        model: a RecBole sequential model (`ITEM_SEQ`, `ITEM_SEQ_LEN`, `max_seq_length`, `full_sort_predict`).
        item_tokens (`Sequence[str]`): RecBole's internal item index -> item id (`field2id_token["item_id"]`).
        exclude_seen (`bool`, *optional*, defaults to `True`): `False` ranks like RecBole's own evaluation of
            sequential models, for parity checks.
    """
    _require_recbole()
    from recbole.data.interaction import Interaction

    token_to_idx = {token: idx for idx, token in enumerate(item_tokens)}
    k = min(k, len(item_tokens) - 1)
    ranked = []
    for start in tqdm(range(0, len(examples), batch_size), desc="SASRec rank", unit="batch", mininterval=2.0):
        batch = examples[start : start + batch_size]
        item_seq = torch.zeros(len(batch), model.max_seq_length, dtype=torch.long)  # (B, L), 0-padded on the right
        for row, example in enumerate(batch):
            item_seq[row, : len(example.history)] = torch.tensor([token_to_idx[i] for i in example.history])
        lengths = torch.tensor([len(example.history) for example in batch])  # (B,)
        inputs = Interaction({model.ITEM_SEQ: item_seq, model.ITEM_SEQ_LEN: lengths}).to(device)
        scores = model.full_sort_predict(inputs).float()  # (B, N), N = catalog + padding
        scores[:, 0] = -torch.inf
        seen = [(row, token_to_idx[item_id]) for row, example in enumerate(batch) for item_id in example.seen]
        if seen and exclude_seen:
            rows, cols = zip(*seen, strict=True)
            scores[list(rows), list(cols)] = -torch.inf
        top = scores.topk(k, dim=1)  # values, indices: (B, k)
        for values, indices in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            ranked.append([item_tokens[idx] for value, idx in zip(values, indices, strict=True) if value > -np.inf])
    return ranked


def evaluate_sasrec(
    dataset: Dataset,
    split: SplitName = "test",
    seed: int = 42,
    epochs: int = 200,
    max_seconds: float | None = None,
    work_dir: str | Path | None = None,
    **overrides,
) -> dict:
    """Train SASRec (RecBole 1.2.1) on `dataset`'s split and evaluate it on the `split` examples, in the format of
    `eval.evaluate.evaluate_popularity` (full ranking, seen items excluded).

    Args:
        dataset (`Dataset`): a prepared dataset folder with its split; every user needs 4+ interactions.
        split (`str`, *optional*, defaults to `"test"`): `"valid"` or `"test"`.
        seed (`int`, *optional*, defaults to `42`): RecBole's seed (data order, initialisation, dropout).
        epochs (`int`, *optional*, defaults to `200`): epoch cap; early stopping usually ends training first.
        max_seconds (`float`, *optional*): wall-clock training budget; training stops after the epoch crossing it.
        work_dir (`str` or `Path`, *optional*): where the atomic files and RecBole's output go; a temporary
            folder, deleted afterwards, if not given.
        overrides: any RecBole setting, e.g. `hidden_size=64`, `stopping_step=10`, `train_batch_size=256`.

    Returns:
        `dict`: `model`, `dataset`, `split`, the `ranking_metrics` keys, `n_users`, `config`, `dataset_sha256`,
        `wall_time_s`, `train_time_s`, `epochs_trained`, `best_epoch`, `best_valid_ndcg10` (RecBole's valid
        NDCG@10 of the kept state, history not masked), `recbole_reported` (RecBole's own metrics on `split`,
        history not masked) and `epoch_log` (mean batch loss, valid score and seconds per epoch).
    """
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}.")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}.")
    _require_recbole()
    from recbole.utils import get_model, init_seed

    started = time.perf_counter()
    loo = dataset.load_split()
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="llmrec-sasrec-"))
        work_dir = Path(work_dir)
        atomic = export_atomic(dataset, work_dir / "atomic")
        config = sasrec_config(dataset, atomic.parent, work_dir, seed, epochs=epochs, **overrides)
        recbole_dataset, train_data, valid_data, test_data = load_recbole_data(config)
        check_alignment(loo, dataset.items, recbole_dataset, train_data, valid_data, test_data)
        logger.info(
            "RecBole split matches ours: %d users, %d items, %d training rows.",
            len(loo.users),
            len(dataset.items),
            len(train_data.dataset),
        )
        init_seed(config["seed"], config["reproducibility"])
        model = get_model(config["model"])(config, train_data.dataset).to(config["device"])
        trainer = make_trainer(config, model, work_dir)
        fit = fit_sasrec(trainer, train_data, valid_data, max_seconds)
        reported = trainer.evaluate(test_data if split == "test" else valid_data, load_best_model=False)
        trainer.tensorboard.close()

    examples = loo.examples(split)
    model.eval()
    ranked = rank_examples(
        model, examples, recbole_dataset.field2id_token["item_id"], min(max(KS), len(dataset.items)), config["device"]
    )
    metrics = ranking_metrics(ranked, [example.target for example in examples], dataset.items, ks=KS)
    return {
        "model": "sasrec",
        "dataset": dataset.name,
        "split": split,
        **metrics,
        "n_users": len(examples),
        "config": {
            **{key: config[key] for key in (*REPORTED_KEYS, *overrides)},
            "max_seconds": max_seconds,
            "exclude_seen": True,
            "max_history": loo.max_history,
            "recbole_version": RECBOLE_VERSION,
        },
        "dataset_sha256": dataset.meta["files"],
        "wall_time_s": round(time.perf_counter() - started, 3),
        "train_time_s": fit["train_time_s"],
        "epochs_trained": fit["epochs_trained"],
        "best_epoch": fit["best_epoch"],
        "best_valid_ndcg10": fit["best_valid_result"]["ndcg@10"],
        "recbole_reported": {key: float(value) for key, value in reported.items()},
        "epoch_log": fit["history"],
        **per_user_ranks([e.user_id for e in examples], ranked, [e.target for e in examples]),
    }
