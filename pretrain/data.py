"""Pretraining data: tokenize once into flat token files, then read random packed windows from them.

Why not `datasets` + `DataLoader`: rows would be cut once, with their position ids and labels stored beside
them (3x the bytes) or rebuilt per batch, a weighted multi-source mixture needs its own sampler, and a
resumable sampler replays or stores its permutation, so it grows slower with the step count. Here every batch
is a pure function of (seed, rank, step, micro-batch): a numpy generator draws how many rows each source gives
by the stage's weights and a random offset per row into that source's token file, and the rows are one
fancy-indexed read of a memmap. O(1) per sample at any step, nothing to replay on resume, a different stream per
data-parallel rank (bench/pretrain_loader.py measures it).

On disk, per source (`<data_dir>/<name>.*`):
- `.bin`      the documents' token ids back to back (uint16 when the vocabulary fits, else uint32); each
              document starts with the tokenizer's bos token when it has one;
- `.idx.npy`  int64 document start offsets, plus the total token count as the last entry;
- `.json`     dtype, counts and the fingerprint (source files' size/mtime or the generator's code and
              arguments, plus the tokenizer's hash) that decides whether the files are stale. Written
              last: a tokenization killed half-way leaves no `.json` and is redone.

Rows pack several documents. `position_ids` restart at 0 at each document start and the label of each
document's first token is -100, so with no `attention_mask` (and `use_cache=False`) transformers builds a
block-diagonal mask: no token attends to or predicts across a document boundary.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import inspect
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Literal

import numpy as np
import torch

from common.errors import UserError
from common.template import with_default_instructions
from common.tokenizers import load_pretrained_tokenizer
from pretrain import generators

SOURCE_TYPES = ("text", "jsonl", "generator")
SOURCE_KEYS = {"name", "type", "path", "field", "separator", "generator", "kwargs"}
STAGE_KEYS = {"name", "tokens", "weights"}
TOKENIZER_SPEC_KEYS = {"files", "vocab_size", "texts", "repeat_texts", "sources", "default_instructions"}
ENCODE_BATCH = 1000  # documents per tokenizer call: batched in Rust, bounded memory
STAMP_FILE = "pretrain_tokenizer_spec.json"  # in a trained tokenizer's directory: what it was trained from


@dataclass
class DataConfig:
    """Recipe keys for the data: tokenizer, sources, curriculum stages, packing."""

    tokenizer: dict | str = field(
        metadata={
            "help": "A tokenizer directory, or a spec to train a byte-level BPE into <output_dir>/tokenizer: "
            "{files: [text files], vocab_size: N, texts: [extra strings, e.g. a rendered chat-template sample], "
            "repeat_texts: N (BPE merges follow frequency: a sample seen once barely changes the vocabulary), "
            "sources: [source names whose documents are added to the training text], default_instructions: "
            "{think: text, no_think: text} (the chat template's instructions when a conversation brings none; "
            "unset: SmolLM3's, which a small vocabulary spells in hundreds of tokens)}."
        }
    )
    sources: list[dict] = field(
        default_factory=list,
        metadata={
            "help": "Named data sources, each {name, type: text|jsonl|generator, ...}. text: {path (file or glob), "
            "separator (optional; splits a file into documents, else one document per file)}; jsonl: {path, "
            "field (default 'text')}, one document per row; generator: {generator: NAME, kwargs: {...}}, a registered "
            "generator (pretrain/generators.py: web, arithmetic, or a plugin's) returning str documents. Paths "
            "resolve against the current directory."
        },
    )
    stages: list[dict] = field(
        default_factory=list,
        metadata={
            "help": "Curriculum stages in order, each {name, tokens, weights: {source: share}}; shares sum to 1. "
            "`tokens` is the stage's budget (a number, or a string with a K/M/B/T suffix); the stage switches "
            "when the run has consumed it."
        },
    )
    seq_len: int = field(default=1024, metadata={"help": "Tokens per packed training row."})
    data_dir: str | None = field(
        default=None,
        metadata={"help": "Where token files go (share it between runs); default <output_dir>/tokens."},
    )
    token_dtype: Literal["auto", "uint16", "uint32"] = field(
        default="auto",
        metadata={"help": "Token file dtype: auto = uint16 when the vocabulary fits (<= 65536 ids), else uint32."},
    )

    def __post_init__(self):
        for key in ("sources", "stages"):
            if not getattr(self, key):
                raise UserError(f"recipe key {key!r}: give at least one")
        self.source_list = parse_corpus_sources(self.sources)
        self.stage_list = parse_stages(self.stages, [s.name for s in self.source_list])
        if isinstance(self.tokenizer, dict):
            check_tokenizer_spec(self.tokenizer, [s.name for s in self.source_list])


# ---------------------------------------------------------------- recipe parsing (structure only, no I/O)


@dataclass
class CorpusSource:
    """One pretraining corpus of the recipe's `sources` (text files, JSONL or a generator), tokenized to its own
    token files. Not posttrain.data's sources, which are row datasets for the post-training stages."""

    name: str
    type: str
    path: str | None = None
    field: str = "text"
    separator: str | None = None
    generator: str | None = None  # a name in pretrain.generators.registry()
    kwargs: dict = dataclasses.field(default_factory=dict)  # `field` is a source key here


@dataclass
class Stage:
    name: str
    tokens: int
    weights: dict[str, float]


def parse_count(value, where: str) -> int:
    """8e12, 8000000000000 or '8T' -> int (K/M/B/T are powers of 1000)."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([KMBT]?)\s*", value, re.I)
        if not m:
            raise UserError(f"{where}: {value!r} is not a token count (e.g. 2000000, 2e6 or '2M')")
        value = float(m.group(1)) * 1000 ** " KMBT".index((m.group(2) or " ").upper())
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise UserError(f"{where}: must be a positive token count, got {value!r}")
    return int(value)


def parse_corpus_sources(raw: list) -> list[CorpusSource]:
    sources, names = [], set()
    for i, spec in enumerate(raw):
        where = f"recipe key 'sources[{i}]'"
        if not isinstance(spec, dict):
            raise UserError(f"{where}: must be a mapping, got {spec!r}")
        unknown = set(spec) - SOURCE_KEYS
        if unknown:
            raise UserError(f"{where}: unknown field {sorted(unknown)[0]!r} (fields: {', '.join(sorted(SOURCE_KEYS))})")
        name = spec.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise UserError(f"{where}: field 'name' must be a file-name-safe string, got {name!r}")
        if name in names:
            raise UserError(f"{where}: duplicate source name {name!r}")
        names.add(name)
        kind = spec.get("type")
        if kind not in SOURCE_TYPES:
            raise UserError(f"{where} ({name}): field 'type' must be one of {', '.join(SOURCE_TYPES)}, got {kind!r}")
        need = "generator" if kind == "generator" else "path"
        if not isinstance(spec.get(need), str) or not spec[need]:
            raise UserError(f"{where} ({name}): type {kind} needs field {need!r}")
        if kind == "generator":
            generators.resolve(spec["generator"], f"{where} ({name}) field 'generator'")
        if not isinstance(spec.get("kwargs", {}), dict):
            raise UserError(f"{where} ({name}): field 'kwargs' must be a mapping")
        sources.append(CorpusSource(**{"field": "text", **spec}))
    return sources


def parse_stages(raw: list, source_names: list[str]) -> list[Stage]:
    stages = []
    for i, spec in enumerate(raw):
        where = f"recipe key 'stages[{i}]'"
        if not isinstance(spec, dict):
            raise UserError(f"{where}: must be a mapping, got {spec!r}")
        unknown = set(spec) - STAGE_KEYS
        if unknown:
            raise UserError(f"{where}: unknown field {sorted(unknown)[0]!r} (fields: {', '.join(sorted(STAGE_KEYS))})")
        name = str(spec.get("name", f"stage{i + 1}"))
        weights = spec.get("weights")
        if not isinstance(weights, dict) or not weights:
            raise UserError(f"{where} ({name}): field 'weights' must be a mapping of source name to share")
        for src, w in weights.items():
            if src not in source_names:
                raise UserError(
                    f"{where} ({name}): weights name unknown source {src!r} (sources: {', '.join(source_names)})"
                )
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise UserError(f"{where} ({name}): weight of {src!r} must be a number >= 0, got {w!r}")
        total = sum(weights.values())
        if abs(total - 1) > 1e-6:
            raise UserError(f"{where} ({name}): weights sum to {total:g}, not 1")
        stages.append(Stage(name, parse_count(spec.get("tokens"), f"{where} ({name}) field 'tokens'"), dict(weights)))
    return stages


def check_tokenizer_spec(spec: dict, source_names: list[str]) -> None:
    unknown = set(spec) - TOKENIZER_SPEC_KEYS
    if unknown:
        raise UserError(
            f"recipe key 'tokenizer': unknown field {sorted(unknown)[0]!r} "
            f"(fields: {', '.join(sorted(TOKENIZER_SPEC_KEYS))})"
        )
    if "vocab_size" not in spec:
        raise UserError("recipe key 'tokenizer': field 'vocab_size' is required to train a tokenizer")
    for key in ("vocab_size", "repeat_texts"):
        value = spec.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"recipe key 'tokenizer': field {key!r} must be a positive integer, got {value!r}")
    for key in ("files", "texts", "sources"):
        if not isinstance(spec.get(key, []), list):
            raise UserError(f"recipe key 'tokenizer': field {key!r} must be a list")
    for name in spec.get("sources", []):
        if name not in source_names:
            raise UserError(f"recipe key 'tokenizer': field 'sources' names unknown source {name!r}")
    with_default_instructions(spec.get("default_instructions"))  # raises on a malformed mapping


# ---------------------------------------------------------------- reading documents


def source_files(source: CorpusSource) -> list[Path]:
    """The source's files, checked: missing or empty files name the file and the source."""
    matches = sorted(glob.glob(source.path)) if glob.has_magic(source.path) else [source.path]
    if not matches:
        raise UserError(f"source {source.name!r}: field 'path': no file matches {source.path}")
    for f in matches:
        if not Path(f).is_file():
            raise UserError(f"{f}: source {source.name!r} field 'path': file not found")
        if Path(f).stat().st_size == 0:
            raise UserError(f"{f}: source {source.name!r} field 'path': file is empty")
    return [Path(f) for f in matches]


def check_source(source: CorpusSource) -> None:
    """Fail before anything is written: files exist and are not empty, generators import, and the source
    has a non-blank document (reading up to the first one; a generator is called)."""
    if next(iter_documents(source), None) is None:
        raise UserError(f"source {source.name!r} ({source.path or source.generator}): no non-blank documents")


# A generator's documents when it returns them all at once (a list or tuple), kept for the process: a run reads each
# source three times (input check, tokenizer, token files) and the tiny recipe's 60,000 arithmetic documents take
# ~1.4 s to make. One that yields lazily is called on each read: keeping its documents could exceed memory.
_GENERATED: dict[tuple[str, str], list | tuple] = {}


def _generated(source: CorpusSource) -> tuple[str, Iterable]:
    """("module:function", its documents) of a generator source."""
    target, function = generators.resolve(source.generator, f"source {source.name!r} field 'generator'")
    key = (target, json.dumps(source.kwargs, sort_keys=True))
    if key not in _GENERATED:
        documents = function(**source.kwargs)
        if not isinstance(documents, (list, tuple)):
            return target, documents
        _GENERATED[key] = documents
    return target, _GENERATED[key]


def iter_documents(source: CorpusSource) -> Iterator[str]:
    """The source's documents as strings (blank ones skipped); bad rows name file, row and field."""
    if source.type == "generator":
        target, documents = _generated(source)
        for i, doc in enumerate(documents):
            if not isinstance(doc, str):
                raise UserError(f"source {source.name!r}: {target} item {i} is {type(doc).__name__}, not str")
            if doc.strip():
                yield doc
        return
    for path in source_files(source):
        if source.type == "text":
            text = path.read_text(encoding="utf-8", errors="replace")
            yield from (d for d in (text.split(source.separator) if source.separator else [text]) if d.strip())
            continue
        with open(path, encoding="utf-8") as fh:
            for row, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)[source.field]
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}: row {row}: not valid JSON ({e.msg})") from None
                except (KeyError, TypeError):
                    raise UserError(f"{path}: row {row}: field {source.field!r} is missing") from None
                if not isinstance(value, str):
                    raise UserError(f"{path}: row {row}: field {source.field!r} must be a string")
                if value.strip():
                    yield value


def check_inputs(data: DataConfig) -> None:
    """Every check that needs no writing: sources (each with a non-blank document), the tokenizer directory
    or spec files, the token dtype against the vocabulary size. Run before `prepare`."""
    from pretrain.tokenizer import bpe_size

    for source in data.source_list:
        check_source(source)
    if isinstance(data.tokenizer, str):
        if not (Path(data.tokenizer) / "tokenizer_config.json").is_file():
            raise UserError(f"{data.tokenizer}: recipe key 'tokenizer': not a tokenizer directory")
        return
    for f in data.tokenizer.get("files", []):
        if not Path(f).is_file() or Path(f).stat().st_size == 0:
            raise UserError(f"{f}: recipe key 'tokenizer' field 'files': file is missing or empty")
    token_dtype(bpe_size(data.tokenizer["vocab_size"]), data.token_dtype)


# ---------------------------------------------------------------- tokenize once


def token_dtype(vocab: int, requested: str = "auto") -> np.dtype:
    """The token files' dtype for a `vocab`-token vocabulary."""
    if requested == "uint16" and vocab > 2**16:
        raise UserError(
            f"recipe key 'token_dtype': uint16 cannot hold the ids of a {vocab:,}-token vocabulary "
            "(max 65,536); use auto or uint32"
        )
    if requested == "auto":
        requested = "uint16" if vocab <= 2**16 else "uint32"
    return np.dtype(requested)


def tokenizer_hash(tokenizer) -> str:
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def file_stamp(path: Path) -> list:
    return [str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns]


def source_fingerprint(source: CorpusSource) -> dict:
    """What a source's documents come from: its spec plus its files' size/mtime or its generator's code."""
    fp = {"source": dict(source.__dict__)}
    if source.type == "generator":
        _, function = generators.resolve(source.generator, f"source {source.name!r} field 'generator'")
        fp["code"] = hashlib.sha256(Path(inspect.getfile(function)).read_bytes()).hexdigest()[:16]
    else:
        fp["files"] = [file_stamp(f) for f in source_files(source)]
    return json.loads(json.dumps(fp))


def token_file_fingerprint(source: CorpusSource, tokenizer, dtype: np.dtype) -> dict:
    """What the token files were made from; any change makes them stale."""
    return {**source_fingerprint(source), "tokenizer": tokenizer_hash(tokenizer), "dtype": dtype.name}


def token_paths(data_dir: Path, name: str) -> tuple[Path, Path, Path]:
    return data_dir / f"{name}.bin", data_dir / f"{name}.idx.npy", data_dir / f"{name}.json"


def is_fresh(data_dir: Path, source: CorpusSource, tokenizer, dtype: np.dtype) -> bool:
    meta = token_paths(data_dir, source.name)[2]
    if not meta.is_file():
        return False
    return json.loads(meta.read_text()).get("fingerprint") == token_file_fingerprint(source, tokenizer, dtype)


def tokenize_source(source: CorpusSource, tokenizer, data_dir: Path, dtype: np.dtype) -> dict:
    """Write the source's token file and document index (temp names, renamed when complete)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    bin_path, idx_path, meta_path = token_paths(data_dir, source.name)
    tmp_bin, tmp_idx = bin_path.with_suffix(".bin.tmp"), data_dir / f"{source.name}.idx.tmp.npy"
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    starts, total = [], 0

    def write(fh, docs):
        nonlocal total
        for encoding in tokenizer.backend_tokenizer.encode_batch(docs, add_special_tokens=False):
            arr = np.asarray(bos + encoding.ids, dtype=dtype)
            starts.append(total)
            total += len(arr)
            fh.write(arr.tobytes())

    try:
        with open(tmp_bin, "wb") as fh:
            batch = []
            for doc in iter_documents(source):
                batch.append(doc)
                if len(batch) == ENCODE_BATCH:
                    write(fh, batch)
                    batch = []
            if batch:
                write(fh, batch)
        if total == 0:
            raise UserError(f"source {source.name!r}: no non-empty documents")
        np.save(tmp_idx, np.asarray(starts + [total], dtype=np.int64))
    except BaseException:
        tmp_bin.unlink(missing_ok=True)
        tmp_idx.unlink(missing_ok=True)
        raise
    meta_path.unlink(missing_ok=True)  # no .json until the new pair is in place: a kill here means "stale"
    os.replace(tmp_bin, bin_path)
    os.replace(tmp_idx, idx_path)
    meta = {
        "fingerprint": token_file_fingerprint(source, tokenizer, dtype), "dtype": dtype.name,
        "tokens": total, "documents": len(starts), "vocab_size": len(tokenizer),
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def tokenize(sources: list[CorpusSource], tokenizer, data_dir: Path, dtype: np.dtype, log=print) -> None:
    """Tokenize every source whose files are missing or stale."""
    for source in sources:
        if is_fresh(data_dir, source, tokenizer, dtype):
            continue
        meta = tokenize_source(source, tokenizer, data_dir, dtype)
        log(f"tokenized {source.name}: {meta['documents']:,} documents, {meta['tokens']:,} tokens -> {data_dir}")


# ---------------------------------------------------------------- the tokenizer


def tokenizer_stamp(data: DataConfig) -> dict:
    """What a tokenizer spec trains from: the spec and its files' and sources' fingerprints."""
    by_name = {s.name: s for s in data.source_list}
    return json.loads(json.dumps({
        "spec": data.tokenizer,
        "files": [file_stamp(Path(f)) for f in data.tokenizer.get("files", [])],
        "sources": [source_fingerprint(by_name[n]) for n in data.tokenizer.get("sources", [])],
    }))


def load_tokenizer(data: DataConfig, tokenizer_dir: Path):
    """The recipe's tokenizer as it exists, writing nothing: the `tokenizer` directory (checked for the hybrid
    tokens), or the one trained from the spec into `tokenizer_dir` while the spec and its inputs are
    unchanged; None when the spec's tokenizer is still to be trained."""
    from common.template import SPECIAL_TOKENS, attach_template, is_project_template

    if isinstance(data.tokenizer, str):
        tok = load_pretrained_tokenizer(data.tokenizer)
        if not tok.is_fast:
            raise UserError(f"{data.tokenizer}: recipe key 'tokenizer': needs a fast tokenizer (tokenizer.json)")
        for t in SPECIAL_TOKENS:
            if len(tok(t, add_special_tokens=False)["input_ids"]) != 1:
                raise UserError(
                    f"{data.tokenizer}: recipe key 'tokenizer': {t!r} is not a single token; "
                    "build one with `pretrain tokenizer`"
                )
        return tok if is_project_template(tok.chat_template) else attach_template(tok)
    stamp_file = tokenizer_dir / STAMP_FILE
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == tokenizer_stamp(data):
        return load_pretrained_tokenizer(tokenizer_dir)
    return None


def prepare_tokenizer(data: DataConfig, tokenizer_dir: Path):
    """`load_tokenizer`, else the spec's tokenizer trained into `tokenizer_dir`."""
    from pretrain.tokenizer import train_bpe

    tok = load_tokenizer(data, tokenizer_dir)
    if tok is not None:
        return tok
    spec = data.tokenizer
    by_name = {s.name: s for s in data.source_list}
    texts = list(spec.get("texts", [])) * spec.get("repeat_texts", 1)
    texts += [doc for name in spec.get("sources", []) for doc in iter_documents(by_name[name])]
    tmp = tokenizer_dir.with_name(tokenizer_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    train_bpe(spec.get("files", []), spec["vocab_size"], tmp, texts=texts,
              default_instructions=spec.get("default_instructions"))
    (tmp / STAMP_FILE).write_text(json.dumps(tokenizer_stamp(data), indent=1))
    shutil.rmtree(tokenizer_dir, ignore_errors=True)
    os.replace(tmp, tokenizer_dir)
    return load_pretrained_tokenizer(tokenizer_dir)


def data_dir_of(data: DataConfig, work_dir: Path) -> Path:
    return Path(data.data_dir) if data.data_dir else Path(work_dir) / "tokens"


def prepare(data: DataConfig, work_dir: Path, log=print):
    """The tokenizer (trained once) and the token files (made when missing or stale); returns the tokenizer.
    It writes: callers run `check_inputs` first (and, in a run with checkpoints, the resume check)."""
    tokenizer = prepare_tokenizer(data, Path(work_dir) / "tokenizer")
    dtype = token_dtype(len(tokenizer), data.token_dtype)
    tokenize(data.source_list, tokenizer, data_dir_of(data, work_dir), dtype, log)
    return tokenizer


# ---------------------------------------------------------------- O(1) packed windows


class TokenFile:
    """One source's memmapped tokens and document starts, checked against each other on open."""

    def __init__(self, data_dir: Path, name: str, min_tokens: int):
        bin_path, idx_path, meta_path = token_paths(Path(data_dir), name)
        if not meta_path.is_file():
            raise UserError(f"{meta_path}: token files of source {name!r} not found; run `pretrain tokenize` first")
        meta = json.loads(meta_path.read_text())
        if not bin_path.is_file() or not idx_path.is_file():
            raise UserError(f"{bin_path}: token file or its index {idx_path.name} is missing; run `pretrain tokenize`")
        self.name, self.dtype = name, np.dtype(meta["dtype"])
        self.starts = np.load(idx_path, mmap_mode="r", allow_pickle=False)
        n_bytes = bin_path.stat().st_size
        n_index = int(self.starts[-1]) if len(self.starts) else -1
        n_docs = len(self.starts) - 1
        if n_bytes != n_index * self.dtype.itemsize or n_index != meta["tokens"] or n_docs != meta["documents"]:
            raise UserError(
                f"{bin_path}: holds {n_bytes // self.dtype.itemsize:,} tokens but its index {idx_path.name} says "
                f"{n_index:,} ({meta['tokens']:,} in {meta_path.name}); delete the files and re-run `pretrain tokenize`"
            )
        if n_index < min_tokens:
            raise UserError(f"{bin_path}: source {name!r} has {n_index:,} tokens, fewer than one row ({min_tokens})")
        self.tokens = np.memmap(bin_path, dtype=self.dtype, mode="r")
        self.starts = np.asarray(self.starts[:-1])  # document starts only

    def __len__(self) -> int:
        return len(self.tokens)

    def windows(self, offsets: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows of `length` tokens from `offsets`, and their position ids (restarting at each document start
        and at the row start). One fancy-indexed read and a few vectorised passes: no per-token Python."""
        ids = self.tokens[offsets[:, None] + np.arange(length)]
        # flat indices (row * length + column) of the document starts inside the windows
        first = np.searchsorted(self.starts, offsets, side="left")
        n = np.searchsorted(self.starts, offsets + length, side="left") - first
        rows = np.repeat(np.arange(len(offsets)), n)
        starts = self.starts[np.repeat(first - np.cumsum(n) + n, n) + np.arange(n.sum())]
        inside = starts - offsets[rows] + rows * length
        restarts = np.union1d(np.arange(len(offsets)) * length, inside)  # every row restarts too; sorted
        positions = np.arange(ids.size) - np.repeat(restarts, np.diff(restarts, append=ids.size))
        return ids, positions.reshape(ids.shape)


class Curriculum:
    """Stages over steps: a stage lasts until the run has consumed its token budget.

    `decay_start` (a `decay_from` run) makes every step from there on use the last stage: the decay phase
    trains on the final mixture, as SmolLM3's third stage is its decay phase.
    """

    def __init__(self, stages: list[Stage], source_names: list[str], tokens_per_step: int,
                 decay_start: int | None = None):
        self.stages, self.source_names, self.tokens_per_step = stages, source_names, tokens_per_step
        self.budget_ends = np.cumsum([s.tokens for s in stages])
        self.decay_start = decay_start
        self.weights = [np.array([s.weights.get(n, 0.0) for n in source_names]) for s in stages]
        self.weights = [w / w.sum() for w in self.weights]  # exactly 1 for the sampler

    @property
    def total_steps(self) -> int:
        return math.ceil(int(self.budget_ends[-1]) / self.tokens_per_step)

    def stage_at(self, step: int) -> int:
        if self.decay_start is not None and step >= self.decay_start:
            return len(self.stages) - 1
        stage = int(np.searchsorted(self.budget_ends, step * self.tokens_per_step, side="right"))
        return min(stage, len(self.stages) - 1)  # past the budgets (a longer max_steps): the last stage


class PackedLoader:
    """Batches for (step, micro-batch) on this rank: rows drawn from sources by the stage's weights."""

    def __init__(self, files: list[TokenFile], curriculum: Curriculum, seq_len: int, micro_batch_size: int,
                 seed: int, rank: int = 0):
        self.files, self.curriculum = files, curriculum
        self.seq_len, self.micro_batch_size, self.seed, self.rank = seq_len, micro_batch_size, seed, rank

    def batch(self, step: int, micro: int = 0) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        """Returns the model inputs and the tokens taken from each source (in `curriculum.source_names` order).
        Rows come grouped by source; their order within a batch does not matter to the loss."""
        rng = np.random.default_rng([self.seed, self.rank, step, micro])
        weights = self.curriculum.weights[self.curriculum.stage_at(step)]
        rows_per_source = rng.multinomial(self.micro_batch_size, weights)
        ids = np.empty((self.micro_batch_size, self.seq_len), dtype=np.int64)
        positions = np.empty_like(ids)
        row = 0
        for tf, k in zip(self.files, rows_per_source):
            if k:
                offsets = rng.integers(0, len(tf) - self.seq_len + 1, size=k)
                ids[row : row + k], positions[row : row + k] = tf.windows(offsets, self.seq_len)
                row += k
        labels = np.where(positions == 0, -100, ids)  # no document's first token is predicted from the one before
        batch = {"input_ids": ids, "position_ids": positions, "labels": labels}
        return {k: torch.from_numpy(v) for k, v in batch.items()}, rows_per_source * self.seq_len


def open_sources(data_dir: Path, sources: list[CorpusSource], seq_len: int) -> list[TokenFile]:
    return [TokenFile(data_dir, s.name, seq_len) for s in sources]
