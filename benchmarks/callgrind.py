"""Instructions per request, counted by valgrind's callgrind: a measure the other programs
on the machine cannot disturb, for the ratios the targets are set in.

    python -m benchmarks --callgrind [--requests 200] [--warm-up 20] [--keep DIR]

SQLite and the local-memory cache, in-process WSGI as in the timed step (no socket, no
other process, so nothing but this process's own instructions is counted). One process
under ``valgrind --tool=callgrind --dump-before=getppid`` serves, for each endpoint,
``--warm-up`` requests, then ``--requests`` counted ones; a call of ``os.getppid()``
between sections makes callgrind write the counts of the section that ended and start
again from zero, so start-up and warm-up are left out exactly. For a cold request the
invalidation (or eviction) that makes it cold runs ``--requests`` times in a section of its
own, which is subtracted. ``--keep DIR`` keeps callgrind's files for ``callgrind_annotate``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .labels import COLD, DRF_TOKEN, DRF_TOKEN_REFUSED, EMPTY, FLOOR, NONE, REFUSED, WARM

# (what, numerator, denominator, at most): ratios of instructions added over the
# unauthenticated view.
TARGETS = (
    ("warm within 2x the floor's added instructions", WARM, FLOOR, 2.0),
    ("cold (invalidated) at most half of DRF Token's added instructions", COLD, DRF_TOKEN, 0.5),
    ("cold (empty cache) at most half of DRF Token's added instructions", EMPTY, DRF_TOKEN, 0.5),
    ("refusing an unknown key at most DRF Token's refusal", REFUSED, DRF_TOKEN_REFUSED, 1.0),
)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks --callgrind", description=__doc__)
    parser.add_argument("--requests", type=int, default=200, help="counted requests per endpoint")
    parser.add_argument("--warm-up", type=int, default=20, help="uncounted requests before them")
    parser.add_argument("--keep", metavar="DIR", help="keep callgrind's output files in DIR")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (scripts/services.sh bench, or apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="drf-llm-keys-callgrind-") as scratch:
        work = Path(scratch)
        out_dir = Path(args.keep) if args.keep else work
        out_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, DJANGO_SETTINGS_MODULE="benchmarks.settings", PYTHONHASHSEED="0")
        env["DRF_LLM_KEYS_BENCH_DATABASE_URL"] = f"sqlite:///{work / 'bench.sqlite3'}"
        env.pop("DRF_LLM_KEYS_BENCH_REDIS_URL", None)  # the local-memory cache
        credentials, plan = work / "credentials.json", work / "plan.json"
        child = [sys.executable, "-m", "benchmarks.callgrind_child"]
        # Migrations and rows natively: under valgrind they would take minutes.
        subprocess.run([*child, "prepare", str(credentials)], env=env, check=True)
        out_file = out_dir / "callgrind.out"
        for old in out_dir.glob("callgrind.out*"):
            old.unlink()
        valgrind = [
            "valgrind", "--tool=callgrind", "--quiet", "--dump-before=getppid",
            f"--callgrind-out-file={out_file}",
        ]  # fmt: skip
        measure = [*child, "measure", str(credentials), str(plan), str(args.requests), str(args.warm_up)]
        subprocess.run([*valgrind, *measure], env=env, check=True)
        sections = json.loads(plan.read_text())
        counts = {
            name: _instructions(out_file, part) for part, name in enumerate(sections, start=1) if name != "gc"
        }
        if args.keep:
            index = "".join(f"{out_file}.{part}\t{name}\n" for part, name in enumerate(sections, start=1))
            (out_dir / "sections.tsv").write_text(index)
    report(counts, args.requests, args.warm_up)
    if args.keep:
        print(f"callgrind's files are in {out_dir} (sections.tsv says which section each one counted)")
    return 0


def _instructions(out_file: Path, part: int) -> int:
    text = Path(f"{out_file}.{part}").read_text()
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
    if found is None:
        raise SystemExit(f"no instruction count in {out_file}.{part}")
    return int(found[1])


def report(counts: dict[str, int], requests: int, warm_up: int) -> None:
    per_request: dict[str, float] = {}
    for section, total in counts.items():
        kind, _, label = section.partition("|")
        if kind == "requests":
            prepared = counts.get(f"prepare|{label}", 0)
            per_request[label] = (total - prepared) / requests
    version = subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()
    base = per_request[NONE]
    ours = per_request[WARM] - base
    print(
        f"\nInstructions per request ({version}, callgrind), in-process WSGI, SQLite + local-memory "
        f"cache: {requests} counted requests per endpoint after {warm_up} uncounted"
    )
    print(f"{'endpoint':<38}{'instructions':>14}{'added':>12}{'x ours':>8}")
    for label, figure in per_request.items():
        added = figure - base
        print(
            f"{label:<38}{figure:>14,.0f}{'-' if label == NONE else format(added, ',.0f'):>12}"
            f"{'-' if label == NONE else format(added / ours, '.2f'):>8}"
        )
    print("Targets (instructions added over the unauthenticated view; SQLite + local-memory cache):")
    for what, numerator, denominator, most in TARGETS:
        ratio = (per_request[numerator] - base) / (per_request[denominator] - base)
        print(f"  {'met   ' if ratio <= most else 'MISSED'}  {what}: {ratio:.2f} (at most {most:g})")
