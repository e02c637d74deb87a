"""Job checkpoints: a search's state as JSON text, stamped with the versions of the libraries that draw its
candidates, and refused on resume where those versions changed.

A job resumes by rebuilding its optimizer from the checkpoint: pycma and nevergrad optimizers replay their told
generations and check each re-asked candidate matrix against the saved digests (`nograd.optimizers._replay`). That
proves the rebuilt state equals the saved one, not that the generations still to come are the ones the saving
runner would have drawn: a release of pycma, nevergrad or numpy may sample later candidates differently (another
default, another order of draws), and the job would end with a prompt that neither version alone produces. So the
checkpoint records `versions` ({"cma": ..., "nevergrad": ..., "numpy": ...}, the installed distributions), and a
runner whose versions differ in a library the job's optimizer uses fails the job with both versions and the fix.
Checkpoints written before versions were recorded resume as before, with a logged warning.

The optimizers stay pure: versions are looked up and compared here, in the service that stores the state.
"""

from __future__ import annotations

import functools
import logging
from importlib import metadata
from typing import Any

from nograd.optimizers import state_from_json, state_to_json

__all__ = ["RECORDED_LIBRARIES", "CheckpointVersionError", "dump_checkpoint", "library_versions", "load_checkpoint"]

log = logging.getLogger("nograd.jobs")
#: The distributions whose code draws a job's candidates (numpy: every optimizer's random draws).
RECORDED_LIBRARIES = ("cma", "nevergrad", "numpy")
_VERSIONS_KEY = "versions"


class CheckpointVersionError(ValueError):
    """A checkpoint written with other versions of libraries its optimizer draws candidates with."""


@functools.cache
def library_versions() -> dict[str, str | None]:
    """The installed version of each of `RECORDED_LIBRARIES` (None: not installed); looked up once per process."""
    versions: dict[str, str | None] = {}
    for name in RECORDED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def dump_checkpoint(state: dict[str, Any]) -> str:
    """A search's `state_dict()` as checkpoint text, with this process's `library_versions()` under "versions"."""
    return state_to_json({**state, _VERSIONS_KEY: library_versions()})


def load_checkpoint(text: str, job_id: str) -> dict[str, Any]:
    """The search state of checkpoint `text` (for `load_state`), if this process may resume it.

    Raises:
        CheckpointVersionError: a library the state's optimizer draws with has another version here than the one
            the checkpoint was written with.
        ValueError: the text is not a checkpoint's JSON.
    """
    state = state_from_json(text)
    saved = state.pop(_VERSIONS_KEY, None)
    running = library_versions()
    if saved is None:
        log.warning(
            "job %s: its checkpoint does not record library versions (written by an older nograd); resuming with %s",
            job_id,
            ", ".join(f"{name} {version}" for name, version in running.items()),
        )
        return state
    changed = [name for name in sorted(_libraries_used(state)) if saved.get(name) != running[name]]
    if changed:
        written = " and ".join(f"{name} {saved.get(name)}" for name in changed)
        here = " and ".join(f"{name} {running[name]}" for name in changed)
        wanted = " ".join(f"{name}=={saved.get(name)}" for name in changed)
        verb = "is" if len(changed) == 1 else "are"
        raise CheckpointVersionError(
            f"checkpoint written with {written}, this runner has {here}: resume would not replay the same "
            f"candidates; submit the job again or run it where {wanted} {verb} installed"
        )
    return state


def _libraries_used(state: dict[str, Any]) -> set[str]:
    """numpy, and the libraries the state's optimizer (or any optimizer nested in it, as BBTv2's per-layer ones)
    lists under "library_versions": those it replays through (pycma for "cma", nevergrad and pycma for "ng:*")."""
    used = {"numpy"}
    pending: list[Any] = [state.get("optimizer")]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            used.update(node.get("library_versions") or ())
            pending.extend(value for key, value in node.items() if key != "library_versions")
        elif isinstance(node, list):
            pending.extend(node)
    return used & set(RECORDED_LIBRARIES)
