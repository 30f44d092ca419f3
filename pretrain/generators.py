"""Document generators a pretraining recipe may name (`{type: generator, generator: NAME, kwargs: {...}}`).

A recipe names a generator, never a Python callable: `callable: "os:system"` with `kwargs: {command: ...}` ran
a shell command, so an untrusted recipe ran code. The names are the project's own generators plus those of
plugins the user installed, which register `name = "module:function"` under the entry-point group
`posttrain.generators` (installing a package is the user's decision, as running its code is). Each generator
returns (or yields) str documents.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Callable

from common.errors import UserError

ENTRY_POINT_GROUP = "posttrain.generators"
# The project's own: "module:function", imported only when used.
BUILTIN = {
    "web": "pretrain.corpus:web_documents",  # generated English prose (stories, entries, how-tos, letters)
    "arithmetic": "posttrain.task:pretraining_documents",  # the arithmetic task's worked problems, train split
}


def registry() -> dict[str, str]:
    """Every known generator name -> "module:function"; a plugin cannot replace a built-in name."""
    plugins = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return {**plugins, **BUILTIN}


def resolve(name: str, where: str) -> tuple[str, Callable]:
    """("module:function", the function) of a registered generator; an unknown name lists the known ones."""
    known = registry()
    if name not in known:
        raise UserError(
            f"{where}: unknown generator {name!r} (known: {', '.join(sorted(known))}; a plugin adds one under the "
            f"entry-point group {ENTRY_POINT_GROUP!r})"
        )
    target = known[name]
    module_name, _, func_name = target.partition(":")
    try:
        return target, getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as e:
        raise UserError(f"{where}: generator {name!r} ({target}) cannot be loaded ({e})") from None
