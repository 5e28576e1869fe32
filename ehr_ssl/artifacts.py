"""Checked reading of the files ehr-ssl itself writes (JSON records, safetensors weights): a
missing, damaged or tampered file is bad input (exit 2, one line naming the file and the
problem), never a library's traceback and never a silent default."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ehr_ssl.errors import InputError

if TYPE_CHECKING:
    import torch


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
    without the path, and torch as a RuntimeError raised while handling the OSError of the
    file it writes to; the CLI turns this OSError into one line with the path and the cause.
    """
    cause = _os_error_behind(error)
    if cause is not None:
        return OSError(cause.errno, os.strerror(cause.errno), str(path))
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


def _os_error_behind(error: BaseException) -> OSError | None:
    """`error` itself or the first OSError with an errno it was raised from or while handling."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno is not None:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def file_mode() -> int:
    """The mode of every file ehr-ssl writes: 0666 less the umask, as `open` gives (safetensors
    and `tempfile` write 0600, which would lock other users of a shared directory out)."""
    umask = os.umask(0)  # reading the umask means setting it: put back at once
    os.umask(umask)
    return 0o666 & ~umask


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, as hex (read in 1 MiB blocks: weights can be large)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def load_safetensors(path: Path, *, what: str = "weights") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, all finite. Never unpickles anything.

    Raises:
        InputError: naming `path` when it is missing, unreadable, not a safetensors file
            (empty, truncated, a damaged header, a pickle renamed) or holds NaN or infinity.
    """
    # Imported here: the data commands read JSON through this module and never load torch.
    import torch
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found", file=str(path))
    try:
        # Read, not mapped (safetensors' load_file maps the file): a model loaded from a mapping
        # dies of SIGBUS when the file is truncated under it.
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {what} ({describe_os_error(e)})", file=str(path)) from None
    try:
        tensors = load(data)
    except Exception as e:  # SafetensorError and whatever else damaged bytes make the parser raise
        cause = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise InputError(
            f"{what} is not a readable safetensors file (damaged?): {cause}", file=str(path)
        ) from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InputError(f"{what}: tensor '{name}' holds NaN or infinity", file=str(path))
    return tensors


def check_tensor_shapes(
    tensors: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    *,
    path: Path,
    what: str = "weights",
) -> None:
    """Exactly the tensors `expected` names, each of its shape: a missing one would stay
    randomly initialized, an unexpected one means another architecture.

    Raises:
        InputError: naming `path`, with the counts and the first tensor of each kind at fault.
    """
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    reshaped = sorted(
        name
        for name in set(tensors) & set(expected)
        if tuple(tensors[name].shape) != tuple(expected[name])
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (first '{missing[0]}')")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (first '{unexpected[0]}')")
    if reshaped:
        first = reshaped[0]
        problems.append(
            f"{len(reshaped)} of another shape (first '{first}': "
            f"{list(tensors[first].shape)} instead of {list(expected[first])})"
        )
    if problems:
        raise InputError(
            f"{what}: the tensors do not fit the model's configuration ({'; '.join(problems)})",
            file=str(path),
        )


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: Path, *, metadata: dict[str, str] | None = None
) -> None:
    """Write tensors as safetensors with the mode of every other output (`file_mode`).

    Raises:
        OSError: naming `path` when the write fails (a full disk, say: safetensors reports it
            as its own SafetensorError, without the path).
    """
    import safetensors.torch  # looked up at call time, so tests can stub save_file
    from safetensors import SafetensorError

    path = Path(path)
    try:
        safetensors.torch.save_file(dict(tensors), str(path), metadata=metadata)
    except (OSError, SafetensorError) as e:
        path.unlink(missing_ok=True)  # never a partial file, whoever removes the rest
        raise write_failure(path, e) from None
    os.chmod(path, file_mode())
