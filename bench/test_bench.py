"""Tests of the benchmark driver's pure parts: output parsing, statistics, configs, report.

Run with `python3 -m unittest bench/test_bench.py` from the repository root; nothing here
opens a socket, and the only processes started are openssl's, in the JWT round-trip test
(skipped when openssl is not installed). The BFF login (HTTP to meshgate and the provider)
is exercised by a real run; its parsing steps are tested here.
"""

import asyncio
import base64
import json
import importlib.util
import shutil
import subprocess
import sys
import tempfile
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

    def serial(p50_ms: float) -> list:
        return [{"p50": p50_ms, "p99": p50_ms * 2, "p999": p50_ms * 3, "achieved_rps": 0.0, "target_rps": 0.0,
                 "success_rate": 1.0, "errors": 0, "other_cpu_pct": 0.0, "requests": 3000}] * 3

    targets = {}
    for name, rps, p99, idle in (("direct", 180e3, 0.3, 2000), ("nginx", 100e3, 0.8, 5000),
                                 ("haproxy", 90e3, 0.9, 9000), ("bare-pingora", 55e3, 1.0, 400000),
                                 ("meshgate-plain", 50e3, 1.2, 410000), ("meshgate-chain", 45e3, 1.4, 410000),
                                 ("meshgate-jwt", 44e3, 1.3, 410000), ("meshgate-ratelimit-local", 49e3, 1.2, 410000),
                                 ("meshgate-ratelimit-global", 40e3, 1.5, 410000),
                                 ("meshgate-bff-memory", 40e3, 1.3, 410000), ("meshgate-bff-redis", 30e3, 1.6, 410000)):
        targets[name] = {
            "throughput": {"tiny": runs(rps, 1e6 / rps), "16k": runs(rps / 2, 2e6 / rps)},
            "latency": lat(p99),
            # At the shared rate nginx's p99 is 0.7 ms: plain is within 0.5 ms of it, the chain is not.
            "shared_latency": lat({"nginx": 0.7, "meshgate-plain": 1.1, "meshgate-chain": 1.3}.get(name, 1.0)),
            "serial": serial({"meshgate-ratelimit-global": 0.150, "meshgate-ratelimit-local": 0.100,
                              "meshgate-bff-memory": 0.095, "meshgate-bff-redis": 0.155}.get(name, 0.09)),
            "memory": {"peak_kib": 20000, "idle_rss_kib": 20000 + idle, "idle_before_kib": 20000,
                       "idle_delta_kib": idle, "idle_delta_1s_kib": idle + 1024, "opened": 10000,
                       "still_open": 10000, "failures": 0, "first_failure": None},
        }
    targets["meshgate-ratelimit-global"]["policy"] = {"rl_allowed": 1000.0, "rl_denied": 0.0, "rl_redis": 990.0,
                                                      "rl_fallback": 10.0, "rl_redis_timeouts": 10.0,
                                                      "rl_redis_errors": 0.0, "jwt_accepted": 0.0}
    for r in targets["meshgate-ratelimit-global"]["throughput"]["tiny"]:
        r["redis_cpu_s"], r["redis_cpu_us_per_req"] = 1.0, 6.0
    for r in targets["meshgate-bff-redis"]["throughput"]["tiny"]:
        r["redis_cpu_s"], r["redis_cpu_us_per_req"] = 1.0, 7.0
    for name in ("meshgate-bff-memory", "meshgate-bff-redis"):
        targets[name]["policy"] = {"requests": 50000.0, "status_401": 0.0, "status_not_200": 0.0, "aborted": 40.0,
                                   "bff_refreshes": 0.0, "bff_refreshes_total": 0.0}
    return {
        "date": "2026-01-01", "machine_label": "2core", "command": "bench/run.sh",
        "chain_filters": bench.CHAIN_FILTERS, "chain_cluster": bench.CHAIN_CLUSTER, "access_log": True,
        "meshgate_filters": bench.MESHGATE_FILTERS, "bff_session_stores": bench.BFF_SESSION_STORES,
        "bff_access_token_ttl": "1h", "notes": [], "checks": {"nginx": ["tiny: 200"]},
        "machine": {k: "x" for k in ("cpu", "cores", "memory_gib", "kernel", "os", "nginx", "haproxy", "wrk",
                                     "oha", "rustc", "pingora", "meshgate_commit", "hostname")},
        "parameters": {"quick": False, "rounds": 3, "duration": 6.0, "latency_duration": 6.0,
                       "latency_rate": 50000.0, "shared_latency_rate": 15000.0, "idle_connections": 10000, "pinning": "cpu0/cpu1"},
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

    def test_prometheus_sample(self):
        text = ("# HELP meshgate_rate_limit_global_decisions_total x\n"
                "# TYPE meshgate_rate_limit_global_decisions_total counter\n"
                'meshgate_rate_limit_global_decisions_total{by="redis"} 1234\n'
                'meshgate_rate_limit_global_decisions_total{by="fallback"} 0\n'
                "meshgate_rate_limit_overflow_decisions_total 7\n")
        self.assertEqual(bench.prom_value(text, "meshgate_rate_limit_global_decisions_total", '{by="redis"}'), 1234)
        self.assertEqual(bench.prom_value(text, "meshgate_rate_limit_global_decisions_total", '{by="fallback"}'), 0)
        self.assertEqual(bench.prom_value(text, "meshgate_rate_limit_overflow_decisions_total"), 7)
        self.assertIsNone(bench.prom_value(text, "meshgate_rate_limit_global_decisions_total", '{by="x"}'))

    def test_prometheus_sums_by_label(self):
        text = ("# HELP meshgate_requests_total Finished requests by route, cluster and status.\n"
                "# TYPE meshgate_requests_total counter\n"
                'meshgate_requests_total{route="bench",cluster="backend",status="200"} 1000\n'
                'meshgate_requests_total{route="bench",cluster="",status="401"} 3\n'
                'meshgate_requests_total{route="bench",cluster="backend",status="503"} 2\n'
                'meshgate_requests_total{route="bench",cluster="backend",status="0"} 20\n'
                'meshgate_requests_total_other{status="401"} 99\n'
                'meshgate_bff_refreshes_total{outcome="ok"} 0\n'
                'meshgate_bff_refreshes_total{outcome="shared"} 4\n'
                'meshgate_bff_sessions_created_total 1\n'
                'x_total{a="with \\"quote\\", comma",status="401"} 5\n')
        self.assertEqual(bench.prom_sum(text, "meshgate_requests_total"), 1025)
        self.assertEqual(bench.prom_sum(text, "meshgate_requests_total", lambda l: l.get("status") == "401"), 3)
        self.assertEqual(bench.prom_sum(text, "meshgate_requests_total",
                                        lambda l: l.get("status") not in ("200", "0")), 5)
        self.assertEqual(bench.prom_sum(text, "meshgate_bff_refreshes_total"), 4)
        self.assertEqual(bench.prom_sum(text, "meshgate_bff_sessions_created_total"), 1)
        self.assertEqual(bench.prom_sum(text, "meshgate_bff_logins_total"), 0)
        samples = bench.prom_samples(text, "x_total")
        self.assertEqual(samples, [({"a": 'with \\"quote\\", comma', "status": "401"}, 5.0)])

    def test_callgrind_annotate_lines(self):
        text = ("  1,000 (100.0%)  PROGRAM TOTALS\n"
                "    600 (60.00%)  /work/main/proxy/src/proxy.rs:<meshgate::proxy::MeshProxy as X>::logging [/bin/mg]\n"
                "     40 ( 4.00%)  ???:memcpy [/lib/libc.so.6]\n")
        total, rows = cg_profile.parse_annotate(text)
        self.assertEqual(total, 1000)
        self.assertEqual(rows[0], (600, "/work/main/proxy/src/proxy.rs:<meshgate::proxy::MeshProxy as X>::logging"))
        self.assertTrue(cg_profile.function_of(rows[0][1]).startswith(cg_profile.OWN))
        self.assertEqual(rows[1], (40, "???:memcpy"))


def der(tag: int, content: bytes) -> bytes:
    n = len(content)
    length = bytes([n]) if n < 128 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + content


def der_int(v: int) -> bytes:
    raw = v.to_bytes((v.bit_length() + 8) // 8, "big")  # a leading 0 keeps it positive
    return der(0x02, raw)


def spki(n: int, e: int) -> bytes:
    alg = der(0x30, bytes.fromhex("06092a864886f70d010101") + bytes.fromhex("0500"))
    key = der(0x30, der_int(n) + der_int(e))
    return der(0x30, alg + der(0x03, b"\x00" + key))


def unb64url(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class SettleTests(unittest.TestCase):
    """`settle_rss`: idle RSS is read once two samples a second apart agree."""

    def run_settle(self, samples: list[int]) -> tuple[dict, int]:
        it = iter(samples[1:])
        slept = []

        async def sleep(s: float) -> None:
            slept.append(s)

        out = asyncio.run(bench.settle_rss(lambda: {"rss_kib": next(it)}, {"rss_kib": samples[0]}, sleep))
        return out, len(slept)

    def test_waits_until_the_allocator_has_returned_memory(self):
        # 1 s after: 24,000 KiB; purged a second later; then steady.
        out, slept = self.run_settle([24000, 22000, 21900, 21900])
        self.assertEqual(out, {"rss_kib": 21900, "settle_s": 2})
        self.assertEqual(slept, 2)

    def test_a_steady_process_is_read_after_one_more_second(self):
        out, _ = self.run_settle([20000, 20100])
        self.assertEqual(out, {"rss_kib": 20100, "settle_s": 1})

    def test_gives_up_after_the_cap_with_the_last_sample(self):
        samples = [10000 + 1000 * i for i in range(bench.SETTLE_MAX_S + 1)]
        out, slept = self.run_settle(samples)
        self.assertEqual(slept, bench.SETTLE_MAX_S)
        self.assertEqual(out, {"rss_kib": samples[-1], "settle_s": bench.SETTLE_MAX_S})


class JwtTests(unittest.TestCase):
    N = (1 << 2047) + 0x1234567  # a 2048-bit modulus shape (its high bit needs DER's leading zero)

    def test_rsa_numbers_from_spki(self):
        self.assertEqual(bench.rsa_public_numbers(spki(self.N, 65537)), (self.N, 65537))
        with self.assertRaises(ValueError):
            bench.rsa_public_numbers(spki(self.N, 65537).replace(bytes.fromhex("2a864886f70d010101"),
                                                                 bytes.fromhex("2a8648ce3d02010000")))

    def test_jwk_is_unsigned_big_endian_base64url(self):
        jwk = bench.rsa_jwk(self.N, 65537, "k1")
        self.assertEqual(jwk["e"], "AQAB")
        self.assertEqual(len(unb64url(jwk["n"])), 256)  # no sign byte
        self.assertEqual(int.from_bytes(unb64url(jwk["n"]), "big"), self.N)
        self.assertNotIn("=", jwk["n"])
        self.assertEqual({k: jwk[k] for k in ("kty", "kid", "use", "alg")},
                         {"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256"})

    def test_token_parts_and_claims(self):
        claims = bench.jwt_claims("http://127.0.0.1:1", "bench", "u", 1000, 60)
        self.assertEqual(claims, {"iss": "http://127.0.0.1:1", "aud": "bench", "sub": "u", "iat": 1000, "exp": 1060})
        header = {"alg": "RS256", "typ": "JWT", "kid": "k1"}
        signing_input = bench.jwt_signing_input(header, claims)
        token = bench.jwt_token(signing_input, b"\xff" * 256)
        h, c, sig = token.split(".")
        self.assertEqual(json.loads(unb64url(h)), header)
        self.assertEqual(json.loads(unb64url(c)), claims)
        self.assertEqual(unb64url(sig), b"\xff" * 256)
        self.assertEqual(f"{h}.{c}".encode(), signing_input)
        self.assertNotIn("=", token)

    def test_discovery_names_the_issuer_exactly(self):
        doc = bench.discovery_document("http://127.0.0.1:8080")
        self.assertEqual(doc["issuer"], "http://127.0.0.1:8080")
        self.assertEqual(doc["jwks_uri"], "http://127.0.0.1:8080/jwks")

    @unittest.skipUnless(shutil.which("openssl"), "openssl not installed")
    def test_openssl_round_trip(self):
        """The served JWKS holds the key that signed the token, and the signature verifies."""
        with tempfile.TemporaryDirectory() as d:
            work, www = Path(d), Path(d) / "www"
            www.mkdir()
            token = bench.make_jwt_material(work, www, "http://127.0.0.1:9")
            doc = json.loads((www / ".well-known" / "openid-configuration").read_text())
            self.assertEqual(doc["issuer"], "http://127.0.0.1:9")
            jwk = json.loads((www / "jwks").read_text())["keys"][0]
            modulus = subprocess.run(["openssl", "rsa", "-in", str(work / "jwt-key.pem"), "-noout", "-modulus"],
                                     check=True, capture_output=True, text=True).stdout.strip()
            self.assertEqual(int(modulus.split("=", 1)[1], 16), int.from_bytes(unb64url(jwk["n"]), "big"))
            pub = work / "pub.pem"
            subprocess.run(["openssl", "pkey", "-in", str(work / "jwt-key.pem"), "-pubout", "-out", str(pub)],
                           check=True, capture_output=True)
            h, c, sig = token.split(".")
            (work / "sig").write_bytes(unb64url(sig))
            ok = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(pub), "-signature", str(work / "sig")],
                                input=f"{h}.{c}".encode(), capture_output=True)
            self.assertEqual(ok.returncode, 0, ok.stdout + ok.stderr)
            self.assertEqual(json.loads(unb64url(h))["kid"], jwk["kid"])
            claims = json.loads(unb64url(c))
            self.assertEqual((claims["iss"], claims["aud"]), ("http://127.0.0.1:9", bench.JWT_AUDIENCE))
            self.assertGreater(claims["exp"], claims["iat"])


BFF = bench.BffSettings("http://127.0.0.1:1004", "s3cret", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")


class ConfigTests(unittest.TestCase):
    def confs(self) -> dict:
        return {name: bench.meshgate_target_conf(name, 1000, 1001, 1002, "http://127.0.0.1:1002", 1003, BFF)
                for name in bench.MESHGATE_TARGETS}

    def test_meshgate_config_one_route(self):
        text = bench.meshgate_conf(1000, 1001, 1002, ["headers: { x: y }", "body_limit: 1MB"])
        self.assertEqual(text.count("- name: bench"), 1)
        self.assertIn("      - headers: { x: y }\n      - body_limit: 1MB\n", text)
        self.assertIn("threads: 1, work_stealing: false", text)
        self.assertIn('endpoints: ["127.0.0.1:1002"]', text)
        self.assertNotIn("filters:", bench.meshgate_conf(1000, 1001, 1002, []))

    def test_meshgate_targets_differ_only_where_intended(self):
        confs = self.confs()
        runtime = {next(l for l in c.splitlines() if l.startswith("runtime:")) for c in confs.values()}
        self.assertEqual(runtime, {"runtime: { threads: 1, work_stealing: false, idle_timeout: 300s, "
                                   "access_log: true }"})
        chain = confs["meshgate-chain"]
        for name in ("jwt", "rate_limit", "retry", "headers", "body_limit"):
            self.assertIn(f"      - {name}:", chain)
        self.assertIn("    circuit_breaker: {", chain)
        self.assertIn("providers:\n  bench: { issuer: http://127.0.0.1:1002, audience: bench }", chain)
        self.assertNotIn("stores:", chain)
        self.assertNotIn("filters:", confs["meshgate-plain"])
        self.assertNotIn("providers:", confs["meshgate-plain"])
        self.assertNotIn("circuit_breaker", confs["meshgate-jwt"])
        self.assertIn("      - jwt: { provider: bench }\n", confs["meshgate-jwt"])
        local, glob = confs["meshgate-ratelimit-local"], confs["meshgate-ratelimit-global"]
        self.assertIn("key: ip", local)
        self.assertNotIn("scope: global", local)
        self.assertIn("scope: global", glob)
        self.assertIn('rate_limits: { backend: redis, url: "redis://127.0.0.1:1003" }', glob)
        self.assertEqual(bench.JWT_TARGETS, ["meshgate-chain", "meshgate-jwt"])
        self.assertEqual(bench.RATE_LIMIT_TARGETS,
                         ["meshgate-chain", "meshgate-ratelimit-local", "meshgate-ratelimit-global"])
        self.assertEqual(bench.BFF_TARGETS, ["meshgate-bff-memory", "meshgate-bff-redis"])
        for name in bench.MESHGATE_TARGETS:
            if name not in bench.BFF_TARGETS:
                self.assertNotIn("bff", confs[name])
                self.assertNotIn("sessions:", confs[name])

    def test_bff_targets_differ_only_in_the_session_store(self):
        confs = self.confs()
        mem, red = confs["meshgate-bff-memory"], confs["meshgate-bff-redis"]
        for c in (mem, red):
            self.assertIn("mode: edge\n", c)
            self.assertIn("    filters:\n      - bff: { require_login: true }\n", c)
            self.assertIn('providers:\n  main: { issuer: "http://127.0.0.1:1004", client_id: web, '
                          'client_secret: "s3cret", audience: shop-api, '
                          "scopes: [openid, profile, email, offline_access] }\n", c)
            self.assertIn('bff: { provider: main, session_key: "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=" }\n', c)
            self.assertNotIn("jwt:", c)
            self.assertNotIn("rate_limits:", c)
            self.assertEqual(c.count("routes:"), 1)
        self.assertIn("stores:\n  sessions: { backend: memory }\n", mem)
        self.assertIn('stores:\n  sessions: { backend: redis, url: "redis://127.0.0.1:1003" }\n', red)
        self.assertEqual(mem.replace("backend: memory }", "X"),
                         red.replace('backend: redis, url: "redis://127.0.0.1:1003" }', "X"))
        # Every other line is meshgate-plain's.
        plain = set(confs["meshgate-plain"].splitlines())
        extra = [l for l in mem.splitlines() if l not in plain]
        self.assertEqual([l.split(":")[0].strip() for l in extra],
                         ["stores", "sessions", "providers", "main", "bff", "filters", "- bff"])

    def test_which_targets_need_redis(self):
        self.assertEqual([t for t in bench.MESHGATE_TARGETS if bench.target_needs_redis(t)],
                         ["meshgate-ratelimit-global", "meshgate-bff-redis"])
        self.assertEqual(bench.BFF_SESSION_STORES, {"meshgate-bff-memory": "memory", "meshgate-bff-redis": "redis"})

    def test_missing_issuer_or_redis_is_an_error(self):
        with self.assertRaises(ValueError):
            bench.meshgate_target_conf("meshgate-jwt", 1, 2, 3, None, None)
        with self.assertRaises(ValueError):
            bench.meshgate_target_conf("meshgate-ratelimit-global", 1, 2, 3, None, None)
        with self.assertRaises(ValueError):
            bench.meshgate_target_conf("meshgate-bff-memory", 1, 2, 3, None, None)
        with self.assertRaises(ValueError):
            bench.meshgate_target_conf("meshgate-bff-redis", 1, 2, 3, None, None, BFF)
        bench.meshgate_target_conf("meshgate-ratelimit-local", 1, 2, 3, None, None)
        bench.meshgate_target_conf("meshgate-bff-memory", 1, 2, 3, None, None, BFF)

    def test_backend_echoes_auth_headers_on_its_check_path_only(self):
        conf = bench.backend_nginx_conf(Path("/t"), 1, 4096)
        self.assertIn("location = /seen-auth {", conf)
        # nginx reads \n in a quoted string as a newline: one header per line in the body.
        self.assertIn('return 200 "authorization: $http_authorization\\ncookie: $http_cookie\\n";', conf)
        self.assertIn("location / { }", conf)

    def test_request_head_carries_headers(self):
        head = bench.request_head("/tiny", {"Authorization": "Bearer t"}, close=False)
        self.assertEqual(head, b"GET /tiny HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer t\r\n\r\n")
        t = bench.Target("meshgate-jwt", 1, None, 2, {"Authorization": "Bearer t"})
        self.assertEqual(t.header_args(), ["-H", "Authorization: Bearer t"])
        self.assertEqual(t.url("tiny"), "http://127.0.0.1:1/tiny")

    def test_proxies_keep_upstream_connections_alive(self):
        nginx = bench.proxy_nginx_conf(Path("/t"), 1, 2, 20000)
        for line in ("worker_processes 1;", "keepalive 128;", "proxy_http_version 1.1;", 'proxy_set_header Connection "";'):
            self.assertIn(line, nginx)
        haproxy = bench.haproxy_conf(1, 2, 10000)
        self.assertIn("nbthread 1", haproxy)
        self.assertIn("http-reuse always", haproxy)


LOGIN_PAGE = (
    '<!doctype html><html><head><title>Sign in</title></head><body><main><h1>Sign in</h1>'
    '<p class="sub">to continue to <strong>web</strong></p>'
    '<form method="post" action="/login" autocomplete="on">'
    '<input type="hidden" name="auth_request" value="Zm9v&amp;YmFy_-42">'
    '<label for="username">Username</label>'
    '<input type="text" id="username" name="username" value="" autocomplete="username" required autofocus>'
    '<input type="password" id="password" name="password" autocomplete="current-password" required>'
    '<button type="submit">Sign in</button></form></main></body></html>'
)


class BffTests(unittest.TestCase):
    COOKIE = "AAECAwQFBgcICQoLDA0ODw." + "x" * 43

    def test_clients_file_registers_every_bff_callback(self):
        text = bench.bff_clients_yaml("the-secret", [4100, 4102])
        self.assertIn("  - client_id: web\n", text)
        self.assertIn('    client_secret: "the-secret"\n', text)
        self.assertIn('    redirect_uris: ["http://127.0.0.1:4100/auth/callback", '
                      '"http://127.0.0.1:4102/auth/callback"]\n', text)
        self.assertIn("    audience: shop-api\n", text)
        self.assertIn("    scopes: [openid, profile, email, offline_access]\n", text)
        self.assertIn("    signing_alg: RS256\n", text)

    def test_identity_command(self):
        cmd = bench.identity_cmd(Path("/r/identity"), 4200, Path("/d"), Path("/c.yaml"))
        self.assertEqual(cmd[:3], ["/r/identity", "--listen", "127.0.0.1:4200"])
        self.assertEqual(cmd[cmd.index("--access-token-ttl") + 1], "1h")
        self.assertEqual(cmd[cmd.index("--clients") + 1], "/c.yaml")
        self.assertTrue(cmd[cmd.index("--users") + 1].endswith("backends/identity/demo/users.yaml"))
        self.assertTrue(bench.IDENTITY_USERS.exists())

    def test_settings_are_random_and_the_key_is_32_bytes(self):
        a, b = bench.new_bff_settings("http://i"), bench.new_bff_settings("http://i")
        self.assertNotEqual(a.client_secret, b.client_secret)
        self.assertNotEqual(a.session_key, b.session_key)
        self.assertEqual(len(base64.b64decode(a.session_key)), 32)
        self.assertEqual(a.issuer, "http://i")

    def test_set_cookie_parsing(self):
        headers = [
            "__Host-meshgate-login=pending.value; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=600",
            "__Host-meshgate=" + self.COOKIE + "; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=2592000",
            "other=1",
        ]
        self.assertEqual(bench.set_cookie_value(headers, "__Host-meshgate"), self.COOKIE)
        self.assertEqual(bench.set_cookie_value(headers, "__Host-meshgate-login"), "pending.value")
        self.assertIsNone(bench.set_cookie_value(headers, "__Host"))
        self.assertIsNone(bench.set_cookie_value(headers[:1], "__Host-meshgate"))
        # A later clearing Set-Cookie wins.
        cleared = headers + ["__Host-meshgate=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"]
        self.assertIsNone(bench.set_cookie_value(cleared, "__Host-meshgate"))

    def test_login_form_parsing(self):
        self.assertEqual(bench.login_form(LOGIN_PAGE), ("/login", "Zm9v&YmFy_-42"))
        # Attribute order does not matter; a missing action means /login.
        page = '<form method="post"><input value="abc" type="hidden" name="auth_request"></form>'
        self.assertEqual(bench.login_form(page), ("/login", "abc"))
        page = '<form action="/idp/login?x=1&amp;y=2"><input name="auth_request" value="abc"></form>'
        self.assertEqual(bench.login_form(page), ("/idp/login?x=1&y=2", "abc"))
        with self.assertRaises(ValueError):
            bench.login_form("<h1>Unknown client</h1>")
        with self.assertRaises(ValueError):
            bench.login_form('<input name="username" value="alice">')

    def test_request_headers_and_cookies(self):
        self.assertEqual(bench.bff_headers(self.COOKIE), {"Cookie": "__Host-meshgate=" + self.COOKIE, "X-CSRF": "1"})
        t = bench.Target("meshgate-bff-memory", 1, None, 2, bench.bff_headers("a.b"))
        self.assertEqual(t.header_args(), ["-H", "Cookie: __Host-meshgate=a.b", "-H", "X-CSRF: 1"])
        wrong = bench.wrong_secret_cookie(self.COOKIE)
        self.assertEqual(wrong.split(".")[0], self.COOKIE.split(".")[0])
        self.assertNotEqual(wrong, self.COOKIE)
        self.assertEqual(len(base64.urlsafe_b64decode(wrong.split(".")[1] + "=")), 32)
        zero = "id." + bench.b64url(bytes(32))
        self.assertNotEqual(bench.wrong_secret_cookie(zero), zero)
        self.assertEqual(bench.bff_redis_key(self.COOKIE), "mg:s:{s:AAECAwQFBgcICQoLDA0ODw}")

    def test_seen_headers_and_token_claims(self):
        claims = {"iss": "http://127.0.0.1:4", "aud": "shop-api", "sub": "alice", "iat": 10, "exp": 3610}
        token = bench.jwt_token(bench.jwt_signing_input({"alg": "RS256"}, claims), b"sig")
        seen = bench.parse_seen_headers(f"authorization: Bearer {token}\ncookie: theme=dark\n".encode())
        self.assertEqual(seen, {"authorization": f"Bearer {token}", "cookie": "theme=dark"})
        self.assertEqual(bench.parse_seen_headers(b"authorization: \ncookie: \n"), {"authorization": "", "cookie": ""})
        self.assertEqual(bench.jwt_payload(token), claims)
        with self.assertRaises(ValueError):
            bench.jwt_payload("opaque-token")

    def test_redis_command_is_resp(self):
        self.assertEqual(bench.redis_command("EXISTS", "mg:s:{s:abc}"),
                         b"*2\r\n$6\r\nEXISTS\r\n$12\r\nmg:s:{s:abc}\r\n")

    def test_load_problems(self):
        clean = {"requests": 1000.0, "status_401": 0.0, "status_not_200": 0.0}
        self.assertIsNone(bench.bff_load_problem({"bff_refreshes": 0.0}, clean))
        self.assertIn("2 access-token refreshes", bench.bff_load_problem({"bff_refreshes": 2.0}, clean))
        p = bench.bff_load_problem({"bff_refreshes": 0.0},
                                   {"requests": 1000.0, "status_401": 5.0, "status_not_200": 7.0})
        self.assertIn("5 requests answered 401", p)
        self.assertIn("2 other non-200", p)
        self.assertIn("no request", bench.bff_load_problem({"bff_refreshes": 0.0}, {"requests": 0.0}))


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
        shared = "p99 ≤ nginx p99 + 0.5 ms at the shared rate (a rate every target carries)"
        self.assertTrue(goals[f"meshgate-plain {shared}"]["met"])
        self.assertEqual(goals[f"meshgate-chain {shared}"]["value"], "+0.600 ms vs nginx")
        self.assertFalse(goals[f"meshgate-chain {shared}"]["met"])
        self.assertTrue(goals["BFF route ≥ 0.7× plain (memory sessions, tiny)"]["met"])
        self.assertFalse(goals["BFF route ≥ 0.7× plain (redis sessions, tiny)"]["met"])
        self.assertEqual(goals["BFF route ≥ 0.7× plain (redis sessions, 16k)"]["value"], "0.60×")
        self.assertAlmostEqual(s["ratios"]["meshgate-bff-memory/meshgate-plain tiny"], 0.8)
        self.assertAlmostEqual(s["ratios"]["meshgate-bff-redis/meshgate-bff-memory tiny"], 0.75)
        b = s["bff"]
        self.assertAlmostEqual(b["meshgate-bff-memory added_proxy_cpu_us"], 1e6 / 40e3 - 1e6 / 50e3)
        self.assertAlmostEqual(b["meshgate-bff-memory added_round_trip_us"], 5.0)
        self.assertAlmostEqual(b["redis_added_round_trip_us"], 60.0)
        self.assertAlmostEqual(b["redis_cpu_us"], 7.0)
        self.assertIn("memory sessions: 0.80× plain (tiny), 0.80× plain (16 KiB), +5.0 µs proxy CPU/req, "
                      "+5 µs unloaded p50", goals["BFF vs plain"]["value"])
        self.assertIn("Redis vs memory sessions: +60 µs unloaded p50", goals["BFF vs plain"]["value"])
        self.assertTrue(goals["local rate limit ≥ 0.97× plain (tiny)"]["met"])
        self.assertFalse(goals["jwt ≥ 0.9× plain (tiny)"]["met"])
        g = s["global_rate_limit"]
        self.assertAlmostEqual(g["meshgate-ratelimit-global/meshgate-plain tiny"], 0.8)
        self.assertAlmostEqual(g["added_round_trip_us"], 50.0)
        self.assertAlmostEqual(g["redis_cpu_us"], 6.0)
        self.assertAlmostEqual(g["redis_decision_share"], 0.99)
        self.assertIn("+50 µs unloaded p50 vs local", goals["global rate limit adds one Redis round trip and nothing else"]["value"])

    def test_shared_rate_is_half_the_slowest_median(self):
        data = fake_raw()["targets"]
        self.assertAlmostEqual(bench.shared_latency_rate(data), 0.5 * 30e3)  # meshgate-bff-redis's median
        self.assertEqual(bench.shared_latency_rate({"x": {"throughput": {"tiny": []}}}), 0.0)

    def test_markdown_and_svg(self):
        raw = fake_raw()
        s = bench.summarize(raw)
        md = bench.markdown(raw, s, "chart.svg")
        self.assertIn("| meshgate-plain | 50.0k | 0.50× |", md)
        # Idle memory: the settled increase, and the one 1 s after the last answer.
        self.assertIn("| 19.5 | 24.4 (+4.9; +5.9 at 1 s) |", md)
        self.assertIn("jwt, rate_limit, retry, headers, body_limit; cluster: circuit_breaker", md)
        self.assertIn("`runtime.access_log` is `true`", md)
        self.assertIn("## Global rate limit: the Redis round trip", md)
        self.assertIn("| meshgate-ratelimit-global/meshgate-ratelimit-local tiny |", md)
        self.assertIn("## BFF: session cookie → bearer", md)
        self.assertIn("- meshgate-bff-redis: `bff: { require_login: true }` (`stores.sessions: { backend: redis }`)", md)
        self.assertIn("- meshgate-bff-memory: 50000 requests during the load, 0 answered 401, 0 not 200 "
                      "(40 abandoned by the load generator at the end of a run, no answer); "
                      "0 access-token refreshes in all.", md)
        self.assertIn("| meshgate-bff-memory/meshgate-plain tiny | 0.800 |", md)
        self.assertNotIn("**INVALID**", md)
        self.assertIn("## Latency at a rate every target carries (15000 rps)", md)
        self.assertIn("| meshgate-chain | 0.200 | 1.300 | 2.600 | +0.600 | 50000 |", md)
        svg = bench.svg_chart(s)
        xml.dom.minidom.parseString(svg)  # well-formed
        self.assertIn("Throughput relative to nginx", svg)
        n = len(raw["targets"])
        self.assertEqual(svg.count("<rect"), 1 + n * 2 + n * 3 + 2 + 3)

    def test_invalid_bff_target_is_loud(self):
        raw = fake_raw()
        raw["targets"]["meshgate-bff-redis"]["invalid"] = "3 access-token refreshes (meshgate_bff_refreshes_total), want 0"
        s = bench.summarize(raw)
        goals = {g["goal"]: g for g in s["goals"]}
        for body in ("tiny", "16k"):
            g = goals[f"BFF route ≥ 0.7× plain (redis sessions, {body})"]
            self.assertFalse(g["met"])
            self.assertTrue(g["value"].startswith("INVALID: 3 access-token refreshes"))
        self.assertTrue(goals["BFF route ≥ 0.7× plain (memory sessions, tiny)"]["met"])
        self.assertIn("| meshgate-bff-redis (**INVALID**) |", bench.summary_table(raw, s))
        self.assertIn("**INVALID**: 3 access-token refreshes", bench.markdown(raw, s, "c.svg"))

    def test_goals_without_bff_targets(self):
        raw = fake_raw()
        for name in ("meshgate-bff-memory", "meshgate-bff-redis"):
            del raw["targets"][name]
        s = bench.summarize(raw)
        goals = {g["goal"]: g for g in s["goals"]}
        self.assertEqual(goals["BFF route ≥ 0.7× plain (memory sessions, tiny)"]["value"], "not measured")
        self.assertIsNone(goals["BFF route ≥ 0.7× plain (memory sessions, tiny)"]["met"])
        self.assertNotIn("BFF vs plain", goals)
        self.assertNotIn("## BFF", bench.markdown(raw, s, "c.svg"))


if __name__ == "__main__":
    unittest.main()
