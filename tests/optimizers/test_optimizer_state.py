"""State round trips: save after generation g, load, continue == a run that never stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nograd.optimizers import (
    OptimizerError,
    make_optimizer,
    optimizer_from_state,
    state_from_json,
    state_to_json,
)

TOTAL = 7


@pytest.mark.parametrize("g", [0, 1, 4])
def test_resume_is_bit_identical(name: str, kit, g: int) -> None:
    straight = kit.build(name, seed=1)
    expected = kit.run(straight, TOTAL)

    first = kit.build(name, seed=1)
    got = kit.run(first, g)
    state = first.state_dict()
    assert state["version"] == 1 and state["type"] == first.name
    text = state_to_json(state)
    json.loads(text)  # strict JSON
    resumed = optimizer_from_state(state_from_json(text))
    assert type(resumed) is type(first) and resumed.generation == g
    got += kit.run(resumed, TOTAL - g)

    assert len(got) == len(expected)
    for gen, (a, b) in enumerate(zip(expected, got, strict=True)):
        assert np.array_equal(a, b), f"generation {gen} differs"
    xa, fa = straight.best
    xb, fb = resumed.best
    assert fa == fb and np.array_equal(xa, xb)
    assert np.array_equal(straight.mean, resumed.mean)
    assert state_to_json(straight.state_dict()) == state_to_json(resumed.state_dict())


def test_state_saved_while_ask_pending_regenerates_the_ask(name: str, kit) -> None:
    opt = kit.build(name, seed=2)
    kit.run(opt, 2)
    pending = opt.ask()
    resumed = optimizer_from_state(state_from_json(state_to_json(opt.state_dict())))
    assert np.array_equal(resumed.ask(), pending)


def test_state_without_json_roundtrip(kit) -> None:
    opt = kit.build("cma")
    kit.run(opt, 2)
    resumed = optimizer_from_state(opt.state_dict())
    assert np.array_equal(resumed.ask(), opt.ask())


def test_cma_state_has_rng_and_no_candidate_arrays(kit) -> None:
    opt = kit.build("cma")
    kit.run(opt, 3)
    state = opt.state_dict()
    assert state["rng"]["bit_generator"] == "PCG64"
    assert state["losses"].shape == (3, kit.POPSIZE) and len(state["candidate_sha256"]) == 3
    assert set(state["library_versions"]) >= {"cma", "numpy"}


def test_tampered_log_is_detected(kit) -> None:
    opt = kit.build("cma")
    kit.run(opt, 3)
    state = opt.state_dict()
    fingerprints = state["candidate_fingerprints"].copy()
    fingerprints[1] += 0.01  # another candidate than the replayed one, far beyond rounding
    bad = dict(
        state,
        candidate_sha256=[state["candidate_sha256"][0], "0" * 64, state["candidate_sha256"][2]],
        candidate_fingerprints=fingerprints,
    )
    with pytest.raises(OptimizerError, match=r"replay diverged at generation 1.*beyond rounding.*library version"):
        optimizer_from_state(bad)
    losses = state["losses"].copy()
    losses[0, 0] += 1.0  # changes the ranking history, so generation 1 is sampled differently
    losses[0, :] = losses[0, ::-1]
    with pytest.raises(OptimizerError, match="diverged"):
        optimizer_from_state(dict(state, losses=losses))
    with pytest.raises(OptimizerError, match="corrupt"):
        optimizer_from_state(dict(state, generation=2))


class _OtherRounding:
    """CMA as a machine whose BLAS rounds differently would run it: every candidate pycma asks moved by
    `relative` of itself (the change reaches pycma's own state, as a rounding difference would)."""

    def __init__(self, monkeypatch, relative: float) -> None:
        from nograd.optimizers import CMA

        def ask(opt):
            opt._asked = [x * (1 + relative) for x in opt._es.ask()]
            return np.asarray(opt._asked, dtype=np.float64)

        monkeypatch.setattr(CMA, "_ask", ask)


def _written_here(kit, generations: int = 5):
    opt = kit.build("cma", seed=3)
    kit.run(opt, generations)
    return opt, state_from_json(state_to_json(opt.state_dict()))


@pytest.mark.parametrize("fingerprints", [True, False], ids=["fingerprints", "written-before-fingerprints"])
def test_a_replay_that_differs_by_rounding_resumes_with_a_note(kit, monkeypatch, fingerprints: bool) -> None:
    """A checkpoint resumed on a CPU whose BLAS rounds differently (another OpenBLAS kernel): the digests differ,
    the candidates agree to rounding, so the run goes on from a state equal up to rounding, and says so."""
    original, state = _written_here(kit)
    if not fingerprints:
        del state["candidate_fingerprints"]
    _OtherRounding(monkeypatch, 1e-13)
    with pytest.warns(RuntimeWarning, match=r"up to rounding, not bit-identical: 5 of 5 generations"):
        resumed = optimizer_from_state(state)
    assert len(resumed.restore_notes) == 1 and "up to rounding" in resumed.restore_notes[0]
    assert resumed.generation == 5 and resumed.best[1] == original.best[1]
    after, expected = resumed.ask(), original.ask()
    assert not np.array_equal(after, expected) and np.allclose(after, expected, rtol=1e-9, atol=1e-9)
    # The log now holds what this machine asked: a second resume here is bit-identical and says nothing.
    again = optimizer_from_state(state_from_json(state_to_json(resumed.state_dict())))
    assert again.restore_notes == () and np.array_equal(again.ask(), after)


@pytest.mark.parametrize("fingerprints", [True, False], ids=["fingerprints", "written-before-fingerprints"])
def test_a_replay_that_differs_beyond_rounding_is_refused(kit, monkeypatch, fingerprints: bool) -> None:
    _, state = _written_here(kit)
    if not fingerprints:
        del state["candidate_fingerprints"]
    _OtherRounding(monkeypatch, 1e-4)
    match = "diverged at generation 0" if fingerprints else "best candidate after replay"
    with pytest.raises(OptimizerError, match=rf"{match}.*beyond rounding"):
        optimizer_from_state(state)


def test_a_bit_identical_restore_has_no_notes(kit) -> None:
    _, state = _written_here(kit)
    assert optimizer_from_state(state).restore_notes == ()
    assert make_optimizer("cma", dim=4, popsize=4).restore_notes == ()


def test_deep_restore_names_the_layer_of_a_rounded_replay(kit, monkeypatch) -> None:
    opt = kit.build("deep", seed=3)
    kit.run(opt, 4)
    state = state_from_json(state_to_json(opt.state_dict()))
    _OtherRounding(monkeypatch, 1e-13)
    with pytest.warns(RuntimeWarning, match="up to rounding"):
        resumed = optimizer_from_state(state)
    assert [note.split(":")[0] for note in resumed.restore_notes] == [f"layer {i}" for i in range(kit.N_LAYERS)]


def test_version_mismatch_warns_but_replays(kit) -> None:
    opt = kit.build("ng:TBPSA")
    kit.run(opt, 2)
    state = opt.state_dict()
    state["library_versions"] = dict(state["library_versions"], nevergrad="0.0.1")
    with pytest.warns(RuntimeWarning, match="other library versions"):
        resumed = optimizer_from_state(state)
    assert np.array_equal(resumed.ask(), opt.ask())


@pytest.mark.parametrize(
    "patch, match",
    [({"version": 2}, "version"), ({"type": "adam"}, "unknown"), ({"type": "deep"}, "corrupt 'deep' state")],
)
def test_bad_envelopes(kit, patch: dict, match: str) -> None:
    state = dict(kit.build("cma").state_dict(), **patch)
    with pytest.raises(OptimizerError, match=match):
        optimizer_from_state(state)


@settings(max_examples=15, deadline=None)
@given(
    st.lists(
        st.lists(st.sampled_from([0.0, 1.0, -2.5, 1e300, -1e-300, 7.0]) | st.floats(-1e6, 1e6), min_size=6, max_size=6),
        min_size=1,
        max_size=5,
    ),
    st.integers(0, 5),
)
def test_cma_resume_for_arbitrary_losses(losses: list[list[float]], cut: int) -> None:
    cut = min(cut, len(losses))

    def drive(opt, rows):
        out = []
        for row in rows:
            x = opt.ask()
            out.append(x)
            opt.tell(x, np.array(row))
        return out

    straight = make_optimizer("cma", dim=3, popsize=6, seed=9)
    expected = [*drive(straight, losses), straight.ask()]
    first = make_optimizer("cma", dim=3, popsize=6, seed=9)
    got = drive(first, losses[:cut])
    resumed = optimizer_from_state(state_from_json(state_to_json(first.state_dict())))
    got += [*drive(resumed, losses[cut:]), resumed.ask()]
    assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))
    assert straight.best[1] == resumed.best[1]


_CHILD = """
import sys, numpy as np
np.random.seed(0)
global_before = np.random.get_state()
from nograd.optimizers import make_optimizer
from nograd.optimizers._state import candidates_digest
out = []
for name, kw in [("cma", {}), ("ng:NGOpt", {"budget": 2000}), ("ng:TBPSA", {})]:
    opt = make_optimizer(name, dim=10, popsize=20, seed=5, **kw)
    for _ in range(3):
        x = opt.ask()
        out.append(candidates_digest(x))
        opt.tell(x, ((x - 0.5) ** 2).sum(1))
    out.append(candidates_digest(opt.ask()))
assert all(np.array_equal(a, b) for a, b in zip(global_before, np.random.get_state())), "global RNG touched"
print(" ".join(out))
"""


def test_runs_are_reproducible_across_processes(tmp_path: Path) -> None:
    """Fresh interpreters with different hash seeds produce the same candidates (resume in a new process)."""
    root = Path(__file__).resolve().parents[2]
    results = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=str(root))
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        results.append(proc.stdout.split())
    assert results[0] == results[1] and len(results[0]) == 12
    assert os.listdir(tmp_path) == []
