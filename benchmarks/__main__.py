"""Run the benchmark suite: ``python -m benchmarks`` (full) or ``python -m benchmarks --quick``.

The full run writes ``docs/benchmarks.md``, ``docs/benchmarks.json`` and
``docs/benchmark-latency.png``; it takes about fifteen minutes on two cores. The quick run uses tiny
sizes, finishes in well under a minute, and writes the same three files to a temporary directory
(or ``--out``): it keeps the suite from rotting, its figures mean nothing.

``--only`` runs some scenarios (``--only cold-load``), and ``--load-sizes``, ``--load-repeats`` and
``--load-max-seconds`` change the cold-load scenario's sizes; any of them writes to a temporary
directory unless ``--out`` says otherwise, so docs/ only ever holds a whole full run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import _auth, _cold, _cold_load, _fleet, _hot, _outage, _report, _stall, _tenants
from ._contenders import AIOIAM, AIOIAM_ON_DEMAND, CONTENDERS, HAND_ROLLED, HAND_ROLLED_EVENT, IBM
from ._machine import describe

SCENARIOS = ("cold", "cold-load", "hot", "stall", "auth", "outage", "tenants", "fleet")
DOCS = Path(__file__).resolve().parent.parent / "docs"


@dataclass(frozen=True)
class Sizes:
    cold_sizes: list[int]
    cold_repeats: int
    cold_big_repeats: int
    cold_ibm_max_n: int
    cold_latency: float
    load_sizes: list[int]
    load_repeats: int
    load_work: float
    load_tail: float
    load_max_seconds: float
    hot_calls: int
    hot_slow_calls: int
    hot_rounds: int
    stall_latency: float
    stall_lifetime: float
    stall_ibm_lifetime: float
    stall_rate: float
    stall_refreshes: int
    stall_max_seconds: float
    stall_ibm_max_seconds: float
    auth_requests: int
    auth_slow_requests: int
    auth_rounds: int
    outage_callers: list[int]
    outage_repeats: int
    outage_seconds: float
    outage_ibm_seconds: float
    outage_lifetime: float
    outage_pause: float
    tenants_one: int
    tenants_many: int
    tenants_own_client_many: int
    fleet_sizes: list[int]
    fleet_lifetime: float
    fleet_window: float
    fleet_callers: int
    fleet_repeats: int
    contenders: list[str] = field(default_factory=lambda: list(CONTENDERS))


FULL = Sizes(
    cold_sizes=[1, 100, 1_000, 10_000, 100_000],
    cold_repeats=5,
    cold_big_repeats=5,
    cold_ibm_max_n=100_000,
    cold_latency=0.05,
    load_sizes=[1_000, 5_000, 10_000, 30_000],
    load_repeats=5,
    load_work=50e-6,
    load_tail=0.1,
    load_max_seconds=30.0,
    hot_calls=200_000,
    hot_slow_calls=2_000,
    hot_rounds=7,
    stall_latency=0.2,
    stall_lifetime=4.0,
    stall_ibm_lifetime=60.0,
    stall_rate=500.0,
    stall_refreshes=3,
    stall_max_seconds=30.0,
    stall_ibm_max_seconds=170.0,
    auth_requests=10_000,
    auth_slow_requests=1_000,
    auth_rounds=7,
    outage_callers=[1_000, 10_000],
    outage_repeats=3,
    outage_seconds=60.0,
    outage_ibm_seconds=60.0,
    outage_lifetime=60.0,
    outage_pause=1.0,
    tenants_one=100,
    tenants_many=10_000,
    tenants_own_client_many=10_000,
    fleet_sizes=[1, 2, 4, 8, 16],
    fleet_lifetime=2.0,
    fleet_window=5.0,
    fleet_callers=100,
    fleet_repeats=3,
)

QUICK = Sizes(
    cold_sizes=[1, 10, 100],
    cold_repeats=1,
    cold_big_repeats=1,
    cold_ibm_max_n=100,
    cold_latency=0.05,
    load_sizes=[50],
    load_repeats=1,
    load_work=50e-6,
    load_tail=0.01,
    load_max_seconds=10.0,
    hot_calls=2_000,
    hot_slow_calls=50,
    hot_rounds=2,
    stall_latency=0.05,
    stall_lifetime=1.0,
    stall_ibm_lifetime=60.0,
    stall_rate=200.0,
    stall_refreshes=1,
    stall_max_seconds=3.0,
    stall_ibm_max_seconds=1.0,
    auth_requests=300,
    auth_slow_requests=30,
    auth_rounds=2,
    outage_callers=[20],
    outage_repeats=1,
    outage_seconds=60.0,
    outage_ibm_seconds=1.0,
    outage_lifetime=60.0,
    outage_pause=1.0,
    tenants_one=2,
    tenants_many=10,
    tenants_own_client_many=5,
    fleet_sizes=[1, 2],
    fleet_lifetime=1.0,
    fleet_window=1.5,
    fleet_callers=10,
    fleet_repeats=1,
)


def _log(message: str) -> None:
    print(message, flush=True)


async def _run(sizes: Sizes, scenarios: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    names = sizes.contenders
    for scenario in scenarios:
        started = time.perf_counter()
        _log(f"== {scenario}")
        if scenario == "cold":
            results[scenario] = await _cold.run(
                names,
                sizes.cold_sizes,
                latency=sizes.cold_latency,
                repeats=sizes.cold_repeats,
                big_repeats=sizes.cold_big_repeats,
                ibm_max_n=sizes.cold_ibm_max_n,
                log=_log,
            )
        elif scenario == "cold-load":
            results[scenario] = await _cold_load.run(
                [AIOIAM, AIOIAM_ON_DEMAND, HAND_ROLLED, HAND_ROLLED_EVENT],
                sizes.load_sizes,
                latency=sizes.cold_latency,
                work=sizes.load_work,
                tail=sizes.load_tail,
                repeats=sizes.load_repeats,
                max_seconds=sizes.load_max_seconds,
                log=_log,
            )
        elif scenario == "hot":
            results[scenario] = await _hot.run(
                calls=sizes.hot_calls, slow_calls=sizes.hot_slow_calls, rounds=sizes.hot_rounds, log=_log
            )
        elif scenario == "stall":
            results[scenario] = await _stall.run(
                names,
                latency=sizes.stall_latency,
                lifetime=sizes.stall_lifetime,
                ibm_lifetime=sizes.stall_ibm_lifetime,
                rate=sizes.stall_rate,
                refreshes=sizes.stall_refreshes,
                max_seconds=sizes.stall_max_seconds,
                ibm_max_seconds=sizes.stall_ibm_max_seconds,
                slow=0.005,
                log=_log,
            )
        elif scenario == "auth":
            results[scenario] = await _auth.run(
                requests=sizes.auth_requests,
                slow_requests=sizes.auth_slow_requests,
                rounds=sizes.auth_rounds,
                log=_log,
            )
        elif scenario == "outage":
            results[scenario] = await _outage.run(
                [AIOIAM, AIOIAM_ON_DEMAND, HAND_ROLLED, IBM],
                callers=sizes.outage_callers,
                repeats=sizes.outage_repeats,
                outage=sizes.outage_seconds,
                ibm_outage=sizes.outage_ibm_seconds,
                lifetime=sizes.outage_lifetime,
                latency=sizes.cold_latency,
                pause=sizes.outage_pause,
                log=_log,
            )
        elif scenario == "tenants":
            results[scenario] = await _tenants.run(
                one=sizes.tenants_one,
                many=sizes.tenants_many,
                own_client_many=sizes.tenants_own_client_many,
                log=_log,
            )
        elif scenario == "fleet":
            results[scenario] = await _fleet.run(
                sizes.fleet_sizes,
                lifetime=sizes.fleet_lifetime,
                window=sizes.fleet_window,
                latency=sizes.cold_latency,
                callers=sizes.fleet_callers,
                pause=0.1,
                repeats=sizes.fleet_repeats,
                log=_log,
            )
        results[scenario]["seconds"] = time.perf_counter() - started
    return results


def _positive(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _sizes(text: str) -> list[int]:
    sizes = [_positive(part.strip()) for part in text.split(",") if part.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError("no sizes given")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, output to a temporary directory")
    parser.add_argument("--out", type=Path, help="write the report here (default: docs/, or a temporary directory)")
    parser.add_argument("--only", help=f"comma-separated scenarios among {','.join(SCENARIOS)}")
    parser.add_argument(
        "--own-client-managers",
        type=int,
        help="how many aioiam managers with their own HTTP client to build in the tenants scenario",
    )
    parser.add_argument(
        "--load-sizes",
        type=_sizes,
        help="comma-separated numbers of workers for the cold-load scenario (e.g. 1000,5000,10000)",
    )
    parser.add_argument("--load-repeats", type=_positive, help="rounds per N in the cold-load scenario")
    parser.add_argument(
        "--load-max-seconds",
        type=_positive,
        help="in the cold-load scenario, stop workers not all served after this many seconds",
    )
    args = parser.parse_args(argv)

    scenarios = list(SCENARIOS) if not args.only else [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(unknown)}")
    sizes = QUICK if args.quick else FULL
    changed = {
        name: value
        for name, value in (
            ("tenants_own_client_many", args.own_client_managers),
            ("load_sizes", args.load_sizes),
            ("load_repeats", args.load_repeats),
            ("load_max_seconds", args.load_max_seconds),
        )
        if value is not None
    }
    if changed:
        sizes = Sizes(**{**asdict(sizes), **changed})
    if args.out is not None:
        out = args.out
    elif args.quick or args.only or changed:
        out = Path(tempfile.mkdtemp(prefix="aioiam-bench-"))  # only a full default run writes docs/
    else:
        out = DOCS
    out.mkdir(parents=True, exist_ok=True)

    # Outages make aioiam log a warning per failed request; they are expected here.
    logging.getLogger("aioiam").setLevel(logging.CRITICAL)
    machine = describe()
    _log(f"{machine['cpu']}, {machine['cores']} cores, {machine['python']}, {machine['os']}")
    started = time.perf_counter()
    results = asyncio.run(_run(sizes, scenarios))
    if machine.get("load_average") is not None:
        machine["load_average_end"] = round(os.getloadavg()[0], 2)
    report: dict[str, Any] = {
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "command": "python -m benchmarks" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""),
        "machine": machine,
        "sizes": asdict(sizes),
        "seconds": time.perf_counter() - started,
        "scenarios": results,
    }
    paths = _report.write(report, out)
    for path in paths:
        _log(f"wrote {path}")
    _log(f"done in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
