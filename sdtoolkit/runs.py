"""Output folders belong to the user: the one place that decides whether a command may write into a folder, locks it
against a second run, records what the toolkit wrote there (so that it only ever deletes its own files), writes
files atomically, and carries the run-stopping errors the CLI turns into one line and an exit status.

A claimed folder holds two hidden files beside the run's own: `.sdtoolkit.lock` (pid, hostname and start time of
the process that holds it; a lock whose process is gone is stale and taken over) and `.sdtoolkit-manifest.json`
(the kind of run, the top-level entries the toolkit created and every file it wrote inside those that are folders;
everything else in the folder is the user's, a file the user puts into one of the run's folders included).

Rules of `claim_output` (and of the read-only `inspect_output` the CLIs call before loading any model):

- a new or empty folder is claimed;
- a folder the toolkit wrote for a run of the same kind is claimed again when the run is resumed, when its previous
  attempt stopped before its first checkpoint (a plain rerun restarts it in place), or with `overwrite` (its own
  entries are deleted first); otherwise it is refused, naming `--resume` and `--overwrite`;
- any other non-empty folder is refused unless `overwrite` is given; then the run writes beside the user's files,
  and refuses if one of the entries it writes (`reserved`) is already there and is not the toolkit's;
- a folder locked by a live process is always refused;
- starting anew (`restart`, `overwrite`) or removing one of the run's folders deletes only the files the manifest
  records; a file of the user's inside one of the run's folders refuses it, naming the file.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

LOCK_NAME = ".sdtoolkit.lock"
"""The lock file of a claimed folder (JSON: pid, hostname, process start time, command)."""
MANIFEST_NAME = ".sdtoolkit-manifest.json"
"""The manifest of a claimed folder (JSON: kind, the top-level entries the toolkit created)."""
HIDDEN = (LOCK_NAME, MANIFEST_NAME)

__all__ = [
    "LOCK_NAME",
    "MANIFEST_NAME",
    "OutputFolderError",
    "RunDiverged",
    "RunError",
    "RunFolder",
    "RunInterrupted",
    "a_kind",
    "atomic_output",
    "atomic_write_text",
    "check_new_files",
    "claim_output",
    "folder_lock",
    "inspect_output",
    "nonfinite_term",
    "read_manifest",
]


# ---------------------------------------------------------------------------------------------------- errors


class RunError(Exception):
    """A run that cannot start or had to stop; the CLI prints it as one line and exits with `exit_code`."""

    exit_code = 2
    label = "error"


class OutputFolderError(RunError, ValueError):
    """The output folder cannot be used (not the toolkit's, another run's, locked); nothing was written."""


class RunDiverged(RunError):
    """Training stopped on consecutive non-finite losses or gradients; the last good checkpoint is kept."""

    exit_code = 1


def nonfinite_term(losses: dict[str, float], optimizer: Any) -> str | None:
    """The non-finite guard's test of one step of a single-optimizer loop (text-to-3d, convert-nerf), after
    `backward()`: the name of the first loss term that is NaN/inf, else "grad_norm" when the total norm of the
    optimizer's gradients is not finite, else None (the step may update). The caller skips the update when it is not
    None and stops with `RunDiverged` after its limit of consecutive skips."""
    import math

    import torch

    bad = [name for name, value in losses.items() if not math.isfinite(value)]
    if bad:
        return bad[0]
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if grads and not math.isfinite(float(torch.nn.utils.get_total_norm(grads))):
        return "grad_norm"
    return None


class RunInterrupted(RunError):
    """Ctrl-C (SIGINT, exit status 130) or SIGTERM (143) stopped the run at a step boundary."""

    exit_code = 130
    label = "stopped"

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


# ---------------------------------------------------------------------------------------------------- atomic files


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path` (same suffix) to write; on success it replaces `path` in one rename, so
    readers see the old file or the new one, never a torn one. On an exception the temporary file is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Writes `text` to `path` atomically (a temporary file, then one rename)."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def _write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------------- lock


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` (Linux /proc), which tells a reused pid from the lock's own process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(info: dict[str, Any]) -> bool:
    """Whether the process that wrote a lock still runs (a lock from another host is assumed live)."""
    if info.get("hostname") != socket.gethostname():
        return True
    pid = int(info.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = info.get("started_ticks")
    return started is None or _process_start(pid) in (None, started)


def read_lock(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / LOCK_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # torn (the writer died mid-write): treated as stale below


def _lock_message(folder: Path, info: dict[str, Any]) -> str:
    return (
        f"{folder} is in use by another sdtoolkit run (pid {info.get('pid')} on {info.get('hostname')}, since "
        f"{info.get('since', '?')}); wait for it to end or choose another output folder (if no run is active, "
        f"delete {folder / LOCK_NAME})"
    )


def _live_lock(folder: Path) -> dict[str, Any] | None:
    info = read_lock(folder)
    if info is None or not info:
        return None
    if info.get("pid") == os.getpid() and info.get("hostname") == socket.gethostname():
        return None  # this process's own lock (a nested claim)
    return info if _alive(info) else None


def _acquire_lock(folder: Path) -> None:
    path = folder / LOCK_NAME
    info = {
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "started_ticks": _process_start(os.getpid()),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _live_lock(folder)
            if held is not None:
                raise OutputFolderError(_lock_message(folder, held)) from None
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # stale (its process is gone) or this process's own
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(info) + "\n")
        return
    raise OutputFolderError(_lock_message(folder, read_lock(folder) or {}))


# ---------------------------------------------------------------------------------------------------- manifest


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The folder's manifest, or None when the toolkit never claimed it."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except ValueError:
        return None
    return manifest if isinstance(manifest, dict) else None


def a_kind(kind: str) -> str:
    """'a text-to-3d', 'an image-to-3d': a run kind with its article, for messages."""
    return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"


def _files_under(folder: Path, names: Iterable[str]) -> set[str]:
    """Every file (or link) inside the entries `names` of `folder` that are folders, as paths relative to `folder`."""
    files = set()
    for name in names:
        top = folder / name
        if top.is_dir() and not top.is_symlink():
            files |= {p.relative_to(folder).as_posix() for p in top.rglob("*") if p.is_symlink() or not p.is_dir()}
    return files


def _foreign_files(folder: Path, names: Iterable[str]) -> list[str] | None:
    """The files inside the run's folder entries `names` that its manifest does not record as the toolkit's (a
    user's file put there), or None where the manifest cannot tell: written before files were recorded, or by a
    run that never released the folder (killed: what it wrote after its last record is unrecorded, and is taken
    as the toolkit's, as every file of its folders was before files were recorded)."""
    manifest = read_manifest(folder)
    if manifest is None or "files" not in manifest or not manifest.get("released", False):
        return None
    return sorted(_files_under(folder, names) - set(manifest["files"]))


def _foreign_message(folder: Path, foreign: list[str]) -> str:
    shown = ", ".join(str(folder / f) for f in foreign[:3]) + (
        f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
    )
    return (
        f"{shown} {'was' if len(foreign) == 1 else 'were'} not written by sdtoolkit but lie in a folder of its run, "
        "which this command would delete (starting the run anew or replacing that folder); move them away first"
    )


def _entries(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {p.name for p in folder.iterdir() if p.name not in HIDDEN and not p.name.startswith(".sdtoolkit")}


class RunFolder:
    """A claimed output folder: holds its lock until `release`, and records the entries the toolkit creates."""

    def __init__(
        self, path: Path, kind: str, owned: Iterable[str], preexisting: Iterable[str], foreign: Iterable[str] = ()
    ):
        self.path = path
        self.kind = kind
        self.owned = set(owned)
        self.preexisting = set(preexisting) - self.owned
        self.foreign = set(foreign)
        """Files of the user's inside the run's folders when it was claimed (relative paths); any other file in
        them is the toolkit's (the lock keeps anyone else from writing there)."""
        self.released = False
        atexit.register(self.release)

    def owns(self, name: str) -> bool:
        """Whether top-level entry `name` is the toolkit's: recorded as written by it, or absent when the folder was
        claimed (the lock keeps anyone else from writing there since)."""
        name = Path(name).parts[0]
        return name in self.owned or name not in self.preexisting

    def sync(self, released: bool = False) -> None:
        """Records every top-level entry created since the claim as the toolkit's, and every file inside them but
        the user's; forgets deleted ones. `released`: the run is done with the folder (`release`)."""
        present = _entries(self.path)
        self.owned = (self.owned & present) | (present - self.preexisting)
        files = sorted(_files_under(self.path, self.owned) - self.foreign)
        record = {
            "kind": self.kind,
            "owned": sorted(self.owned),
            "files": files,
            "released": released,
            "user_entries": sorted(self.preexisting & present),
        }
        _write_json(self.path / MANIFEST_NAME, record)

    def remove(self, name: str) -> None:
        """Deletes the toolkit's own entry `name` (file or folder); refuses an entry the user put there."""
        target = self.path / name
        if not target.exists() and not target.is_symlink():
            return
        if not self.owns(name):
            raise OutputFolderError(f"{target} was not written by sdtoolkit; it is left alone (move it away)")
        foreign = sorted(f for f in self.foreign if f.startswith(f"{name}/") and (self.path / f).exists())
        if foreign:
            raise OutputFolderError(_foreign_message(self.path, foreign))
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()

    def release(self) -> None:
        """Writes the final manifest and removes the lock (idempotent; also runs at interpreter exit)."""
        if self.released:
            return
        self.released = True
        with contextlib.suppress(OSError):
            if self.path.is_dir():
                self.sync(released=True)
            info = read_lock(self.path)
            if info and info.get("pid") == os.getpid() and info.get("hostname") == socket.gethostname():
                (self.path / LOCK_NAME).unlink()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---------------------------------------------------------------------------------------------------- claim


def _owned_entries(
    folder: Path, kind: str, legacy: Callable[[Path], set[str]] | None, reserved: Iterable[str] = ()
) -> tuple[str | None, set]:
    """(the kind of run the toolkit wrote in `folder`, its entries), or (None, empty) for a folder not its own.

    A run killed before it released the folder recorded only the entries of its last `sync`; the entries it writes
    (`reserved`) that were not the user's when it claimed the folder (`user_entries`) are taken as its own too, so
    that a checkpoint, config or half-written export of a killed run is resumed or replaced, not called the user's.
    """
    manifest = read_manifest(folder)
    if manifest is not None:
        present = _entries(folder)
        owned = set(manifest.get("owned", [])) & present
        if manifest.get("released") is False and isinstance(manifest.get("user_entries"), list):
            owned |= (present & set(reserved)) - set(manifest["user_entries"])
        return str(manifest.get("kind")), owned
    if legacy is not None:
        owned = legacy(folder)
        if owned:
            return kind, owned & _entries(folder)
    return None, set()


def inspect_output(
    folder: str | Path,
    kind: str,
    *,
    resume: bool = False,
    overwrite: bool = False,
    has_checkpoint: Callable[[Path], bool] = lambda folder: False,
    reserved: Iterable[str] = (),
    legacy: Callable[[Path], set[str]] | None = None,
    flag: str = "--output",
    resumable: bool = True,
) -> str:
    """What a run of `kind` may do with `folder`, without writing anything: `new`, `resume`, `restart` (the previous
    attempt stopped before its first checkpoint), or `overwrite`; raises `OutputFolderError` with the fix otherwise.

    Args:
        has_checkpoint: whether the folder holds a checkpoint a `--resume` would continue.
        resumable: whether the command has `--resume` (its messages name it only then).
        reserved: the top-level entries the run writes; with `overwrite`, a user's entry of one of these names
            refuses the folder instead of being replaced.
        legacy: the entries of a folder the toolkit wrote before manifests existed (empty: not such a folder).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{flag} {folder} exists and is not a folder")
    held = _live_lock(folder) if folder.is_dir() else None
    if held is not None:
        raise OutputFolderError(_lock_message(folder, held))
    present = _entries(folder)
    owner, owned = _owned_entries(folder, kind, legacy, reserved)
    if owner == kind:
        if resume:
            return "resume"
        if not has_checkpoint(folder) and not overwrite:
            _refuse_foreign(folder, owned)
            return "restart"
    if resume:
        raise OutputFolderError(
            f"{flag} {folder} is not {a_kind(kind)} run folder of sdtoolkit; nothing to resume there"
        )
    if not present:
        return "new"
    if owner == kind and not overwrite:
        how = f"continue it with --resume {folder}, or start over" if resumable else "start over"
        raise OutputFolderError(
            f"{flag} {folder} already holds {a_kind(kind)} run: {how} with --overwrite (deletes only the files "
            "sdtoolkit wrote there)"
        )
    if not overwrite:
        what = f"holds {a_kind(owner)} run" if owner else "is not empty and is not an sdtoolkit run folder"
        resume_hint = "; --resume continues a run of the same kind" if resumable else ""
        raise OutputFolderError(
            f"{flag} {folder} {what}; choose a new or empty folder, or pass --overwrite to write beside its files "
            f"(sdtoolkit deletes only files it wrote{resume_hint})"
        )
    clashes = sorted(set(reserved) & (present - owned))
    if clashes:
        raise OutputFolderError(
            f"{flag} {folder}: {', '.join(clashes)} {'is' if len(clashes) == 1 else 'are'} not sdtoolkit's and would "
            "be overwritten; move them away or choose another folder"
        )
    _refuse_foreign(folder, owned)
    return "overwrite"


def _refuse_foreign(folder: Path, owned: set[str]) -> None:
    foreign = _foreign_files(folder, owned)
    if foreign:
        raise OutputFolderError(_foreign_message(folder, foreign))


def _remove_stale_temporaries(folder: Path) -> None:
    """Deletes the temporary files of `atomic_output` (`.NAME.tmp-PID.EXT`) that a killed process left in `folder`
    (called with the folder's lock held: no live sdtoolkit process writes there)."""
    for path in folder.glob(".*.tmp-*"):
        pid = path.name.rsplit(".tmp-", 1)[-1].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()


def claim_output(
    folder: str | Path,
    kind: str,
    *,
    resume: bool = False,
    overwrite: bool = False,
    has_checkpoint: Callable[[Path], bool] = lambda folder: False,
    reserved: Iterable[str] = (),
    keep: Iterable[str] = (),
    legacy: Callable[[Path], set[str]] | None = None,
    flag: str = "--output",
    announce: Callable[[str], None] | None = print,
    resumable: bool = True,
) -> RunFolder:
    """Checks `folder` like `inspect_output`, locks it, and on `restart`/`overwrite` deletes the toolkit's own
    entries of the previous run (except those in `keep`, e.g. a keyed cache); returns the claimed `RunFolder`.
    Call `release()` when the run ends (it also runs at interpreter exit)."""
    folder = Path(folder)
    action = inspect_output(
        folder,
        kind,
        resume=resume,
        overwrite=overwrite,
        has_checkpoint=has_checkpoint,
        reserved=reserved,
        legacy=legacy,
        flag=flag,
        resumable=resumable,
    )
    folder.mkdir(parents=True, exist_ok=True)
    _acquire_lock(folder)
    try:
        owner, owned = _owned_entries(folder, kind, legacy, reserved)
        _remove_stale_temporaries(folder)
        present = _entries(folder)
        if action in ("restart", "overwrite") and owned:
            for name in sorted(owned - set(keep)):
                target = folder / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.exists() or target.is_symlink():
                    target.unlink()
            if announce is not None:
                why = (
                    "its previous attempt stopped before its first checkpoint"
                    if action == "restart"
                    else "--overwrite"
                )
                announce(f"{folder}: starting the {kind} run anew ({why}); removed sdtoolkit's own files of it")
            owned = owned & set(keep)
            present = _entries(folder)
        run = RunFolder(folder, kind, owned, present - owned, _foreign_files(folder, owned) or ())
        run.sync()
        return run
    except BaseException:
        with contextlib.suppress(OSError):
            (folder / LOCK_NAME).unlink()
        raise


def check_new_files(paths: Iterable[str | Path], *, overwrite: bool = False, flag: str = "--overwrite") -> None:
    """For commands that write single files (`generate`, `export`): refuses, before anything is written, to replace
    an existing file unless `overwrite`; the message names every such file and `flag`."""
    existing = [str(p) for p in paths if Path(p).exists() or Path(p).is_symlink()]
    if existing and not overwrite:
        raise OutputFolderError(
            f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; pass {flag} to replace"
        )


# ---------------------------------------------------------------------------------------------------- signals


class StopSignals:
    """Turns Ctrl-C (SIGINT) and SIGTERM into a request the loop honours at its next step boundary (`requested`,
    `exit_code`); a second Ctrl-C interrupts at once. Handlers are installed only in the main thread and restored
    on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 2)

    @property
    def name(self) -> str:
        import signal

        return "Ctrl-C" if self.signum in (None, signal.SIGINT) else signal.Signals(self.signum).name

    def _handle(self, signum: int, frame: Any) -> None:
        import signal

        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None:  # acknowledged at once (os.write: safe inside a handler), honoured at the next step
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            line = f"\n{name}: stopping at the next step, with a checkpoint once training began (Ctrl-C again: now)\n"
            with contextlib.suppress(OSError):
                os.write(2, line.encode())
        self.signum = signum

    def __enter__(self) -> StopSignals:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


# ---------------------------------------------------------------------------------------------------- exports


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Holds the folder's run lock (pid + host, stale after a crash) for a command that writes a folder in one go
    (`sdtoolkit export`): a second command into the same folder is refused with one line; the lock is released on
    exit. What the command may replace in the folder is its own business (the export's manifest)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _acquire_lock(folder)
    try:
        yield folder
    finally:
        info = read_lock(folder)
        if info and info.get("pid") == os.getpid() and info.get("hostname") == socket.gethostname():
            with contextlib.suppress(FileNotFoundError):
                (folder / LOCK_NAME).unlink()
