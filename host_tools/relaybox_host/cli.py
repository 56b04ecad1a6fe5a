"""The `relaybox` command line: one subcommand per module, errors as one line on stderr."""

import argparse
import os
import sys

from . import __version__, deploy, flash, image, remote, run, terminal, trust
from .errors import ToolError

# Each module adds its own subcommands; keep one line per module.
MODULES = [run, image, flash, deploy, remote, terminal, trust]


def parser():
    p = argparse.ArgumentParser(prog="relaybox", description="relaybox mail relay host tool")
    p.add_argument("--version", action="version", version=f"relaybox {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in MODULES:
        module.add_parser(sub)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        code = args.func(args)
    except ToolError as e:
        print(f"relaybox: {e}", file=sys.stderr)
        return sys.exit(1)
    except KeyboardInterrupt:
        return sys.exit(130)
    except BrokenPipeError:
        # The reader went away (`relaybox status | head -1`): nothing left to say to it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return sys.exit(141)
    sys.exit(code or 0)
