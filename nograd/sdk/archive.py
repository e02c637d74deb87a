"""Unpacking an export (`GET /v1/jobs/{id}/export`, a zip) into a folder, safely: every entry is checked before
anything is written, and an archive with an absolute path, a `..` part, a drive, a backslash or a link in it is
refused whole, as is one that would overwrite a file (unless asked)."""

from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO


def _unsafe(info: zipfile.ZipInfo) -> str | None:
    """Why the entry must not be written, or None."""
    name = info.filename
    path = PurePosixPath(name)
    if not name or name.startswith("/") or path.is_absolute():
        return "an absolute path"
    if "\\" in name or (len(name) > 1 and name[1] == ":"):
        return "a Windows path"
    if ".." in path.parts:
        return "a '..' part"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "a symbolic link"
    return None


def extract(
    archive: IO[bytes], out_dir: str | Path, *, overwrite: bool = False, what: str = "the archive"
) -> list[Path]:
    """Writes the files of the zip `archive` under `out_dir` (made if missing); returns their paths (`out_dir / name`),
    in archive order.

    Raises:
        ValueError: `archive` is not a zip, or an entry is unsafe (named, with why); nothing is written.
        FileExistsError: a file it holds exists under `out_dir` and `overwrite` is False; nothing is written.
    """
    out = Path(out_dir)
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{what} is not a zip archive ({exc})") from None
    with zf:
        members = zf.infolist()
        root = out.resolve()
        targets = []
        for info in members:
            why = _unsafe(info)
            target = (out / info.filename).resolve()
            if why is None and target != root and root not in target.parents:
                why = "a path outside the folder"
            if why is not None:
                raise ValueError(f"{what} holds an unsafe entry {info.filename!r} ({why}); nothing was written")
            if not info.is_dir():
                if target.exists() and not overwrite:
                    raise FileExistsError(f"{target} exists; pass overwrite=True, or another out_dir")
                targets.append((info, target, out / info.filename))
        written = []
        for info, target, path in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink)
            written.append(path)
    return written
