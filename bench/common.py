"""Shared pieces of the benchmarks: the results file, machine facts, medians, printing."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import socket
import statistics
from pathlib import Path
from typing import Any, Iterable

RESULTS_DIR = Path(__file__).resolve().parent / "results"

SHARED_MACHINE_NOTE = (
    "measured on a development machine shared with other work (other processes were "
    "running; see load_average): absolute times are noisy, the side-by-side ratios "
    "(runs interleaved) are the figures to read"
)


@contextlib.contextmanager
def torch_threads(count: int | None):
    """torch's intra-op thread count set to ``count`` inside the block (None: left as it is),
    and the process's own count back afterwards. The CPU benchmarks use one thread: on a
    busy 2-core VM a second thread made the tiny renders about 5x slower, not faster."""
    import torch

    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class BenchError(ValueError):
    """A benchmark was asked for something it cannot do (one line)."""


def machine_name(override: str | None = None) -> str:
    """The short host name (or ``override``), safe as a file-name part."""
    name = override or socket.gethostname().split(".")[0] or "machine"
    cleaned = "".join(c if c.isalnum() or c in "-_" else "-" for c in name).strip("-")
    if not cleaned:
        raise BenchError(f"machine name {name!r} has no letters or digits")
    return cleaned


def today() -> str:
    return _dt.date.today().isoformat()


def results_path(machine: str, date: str | None = None, directory: Path | None = None) -> Path:
    """bench/results/<YYYY-MM-DD>-<machine>.json (or under ``directory``)."""
    return (directory or RESULTS_DIR) / f"{date or today()}-{machine}.json"


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def environment(threads: int | None = None) -> dict[str, Any]:
    """Facts about this machine and software that the figures depend on."""
    import torch

    facts: dict[str, Any] = {
        "host": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": load_average(),
    }
    try:
        import ray

        facts["ray"] = ray.__version__
    except ImportError:  # the GPU machine may lack Ray
        facts["ray"] = None
    return facts


def update_results(path: Path, section: str, data: dict[str, Any], header: dict[str, Any]) -> dict[str, Any]:
    """Write ``data`` as ``section`` of the JSON file at ``path`` (other sections kept),
    atomically; ``header`` keys are set at the top level. Returns the whole document."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {}
    if path.exists():
        try:
            document = json.loads(path.read_text())
        except json.JSONDecodeError:
            document = {}
        if not isinstance(document, dict):
            document = {}
    document.update(header)
    document.setdefault("sections", {})[section] = data
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    os.replace(temporary, path)
    return document


def median(values: Iterable[float]) -> float:
    values = list(values)
    if not values:
        raise BenchError("no measurements to take the median of")
    return statistics.median(values)


def rounded(value: Any, digits: int = 4) -> Any:
    """Floats rounded (recursively), for readable JSON."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def target(name: str, measured: float, limit: float, comparison: str = "<=", unit: str = "",
           why: str = "") -> dict[str, Any]:
    """A target verdict: measured value, the limit, met or not, by how much and, where
    missed and known, ``why``."""
    if comparison == "<=":
        met = measured <= limit
    elif comparison == ">=":
        met = measured >= limit
    elif comparison == "==":
        met = measured == limit
    else:
        raise BenchError(f"unknown comparison {comparison!r}")
    verdict: dict[str, Any] = {"target": name, "measured": round(measured, 4), "limit": limit,
                               "comparison": comparison, "met": bool(met)}
    if unit:
        verdict["unit"] = unit
    if not met:
        verdict["missed_by"] = round(abs(measured - limit), 4)
        if comparison != "==" and limit:
            verdict["missed_by_relative"] = f"{abs(measured - limit) / abs(limit) * 100:.1f}%"
        if why:
            verdict["why"] = why
    return verdict


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    """A plain text table on stdout."""
    cells = [[str(c) for c in header]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n== {title}")
    for k, row in enumerate(cells):
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)))
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return str(value)
