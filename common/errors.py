"""User errors: one line naming the file, row and field (or recipe key), no traceback, non-zero exit."""

import functools
import os
import sys


class UserError(Exception):
    """Bad input from the user (recipe, data file, checkpoint path). Printed as one line by `run_cli`."""


def run_cli(main):
    """Wrap a CLI entry point: UserError -> `error: ...` on stderr and exit 2; `--debug` (or
    POSTTRAIN_DEBUG=1) re-raises so the traceback is shown."""

    @functools.wraps(main)
    def wrapper(argv=None):
        argv = list(sys.argv[1:] if argv is None else argv)
        debug = "--debug" in argv or os.environ.get("POSTTRAIN_DEBUG") == "1"
        argv = [a for a in argv if a != "--debug"]
        try:
            return main(argv)
        except UserError as e:
            if debug:
                raise
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            if debug:
                raise
            print("interrupted: finished stages and checkpoints are kept; re-run to resume", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
