"""The architecture as CI enforces it: the wheel installs one top-level name (`nograd`), its layers import one way
and no package has import cycles (import-linter contracts in pyproject.toml, run on the installed wheel, where every
package sits under nograd/), the code passes ruff, and the API process imports no torch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from the tracked tree, installed into a scratch target."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(source),
            "-w",
            str(root / "dist"),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next((root / "dist").glob("nograd-*.whl"))
    target = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    return target


def test_the_wheel_installs_one_import_name(installed):
    top = {p.name for p in installed.iterdir() if p.name != "bin"}
    assert {p for p in top if not p.endswith(".dist-info")} == {"nograd"}, top
    for package in ("optimizers", "clients", "engine", "service", "service/api/static", "tasks/data"):
        assert (installed / "nograd" / package).is_dir(), package
    assert (installed / "nograd" / "service" / "api" / "static" / "vendor" / "uPlot.iife.min.js").exists()
    migrations = installed / "nograd" / "service" / "migrations"  # `nograd db upgrade` runs them from the package
    assert (migrations / "env.py").exists() and (migrations / "versions" / "0001_v0_1.py").exists()
    info = next(installed.glob("nograd-*.dist-info"))
    assert "License-Expression: Apache-2.0" in (info / "METADATA").read_text()
    assert "Apache License" in next(info.rglob("LICENSE")).read_text()


def _lint_imports(site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "lint-imports"), str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=site,
        env={"PYTHONPATH": str(site), "PATH": str(BIN)},
        capture_output=True,
        text=True,
    )


def test_import_contracts_hold(installed):
    result = _lint_imports(installed)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    "module, source, broken",
    [
        ("engine/_upward.py", "import nograd.service.store\n", "layers import one way"),
        ("clients/_upward.py", "from nograd import methods\n", "layers import one way"),
        ("optimizers/_a.py", "from . import _b\n", "cycles"),
        ("clients/_torch.py", "import torch\n", "need no torch"),
    ],
)
def test_a_new_upward_import_or_cycle_fails(installed, tmp_path, module, source, broken):
    site = tmp_path / "site"
    shutil.copytree(installed / "nograd", site / "nograd")
    (site / "nograd" / module).write_text(source)
    if module == "optimizers/_a.py":
        (site / "nograd" / "optimizers" / "_b.py").write_text("from . import _a\n")
    result = _lint_imports(site)
    assert result.returncode != 0 and broken in result.stdout.replace("\n", " ")


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff(command):
    result = subprocess.run([str(BIN / "ruff"), *command, "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_api_process_imports_no_torch():
    """Serving the API with external workers needs no model libraries: they load only where a model runs."""
    code = (
        "import sys; from nograd.service.api import create_app; from nograd.cli import build_parser; "
        "from nograd.pipeline import resolve_run; from nograd.config import RunConfig; "
        "resolve_run(RunConfig(method='bbpl', task='mr')); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
