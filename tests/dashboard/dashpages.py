"""Helpers the dashboard tests share (conftest.py holds the fixtures): where files live, signing a page in."""

from __future__ import annotations

import json

from procs import ROOT

STATIC = ROOT / "service" / "api" / "static"
DOCS = ROOT / "docs"


def sign_in(page, service, hash_: str = "#/") -> None:
    """Open the dashboard at `hash_` with the tenant's key, put in sessionStorage before the page's scripts run."""
    url, key = service
    page.add_init_script(f"sessionStorage.setItem('nograd.key', {json.dumps(key)})")
    page.goto(url + "/" + hash_)
