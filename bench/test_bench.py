"""Tests of the benchmark driver's pure parts: output parsing, statistics, configs, report.

Run with `python3 -m unittest bench/test_bench.py` from the repository root; nothing here
starts a process or opens a socket.
"""

import json
import importlib.util
import sys
import unittest
import xml.dom.minidom
from pathlib import Path


def load(name: str, file: str):
    """Loads a sibling script by path (the directory is also a package named `bench`)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().with_name(file))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bench = load("meshgate_bench_driver", "bench.py")
cg_profile = load("meshgate_bench_profile", "profile.py")

WRK_OUTPUT = """\
Running 6s test @ http://127.0.0.1:41234/tiny
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   660.81us  120.33us   5.12ms   91.20%
    Req/Sec    97.10k     3.21k  101.92k    85.00%
  579612 requests in 6.00s, 134.87MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  96580.12
Transfer/sec:     22.47MB
"""

OHA_OUTPUT = json.dumps({
    "summary": {"successRate": 1.0, "total": 6.0, "requestsPerSec": 47990.5},
    "latencyPercentiles": {"p10": 0.0001, "p50": 0.00021, "p99": 0.0009, "p99.9": 0.0021},
    "statusCodeDistribution": {"200": 287943},
    "errorDistribution": {"connection closed": 3},
})


def fake_raw() -> dict:
    def runs(rps: float, cpu: float) -> list:
        return [{"rps": rps * f, "requests": int(rps * 6), "seconds": 6.0, "socket_errors": 0, "non_2xx": 0,
                 "proxy_cpu_pct": 99.0, "proxy_cpu_us_per_req": cpu, "backend_cpu_pct": 40.0,
                 "loadgen_cpu_pct": 50.0, "other_cpu_pct": 1.0} for f in (0.98, 1.0, 1.03)]

    def lat(p99: float) -> list:
        return [{"p50": 0.2, "p99": p99, "p999": p99 * 2, "achieved_rps": 50000.0, "target_rps": 50000.0,
                 "success_rate": 1.0, "errors": 0, "other_cpu_pct": 0.0}] * 3

    targets = {}
    for name, rps, p99, idle in (("direct", 180e3, 0.3, 2000), ("nginx", 100e3, 0.8, 5000),
                                 ("haproxy", 90e3, 0.9, 9000), ("bare-pingora", 55e3, 1.0, 400000),
                                 ("meshgate-plain", 50e3, 1.2, 410000), ("meshgate-chain", 45e3, 1.4, 410000)):
        targets[name] = {
            "throughput": {"tiny": runs(rps, 1e6 / rps), "16k": runs(rps / 2, 2e6 / rps)},
            "latency": lat(p99),
            "memory": {"peak_kib": 20000, "idle_rss_kib": 20000 + idle, "idle_before_kib": 20000,
                       "idle_delta_kib": idle, "opened": 10000, "still_open": 10000, "failures": 0,
                       "first_failure": None},
        }
    return {
        "date": "2026-01-01", "machine_label": "2core", "command": "bench/run.sh",
        "chain_filters": bench.CHAIN_FILTERS, "notes": [], "checks": {"nginx": ["tiny: 200"]},
        "machine": {k: "x" for k in ("cpu", "cores", "memory_gib", "kernel", "os", "nginx", "haproxy", "wrk",
                                     "oha", "rustc", "pingora", "meshgate_commit", "hostname")},
        "parameters": {"quick": False, "rounds": 3, "duration": 6.0, "latency_duration": 6.0,
                       "latency_rate": 50000.0, "idle_connections": 10000, "pinning": "cpu0/cpu1"},
        "targets": targets,
    }


class ParseTests(unittest.TestCase):
    def test_wrk_summary(self):
        r = bench.parse_wrk(WRK_OUTPUT)
        self.assertEqual(r.requests, 579612)
        self.assertAlmostEqual(r.seconds, 6.0)
        self.assertAlmostEqual(r.rps, 96580.12)
        self.assertEqual(r.socket_errors, 3)
        self.assertEqual(r.non_2xx, 4)

    def test_wrk_rejects_garbage(self):
        with self.assertRaises(ValueError):
            bench.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")

    def test_oha_json_in_milliseconds(self):
        r = bench.parse_oha(OHA_OUTPUT, 48000)
        self.assertAlmostEqual(r.p50, 0.21)
        self.assertAlmostEqual(r.p99, 0.9)
        self.assertAlmostEqual(r.p999, 2.1)
        self.assertEqual(r.errors, 3)
        self.assertAlmostEqual(r.achieved_rps, 47990.5)

    def test_proc_status_and_stat(self):
        status = "Name:\tnginx\nVmHWM:\t   12345 kB\nVmRSS:\t    2345 kB\n"
        self.assertEqual(bench.parse_status_kib(status, "VmHWM"), 12345)
        self.assertEqual(bench.parse_status_kib(status, "VmSwap"), 0)
        stat = "42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 700 300 0 0 20 0 1 0"
        self.assertEqual(bench.parse_stat_ticks(stat), 1000)

    def test_chain_filter_names(self):
        self.assertEqual(bench.chain_filter_names(["headers: { a: b }", "body_limit: 1MB"]),
                         ["headers", "body_limit"])

    def test_callgrind_annotate_lines(self):
        text = ("  1,000 (100.0%)  PROGRAM TOTALS\n"
                "    600 (60.00%)  /work/main/proxy/src/proxy.rs:<meshgate::proxy::MeshProxy as X>::logging [/bin/mg]\n"
                "     40 ( 4.00%)  ???:memcpy [/lib/libc.so.6]\n")
        total, rows = cg_profile.parse_annotate(text)
        self.assertEqual(total, 1000)
        self.assertEqual(rows[0], (600, "/work/main/proxy/src/proxy.rs:<meshgate::proxy::MeshProxy as X>::logging"))
        self.assertTrue(cg_profile.function_of(rows[0][1]).startswith(cg_profile.OWN))
        self.assertEqual(rows[1], (40, "???:memcpy"))


class ConfigTests(unittest.TestCase):
    def test_meshgate_config_has_chain_before_plain(self):
        text = bench.meshgate_conf(1000, 1001, 1002, ["headers: { x: y }", "body_limit: 1MB"])
        self.assertLess(text.index("name: chain"), text.index("name: plain"))
        self.assertIn("      - headers: { x: y }\n      - body_limit: 1MB\n", text)
        self.assertIn("threads: 1, work_stealing: false", text)
        self.assertIn('endpoints: ["127.0.0.1:1002"]', text)

    def test_proxies_keep_upstream_connections_alive(self):
        nginx = bench.proxy_nginx_conf(Path("/t"), 1, 2, 20000)
        for line in ("worker_processes 1;", "keepalive 128;", "proxy_http_version 1.1;", 'proxy_set_header Connection "";'):
            self.assertIn(line, nginx)
        haproxy = bench.haproxy_conf(1, 2, 10000)
        self.assertIn("nbthread 1", haproxy)
        self.assertIn("http-reuse always", haproxy)


class ReportTests(unittest.TestCase):
    def test_summary_ratios_and_goals(self):
        s = bench.summarize(fake_raw())
        self.assertAlmostEqual(s["targets"]["nginx"]["tiny_rps"], 100e3)
        self.assertAlmostEqual(s["ratios"]["meshgate-plain/bare-pingora tiny"], 50 / 55)
        self.assertAlmostEqual(s["ratios"]["meshgate-chain/meshgate-plain tiny"], 0.9)
        goals = {g["goal"]: g for g in s["goals"]}
        self.assertFalse(goals["meshgate plain ≥ 0.95× bare Pingora (tiny)"]["met"])
        self.assertTrue(goals["chain ≥ 0.85× plain (tiny)"]["met"])
        self.assertTrue(goals["meshgate-plain p99 ≤ nginx p99 + 0.5 ms"]["met"])
        self.assertFalse(goals["meshgate-plain idle-connection memory ≤ nginx's"]["met"])
        self.assertIsNone(goals["BFF route ≥ 0.7× plain"]["met"])

    def test_markdown_and_svg(self):
        raw = fake_raw()
        s = bench.summarize(raw)
        md = bench.markdown(raw, s, "chart.svg")
        self.assertIn("| meshgate-plain | 50.0k | 0.50× |", md)
        self.assertIn("headers, body_limit", md)
        svg = bench.svg_chart(s)
        xml.dom.minidom.parseString(svg)  # well-formed
        self.assertIn("Throughput relative to nginx", svg)
        self.assertEqual(svg.count("<rect"), 1 + 6 * 2 + 6 * 3 + 2 + 3)


if __name__ == "__main__":
    unittest.main()
