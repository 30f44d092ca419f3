"""`posttrain serve --model CHECKPOINT`: the vLLM rollout server that `posttrain rlvr` uses with `vllm_mode: server`.

Why this is a thin wrapper: TRL 1.16 deprecates `trl vllm-serve` ("it now only runs vLLM's own server. Run it
directly instead: VLLM_SERVER_DEV_MODE=1 vllm serve ..."). What TRL still owns is the list of flags its trainers
need from that server (NCCL weight transfer, processed logprobs, uncapped logprobs), in
`trl.scripts.vllm_serve.build_command`. So this command builds the `vllm serve` line with TRL's own arguments and
builder and runs it, changing three things:
- it binds to 127.0.0.1 unless `--host` is given: TRL's default is 0.0.0.0, and with dev mode on the server
  accepts weight updates and resets from anyone who can reach the port (vLLM's `--api-key` guards only the
  `/v1` routes, not these, and TRL's client sends no key). A private address is served with a warning; a
  wildcard (0.0.0.0, ::), public address or host name is refused unless `--allow_public_host` confirms it;
- weights load from safetensors only (`--load-format safetensors`); `--trust_remote_code` is refused;
- a missing vllm is a one-line error naming the extra, not a traceback.

Arguments are TRL's `ScriptArguments` keys (`--model`, `--tensor_parallel_size`, `--port`, ...), from the command
line or a `--config` YAML; anything after a bare `--` goes to `vllm serve` unchanged.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import sys
from dataclasses import dataclass, field

from trl.import_utils import is_vllm_available
from trl.scripts.vllm_serve import ScriptArguments, build_command

from common.errors import UserError
from common.recipe import help_requested, parse_recipe, refuse_remote_code

VLLM_EXTRA = "pip install 'posttrain[vllm]'"


@dataclass
class ServeArguments(ScriptArguments):
    """TRL's `vllm-serve` arguments, bound to the loopback interface unless `--host` says otherwise."""

    host: str = field(
        default="127.0.0.1",
        metadata={"help": "Address to listen on. Another machine's trainer needs this machine's private address; "
                  "never 0.0.0.0 on a machine with a public one (docs/scale-out.md, Security)."},
    )
    allow_public_host: bool = field(
        default=False,
        metadata={"help": "Confirm a --host that other networks may reach (0.0.0.0, ::, a public address or a host "
                  "name): anyone who reaches the port can replace the served weights."},
    )


def host_warning(host: str, allow_public_host: bool) -> str | None:
    """None for a loopback host; a warning for a private address (or a confirmed public one); a UserError for a
    wildcard, public address or host name without `allow_public_host`. A host name is not resolved here: what
    it points to can change."""
    if host == "localhost":
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None and address.is_loopback:
        return None
    risk = ("its weight-update endpoints (vLLM dev mode, which TRL needs) ask for no authentication: anyone who "
            "reaches the port can replace the weights being trained")
    if address is not None and address.is_private and not address.is_unspecified:
        return f"warning: serving on private address {host}; {risk}. Firewall the port to the trainer's machines."
    kind = "every interface" if address is not None and address.is_unspecified else (
        "a public address" if address is not None else "a host name")
    if not allow_public_host:
        raise UserError(
            f"recipe key 'host': {host} ({kind}) may be reachable from other networks; {risk}. Give this machine's "
            "private address, or pass --allow_public_host to confirm"
        )
    return f"WARNING: serving on {host} ({kind}), confirmed by --allow_public_host; {risk}."


def server_command(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """The `vllm serve` command line and environment for `argv`; needs no vllm (what the tests check)."""
    argv = list(argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    (args,) = parse_recipe([ServeArguments], argv)
    refuse_remote_code(args.trust_remote_code)
    warning = host_warning(args.host, args.allow_public_host)
    if warning:
        print(warning, file=sys.stderr)
    command = build_command(args, ["--load-format", "safetensors", *extra])
    # The weight-transfer endpoints TRL's client calls exist only in vLLM's dev mode (as `trl vllm-serve` sets).
    return command, {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}


def main(argv: list[str]) -> int | None:
    if help_requested(argv, [ServeArguments], "posttrain serve"):
        return 0
    command, env = server_command(argv)
    if not is_vllm_available():
        raise UserError(f"`posttrain serve` needs vLLM on a CUDA machine: {VLLM_EXTRA}")
    print("running: VLLM_SERVER_DEV_MODE=1 " + shlex.join(["vllm", *command[command.index("serve") :]]), file=sys.stderr)
    os.execve(sys.executable, command, env)
