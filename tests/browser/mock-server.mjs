// A stand-in for the meshgate edge, for developing web/ and shop.mjs without
// the real mesh. Node's http module only, no dependencies.
//
// It serves web/ at / and fakes the edge's browser contract: /auth/login (via a
// minimal identity-provider login form), /auth/user, the logout_url, the
// catalog and the orders API, with the same JSON shapes, the same 401 for "no
// session" and the same `X-CSRF: 1` requirement on API calls.
//
//   node tests/browser/mock-server.mjs                      # prints its URL
//   PORT=3000 MOCK_FAILURE=payments_down node tests/browser/mock-server.mjs
//
// MOCK_FAILURE: payments_down | payments_declined | out_of_stock | catalog_down | orders_down
// MOCK_LATENCY_MS: delay every API answer (to see loading states).
// MOCK_XSS=1: add a product whose name and description hold markup (XSS probe).

import { createServer } from 'node:http';
import { randomBytes, randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const WEB_ROOT = path.resolve(here, '../../web');

export const FAILURES = ['payments_down', 'payments_declined', 'out_of_stock', 'catalog_down', 'orders_down'];

const SESSION_COOKIE = '__Host-mg_session';
const SESSION_TTL_S = 8 * 3600;

const USERS = {
  alice: {
    password: 'alice',
    claims: { sub: 'alice', name: 'Alice Liddell', email: 'alice@example.test', roles: ['customer'] },
  },
  admin: {
    password: 'admin',
    claims: { sub: 'admin', name: 'Ada Admin', email: 'admin@example.test', roles: ['customer', 'admin'] },
  },
};

const PRODUCTS = [
  { sku: 'MUG-001', name: 'Mesh mug', description: 'Stoneware mug for long on-call nights. Holds 350 ml.', price_cents: 1450, currency: 'USD' },
  { sku: 'TEE-002', name: 'Sidecar tee', description: 'Soft organic cotton T-shirt with a tiny proxy on the chest.', price_cents: 2400, currency: 'USD' },
  { sku: 'STK-003', name: 'Circuit breaker stickers', description: 'Six vinyl stickers: open, closed and half-open.', price_cents: 600, currency: 'USD' },
  { sku: 'HOD-004', name: 'Edge hoodie', description: 'Heavyweight hoodie for cold data centres.', price_cents: 5200, currency: 'USD' },
];

const XSS_PRODUCT = {
  sku: 'XSS-999',
  name: '<img src=x onerror="window.__xss=1">Probe',
  description: '<script>window.__xss=2</script><b>not bold</b>',
  price_cents: 100,
  currency: 'USD',
};

const CONTENT_TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.json': 'application/json',
};

// A strict policy, as the edge should send: the app must work without inline
// scripts or inline style attributes.
const CSP =
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
  "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const LOGIN_PAGE_STYLE =
  '*{box-sizing:border-box}body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;' +
  'font:16px/1.5 system-ui,sans-serif;background:#f3f4f6;color:#111827}main{width:100%;max-width:380px;margin:16px;' +
  'padding:32px;background:#fff;border-radius:12px;box-shadow:0 8px 24px rgba(0,0,0,.06)}label{display:block;' +
  'margin:16px 0 6px;font-weight:600}input[type=text],input[type=password]{width:100%;padding:10px 12px;border:1px solid #d1d5db;' +
  'border-radius:8px;font-size:1rem}button{display:block;width:100%;margin-top:24px;padding:11px;border:0;border-radius:8px;' +
  'background:#2563eb;color:#fff;font-size:1rem;font-weight:600}.error{padding:10px 12px;border-radius:8px;background:#fef2f2;color:#991b1b}';

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

function token() {
  return randomBytes(18).toString('base64url');
}

/** Same-origin paths only, as the real edge does for return targets. */
function safeReturnTo(value) {
  if (typeof value === 'string' && value.startsWith('/') && !value.startsWith('//') && !value.includes('\\')) {
    return value;
  }
  return '/';
}

function parseCookies(header) {
  const out = {};
  for (const part of (header || '').split(';')) {
    const i = part.indexOf('=');
    if (i > 0) out[part.slice(0, i).trim()] = part.slice(i + 1).trim();
  }
  return out;
}

function readBody(req, limit = 64 * 1024) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > limit) {
        reject(new Error('body too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

export function startMockServer({
  port = 0,
  host = '127.0.0.1',
  failure = process.env.MOCK_FAILURE || '',
  latencyMs = Number(process.env.MOCK_LATENCY_MS || 0),
  xss = process.env.MOCK_XSS === '1',
  log = false,
} = {}) {
  if (failure && !FAILURES.includes(failure)) {
    throw new Error(`unknown MOCK_FAILURE ${JSON.stringify(failure)}; expected one of ${FAILURES.join(', ')}`);
  }
  const products = xss ? [...PRODUCTS, XSS_PRODUCT] : PRODUCTS;
  const stock = new Map(products.map((p) => [p.sku, 25]));
  const pendingLogins = new Map(); // auth_request -> { returnTo }
  const codes = new Map(); // code -> { username, returnTo }
  const sessions = new Map(); // sid -> { username, expiresAt }
  const orders = new Map(); // sub -> [order], newest first

  function send(res, status, body, headers = {}) {
    res.writeHead(status, { 'Cache-Control': 'no-store', ...headers });
    res.end(body);
  }

  function json(res, status, value, requestId) {
    send(res, status, JSON.stringify(value), {
      'Content-Type': 'application/json',
      'X-Request-Id': requestId,
    });
  }

  function redirect(res, location, headers = {}) {
    send(res, 302, '', { Location: location, ...headers });
  }

  function session(req) {
    const sid = parseCookies(req.headers.cookie)[SESSION_COOKIE];
    const s = sid && sessions.get(sid);
    if (!s) return null;
    if (s.expiresAt * 1000 < Date.now()) {
      sessions.delete(sid);
      return null;
    }
    return { sid, ...s };
  }

  function loginPage(res, authRequest, error) {
    const body =
      `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">` +
      `<title>Sign in</title><style>${LOGIN_PAGE_STYLE}</style></head><body><main><h1>Sign in</h1>` +
      `<p>to continue to <strong>meshgate-edge</strong> (mock identity provider)</p>` +
      (error ? `<p class="error" role="alert">${escapeHtml(error)}</p>` : '') +
      `<form method="post" action="/idp/login"><input type="hidden" name="auth_request" value="${escapeHtml(authRequest)}">` +
      `<label for="username">Username</label><input type="text" id="username" name="username" autocomplete="username" required autofocus>` +
      `<label for="password">Password</label><input type="password" id="password" name="password" autocomplete="current-password" required>` +
      `<button type="submit">Sign in</button></form></main></body></html>`;
    send(res, 200, body, {
      'Content-Type': 'text/html; charset=utf-8',
      'Content-Security-Policy': "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
    });
  }

  async function serveStatic(req, res, pathname) {
    const rel = pathname === '/' ? 'index.html' : decodeURIComponent(pathname.slice(1));
    const file = path.resolve(WEB_ROOT, rel);
    if (!file.startsWith(WEB_ROOT + path.sep)) return send(res, 404, 'not found\n', { 'Content-Type': 'text/plain' });
    try {
      const data = await readFile(file);
      send(res, 200, req.method === 'HEAD' ? '' : data, {
        'Content-Type': CONTENT_TYPES[path.extname(file)] || 'application/octet-stream',
        'Content-Security-Policy': CSP,
        'X-Content-Type-Options': 'nosniff',
        'Referrer-Policy': 'same-origin',
      });
    } catch {
      send(res, 404, 'not found\n', { 'Content-Type': 'text/plain' });
    }
  }

  function placeOrder(sub, body) {
    const items = body && Array.isArray(body.items) ? body.items : null;
    if (!items || items.length === 0 || items.length > 50) return [400, { error: 'invalid_request', message: 'items must be a non-empty list' }];
    const lines = [];
    for (const item of items) {
      const product = products.find((p) => p.sku === item?.sku);
      if (!product) return [400, { error: 'unknown_product', sku: String(item?.sku) }];
      if (!Number.isInteger(item.quantity) || item.quantity < 1 || item.quantity > 99) {
        return [400, { error: 'invalid_request', message: 'quantity must be an integer from 1 to 99' }];
      }
      lines.push({ sku: product.sku, name: product.name, quantity: item.quantity, price_cents: product.price_cents });
    }
    const order = {
      id: randomUUID(),
      sub,
      status: 'confirmed',
      items: lines,
      total_cents: lines.reduce((n, l) => n + l.price_cents * l.quantity, 0),
      currency: 'USD',
      created_at: new Date().toISOString(),
    };
    const short = lines.some((l) => (stock.get(l.sku) || 0) < l.quantity);
    if (failure === 'out_of_stock' || short) {
      order.status = 'failed';
      order.reason = 'insufficient_stock';
    } else if (failure === 'payments_down') {
      order.status = 'failed';
      order.reason = 'payment_unavailable';
    } else if (failure === 'payments_declined') {
      order.status = 'failed';
      order.reason = 'payment_declined';
    } else {
      for (const l of lines) stock.set(l.sku, stock.get(l.sku) - l.quantity);
      order.payment_id = `pay_${token()}`;
    }
    const list = orders.get(sub) || [];
    list.unshift(order);
    orders.set(sub, list);
    return [201, order];
  }

  async function handle(req, res) {
    const url = new URL(req.url, 'http://mock.invalid');
    const { pathname } = url;
    const requestId = randomUUID();
    const isApi = pathname === '/auth/user' || pathname.startsWith('/api/');

    if (isApi) {
      if (latencyMs > 0) await new Promise((r) => setTimeout(r, latencyMs));
      if (req.headers['x-csrf'] !== '1') return json(res, 403, { error: 'csrf_required', request_id: requestId }, requestId);
      const s = session(req);
      if (!s) return json(res, 401, { error: 'unauthorized', request_id: requestId }, requestId);
      const { claims } = USERS[s.username];

      if (pathname === '/auth/user' && req.method === 'GET') {
        return json(
          res,
          200,
          { ...claims, session_expires_at: s.expiresAt, logout_url: `/auth/logout?sid=${encodeURIComponent(s.sid.slice(0, 12))}` },
          requestId,
        );
      }
      if (pathname.startsWith('/api/catalog/')) {
        if (failure === 'catalog_down') return json(res, 503, { error: 'service_unavailable', request_id: requestId }, requestId);
        if (req.method !== 'GET') return json(res, 405, { error: 'method_not_allowed', request_id: requestId }, requestId);
        if (pathname === '/api/catalog/products') return json(res, 200, products, requestId);
        const sku = decodeURIComponent(pathname.slice('/api/catalog/products/'.length));
        const product = pathname.startsWith('/api/catalog/products/') && products.find((p) => p.sku === sku);
        if (product) return json(res, 200, product, requestId);
        return json(res, 404, { error: 'not_found', request_id: requestId }, requestId);
      }
      if (pathname === '/api/orders') {
        if (failure === 'orders_down') return json(res, 503, { error: 'service_unavailable', request_id: requestId }, requestId);
        if (req.method === 'GET') return json(res, 200, orders.get(claims.sub) || [], requestId);
        if (req.method === 'POST') {
          let body;
          try {
            body = JSON.parse(await readBody(req));
          } catch {
            return json(res, 400, { error: 'invalid_json', request_id: requestId }, requestId);
          }
          const [status, value] = placeOrder(claims.sub, body);
          return json(res, status, status >= 400 ? { ...value, request_id: requestId } : value, requestId);
        }
        return json(res, 405, { error: 'method_not_allowed', request_id: requestId }, requestId);
      }
      return json(res, 404, { error: 'not_found', request_id: requestId }, requestId);
    }

    if (pathname === '/auth/login' && req.method === 'GET') {
      const authRequest = token();
      pendingLogins.set(authRequest, { returnTo: safeReturnTo(url.searchParams.get('return_to')) });
      return redirect(res, `/idp/authorize?auth_request=${authRequest}`);
    }
    if (pathname === '/idp/authorize' && req.method === 'GET') {
      const authRequest = url.searchParams.get('auth_request') || '';
      if (!pendingLogins.has(authRequest)) return send(res, 400, 'unknown or expired login request\n', { 'Content-Type': 'text/plain' });
      return loginPage(res, authRequest);
    }
    if (pathname === '/idp/login' && req.method === 'POST') {
      const form = new URLSearchParams(await readBody(req));
      const authRequest = form.get('auth_request') || '';
      const pending = pendingLogins.get(authRequest);
      if (!pending) return send(res, 400, 'unknown or expired login request\n', { 'Content-Type': 'text/plain' });
      const user = USERS[form.get('username') || ''];
      if (!user || user.password !== form.get('password')) return loginPage(res, authRequest, 'Invalid username or password.');
      pendingLogins.delete(authRequest);
      const code = token();
      codes.set(code, { username: form.get('username'), returnTo: pending.returnTo });
      return redirect(res, `/auth/callback?code=${code}&state=${authRequest}`);
    }
    if (pathname === '/auth/callback' && req.method === 'GET') {
      const grant = codes.get(url.searchParams.get('code') || '');
      if (!grant) return send(res, 400, 'invalid code\n', { 'Content-Type': 'text/plain' });
      codes.delete(url.searchParams.get('code'));
      const sid = token();
      sessions.set(sid, { username: grant.username, expiresAt: Math.floor(Date.now() / 1000) + SESSION_TTL_S });
      return redirect(res, grant.returnTo, {
        'Set-Cookie': `${SESSION_COOKIE}=${sid}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=${SESSION_TTL_S}`,
      });
    }
    if (pathname === '/auth/logout' && req.method === 'GET') {
      const s = session(req);
      if (s) sessions.delete(s.sid);
      return redirect(res, '/idp/logout?post_logout_redirect_uri=%2F', {
        'Set-Cookie': `${SESSION_COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0`,
      });
    }
    if (pathname === '/idp/logout' && req.method === 'GET') {
      return redirect(res, safeReturnTo(url.searchParams.get('post_logout_redirect_uri')));
    }
    if (pathname === '/healthz') return send(res, 200, 'ok\n', { 'Content-Type': 'text/plain' });
    if (req.method === 'GET' || req.method === 'HEAD') return serveStatic(req, res, pathname);
    return send(res, 405, 'method not allowed\n', { 'Content-Type': 'text/plain' });
  }

  const server = createServer((req, res) => {
    if (log) res.on('finish', () => console.log(`${req.method} ${req.url} -> ${res.statusCode}`));
    handle(req, res).catch((err) => {
      console.error('mock-server error:', err);
      if (!res.headersSent) send(res, 500, JSON.stringify({ error: 'internal' }), { 'Content-Type': 'application/json' });
      else res.destroy();
    });
  });

  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      const addr = server.address();
      resolve({
        url: `http://${host}:${addr.port}`,
        close: () =>
          new Promise((done) => {
            server.closeAllConnections();
            server.close(() => done());
          }),
      });
    });
  });
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  const mock = await startMockServer({ port: Number(process.env.PORT || 0), log: process.env.MOCK_LOG === '1' });
  console.log(`mock edge listening on ${mock.url}${process.env.MOCK_FAILURE ? ` (failure: ${process.env.MOCK_FAILURE})` : ''}`);
  const stop = () => mock.close().then(() => process.exit(0));
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}
