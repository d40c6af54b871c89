// meshgate shop: the demo single-page app served by the edge.
//
// The page never sees a token: the edge keeps them server-side and the browser
// holds only an httpOnly session cookie. Every API call sends `X-CSRF: 1`, a
// header a cross-site form cannot set, and a 401 from any call means "not
// logged in" (the edge answers API calls with 401, never with a redirect).
//
// Server data is only ever put into the page with textContent/createElement,
// never innerHTML, so a product name cannot inject markup.

const CART_KEY_PREFIX = 'meshgate.cart.';
const MAX_QUANTITY = 99;
const PENDING_POLL_MS = 2000;
const PENDING_POLL_LIMIT = 15;

/** Plain-words messages for an order's `reason` (and for API error codes). */
const REASON_BANNER = {
  payment_unavailable:
    'Payments are unavailable right now — your order was not charged and the stock was released. Please try again in a few minutes.',
  payment_declined:
    'Your payment was declined — your order was not charged and the stock was released.',
  insufficient_stock:
    'Some items are no longer in stock — your order was not placed and nothing was charged.',
  inventory_unavailable:
    'Stock could not be checked right now — your order was not placed and nothing was charged. Please try again shortly.',
  unknown_product: 'One of the products in your cart no longer exists — please remove it and try again.',
  interrupted:
    'Your checkout was interrupted before it finished — the order was cancelled, nothing was charged and the stock was released.',
};
const REASON_SHORT = {
  payment_unavailable: 'Payments were unavailable; you were not charged.',
  payment_declined: 'Payment declined; you were not charged.',
  insufficient_stock: 'Not enough stock; you were not charged.',
  inventory_unavailable: 'Stock check unavailable; you were not charged.',
  unknown_product: 'A product no longer exists; you were not charged.',
  interrupted: 'Checkout interrupted; cancelled, you were not charged.',
};

const SERVICE_LABEL = {
  auth: 'Sign-in',
  catalog: 'The product catalog',
  orders: 'The order service',
};

// ---------------------------------------------------------------- state

const state = {
  user: null,
  products: [],
  cart: new Map(), // sku -> { sku, name, price_cents, currency, quantity }
  orders: [],
  placing: false,
  expiryTimer: 0,
  pendingPolls: 0,
};

// ---------------------------------------------------------------- DOM helpers

const $ = (testid) => document.querySelector(`[data-testid="${testid}"]`);

/**
 * Creates an element. `props` supports class, text, attrs, data and on* handlers;
 * children are nodes or strings (added as text nodes).
 */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = String(value);
    else if (key === 'testid') el.dataset.testid = value;
    else if (key === 'data') Object.assign(el.dataset, value);
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function show(el, visible) {
  el.hidden = !visible;
}

// ---------------------------------------------------------------- formatting

const moneyFormats = new Map();
function formatMoney(cents, currency = 'USD') {
  let fmt = moneyFormats.get(currency);
  if (!fmt) {
    try {
      fmt = new Intl.NumberFormat(undefined, { style: 'currency', currency });
    } catch {
      fmt = new Intl.NumberFormat(undefined, { style: 'currency', currency: 'USD' });
    }
    moneyFormats.set(currency, fmt);
  }
  const digits = fmt.resolvedOptions().maximumFractionDigits;
  return fmt.format(Number(cents) / 10 ** digits);
}

/** Sums amounts per currency: "€12.00" or "€12.00 + $3.00" for a mixed cart. */
function formatTotal(lines) {
  const sums = new Map();
  for (const { cents, currency } of lines) sums.set(currency, (sums.get(currency) || 0) + cents);
  if (sums.size === 0) return formatMoney(0);
  return [...sums].map(([cur, cents]) => formatMoney(cents, cur)).join(' + ');
}

function toDate(value) {
  if (value === undefined || value === null || value === '') return null;
  const d = typeof value === 'number' ? new Date(value < 1e12 ? value * 1000 : value) : new Date(value);
  return Number.isNaN(d.getTime()) ? null : d;
}

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

function humanize(code) {
  const words = String(code || 'unknown').replace(/[_-]+/g, ' ').trim();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function hueFor(text) {
  let hash = 0;
  for (const c of String(text)) hash = (hash * 31 + c.codePointAt(0)) >>> 0;
  return hash % 360;
}

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, code, body) {
    super(`${status} ${code}`);
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

async function api(path, { method = 'GET', body } = {}) {
  const headers = { 'X-CSRF': '1', Accept: 'application/json' };
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    throw new ApiError(0, 'network_error', null);
  }
  const text = await res.text().catch(() => '');
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    const code = data && typeof data.error === 'string' ? data.error : `http_${res.status}`;
    throw new ApiError(res.status, code, data);
  }
  if (data === null && res.status !== 204) throw new ApiError(res.status, 'invalid_response', null);
  return data;
}

/** The message a person should read for a failed call to `service`. */
function errorMessage(err, service) {
  const label = SERVICE_LABEL[service] || 'The shop';
  if (!(err instanceof ApiError)) return 'Something went wrong in the page. Please reload it.';
  if (REASON_BANNER[err.code]) return REASON_BANNER[err.code];
  const s = err.status;
  if (s === 0) return 'Cannot reach the shop. Check your connection and try again.';
  if (s === 401) return 'Your session has ended. Please log in again.';
  if (s === 403) return 'That request was refused. Please reload the page and try again.';
  if (s === 404) return 'That item could not be found.';
  if (s === 429) return 'Too many requests — please wait a moment and try again.';
  if (s === 502 || s === 503 || s === 504)
    return `${label} is unavailable right now. Please try again in a moment.`;
  if (s >= 500) return 'Something went wrong on our side. Please try again in a moment.';
  const detail = err.body && typeof err.body.message === 'string' ? err.body.message : humanize(err.code);
  return `The request was not accepted: ${detail}.`;
}

/** Central handling for a failed call: 401 shows the login state, others a banner. */
function handleError(err, service) {
  if (err instanceof ApiError && err.status === 401) {
    const hadSession = state.user !== null;
    setLoggedOut();
    if (hadSession) showError('Your session has ended. Please log in again.');
    return;
  }
  if (!(err instanceof ApiError)) console.error(err);
  showError(errorMessage(err, service), err && err.body && err.body.request_id);
}

// ---------------------------------------------------------------- banners

function setBanner(testid, message, reference) {
  const banner = $(testid);
  const text = banner.querySelector('.banner-text');
  text.replaceChildren(message);
  if (reference) text.append(h('span', { class: 'banner-ref', text: ` Reference: ${reference}` }));
  show(banner, true);
}

function showError(message, reference) {
  hideBanner('notice-banner');
  setBanner('error-banner', message, reference);
}

function showNotice(message) {
  hideBanner('error-banner');
  setBanner('notice-banner', message);
}

function hideBanner(testid) {
  show($(testid), false);
}

// ---------------------------------------------------------------- auth

function loginHref() {
  const returnTo = window.location.pathname + window.location.search;
  return `/auth/login?return_to=${encodeURIComponent(returnTo || '/')}`;
}

/** Only a same-origin path may be used as the logout target. */
function safeLogoutUrl(url) {
  if (typeof url === 'string' && url.startsWith('/') && !url.startsWith('//') && !url.includes('\\')) {
    return url;
  }
  return '/auth/logout';
}

function setLoggedOut() {
  state.user = null;
  state.products = [];
  state.orders = [];
  state.cart = new Map();
  clearTimeout(state.expiryTimer);
  document.body.classList.remove('is-logged-in');

  show($('auth-pending'), false);
  const login = $('login-button');
  login.href = loginHref();
  $('welcome-login-button').href = loginHref();
  show(login, true);
  show(document.querySelector('.user'), false);
  show($('shop'), false);
  show($('welcome-panel'), true);
}

function setLoggedIn(user) {
  state.user = user;
  document.body.classList.add('is-logged-in');
  show($('auth-pending'), false);
  show($('login-button'), false);
  show($('welcome-panel'), false);
  const name = typeof user.name === 'string' && user.name ? user.name : user.sub;
  const userName = $('user-name');
  userName.textContent = name;
  userName.title = typeof user.email === 'string' ? user.email : '';
  $('logout-button').href = safeLogoutUrl(user.logout_url);
  show(document.querySelector('.user'), true);
  show($('shop'), true);
  loadCart();
  renderCart();
  scheduleExpiryCheck(user.session_expires_at);
}

/** Re-checks the session when it is due to expire, so the page never shows stale state. */
function scheduleExpiryCheck(expiresAt) {
  clearTimeout(state.expiryTimer);
  if (typeof expiresAt !== 'number') return;
  const delay = Math.min(expiresAt * 1000 - Date.now() + 1000, 2 ** 31 - 1);
  state.expiryTimer = setTimeout(checkSession, Math.max(delay, 5000));
}

async function checkSession() {
  try {
    const user = await api('/auth/user');
    state.user = user;
    scheduleExpiryCheck(user.session_expires_at);
  } catch (err) {
    handleError(err, 'auth');
  }
}

// ---------------------------------------------------------------- cart

function cartKey() {
  return state.user ? CART_KEY_PREFIX + state.user.sub : null;
}

/** The cart survives a reload (sessionStorage, per user); it holds no secrets. */
function loadCart() {
  state.cart = new Map();
  const key = cartKey();
  if (!key) return;
  try {
    const saved = JSON.parse(sessionStorage.getItem(key) || '[]');
    for (const item of Array.isArray(saved) ? saved : []) {
      if (item && typeof item.sku === 'string' && Number.isInteger(item.quantity) && item.quantity > 0) {
        state.cart.set(item.sku, item);
      }
    }
  } catch {
    sessionStorage.removeItem(key);
  }
}

function saveCart() {
  const key = cartKey();
  if (!key) return;
  try {
    sessionStorage.setItem(key, JSON.stringify([...state.cart.values()]));
  } catch {
    // Storage full or disabled: the cart still works for this page view.
  }
}

function clampQuantity(value) {
  const n = Math.floor(Number(value));
  if (!Number.isFinite(n) || n < 1) return 1;
  return Math.min(n, MAX_QUANTITY);
}

function addToCart(product, quantity) {
  const existing = state.cart.get(product.sku);
  const total = clampQuantity((existing ? existing.quantity : 0) + quantity);
  state.cart.set(product.sku, {
    sku: product.sku,
    name: product.name,
    price_cents: product.price_cents,
    currency: product.currency,
    quantity: total,
  });
  saveCart();
  renderCart();
  announce(`Added ${quantity} × ${product.name} to your cart.`);
}

function setQuantity(sku, quantity) {
  const item = state.cart.get(sku);
  if (!item) return;
  if (quantity <= 0) state.cart.delete(sku);
  else item.quantity = clampQuantity(quantity);
  saveCart();
  renderCart();
}

function clearCart() {
  state.cart.clear();
  saveCart();
  renderCart();
}

function announce(message) {
  const live = document.getElementById('sr-live');
  live.textContent = '';
  // A fresh text node makes screen readers announce a repeated message too.
  requestAnimationFrame(() => {
    live.textContent = message;
  });
}

function renderCart() {
  const items = [...state.cart.values()];
  const list = $('cart-items');
  list.replaceChildren(
    ...items.map((item) => {
      const qtyId = `cart-qty-${item.sku}`;
      const input = h('input', {
        id: qtyId,
        class: 'qty-input',
        type: 'number',
        inputmode: 'numeric',
        min: 1,
        max: MAX_QUANTITY,
        value: item.quantity,
        testid: 'cart-quantity',
        onchange: (e) => setQuantity(item.sku, clampQuantity(e.target.value)),
      });
      return h(
        'li',
        { class: 'cart-item', testid: 'cart-item', data: { sku: item.sku } },
        h('span', { class: 'cart-item-name', text: item.name }),
        h(
          'span',
          { class: 'cart-item-controls' },
          h('label', { class: 'sr-only', for: qtyId, text: `Quantity of ${item.name}` }),
          h('button', {
            type: 'button',
            class: 'btn btn-icon',
            'aria-label': `One less ${item.name}`,
            text: '−',
            onclick: () => setQuantity(item.sku, item.quantity - 1),
          }),
          input,
          h('button', {
            type: 'button',
            class: 'btn btn-icon',
            'aria-label': `One more ${item.name}`,
            text: '+',
            disabled: item.quantity >= MAX_QUANTITY,
            onclick: () => setQuantity(item.sku, item.quantity + 1),
          }),
        ),
        h('span', {
          class: 'cart-item-price',
          text: formatMoney(item.price_cents * item.quantity, item.currency),
        }),
        h('button', {
          type: 'button',
          class: 'btn btn-link cart-remove',
          testid: 'cart-remove',
          'aria-label': `Remove ${item.name} from cart`,
          text: 'Remove',
          onclick: () => setQuantity(item.sku, 0),
        }),
      );
    }),
  );

  const count = items.reduce((n, i) => n + i.quantity, 0);
  $('cart-count').textContent = String(count);
  $('cart-link').setAttribute('aria-label', `Cart, ${count} ${count === 1 ? 'item' : 'items'}`);
  show($('cart-empty'), items.length === 0);
  show($('cart-total-row'), items.length > 0);
  $('cart-total').textContent = formatTotal(
    items.map((i) => ({ cents: i.price_cents * i.quantity, currency: i.currency })),
  );
  const place = $('place-order');
  place.disabled = items.length === 0 || state.placing;
  place.textContent = state.placing ? 'Placing order…' : 'Place order';
  place.setAttribute('aria-busy', String(state.placing));
}

// ---------------------------------------------------------------- products

async function loadProducts() {
  const status = $('products-status');
  status.textContent = 'Loading products…';
  show(status, true);
  try {
    const products = await api('/api/catalog/products');
    state.products = Array.isArray(products) ? products : [];
    renderProducts();
  } catch (err) {
    status.textContent = 'Products could not be loaded.';
    handleError(err, 'catalog');
  }
}

function renderProducts() {
  const status = $('products-status');
  show(status, state.products.length === 0);
  if (state.products.length === 0) status.textContent = 'No products are available right now.';
  $('products-list').replaceChildren(...state.products.map(productCard));
}

function productCard(product) {
  const qtyId = `qty-${product.sku}`;
  const qty = h('input', {
    id: qtyId,
    class: 'qty-input',
    type: 'number',
    inputmode: 'numeric',
    min: 1,
    max: MAX_QUANTITY,
    value: 1,
    testid: 'quantity',
  });
  const label = h('span', { text: 'Add to cart' });
  const addButton = h(
    'button',
    { type: 'submit', class: 'btn btn-primary', testid: 'add-to-cart' },
    label,
    h('span', { class: 'sr-only', text: `: ${product.name}` }),
  );
  const form = h(
    'form',
    {
      class: 'product-actions',
      onsubmit: (e) => {
        e.preventDefault();
        const quantity = clampQuantity(qty.value);
        qty.value = '1';
        addToCart(product, quantity);
        addButton.classList.add('is-added');
        label.textContent = 'Added ✓';
        setTimeout(() => {
          addButton.classList.remove('is-added');
          label.textContent = 'Add to cart';
        }, 1200);
      },
    },
    h('label', { for: qtyId, class: 'sr-only', text: `Quantity of ${product.name}` }),
    qty,
    addButton,
  );

  const thumb = h('div', { class: 'product-thumb', 'aria-hidden': 'true', text: (product.name || '?').charAt(0) });
  thumb.style.setProperty('--hue', String(hueFor(product.sku)));

  return h(
    'li',
    { class: 'product-card', testid: 'product-card', data: { sku: product.sku } },
    thumb,
    h(
      'div',
      { class: 'product-body' },
      h('h3', { class: 'product-name', testid: 'product-name', text: product.name }),
      h('p', { class: 'product-desc', text: product.description || '' }),
      h('p', {
        class: 'product-price',
        testid: 'product-price',
        text: formatMoney(product.price_cents, product.currency),
      }),
    ),
    form,
  );
}

// ---------------------------------------------------------------- orders

async function loadOrders({ quiet = false } = {}) {
  const status = $('orders-status');
  if (!quiet) {
    status.textContent = 'Loading orders…';
    show(status, state.orders.length === 0);
  }
  try {
    const orders = await api('/api/orders');
    state.orders = Array.isArray(orders) ? orders : [];
    renderOrders();
    schedulePendingPoll();
  } catch (err) {
    if (!quiet) {
      status.textContent = 'Orders could not be loaded.';
      handleError(err, 'orders');
    } else if (err instanceof ApiError && err.status === 401) {
      handleError(err, 'orders');
    }
  }
}

/** Pending orders settle on their own; poll a bounded number of times. */
function schedulePendingPoll() {
  const pending = state.orders.some((o) => o.status === 'pending');
  if (!pending || state.pendingPolls >= PENDING_POLL_LIMIT) {
    if (!pending) state.pendingPolls = 0;
    return;
  }
  state.pendingPolls += 1;
  setTimeout(() => {
    if (state.user) loadOrders({ quiet: true });
  }, PENDING_POLL_MS);
}

function renderOrders() {
  const status = $('orders-status');
  show(status, state.orders.length === 0);
  if (state.orders.length === 0) status.textContent = 'You have not placed any orders yet.';
  $('orders-list').replaceChildren(...state.orders.map(orderCard));
}

function orderCard(order) {
  const statusText = ['confirmed', 'failed', 'pending'].includes(order.status) ? order.status : 'unknown';
  const created = toDate(order.created_at);
  const items = Array.isArray(order.items) ? order.items : [];
  const id = String(order.id ?? '');
  return h(
    'li',
    {
      class: `order-card order-${statusText}`,
      testid: 'order-card',
      data: { orderId: id, status: statusText },
    },
    h(
      'div',
      { class: 'order-head' },
      h(
        'div',
        {},
        h('h3', { class: 'order-id', text: `Order ${id.length > 12 ? `${id.slice(0, 8)}…` : id}`, title: id }),
        created
          ? h('time', { class: 'muted order-date', datetime: created.toISOString(), text: dateFormat.format(created) })
          : null,
      ),
      h(
        'span',
        { class: `badge badge-${statusText}`, testid: 'order-status', data: { status: statusText } },
        order.status || 'unknown',
      ),
    ),
    statusText === 'failed'
      ? h('p', {
          class: 'order-reason',
          testid: 'order-reason',
          text: REASON_SHORT[order.reason] || (order.reason ? `${humanize(order.reason)}.` : 'The order failed.'),
        })
      : null,
    h(
      'ul',
      { class: 'order-items' },
      items.map((item) =>
        h(
          'li',
          {},
          h('span', { text: `${item.quantity} × ${item.name || item.sku}` }),
          h('span', {
            class: 'muted',
            text: formatMoney((item.price_cents || 0) * (item.quantity || 0), order.currency),
          }),
        ),
      ),
    ),
    h(
      'div',
      { class: 'order-total' },
      h('span', { text: statusText === 'failed' ? 'Total (not charged)' : 'Total' }),
      h('strong', { text: formatMoney(order.total_cents || 0, order.currency) }),
    ),
  );
}

async function placeOrder() {
  if (state.placing || state.cart.size === 0) return;
  state.placing = true;
  renderCart();
  const items = [...state.cart.values()].map((i) => ({ sku: i.sku, quantity: i.quantity }));
  try {
    const order = await api('/api/orders', { method: 'POST', body: { items } });
    state.orders = [order, ...state.orders.filter((o) => o.id !== order.id)];
    renderOrders();
    const card = $('orders-list').firstElementChild;
    if (card) card.scrollIntoView({ block: 'center' });
    if (order.status === 'confirmed') {
      clearCart();
      showNotice(`Order confirmed — ${formatMoney(order.total_cents, order.currency)} charged. Thank you!`);
    } else if (order.status === 'pending') {
      clearCart();
      showNotice('Your order was received and is being processed.');
    } else {
      // The cart is kept so the person can try again once the cause is gone.
      showError(REASON_BANNER[order.reason] || `Your order could not be completed (${humanize(order.reason)}). You were not charged.`);
    }
    loadOrders({ quiet: true });
  } catch (err) {
    handleError(err, 'orders');
  } finally {
    state.placing = false;
    if (state.user) renderCart();
  }
}

// ---------------------------------------------------------------- start

function wireStaticControls() {
  for (const banner of document.querySelectorAll('.banner')) {
    banner.querySelector('.banner-close').addEventListener('click', () => show(banner, false));
  }
  $('place-order').addEventListener('click', placeOrder);
  $('reload-products').addEventListener('click', () => loadProducts());
  $('reload-orders').addEventListener('click', () => loadOrders());
  $('logout-button').addEventListener('click', () => {
    const key = cartKey();
    if (key) sessionStorage.removeItem(key);
  });
  $('cart-link').addEventListener('click', (e) => {
    e.preventDefault();
    const cart = $('cart');
    cart.scrollIntoView({ behavior: 'smooth', block: 'start' });
    cart.focus({ preventScroll: true });
  });
  document.body.append(h('div', { id: 'sr-live', class: 'sr-only', 'aria-live': 'polite' }));
}

/** The edge may send the browser back with `?error=` when a login did not complete. */
function takeLoginError() {
  const params = new URLSearchParams(window.location.search);
  const error = params.get('error') || params.get('login_error');
  if (!error) return;
  params.delete('error');
  params.delete('login_error');
  params.delete('error_description');
  const query = params.toString();
  window.history.replaceState(null, '', window.location.pathname + (query ? `?${query}` : ''));
  showError(`Login did not complete (${humanize(error)}). Please try again.`);
}

async function start() {
  wireStaticControls();
  takeLoginError();
  let user;
  try {
    user = await api('/auth/user');
  } catch (err) {
    setLoggedOut();
    if (!(err instanceof ApiError && err.status === 401)) handleError(err, 'auth');
    return;
  }
  setLoggedIn(user);
  await Promise.all([loadProducts(), loadOrders()]);
}

start();
