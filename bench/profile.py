#!/usr/bin/env python3
"""Instruction counts per request: where meshgate spends its time compared with bare Pingora.

Wall-clock throughput on a small shared machine moves between runs; instruction counts
under valgrind's callgrind do not. This script starts the benchmark backend, then runs
bare Pingora, meshgate's plain route and meshgate's filter-chain route one at a time
under callgrind, warms each up, zeroes the counters, sends exactly `--requests` requests,
dumps the counters and reads them with `callgrind_annotate --inclusive=yes`. It writes
`bench/results/<date>-<machine>-profile.md` (and keeps the raw callgrind files next to it
with `--keep`), giving instructions per request per target and the functions with the
largest inclusive cost, meshgate's own first.

Used because `perf stat -e instructions` has no hardware counters in this VM; run it
with `python3 bench/profile.py` after `bench/run.sh` has built the release binaries.
Needs valgrind and oha.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path



def _load_driver():
    """bench.py (config generators, process helpers), loaded by path so that this file works
    both as a script and when imported by the tests, where `bench` is the package."""
    name = "meshgate_bench_driver"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().with_name("bench.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


bench = _load_driver()

TARGETS = ["bare-pingora", "meshgate-plain", "meshgate-chain"]
# Function-name prefixes that count as "meshgate's own code".
OWN = ("meshgate::", "meshgate_filters::", "<meshgate::", "<meshgate_filters::")


def parse_annotate(text: str) -> tuple[int, list[tuple[int, str]]]:
    """(total Ir, [(inclusive Ir, 'file:function')]) from callgrind_annotate output."""
    total = 0
    m = re.search(r"^\s*([\d,]+)\s+(?:\(100\.0%\)\s+)?PROGRAM TOTALS", text, re.M)
    if m:
        total = int(m.group(1).replace(",", ""))
    rows = []
    for line in text.splitlines():
        fm = re.match(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(\S.*?)(?:\s+\[[^\]]*\])?\s*$", line)
        if not fm or "PROGRAM TOTALS" in line:
            continue
        name = fm.group(2)
        if ":" not in name:
            continue
        rows.append((int(fm.group(1).replace(",", "")), name))
    return total, rows


def short(name: str, width: int = 150) -> str:
    """Strips generic noise from a demangled Rust name so the table stays readable."""
    name = re.sub(r"::h[0-9a-f]{16}", "", name)
    name = name.replace("/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/", "~/")
    name = name.replace(str(bench.ROOT) + "/", "")
    return name if len(name) <= width else name[: width - 1] + "…"


def function_of(name: str) -> str:
    """The function part of 'file:function'."""
    path, sep, func = name.partition(":")
    return func if sep and ("/" in path or path.startswith("???") or path.endswith(".rs")) else name


def run_one(name: str, tmp: Path, backend_port: int, requests: int, warmup: int, oha: str,
            issuer: str | None = None, token: str | None = None) -> dict:
    port, admin = bench.free_ports(2)
    out = tmp / f"{name}.callgrind"
    if name == "bare-pingora":
        cmd = [str(bench.RELEASE / "bare-pingora"), f"127.0.0.1:{port}", f"127.0.0.1:{backend_port}"]
    else:
        conf = tmp / f"{name}.yaml"
        # Global rate limits need Redis, which the profile does not start.
        conf.write_text(bench.meshgate_target_conf(name, port, admin, backend_port, issuer, None))
        cmd = [str(bench.RELEASE / "meshgate"), "run", "-c", str(conf)]
    headers = {"Authorization": f"Bearer {token}"} if name in bench.JWT_TARGETS and token else {}
    header_args = [a for k, v in headers.items() for a in ("-H", f"{k}: {v}")]
    vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no",
          "--separate-threads=no"]
    log = open(tmp / f"{name}.log", "wb")
    proc = subprocess.Popen(vg + cmd, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/tiny"

        def ok() -> bool:
            status, _, body = bench.http_get(port, "/tiny", timeout=5, headers=headers)
            return status == 200 and body == bench.TINY_BODY

        bench.wait_ready(ok, proc, name, deadline_s=120)

        def load(n: int) -> dict:
            res = subprocess.run([oha, "--no-tui", "--output-format", "json", "-n", str(n), "-c", "8", *header_args, url],
                                 capture_output=True, text=True, check=True)
            data = json.loads(res.stdout)
            codes = data.get("statusCodeDistribution", {})
            if set(codes) != {"200"}:
                raise RuntimeError(f"{name}: unexpected statuses {codes}")
            return data

        load(warmup)
        subprocess.run(["callgrind_control", "--zero", str(proc.pid)], check=True, capture_output=True)
        load(requests)
        subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True, capture_output=True)
    finally:
        os.killpg(proc.pid, 2)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
    dumps = sorted(tmp.glob(f"{name}.callgrind.*"), key=lambda p: p.stat().st_mtime)
    dump = next((d for d in dumps if not d.name.endswith(".log")), None)
    if dump is None:
        raise RuntimeError(f"{name}: no callgrind dump found in {tmp}")
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--auto=no", "--threshold=100", str(dump)],
                          capture_output=True, text=True, check=True).stdout
    (tmp / f"{name}.annotate.txt").write_text(text)
    total, rows = parse_annotate(text)
    return {"dump": str(dump), "total_ir": total, "ir_per_request": total / requests, "rows": rows}


def per_function(rows: list[tuple[int, str]]) -> dict[str, int]:
    """Largest inclusive entry per function name (callgrind splits inlined code by file)."""
    out: dict[str, int] = {}
    for ir, n in rows:
        func = re.sub(r"'\d+$", "", function_of(n))
        out[func] = max(out.get(func, 0), ir)
    return out


def report(results: dict, requests: int, machine: str) -> str:
    bare = results.get("bare-pingora", {}).get("ir_per_request")
    out = [
        f"# meshgate instruction profile — {dt.date.today().isoformat()} — {machine}",
        "",
        f"Command: `python3 bench/profile.py --requests {requests}`. Each target ran alone under "
        "`valgrind --tool=callgrind`; counters were zeroed after a warm-up and dumped after exactly "
        f"{requests:,} tiny-body requests (oha, 8 connections, keep-alive). Instructions (Ir) include "
        "user space only: the kernel's share (about half of a proxy's time per PERF-NOTES) is not counted.",
        "",
        "| target | Ir per request | × bare Pingora |",
        "|---|---:|---:|",
    ]
    for name, r in results.items():
        rel = f"{r['ir_per_request'] / bare:.2f}×" if bare else "–"
        out.append(f"| {name} | {r['ir_per_request']:,.0f} | {rel} |")
    for name, r in results.items():
        if name == "bare-pingora":
            continue
        total = r["total_ir"] or 1
        # callgrind splits a function into one entry per source file its inlined code comes
        # from, and those entries nest; the largest entry is the function's inclusive cost.
        own: dict[str, tuple[int, str]] = {}
        for ir, n in r["rows"]:
            func = function_of(n)
            if func.startswith(OWN) and ir > own.get(func, (0, ""))[0]:
                own[func] = (ir, n)
        top = sorted(own.values(), reverse=True)
        out += ["", f"## {name}: meshgate's own functions by inclusive cost", "",
                "| Ir per request | % of total | file:function |", "|---:|---:|---|"]
        for ir, n in top[:30]:
            out.append(f"| {ir / requests:,.0f} | {100 * ir / total:.1f} | `{short(n)}` |")
        if "bare-pingora" in results:
            out += ["", f"## {name}: largest increases over bare Pingora", "",
                    "Inclusive Ir per request by function (largest entry per name), this target minus "
                    "bare Pingora; frames covering more than half of all work (runtime and request "
                    "loop wrappers) are left out.", "",
                    "| Δ Ir per request | this target | bare Pingora | function |", "|---:|---:|---:|---|"]
            mine, base = per_function(r["rows"]), per_function(results["bare-pingora"]["rows"])
            btotal = results["bare-pingora"]["total_ir"] or 1
            diffs = []
            for func, ir in mine.items():
                b = base.get(func, 0)
                if ir > total / 2 or b > btotal / 2:
                    continue
                diffs.append((ir / requests - b * 1.0 / requests, ir / requests, b / requests, func))
            for d, ir, b, func in sorted(diffs, reverse=True)[:30]:
                out.append(f"| {d:+,.0f} | {ir:,.0f} | {b:,.0f} | `{short(func)}` |")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--machine", default=f"{os.cpu_count()}core")
    ap.add_argument("--out-dir", type=Path, default=bench.RESULTS_DIR)
    ap.add_argument("--keep", action="store_true", help="keep callgrind files and annotations")
    ap.add_argument("--oha", default=shutil.which("oha") or str(Path.home() / ".cargo" / "bin" / "oha"))
    args = ap.parse_args(argv)
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if not shutil.which(tool):
            print(f"{tool} not found: apt-get install valgrind", file=sys.stderr)
            return 2
    bench.raise_nofile()
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-profile-"))
    procs = bench.Procs(tmp)
    results: dict = {}
    try:
        www = tmp / "www"
        www.mkdir(parents=True)
        (www / "tiny").write_bytes(bench.TINY_BODY)
        backend_port = bench.free_ports(1)[0]
        # jwt routes: the backend serves the provider documents (see bench.make_jwt_material).
        issuer = f"http://127.0.0.1:{backend_port}"
        token = bench.make_jwt_material(tmp, www, issuer)
        for p in [tmp, *tmp.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        conf = tmp / "backend.conf"
        conf.write_text(bench.backend_nginx_conf(tmp, backend_port, 4096))
        backend = procs.start("backend", ["nginx", "-e", str(tmp / "backend.error.log"), "-p", str(tmp),
                                          "-c", str(conf)], None)
        bench.wait_ready(lambda: bench.http_get(backend_port, "/tiny")[0] == 200, backend, "backend")
        for name in [t.strip() for t in args.targets.split(",") if t.strip()]:
            t0 = time.monotonic()
            results[name] = run_one(name, tmp, backend_port, args.requests, args.warmup, args.oha, issuer, token)
            print(f"[profile] {name}: {results[name]['ir_per_request']:,.0f} Ir/request "
                  f"({time.monotonic() - t0:.0f}s)", flush=True)
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"[profile] callgrind files kept in {tmp}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"{dt.date.today().isoformat()}-{args.machine}-profile.md"
    path.write_text(report(results, args.requests, args.machine))
    print(f"[profile] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
