"""Benchmark runner: runs benchmarks/<name>.py, writes results/<name>.json and results/README.md.

Each benchmark module defines ``NAME``, ``DESCRIPTION`` and ``run() -> dict`` returning
``{"results": {...}, "goals": [{"goal": str, "value": ..., "target": str, "met": bool}]}``.
Benchmarks measure and report; they never assert. Usage::

    python benchmarks/run.py [NAME ...]      # or: mlops-ray bench [NAME ...]
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def environment() -> dict:
    """Machine and library versions the figures were measured with."""
    import importlib.metadata as md

    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    libs = {}
    for pkg in ("ray", "pyspark", "scikit-learn", "mlflow", "numpy", "pandas", "pyarrow"):
        try:
            libs[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return {"cpus": os.cpu_count(), "memory_gib": round(mem_gib, 1), "python": platform.python_version(),
            "platform": platform.platform(), "libraries": libs}


def discover() -> dict[str, Path]:
    return {p.stem: p for p in sorted(HERE.glob("*.py")) if p.stem not in ("run", "__init__")}


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_markdown() -> None:
    lines = ["# Benchmark results", "",
             "Written by `python benchmarks/run.py` (or `mlops-ray bench`). Each row is a goal the benchmark",
             "declares; *value* is what was measured on the machine in the JSON's `environment`.", ""]
    for path in sorted(RESULTS.glob("*.json")):
        d = json.loads(path.read_text())
        env = d["environment"]
        lines += [f"## {d['name']}", "", d["description"], "",
                  f"Measured {d['measured_at']} on {env['cpus']} CPUs, {env['memory_gib']} GiB, Python {env['python']}"
                  f" ({', '.join(f'{k} {v}' for k, v in env['libraries'].items())}); wall {d['wall_s']:.0f} s.", "",
                  "| goal | target | value | met |", "|---|---|---|---|"]
        for g in d["goals"]:
            lines.append(f"| {g['goal']} | {g['target']} | {g['value']} | {'met' if g['met'] else '**missed**'} |")
        lines.append("")
        if d.get("table"):
            lines += d["table"] + [""]
    (RESULTS / "README.md").write_text("\n".join(lines))


def main(argv: list[str]) -> int:
    available = discover()
    names = argv or list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {sorted(available)}", file=sys.stderr)
        return 2
    RESULTS.mkdir(exist_ok=True)
    for name in names:
        mod = load(available[name])
        print(f"== {name}: {mod.DESCRIPTION}", flush=True)
        t0 = time.monotonic()
        out = mod.run()
        record = {"name": name, "description": mod.DESCRIPTION, "environment": environment(),
                  "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "wall_s": round(time.monotonic() - t0, 1), **out}
        (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2))
        for g in out["goals"]:
            print(f"   {'met   ' if g['met'] else 'MISSED'} {g['goal']}: {g['value']} (target {g['target']})")
    write_markdown()
    print(f"results: {RESULTS / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
