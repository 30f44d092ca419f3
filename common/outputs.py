"""The output-directory rules of every stage (and `posttrain merge`): write into `<output_dir>.partial/`, rename
it to `<output_dir>` when complete, one writer at a time (`<output_dir>.lock`), never overwrite what posttrain did
not write (a directory holding `posttrain_run.json`), and resume only a run with the same recipe and data."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
from pathlib import Path

from common.errors import UserError

logger = logging.getLogger("posttrain")

RUN_RECORD = "posttrain_run.json"


class StageOutput:
    """`<output_dir>.partial/` while training, renamed to `<output_dir>` when the stage is complete; one writer at
    a time, through the lock file `<output_dir>.lock`.

    Constructing it only checks (nothing is written): output_dir must be a directory path whose parent is not a
    file; an existing non-empty output_dir must be one this toolkit wrote (it holds posttrain_run.json) and is
    replaced only with `overwrite`. A file or a foreign directory is never touched, overwrite or not."""

    def __init__(self, output_dir: str, overwrite: bool = False):
        self.final = Path(output_dir)
        self.partial = self.final.with_name(self.final.name + ".partial")
        self.lock_path = self.final.with_name(self.final.name + ".lock")
        self.overwrite = overwrite
        self.check()

    def check(self) -> None:
        """Refuse an output_dir this run must not write; run again under the lock (another run may have
        finished in between)."""
        for parent in self.final.parents:
            if parent.exists() and not parent.is_dir():
                raise UserError(f"output_dir {self.final}: {parent} is a file, not a directory")
        for path in (self.final, self.partial):
            if path.exists() and not path.is_dir():
                raise UserError(f"output_dir {self.final}: {path} is a file, not a directory; choose another "
                                "output_dir (posttrain never deletes a file it did not write)")
        if not self.final.is_dir() or not any(self.final.iterdir()):
            return
        if not (self.final / RUN_RECORD).is_file():
            raise UserError(f"output_dir {self.final} is a non-empty directory that posttrain did not write (no "
                            f"{RUN_RECORD}); choose another output_dir (it is never overwritten)")
        if not self.overwrite:
            raise UserError(f"output_dir {self.final} already holds a complete output; set overwrite_output_dir: "
                            "true to replace it")

    @contextlib.contextmanager
    def lock(self):
        """Hold `<output_dir>.lock` ({pid, host}, created with O_EXCL) while writing: a second writer fails naming
        the owner; a lock left by a dead process of this host (kill -9) is taken over. Released on any exit."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        while True:
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                owner = _lock_owner(self.lock_path)
                if owner is None or owner.get("host") != me["host"] or _alive(owner.get("pid")):
                    raise self._locked(owner) from None
                # Moved aside, not deleted: of two runs taking over at once, one moves the dead lock and the
                # other finds it gone (or moves the winner's, and gives it back).
                stale = self.lock_path.with_name(f"{self.lock_path.name}.{me['pid']}.stale")
                try:
                    os.rename(self.lock_path, stale)
                except FileNotFoundError:
                    continue
                if _lock_owner(stale) != owner:
                    os.replace(stale, self.lock_path)
                    raise self._locked(_lock_owner(self.lock_path))
                stale.unlink()
                logger.info("%s: taking over the lock of pid %s (no longer running)", self.lock_path, owner["pid"])
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        try:
            self.check()
            yield
        finally:
            self.lock_path.unlink(missing_ok=True)

    def _locked(self, owner: dict | None) -> UserError:
        return UserError(f"output_dir {self.final} is being written by another run ({self.lock_path}: "
                         f"{owner or 'unreadable'}); wait for it, or delete the lock if that run is gone")

    def abandon(self) -> None:
        """Remove the empty `.partial` the Trainer creates when it is built, for a stage that fails a check made
        after that (a `.partial` holding resume checkpoints is kept)."""
        if self.partial.is_dir() and not any(self.partial.iterdir()):
            self.partial.rmdir()

    def resume_point(self, resume: str | None, name: str, record: dict) -> str | None:
        """The checkpoint to resume from, per `resume_from_checkpoint`: unset or true, the last complete
        `checkpoint-N` in `.partial` (true: one must exist), if the run that wrote it had the same recipe and data;
        false, none (start over); else the path given. Checks only: `start` writes."""
        if resume not in (None, "true", "false"):
            if not (Path(resume) / "trainer_state.json").is_file():
                raise UserError(f"recipe key 'resume_from_checkpoint': {resume} is not a complete Trainer "
                                "checkpoint (no trainer_state.json)")
            return resume
        checkpoint = None if resume == "false" else last_complete_checkpoint(self.partial)
        if checkpoint is None:
            if resume == "true":
                raise UserError(f"recipe key 'resume_from_checkpoint': true, but {self.partial} holds no complete "
                                "checkpoint to resume from")
            return None
        previous = read_run_record(self.partial)
        if previous is None:
            raise UserError(f"{self.partial}: checkpoints without a {RUN_RECORD} to compare the recipe with; set "
                            "resume_from_checkpoint: false to start over, or to a checkpoint path")
        changed = _differences(_comparable(previous), _comparable(record))
        if changed:
            raise UserError(f"{self.partial}: the recipe changed since the interrupted run ({'; '.join(changed)}); "
                            "re-run it unchanged to resume, or set resume_from_checkpoint: false to start over")
        logger.info("%s: resuming from %s (resume_from_checkpoint: false starts over)", name, checkpoint)
        return str(checkpoint)

    def start(self, record: dict, keep_partial: bool = False) -> None:
        """Clear a stale `.partial` left by an interrupted run (kept when resuming from one of its checkpoints)
        and write the run's recipe into it, to be compared by a later resume."""
        if self.partial.exists() and not keep_partial:
            if any(self.partial.iterdir()):
                logger.info("%s: starting over, discarding %s", self.final, self.partial)
            shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.partial / RUN_RECORD, record)

    def commit(self) -> Path:
        """Drop the Trainer's resume checkpoints and move the finished output into place (under `lock`)."""
        for checkpoint in self.partial.glob("checkpoint-*"):
            shutil.rmtree(checkpoint)
        if self.final.exists():  # an output this toolkit wrote (`check`), replaced with overwrite_output_dir
            old = self.final.with_name(self.final.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            self.final.rename(old)
            self.partial.rename(self.final)
            shutil.rmtree(old)
        else:
            self.partial.rename(self.final)
        return self.final


def _lock_owner(path: Path) -> dict | None:
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return True  # unknown owner: never taken over
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process, alive
    return True


def last_complete_checkpoint(directory: Path) -> Path | None:
    """The highest `checkpoint-N` whose trainer_state.json (the Trainer writes it last) is readable JSON: a
    checkpoint cut short by a kill is skipped."""
    steps = []
    for path in directory.glob("checkpoint-*"):
        try:
            json.loads((path / "trainer_state.json").read_text())
            steps.append((int(path.name.split("-")[-1]), path))
        except (OSError, ValueError):
            continue
    return max(steps)[1] if steps else None


def _comparable(record: dict) -> dict:
    """What must match for a resume to continue the same run: every recipe key (but those that only say how to
    start) and the data's fingerprint."""
    values = {k: v for group in (record.get("recipe") or {}).values() for k, v in group.items()
              if k not in ("resume_from_checkpoint", "overwrite_output_dir")}
    return {**values, "data fingerprint": (record.get("data") or {}).get("fingerprint")}


def _differences(old: dict, new: dict) -> list[str]:
    """`key: old -> new` for every key whose value differs."""
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def write_text_atomic(path: Path, text: str) -> None:
    """`text` into `path` through a temporary file and a rename: readers see the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, value) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, default=str))


def read_run_record(checkpoint: str | Path) -> dict | None:
    """The `posttrain_run.json` of a checkpoint made by a stage, or None if it has none."""
    path = Path(checkpoint) / RUN_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
