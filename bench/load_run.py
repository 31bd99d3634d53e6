"""The load run (issue 20 item 5): uploads against PostgreSQL at the highest rate this machine
allows, with 1, 2 and 4 server processes, next to pgbench on the same PostgreSQL server, and
what limited each run.

    .venv/bin/python bench/load_run.py [--workers 1,2,4] [--per-stall 150] [--stalls 8]
        [--batch-per-stall 1500] [--pgbench-s 15]

For each number of server processes (``wetmarket server --workers N``), two loads from
``bench/server_bench.py``'s client (another process, HTTP/1.1 keep-alive, requests built
beforehand): single-sale uploads from 8 stalls at once (each stall's next sale when its last
is answered, as the outbox sends them) and batches of 100.  Meanwhile a sampler reads, every
50 ms, ``pg_stat_activity`` (what the database's busy backends wait for: CPU when nothing,
``IO/WALSync`` for fsync, ``Lock/...`` for row and table locks) and, at the start and the
end, the CPU time of every process (server processes, PostgreSQL, the load client, the rest)
and ``pg_stat_wal``'s syncs.  The verdict: **CPU** when the machine's cores were busy
(>= 90 % of them) and the database's backends mostly ran or waited for the client, else the
top wait.  pgbench (TPC-B-like, 8 clients, 2 threads) on a database of the same server is the
baseline: what this PostgreSQL commits per second with no application in front.

Prints one JSON object per run, then a Markdown table for ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TypeAlias

sys.path.insert(0, str(Path(__file__).resolve().parent))

import server_bench as sb  # noqa: E402

CORES = os.cpu_count() or 1

_procs = sb.process_cpu
Procs: TypeAlias = sb.Procs


def busiest_server_process(before: Procs, after: Procs, server_group: int, seconds: float) -> float:
    """The CPU of the busiest server process, in cores: near 1.0 it is bound by its own GIL."""
    best = 0.0
    for pid, (_name, _ppid, group, _cpu) in after.items():
        if group == server_group:
            best = max(best, sb.cpu_spent(before, after, pid) / seconds)
    return best


def _cpu_by_kind(before: Procs, after: Procs, server_group: int, client_s: float) -> dict[str, float]:
    """CPU seconds spent between the two readings, per kind of process: the server's
    processes, PostgreSQL's, the load client (a child of ours, gone by now: ``client_s``) and
    everything else on the machine (other users of these shared cores)."""
    spent: dict[str, float] = collections.defaultdict(float, {"client": client_s})
    for pid, (name, _ppid, group, _cpu) in after.items():
        used = sb.cpu_spent(before, after, pid)
        if group == server_group:
            kind = "server"
        elif name.startswith("postgres"):
            kind = "postgresql"
        elif pid == os.getpid():
            continue  # this script's sampler: a few queries a second
        else:
            kind = "other"
        spent[kind] += max(0.0, used)
    return dict(spent)


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


class Sampler:
    """What the bench database's backends wait for, every 50 ms, while a load runs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.waits: collections.Counter[str] = collections.Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.wait(0.05):
                rows = conn.execute(
                    "SELECT coalesce(wait_event_type || '/' || wait_event, 'CPU') FROM pg_stat_activity "
                    "WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()"
                ).fetchall()
                idle_in_tx = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND state = 'idle in transaction'").fetchone()
                self.samples += 1
                for (wait,) in rows:
                    self.waits[wait] += 1
                if idle_in_tx and idle_in_tx[0]:
                    # A transaction open while the server's Python works between statements.
                    self.waits["(idle in transaction: waiting for the server)"] += int(idle_in_tx[0])


def _wal(url: str) -> dict[str, float]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT wal_records, wal_sync, wal_write FROM pg_stat_wal").fetchone()
    assert row is not None
    return {"wal_records": float(row[0]), "wal_sync": float(row[1]), "wal_write": float(row[2])}


def _verdict(cpu: dict[str, float], seconds: float, waits: collections.Counter[str], samples: int,
             busiest: float) -> str:
    busy = sum(cpu.values()) / (seconds * CORES)
    if busy < 0.9 and busiest >= 0.75:
        return (f"one server process's GIL (it ran {busiest:.2f} of a core; the machine {busy:.0%} of "
                f"{CORES} cores); backends waiting per sample: "
                + (", ".join(f"{w} {n / max(samples, 1):.2f}" for w, n in waits.most_common(3)) or "-"))
    top = waits.most_common(3)
    waits_text = ", ".join(f"{w} {n / max(samples, 1):.2f}" for w, n in top) or "no busy backend"
    share = {k: round(v / seconds / CORES, 2) for k, v in sorted(cpu.items())}
    if busy >= 0.9:
        return f"CPU ({busy:.0%} of {CORES} cores: {share}); backends waiting per sample: {waits_text}"
    return f"not CPU ({busy:.0%} of {CORES} cores: {share}); backends waiting per sample: {waits_text}"


def run_load(workers: int, mode: str, *, stalls: int, per_stall: int, batch: int) -> dict[str, Any]:
    url, state = sb.with_history("postgresql", f"load-{mode}", 0)
    bench_stalls = sb.BenchStall.from_state(state, [f"S{i + 1:03d}" for i in range(stalls)])
    sales = sb.sales_of(bench_stalls, per_stall)
    size = 1 if mode == "single" else batch
    conns = [[sb.http_request("POST", "/api/v1/sales", json.dumps({"sales": s[k:k + size]}).encode(),
                              token=st.token) for k in range(0, len(s), size)]
             for st, s in zip(bench_stalls, sales.values(), strict=True)]
    with sb.ServerProc(url, workers=workers) as srv:
        assert srv.proc is not None
        load = sb.load_average()
        wal0, before, children0 = _wal(url), _procs(), _children_cpu()
        t0 = time.monotonic()
        with Sampler(url) as sampler:
            out = sb.run_client({"kind": "load", "port": srv.port, "conns": conns,
                                 "expect": f'"accepted":{size}'})
        seconds = time.monotonic() - t0
        after, wal1 = _procs(), _wal(url)
        cpu = _cpu_by_kind(before, after, srv.proc.pid, _children_cpu() - children0)
        busiest = busiest_server_process(before, after, srv.proc.pid, seconds)
    sb.drop_db(url)
    total = sum(len(s) for s in sales.values())
    return {
        "workers": workers, "mode": mode, "batch": size, "stalls_at_once": stalls, "sales": total,
        "sales_per_s": round(total / out["seconds"]), "requests_per_s": round(out["rps"]),
        "p50_ms": out.get("p50_ms"), "p95_ms": out.get("p95_ms"), "errors": out["errors"],
        "cpu_s": {k: round(v, 1) for k, v in cpu.items()}, "seconds": round(seconds, 1),
        "wal_syncs_per_s": round((wal1["wal_sync"] - wal0["wal_sync"]) / seconds),
        "top_waits": {w: round(n / max(sampler.samples, 1), 2) for w, n in sampler.waits.most_common(4)},
        "busiest_server_process_cores": round(busiest, 2),
        "limit": _verdict(cpu, seconds, sampler.waits, sampler.samples, busiest), "load_before": load,
    }


def pgbench(scale: int, seconds: int) -> dict[str, Any]:
    """TPC-B-like pgbench, 8 clients on 2 threads, on a database of its own."""
    exe = shutil.which("pgbench") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"))),
                                          None)
    if exe is None:
        raise SystemExit("pgbench not found (Debian's postgresql-client)")
    import psycopg

    with psycopg.connect(sb.PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS wetmarket_pgbench WITH (FORCE)")
        conn.execute("CREATE DATABASE wetmarket_pgbench")
    base = [str(exe), "-h", "127.0.0.1", "-U", "postgres"]
    subprocess.run([*base, "-i", "-q", "-s", str(scale), "wetmarket_pgbench"], check=True,
                   capture_output=True)
    load = sb.load_average()
    run = subprocess.run([*base, "-c", "8", "-j", "2", "-T", str(seconds),
                          "wetmarket_pgbench"], check=True, capture_output=True, text=True)
    tps = latency = None
    for line in run.stdout.splitlines():
        if line.startswith("tps ="):
            tps = float(line.split()[2])
        elif line.startswith("latency average"):
            latency = float(line.split()[3])
    with psycopg.connect(sb.PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS wetmarket_pgbench WITH (FORCE)")
    return {"pgbench": "TPC-B-like", "scale": scale, "clients": 8, "threads": 2, "seconds": seconds,
            "tps": round(tps or 0), "latency_avg_ms": latency, "load_before": load}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--stalls", type=int, default=8)
    ap.add_argument("--per-stall", type=int, default=150, help="single-sale uploads per stall")
    ap.add_argument("--batch-per-stall", type=int, default=1500, help="sales per stall in batches of 100")
    ap.add_argument("--pgbench-s", type=int, default=15, help="pgbench run seconds")
    args = ap.parse_args(argv)
    results: list[dict[str, Any]] = [pgbench(10, args.pgbench_s)]
    print(json.dumps(results[0], ensure_ascii=False), flush=True)
    for workers in (int(w) for w in args.workers.split(",")):
        for mode, per_stall in (("single", args.per_stall), ("batch", args.batch_per_stall)):
            r = run_load(workers, mode, stalls=args.stalls, per_stall=per_stall, batch=100)
            results.append(r)
            print(json.dumps(r, ensure_ascii=False), flush=True)
    print("\n| processes | upload | sales/s | requests/s | p95 ms | WAL syncs/s | limit |")
    print("|---|---|---|---|---|---|---|")
    for r in results[1:]:
        print(f"| {r['workers']} | {r['mode']} ({r['batch']}) | {r['sales_per_s']:,} "
              f"| {r['requests_per_s']:,} | {r['p95_ms']} | {r['wal_syncs_per_s']} | {r['limit']} |")
    pg = results[0]
    print(f"\npgbench TPC-B-like (8 clients, 2 threads, scale 10): {pg['tps']:,} tps, "
          f"{pg['latency_avg_ms']} ms average (load before {pg['load_before']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
