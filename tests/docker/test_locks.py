"""The images install pinned, hashed dependencies (requirements/*.lock, written by `bash scripts/lock.sh`) and
nothing else: these checks keep the locks and pyproject.toml from drifting apart silently. A failure here means:
run `bash scripts/lock.sh` (and commit the locks)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from procs import ROOT

SERVICE_LOCK = ROOT / "requirements" / "service.lock"
CUDA_LOCK = ROOT / "requirements" / "worker-cuda.lock"
DOCKER = ROOT / "docker"
#: What the images' `pip install` evaluates markers against: CPython 3.11 on linux x86_64.
TARGET = {
    **default_environment(),
    "implementation_name": "cpython",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_system": "Linux",
    "python_version": "3.11",
    "sys_platform": "linux",
}
#: The torch stack the CUDA image's base brings, which its lock leaves out.
CUDA_STACK = re.compile(r"^(torch|triton|nvidia-.*)$")


def _pins(lock: Path) -> dict[str, tuple[Version, int]]:
    """Canonical name -> (pinned version, number of hashes), from a `uv pip compile --generate-hashes` file."""
    pins = {}
    for entry in re.split(r"\n(?=[^\s#-])", lock.read_text()):
        first = entry.split("\\")[0].split(" --hash")[0].strip()
        if not first or first.startswith(("#", "-")):
            continue
        requirement = Requirement(first)
        specs = list(requirement.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{lock.name}: {first!r} is not an exact pin"
        pins[canonicalize_name(requirement.name)] = (Version(specs[0].version), entry.count("--hash=sha256:"))
    return pins


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _locked_requirements() -> list[Requirement]:
    """What the images install: the main dependencies and the `postgres` extra, for the target platform."""
    project = _project()
    texts = project["dependencies"] + project["optional-dependencies"]["postgres"]
    return [r for r in map(Requirement, texts) if r.marker is None or r.marker.evaluate(TARGET)]


def _from_tag(dockerfile: str, image: str) -> Version:
    match = re.search(rf"^FROM {re.escape(image)}:(\d+(?:\.\d+)+)-", (DOCKER / dockerfile).read_text(), re.M)
    assert match, f"docker/{dockerfile} does not start FROM {image}:X.Y.Z-..."
    return Version(match.group(1))


def test_the_service_lock_pins_every_dependency_within_its_range():
    pins = _pins(SERVICE_LOCK)
    for requirement in _locked_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} (pyproject.toml) is not in {SERVICE_LOCK.name}: run scripts/lock.sh"
        version = pins[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{SERVICE_LOCK.name} pins {name}=={version}, outside pyproject.toml's {requirement}: run scripts/lock.sh"
        )


def test_the_extras_pyproject_asks_for_are_locked_too():
    """psycopg[binary] needs psycopg-binary: checked from the metadata of what is installed here, when it is the
    locked version (the development environment installs from pyproject.toml, not from the lock)."""
    pins, checked = _pins(SERVICE_LOCK), 0
    for requirement in (r for r in _locked_requirements() if r.extras):
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            continue
        if Version(dist.version) != pins[canonicalize_name(requirement.name)][0]:
            continue
        for text in dist.requires or []:
            needed = Requirement(text)
            if needed.marker is not None and any(
                needed.marker.evaluate({**TARGET, "extra": extra}) for extra in requirement.extras
            ):
                assert canonicalize_name(needed.name) in pins, f"{requirement} needs {needed}, not locked"
                assert needed.specifier.contains(pins[canonicalize_name(needed.name)][0], prereleases=True)
                checked += 1
    if not checked:
        pytest.skip("no dependency with extras is installed here at its locked version")


@pytest.mark.parametrize("lock", [SERVICE_LOCK, CUDA_LOCK], ids=lambda p: p.name)
def test_every_pin_carries_hashes(lock):
    """`pip install --require-hashes` refuses a requirement without one."""
    pins = _pins(lock)
    assert pins and not [name for name, (_, hashes) in pins.items() if hashes == 0]


def test_the_cpu_images_get_the_cpu_torch_development_installs():
    torch = _pins(SERVICE_LOCK)["torch"][0]
    assert torch.local == "cpu", f"{SERVICE_LOCK.name} pins torch=={torch}, not a CPU build"
    setup = re.search(r"TORCH_SPEC:-torch==([^}]+)}", (ROOT / "scripts" / "setup.sh").read_text())
    assert setup and Version(setup.group(1)).public == torch.public, "scripts/setup.sh installs another torch"
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in SERVICE_LOCK.read_text().splitlines()


def test_the_cuda_lock_is_the_service_lock_less_the_base_images_torch():
    service, cuda = _pins(SERVICE_LOCK), _pins(CUDA_LOCK)
    assert not [name for name in cuda if CUDA_STACK.match(name)], "the CUDA image keeps its base's torch stack"
    differ = {n: (service[n][0], v) for n, (v, _) in cuda.items() if n in service and service[n][0] != v}
    assert not differ, f"pinned differently from {SERVICE_LOCK.name}: {differ}"
    base_torch = _from_tag("worker-cuda.Dockerfile", "pytorch/pytorch")
    for requirement in _locked_requirements():
        name = canonicalize_name(requirement.name)
        assert name == "torch" or name in cuda, f"{requirement} is not in {CUDA_LOCK.name}: run scripts/lock.sh"
        version = base_torch if name == "torch" else cuda[name][0]
        assert requirement.specifier.contains(version, prereleases=True), f"{name}=={version} is outside {requirement}"


def test_the_locks_are_for_the_images_python():
    api = _from_tag("api.Dockerfile", "python")
    assert _from_tag("worker.Dockerfile", "python") == api
    assert api.release[:2] == (3, 11) and "--python-version" in (ROOT / "scripts" / "lock.sh").read_text()


@pytest.mark.parametrize(
    ("dockerfile", "lock"),
    [("api.Dockerfile", SERVICE_LOCK), ("worker.Dockerfile", SERVICE_LOCK), ("worker-cuda.Dockerfile", CUDA_LOCK)],
)
def test_the_images_install_only_what_their_lock_pins(dockerfile, lock):
    text = (DOCKER / dockerfile).read_text().replace("\\\n", " ")
    installs = re.findall(r"pip install ([^&\n]*)", text)
    assert installs and all("--no-deps" in args.split() for args in installs), installs
    relative = lock.relative_to(ROOT).as_posix()
    assert re.search(rf"^COPY {re.escape(relative)} ", text, re.M), f"docker/{dockerfile} does not copy {relative}"
    assert any(f"-r {relative}" in args and "--require-hashes" in args for args in installs)
