"""Loading a tokenizer: the one place that calls `AutoTokenizer.from_pretrained` on a user's path (a local
directory, a Hub id at a revision, or a GGUF file), never with remote code, failing with one line."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from common.errors import UserError


def gguf_file(name: str) -> Path | None:
    """`gguf:<package>/<file>.gguf` (a GGUF shipped in an installed Python package) or a path to a .gguf file."""
    if name.startswith("gguf:"):
        package, _, rel = name[len("gguf:"):].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise UserError(f"model_name_or_path {name!r}: package {package!r} is not installed")
        path = Path(list(spec.submodule_search_locations)[0]) / rel
    elif name.endswith(".gguf"):
        path = Path(name)
    else:
        return None
    if not path.is_file():
        raise UserError(f"model_name_or_path {name!r}: {path} not found")
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"{path}: loading GGUF files needs the gguf package: pip install 'posttrain[gguf]'")
    return path


def load_pretrained_tokenizer(path: str | Path, revision: str | None = None):
    """`AutoTokenizer.from_pretrained` of a directory, Hub id (at `revision`) or GGUF file (the tokenizer it
    carries; transformers converts it, which needs `gguf`), with trust_remote_code=False; a failure is one
    UserError line naming the path."""
    from transformers import AutoTokenizer

    gguf = gguf_file(str(path))
    try:
        if gguf is not None:
            return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False)
        kwargs = {} if revision is None else {"revision": revision}
        return AutoTokenizer.from_pretrained(str(path), **kwargs, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot load tokenizer ({str(e).splitlines()[0]})") from None
