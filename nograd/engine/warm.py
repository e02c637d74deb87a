"""`python -m nograd.engine.warm MODEL [MODEL ...]`: load each model once, so that a built-in model's converted
copy lands in $NOGRAD_CACHE_DIR (used at image build time; later loads take under a second)."""

from __future__ import annotations

import sys


def main(names: list[str]) -> int:
    from .models import load_model

    for name in names or ["smollm2-135m"]:
        handle = load_model(name, device="cpu")
        print(f"{name}: {handle.model_id}, {handle.n_layers} layers, cached")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
