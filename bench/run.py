"""`make bench`: the CPU benchmarks (engine, farm overhead, scheduler) in one run.

    python -m bench.run                      # all three, ~14 minutes on a 2-core VM
                                             # (engine ~8, farm ~4, scheduler ~2)
    python -m bench.run --only engine        # one or more of: engine, farm, scheduler
    python -m bench.run --quick              # a tiny configuration (~1.5 minutes; for tests)
    python -m bench.run --machine ci-runner --note "nightly"

Prints the figures and writes them into bench/results/<YYYY-MM-DD>-<machine>.json (one
section per benchmark, written as each finishes; the GPU benchmark, ``python -m
bench.gpu``, adds its own section to the same file on a GPU machine). Targets are
evaluated and listed; a missed target is a result, not an error (exit status 0); a part
that fails is recorded as an error in its section, the others still run (exit status 1).
The process reuses freed host memory as the farm's CPU render processes do
(``engine.host_memory``), so the direct and DD-equivalent runs get the allocator they get.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from bench.common import (
    SHARED_MACHINE_NOTE,
    BenchError,
    environment,
    load_average,
    machine_name,
    print_table,
    results_path,
    today,
    update_results,
)
from engine.host_memory import keep_freed_host_memory

PARTS = ("engine", "farm", "scheduler")
TIME_LIMIT_SECONDS = 15 * 60


def parse_parts(text: str | None) -> list[str]:
    if not text:
        return list(PARTS)
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise BenchError(f"--only takes a comma-separated list of {', '.join(PARTS)}; got {text!r}")
    return parts


def part_runner(part: str, quick: bool, threads: int) -> Callable[[], dict[str, Any]]:
    if part == "engine":
        from bench import engine_cpu

        return lambda: engine_cpu.run(engine_cpu.quick_cases() if quick else engine_cpu.full_cases(), threads=threads)
    if part == "farm":
        import dataclasses

        from bench import farm_overhead

        case = farm_overhead.QUICK if quick else farm_overhead.OverheadCase()
        return lambda: farm_overhead.run(dataclasses.replace(case, threads=threads))
    from bench import scheduler

    return lambda: scheduler.run(scheduler.QUICK if quick else scheduler.Workload())


def machine_note(extra: str | None) -> str | None:
    """A note for the results: the shared-machine caveat when the load says so, plus ``extra``."""
    notes = []
    load = load_average()
    cpus = os.cpu_count() or 1
    if load is not None and load[0] > 0.5 * cpus:
        notes.append(f"load average {load[0]:.2f} on {cpus} CPUs at the start: {SHARED_MACHINE_NOTE}")
    if extra:
        notes.append(extra)
    return "; ".join(notes) or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help=f"comma-separated parts: {', '.join(PARTS)} (default: all)")
    parser.add_argument("--machine", help="machine name in the results file name (default: short host name)")
    parser.add_argument("--out-dir", type=Path, help="where to write the results (default: bench/results)")
    parser.add_argument("--quick", action="store_true", help="tiny configuration: checks the code, not the speed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the engine and farm parts")
    parser.add_argument("--note", help="free text saved with the results")
    args = parser.parse_args(argv)
    try:
        parts = parse_parts(args.only)
        machine = machine_name(args.machine)
        if args.threads < 1:
            raise BenchError(f"--threads must be at least 1, got {args.threads}")
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = results_path(machine, today(), args.out_dir)
    environment_figures = {**environment(args.threads), "host_memory_reuse": keep_freed_host_memory()}
    header = {"date": today(), "machine": machine, "quick": args.quick,
              "environment": environment_figures, "note": machine_note(args.note)}
    started = time.perf_counter()
    verdicts: list[list[Any]] = []
    failed = []
    for part in parts:
        part_started = time.perf_counter()
        try:
            data = part_runner(part, args.quick, args.threads)()
        except Exception as error:  # keep the other parts' results; rerun this one with --only
            print(f"bench: {part} failed: {type(error).__name__}: {error}", file=sys.stderr)
            data = {"error": f"{type(error).__name__}: {error}"[:1000]}
            failed.append(part)
        data["wall_seconds"] = round(time.perf_counter() - part_started, 1)
        header["load_average_at_end"] = load_average()
        header["wall_seconds"] = round(time.perf_counter() - started, 1)
        update_results(path, part, data, header)
        for item in _targets(data):
            verdicts.append([part, item["target"], item["measured"], f"{item['comparison']} {item['limit']}",
                             item["met"]])
    total = time.perf_counter() - started
    print_table("Targets", ["part", "target", "measured", "limit", "met"], verdicts)
    print(f"\nbench: {len(parts)} part(s) in {total / 60:.1f} min; results in {path}")
    if total > TIME_LIMIT_SECONDS and not args.quick:
        print(f"bench: took longer than {TIME_LIMIT_SECONDS // 60} minutes", file=sys.stderr)
    if failed:
        print(f"bench: failed: {', '.join(failed)} (rerun with --only {','.join(failed)})", file=sys.stderr)
        return 1
    return 0


def _targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    found = list(data.get("targets", []))
    for case in data.get("cases", []):
        found += [{**t, "target": f"{case['label']}: {t['target']}"} for t in case.get("targets", [])]
    return found


if __name__ == "__main__":
    sys.exit(main())
