#!/usr/bin/env python3
"""meshgate benchmark driver: meshgate side by side with nginx, HAProxy and bare Pingora.

`bench/run.sh` installs the tools and builds the binaries, then calls this script, which
owns everything else: it generates every config into a temporary directory, starts one
fixed backend and every target on free loopback ports, checks each target answers
correctly, measures in alternating rounds (A B C ... A B C ...), and writes
`bench/results/<date>-<machine>.{md,json,svg}`. Standard library only, so it runs on a
fresh Debian machine with nothing but python3.

Targets (all forward to the same backend, an nginx with one worker):

    direct          the backend itself, no proxy: the ceiling on this machine
    nginx           nginx reverse proxy, 1 worker, upstream keep-alive
    haproxy         HAProxy, nbthread 1, http-reuse always
    bare-pingora    bench/bare-pingora: Pingora ProxyHttp with no filters
    meshgate-plain  meshgate, a route with no filters
    meshgate-plain-bearer  the same route, sent the jwt targets' requests (with the token)
    meshgate-chain  meshgate, the route with the filter chain in CHAIN_FILTERS (jwt, local
                    rate_limit, retry, headers, body_limit) on a cluster with a circuit breaker
    meshgate-jwt    meshgate, a route with only a jwt filter
    meshgate-ratelimit-local   meshgate, a route with one local rate_limit (never denies)
    meshgate-ratelimit-global  the same limit with `scope: global`, counted in a local
                    redis-server the driver starts (one Redis round trip per request)
    meshgate-bff-memory  meshgate, a route with only the `bff` filter (browser session
                    cookie -> `Authorization: Bearer`), sessions in the memory store
    meshgate-bff-redis   the same with the sessions in the redis-server above

Every meshgate target runs its own process with a one-route config that differs from
meshgate-plain's only in that route's filters (and, for the chain, the cluster's circuit
breaker); runtime settings (1 thread, metrics, JSON access log on) are identical. For jwt
targets the driver makes an RSA key pair with openssl, signs one long-lived RS256 token and
serves discovery and JWKS as static files from the backend, which is the configured issuer.
For bff targets the driver runs the dev OpenID Provider (`target/release/identity`, access
tokens valid for BFF_ACCESS_TTL so no refresh happens during the run), logs `alice` in
through meshgate's `/auth/login` and the provider's form once per target, and sends the
session cookie and `X-CSRF: 1` with every request.

Measurements per target:

    throughput   wrk, 1 thread, 64 keep-alive connections, tiny body and 16 KiB body
    latency      oha at a fixed open-loop rate (50% of nginx's measured tiny-body max),
                 with latency correction (coordinated omission), p50/p99/p99.9
    shared rate  the same at 50% of the slowest target's tiny-body max, a rate every
                 target carries: a target slower than half of nginx is overloaded at the
                 first rate and its percentiles there are queueing time, not its own tail
    serial       oha with 1 connection, one request at a time: the unloaded round trip
                 (p50), which shows what one extra hop such as a Redis call adds
    cpu          proxy CPU time per request during the throughput runs (/proc/PID/stat)
    memory       peak RSS (VmHWM) after all load; RSS with 10,000 idle keep-alive
                 client connections, each of which has completed one request

CPU pinning on a machine with at least 2 cores: the proxy under test runs alone on
PROXY_CPU; the load generator and the backend share LOADGEN_CPU. For `direct`, the
backend is moved to PROXY_CPU for the duration of its runs, so the ceiling is measured
with the same two cores. On one core nothing is pinned.

Run `python3 bench/bench.py --help` for options; `python3 -m unittest bench/test_bench.py`
tests the parsing, statistics and report code without starting anything.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import html
import http.client
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable
from urllib.parse import urlencode, urljoin, urlsplit

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
README = ROOT / "bench" / "README.md"
RELEASE = ROOT / "target" / "release"

# The filter chain of the `meshgate-chain` target, one YAML flow mapping per filter, in
# request order (the order docs/configuration.md recommends: authentication, then limits,
# then the rest). Adding a filter to the benchmark is adding one line here; the report lists
# exactly what this chain contained. The rate limit is keyed by ip (every benchmark request
# comes from 127.0.0.1, so all share one bucket) at a rate no run can reach: it is measured,
# never denies.
JWT_FILTER = "jwt: { provider: bench }"
RATE_LIMIT_LOCAL = "rate_limit: { key: ip, rate: 1000000/s, burst: 1000000 }"
RATE_LIMIT_GLOBAL = "rate_limit: { key: ip, rate: 1000000/s, burst: 1000000, scope: global }"
CHAIN_FILTERS = [
    JWT_FILTER,
    RATE_LIMIT_LOCAL,
    "retry: { attempts: 3, per_try_timeout: 2s, backoff: 25ms..250ms, on: [connect_failure, reset, 502, 503, 504], "
    "budget: 20% }",
    "headers: { request: { set: { x-env: bench } }, response: { remove: [server] } }",
    "body_limit: 1MB",
]
# Settings of the chain target's cluster (one YAML line each): the breaker is per cluster.
CHAIN_CLUSTER = [
    "circuit_breaker: { consecutive_failures: 5, failure_rate: 50%, window: 10s, min_requests: 20, "
    "open_for: 30s, half_open_probes: 3 }",
]
BFF_FILTER = "bff: { require_login: true }"
# Route filters of each meshgate target (the route is the same otherwise).
MESHGATE_FILTERS = {
    "meshgate-plain": [],
    "meshgate-plain-bearer": [],
    "meshgate-chain": CHAIN_FILTERS,
    "meshgate-jwt": [JWT_FILTER],
    "meshgate-ratelimit-local": [RATE_LIMIT_LOCAL],
    "meshgate-ratelimit-global": [RATE_LIMIT_GLOBAL],
    "meshgate-bff-memory": [BFF_FILTER],
    "meshgate-bff-redis": [BFF_FILTER],
}
# `stores.sessions.backend` of each bff target (the only difference between the two).
BFF_SESSION_STORES = {"meshgate-bff-memory": "memory", "meshgate-bff-redis": "redis"}
# meshgate's JSON access log (runtime.access_log) is on for every meshgate target.
ACCESS_LOG = True
JWT_PROVIDER = "bench"
JWT_AUDIENCE = "bench"
JWT_SUBJECT = "bench-user"
JWT_KID = "bench-rs256"
JWT_LIFETIME_S = 7 * 24 * 3600
# The BFF: the dev OpenID Provider (backends/identity) as provider `main`, client `web`.
BFF_PROVIDER = "main"
BFF_CLIENT_ID = "web"
BFF_AUDIENCE = "shop-api"
BFF_SCOPES = ["openid", "profile", "email", "offline_access"]
BFF_USER = ("alice", "alice")  # from backends/identity/demo/users.yaml
BFF_COOKIE = "__Host-meshgate"  # bff.cookie.name's default
BFF_CSRF_HEADER = "X-CSRF"  # bff.csrf_header's default
# Access-token lifetime at the provider: with 1 h (and `refresh_before: 60s`) no request of
# a run refreshes, so the measurement is the session lookup path alone. The driver checks
# meshgate_bff_refreshes_total stayed 0.
BFF_ACCESS_TTL = "1h"
IDENTITY_USERS = ROOT / "backends" / "identity" / "demo" / "users.yaml"
# Backend path echoing the Authorization and Cookie headers it received (checks only).
SEEN_AUTH_PATH = "/seen-auth"

TINY_BODY = b"hello, world\n"
LARGE_BODY_SIZE = 16 * 1024
# Body name -> (path on the backend, expected body length).
BODIES = {"tiny": ("/tiny", len(TINY_BODY)), "16k": ("/16k", LARGE_BODY_SIZE)}

CONNECTIONS = 64
IDLE_CONNECTIONS = 10_000
LOADGEN_CPU = 0
PROXY_CPU = 1
TARGET_ORDER = ["direct", "nginx", "haproxy", "bare-pingora", "meshgate-plain", "meshgate-plain-bearer",
                "meshgate-chain", "meshgate-jwt",
                "meshgate-ratelimit-local", "meshgate-ratelimit-global", "meshgate-bff-memory", "meshgate-bff-redis"]
MESHGATE_TARGETS = [t for t in TARGET_ORDER if t.startswith("meshgate-")]
JWT_TARGETS = [t for t in MESHGATE_TARGETS if JWT_FILTER in MESHGATE_FILTERS[t]]
RATE_LIMIT_TARGETS = [t for t in MESHGATE_TARGETS if any(f.startswith("rate_limit:") for f in MESHGATE_FILTERS[t])]
BFF_TARGETS = [t for t in MESHGATE_TARGETS if BFF_FILTER in MESHGATE_FILTERS[t]]
# Targets whose load carries the RS256 token as `Authorization: Bearer`: the jwt targets,
# and a plain route sent the same requests, so that a filter's own cost can be told from
# the cost of carrying a ~0.8 KB header through the proxy and on to the backend.
BEARER_TARGETS = JWT_TARGETS + ["meshgate-plain-bearer"]
SERIAL_REQUESTS = 3000
DESCRIPTIONS = {
    "direct": "the backend itself, no proxy (ceiling)",
    "nginx": "nginx, 1 worker, upstream keepalive 128, proxy_http_version 1.1",
    "haproxy": "HAProxy, nbthread 1, http-reuse always",
    "bare-pingora": "bench/bare-pingora: Pingora ProxyHttp, no filters",
    "meshgate-plain": "meshgate, route without filters",
    "meshgate-plain-bearer": "meshgate, route without filters, sent the jwt targets' requests (with the token)",
    "meshgate-chain": "meshgate, route with the filter chain (jwt, local rate_limit, retry, headers, body_limit; "
                      "circuit_breaker on the cluster)",
    "meshgate-jwt": "meshgate, route with a jwt filter only (RS256, one token: verified-token cache path)",
    "meshgate-ratelimit-local": "meshgate, route with one local rate_limit (key ip, never denies)",
    "meshgate-ratelimit-global": "meshgate, route with one global rate_limit (Redis, key ip, never denies)",
    "meshgate-bff-memory": "meshgate, route with a bff filter only (session cookie -> bearer), memory session store",
    "meshgate-bff-redis": "meshgate, route with a bff filter only (session cookie -> bearer), Redis session store",
}


# ---------------------------------------------------------------------------- parsing

@dataclass
class WrkResult:
    """One wrk run."""

    requests: int
    seconds: float
    rps: float
    socket_errors: int
    non_2xx: int

    def to_json(self) -> dict:
        return self.__dict__.copy()


def parse_wrk(text: str) -> WrkResult:
    """Parses wrk's plain-text summary; raises ValueError when it is not one."""
    done = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)\b", text, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if not done or not rps:
        raise ValueError(f"not a wrk summary: {text[:200]!r}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[done.group(3)]
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkResult(
        requests=int(done.group(1)),
        seconds=float(done.group(2)) * scale,
        rps=float(rps.group(1)),
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


@dataclass
class LatencyResult:
    """One open-loop latency run; latencies in milliseconds."""

    target_rps: float
    achieved_rps: float
    p50: float
    p99: float
    p999: float
    success_rate: float
    errors: int

    def to_json(self) -> dict:
        return self.__dict__.copy()


def parse_oha(text: str, target_rps: float) -> LatencyResult:
    """Parses `oha --output-format json` output (latencies there are in seconds)."""
    data = json.loads(text)
    pct = data.get("latencyPercentiles") or {}
    summary = data.get("summary") or {}
    errors = data.get("errorDistribution") or {}

    def ms(key: str) -> float:
        value = pct.get(key)
        if value is None:
            raise ValueError(f"oha output lacks latencyPercentiles.{key}")
        return float(value) * 1000.0

    return LatencyResult(
        target_rps=target_rps,
        achieved_rps=float(summary.get("requestsPerSec") or 0.0),
        p50=ms("p50"),
        p99=ms("p99"),
        p999=ms("p99.9"),
        success_rate=float(summary.get("successRate") or 0.0),
        errors=sum(int(v) for v in errors.values()),
    )


def parse_status_kib(text: str, key: str) -> int:
    """Reads a `Key:   1234 kB` line of /proc/PID/status."""
    m = re.search(rf"^{re.escape(key)}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else 0


def parse_stat_ticks(text: str) -> int:
    """utime + stime (clock ticks) from a /proc/PID/stat line."""
    # The command name may contain spaces and parentheses; fields resume after the last ')'.
    rest = text[text.rindex(")") + 2 :].split()
    return int(rest[11]) + int(rest[12])


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def chain_filter_names(filters: list[str]) -> list[str]:
    return [f.split(":", 1)[0].strip() for f in filters]


def prom_value(text: str, name: str, labels: str = "") -> float | None:
    """The value of one sample of a Prometheus text exposition, e.g.
    `prom_value(text, "meshgate_rate_limit_global_decisions_total", '{by="redis"}')`."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key.strip() == name + labels:
            try:
                return float(value)
            except ValueError:
                return None
    return None


def prom_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric `name` as (labels, value), e.g. the samples of
    `meshgate_requests_total{route="bench",cluster="backend",status="200"}`."""
    out = []
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        key, _, value = line.rpartition(" ")
        key = key.strip()
        if key == name:
            labels: dict[str, str] = {}
        elif key.startswith(name + "{") and key.endswith("}"):
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', key[len(name) + 1:-1]))
        else:
            continue  # another metric whose name starts with this one
        try:
            out.append((labels, float(value)))
        except ValueError:
            continue
    return out


def prom_sum(text: str, name: str, match: Callable[[dict[str, str]], bool] = lambda _: True) -> float:
    """The sum of the samples of `name` whose labels satisfy `match` (0 when there are none)."""
    return sum(v for labels, v in prom_samples(text, name) if match(labels))


# ---------------------------------------------------------------------------- JWT material

def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _der(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start, end) of the content of the DER element at `pos`."""
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


RSA_ENCRYPTION_OID = bytes.fromhex("06092a864886f70d010101")


def rsa_public_numbers(spki_der: bytes) -> tuple[int, int]:
    """(n, e) from a DER SubjectPublicKeyInfo of an RSA key (`openssl pkey -pubout -outform DER`)."""
    tag, start, _ = _der(spki_der, 0)
    if tag != 0x30:
        raise ValueError("not a SubjectPublicKeyInfo")
    tag, alg_start, alg_end = _der(spki_der, start)
    if tag != 0x30 or not spki_der[alg_start:alg_end].startswith(RSA_ENCRYPTION_OID):
        raise ValueError("not an RSA public key")
    tag, bits_start, bits_end = _der(spki_der, alg_end)
    if tag != 0x03 or spki_der[bits_start] != 0:
        raise ValueError("bad subjectPublicKey BIT STRING")
    key = spki_der[bits_start + 1:bits_end]
    tag, seq_start, _ = _der(key, 0)
    tag_n, n_start, n_end = _der(key, seq_start)
    tag_e, e_start, e_end = _der(key, n_end)
    if tag != 0x30 or tag_n != 0x02 or tag_e != 0x02:
        raise ValueError("bad RSAPublicKey")
    return int.from_bytes(key[n_start:n_end], "big"), int.from_bytes(key[e_start:e_end], "big")


def _uint_bytes(v: int) -> bytes:
    return v.to_bytes(max(1, (v.bit_length() + 7) // 8), "big")


def rsa_jwk(n: int, e: int, kid: str) -> dict:
    """A public RS256 signing key as a JWK (RFC 7518 §6.3: n and e unsigned big-endian, base64url)."""
    return {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64url(_uint_bytes(n)),
            "e": b64url(_uint_bytes(e))}


def discovery_document(issuer: str) -> dict:
    """The parts of an OpenID discovery document meshgate reads: `issuer` (must equal the
    configured issuer exactly) and `jwks_uri`."""
    return {"issuer": issuer, "jwks_uri": f"{issuer}/jwks", "id_token_signing_alg_values_supported": ["RS256"]}


def jwt_claims(issuer: str, audience: str, subject: str, now: int, lifetime_s: int) -> dict:
    return {"iss": issuer, "aud": audience, "sub": subject, "iat": now, "exp": now + lifetime_s}


def jwt_signing_input(header: dict, claims: dict) -> bytes:
    """`base64url(header) . base64url(claims)`, the bytes a JWS signature covers."""
    def part(obj: dict) -> str:
        return b64url(json.dumps(obj, separators=(",", ":")).encode())
    return f"{part(header)}.{part(claims)}".encode("ascii")


def jwt_token(signing_input: bytes, signature: bytes) -> str:
    return f"{signing_input.decode('ascii')}.{b64url(signature)}"


def make_jwt_material(workdir: Path, www: Path, issuer: str) -> str:
    """An RSA-2048 key pair made with openssl, the provider documents served from `www`
    (`/.well-known/openid-configuration` and `/jwks`), and an RS256 token for `issuer`,
    returned. RS256 is RSASSA-PKCS1-v1_5 with SHA-256, which is what `openssl dgst -sha256
    -sign` produces."""
    key = workdir / "jwt-key.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key)],
                   check=True, capture_output=True)
    der = subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    n, e = rsa_public_numbers(der)
    (www / ".well-known").mkdir(parents=True, exist_ok=True)
    (www / ".well-known" / "openid-configuration").write_text(json.dumps(discovery_document(issuer)))
    (www / "jwks").write_text(json.dumps({"keys": [rsa_jwk(n, e, JWT_KID)]}))
    header = {"alg": "RS256", "typ": "JWT", "kid": JWT_KID}
    claims = jwt_claims(issuer, JWT_AUDIENCE, JWT_SUBJECT, int(time.time()), JWT_LIFETIME_S)
    signing_input = jwt_signing_input(header, claims)
    signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key)], input=signing_input,
                               check=True, capture_output=True).stdout
    if len(signature) != (n.bit_length() + 7) // 8:
        raise RuntimeError(f"unexpected RS256 signature length {len(signature)}")
    return jwt_token(signing_input, signature)


def jwt_payload(token: str) -> dict:
    """The claims of a compact JWS, not verified (the checks only look at what meshgate sent
    upstream)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")
    return json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))


# ---------------------------------------------------------------------------- BFF material

@dataclass
class BffSettings:
    """What a bff target's config needs: the provider's issuer, the client secret registered
    there, and the server `session_key`."""

    issuer: str
    client_secret: str
    session_key: str


def new_bff_settings(issuer: str) -> BffSettings:
    """A random client secret and a random 32-byte session key (`openssl rand -base64 32`)."""
    return BffSettings(issuer, secrets.token_urlsafe(24), base64.b64encode(os.urandom(32)).decode("ascii"))


def bff_clients_yaml(client_secret: str, ports: list[int]) -> str:
    """The dev provider's clients file: the confidential client `web` (audience shop-api,
    RS256 tokens) with `http://127.0.0.1:<port>/auth/callback` registered for every bff
    target's port, as tests/src/identity.rs registers the edges a test starts."""
    uris = ", ".join(f'"http://127.0.0.1:{p}/auth/callback"' for p in ports)
    return (
        "# Generated by bench/bench.py.\n"
        "clients:\n"
        f"  - client_id: {BFF_CLIENT_ID}\n"
        f"    client_secret: {json.dumps(client_secret)}\n"
        f"    redirect_uris: [{uris}]\n"
        f"    audience: {BFF_AUDIENCE}\n"
        f"    scopes: [{', '.join(BFF_SCOPES)}]\n"
        "    signing_alg: RS256\n"
    )


def identity_cmd(binary: Path, port: int, data_dir: Path, clients: Path) -> list[str]:
    """The dev OpenID Provider on loopback, with the demo users and access tokens valid for
    BFF_ACCESS_TTL."""
    return [str(binary), "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir), "--users",
            str(IDENTITY_USERS), "--clients", str(clients), "--access-token-ttl", BFF_ACCESS_TTL]


def set_cookie_value(set_cookies: list[str], name: str) -> str | None:
    """The value `Set-Cookie` header values give cookie `name`: the last one wins, and a
    cleared cookie (empty value) is None."""
    value = None
    for header in set_cookies:
        k, sep, v = header.split(";", 1)[0].partition("=")
        if sep and k.strip() == name:
            value = v.strip() or None
    return value


def login_form(page: str) -> tuple[str, str]:
    """(form action, auth_request) of the provider's login page: the hidden `auth_request`
    input is the only state the form carries."""
    action = "/login"
    form = re.search(r"<form\b[^>]*>", page)
    if form:
        attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', form.group(0)))
        action = html.unescape(attrs.get("action") or action)
    for tag in re.findall(r"<input\b[^>]*>", page):
        attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', tag))
        if attrs.get("name") == "auth_request" and attrs.get("value"):
            return action, html.unescape(attrs["value"])
    raise ValueError(f"no auth_request field in the login page: {page[:300]!r}")


def bff_headers(cookie: str) -> dict[str, str]:
    """What every request to a bff route sends: the session cookie and the CSRF header."""
    return {"Cookie": f"{BFF_COOKIE}={cookie}", BFF_CSRF_HEADER: "1"}


def wrong_secret_cookie(cookie: str) -> str:
    """The same session id with another 32-byte secret: names a stored record but opens nothing."""
    session_id, _, secret = cookie.partition(".")
    other = b64url(bytes(32))
    return f"{session_id}.{other if secret != other else b64url(bytes([1]) * 32)}"


def bff_redis_key(cookie: str) -> str:
    """The Redis key of the session record a cookie names (`mg:s:{s:<base64url id>}`)."""
    return "mg:s:{s:" + cookie.partition(".")[0] + "}"


def parse_seen_headers(body: bytes) -> dict[str, str]:
    """The backend's `/seen-auth` answer: `name: value` lines of the request headers it echoes."""
    out = {}
    for line in body.decode("latin-1").splitlines():
        k, sep, v = line.partition(":")
        if sep:
            out[k.strip().lower()] = v.strip()
    return out


def http_request(url: str, method: str = "GET", headers: dict[str, str] | None = None, body: bytes | None = None,
                 timeout: float = 15.0) -> tuple[int, list[tuple[str, str]], bytes]:
    """One HTTP/1.1 request that follows no redirect: status, every header (repeated ones
    kept, names lower-cased) and body."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=timeout)
    try:
        conn.request(method, (u.path or "/") + (f"?{u.query}" if u.query else ""), body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, [(k.lower(), v) for k, v in r.getheaders()], r.read()
    finally:
        conn.close()


def header_values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k == name.lower()]


def bff_login(port: int, user: str, password: str) -> str:
    """Logs `user` in through the BFF of the meshgate on `port` the way a browser does, step
    by step, and returns the session cookie's value: `/auth/login` (302 to the provider, with
    the pending-login cookie), the provider's form, its POST (a redirect to meshgate's
    callback), and the callback with the pending-login cookie (303 with the session cookie)."""
    base = f"http://127.0.0.1:{port}"

    def fail(step: str, status: int, body: bytes) -> RuntimeError:
        return RuntimeError(f"BFF login on port {port}, {step}: status {status}, {body[:300]!r}")

    status, h, body = http_request(f"{base}/auth/login?{urlencode({'return_to': '/'})}")
    login_cookie = set_cookie_value(header_values(h, "set-cookie"), f"{BFF_COOKIE}-login")
    if status != 302 or not header_values(h, "location") or not login_cookie:
        raise fail("/auth/login (want 302 with a Location and the pending-login cookie)", status, body)
    authorize = header_values(h, "location")[0]
    status, _, page = http_request(authorize)
    if status != 200:
        raise fail("provider authorize page", status, page)
    action, auth_request = login_form(page.decode("utf-8", errors="replace"))
    form = urlencode({"auth_request": auth_request, "username": user, "password": password}).encode()
    status, h, body = http_request(urljoin(authorize, action), "POST",
                                   {"Content-Type": "application/x-www-form-urlencoded"}, form)
    callback = (header_values(h, "location") or [""])[0]
    if status not in (302, 303) or not callback.startswith(f"{base}/auth/callback?"):
        raise fail(f"provider login form (want a redirect to {base}/auth/callback, got {callback!r})", status, body)
    status, h, body = http_request(callback, headers={"Cookie": f"{BFF_COOKIE}-login={login_cookie}"})
    session = set_cookie_value(header_values(h, "set-cookie"), BFF_COOKIE)
    if status != 303 or not session:
        raise fail("/auth/callback (want 303 with the session cookie)", status, body)
    return session


# ---------------------------------------------------------------------------- processes

def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (nginx is a master plus a worker)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def read_proc(pid: int, name: str) -> str:
    try:
        with open(f"/proc/{pid}/{name}") as f:
            return f.read()
    except OSError:
        return ""


def tree_kib(pid: int, key: str) -> int:
    return sum(parse_status_kib(read_proc(p, "status"), key) for p in process_tree(pid))


def tree_ticks(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        stat = read_proc(p, "stat")
        if stat:
            total += parse_stat_ticks(stat)
    return total


def system_busy_ticks() -> int:
    """user + nice + system ticks of all CPUs (the time processes were running)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    return int(fields[0]) + int(fields[1]) + int(fields[2])


def wait_quiet(max_other_pct: float, timeout_s: float, window_s: float = 0.5) -> float:
    """Waits until the machine's busy time is below `max_other_pct` of one core over a short
    window (our servers are idle between runs, so what is busy is someone else), or until
    `timeout_s`. Returns the seconds waited."""
    hz = os.sysconf("SC_CLK_TCK")
    start = time.monotonic()
    while True:
        b0 = system_busy_ticks()
        time.sleep(window_s)
        busy_pct = 100.0 * (system_busy_ticks() - b0) / hz / window_s
        waited = time.monotonic() - start
        if busy_pct <= max_other_pct or waited >= timeout_s:
            return waited


def pin_tree(pid: int, cpu: int | None) -> None:
    """Moves every thread of a running process tree to one CPU."""
    if cpu is None:
        return
    for p in process_tree(pid):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(int(tid), {cpu})
            except OSError:
                pass


def request_head(path: str, headers: dict[str, str] | None = None, close: bool = True) -> bytes:
    """The bytes of a GET request head to 127.0.0.1."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    conn = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}{conn}\r\n".encode()


def http_get(port: int, path: str, timeout: float = 2.0, headers: dict[str, str] | None = None
             ) -> tuple[int, dict, bytes]:
    """A minimal HTTP/1.1 GET (Connection: close) returning status, headers, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request_head(path, headers))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


class Procs:
    """Every process the driver started, stopped in reverse order on exit."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], cpu: int | None, stdout_devnull: bool = False) -> subprocess.Popen:
        out = subprocess.DEVNULL if stdout_devnull else open(self.logdir / f"{name}.out", "wb")
        err = open(self.logdir / f"{name}.err", "wb")
        proc = subprocess.Popen(
            taskset(cpu) + cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self.started.append((name, proc))
        return proc

    def stop_all(self) -> None:
        for _, proc in reversed(self.started):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGINT)
                except OSError:
                    pass
        deadline = time.monotonic() + 5
        for _, proc in reversed(self.started):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                proc.wait()
        self.started.clear()


def taskset(cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu)] if cpu is not None else []


def wait_ready(check: Callable[[], bool], proc: subprocess.Popen, what: str, deadline_s: float = 30.0) -> None:
    """Polls `check` until it is true, the process dies, or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    last_error = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        try:
            if check():
                return
        except (OSError, ValueError, IndexError) as e:
            last_error = str(e)
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready within {deadline_s}s ({last_error})")


# ---------------------------------------------------------------------------- configs

def backend_nginx_conf(tmp: Path, port: int, nofile: int) -> str:
    """The fixed fast backend: one nginx worker serving two static files from memory."""
    return f"""\
worker_processes 1;
daemon off;
pid {tmp}/backend.pid;
error_log {tmp}/backend.error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {nofile - 100}; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush off;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    open_file_cache max=16 inactive=300s;
    open_file_cache_valid 300s;
    default_type text/plain;
    client_body_temp_path {tmp}/backend-body;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {tmp}/www;
        # Echo the header the filter chain sets and the subject the jwt filter forwards, so
        # the harness can check the filters ran.
        add_header x-seen-env $http_x_env;
        add_header x-seen-sub $http_x_meshgate_sub;
        location / {{ }}
        # Checks only (never measured): the Authorization and Cookie headers the request
        # arrived with, so the harness can see what a bff route sent upstream.
        location = {SEEN_AUTH_PATH} {{
            return 200 "authorization: $http_authorization\\ncookie: $http_cookie\\n";
        }}
    }}
}}
"""


def proxy_nginx_conf(tmp: Path, port: int, backend: int, nofile: int) -> str:
    return f"""\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {nofile - 100}; }}
http {{
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive 128;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def haproxy_conf(port: int, backend: int, idle: int) -> str:
    # HAProxy reserves two descriptors per connection and by default refuses to start when
    # it cannot raise the limit that far; idle client connections need only one each (their
    # server connections are pooled), so allow the lower limit instead of capping maxconn.
    return f"""\
global
    nbthread 1
    maxconn {idle + 500}
    no strict-limits

defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    http-reuse always

frontend public
    bind 127.0.0.1:{port}
    default_backend backend

backend backend
    server b1 127.0.0.1:{backend}
"""


def meshgate_conf(port: int, admin: int, backend: int, filters: list[str], *, cluster: list[str] | None = None,
                  issuer: str | None = None, redis_port: int | None = None, bff: BffSettings | None = None,
                  sessions_redis_port: int | None = None) -> str:
    """One meshgate process: one route (`bench`, matching every path) with `filters`, to one
    cluster with the settings in `cluster`. The runtime section is the same for every
    meshgate target. `issuer` adds the `bench` OpenID Provider (for jwt filters);
    `redis_port` adds the Redis store of `scope: global` rate limits. `bff` adds the `main`
    provider (the dev OpenID Provider, client `web`), the `bff` section and the session
    store: in memory, or in Redis on `sessions_redis_port`."""
    lines = [
        "# Generated by bench/bench.py.",
        "mode: edge",
        "service: bench",
        "listeners:",
        "  - name: public",
        f"    address: 127.0.0.1:{port}",
        f"admin: {{ address: 127.0.0.1:{admin} }}",
        "runtime: { threads: 1, work_stealing: false, idle_timeout: 300s, "
        f"access_log: {'true' if ACCESS_LOG else 'false'} }}",
    ]
    stores = []
    if redis_port is not None:
        stores.append(f'  rate_limits: {{ backend: redis, url: "redis://127.0.0.1:{redis_port}" }}')
    if bff is not None:
        stores.append("  sessions: { backend: memory }" if sessions_redis_port is None else
                      f'  sessions: {{ backend: redis, url: "redis://127.0.0.1:{sessions_redis_port}" }}')
    if stores:
        lines += ["stores:", *stores]
    providers = []
    if issuer is not None:
        providers.append(f"  {JWT_PROVIDER}: {{ issuer: {issuer}, audience: {JWT_AUDIENCE} }}")
    if bff is not None:
        providers.append(f"  {BFF_PROVIDER}: {{ issuer: {json.dumps(bff.issuer)}, client_id: {BFF_CLIENT_ID}, "
                         f"client_secret: {json.dumps(bff.client_secret)}, audience: {BFF_AUDIENCE}, "
                         f"scopes: [{', '.join(BFF_SCOPES)}] }}")
    if providers:
        lines += ["providers:", *providers]
    if bff is not None:
        lines.append(f"bff: {{ provider: {BFF_PROVIDER}, session_key: {json.dumps(bff.session_key)} }}")
    lines += ["clusters:", "  backend:", f'    endpoints: ["127.0.0.1:{backend}"]']
    lines += [f"    {c}" for c in cluster or []]
    lines += ["routes:", "  - name: bench", "    to: backend"]
    if filters:
        lines += ["    filters:", *[f"      - {f}" for f in filters]]
    return "\n".join(lines) + "\n"


def target_needs_redis(name: str) -> bool:
    """A global rate limit counts in Redis; a bff target with BFF_SESSION_STORES `redis` keeps
    its sessions there."""
    return (any("scope: global" in f for f in MESHGATE_FILTERS[name])
            or BFF_SESSION_STORES.get(name) == "redis")


def meshgate_target_conf(name: str, port: int, admin: int, backend: int, issuer: str | None,
                         redis_port: int | None, bff: BffSettings | None = None) -> str:
    """The config of one meshgate target (see MESHGATE_FILTERS and BFF_SESSION_STORES)."""
    filters = MESHGATE_FILTERS[name]
    needs_jwt = JWT_FILTER in filters
    needs_bff = BFF_FILTER in filters
    needs_redis = target_needs_redis(name)
    if needs_jwt and issuer is None:
        raise ValueError(f"{name} needs the JWT issuer")
    if needs_redis and redis_port is None:
        raise ValueError(f"{name} needs Redis")
    if needs_bff and bff is None:
        raise ValueError(f"{name} needs the BFF provider settings")
    sessions_redis = needs_bff and BFF_SESSION_STORES.get(name) == "redis"
    return meshgate_conf(port, admin, backend, filters,
                         cluster=CHAIN_CLUSTER if name == "meshgate-chain" else None,
                         issuer=issuer if needs_jwt else None,
                         redis_port=redis_port if any("scope: global" in f for f in filters) else None,
                         bff=bff if needs_bff else None,
                         sessions_redis_port=redis_port if sessions_redis else None)


def redis_cmd(port: int, workdir: Path) -> list[str]:
    """A throwaway redis-server on loopback: no persistence, no protected-mode surprises."""
    return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(workdir), "--daemonize", "no", "--protected-mode", "no", "--loglevel", "warning"]


def redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"+PONG")


def redis_command(*args: str) -> bytes:
    """A command in RESP (an array of bulk strings), safe for keys with braces or spaces."""
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def redis_integer(port: int, *args: str) -> int:
    """Runs a command whose answer is an integer (EXISTS, DBSIZE)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as s:
        s.sendall(redis_command(*args))
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = s.recv(256)
            if not chunk:
                break
            reply += chunk
    if not reply.startswith(b":"):
        raise RuntimeError(f"redis {args[0]}: unexpected reply {reply[:100]!r}")
    return int(reply[1:].strip())


# ---------------------------------------------------------------------------- targets

@dataclass
class Target:
    name: str
    port: int
    proc: subprocess.Popen | None  # None for `direct` (the backend process is used)
    admin: int | None = None  # meshgate's admin port
    # Request headers every load generator sends (the bearer token on jwt targets).
    headers: dict[str, str] = field(default_factory=dict)

    def url(self, body: str) -> str:
        return f"http://127.0.0.1:{self.port}{BODIES[body][0]}"

    def header_args(self) -> list[str]:
        """`-H 'name: value'` for wrk and oha."""
        return [a for k, v in self.headers.items() for a in ("-H", f"{k}: {v}")]


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    procs: Procs
    pinned: bool
    nofile: int
    backend_port: int = 0
    waited_total: float = 0.0
    backend_proc: subprocess.Popen | None = None
    redis_proc: subprocess.Popen | None = None
    redis_port: int | None = None
    token: str | None = None
    issuer: str | None = None
    idp_proc: subprocess.Popen | None = None
    bff: BffSettings | None = None
    # The session cookie value of each bff target (one login per target).
    bff_cookies: dict[str, str] = field(default_factory=dict)
    targets: dict[str, Target] = field(default_factory=dict)

    @property
    def proxy_cpu(self) -> int | None:
        return PROXY_CPU if self.pinned else None

    @property
    def loadgen_cpu(self) -> int | None:
        return LOADGEN_CPU if self.pinned else None

    def pid_of(self, t: Target) -> int:
        proc = t.proc or self.backend_proc
        assert proc is not None
        return proc.pid

    # -- start -------------------------------------------------------------------------

    def start_all(self) -> None:
        www = self.tmp / "www"
        www.mkdir(parents=True)
        large = bytes((i * 7 + 13) % 26 + 97 for i in range(LARGE_BODY_SIZE))
        (www / "tiny").write_bytes(TINY_BODY)
        (www / "16k").write_bytes(large)

        wanted = set(self.args.targets)
        ports = free_ports(6 + 2 * len(MESHGATE_TARGETS))
        self.backend_port = ports[0]
        if wanted & set(BEARER_TARGETS):
            # The backend is the OpenID Provider: discovery and JWKS are static files in www.
            self.issuer = f"http://127.0.0.1:{self.backend_port}"
            self.token = make_jwt_material(self.tmp, www, self.issuer)
            log(f"RS256 key pair and token made; provider documents served by the backend at {self.issuer}")
        # nginx workers may run as an unprivileged user: let them read the temp tree.
        for p in [self.tmp, *self.tmp.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)

        conf = self.tmp / "backend.conf"
        conf.write_text(backend_nginx_conf(self.tmp, self.backend_port, self.nofile))
        self.backend_proc = self.procs.start(
            "backend", ["nginx", "-e", str(self.tmp / "backend.error.log"), "-p", str(self.tmp), "-c", str(conf)],
            self.loadgen_cpu,
        )
        self._ready(Target("direct", self.backend_port, None), self.backend_proc)
        self.targets["direct"] = Target("direct", self.backend_port, None)

        if any(target_needs_redis(t) for t in wanted & set(MESHGATE_TARGETS)):
            # Redis is an external service like the backend: it shares the load generator's core.
            if not shutil.which("redis-server"):
                raise RuntimeError("redis-server not found (apt-get install redis-server); needed for "
                                   "meshgate-ratelimit-global and meshgate-bff-redis")
            self.redis_port = ports[4]
            rdir = self.tmp / "redis"
            rdir.mkdir()
            self.redis_proc = self.procs.start("redis", redis_cmd(self.redis_port, rdir), self.loadgen_cpu)
            wait_ready(lambda: redis_ping(self.redis_port), self.redis_proc, "redis-server")
            log(f"redis-server on 127.0.0.1:{self.redis_port}")

        bff_wanted = [t for t in BFF_TARGETS if t in wanted]
        if bff_wanted:
            # The dev OpenID Provider, an external service like Redis: on the load generator's
            # core, idle during the load (no refresh happens within BFF_ACCESS_TTL).
            idp_port = ports[5 + 2 * len(MESHGATE_TARGETS)]
            self.bff = new_bff_settings(f"http://127.0.0.1:{idp_port}")
            idir = self.tmp / "identity"
            idir.mkdir()
            clients = idir / "clients.yaml"
            clients.write_text(bff_clients_yaml(self.bff.client_secret,
                                                [ports[5 + 2 * MESHGATE_TARGETS.index(t)] for t in bff_wanted]))
            self.idp_proc = self.procs.start(
                "identity", identity_cmd(RELEASE / "identity", idp_port, idir / "data", clients), self.loadgen_cpu)
            wait_ready(lambda: http_get(idp_port, "/healthz")[0] == 200, self.idp_proc, "identity", 60.0)
            log(f"dev OpenID Provider (identity) at {self.bff.issuer}, access tokens valid {BFF_ACCESS_TTL}")

        if "nginx" in wanted:
            conf = self.tmp / "nginx.conf"
            conf.write_text(proxy_nginx_conf(self.tmp, ports[1], self.backend_port, self.nofile))
            p = self.procs.start(
                "nginx", ["nginx", "-e", str(self.tmp / "nginx.error.log"), "-p", str(self.tmp), "-c", str(conf)],
                self.proxy_cpu,
            )
            self._add(Target("nginx", ports[1], p))
        if "haproxy" in wanted:
            conf = self.tmp / "haproxy.cfg"
            conf.write_text(haproxy_conf(ports[2], self.backend_port, self.args.idle_connections))
            p = self.procs.start("haproxy", ["haproxy", "-db", "-f", str(conf)], self.proxy_cpu)
            self._add(Target("haproxy", ports[2], p))
        if "bare-pingora" in wanted:
            p = self.procs.start(
                "bare-pingora",
                [str(RELEASE / "bare-pingora"), f"127.0.0.1:{ports[3]}", f"127.0.0.1:{self.backend_port}"],
                self.proxy_cpu,
            )
            self._add(Target("bare-pingora", ports[3], p))
        for i, name in enumerate(MESHGATE_TARGETS):
            if name not in wanted:
                continue
            port, admin = ports[5 + 2 * i], ports[6 + 2 * i]
            conf = self.tmp / f"{name}.yaml"
            conf.write_text(meshgate_target_conf(name, port, admin, self.backend_port, self.issuer, self.redis_port,
                                                 self.bff))
            check = subprocess.run(
                [str(RELEASE / "meshgate"), "validate", str(conf)], capture_output=True, text=True
            )
            if check.returncode != 0:
                raise RuntimeError(f"generated {conf.name} does not validate:\n{check.stdout}{check.stderr}")
            # The access log (one JSON line per request on stdout) is formatted and written
            # as in production, into /dev/null so the disk is not part of the measurement.
            p = self.procs.start(
                name, [str(RELEASE / "meshgate"), "run", "-c", str(conf)], self.proxy_cpu, stdout_devnull=True
            )
            wait_ready(lambda a=admin: http_get(a, "/readyz")[0] == 200, p, f"{name} /readyz")
            headers = {"Authorization": f"Bearer {self.token}"} if name in BEARER_TARGETS else {}
            if name in BFF_TARGETS:
                # One browser login per target; every load-generator request then carries
                # that session's cookie and the CSRF header.
                cookie = bff_login(port, *BFF_USER)
                self.bff_cookies[name] = cookie
                headers = bff_headers(cookie)
                log(f"{name}: {BFF_USER[0]} logged in through /auth/login, the provider's form and "
                    f"/auth/callback; session {cookie.partition('.')[0]}")
            self._add(Target(name, port, p, admin, headers))
        self.targets = {n: self.targets[n] for n in TARGET_ORDER if n in self.targets and n in wanted}

    def _add(self, t: Target) -> None:
        assert t.proc is not None
        self._ready(t, t.proc)
        self.targets[t.name] = t

    def _ready(self, t: Target, proc: subprocess.Popen) -> None:
        path, size = BODIES["tiny"]

        def ok() -> bool:
            # A jwt route answers 401 until its provider's keys are loaded: wait for them.
            status, _, body = http_get(t.port, path, headers=t.headers)
            return status == 200 and len(body) == size

        wait_ready(ok, proc, t.name)

    def metrics(self, t: Target) -> str:
        if t.admin is None:
            return ""
        status, _, body = http_get(t.admin, "/metrics", timeout=5.0)
        if status != 200:
            raise RuntimeError(f"{t.name} admin /metrics: status {status}")
        return body.decode(errors="replace")

    def policy_counters(self, t: Target) -> dict:
        """The rate-limit and jwt counters of a meshgate target, from its admin /metrics."""
        text = self.metrics(t)
        keys = {
            "rl_allowed": ("meshgate_rate_limit_decisions_total", '{result="allowed"}'),
            "rl_denied": ("meshgate_rate_limit_decisions_total", '{result="denied"}'),
            "rl_redis": ("meshgate_rate_limit_global_decisions_total", '{by="redis"}'),
            "rl_fallback": ("meshgate_rate_limit_global_decisions_total", '{by="fallback"}'),
            "rl_redis_timeouts": ("meshgate_rate_limit_redis_failures_total", '{kind="timeout"}'),
            "rl_redis_errors": ("meshgate_rate_limit_redis_failures_total", '{kind="error"}'),
            "jwt_accepted": ("meshgate_jwt_accepted_total", f'{{provider="{JWT_PROVIDER}"}}'),
        }
        out = {k: prom_value(text, n, lab) for k, (n, lab) in keys.items()}
        if t.name in BFF_TARGETS:
            out.update(
                # Every outcome (ok, shared, invalid_grant, rejected, unavailable): any
                # refresh means the run measured more than the session lookup.
                bff_refreshes=prom_sum(text, "meshgate_bff_refreshes_total"),
                bff_sessions_created=prom_sum(text, "meshgate_bff_sessions_created_total"),
                bff_sessions_ended=prom_sum(text, "meshgate_bff_sessions_ended_total"),
                bff_sessions_active=prom_value(text, "meshgate_bff_sessions_active"),
                status_401=prom_sum(text, "meshgate_requests_total", lambda l: l.get("status") == "401"),
                # Status 0: the client closed the connection before the answer (wrk and oha
                # stop with requests in flight); not an answer, counted apart.
                status_not_200=prom_sum(text, "meshgate_requests_total",
                                        lambda l: l.get("status") not in ("200", "0")),
                aborted=prom_sum(text, "meshgate_requests_total", lambda l: l.get("status") == "0"),
                requests=prom_sum(text, "meshgate_requests_total"),
            )
        return out

    # -- checks ------------------------------------------------------------------------

    def verify(self) -> dict[str, list[str]]:
        """Each target returns the right bodies, and every meshgate filter really ran: the
        headers filter edited both ways, jwt routes refuse a missing or forged token and
        forward the verified subject, rate-limited routes add `RateLimit-*` headers, and the
        global limit was decided by Redis. Any failure stops the run."""
        notes: dict[str, list[str]] = {}
        for t in self.targets.values():
            seen = []
            filters = MESHGATE_FILTERS.get(t.name, [])
            names = chain_filter_names(filters)
            for body, (path, size) in BODIES.items():
                status, headers, got = http_get(t.port, path, headers=t.headers)
                if status != 200 or len(got) != size:
                    raise RuntimeError(f"{t.name} {path}: status {status}, {len(got)} bytes (want 200, {size})")
                seen.append(f"{body}: 200, {size} B")
                if "headers" in names and (headers.get("x-seen-env") != "bench" or "server" in headers):
                    raise RuntimeError(f"{t.name} did not apply its headers filter: {headers}")
                if "rate_limit" in names:
                    missing = [h for h in ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")
                               if h not in headers]
                    if missing:
                        raise RuntimeError(f"{t.name}: admitted response lacks {', '.join(missing)}: {headers}")
                if "jwt" in names and headers.get("x-seen-sub") != JWT_SUBJECT:
                    raise RuntimeError(f"{t.name}: backend did not see x-meshgate-sub: {JWT_SUBJECT} ({headers})")
            if "headers" in names:
                seen.append("backend saw x-env: bench; response has no server header")
            if "rate_limit" in names:
                seen.append("admitted responses carry ratelimit-limit/-remaining/-reset "
                            f"(limit {headers['ratelimit-limit']})")
            if "jwt" in names:
                path = BODIES["tiny"][0]
                status, _, _ = http_get(t.port, path)
                if status != 401:
                    raise RuntimeError(f"{t.name}: request without a token got {status}, want 401")
                assert self.token is not None
                forged = self.token[:-4] + ("AAAA" if not self.token.endswith("AAAA") else "BBBB")
                status, _, _ = http_get(t.port, path, headers={"Authorization": f"Bearer {forged}"})
                if status != 401:
                    raise RuntimeError(f"{t.name}: request with a forged signature got {status}, want 401")
                seen.append(f"no token: 401; forged signature: 401; RS256 token: 200, backend saw "
                            f"x-meshgate-sub: {JWT_SUBJECT}")
            if "bff" in names:
                seen += self.verify_bff(t)
            if "scope: global" in " ".join(filters):
                c = self.policy_counters(t)
                if not c["rl_redis"]:
                    raise RuntimeError(f"{t.name}: no rate-limit decision was made by Redis "
                                       f"(meshgate_rate_limit_global_decisions_total: {c})")
                seen.append(f"meshgate_rate_limit_global_decisions_total{{by=\"redis\"}} = {c['rl_redis']:.0f}, "
                            f"fallback = {c['rl_fallback'] or 0:.0f}")
            if t.name == "meshgate-chain":
                seen.append("cluster: " + "; ".join(CHAIN_CLUSTER))
            notes[t.name] = seen
        return notes

    def verify_bff(self, t: Target) -> list[str]:
        """A bff route refuses a request without the cookie, without `X-CSRF: 1` or with a
        wrong secret (401 each), sends the backend the session's access token (a JWT from the
        provider for alice, audience shop-api) and not the session cookie, and keeps the
        session in the configured store."""
        assert self.bff is not None
        cookie = self.bff_cookies[t.name]
        path = BODIES["tiny"][0]
        refused = {
            "no cookie": {BFF_CSRF_HEADER: "1"},
            f"no {BFF_CSRF_HEADER}": {"Cookie": f"{BFF_COOKIE}={cookie}"},
            "right id, wrong secret": bff_headers(wrong_secret_cookie(cookie)),
        }
        for what, headers in refused.items():
            status, _, _ = http_get(t.port, path, headers=headers)
            if status != 401:
                raise RuntimeError(f"{t.name}: request with {what} got {status}, want 401")
        status, _, body = http_get(t.port, SEEN_AUTH_PATH, headers=t.headers)
        seen_headers = parse_seen_headers(body)
        auth = seen_headers.get("authorization", "")
        if status != 200 or not auth.startswith("Bearer "):
            raise RuntimeError(f"{t.name}: backend did not get a bearer token ({status}, {seen_headers})")
        claims = jwt_payload(auth[len("Bearer "):])
        aud = claims.get("aud")
        if claims.get("iss") != self.bff.issuer or BFF_AUDIENCE not in (aud if isinstance(aud, list) else [aud]) \
                or claims.get("sub") != BFF_USER[0]:
            raise RuntimeError(f"{t.name}: upstream bearer is not alice's access token for {BFF_AUDIENCE}: "
                               f"iss {claims.get('iss')}, aud {aud}, sub {claims.get('sub')}")
        if BFF_COOKIE in seen_headers.get("cookie", ""):
            raise RuntimeError(f"{t.name}: the session cookie reached the backend")
        lifetime = claims.get("exp", 0) - claims.get("iat", 0)
        notes = [f"no cookie, no {BFF_CSRF_HEADER}, wrong secret: 401 each; backend got `Authorization: Bearer` "
                 f"with alice's access token (iss {claims['iss']}, aud {BFF_AUDIENCE}, lifetime {lifetime} s) and "
                 "no session cookie"]
        c = self.policy_counters(t)
        if c["bff_sessions_created"] != 1:
            raise RuntimeError(f"{t.name}: meshgate_bff_sessions_created_total is {c['bff_sessions_created']}, want 1")
        store = BFF_SESSION_STORES[t.name]
        in_redis = redis_integer(self.redis_port, "EXISTS", bff_redis_key(cookie)) if self.redis_port else 0
        if store == "redis" and in_redis != 1:
            raise RuntimeError(f"{t.name}: no session record {bff_redis_key(cookie)} in Redis")
        if store == "memory" and (in_redis or not c["bff_sessions_active"]):
            raise RuntimeError(f"{t.name}: session not in the memory store (meshgate_bff_sessions_active "
                               f"{c['bff_sessions_active']}, in Redis: {in_redis})")
        notes.append("session record in Redis (mg:s:{s:<id>})" if store == "redis" else
                     f"session in the memory store (meshgate_bff_sessions_active = {c['bff_sessions_active']:.0f})")
        return notes

    # -- measurements ------------------------------------------------------------------

    def place_backend(self, target: str) -> None:
        """`direct` gets the proxy's core for the backend; proxied runs share LOADGEN_CPU."""
        if self.pinned and self.backend_proc:
            pin_tree(self.backend_proc.pid, PROXY_CPU if target == "direct" else LOADGEN_CPU)

    def _measured(self, t: Target, run: Callable[[], dict]) -> dict:
        """Runs one measurement on a quiet machine and records where the CPU time went.

        The machine may be shared (other builds and tests): before each run the driver waits
        for the cores to be quiet, then attributes CPU time during the run to the proxy, the
        backend, the load generator and everything else ("other"). A run with more than
        `--max-other-cpu` of foreign load is repeated (up to `--retries` times) and the
        least disturbed attempt is kept; the report shows the other-load figure per run.
        """
        hz = os.sysconf("SC_CLK_TCK")
        best: dict | None = None
        for attempt in range(1 + self.args.retries):
            # Past the run's waiting budget a busy machine is measured as it is (and flagged).
            spare = max(0.0, self.args.wait_budget - self.waited_total)
            if attempt > 0 and spare <= 0:
                break
            t_wait = time.monotonic()
            waited = wait_quiet(self.args.max_other_cpu, min(self.args.quiet_timeout, spare))
            self.waited_total += time.monotonic() - t_wait
            self.place_backend(t.name)
            pid = self.pid_of(t)
            backend = self.backend_proc.pid if self.backend_proc and self.backend_proc.pid != pid else None
            proxy0, backend0 = tree_ticks(pid), tree_ticks(backend) if backend else 0
            redis = self.redis_proc.pid if self.redis_proc else None
            redis0 = tree_ticks(redis) if redis else 0
            busy0 = system_busy_ticks()
            ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.monotonic()
            row = run()
            elapsed = time.monotonic() - t0
            # The load generator's CPU time: reaped children's usage grows by exactly this run.
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            gen_s = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
            proxy_s = (tree_ticks(pid) - proxy0) / hz
            backend_s = (tree_ticks(backend) - backend0) / hz if backend else 0.0
            # Redis (for global rate limits) is part of the benchmark, not foreign load.
            redis_s = (tree_ticks(redis) - redis0) / hz if redis else 0.0
            busy_s = (system_busy_ticks() - busy0) / hz
            other_s = max(0.0, busy_s - proxy_s - backend_s - redis_s - gen_s)
            row.update(
                proxy_cpu_s=proxy_s,
                proxy_cpu_pct=100.0 * proxy_s / elapsed,
                backend_cpu_pct=100.0 * (backend_s + redis_s) / elapsed,
                redis_cpu_s=redis_s,
                loadgen_cpu_pct=100.0 * gen_s / elapsed,
                other_cpu_pct=100.0 * other_s / elapsed,
                quiet_wait_s=round(waited, 1),
                attempt=attempt + 1,
            )
            if best is None or row["other_cpu_pct"] < best["other_cpu_pct"]:
                best = row
            if row["other_cpu_pct"] <= self.args.max_other_cpu:
                break
            self.waited_total += elapsed  # a repeated run also spends the budget
            log(f"  {t.name}: {row['other_cpu_pct']:.0f}% of a core was other load during the run; "
                f"attempt {attempt + 1}/{1 + self.args.retries}")
        assert best is not None
        return best

    def wrk(self, t: Target, body: str, seconds: float) -> dict:
        cmd = taskset(self.loadgen_cpu) + [
            "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--timeout", "5s", *t.header_args(), t.url(body)
        ]

        def run() -> dict:
            out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT).stdout
            return parse_wrk(out.decode(errors="replace")).to_json()

        row = self._measured(t, run)
        row["proxy_cpu_us_per_req"] = 1e6 * row["proxy_cpu_s"] / row["requests"] if row["requests"] else 0.0
        row["redis_cpu_us_per_req"] = 1e6 * row["redis_cpu_s"] / row["requests"] if row["requests"] else 0.0
        return row

    def oha(self, t: Target, rate: float, seconds: float) -> dict:
        cmd = taskset(self.loadgen_cpu) + [
            self.args.oha, "--no-tui", "--output-format", "json", "-c", str(CONNECTIONS),
            "-z", f"{seconds:g}s", "-q", f"{rate:.0f}", "--latency-correction", *t.header_args(), t.url("tiny"),
        ]

        def run() -> dict:
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            return parse_oha(out, rate).to_json()

        return self._measured(t, run)

    def serial(self, t: Target, requests: int) -> dict:
        """One connection, one request at a time (closed loop): the unloaded round trip."""
        cmd = taskset(self.loadgen_cpu) + [
            self.args.oha, "--no-tui", "--output-format", "json", "-c", "1", "-n", str(requests),
            *t.header_args(), t.url("tiny"),
        ]

        def run() -> dict:
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            row = parse_oha(out, 0.0).to_json()
            row["requests"] = requests
            return row

        return self._measured(t, run)

    async def _idle(self, port: int, path: str, count: int, measure: Callable[[], dict],
                    headers: dict[str, str] | None = None) -> dict:
        req = request_head(path, headers, close=False)
        sem = asyncio.Semaphore(200)

        async def one():
            async with sem:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 15)
                w.write(req)
                await w.drain()
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 15)
                m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                await asyncio.wait_for(r.readexactly(int(m.group(1)) if m else 0), 15)
                return w

        results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
        writers = [w for w in results if isinstance(w, asyncio.StreamWriter)]
        failures = [repr(e) for e in results if not isinstance(e, asyncio.StreamWriter)]
        await asyncio.sleep(1.0)  # let the proxy settle into its idle state
        first = measure()
        measured = await settle_rss(measure, first, asyncio.sleep)
        measured.update(rss_1s_kib=first["rss_kib"])
        still_open = sum(1 for w in writers if not w.is_closing())
        for w in writers:
            w.close()
        await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
        measured.update(opened=len(writers), still_open=still_open, failures=len(failures),
                        first_failure=failures[0] if failures else None)
        return measured

    def idle_rss(self, t: Target, count: int) -> dict:
        """RSS of `t` with `count` idle connections, once settled (see `settle_rss`) and 1 s after
        the last answer, and its increase over the RSS before they were opened."""
        pid = self.pid_of(t)
        before = tree_kib(pid, "VmRSS")

        def measure() -> dict:
            return {"rss_kib": tree_kib(pid, "VmRSS")}

        res = asyncio.run(self._idle(t.port, BODIES["tiny"][0], count, measure, t.headers))
        res["rss_before_kib"] = before
        res["delta_kib"] = res["rss_kib"] - before
        res["delta_1s_kib"] = res["rss_1s_kib"] - before
        time.sleep(1.0)  # closed connections drain before the next target
        return res


SETTLE_KIB = 256
SETTLE_MAX_S = 10


async def settle_rss(measure: Callable[[], dict], first: dict,
                     sleep: Callable[[float], Awaitable[None]]) -> dict:
    """Samples `measure()` once a second after `first` until two samples in a row are within
    SETTLE_KIB of each other, for at most SETTLE_MAX_S samples; the last sample, with
    `settle_s`, the seconds waited after `first`. An allocator may return memory freed by
    ended connection tasks a while later; nginx's RSS does not move."""
    prev = first
    for waited in range(1, SETTLE_MAX_S + 1):
        await sleep(1.0)
        cur = measure()
        if abs(cur["rss_kib"] - prev["rss_kib"]) <= SETTLE_KIB:
            return {**cur, "settle_s": waited}
        prev = cur
    return {**prev, "settle_s": SETTLE_MAX_S}


# ---------------------------------------------------------------------------- machine

def run_text(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (p.stdout + p.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"


def machine_info(oha: str | None) -> dict:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = parse_status_kib(Path("/proc/meminfo").read_text(), "MemTotal")
    lock = (ROOT / "Cargo.lock").read_text() if (ROOT / "Cargo.lock").exists() else ""
    m = re.search(r'name = "pingora-core"\nversion = "([^"]+)"', lock)
    git = run_text(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = run_text(["git", "-C", str(ROOT), "status", "--porcelain"])
    return {
        "hostname": socket.gethostname(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "nginx": run_text(["nginx", "-v"]).replace("nginx version: ", ""),
        "haproxy": run_text(["haproxy", "-v"]).splitlines()[0],
        "wrk": run_text(["wrk", "-v"]).splitlines()[0],
        "oha": run_text([oha, "--version"]) if oha else "not installed",
        "rustc": run_text(["rustc", "--version"]),
        "pingora": m.group(1) if m else "unknown",
        "meshgate_commit": git + (" (with uncommitted changes)" if dirty and dirty != "unavailable" else ""),
        "python": platform.python_version(),
    }


def _os_name() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return platform.system()
    m = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', text, re.M)
    return m.group(1) if m else platform.system()


# ---------------------------------------------------------------------------- summary

def summarize(raw: dict) -> dict:
    """Medians per target, ratios, and the issue-7 targets, from the raw runs."""
    out: dict = {"targets": {}}
    for name, t in raw["targets"].items():
        s: dict = {}
        for body in BODIES:
            runs = t["throughput"].get(body, [])
            if runs:
                rps = [r["rps"] for r in runs]
                s[f"{body}_rps"] = median(rps)
                s[f"{body}_rps_min"] = min(rps)
                s[f"{body}_rps_max"] = max(rps)
                s[f"{body}_cpu_us_per_req"] = median([r["proxy_cpu_us_per_req"] for r in runs])
                s[f"{body}_cpu_pct"] = median([r["proxy_cpu_pct"] for r in runs])
                s[f"{body}_errors"] = sum(r["socket_errors"] + r["non_2xx"] for r in runs)
        for key, prefix in (("latency", ""), ("shared_latency", "shared_")):
            lat = t.get(key, [])
            if lat:
                for k in ("p50", "p99", "p999", "achieved_rps"):
                    s[prefix + k] = median([r[k] for r in lat])
                s[f"{prefix}latency_errors"] = sum(r["errors"] for r in lat)
        serial = t.get("serial", [])
        if serial:
            s["serial_p50_us"] = median([r["p50"] * 1000.0 for r in serial])
            s["serial_p99_us"] = median([r["p99"] * 1000.0 for r in serial])
        runs = t["throughput"].get("tiny", [])
        if runs and any(r.get("redis_cpu_s") for r in runs):
            s["tiny_redis_cpu_us_per_req"] = median([r.get("redis_cpu_us_per_req", 0.0) for r in runs])
        if t.get("policy"):
            s["policy"] = t["policy"]
        if t.get("invalid"):
            s["invalid"] = t["invalid"]
        s.update({f"mem_{k}": v for k, v in t.get("memory", {}).items() if not isinstance(v, (dict, type(None)))})
        out["targets"][name] = s

    T = out["targets"]

    def ratio(a: str, b: str, key: str) -> float | None:
        if a in T and b in T and T[a].get(key) and T[b].get(key):
            return T[a][key] / T[b][key]
        return None

    ratios = {}
    for body in BODIES:
        key = f"{body}_rps"
        for name in T:
            r = ratio(name, "nginx", key)
            if r is not None:
                ratios[f"{name}/nginx {body}"] = r
        for a, b in (("meshgate-plain", "bare-pingora"), ("meshgate-plain", "haproxy"),
                     ("meshgate-chain", "meshgate-plain"), ("meshgate-jwt", "meshgate-plain"),
                     ("meshgate-plain-bearer", "meshgate-plain"), ("meshgate-chain", "meshgate-plain-bearer"),
                     ("meshgate-jwt", "meshgate-plain-bearer"),
                     ("meshgate-ratelimit-local", "meshgate-plain"), ("meshgate-ratelimit-global", "meshgate-plain"),
                     ("meshgate-ratelimit-global", "meshgate-ratelimit-local"),
                     ("meshgate-bff-memory", "meshgate-plain"), ("meshgate-bff-redis", "meshgate-plain"),
                     ("meshgate-bff-redis", "meshgate-bff-memory"), ("meshgate-bff-memory", "meshgate-jwt"),
                     ("bare-pingora", "nginx")):
            r = ratio(a, b, key)
            if r is not None:
                ratios[f"{a}/{b} {body}"] = r
    out["ratios"] = ratios

    goals = []

    def goal(text: str, value: float | None, ok: Callable[[float], bool], fmt: str) -> None:
        if value is None:
            goals.append({"goal": text, "value": "not measured", "met": None})
        else:
            goals.append({"goal": text, "value": fmt.format(value), "met": bool(ok(value))})

    for body in BODIES:
        goal(f"meshgate plain ≥ 0.95× bare Pingora ({body})", ratios.get(f"meshgate-plain/bare-pingora {body}"),
             lambda v: v >= 0.95, "{:.2f}×")
        goal(f"meshgate plain ≥ 1.0× nginx ({body})", ratios.get(f"meshgate-plain/nginx {body}"),
             lambda v: v >= 1.0, "{:.2f}×")
        goal(f"chain ≥ 0.85× plain ({body})", ratios.get(f"meshgate-chain/meshgate-plain {body}"),
             lambda v: v >= 0.85, "{:.2f}×")
        goal(f"local rate limit ≥ 0.97× plain ({body})", ratios.get(f"meshgate-ratelimit-local/meshgate-plain {body}"),
             lambda v: v >= 0.97, "{:.2f}×")
        goal(f"jwt ≥ 0.9× plain ({body})", ratios.get(f"meshgate-jwt/meshgate-plain {body}"),
             lambda v: v >= 0.9, "{:.2f}×")
        # The same goals against the plain route sent the same requests (token included):
        # the filters' own cost, without that of a ~0.8 KB bigger request.
        goal(f"chain ≥ 0.85× plain, both sent the token ({body})",
             ratios.get(f"meshgate-chain/meshgate-plain-bearer {body}"), lambda v: v >= 0.85, "{:.2f}×")
        goal(f"jwt ≥ 0.9× plain, both sent the token ({body})",
             ratios.get(f"meshgate-jwt/meshgate-plain-bearer {body}"), lambda v: v >= 0.9, "{:.2f}×")
    for body in BODIES:
        for name, store in BFF_SESSION_STORES.items():
            text = f"BFF route ≥ 0.7× plain ({store} sessions, {body})"
            if T.get(name, {}).get("invalid"):
                goals.append({"goal": text, "value": f"INVALID: {T[name]['invalid']}", "met": False})
            else:
                goal(text, ratios.get(f"{name}/meshgate-plain {body}"), lambda v: v >= 0.7, "{:.2f}×")
    out["bff"] = b = bff_cost(T, ratios)
    if b:
        goals.append({"goal": "BFF vs plain", "value": b["text"], "met": None})
    out["global_rate_limit"] = g = global_rate_limit_cost(T, ratios)
    if g:
        goals.append({"goal": "global rate limit adds one Redis round trip and nothing else", "value": g["text"],
                      "met": None})
    for name in ("meshgate-plain", "meshgate-chain"):
        for key, where in (("p99", ""), ("shared_p99", " at the shared rate (a rate every target carries)")):
            if name in T and "nginx" in T and key in T[name] and key in T["nginx"]:
                goal(f"{name} p99 ≤ nginx p99 + 0.5 ms{where}", T[name][key] - T["nginx"][key],
                     lambda v: v <= 0.5, "{:+.3f} ms vs nginx")
        if name in T and "nginx" in T and T[name].get("mem_idle_delta_kib") is not None \
                and T["nginx"].get("mem_idle_delta_kib") is not None:
            goal(f"{name} idle-connection memory ≤ nginx's",
                 T[name]["mem_idle_delta_kib"] / max(1, T["nginx"]["mem_idle_delta_kib"]),
                 lambda v: v <= 1.0, "{:.2f}× nginx's")
    out["goals"] = goals
    return out


def shared_latency_rate(data: dict) -> float:
    """Half the slowest target's median tiny-body max: an open-loop rate every target carries,
    so its percentiles there are each proxy's own tail rather than queueing behind overload.
    0.0 when no target has tiny-body throughput runs."""
    maxima = [median([r["rps"] for r in t["throughput"]["tiny"]])
              for t in data.values() if t["throughput"].get("tiny")]
    return 0.5 * min(maxima) if maxima else 0.0


def global_rate_limit_cost(T: dict, ratios: dict) -> dict | None:
    """What `scope: global` costs over the same local limit: the throughput ratios, the
    extra proxy CPU per request, the extra unloaded round trip (1 connection, p50), Redis's
    own CPU per request, and how many decisions Redis made (versus the local fallback)."""
    glob, loc = T.get("meshgate-ratelimit-global"), T.get("meshgate-ratelimit-local")
    if not glob or not glob.get("tiny_rps"):
        return None
    out: dict = {}
    parts = []
    for key, label in (("meshgate-ratelimit-global/meshgate-plain tiny", "× plain"),
                       ("meshgate-ratelimit-global/meshgate-ratelimit-local tiny", "× local")):
        if key in ratios:
            out[key] = ratios[key]
            parts.append(f"{ratios[key]:.2f}{label}")
    if loc and glob.get("serial_p50_us") is not None and loc.get("serial_p50_us") is not None:
        out["added_round_trip_us"] = glob["serial_p50_us"] - loc["serial_p50_us"]
        parts.append(f"{out['added_round_trip_us']:+.0f} µs unloaded p50 vs local")
    if loc and glob.get("tiny_cpu_us_per_req") is not None and loc.get("tiny_cpu_us_per_req") is not None:
        out["added_proxy_cpu_us"] = glob["tiny_cpu_us_per_req"] - loc["tiny_cpu_us_per_req"]
        parts.append(f"{out['added_proxy_cpu_us']:+.1f} µs proxy CPU/req vs local")
    if glob.get("tiny_redis_cpu_us_per_req") is not None:
        out["redis_cpu_us"] = glob["tiny_redis_cpu_us_per_req"]
        parts.append(f"Redis {out['redis_cpu_us']:.1f} µs CPU/req")
    pol = glob.get("policy")
    if pol:
        total = (pol.get("rl_redis") or 0) + (pol.get("rl_fallback") or 0)
        out["redis_decision_share"] = (pol.get("rl_redis") or 0) / total if total else None
        if total:
            parts.append(f"{100 * out['redis_decision_share']:.1f}% of decisions by Redis")
    out["text"] = "; ".join(parts)
    return out


def bff_load_problem(after: dict, delta: dict) -> str | None:
    """Why a bff target's numbers do not measure the session lookup path, or None: an
    access-token refresh at any time (`after`: the counters after the load), or a request
    during the load (`delta`) answered other than 200 — a 401 (no session) or a 503 (store
    unavailable) is not the path being measured. Requests the load generator abandoned at
    the end of a run (status 0, no answer) are not counted in `status_not_200`."""
    problems = []
    if after.get("bff_refreshes"):
        problems.append(f"{after['bff_refreshes']:.0f} access-token refreshes (meshgate_bff_refreshes_total), want 0")
    if delta.get("status_401"):
        problems.append(f"{delta['status_401']:.0f} requests answered 401 during the load, want 0")
    other = (delta.get("status_not_200") or 0) - (delta.get("status_401") or 0)
    if other:
        problems.append(f"{other:.0f} other non-200 answers during the load")
    if not delta.get("requests"):
        problems.append("meshgate counted no request during the load")
    return "; ".join(problems) or None


def bff_cost(T: dict, ratios: dict) -> dict | None:
    """What the bff filter costs over the plain route, per session store: throughput ratios,
    extra proxy CPU per request and extra unloaded round trip (1 connection, p50); and what
    Redis sessions add over memory ones (round trip, Redis's CPU per request)."""
    plain = T.get("meshgate-plain") or {}
    out: dict = {}
    parts = []
    for name, store in BFF_SESSION_STORES.items():
        t = T.get(name)
        if not t or not t.get("tiny_rps"):
            continue
        bits = []
        for body, label in (("tiny", "tiny"), ("16k", "16 KiB")):
            key = f"{name}/meshgate-plain {body}"
            if key in ratios:
                out[key] = ratios[key]
                bits.append(f"{ratios[key]:.2f}× plain ({label})")
        if t.get("tiny_cpu_us_per_req") is not None and plain.get("tiny_cpu_us_per_req") is not None:
            out[f"{name} added_proxy_cpu_us"] = d = t["tiny_cpu_us_per_req"] - plain["tiny_cpu_us_per_req"]
            bits.append(f"{d:+.1f} µs proxy CPU/req")
        if t.get("serial_p50_us") is not None and plain.get("serial_p50_us") is not None:
            out[f"{name} added_round_trip_us"] = d = t["serial_p50_us"] - plain["serial_p50_us"]
            bits.append(f"{d:+.0f} µs unloaded p50")
        if t.get("invalid"):
            bits.append("INVALID")
        parts.append(f"{store} sessions: " + ", ".join(bits))
    mem, red = T.get("meshgate-bff-memory"), T.get("meshgate-bff-redis")
    if mem and red:
        bits = []
        if red.get("serial_p50_us") is not None and mem.get("serial_p50_us") is not None:
            out["redis_added_round_trip_us"] = d = red["serial_p50_us"] - mem["serial_p50_us"]
            bits.append(f"{d:+.0f} µs unloaded p50")
        if red.get("tiny_cpu_us_per_req") is not None and mem.get("tiny_cpu_us_per_req") is not None:
            out["redis_added_proxy_cpu_us"] = d = red["tiny_cpu_us_per_req"] - mem["tiny_cpu_us_per_req"]
            bits.append(f"{d:+.1f} µs proxy CPU/req")
        if red.get("tiny_redis_cpu_us_per_req") is not None:
            out["redis_cpu_us"] = red["tiny_redis_cpu_us_per_req"]
            bits.append(f"Redis {out['redis_cpu_us']:.1f} µs CPU/req")
        if bits:
            parts.append("Redis vs memory sessions: " + ", ".join(bits))
    if not parts:
        return None
    out["text"] = "; ".join(parts)
    return out


# ---------------------------------------------------------------------------- report

def fmt_rps(v: float | None) -> str:
    return "–" if v is None else f"{v / 1000:.1f}k"


def fmt_ratio(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def fmt_ms(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def fmt_mib(kib: float | None) -> str:
    return "–" if kib is None else f"{kib / 1024:.1f}"


def summary_table(raw: dict, summary: dict) -> str:
    T = summary["targets"]
    nginx = T.get("nginx", {})
    lines = [
        "| target | tiny rps | ×nginx | 16 KiB rps | ×nginx | proxy CPU µs/req (tiny) | 1-conn p50 µs "
        "| p50 ms | p99 ms | p99.9 ms | peak RSS MiB | RSS 10k idle MiB (Δ; Δ at 1 s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in T.items():
        def rel(body: str) -> str:
            if name == "nginx" or not nginx.get(f"{body}_rps") or not s.get(f"{body}_rps"):
                return "1.00×" if name == "nginx" else "–"
            return fmt_ratio(s[f"{body}_rps"] / nginx[f"{body}_rps"])

        idle = "–"
        if s.get("mem_idle_rss_kib") is not None:
            at_1s = s.get("mem_idle_delta_1s_kib")
            idle = (f"{fmt_mib(s['mem_idle_rss_kib'])} (+{fmt_mib(s.get('mem_idle_delta_kib'))}"
                    + ("" if at_1s is None else f"; +{fmt_mib(at_1s)} at 1 s") + ")")
        cpu = s.get("tiny_cpu_us_per_req")
        serial = s.get("serial_p50_us")
        label = f"{name} (**INVALID**)" if s.get("invalid") else name
        lines.append(
            f"| {label} | {fmt_rps(s.get('tiny_rps'))} | {rel('tiny')} | {fmt_rps(s.get('16k_rps'))} | {rel('16k')} "
            f"| {'–' if cpu is None else f'{cpu:.1f}'} | {'–' if serial is None else f'{serial:.0f}'} "
            f"| {fmt_ms(s.get('p50'))} | {fmt_ms(s.get('p99'))} "
            f"| {fmt_ms(s.get('p999'))} | {fmt_mib(s.get('mem_peak_kib'))} | {idle} |"
        )
    return "\n".join(lines)


def markdown(raw: dict, summary: dict, chart_name: str) -> str:
    m = raw["machine"]
    p = raw["parameters"]
    T = summary["targets"]
    out = [
        f"# meshgate benchmark — {raw['date']} — {raw['machine_label']}",
        "",
        f"Command: `{raw['command']}`" + ("  (quick mode: indicative only)" if p["quick"] else ""),
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    for k in ("cpu", "cores", "memory_gib", "kernel", "os", "nginx", "haproxy", "wrk", "oha", "rustc",
              "pingora", "meshgate_commit", "hostname"):
        out.append(f"| {k} | {m.get(k)} |")
    out += [
        "",
        "## Method",
        "",
        f"- Rounds: {p['rounds']}, alternating targets (A B C … A B C …); every number is the median of the rounds.",
        f"- Throughput: `wrk -t1 -c{CONNECTIONS} -d{p['duration']:g}s`, HTTP/1.1 keep-alive, "
        f"tiny body ({len(TINY_BODY)} B) and 16 KiB body.",
        f"- Latency: `oha -c{CONNECTIONS} -q {p.get('latency_rate', 0):.0f} --latency-correction -z {p['latency_duration']:g}s` "
        "(open loop at 50% of nginx's median tiny-body max, coordinated omission corrected), tiny body.",
        f"- Shared-rate latency: the same at `-q {p.get('shared_latency_rate', 0):.0f}`, 50% of the slowest "
        "target's median tiny-body max, which every target carries; where a target's max is below the first rate, "
        "its percentiles there are time spent queueing behind overload, and these are its own tail.",
        f"- Pinning: {p['pinning']}",
        "- Proxy CPU µs/req: CPU time of the proxy's processes (utime+stime) during the tiny-body throughput runs "
        "divided by the requests served; it does not depend on which core was the bottleneck.",
        f"- Memory: peak RSS = VmHWM summed over the proxy's processes after all load; idle = VmRSS with "
        f"{p['idle_connections']:,} idle keep-alive client connections that each completed one request, "
        "Δ = increase over the RSS just before they were opened, measured once RSS has settled: sampled each second "
        f"from 1 s after the last of them was answered until two samples in a row are within {SETTLE_KIB} KiB, "
        f"for at most {SETTLE_MAX_S} s; the Δ of the first sample, 1 s after, is given too. "
        "By then meshgate has demoted every one of them to its listener's lot (idle for 250 ms: a bare socket, "
        "no task; docs/architecture.md); bare Pingora keeps a task and buffers per connection.",
        f"- 1-conn p50: `oha -c1 -n {p.get('serial_requests', SERIAL_REQUESTS)}`, one request at a time on one "
        "keep-alive connection (closed loop, unloaded): the round trip through the proxy, in µs. The difference "
        "between two meshgate targets is what one filter adds to a request's path, e.g. the Redis round trip.",
        f"- Every meshgate target is its own process with one route; only the route's filters differ (and the chain's "
        f"cluster has a circuit breaker). Metrics are on and `runtime.access_log` is "
        f"`{'true' if raw.get('access_log', True) else 'false'}` for all of them: the JSON access log is formatted "
        "and written as in production, to /dev/null. nginx and HAProxy run without access logs.",
        "- Allocator: meshgate and bare-pingora are both built with mimalloc as the global allocator (the "
        "`meshgate` binary ships with it); the bare-pingora baseline otherwise keeps Pingora's defaults, including "
        "its 64 KiB per-connection read buffer, which meshgate turns off for its listeners (it parks idle "
        "keep-alive connections and reads each request's first bytes itself).",
        f"- meshgate-chain filters, in order: {', '.join(chain_filter_names(raw['chain_filters']))}; cluster: "
        f"{', '.join(chain_filter_names(raw.get('chain_cluster', [])) or ['no extra settings'])}.",
        "- jwt targets: an RSA-2048 key pair made with openssl at start; one RS256 token (iss, aud, sub, iat, exp; "
        "7 days) sent by every request as `Authorization: Bearer`; discovery and JWKS served as static files by the "
        "backend, which is the configured issuer. With one token, every request after the first takes meshgate's "
        "verified-token cache path (SHA-256 of the token and a lookup), not a signature verification.",
        "- Rate limits: `key: ip`, `rate: 1000000/s`, `burst: 1000000`, so every request is counted and none is "
        "denied; `scope: global` counts in a redis-server the driver starts on loopback (on the load generator's "
        "core), one round trip per request, default `timeout: 20ms` and `on_error: allow`.",
        "- bff targets: the dev OpenID Provider (`backends/identity`, release build) runs on the load generator's "
        f"core with access tokens valid {raw.get('bff_access_token_ttl', BFF_ACCESS_TTL)} (with `refresh_before: 60s`, "
        "no refresh during the run; the driver checks `meshgate_bff_refreshes_total` stays 0 and no request is "
        "answered 401 or anything but 200, else the target is marked INVALID). Before measuring, the driver logs "
        "alice in once per target through `/auth/login`, the provider's form and `/auth/callback`; wrk, oha and "
        f"the idle client send that `{BFF_COOKIE}` session cookie and `{BFF_CSRF_HEADER}: 1`. Every request opens "
        "the session: a store lookup (memory, or one Redis GET), HKDF-SHA256 key derivation, AES-256-GCM open and "
        "a JSON parse of the record, then `Authorization: Bearer <access token>` upstream.",
        "",
        "Route filters per meshgate target:",
        "",
        *[f"- {n}: " + ("; ".join(f"`{f}`" for f in fl) if fl else "none")
          + (f" (`stores.sessions: {{ backend: {raw['bff_session_stores'][n]} }}`)"
             if n in raw.get("bff_session_stores", {}) else "")
          for n, fl in raw.get("meshgate_filters", {}).items()],
        "",
        "## Results",
        "",
        summary_table(raw, summary),
        "",
        f"![throughput and latency]({chart_name})",
        "",
        "## Ratios",
        "",
        "| ratio | value |",
        "|---|---:|",
    ]
    for k, v in summary["ratios"].items():
        out.append(f"| {k} | {v:.3f} |")
    g = summary.get("global_rate_limit")
    if g:
        out += ["", "## Global rate limit: the Redis round trip", "",
                "meshgate-ratelimit-global against meshgate-ratelimit-local (same limit, `scope: global`): "
                + g["text"] + ".", ""]
        pol = T.get("meshgate-ratelimit-global", {}).get("policy") or {}
        if pol:
            out.append(f"Decisions during the load: {pol.get('rl_redis', 0):.0f} by Redis, "
                       f"{pol.get('rl_fallback', 0):.0f} by the local fallback, "
                       f"{pol.get('rl_redis_timeouts', 0):.0f} Redis timeouts, {pol.get('rl_denied', 0):.0f} denied.")
    b = summary.get("bff")
    if b:
        out += ["", "## BFF: session cookie → bearer", "",
                "meshgate-bff-memory and meshgate-bff-redis against meshgate-plain (same route and backend, plus the "
                "`bff` filter): " + b["text"] + ".", ""]
        for name in BFF_SESSION_STORES:
            pol = T.get(name, {}).get("policy") or {}
            if pol:
                out.append(f"- {name}: {pol.get('requests', 0):.0f} requests during the load, "
                           f"{pol.get('status_401', 0):.0f} answered 401, {pol.get('status_not_200', 0):.0f} not 200 "
                           f"({pol.get('aborted', 0):.0f} abandoned by the load generator at the end of a run, no "
                           f"answer); {pol.get('bff_refreshes_total', 0):.0f} access-token refreshes in all."
                           + (f" **INVALID**: {T[name]['invalid']}" if T[name].get("invalid") else ""))
    if any("shared_p99" in s for s in T.values()):
        out += ["", f"## Latency at a rate every target carries ({p.get('shared_latency_rate', 0):.0f} rps)", "",
                "Open loop, coordinated omission corrected, tiny body; medians of the rounds.", "",
                "| target | p50 ms | p99 ms | p99.9 ms | p99 − nginx's p99 ms | achieved rps |",
                "|---|---:|---:|---:|---:|---:|"]
        base = T.get("nginx", {}).get("shared_p99")
        for name, s in T.items():
            if "shared_p99" in s:
                diff = f"{s['shared_p99'] - base:+.3f}" if base is not None else "—"
                out.append(f"| {name} | {s['shared_p50']:.3f} | {s['shared_p99']:.3f} | {s['shared_p999']:.3f} | "
                           f"{diff} | {s['shared_achieved_rps']:.0f} |")
    out += ["", "## Targets (issues 7, 4, 5 and Benchmarks)", "", "| goal | measured | met |", "|---|---|---|"]
    for g in summary["goals"]:
        met = "n/a" if g["met"] is None else ("yes" if g["met"] else "**no**")
        out.append(f"| {g['goal']} | {g['value']} | {met} |")
    out += [
        "",
        "## Every round",
        "",
        "Proxy CPU % is the proxy's share of its core (100 = the proxy was the bottleneck); "
        "load-gen core % is wrk plus the backend (and redis-server), which share the other core (near 100 = the "
        "load-generator core, not the proxy, limited the run); other load % is CPU time used by "
        "processes outside the benchmark during the runs (the machine may be shared), worst round.",
        "",
        "| target | body | requests/s per round | proxy CPU % | load-gen core % | other load % | errors |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for name, t in raw["targets"].items():
        for body, runs in t["throughput"].items():
            rounds = ", ".join(f"{r['rps']:.0f}" for r in runs)
            cpu = median([r["proxy_cpu_pct"] for r in runs])
            gen = median([r["loadgen_cpu_pct"] + r["backend_cpu_pct"] for r in runs])
            other = max(r["other_cpu_pct"] for r in runs)
            errs = sum(r["socket_errors"] + r["non_2xx"] for r in runs)
            out.append(f"| {name} | {body} | {rounds} | {cpu:.0f} | {gen:.0f} | {other:.0f} | {errs} |")
    if any(t.get("latency") for t in raw["targets"].values()):
        out += ["", "| target | p99 ms per round | achieved rps | other load % | errors |", "|---|---|---|---:|---:|"]
        for name, t in raw["targets"].items():
            lat = t.get("latency", [])
            if lat:
                p99s = ", ".join(f"{r['p99']:.3f}" for r in lat)
                achieved = ", ".join(f"{r['achieved_rps']:.0f}" for r in lat)
                other = max(r["other_cpu_pct"] for r in lat)
                out.append(f"| {name} | {p99s} | {achieved} | {other:.0f} | {sum(r['errors'] for r in lat)} |")
    out += ["", "## Checks before measuring", ""]
    for name, notes in raw.get("checks", {}).items():
        out.append(f"- {name}: {'; '.join(notes)}")
    idle_notes = [
        f"- {name}: {t['memory'].get('opened', 0):,} opened, {t['memory'].get('still_open', 0):,} still open when measured"
        + (f", {t['memory']['failures']} failed ({t['memory']['first_failure']})" if t['memory'].get('failures') else "")
        for name, t in raw["targets"].items() if t.get("memory", {}).get("opened") is not None
    ]
    if idle_notes:
        out += ["", "Idle connections:", "", *idle_notes]
    if raw.get("notes"):
        out += ["", "## Notes", "", *[f"- {n}" for n in raw["notes"]]]
    return "\n".join(out) + "\n"


def svg_chart(summary: dict) -> str:
    """Two panels without dependencies: throughput relative to nginx, and latency percentiles."""
    T = summary["targets"]
    names = list(T)
    nginx = T.get("nginx", {})
    width, panel_h, top = 960, 300, 40
    colors = {"tiny": "#4e79a7", "16k": "#f28e2b", "p50": "#59a14f", "p99": "#e15759", "p999": "#b07aa1"}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{2 * panel_h + 2 * top + 75}" '
        'font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
    ]

    def panel(y0: int, title: str, series: list[str], value: Callable[[str, str], float | None],
              unit: str, ref: float | None) -> None:
        left, plot_w, plot_h = 70, width - 90, panel_h - 70
        vals = [value(n, s) for n in names for s in series]
        vmax = max([v for v in vals if v is not None] + [ref or 0, 1e-9]) * 1.15
        parts.append(f'<text x="{left}" y="{y0 + 16}" font-size="15" font-weight="bold">{title}</text>')
        base = y0 + 30 + plot_h
        parts.append(f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" stroke="#333"/>')
        for i in range(5):
            v = vmax * i / 4
            y = base - plot_h * i / 4
            parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
            parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.2f}</text>')
        parts.append(f'<text x="16" y="{y0 + 30 + plot_h / 2:.0f}" transform="rotate(-90 16 '
                     f'{y0 + 30 + plot_h / 2:.0f})" text-anchor="middle">{unit}</text>')
        if ref is not None:
            y = base - plot_h * ref / vmax
            parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
                         'stroke="#333" stroke-dasharray="4 3"/>')
        group_w = plot_w / max(1, len(names))
        bar_w = group_w * 0.8 / len(series)
        for gi, n in enumerate(names):
            gx = left + gi * group_w + group_w * 0.1
            for si, s in enumerate(series):
                v = value(n, s)
                if v is None:
                    continue
                h = plot_h * v / vmax
                x = gx + si * bar_w
                parts.append(f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" '
                             f'fill="{colors[s]}"/>')
                parts.append(f'<text x="{x + bar_w / 2 - 1:.1f}" y="{base - h - 4:.1f}" text-anchor="middle" '
                             f'font-size="10">{v:.2f}</text>')
            # Long names ("meshgate-ratelimit-global") go on two lines so neighbours do not overlap.
            head, sep, tail = n.partition("-")
            lines = [head + sep, tail] if len(n) > 14 and sep else [n]
            cx = gx + group_w * 0.4
            spans = "".join(f'<tspan x="{cx:.1f}" dy="{0 if i == 0 else 13}">{line}</tspan>'
                            for i, line in enumerate(lines))
            parts.append(f'<text x="{cx:.1f}" y="{base + 16}" text-anchor="middle" font-size="11">{spans}</text>')
        lx = left + plot_w - 90 * len(series)
        for si, s in enumerate(series):
            label = {"tiny": "tiny body", "16k": "16 KiB body", "p999": "p99.9"}.get(s, s)
            parts.append(f'<rect x="{lx + si * 90}" y="{y0 + 6}" width="10" height="10" fill="{colors[s]}"/>')
            parts.append(f'<text x="{lx + si * 90 + 14}" y="{y0 + 15}">{label}</text>')

    def thr(n: str, body: str) -> float | None:
        v, ref = T[n].get(f"{body}_rps"), nginx.get(f"{body}_rps")
        return v / ref if v and ref else None

    panel(top - 20, "Throughput relative to nginx (64 connections, higher is better)", ["tiny", "16k"], thr,
          "× nginx", 1.0)
    panel(top + panel_h + 20, "Latency at 50% of nginx's max, open loop (ms, lower is better)",
          ["p50", "p99", "p999"], lambda n, s: T[n].get(s), "ms", None)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def update_readme(table: str, raw: dict, md_name: str) -> None:
    """Replaces the summary between the README's result markers (full runs only)."""
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    if not README.exists():
        return
    text = README.read_text()
    if start not in text or end not in text:
        return
    m = raw["machine"]
    block = (
        f"{start}\nLatest full run: [{md_name}](results/{md_name}) — {raw['date']}, {m['cpu']}, "
        f"{m['cores']} cores, kernel {m['kernel']}, nginx {m['nginx']}, {m['haproxy']}, {m['wrk']}, "
        f"{m['oha']}, {m['rustc']}, Pingora {m['pingora']}.\n\nCommand: `{raw['command']}`\n\n"
        f"Chain filters: {', '.join(chain_filter_names(raw['chain_filters']))}; cluster: "
        f"{', '.join(chain_filter_names(raw.get('chain_cluster', [])))}. meshgate `runtime.access_log`: "
        f"{'on' if raw.get('access_log', True) else 'off'} for every meshgate target.\n\n{table}\n{end}"
    )
    README.write_text(text[: text.index(start)] + block + text[text.index(end) + len(end):])


# ---------------------------------------------------------------------------- main

def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (262144, 65536, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            return want
        except (ValueError, OSError):
            continue
    return soft


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round of short runs, for iterating (results get -quick)")
    ap.add_argument("--rounds", type=int, help="rounds of alternating targets (default 3; quick 1)")
    ap.add_argument("--duration", type=float, help="seconds per throughput run (default 6; quick 2)")
    ap.add_argument("--latency-duration", type=float, help="seconds per latency run (default 6; quick 2)")
    ap.add_argument("--idle-connections", type=int, default=IDLE_CONNECTIONS)
    ap.add_argument("--targets", default=",".join(TARGET_ORDER), help="comma-separated subset of: "
                    + ", ".join(TARGET_ORDER))
    ap.add_argument("--machine", help="machine label in the result file name (default: '<cores>core')")
    ap.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    ap.add_argument("--oha", default=shutil.which("oha") or str(Path.home() / ".cargo" / "bin" / "oha"))
    ap.add_argument("--max-other-cpu", type=float, default=15.0,
                    help="%% of one core of foreign load above which a run is repeated (default 15)")
    ap.add_argument("--retries", type=int, default=2, help="repeats of a disturbed run (default 2)")
    ap.add_argument("--quiet-timeout", type=float, default=30.0,
                    help="seconds to wait for a quiet machine before each run (default 30)")
    ap.add_argument("--wait-budget", type=float, default=180.0,
                    help="total seconds a run may spend waiting for quiet or repeating runs (default 180)")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--no-idle", action="store_true")
    ap.add_argument("--keep-tmp", action="store_true", help="keep generated configs and logs")
    ap.add_argument("--command", help="the command line to record (set by run.sh)")
    args = ap.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (2.0 if args.quick else 6.0)
    args.latency_duration = args.latency_duration or (2.0 if args.quick else 6.0)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(TARGET_ORDER)
    if unknown:
        ap.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if "direct" not in args.targets:
        args.targets.insert(0, "direct")
    return args


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    nofile = raise_nofile()
    if args.idle_connections + 1000 > nofile:
        log(f"open-file limit {nofile} is too low for {args.idle_connections} idle connections; lowering the count")
        args.idle_connections = max(0, nofile - 1000)
    for binary in ("meshgate", "bare-pingora") + (("identity",) if set(args.targets) & set(BFF_TARGETS) else ()):
        if not (RELEASE / binary).exists():
            log(f"missing {RELEASE / binary}: run bench/run.sh (it builds in release mode)")
            return 2
    have_oha = os.access(args.oha, os.X_OK)
    if not have_oha:
        log(f"oha not found at {args.oha}: latency runs are skipped")
    pinned = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    pinning = (f"load generator (wrk, oha), backend and redis-server on CPU {LOADGEN_CPU}; the proxy under test "
               "alone on CPU "
               f"{PROXY_CPU} (taskset); for `direct` the backend is moved to CPU {PROXY_CPU}"
               if pinned else "none (fewer than 2 cores or no taskset)")

    tmp = Path(tempfile.mkdtemp(prefix="meshgate-bench-"))
    procs = Procs(tmp)
    bench = Bench(args, tmp, procs, pinned, nofile)
    started = time.monotonic()
    raw: dict = {
        "date": dt.date.today().isoformat(),
        "command": args.command or " ".join(["python3", "bench/bench.py", *argv]),
        "chain_filters": CHAIN_FILTERS,
        "chain_cluster": CHAIN_CLUSTER,
        "meshgate_filters": {n: MESHGATE_FILTERS[n] for n in MESHGATE_TARGETS if n in args.targets},
        "bff_session_stores": {n: BFF_SESSION_STORES[n] for n in BFF_TARGETS if n in args.targets},
        "bff_access_token_ttl": BFF_ACCESS_TTL,
        "access_log": ACCESS_LOG,
        "notes": [],
    }

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        log(f"configs and logs in {tmp}")
        bench.start_all()
        raw["checks"] = bench.verify()
        log("all targets answer correctly: " + ", ".join(bench.targets))
        targets = list(bench.targets.values())
        data = {t.name: {"description": DESCRIPTIONS[t.name], "port": t.port, "url": t.url("tiny"),
                         "throughput": {b: [] for b in BODIES}, "latency": [], "shared_latency": [], "serial": [],
                         "memory": {}}
                for t in targets}
        policy_targets = [t for t in targets if t.admin is not None
                          and t.name in RATE_LIMIT_TARGETS + JWT_TARGETS + BFF_TARGETS]
        counters0 = {t.name: bench.policy_counters(t) for t in policy_targets}

        log("warm-up")
        for t in targets:
            for body in BODIES:
                bench.wrk(t, body, 1.0 if args.quick else 2.0)

        for rnd in range(args.rounds):
            for body in BODIES:
                for t in targets:
                    row = bench.wrk(t, body, args.duration)
                    data[t.name]["throughput"][body].append(row)
                    log(f"round {rnd + 1}/{args.rounds} {body:>4} {t.name:<25} {row['rps']:>10.0f} rps "
                        f"proxy cpu {row['proxy_cpu_pct']:.0f}% ({row['proxy_cpu_us_per_req']:.1f} µs/req), "
                        f"other load {row['other_cpu_pct']:.0f}%")

        nginx_max = median([r["rps"] for r in data.get("nginx", {}).get("throughput", {}).get("tiny", [])])
        rate = 0.5 * nginx_max if nginx_max == nginx_max else 0.0

        def latency_rounds(key: str, label: str, rate: float) -> None:
            """Open-loop oha rounds at `rate` over every target, into data[target][key]."""
            for rnd in range(args.rounds):
                for t in targets:
                    row = bench.oha(t, rate, args.latency_duration)
                    data[t.name][key].append(row)
                    log(f"{label} round {rnd + 1}/{args.rounds} {t.name:<25} @ {rate:.0f} rps: p50 {row['p50']:.3f} "
                        f"p99 {row['p99']:.3f} p99.9 {row['p999']:.3f} ms (achieved {row['achieved_rps']:.0f})")
                    if row["achieved_rps"] < 0.95 * rate:
                        raw["notes"].append(f"{t.name} {label} round {rnd + 1}: achieved {row['achieved_rps']:.0f} "
                                            f"of {rate:.0f} rps")

        if have_oha and not args.no_latency and rate > 0:
            latency_rounds("latency", "latency", rate)
        elif rate <= 0:
            raw["notes"].append("latency not measured: no nginx throughput to set the rate from")

        shared_rate = shared_latency_rate(data)
        if have_oha and not args.no_latency and shared_rate > 0:
            latency_rounds("shared_latency", "shared-rate latency", shared_rate)

        if have_oha and not args.no_latency:
            for rnd in range(args.rounds):
                for t in targets:
                    row = bench.serial(t, SERIAL_REQUESTS)
                    data[t.name]["serial"].append(row)
                    log(f"serial round {rnd + 1}/{args.rounds} {t.name:<25} 1 connection: p50 "
                        f"{row['p50'] * 1000:.1f} µs p99 {row['p99'] * 1000:.1f} µs")

        # What the policy filters decided during all the load (before the idle test, whose
        # requests would count too): a limit that denied or a global limit that fell back to
        # its local limiter would make the numbers mean something else.
        for t in policy_targets:
            c1 = bench.policy_counters(t)
            delta = {k: (c1[k] or 0) - (counters0[t.name][k] or 0) for k in c1}
            data[t.name]["policy"] = delta
            if t.name in RATE_LIMIT_TARGETS:
                if delta["rl_denied"]:
                    raw["notes"].append(f"{t.name}: the rate limit denied {delta['rl_denied']:.0f} requests during "
                                        "the load (it should never deny)")
                if "scope: global" in " ".join(MESHGATE_FILTERS[t.name]):
                    total = delta["rl_redis"] + delta["rl_fallback"]
                    share = delta["rl_fallback"] / total if total else 0.0
                    log(f"{t.name}: {delta['rl_redis']:.0f} decisions by Redis, {delta['rl_fallback']:.0f} by the "
                        f"local fallback ({100 * share:.2f}%), {delta['rl_redis_timeouts']:.0f} Redis timeouts")
                    if not delta["rl_redis"]:
                        raise RuntimeError(f"{t.name}: Redis made no decision during the load: {delta}")
                    if share > 0.01:
                        raw["notes"].append(f"{t.name}: {100 * share:.1f}% of global decisions fell back to the local "
                                            f"limiter ({delta['rl_redis_timeouts']:.0f} Redis timeouts): the "
                                            "global numbers understate the Redis round trip")
            if t.name in BFF_TARGETS:
                delta["bff_refreshes_total"] = c1["bff_refreshes"]
                problem = bff_load_problem(c1, delta)
                log(f"{t.name}: {delta['requests']:.0f} requests during the load, {delta['status_401']:.0f} answered "
                    f"401, {delta['status_not_200']:.0f} not 200, {delta['aborted']:.0f} aborted by the load "
                    f"generator; {c1['bff_refreshes']:.0f} token refreshes in all")
                if problem:
                    # The numbers measured something else than the session lookup: keep them,
                    # but mark the target invalid everywhere and exit non-zero.
                    data[t.name]["invalid"] = problem
                    raw["notes"].append(f"**{t.name} is INVALID**: {problem}")
                    log(f"!!! {t.name} INVALID: {problem}")

        for t in targets:
            pid = bench.pid_of(t)
            data[t.name]["memory"]["peak_kib"] = tree_kib(pid, "VmHWM")
        if not args.no_idle and args.idle_connections > 0:
            for t in targets:
                res = bench.idle_rss(t, args.idle_connections)
                data[t.name]["memory"].update(
                    idle_rss_kib=res["rss_kib"], idle_before_kib=res["rss_before_kib"],
                    idle_delta_kib=res["delta_kib"], idle_rss_1s_kib=res["rss_1s_kib"],
                    idle_delta_1s_kib=res["delta_1s_kib"], idle_settle_s=res["settle_s"],
                    opened=res["opened"], still_open=res["still_open"],
                    failures=res["failures"], first_failure=res["first_failure"])
                log(f"idle {t.name:<25} {res['opened']} conns: RSS {res['rss_kib'] / 1024:.1f} MiB "
                    f"(+{res['delta_kib'] / 1024:.1f} MiB; +{res['delta_1s_kib'] / 1024:.1f} MiB after 1 s, "
                    f"settled after {1 + res['settle_s']} s), {res['failures']} failed")
        for t in targets:
            if t.proc is not None and t.proc.poll() is not None:
                raw["notes"].append(f"{t.name} exited during the run with {t.proc.returncode}")

        raw["machine"] = machine_info(args.oha if have_oha else None)
        raw["machine_label"] = args.machine or f"{raw['machine']['cores']}core"
        raw["parameters"] = {
            "quick": args.quick, "rounds": args.rounds, "duration": args.duration,
            "latency_duration": args.latency_duration, "latency_rate": rate,
            "shared_latency_rate": shared_rate,
            "connections": CONNECTIONS, "idle_connections": args.idle_connections, "pinning": pinning,
            "serial_requests": SERIAL_REQUESTS,
            "wall_seconds": round(time.monotonic() - started, 1),
            "waited_seconds": round(bench.waited_total, 1),
        }
        raw["targets"] = data
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        procs.stop_all()
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    summary = summarize(raw)
    raw["summary"] = summary
    stem = f"{raw['date']}-{raw['machine_label']}" + ("-quick" if args.quick else "")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{stem}.json").write_text(json.dumps(raw, indent=2, ensure_ascii=False) + "\n")
    (args.out_dir / f"{stem}.svg").write_text(svg_chart(summary))
    (args.out_dir / f"{stem}.md").write_text(markdown(raw, summary, f"{stem}.svg"))
    if not args.quick and args.out_dir == RESULTS_DIR:
        update_readme(summary_table(raw, summary), raw, f"{stem}.md")
    print()
    print(summary_table(raw, summary))
    print()
    for g in summary["goals"]:
        print(f"  [{'n/a' if g['met'] is None else ('ok ' if g['met'] else 'MISS')}] {g['goal']}: {g['value']}")
    log(f"wrote {args.out_dir / stem}.md, .json and .svg in {raw['parameters']['wall_seconds']:.0f}s")
    invalid = {n: t["invalid"] for n, t in raw["targets"].items() if t.get("invalid")}
    for n, why in invalid.items():
        log(f"FAILED: {n} is invalid: {why}")
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
