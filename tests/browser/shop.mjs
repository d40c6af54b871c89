// Browser test of the meshgate shop: a person logs in through the identity
// provider, buys something, sees the order and logs out.
//
//   BASE_URL=http://127.0.0.1:3000 node tests/browser/shop.mjs
//   BASE_URL=... FAILURE_SCENARIO=payments_down node tests/browser/shop.mjs
//   MOCK=1 node tests/browser/shop.mjs        # against tests/browser/mock-server.mjs
//
// Uses playwright-core with the system Chromium (never downloads a browser).
// Exit code 0 on success; 1 with a message and a failure screenshot otherwise.
// The steps and scenarios are exported so other scripts can reuse them.

import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { chromium } from 'playwright-core';

export const DESKTOP = { width: 1280, height: 900 };
export const PHONE = { width: 375, height: 812 };

export function configFromEnv(env = process.env) {
  return {
    baseUrl: (env.BASE_URL || 'http://127.0.0.1:3000').replace(/\/+$/, ''),
    username: env.USERNAME || 'alice',
    password: env.PASSWORD || 'alice',
    artifacts: path.resolve(env.ARTIFACTS || 'target/browser-artifacts'),
    chromium: env.CHROMIUM || '/usr/bin/chromium',
    scenario: env.FAILURE_SCENARIO || 'happy',
    stepTimeoutMs: Number(env.STEP_TIMEOUT_MS || 15000),
    totalTimeoutMs: Number(env.TIMEOUT_MS || 180000),
  };
}

export class StepFailure extends Error {}

function fail(message) {
  throw new StepFailure(message);
}

const byTestId = (id) => `[data-testid="${id}"]`;

function slug(text) {
  return text
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-|-$/g, '');
}

/** Polls `predicate` in the page until it returns true, with a deadline and a readable error. */
async function waitInPage(t, description, predicate, arg) {
  try {
    await t.page.waitForFunction(predicate, arg, { timeout: t.config.stepTimeoutMs, polling: 100 });
  } catch (err) {
    if (err && err.name === 'TimeoutError') fail(`timed out after ${t.config.stepTimeoutMs} ms waiting for ${description}`);
    throw err;
  }
}

async function waitVisible(t, selector, description) {
  try {
    await t.page.locator(selector).first().waitFor({ state: 'visible', timeout: t.config.stepTimeoutMs });
  } catch (err) {
    if (err && err.name === 'TimeoutError') {
      fail(`timed out after ${t.config.stepTimeoutMs} ms waiting for ${description} (${selector}) at ${t.page.url()}`);
    }
    throw err;
  }
}

async function text(t, selector) {
  return ((await t.page.locator(selector).first().textContent({ timeout: t.config.stepTimeoutMs })) || '').trim();
}

async function pageFetch(t, url) {
  return t.page.evaluate(async (u) => {
    const res = await fetch(u, { headers: { 'X-CSRF': '1' }, credentials: 'same-origin', cache: 'no-store' });
    let body = null;
    try {
      body = await res.json();
    } catch {
      body = null;
    }
    return { status: res.status, body };
  }, url);
}

// ---------------------------------------------------------------- steps
//
// Each step takes the test context `t` ({ page, config, state }) and throws a
// StepFailure with a clear message when what a person would see is wrong.

export const steps = {
  async openApp(t) {
    await t.page.goto(`${t.config.baseUrl}/`, { waitUntil: 'domcontentloaded', timeout: t.config.stepTimeoutMs });
    await waitVisible(t, 'header .brand', 'the shop header');
    const brand = await text(t, byTestId('brand'));
    if (!brand.includes('meshgate shop')) fail(`header says ${JSON.stringify(brand)}, expected "meshgate shop"`);
  },

  async expectLoggedOut(t) {
    await waitVisible(t, byTestId('login-button'), 'the login button');
    await waitVisible(t, byTestId('welcome-panel'), 'the welcome panel');
    if (await t.page.locator(byTestId('user-name')).isVisible()) fail('a user name is shown while logged out');
  },

  async login(t) {
    await t.page.locator(byTestId('login-button')).click({ timeout: t.config.stepTimeoutMs });
    await waitVisible(t, 'input[name=username]', "the identity provider's login form");
    t.state.loginPageUrl = t.page.url();
    await t.page.locator('input[name=username]').fill(t.config.username);
    await t.page.locator('input[name=password]').fill(t.config.password);
    await t.shot('login form filled');
    const submit = t.page.locator('form:has(input[name=password]) [type=submit]').first();
    await submit.click({ timeout: t.config.stepTimeoutMs });
    const base = new URL(t.config.baseUrl);
    try {
      // The login button asks to come back to `/` (return_to).
      await t.page.waitForURL((u) => u.origin === base.origin && u.pathname === '/', {
        timeout: t.config.stepTimeoutMs,
        waitUntil: 'domcontentloaded',
      });
    } catch (err) {
      const error = await t.page.locator('[role=alert], .error').first().textContent({ timeout: 500 }).catch(() => null);
      fail(`did not come back to the app after login (now at ${t.page.url()})${error ? `; the page says: ${error.trim()}` : ''}`);
    }
  },

  async expectUser(t) {
    await waitVisible(t, byTestId('user-name'), "the user's name in the header");
    await waitVisible(t, byTestId('logout-button'), 'the logout button');
    const shown = await text(t, byTestId('user-name'));
    const me = await pageFetch(t, '/auth/user');
    if (me.status !== 200) fail(`/auth/user answered ${me.status} after login, expected 200`);
    const expected = me.body.name || me.body.sub;
    if (shown !== expected) fail(`header shows ${JSON.stringify(shown)}, /auth/user says ${JSON.stringify(expected)}`);
    for (const key of ['sub', 'session_expires_at', 'logout_url']) {
      if (!(key in me.body)) fail(`/auth/user has no ${key}`);
    }
    const leaked = JSON.stringify(me.body).match(/eyJ[\w-]{10,}\.[\w-]{10,}\./);
    if (leaked) fail('/auth/user returned something that looks like a JWT: tokens must never reach the page');
    const cookies = await t.page.evaluate(() => document.cookie);
    if (cookies.includes('eyJ')) fail('document.cookie holds a token-like value: the session cookie must be httpOnly');
    t.state.user = me.body;
    t.log(`logged in as ${shown} (${me.body.sub})`);
  },

  async expectProducts(t) {
    await waitVisible(t, byTestId('product-card'), 'a product card');
    const cards = t.page.locator(byTestId('product-card'));
    const count = await cards.count();
    const first = cards.first();
    const name = ((await first.locator(byTestId('product-name')).textContent()) || '').trim();
    const price = ((await first.locator(byTestId('product-price')).textContent()) || '').trim();
    if (!name) fail('the first product card has no name');
    if (!/\d/.test(price)) fail(`the first product's price ${JSON.stringify(price)} has no digits`);
    const injected = await t.page.evaluate(
      () => window.__xss !== undefined || document.querySelector('[data-testid="products-list"] img, [data-testid="products-list"] script') !== null,
    );
    if (injected) fail('product data was rendered as markup (XSS): use textContent, never innerHTML');
    t.state.product = { name, price, sku: await first.getAttribute('data-sku') };
    t.log(`${count} products; first: ${name} at ${price}`);
  },

  async addToCart(t, quantity = 2) {
    const card = t.page.locator(byTestId('product-card')).first();
    await card.locator(byTestId('quantity')).fill(String(quantity));
    await card.locator(byTestId('add-to-cart')).click({ timeout: t.config.stepTimeoutMs });
    await waitInPage(
      t,
      `the cart to hold ${quantity} × ${t.state.product.name}`,
      ([sku, q]) => {
        const item = document.querySelector(`[data-testid="cart-item"][data-sku="${CSS.escape(sku)}"]`);
        return item !== null && item.querySelector('[data-testid="cart-quantity"]').value === String(q);
      },
      [t.state.product.sku, quantity],
    );
    const count = await text(t, byTestId('cart-count'));
    if (count !== String(quantity)) fail(`cart badge shows ${count}, expected ${quantity}`);
    const total = await text(t, byTestId('cart-total'));
    if (!/\d/.test(total)) fail(`cart total ${JSON.stringify(total)} has no digits`);
    t.state.quantity = quantity;
    t.log(`cart: ${quantity} × ${t.state.product.name}, total ${total}`);
  },

  async placeOrder(t) {
    const place = t.page.locator(byTestId('place-order'));
    if (await place.isDisabled()) fail('"Place order" is disabled with a non-empty cart');
    const responsePromise = t.page.waitForResponse(
      (r) => new URL(r.url()).pathname === '/api/orders' && r.request().method() === 'POST',
      { timeout: t.config.stepTimeoutMs },
    );
    await place.click({ timeout: t.config.stepTimeoutMs });
    let response;
    try {
      response = await responsePromise;
    } catch {
      fail(`no answer to POST /api/orders within ${t.config.stepTimeoutMs} ms`);
    }
    const status = response.status();
    const order = await response.json().catch(() => null);
    if (status !== 201 || !order || !order.id) {
      fail(`POST /api/orders answered ${status} ${order ? JSON.stringify(order) : '(no JSON)'}, expected 201 with an order`);
    }
    const item = (order.items || []).find((i) => i.sku === t.state.product.sku);
    if (!item || item.quantity !== t.state.quantity) {
      fail(`the order's items ${JSON.stringify(order.items)} do not hold ${t.state.quantity} × ${t.state.product.sku}`);
    }
    t.state.order = order;
    t.log(`order ${order.id}: ${order.status}${order.reason ? ` (${order.reason})` : ''}`);
  },

  async expectOrderStatus(t, expected) {
    const { id } = t.state.order;
    const selector = `${byTestId('orders-list')} [data-testid="order-card"][data-order-id="${id}"]`;
    await waitVisible(t, selector, `order ${id} in My orders`);
    const first = await t.page.locator(`${byTestId('orders-list')} ${byTestId('order-card')}`).first().getAttribute('data-order-id');
    if (first !== id) fail(`My orders does not list the new order first (first is ${first}, new is ${id})`);
    const shown = await text(t, `${selector} ${byTestId('order-status')}`);
    if (shown !== expected) fail(`order ${id} shows status ${JSON.stringify(shown)}, expected ${JSON.stringify(expected)}`);
    const stored = await pageFetch(t, '/api/orders');
    if (stored.status !== 200) fail(`GET /api/orders answered ${stored.status}`);
    const mine = (stored.body || []).find((o) => o.id === id);
    if (!mine) fail(`GET /api/orders does not list order ${id}`);
    if (mine.status !== expected) fail(`GET /api/orders says order ${id} is ${mine.status}, expected ${expected}`);
  },

  async expectOrderConfirmed(t) {
    await steps.expectOrderStatus(t, 'confirmed');
    await waitVisible(t, byTestId('notice-banner'), 'the "order confirmed" notice');
    if (await t.page.locator(byTestId('error-banner')).isVisible()) {
      fail(`an error banner is shown after a confirmed order: ${await text(t, byTestId('error-banner'))}`);
    }
    const count = await text(t, byTestId('cart-count'));
    if (count !== '0') fail(`the cart still holds ${count} items after a confirmed order`);
  },

  async expectOrderFailedPaymentsDown(t) {
    await steps.expectOrderStatus(t, 'failed');
    if (t.state.order.reason !== 'payment_unavailable') {
      fail(`the failed order's reason is ${JSON.stringify(t.state.order.reason)}, expected "payment_unavailable"`);
    }
    await waitVisible(t, byTestId('error-banner'), 'the error banner');
    const banner = await text(t, `${byTestId('error-banner')} .banner-text`);
    if (!/payment/i.test(banner)) fail(`the error banner does not mention payments: ${JSON.stringify(banner)}`);
    if (!/not charged/i.test(banner)) fail(`the error banner does not say the order was not charged: ${JSON.stringify(banner)}`);
    const reason = await text(t, `[data-order-id="${t.state.order.id}"] ${byTestId('order-reason')}`);
    if (!/payment/i.test(reason)) fail(`the failed order's reason in My orders does not mention payments: ${JSON.stringify(reason)}`);
    t.log(`banner: ${banner}`);
  },

  async checkPhoneLayout(t, label) {
    await t.page.setViewportSize(PHONE);
    try {
      const overflow = await t.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      // What a person sees: the newest order if there is one, else the top of the page.
      await t.page.evaluate(() => {
        const order = document.querySelector('[data-testid="order-card"]');
        if (order && order.offsetParent !== null) order.scrollIntoView({ block: 'center' });
        else window.scrollTo(0, 0);
      });
      await t.shot(`phone ${label}`);
      // The whole page, for the layout (fixed and sticky elements show at the scroll position).
      await t.shot(`phone ${label} full page`, { fullPage: true });
      t.stepShotTaken = true;
      if (overflow > 1) fail(`the page is ${overflow}px wider than a ${PHONE.width}px phone screen (horizontal scrolling)`);
    } finally {
      await t.page.setViewportSize(DESKTOP);
    }
  },

  async logout(t) {
    const href = await t.page.locator(byTestId('logout-button')).getAttribute('href');
    if (t.state.user && href !== t.state.user.logout_url) {
      fail(`the logout button goes to ${href}, expected logout_url ${t.state.user.logout_url}`);
    }
    await t.page.locator(byTestId('logout-button')).click({ timeout: t.config.stepTimeoutMs });
    const base = new URL(t.config.baseUrl);
    try {
      await t.page.waitForURL((u) => u.origin === base.origin && u.pathname === '/', {
        timeout: t.config.stepTimeoutMs,
        waitUntil: 'domcontentloaded',
      });
    } catch {
      fail(`did not come back to / after logout (now at ${t.page.url()})`);
    }
    await waitVisible(t, byTestId('login-button'), 'the login button after logout');
  },

  async expectApiUnauthorized(t) {
    const me = await pageFetch(t, '/auth/user');
    if (me.status !== 401) fail(`after logout /auth/user answered ${me.status}, expected 401`);
    if (!me.body || me.body.error !== 'unauthorized') fail(`after logout /auth/user body is ${JSON.stringify(me.body)}, expected {"error":"unauthorized",…}`);
  },
};

/** Scenarios: lists of [step name, function]. */
export const scenarios = {
  happy: [
    ['open the app', steps.openApp],
    ['see the login button', steps.expectLoggedOut],
    ['phone layout logged out', (t) => steps.checkPhoneLayout(t, 'logged out')],
    ['log in', steps.login],
    ['see the user name', steps.expectUser],
    ['see products', steps.expectProducts],
    ['add to cart', (t) => steps.addToCart(t, 2)],
    ['phone layout shop', (t) => steps.checkPhoneLayout(t, 'shop')],
    ['place the order', steps.placeOrder],
    ['see the order confirmed', steps.expectOrderConfirmed],
    ['phone layout orders', (t) => steps.checkPhoneLayout(t, 'orders')],
    ['log out', steps.logout],
    ['api answers 401 after logout', steps.expectApiUnauthorized],
  ],
  payments_down: [
    ['open the app', steps.openApp],
    ['see the login button', steps.expectLoggedOut],
    ['log in', steps.login],
    ['see the user name', steps.expectUser],
    ['see products', steps.expectProducts],
    ['add to cart', (t) => steps.addToCart(t, 1)],
    ['place the order', steps.placeOrder],
    ['see the order failed with a payments banner', steps.expectOrderFailedPaymentsDown],
    ['phone layout failed order', (t) => steps.checkPhoneLayout(t, 'failed order')],
    ['log out', steps.logout],
    ['api answers 401 after logout', steps.expectApiUnauthorized],
  ],
};

export function launchChromium(config) {
  return chromium.launch({
    executablePath: config.chromium,
    headless: true,
    timeout: 30000,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-dev-shm-usage',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-default-apps',
      '--disable-extensions',
      '--disable-sync',
      '--no-first-run',
      '--no-default-browser-check',
      '--mute-audio',
    ],
  });
}

/**
 * Runs one scenario in a fresh browser. Resolves with { ok, failedStep, error, shots }.
 * Never throws for a failed check; the caller decides the exit code.
 */
export async function runScenario(name, config = configFromEnv()) {
  const scenario = scenarios[name];
  if (!scenario) throw new Error(`unknown scenario ${JSON.stringify(name)}; known: ${Object.keys(scenarios).join(', ')}`);
  await mkdir(config.artifacts, { recursive: true });

  const browser = await launchChromium(config);
  const context = await browser.newContext({ viewport: DESKTOP, locale: 'en-US', timezoneId: 'UTC' });
  const page = await context.newPage();
  page.setDefaultTimeout(config.stepTimeoutMs);
  page.setDefaultNavigationTimeout(config.stepTimeoutMs);

  const pageErrors = [];
  page.on('pageerror', (err) => pageErrors.push(`uncaught: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const textOf = msg.text();
    // The browser logs every 4xx/5xx fetch; those are expected (401 when logged out).
    if (/Failed to load resource: the server responded with a status of/.test(textOf)) return;
    pageErrors.push(`console: ${textOf}`);
  });

  const shots = [];
  let shotNo = 0;
  const t = {
    page,
    config,
    state: {},
    log: (message) => console.log(`    ${message}`),
    async shot(label, options = {}) {
      shotNo += 1;
      const file = path.join(config.artifacts, `${name}-${String(shotNo).padStart(2, '0')}-${slug(label)}.png`);
      await page.screenshot({ path: file, fullPage: options.fullPage ?? false, timeout: config.stepTimeoutMs });
      shots.push(file);
      return file;
    },
  };

  const result = { ok: true, failedStep: null, error: null, shots };
  console.log(`scenario ${name} against ${config.baseUrl} (user ${config.username})`);
  try {
    for (const [label, run] of scenario) {
      const started = Date.now();
      t.stepShotTaken = false;
      try {
        await run(t);
        if (pageErrors.length > 0) fail(`the page reported errors:\n  ${pageErrors.join('\n  ')}`);
        if (!t.stepShotTaken) await t.shot(label);
        console.log(`  ok   ${label} (${Date.now() - started} ms)`);
      } catch (err) {
        result.ok = false;
        result.failedStep = label;
        result.error = err instanceof StepFailure ? err.message : err && err.stack ? err.stack : String(err);
        console.log(`  FAIL ${label}: ${result.error}`);
        await saveFailure(t, name, label);
        break;
      }
    }
  } finally {
    await context.close().catch(() => {});
    await browser.close().catch(() => {});
  }
  return result;
}

async function saveFailure(t, name, label) {
  const base = path.join(t.config.artifacts, `${name}-FAILED-${slug(label)}`);
  try {
    await t.page.screenshot({ path: `${base}.png`, fullPage: true, timeout: 5000 });
    t.log(`failure screenshot: ${base}.png`);
  } catch (err) {
    t.log(`could not take a failure screenshot: ${err.message}`);
  }
  try {
    await writeFile(`${base}.html`, await t.page.content());
  } catch {
    // The page may be gone; the screenshot or message is enough then.
  }
}

async function main() {
  const config = configFromEnv();
  const deadline = setTimeout(() => {
    console.error(`FAILED: the whole run took longer than ${config.totalTimeoutMs} ms (TIMEOUT_MS)`);
    process.exit(1);
  }, config.totalTimeoutMs);
  deadline.unref();

  let mock = null;
  if (process.env.MOCK === '1') {
    const { startMockServer } = await import('./mock-server.mjs');
    mock = await startMockServer({ failure: config.scenario === 'happy' ? '' : config.scenario });
    config.baseUrl = mock.url;
    console.log(`started the mock edge at ${mock.url}`);
  }

  let result;
  try {
    result = await runScenario(config.scenario, config);
  } catch (err) {
    console.error(`FAILED: ${err && err.message ? err.message : err}`);
    if (/Executable doesn't exist|ENOENT/.test(String(err))) {
      console.error(`Chromium not found at ${config.chromium}: install it (apt-get install -y chromium) or set CHROMIUM.`);
    }
    process.exitCode = 1;
    return;
  } finally {
    if (mock) await mock.close();
  }
  if (result.ok) {
    console.log(`PASSED: scenario ${config.scenario}; screenshots in ${config.artifacts}`);
    console.log('1 passed, 0 failed');
  } else {
    console.error(`FAILED: scenario ${config.scenario}, step "${result.failedStep}": ${result.error}`);
    console.error(`screenshots in ${config.artifacts}`);
    console.log('0 passed, 1 failed');
    process.exitCode = 1;
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  main().catch((err) => {
    console.error(`FAILED: ${err && err.stack ? err.stack : err}`);
    process.exit(1);
  });
}
