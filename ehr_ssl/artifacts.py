"""Checked reading of the files ehr-ssl itself writes (JSON records, safetensors weights): a
missing, damaged or tampered file is bad input (exit 2, one line naming the file and the
problem), never a library's traceback and never a silent default."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from ehr_ssl.errors import InputError


def read_json(path: Path, *, what: str = "record", expect: type = dict) -> Any:
    """The JSON document at `path`, which must be of type `expect` (dict or list).

    Raises:
        InputError: naming `path` when it is missing, unreadable, not JSON or not an `expect`.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{what} not found", file=str(path)) from None
    except UnicodeDecodeError:
        raise InputError(f"{what} is not text (damaged?)", file=str(path)) from None
    except OSError as e:
        raise InputError(f"cannot read {what} ({describe_os_error(e)})", file=str(path)) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{what} is not valid JSON ({e})", file=str(path)) from None
    if not isinstance(document, expect):
        raise InputError(
            f"{what} is a JSON {type(document).__name__}, expected a JSON "
            f"{'object' if expect is dict else expect.__name__}",
            file=str(path),
        )
    return document


def describe_os_error(error: OSError) -> str:
    """The cause of an OSError in words ("no space left on device", "permission denied")."""
    if error.errno is not None:
        return os.strerror(error.errno).lower()
    return str(error) or type(error).__name__


def write_failure(path: Path, error: BaseException) -> OSError:
    """An OSError naming `path` for a failed write, whatever library raised it.

    safetensors, polars and pyarrow report a full disk in their own exception types, often
    without the path; the CLI turns this OSError into one line with the path and the cause.
    """
    if isinstance(error, OSError) and error.errno is not None:
        return OSError(error.errno, os.strerror(error.errno), str(path))
    text = str(error)
    lowered = text.lower()
    if "no space left" in lowered or "errno 28" in lowered or "os error 28" in lowered:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    if "quota" in lowered:
        return OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(path))
    if "permission denied" in lowered or "os error 13" in lowered:
        return OSError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    first = text.strip().splitlines()[0][:200] if text.strip() else type(error).__name__
    return OSError(errno.EIO, f"write failed ({first})", str(path))
