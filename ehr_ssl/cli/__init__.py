"""The `ehr-ssl` command: parses arguments and calls one library function per subcommand, one
file per group of commands (data, train, run, deploy); flags come from the settings
(`ehr_ssl.cli.options`).

Exit status: 0 success, 2 bad input or configuration (one line on stderr naming the file, the
column and the problem), 1 an internal error. Logs carry counts and paths, never identifiers.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

from ehr_ssl import __version__
from ehr_ssl.cli import data, deploy, run, train
from ehr_ssl.cli.options import Parser, is_main_process
from ehr_ssl.errors import InputError, TrainingError


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ehr-ssl",
        description="Self-supervised representations of ED visits from EHR Parquet data. "
        "Exit status: 0 success, 2 bad input or configuration, 1 internal error.",
    )
    parser.add_argument("--version", action="version", version=f"ehr-ssl {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )
    for group in (data, train, run, deploy):
        group.add_commands(commands)
    return parser


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace) -> int:
    """The command, with every failure turned into one line on stderr and an exit status."""
    try:
        return args.run(args)
    except (InputError, TrainingError) as e:
        print(f"ehr-ssl: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, InputError) else 1
    except OSError as e:  # an output path that cannot be written, a full disk
        where = f"{e.filename}: " if e.filename else ""
        print(f"ehr-ssl: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ehr-ssl: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: exit 1 for schedulers
        # The message of a library's exception may quote data values (identifiers), so only its
        # type and where it was raised go to the log unless EHR_SSL_DEBUG asks for everything.
        if os.environ.get("EHR_SSL_DEBUG"):
            raise
        frame = traceback.extract_tb(e.__traceback__)[-1]
        print(
            f"ehr-ssl: internal error: {type(e).__name__} at {Path(frame.filename).name}:"
            f"{frame.lineno} (set EHR_SSL_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if not is_main_process():
        logging.getLogger().setLevel(logging.WARNING)
    # SIGTERM (a scheduler's stop) unwinds like Ctrl-C, so temporary outputs are removed.
    signal.signal(signal.SIGTERM, _interrupt)
    return _run(args)
