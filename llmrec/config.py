"""Arguments of our own scripts, next to TRL's `SFTConfig` / `ModelConfig` (parsed together by `TrlParser`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmrec.prompting import EVAL_TASKS, TASKS

BASE_DTYPES = ("float32", "bfloat16")  # torch dtype names accepted for the frozen base weights in training
SID_INITS = ("mean", "text")  # starting rows of the SID tokens (llmrec.model)


def parse_task_mix(text: str) -> dict[str, int]:
    """`"seqrec=0,item2sid=2000"` -> `{"seqrec": 0, "item2sid": 2000}` (0 = every row).

    Examples:
        >>> parse_task_mix("seqrec=0, search=500")
        {'seqrec': 0, 'search': 500}
    """
    mix = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, limit = part.partition("=")
        if name not in TASKS or not limit.strip().isdigit():
            raise ValueError(f"task mix entry {part!r} must be task=max_rows with a task from {TASKS}.")
        mix[name] = int(limit)
    return mix


@dataclass
class SFTScriptArguments:
    """
    > Parameters of an llmrec SFT run that TRL's `SFTConfig` (training) and `ModelConfig` (model, LoRA) lack

    Args:
        dataset_dir (`str`): prepared dataset folder (`llmrec data prepare`).
        index_path (`str`): `sid_index.json` of that catalog (`llmrec index build`).
        tasks (`str`, *optional*): task mix, `task=max_rows` comma-separated (0 = all rows).
        max_history (`int`, *optional*, defaults to `20`): history items per prompt.
        chat (`bool`, *optional*, defaults to `True`): chat-formatted prompts (instruct models) or plain text.
        keep_layers (`int`, *optional*): keep only the first N decoder layers (faster, lower quality).
        base_dtype (`str`, *optional*, defaults to `"float32"`): dtype of the frozen decoder projection weights
            in training, `float32` or `bfloat16` (`llmrec.model.bf16_projections`: their matrix products run in bf16,
            faster on CPUs with bf16 units such as AVX512-BF16 or AMX; activations, norms, embeddings, LoRA and the
            SID rows stay fp32). Inference always runs the fp32 base.
        train_new_tokens (`bool`, *optional*, defaults to `True`): train the SID token rows of the embedding
            matrix (PEFT `trainable_token_indices`), on top of LoRA.
        resume (`bool`, *optional*, defaults to `False`): continue from the last checkpoint in `output_dir`.
        prompts_seed (`int`, *optional*, defaults to `42`): seed for sampling and paraphrase choice.
        eval_task (`str`, *optional*, defaults to `"seqrec"`): next-item task of the validation prompts and of
            inference: `seqrec` (history in the prompt) or `sequence` (the model continues the history's SIDs).
        item_separator (`str`, *optional*, defaults to `", "`): text between the SIDs of a list of items. SIDs have
            a fixed number of tokens, so `""` is unambiguous: with `", "` (two tokens) a 3-level SID costs 5 tokens
            per item, with `""` 3, which makes `sequence` training and prompt prefill about 1.6x cheaper.
        sid_softmax (`bool`, *optional*, defaults to `False`): normalise the next-token distribution over the run's
            output vocabulary (SID tokens, EOS and the training completions' other tokens) instead of the whole
            vocabulary, in training and in decoding: the LM head projects onto a few hundred rows instead of tens of
            thousands (`llmrec.sid_softmax`). Meant for task mixes whose answers are SIDs (`sequence`, `seqrec`).
        sequence_context (`int`, *optional*, defaults to `0`): `sequence` rows write the first N items of each run
            in the prompt as context, without loss, so every trained position sees at least N earlier items
            (`llmrec.prompting.sequence_windows`); needs `chat: false`.
        sequence_shifts (`int`, *optional*, defaults to `1`): `sequence` rows: cut every user's sequence N times,
            each cut's run boundaries moved a further 1/N of a run, so N times the distinct training rows
            (`llmrec.prompting.shifted_sequence_windows`).
        sid_init (`str`, *optional*, defaults to `"mean"`): starting rows of the SID tokens: `mean` (the vocabulary
            mean plus small noise) or `text` (from the LM embedding of the text of the items carrying each code,
            `llmrec.model.text_init_sid_rows`); `text` needs `train_new_tokens`, whose saved rows make the init
            irrelevant at inference.
    """

    dataset_dir: str = field(metadata={"help": "prepared dataset folder"})
    index_path: str = field(metadata={"help": "sid_index.json of the dataset's catalog"})
    tasks: str = field(
        default="seqrec=0,item2sid=0,sid2item=0,fusion=0,search=0",
        metadata={"help": "task mix: task=max_rows, comma-separated, 0 = all rows"},
    )
    max_history: int = field(default=20, metadata={"help": "history items per prompt"})
    chat: bool = field(default=True, metadata={"help": "chat-formatted prompts (instruct models)"})
    keep_layers: int | None = field(default=None, metadata={"help": "keep only the first N decoder layers"})
    base_dtype: str = field(
        default="float32", metadata={"help": "dtype of the frozen projection weights in training: float32 or bfloat16"}
    )
    train_new_tokens: bool = field(default=True, metadata={"help": "train the SID token embedding rows"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in output_dir"})
    prompts_seed: int = field(default=42, metadata={"help": "seed for prompt sampling and paraphrases"})
    eval_task: str = field(
        default="seqrec", metadata={"help": "next-item task for validation and inference: seqrec or sequence"}
    )
    item_separator: str = field(default=", ", metadata={"help": "text between the SIDs of a list of items"})
    sid_softmax: bool = field(
        default=False, metadata={"help": "softmax over the SID tokens (+ EOS) only, in training and decoding"}
    )
    sequence_context: int = field(
        default=0, metadata={"help": "sequence rows: context items (no loss) before each run's trained items"}
    )
    sequence_shifts: int = field(
        default=1, metadata={"help": "sequence rows: cuts per user sequence, each with its runs moved 1/N of a run"}
    )
    sid_init: str = field(
        default="mean",
        metadata={"help": "SID token rows start at the vocabulary mean (mean) or from item text (text)"},
    )

    def __post_init__(self) -> None:
        mix = parse_task_mix(self.tasks)
        if self.eval_task not in EVAL_TASKS or self.eval_task not in mix:
            raise ValueError(
                f"eval_task must be one of {EVAL_TASKS} and appear in the task mix, got {self.eval_task!r} "
                f"with tasks {self.tasks!r}."
            )
        if self.keep_layers is not None and self.keep_layers < 1:
            raise ValueError(f"keep_layers must be >= 1, got {self.keep_layers}.")
        if self.max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {self.max_history}.")
        if self.base_dtype not in BASE_DTYPES:
            raise ValueError(f"base_dtype must be one of {BASE_DTYPES}, got {self.base_dtype!r}.")
        if self.sid_init not in SID_INITS:
            raise ValueError(f"sid_init must be one of {SID_INITS}, got {self.sid_init!r}.")
        if self.sid_init == "text" and not self.train_new_tokens:
            raise ValueError(
                "sid_init text needs train_new_tokens true: untrained SID rows are rebuilt at the vocabulary mean "
                "when a run is loaded, so a text init would differ between training and inference."
            )
