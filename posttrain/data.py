"""Datasets for every stage: adapters from the recipe's `datasets` sources to `datasets.Dataset`s in TRL's
conversational formats, with every user row validated before a trainer starts.

A recipe's `datasets` is a list of sources, each a mapping:
  name    arithmetic | gsm8k | gsm8k_pairs | math500 | messages | preferences | prompts | reasoning_gym
  path    where the rows are, named as their users name them: a Hub dataset id (`openai/gsm8k`), a local
          jsonl / parquet / csv file, or a local dataset folder (a clone of the Hub repository, or what
          `save_to_disk` wrote). Relative paths start at the current directory. gsm8k defaults to
          `openai/gsm8k` (config main) and math500 to `HuggingFaceH4/MATH-500`; arithmetic is generated here.
  split   a dataset split (Hub ids and folders; arithmetic: train | validation | test), default train
          (math500: test). A single file is one split.
  config  a Hub dataset's configuration (subset), where it has several
  rows    cap on rows read (arithmetic: how many problems to generate, required)
  weight  the source's share of the mixture (give it on every source or none)
  levels  arithmetic levels, default [1, 2, 3]
  seed    default: the loader's seed
  task, options, level   reasoning_gym: the generator, its settings (difficulty) and the level to report under

Modes. A row is /think or /no_think, decided by `row_mode` alone from every field the template reads: a
`mode` column, `chat_template_kwargs.enable_thinking`, and a /think or /no_think flag in the first (system)
message (which the template lets win); fields that disagree are an error naming them. Rows that carry reasoning
and set no mode may go either way, and enough of them are made /no_think (their reasoning dropped, the final
answer kept) to bring the /no_think share to `no_think_fraction`; rows without reasoning are /no_think, or
refused where the recipe sets `require_reasoning` (mid-training: every row must carry a trace). A /think row
whose (chosen) reply has no reasoning would teach the model to skip thinking: refused unless the recipe sets
`allow_think_without_reasoning`. SFT and DPO rows carry the mode as a per-row
`chat_template_kwargs` column, which TRL passes to `apply_chat_template`; GRPO cannot, so RLVR/evaluation
prompts carry it as a system message that is exactly "/think" or "/no_think" (the template honours the flag).
A prompt may also be "/auto_think" (the model decides whether to think): a prompt source's `mode` key, or a
user prompt row's `mode`, fixes it; the mixture fills the other rows.

Reasoning travels in an assistant message's `reasoning_content` (the template writes it into the think
block), so deriving the /no_think version is dropping one field. The one exception is a rejected /no_think
answer that thinks on purpose: the template ignores `reasoning_content` in /no_think, so that think block
sits in the content.

Why jsonl is parsed here and not with `load_dataset("json")`: errors must name the 1-based line and the
field, and Arrow's schema inference fails on mixed types with messages that name neither. Everything else goes
through `datasets`. A Hub dataset is downloaded once and read from the cache after; offline (HF_HUB_OFFLINE=1,
or no network: then the Hub client retries for ~25 s first) an uncached one raises SourceUnavailable, which
stops a training stage before any work and makes evaluation skip that source with a line in its report.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from datasets import Dataset, Features, List, Value

from common.errors import UserError
from common.template import ALL_MODES, AUTO_MODE, MODES, THINK_CLOSE, THINK_OPEN, mode_system_message
from posttrain import task

logger = logging.getLogger(__name__)


class DataError(UserError):
    """Bad data or a bad `datasets` source: one line naming the file, row and field (or the recipe key)."""


ROLES = ("system", "user", "assistant", "tool")
# Named real datasets and where they live on the Hugging Face Hub: (dataset id, config, default split).
HUB_DEFAULTS = {
    "gsm8k": ("openai/gsm8k", "main", "train"),
    "math500": ("HuggingFaceH4/MATH-500", None, "test"),
}
NEEDS_PATH = ("gsm8k_pairs", "messages", "preferences", "prompts")  # names with no default dataset
SOURCE_NAMES = {  # the source names each loader reads: load_conversations, load_preferences, load_prompts
    "conversations": ("arithmetic", "gsm8k", "messages"),
    "preferences": ("arithmetic", "gsm8k_pairs", "preferences"),
    "prompts": ("arithmetic", "gsm8k", "math500", "reasoning_gym", "prompts"),
}
JSONL_SUFFIXES = (".jsonl", ".json")
# Other local files go through `datasets`' builder for their format.
FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")

# Tool calls as the template renders them; `arguments` is the JSON text (Arrow holds no free-form objects).
TOOL_CALL = {"type": Value("string"), "function": {"name": Value("string"), "arguments": Value("string")}}
TURN = {"role": Value("string"), "content": Value("string"), "reasoning_content": Value("string"),
        "tool_calls": List(TOOL_CALL)}
MESSAGE = {"role": Value("string"), "content": Value("string")}
MODE_KWARGS = {"enable_thinking": Value("bool")}
# A conversation's own template kwargs (SmolLM3's names): tool signatures for the system turn, instructions.
TOOLS_KWARGS = ("xml_tools", "python_tools")
CONVERSATION_KWARGS = {**MODE_KWARGS, **{k: List(Value("string")) for k in TOOLS_KWARGS},
                       "custom_instructions": Value("string")}
# `where` ("path: row N", or the generated problem) travels with every row, so a check made after mixing and
# shuffling (rows longer than max_length) still names the file and row.
WHERE = {"where": Value("string")}
CONVERSATION = Features({"messages": List(TURN), "mode": Value("string"), **WHERE,
                         "chat_template_kwargs": CONVERSATION_KWARGS})
PREFERENCE = Features(
    {"prompt": List(TURN), "chosen": List(TURN), "rejected": List(TURN), "mode": Value("string"), **WHERE}
)
# `gym`: for reasoning-gym rows, the JSON of how to rebuild the entry its own scorer reads (rewards.gym); else "".
PROMPT = Features(
    {"prompt": List(MESSAGE), "answer": Value("string"), "mode": Value("string"), "level": Value("int64"),
     "source": Value("string"), "gym": Value("string"), **WHERE}
)


class SourceUnavailable(DataError):
    """A Hub dataset that cannot be reached or found (offline and not cached, or no such id). Training stops on
    it; evaluation skips the source and says so."""


# ---------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class DatasetSource:
    name: str
    path: str | None = None  # a jsonl/parquet/csv file, a dataset folder, or a Hub dataset id
    split: str | None = None
    config: str | None = None  # the Hub dataset's configuration (subset), e.g. gsm8k's "main"
    rows: int | None = None
    weight: float | None = None
    levels: tuple[int, ...] = (1, 2, 3)
    seed: int | None = None
    task: str | None = None  # reasoning_gym: the generator's name (basic_arithmetic, chain_sum, countdown, ...)
    options: dict | None = None  # reasoning_gym: the generator's settings (its difficulty), e.g. {max_digits: 3}
    level: int | None = None  # reasoning_gym: the difficulty level these rows are reported under (None: none)
    mode: str | None = None  # prompt sources: every row in this mode (think, no_think, auto_think), not mixed

    @property
    def kind(self) -> str:
        """generated | jsonl | file (parquet, csv, arrow) | folder | hub: a path that is not here and reads as
        `owner/name` is a Hub dataset id."""
        if self.path is None:
            return "generated"
        path = Path(self.path).expanduser()
        if path.is_dir():
            return "folder"
        if path.suffix in FILE_BUILDERS:
            return "file"
        if path.exists() or path.suffix in JSONL_SUFFIXES or not HUB_ID.fullmatch(self.path):
            return "jsonl"
        return "hub"

    @property
    def label(self) -> str:
        """How messages name the source: its path (with config and split where a dataset has them) or name."""
        if self.kind in ("hub", "folder"):
            return f"{self.path} ({'/'.join(x for x in (self.config, self.split) if x)})"
        return self.path or (f"{self.name}/{self.task}" if self.task else self.name)


def parse_dataset_sources(sources, allowed: Iterable[str]) -> list[DatasetSource]:
    """Check the recipe's `datasets` list; errors name the entry and key (`datasets[1].weight`)."""
    allowed = tuple(allowed)
    if not isinstance(sources, (list, tuple)) or not sources:
        raise DataError("recipe key 'datasets': must be a non-empty list of sources ({name: ..., ...})")
    keys = [f.name for f in fields(DatasetSource)]
    parsed = []
    for i, spec in enumerate(sources):
        at = f"recipe key datasets[{i}]"
        if not isinstance(spec, dict):
            raise DataError(f"{at}: must be a mapping like {{name: gsm8k, rows: 200}}")
        for key in spec:
            if key not in keys:
                raise DataError(f"{at}.{key}: unknown key (known: {', '.join(keys)})")
        name = spec.get("name")
        if name not in allowed:
            raise DataError(f"{at}.name: {name!r} is not one of {', '.join(allowed)} (for this stage)")

        def check(key, ok, what):
            if key in spec and not ok(spec[key]):
                raise DataError(f"{at}.{key}: must be {what}, got {spec[key]!r}")

        is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
        is_text = lambda v: isinstance(v, str) and bool(v.strip())  # noqa: E731
        check("path", is_text, "a file path, a dataset folder or a Hub dataset id")
        check("split", is_text if name != "arithmetic" else lambda v: v in task.SPLITS,
              "a split name" if name != "arithmetic" else " | ".join(task.SPLITS))
        check("config", is_text, "a dataset configuration name")
        check("rows", lambda v: is_int(v) and v > 0, "a positive integer")
        check("weight", lambda v: (is_int(v) or isinstance(v, float)) and v > 0, "a positive number")
        check("levels", lambda v: isinstance(v, list) and v and all(is_int(x) and 0 <= x <= task.MAX_LEVEL for x in v),
              f"a list of levels (0..{task.MAX_LEVEL})")
        check("seed", is_int, "an integer")
        check("task", is_text, "a reasoning-gym task name")
        check("options", lambda v: isinstance(v, dict), "a mapping of the task's settings")
        check("level", lambda v: is_int(v) and v >= 0, "a non-negative integer")
        check("mode", lambda v: v in ALL_MODES, " | ".join(ALL_MODES))
        if name == "reasoning_gym":
            for key in ("path", "config", "split", "levels"):
                if key in spec:
                    raise DataError(f"{at}.{key}: reasoning-gym problems are generated; it takes no {key}")
            for key in ("task", "rows"):
                if key not in spec:
                    raise DataError(f"{at}.{key}: reasoning_gym needs {key}")
        else:
            for key in ("task", "options", "level"):
                if key in spec:
                    raise DataError(f"{at}.{key}: applies to reasoning_gym only, not {name}")
        if name == "arithmetic":
            for key in ("path", "config"):
                if key in spec:
                    raise DataError(f"{at}.{key}: arithmetic problems are generated; it takes no {key}")
            if "rows" not in spec:
                raise DataError(f"{at}.rows: arithmetic needs rows (how many problems to generate)")
        elif "levels" in spec:
            raise DataError(f"{at}.levels: applies to arithmetic only, not {name}")
        if "path" not in spec and name in NEEDS_PATH:
            raise DataError(f"{at}.path: {name} needs a path (a jsonl file, a dataset folder or a Hub dataset id)")
        hub_id, config, split = HUB_DEFAULTS.get(name, (None, None, None if name == "reasoning_gym" else "train"))
        source = DatasetSource(**{"path": hub_id, **spec, "levels": tuple(spec.get("levels", DatasetSource.levels))})
        if source.kind in ("jsonl", "file"):
            for key in ("split", "config"):
                if key in spec:
                    raise DataError(f"{at}.{key}: {source.path} is one file, with no {key}s (they apply to dataset "
                                    "folders and Hub ids)")
        else:  # a generated, folder or Hub source: its split (and the named dataset's config) by default
            source = replace(source, split=source.split or split, config=source.config or config)
        parsed.append(source)
    weighted = [s.weight is not None for s in parsed]
    if any(weighted) and not all(weighted):
        raise DataError(f"recipe key datasets[{weighted.index(False)}].weight: give a weight on every source or none")
    return parsed


def read_rows(source: DatasetSource) -> Iterator[tuple[str, dict]]:
    """(where, row) for the first `rows` rows of a file-backed source; `where` names the file (or dataset and
    split) and the 1-based row. jsonl is parsed here (see the module docstring); everything else is loaded with
    `datasets` (a Hub id is downloaded once and read from the cache after, also offline)."""
    if source.kind == "jsonl":
        yield from read_jsonl(source.path, source.rows)
        return
    dataset = load_source_dataset(source)
    for i, row in enumerate(dataset.select(range(min(source.rows or len(dataset), len(dataset))))):
        yield f"{source.label}: row {i + 1}", row


def load_source_dataset(source: DatasetSource) -> Dataset:
    """The `datasets.Dataset` behind a file, folder or Hub source (see `_loading` for the errors)."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    path = source.path if source.kind == "hub" else str(Path(source.path).expanduser())
    with _loading(source):
        if source.kind == "file":
            return load_dataset(FILE_BUILDERS[Path(path).suffix], data_files=path, split="train")
        if source.kind == "folder" and any((Path(path) / f).is_file() for f in ("state.json", "dataset_dict.json")):
            saved = load_from_disk(path)  # written by Dataset(Dict).save_to_disk
            return saved[source.split] if isinstance(saved, DatasetDict) else saved
        return load_dataset(path, source.config, split=source.split)


@contextlib.contextmanager
def _loading(source: DatasetSource):
    """`datasets` errors as one line naming the source: a Hub dataset that cannot be reached (offline and not
    cached) or found is SourceUnavailable; a config or split the dataset lacks, or an unreadable file, DataError."""
    try:
        yield
    except ConnectionError as e:
        raise SourceUnavailable(f"{source.label}: cannot be loaded from the Hugging Face Hub ({_first_line(e)}); "
                                "run once online to cache it, or point 'path' at a local copy") from None
    except FileNotFoundError as e:  # datasets' DatasetNotFoundError: no such id (or a private one)
        raise SourceUnavailable(f"{source.label}: no such local path or Hub dataset ({_first_line(e)})") from None
    except (ValueError, KeyError, OSError) as e:
        raise DataError(f"{source.label}: cannot load ({_first_line(e)})") from None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def check_available(sources, allowed: Iterable[str]) -> list[DatasetSource]:
    """Parse `sources` and check, without reading their rows, that each can be loaded: local files and folders
    exist, Hub datasets resolve (cached or reachable). Raises SourceUnavailable / DataError naming the first
    that cannot; returns the parsed sources. The pipeline runs it on every stage before the first one starts."""
    from datasets import load_dataset_builder

    parsed = parse_dataset_sources(sources, allowed)
    for source in parsed:
        if source.kind == "hub":
            with _loading(source):
                load_dataset_builder(source.path, source.config)
        elif source.kind in ("jsonl", "file") and not Path(source.path).expanduser().is_file():
            raise DataError(f"{source.path}: data file not found (relative paths start at {Path.cwd()})")
    return parsed


def loadable(sources, allowed: Iterable[str]) -> tuple[list[dict], list[str]]:
    """The recipe's source specs split into those that can be loaded and one line per source that cannot
    (SourceUnavailable: a Hub dataset offline and not cached). For evaluation, which goes on without them; any
    other bad source still raises."""
    parse_dataset_sources(sources, allowed)
    kept, skipped = [], []
    for spec in sources:
        try:
            check_available([spec], allowed)
            kept.append(spec)
        except SourceUnavailable as e:
            skipped.append(str(e))
    return kept, skipped


def read_jsonl(path: str, rows: int | None = None) -> Iterator[tuple[str, dict]]:
    """(where, row) for the first `rows` JSON objects of a jsonl file; `where` is "path: row N" (1-based line)."""
    if not Path(path).is_file():
        raise DataError(f"{path}: data file not found (relative paths start at {Path.cwd()})")
    taken = 0
    # Bytes decoded line by line: a text-mode reader decodes ahead in blocks, so a bad byte would be reported
    # on an earlier row.
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, 1):
            if rows is not None and taken >= rows:
                return
            where = f"{path}: row {line_no}"
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")  # a BOM may open the file
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not UTF-8 text (byte {raw[e.start]:#04x} at byte {e.start + 1} of the "
                                "line)") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: a row must be a JSON object")
            taken += 1
            yield where, row


def _string(row: dict, where: str, field: str, label: str | None = None) -> str:
    """`row[field]` as a non-empty string (numbers are written out); errors name `label` or the field."""
    value = row.get(field)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field '{label or field}': missing or not a non-empty string")
    return value


def _mode(row: dict, where: str, allowed: Sequence[str] = MODES) -> str | None:
    mode = row.get("mode")
    if mode is not None and mode not in allowed:
        raise DataError(f"{where}: field 'mode': must be {' or '.join(allowed)}, got {mode!r}")
    return mode


# ------------------------------------------------------------------------------------------- messages


def split_think(text: str) -> tuple[str | None, str]:
    """`<think>\\nR\\n</think>\\nA` -> (R, A); text without a think block -> (None, text)."""
    if THINK_OPEN not in text and THINK_CLOSE not in text:
        return None, text
    match = re.fullmatch(rf"\s*{re.escape(THINK_OPEN)}(.*?){re.escape(THINK_CLOSE)}\s*(.*)", text, flags=re.DOTALL)
    if not match or THINK_OPEN in match.group(2) or THINK_CLOSE in match.group(2):
        raise ValueError(f"malformed think block (expected {THINK_OPEN}...{THINK_CLOSE} then the answer)")
    return match.group(1).strip(), match.group(2)


def _turn(role: str, content: str, reasoning: str | None = None, tool_calls: list[dict] | None = None) -> dict:
    return {"role": role, "content": content, "reasoning_content": reasoning, "tool_calls": tool_calls}


def _tool_calls(value, at: str) -> list[dict] | None:
    """An assistant turn's `tool_calls` (OpenAI style `{type, function: {name, arguments}}`, or `{name,
    arguments}`) normalised to the TOOL_CALL shape; `arguments` an object or its JSON text."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise DataError(f"{at}.tool_calls': must be a non-empty list of {{name, arguments}} calls")
    calls = []
    for j, call in enumerate(value):
        call = call.get("function", call) if isinstance(call, dict) else call
        name, arguments = (call.get("name"), call.get("arguments", {})) if isinstance(call, dict) else (None, None)
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{at}.tool_calls[{j}].name': missing or not a non-empty string")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as e:
                raise DataError(f"{at}.tool_calls[{j}].arguments': not valid JSON ({e.msg})") from None
        if not isinstance(arguments, dict):
            raise DataError(f"{at}.tool_calls[{j}].arguments': must be a JSON object")
        # json.dumps' separators are those of the template's `tojson`: the text renders as an object would
        arguments = json.dumps(arguments, ensure_ascii=False)
        calls.append({"type": "function", "function": {"name": name, "arguments": arguments}})
    return calls


def parse_messages(value, where: str, field: str = "messages", need_assistant: bool = True) -> list[dict]:
    """Validate a message list and normalise it to {role, content, reasoning_content, tool_calls}, a think block
    in an assistant's content moved to `reasoning_content` (other message keys are not used by the template).
    A `tool` turn (a tool's result; the template renders it as a user turn) must answer an assistant's calls."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field '{field}': must be a non-empty list of {{role, content}} messages")
    turns = []
    for i, message in enumerate(value):
        at = f"{where}: field '{field}[{i}]"
        if not isinstance(message, dict):
            raise DataError(f"{at}': must be an object with role and content")
        role, content, reasoning = message.get("role"), message.get("content"), message.get("reasoning_content")
        if role not in ROLES:
            raise DataError(f"{at}.role': unknown role {role!r} (allowed: {', '.join(ROLES)})")
        if not isinstance(content, str):
            raise DataError(f"{at}.content': must be a string, got {type(content).__name__}")
        if reasoning is not None and (role != "assistant" or not isinstance(reasoning, str)):
            raise DataError(f"{at}.reasoning_content': must be a string on an assistant message")
        if message.get("tool_calls") is not None and role != "assistant":
            raise DataError(f"{at}.tool_calls': only an assistant message calls tools")
        if role == "tool" and not (turns and (turns[-1]["tool_calls"] or turns[-1]["role"] == "tool")):
            raise DataError(f"{at}.role': a tool result must follow an assistant message with tool_calls")
        calls = _tool_calls(message.get("tool_calls"), at)
        if role == "assistant":
            try:
                inline, content = split_think(content)
            except ValueError as e:
                raise DataError(f"{at}.content': {e}") from None
            if inline is not None and reasoning:
                raise DataError(f"{at}.content': both reasoning_content and a {THINK_OPEN} block")
            reasoning = (inline if inline is not None else reasoning or "").strip() or None
            if not content.strip() and not calls:
                raise DataError(f"{at}.content': empty assistant content (no answer after the reasoning)")
        turns.append(_turn(role, content, reasoning, calls))
    if need_assistant and not any(t["role"] == "assistant" for t in turns):
        raise DataError(f"{where}: field '{field}': no assistant turn")
    return turns


def _conversation_kwargs(row: dict, where: str) -> dict:
    """The template kwargs a user row brings: `xml_tools` / `python_tools` (tool signatures for the system
    turn: objects, rendered as the template renders them, or strings) and `custom_instructions`, at the top
    level or in a `chat_template_kwargs` object (SmolTalk2's layout; its `enable_thinking` is read by
    `row_mode`)."""
    nested = row.get("chat_template_kwargs") or {}
    if not isinstance(nested, dict):
        raise DataError(f"{where}: field 'chat_template_kwargs': must be an object")
    kwargs = {}
    for key in (*TOOLS_KWARGS, "custom_instructions"):
        label = key if key in row else f"chat_template_kwargs.{key}"
        value = row.get(key, nested.get(key))
        if key == "custom_instructions":
            if value is not None and not isinstance(value, str):
                raise DataError(f"{where}: field '{label}': must be a string")
        elif value is not None:
            if not isinstance(value, list) or not all(isinstance(t, (dict, str)) for t in value):
                raise DataError(f"{where}: field '{label}': must be a list of tool signatures (objects or strings)")
            value = [t if isinstance(t, str) else str(t) for t in value]  # what the template's `tool | string` writes
        kwargs[key] = value
    return kwargs


def system_flag(turns: list[dict]) -> str | None:
    """The mode a first system message sets, read as the template reads it: "/no_think" anywhere in its text
    wins, then "/auto_think", then "/think"; any overrides `enable_thinking`."""
    if not turns or turns[0]["role"] != "system":
        return None
    text = turns[0]["content"]
    flags = [mode for mode in ("no_think", AUTO_MODE, "think") if f"/{mode}" in text]
    return flags[0] if flags else None


def row_mode(row: dict, where: str, turns: list[dict], field: str, replies: list[tuple[str, dict]],
             require_reasoning: bool = False) -> str | None:
    """The mode of a user row, decided here only, from every field the template reads: `mode`,
    `chat_template_kwargs.enable_thinking` and a /think or /no_think flag in the first (system) message of
    `turns` (`field`). Fields that disagree are an error naming them. With none: None (either way, filled by
    `assign_modes`) when a reply (`(field, turn)`) reasons, else no_think -- or, with `require_reasoning`, an
    error (only an explicit no_think exempts a row). A reasoning reply in /no_think is an error: the template
    would drop the reasoning."""
    said = []
    if _mode(row, where) is not None:
        said.append(("mode", row["mode"]))
    nested = row.get("chat_template_kwargs") or {}
    thinking = nested.get("enable_thinking") if isinstance(nested, dict) else None
    if thinking is not None:
        if not isinstance(thinking, bool):
            raise DataError(f"{where}: field 'chat_template_kwargs.enable_thinking': must be true or false")
        said.append(("chat_template_kwargs.enable_thinking", "think" if thinking else "no_think"))
    if system_flag(turns):
        said.append((f"{field}[0].content", system_flag(turns)))
    for label, mode in said[1:]:
        if mode != said[0][1]:
            raise DataError(f"{where}: field '{label}': says /{mode}, but field '{said[0][0]}' says /{said[0][1]}")
    mode = said[0][1] if said else None
    if mode == AUTO_MODE:  # the row shows its own choice: a reply with reasoning thinks, one without answers directly
        return mode
    if mode == "no_think":
        for label, turn in replies:
            if turn["reasoning_content"]:
                raise DataError(f"{where}: field '{label}.content': a {THINK_OPEN} block in a /no_think answer")
        return mode
    if require_reasoning:
        for label, turn in replies:
            if not turn["reasoning_content"]:
                raise DataError(f"{where}: field '{label}': /think assistant turn without reasoning")
    if mode is None and not any(turn["reasoning_content"] for _, turn in replies):
        return "no_think"
    return mode


def _assistant_turns(turns: list[dict], field: str) -> list[tuple[str, dict]]:
    return [(f"{field}[{i}]", t) for i, t in enumerate(turns) if t["role"] == "assistant"]


def think_without_reasoning(row: dict) -> str | None:
    """The field of the first trained reply of a /think row that carries no reasoning (it trains "think mode,
    no thinking"), or None. Preference rows: the chosen reply only (a rejected one may skip thinking on
    purpose)."""
    if row["mode"] != "think":
        return None
    field = "messages" if "messages" in row else "chosen"
    return next((label for label, t in _assistant_turns(row[field], field) if not t["reasoning_content"]), None)


def _check_think_reasoning(ds: Dataset, allow: bool) -> None:
    if allow:
        return
    for row in ds:
        label = think_without_reasoning(row)
        if label:
            raise DataError(f"{row['where']}: field '{label}': a /think reply without reasoning; give it "
                            "reasoning_content, make the row mode: no_think, or set "
                            "allow_think_without_reasoning: true")


# ------------------------------------------------------------------------------------- modes & mixing


def _check_fraction(no_think_fraction: float) -> None:
    if not 0.0 <= no_think_fraction <= 1.0:
        raise DataError(f"recipe key 'no_think_fraction': must be between 0 and 1, got {no_think_fraction!r}")


def assign_modes(modes: Sequence[str | None], no_think_fraction: float, seed: int) -> list[str]:
    """Fill the None (either-way) modes so that the /no_think share of the /think and /no_think rows is as close
    to the fraction as the fixed rows allow (/auto_think rows are neither); a seeded sample picks which rows."""
    flexible = [i for i, m in enumerate(modes) if m is None]
    manual = sum(m != AUTO_MODE for m in modes)
    target = round(no_think_fraction * manual)
    fixed_no_think = sum(m == "no_think" for m in modes)
    k = min(max(target - fixed_no_think, 0), len(flexible))
    no_think = set(random.Random(seed).sample(flexible, k))
    out = [m or ("no_think" if i in no_think else "think") for i, m in enumerate(modes)]
    got = out.count("no_think")
    if got != target:
        logger.warning(
            "no_think_fraction %.2f asks for %d /no_think rows of %d; the rows' own modes allow %d",
            no_think_fraction, target, manual, got,
        )
    return out


def _apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Integer counts summing to `total`, proportional to `weights` (largest remainder)."""
    exact = [total * w / sum(weights) for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def mix(sources_with_weights: Sequence[tuple[list[dict], float]], total_rows: int, seed: int) -> list[dict]:
    """`total_rows` rows with each source's share exactly its weight's share, a source repeated (each row
    the same number of times, ±1) when its share exceeds its size, shuffled (the permutations of
    `Dataset.shuffle(seed=seed)`). `interleave_datasets` draws sources at random and stops when one runs out, so
    it can hit neither the shares nor the total exactly. Mixed as lists, before the one `Dataset` is built: a
    shuffled `Dataset` must be rewritten in its new order (`flatten_indices`), 10 s for SFT's 19,200 rows."""
    counts = _apportion(total_rows, [w for _, w in sources_with_weights])
    picked = []
    for (rows, _), k in zip(sources_with_weights, counts):
        if k and not rows:
            raise DataError("mixture: an empty dataset cannot fill a share")
        if k > len(rows):
            logger.info("mixture: %d rows repeated to fill a share of %d", len(rows), k)
        order = np.random.default_rng(seed).permutation(len(rows))
        picked += [rows[order[i % len(rows)]] for i in range(k)]
    return [picked[i] for i in np.random.default_rng(seed).permutation(len(picked))]


Adapter = Callable[[DatasetSource], Iterable[dict]]


def _combine(sources, adapters: dict[str, Adapter], features: Features, seed: int) -> Dataset:
    parts = []
    for source in parse_dataset_sources(sources, adapters):
        if source.mode and features is not PROMPT and not (features is CONVERSATION and source.mode == AUTO_MODE):
            raise DataError(f"{source.label}: key 'mode' fixes the mode of prompt sources (rlvr, eval), and makes "
                            "conversations auto_think; conversations and preferences take /think or /no_think from "
                            "each row")
        rows = [{key: row.get(key) for key in features} for row in adapters[source.name](source)]  # absent: None
        for row in rows if source.mode else []:
            row["mode"] = source.mode
        if not rows:
            raise DataError(f"{source.label}: no rows (the file is empty or holds only blank lines)"
                            if source.kind == "jsonl" else f"{source.label}: no rows")
        parts.append((source, rows))
    if parts[0][0].weight is not None:
        combined = mix([(part, s.weight) for s, part in parts], sum(len(part) for _, part in parts), seed)
    else:
        combined = [row for _, part in parts for row in part]
    return Dataset.from_list(combined, features=features)


def _with_modes(ds: Dataset, no_think_fraction: float, seed: int) -> Dataset:
    modes = assign_modes(list(ds["mode"]), no_think_fraction, seed)
    return ds.remove_columns("mode").add_column("mode", modes)


def _drop_reasoning(turns: list[dict], think: bool) -> list[dict]:
    return turns if think else [{**t, "reasoning_content": None} for t in turns]


def _auto_think_turns(turns: list[dict], think: bool) -> list[dict]:
    """An /auto_think conversation showing one of the two choices: its reasoning kept (it thinks) or dropped (the
    template writes the empty think block: it answers directly). The flag goes in the system message, added when
    the row has none and replacing a /think or /no_think flag there (the source's mode wins)."""
    turns = _drop_reasoning(turns, think)
    if system_flag(turns) == AUTO_MODE:
        return turns
    if turns[0]["role"] != "system":
        return [mode_system_message(AUTO_MODE), *turns]
    text = turns[0]["content"].replace("/no_think", "").replace("/think", "").rstrip()
    return [{**turns[0], "content": f"{text} /{AUTO_MODE}".lstrip()}, *turns[1:]]


# -------------------------------------------------------------------------------------------- adapters


def _source_seed(source: DatasetSource, seed: int) -> int:
    return seed if source.seed is None else source.seed


def _problems(source: DatasetSource, seed: int) -> Iterator[tuple[str, task.Problem]]:
    """(where, problem) for the source's generated problems; `where` names the generator call and the problem."""
    seed = _source_seed(source, seed)
    problems = task.generate(source.split, source.rows, seed=seed, levels=source.levels)
    for i, problem in enumerate(problems):
        yield f"arithmetic (split {source.split}, seed {seed}): problem {i + 1}", problem


def _boxed_sentence(answer: str) -> str:
    return f"The answer is \\boxed{{{answer}}}."


def _final_number(text: str, marker: str) -> str | None:
    """The number on the last line after `marker` ("####" in GSM8K, "A:" in its model solutions)."""
    last = text.strip().splitlines()[-1] if text.strip() else ""
    if not last.startswith(marker):
        return None
    number = last[len(marker):].strip().replace(",", "")
    return number if re.fullmatch(r"-?\d+(\.\d+)?", number) else None


def _clean_solution(text: str) -> str:
    """A GSM8K solution without its `<<48/2=24>>` calculator notes and final answer line."""
    return re.sub(r"<<[^>]*>>", "", "\n".join(text.strip().splitlines()[:-1])).strip()


def _gsm8k_rows(source: DatasetSource) -> Iterator[tuple[str, str, str, str]]:
    """(where, question, cleaned solution, answer) for GSM8K rows."""
    for where, row in read_rows(source):
        question, solution = _string(row, where, "question"), _string(row, where, "answer")
        answer = _final_number(solution, "####")
        if answer is None:
            raise DataError(f"{where}: field 'answer': no final '#### N' line")
        yield where, question, _clean_solution(solution), answer


def _arithmetic_conversations(source: DatasetSource, seed: int) -> Iterator[dict]:
    for where, p in _problems(source, seed):
        reply = _turn("assistant", task.completion(p, "no_think"), p.reasoning)
        yield {"messages": [_turn("user", p.question), reply], "mode": None, "where": where}


def _gsm8k_conversations(source: DatasetSource) -> Iterator[dict]:
    for where, question, reasoning, answer in _gsm8k_rows(source):
        reply = _turn("assistant", _boxed_sentence(answer), reasoning or None)
        yield {"messages": [_turn("user", question), reply], "mode": None if reasoning else "no_think", "where": where}


def _user_conversations(source: DatasetSource, require_reasoning: bool) -> Iterator[dict]:
    for where, row in read_rows(source):
        if "messages" not in row:
            raise DataError(f"{where}: field 'messages': missing")
        turns = parse_messages(row["messages"], where)
        kwargs = _conversation_kwargs(row, where)
        mode = row_mode(row, where, turns, "messages", _assistant_turns(turns, "messages"), require_reasoning)
        yield {"messages": turns, "mode": mode, "where": where, "chat_template_kwargs": kwargs}


def _arithmetic_pairs(source: DatasetSource, seed: int, no_think_fraction: float) -> Iterator[dict]:
    """Half the pairs: right vs plausibly wrong answer; half: right vs the mode broken (a think block in
    /no_think, no reasoning in /think). Modes are fixed here, since what is rejected depends on them."""
    problems = list(_problems(source, seed))
    seed = _source_seed(source, seed)
    rng = random.Random(f"{seed}/pairs")
    for (where, p), mode in zip(problems, assign_modes([None] * len(problems), no_think_fraction, seed)):
        think, boxed = mode == "think", task.completion(p, "no_think")
        chosen = _turn("assistant", boxed, p.reasoning if think else None)
        if rng.random() < 0.5:
            rejected = {**chosen, "content": f"\\boxed{{{task.wrong_answer(p, rng)}}}"}
        elif think:
            rejected = _turn("assistant", boxed)
        else:
            rejected = _turn("assistant", task.completion(p, "think"))
        yield {"prompt": [_turn("user", p.question)], "chosen": [chosen], "rejected": [rejected], "mode": mode,
               "where": where}


def _gsm8k_pairs(source: DatasetSource) -> Iterator[dict]:
    """GSM8K model solutions (`example_model_solutions.jsonl`): each right solution against each wrong one
    of the same question, when both end in an `A: N` line with different answers. These are TEST questions:
    never evaluate on GSM8K test after training on them."""
    for where, row in read_rows(source):
        question = _string(row, where, "question")
        right, wrong = [], []
        for key, value in row.items():
            if key in ("question", "ground_truth"):
                continue
            if not isinstance(value, dict) or not isinstance(value.get("is_correct"), bool):
                raise DataError(f"{where}: field '{key}': must be {{is_correct: bool, solution: str}}")
            solution = _string(value, where, "solution", f"{key}.solution")
            answer = _final_number(solution, "A:")
            if answer is not None:  # a few solutions ran out of tokens before answering
                turn = _turn("assistant", _boxed_sentence(answer), _clean_solution(solution))
                (right if value["is_correct"] else wrong).append((answer, turn))
        for good, chosen in right:
            for bad, rejected in wrong:
                if good != bad:
                    prompt = [_turn("user", question)]
                    mode = None if chosen["reasoning_content"] else "no_think"
                    yield {"prompt": prompt, "chosen": [chosen], "rejected": [rejected], "mode": mode, "where": where}


def _completion_field(row: dict, where: str, field: str) -> list[dict]:
    value = row.get(field)
    if isinstance(value, str):
        value = [{"role": "assistant", "content": value}]
    turns = parse_messages(value, where, field)
    if len(turns) != 1 or turns[0]["role"] != "assistant":
        raise DataError(f"{where}: field '{field}': must be one assistant message (or a string)")
    return turns


def _prompt_field(row: dict, where: str, reserved_system: bool = False) -> list[dict]:
    value = row.get("prompt")
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    turns = parse_messages(value, where, "prompt", need_assistant=False)
    if turns[-1]["role"] not in ("user", "tool"):
        raise DataError(f"{where}: field 'prompt': must end with a user turn")
    if reserved_system and any(t["role"] == "system" for t in turns):
        raise DataError(f"{where}: field 'prompt': no system message (it carries the /think or /no_think flag)")
    return turns


def _user_pairs(source: DatasetSource) -> Iterator[dict]:
    """User pairs keep their mode (`row_mode`), else /think when the chosen answer reasons. They are not
    re-derived, since a pair's point usually lies in its reasoning."""
    for where, row in read_rows(source):
        prompt = _prompt_field(row, where)
        chosen, rejected = _completion_field(row, where, "chosen"), _completion_field(row, where, "rejected")
        if chosen == rejected:
            raise DataError(f"{where}: field 'rejected': same as 'chosen'")
        mode = row_mode(row, where, prompt, "prompt", [("chosen[0]", chosen[0])]) or "think"
        if mode == AUTO_MODE:
            raise DataError(f"{where}: field 'prompt[0].content': /auto_think preference rows are not supported")
        if mode == "no_think" and rejected[0]["reasoning_content"]:  # the template ignores reasoning_content here
            reasoning, answer = rejected[0]["reasoning_content"], rejected[0]["content"]
            rejected = [_turn("assistant", f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n{answer}")]
        yield {"prompt": prompt, "chosen": chosen, "rejected": rejected, "mode": mode, "where": where}


def _prompt_row(where: str, prompt: str | list[dict], answer: str, level: int | None, source: str,
                mode: str | None = None, gym: str = "") -> dict:
    """A prompt row before its mode is known; a string prompt is one user turn."""
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    return {"prompt": prompt, "answer": answer, "mode": mode, "level": level, "source": source, "gym": gym,
            "where": where}


def _arithmetic_prompts(source: DatasetSource, seed: int) -> Iterator[dict]:
    for where, p in _problems(source, seed):
        yield _prompt_row(where, p.question, p.answer, p.level, "arithmetic")


def _gsm8k_prompts(source: DatasetSource) -> Iterator[dict]:
    for where, question, _, answer in _gsm8k_rows(source):
        yield _prompt_row(where, question, answer, None, "gsm8k")


def _math500_prompts(source: DatasetSource) -> Iterator[dict]:
    for where, row in read_rows(source):
        yield _prompt_row(where, _string(row, where, "problem"), _string(row, where, "answer"), None, "math500")


def _gym_prompts(source: DatasetSource, seed: int) -> Iterator[dict]:
    """reasoning-gym problems, generated offline from the task, its options and the seed; each row carries what
    its own scorer needs (`rewards.gym`)."""
    from rewards import gym

    spec = {"task": source.task, "options": source.options or {}, "seed": _source_seed(source, seed),
            "size": source.rows}
    try:
        dataset = gym.dataset(json.dumps(spec, sort_keys=True))
    except gym.GymError as e:
        raise DataError(f"{source.label}: {e}") from None
    for i, entry in enumerate(dataset):
        where = f"reasoning_gym {source.task} (seed {spec['seed']}): problem {i + 1}"
        yield _prompt_row(where, entry["question"], str(entry["answer"]), source.level, f"reasoning_gym/{source.task}",
                          gym=json.dumps({**spec, "index": i}, sort_keys=True))


def _user_prompts(source: DatasetSource) -> Iterator[dict]:
    """User prompts: `prompt` (a string or user/assistant/tool messages), `answer`, optional `mode`;
    the file's stem is the `source` label."""
    for where, row in read_rows(source):
        prompt = [{"role": t["role"], "content": t["content"]} for t in _prompt_field(row, where, reserved_system=True)]
        yield _prompt_row(where, prompt, _string(row, where, "answer"), 0, Path(source.path).stem,
                          _mode(row, where, ALL_MODES))


# ----------------------------------------------------------------------------------------------- loaders


def load_conversations(sources, *, no_think_fraction: float, seed: int, require_reasoning: bool = False,
                       allow_think_without_reasoning: bool = False) -> Dataset:
    """SFT / mid-training rows: `messages`, `mode`, `where`, `chat_template_kwargs` (`enable_thinking`, and the
    row's own `xml_tools`, `python_tools`, `custom_instructions` or None). Sources: arithmetic, gsm8k, messages
    (user rows with `messages`: optional `reasoning_content` or `<think>` blocks in assistant turns, assistant
    `tool_calls` and `tool` results; optional `mode`, tools and instructions, see `_conversation_kwargs`).

    A source with `mode: auto_think` gives /auto_think rows (`_auto_think_turns`), a seeded `no_think_fraction`
    of them answering directly and the rest thinking, whatever the problem: they teach the adaptive mode's two
    formats. A user row whose system message says /auto_think keeps its own choice (its reply reasons or not):
    `posttrain route` writes such rows, choosing by what the checkpoint answers right without thinking."""
    _check_fraction(no_think_fraction)
    adapters = {
        "arithmetic": functools.partial(_arithmetic_conversations, seed=seed),
        "gsm8k": _gsm8k_conversations,
        "messages": functools.partial(_user_conversations, require_reasoning=require_reasoning),
    }
    ds = _with_modes(_combine(sources, adapters, CONVERSATION, seed), no_think_fraction, seed)
    _check_think_reasoning(ds, allow_think_without_reasoning)
    # /auto_think rows that did not flag it themselves (a source's `mode`) show a seeded choice; flagged ones their own
    auto = [i for i, mode in enumerate(ds["mode"]) if mode == AUTO_MODE and system_flag(ds[i]["messages"]) != AUTO_MODE]
    direct = set(random.Random(f"{seed}/{AUTO_MODE}").sample(auto, round(no_think_fraction * len(auto))))

    def render(row, i):
        think = row["mode"] == "think" or (row["mode"] == AUTO_MODE and i not in direct)
        kwargs = {**(row["chat_template_kwargs"] or {}), "enable_thinking": think}
        turns = _auto_think_turns if row["mode"] == AUTO_MODE else _drop_reasoning
        return {"messages": turns(row["messages"], think), "chat_template_kwargs": kwargs}

    return ds.map(render, with_indices=True, features=CONVERSATION)


def load_preferences(sources, *, no_think_fraction: float, seed: int,
                     allow_think_without_reasoning: bool = False) -> Dataset:
    """DPO rows in TRL's conversational preference format: `prompt` (the user turn), `chosen`, `rejected`
    (one assistant message each), `chat_template_kwargs`, `mode`. Sources: arithmetic (right vs wrong
    answer, and mode violations), gsm8k_pairs (right vs wrong model solution), preferences (user jsonl
    with `prompt`, `chosen`, `rejected` as strings or message lists, optional `mode`)."""
    _check_fraction(no_think_fraction)
    adapters = {
        "arithmetic": functools.partial(_arithmetic_pairs, seed=seed, no_think_fraction=no_think_fraction),
        "gsm8k_pairs": _gsm8k_pairs,
        "preferences": _user_pairs,
    }
    ds = _with_modes(_combine(sources, adapters, PREFERENCE, seed), no_think_fraction, seed)
    _check_think_reasoning(ds, allow_think_without_reasoning)

    def render(row):
        think = row["mode"] == "think"
        return {
            "chosen": _drop_reasoning(row["chosen"], think),
            "rejected": _drop_reasoning(row["rejected"], think),
            "chat_template_kwargs": {"enable_thinking": think},
        }

    return ds.map(render, features=Features({**PREFERENCE, "chat_template_kwargs": MODE_KWARGS}))


def load_prompts(sources, *, no_think_fraction: float, seed: int) -> Dataset:
    """RLVR and evaluation prompts: `prompt` (a system message that is exactly "/think", "/no_think" or "/auto_think",
    then the question), `answer` (gold, str), `mode`, `level` (arithmetic level, None otherwise), `source`.
    `gym` (see PROMPT). Sources: arithmetic, gsm8k, math500 (`problem`, `answer`), reasoning_gym (generated by
    the `reasoning-gym` package), prompts (user jsonl)."""
    _check_fraction(no_think_fraction)
    adapters = {
        "arithmetic": functools.partial(_arithmetic_prompts, seed=seed),
        "gsm8k": _gsm8k_prompts,
        "math500": _math500_prompts,
        "reasoning_gym": functools.partial(_gym_prompts, seed=seed),
        "prompts": _user_prompts,
    }
    ds = _with_modes(_combine(sources, adapters, PROMPT, seed), no_think_fraction, seed)
    return ds.map(lambda row: {"prompt": [mode_system_message(row["mode"])] + row["prompt"]})


# ----------------------------------------------------------------------------------- length & record


def _renders(row: dict) -> list[tuple[str, list[dict], dict]]:
    """What a row renders to, as (field, messages, extra template kwargs): a preference row both its sides."""
    if "messages" in row:
        return [("messages", row["messages"], {})]
    if "chosen" in row:
        return [(f"prompt + {side}", row["prompt"] + row[side], {}) for side in ("chosen", "rejected")]
    return [("prompt", row["prompt"], {"add_generation_prompt": True})]


def _rendered_lengths(rows: list[dict], tokenizer) -> list[tuple[int, str]]:
    """(tokens, the field that made them) of each row rendered with its mode's template kwargs (a preference row:
    its longer side). Rendered row by row (each has its own kwargs), then tokenized in one batched call: the same
    ids as `apply_chat_template(tokenize=True)` per row, in half the time."""
    renders = [_renders(row) for row in rows]
    texts = [tokenizer.apply_chat_template(messages, tokenize=False, **(row.get("chat_template_kwargs") or {}), **extra)
             for row, parts in zip(rows, renders) for _, messages, extra in parts]
    lengths = iter(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return [max((next(lengths), field) for field, _, _ in parts) for parts in renders]


def drop_overlong(dataset: Dataset, tokenizer, max_length: int, policy: str = "drop") -> tuple[Dataset, dict]:
    """Rows longer than `max_length` tokens once rendered with the tokenizer's template (per-row
    `chat_template_kwargs`; preference rows: prompt+chosen and prompt+rejected; prompt rows: the prompt
    with the generation prompt). policy "drop": drop them and log the count per mode loudly; "error": raise
    naming the first. Why: TRL truncates such rows and silently drops those whose assistant span is cut
    away entirely -- which once removed every /think row of a run (a long system text on a tiny vocabulary).
    Returns (dataset, rows dropped per mode)."""
    if policy not in ("drop", "error"):
        raise DataError(f"recipe key 'overlong_policy': must be drop or error, got {policy!r}")
    keep, dropped, total = [], dict.fromkeys(ALL_MODES, 0), dict.fromkeys(ALL_MODES, 0)
    rows = dataset.to_list()
    for i, (row, (n, field)) in enumerate(zip(rows, _rendered_lengths(rows, tokenizer))):
        total[row["mode"]] += 1
        if n <= max_length:
            keep.append(i)
        elif policy == "error":
            raise DataError(f"{row['where']}: field '{field}': {n} tokens rendered in /{row['mode']} mode > "
                            f"max_length {max_length} (overlong_policy: error)")
        else:
            dropped[row["mode"]] += 1
    if any(dropped.values()):
        logger.warning(
            "DROPPED rows longer than max_length=%d tokens: %d of %d /think rows, %d of %d /no_think rows",
            max_length, dropped["think"], total["think"], dropped["no_think"], total["no_think"],
        )
    dropped = {mode: n for mode, n in dropped.items() if mode in MODES or total[mode]}
    return (dataset if len(keep) == len(dataset) else dataset.select(keep)), dropped


def dataset_fingerprint(dataset: Dataset) -> str:
    """A hash of the dataset's columns and rows, in order: the same data gives the same value in any process
    (`Dataset._fingerprint` also hashes how the data was made, and is random for some transforms)."""
    digest = hashlib.sha256(json.dumps(dataset.column_names).encode())
    for batch in dataset.iter(batch_size=1000):
        digest.update(json.dumps(batch, sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------ stage datasets

# What each stage kind's recipe sources are called in its errors: midtrain and sft read conversations, dpo
# preferences, rlvr prompts.
SOURCE_WORDS = {"conversations": "data source", "preferences": "preference source", "prompts": "prompt source"}


def stage_dataset(name: str, kind: str, script, tokenizer, *, seed: int,
                  max_length: int | None) -> tuple[Dataset, dict]:
    """A stage's rows, from its recipe to its trainer: the `datasets` sources of `script` (the stage's
    `StageArguments`) loaded, validated and mixed by `kind`'s loader (conversations: `load_conversations`,
    preferences: `load_preferences`, prompts: `load_prompts`), then the rows longer than `max_length` dropped
    (or refused, per `overlong_policy`) before TRL would truncate them, the rows per mode counted and logged,
    and a failure if a mode the mixture asks for is left empty.

    Returns (dataset, the `data` section of posttrain_run.json: fingerprint, rows and dropped rows per mode
    (prompts without a length limit: dropped None), and for conversations and preferences the /think rows
    without reasoning that `allow_think_without_reasoning` let through)."""
    if not script.datasets:
        raise UserError(f"recipe key 'datasets': list at least one {SOURCE_WORDS[kind]}")
    mixture = dict(no_think_fraction=script.no_think_fraction, seed=seed)
    if kind == "conversations":
        dataset = load_conversations(script.datasets, **mixture, require_reasoning=script.require_reasoning,
                                     allow_think_without_reasoning=script.allow_think_without_reasoning)
    elif kind == "preferences":
        dataset = load_preferences(script.datasets, **mixture,
                                   allow_think_without_reasoning=script.allow_think_without_reasoning)
    else:
        dataset = load_prompts(script.datasets, **mixture)
    dropped = None if kind == "prompts" else dict.fromkeys(MODES, 0)
    if max_length is not None:
        dataset, dropped = drop_overlong(dataset, tokenizer, max_length, script.overlong_policy)
    counts = rows_per_mode(dataset)
    limit = "max_prompt_length" if kind == "prompts" else "max_length"
    logger.info("%s: rows per mode %s; dropped as longer than %s=%s: %s", name, counts, limit, max_length, dropped)
    require_modes(counts, script.no_think_fraction, f"{name} datasets", dropped)
    record = {"fingerprint": dataset_fingerprint(dataset), "rows_per_mode": counts, "dropped_per_mode": dropped}
    if kind != "prompts":
        record["think_without_reasoning"] = sum(bool(think_without_reasoning(row)) for row in dataset)
    return dataset, record


def rows_per_mode(dataset: Dataset) -> dict[str, int]:
    """Rows per mode: think and no_think always, auto_think when there are such rows."""
    counts = Counter(dataset["mode"]) if len(dataset) else Counter()
    return {mode: counts.get(mode, 0) for mode in ALL_MODES if mode in MODES or counts.get(mode)}


def require_modes(counts: dict[str, int], no_think_fraction: float, where: str, dropped: dict | None = None) -> None:
    """Fail when a mode the mixture asks for has no rows left (a model that never sees a /think row trains
    happily and then never thinks). A mixture that never had a /think or /no_think row, all /auto_think (the model
    picks the mode), asks for neither."""
    if counts.get(AUTO_MODE) and not any(counts.get(m) or (dropped or {}).get(m) for m in MODES):
        return
    wanted = [m for m, share in (("think", 1 - no_think_fraction), ("no_think", no_think_fraction)) if share > 0]
    empty = [m for m in wanted if counts.get(m, 0) == 0]
    if empty:
        raise UserError(
            f"{where}: no {'/'.join(empty)} rows left after dropping overlong rows (rows per mode: {counts}); "
            "raise max_length or shorten the system text (e.g. recipe key 'default_instructions')"
        )
