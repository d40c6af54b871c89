// A third-party certified OpenID Provider (panva/oidc-provider) for meshgate's
// interop tests: one confidential client, fixed test accounts, the built-in
// dev login/consent pages. Loopback and plain HTTP only; never expose it.
//
// Configuration (environment; PORT may also be the first argument):
//   PORT                       port on 127.0.0.1 (required); issuer is http://127.0.0.1:PORT
//   CLIENT_ID                  default "meshgate-bff"
//   CLIENT_SECRET              default "meshgate-bff-secret" (client_secret_basic or _post)
//   REDIRECT_URIS              space- or comma-separated, at least one (required)
//   POST_LOGOUT_REDIRECT_URIS  space- or comma-separated, optional
//   BACKCHANNEL_LOGOUT_URI     optional; logout tokens carry `sid`
//   ACCESS_TTL                 access token lifetime in seconds, default 300
//   ID_TOKEN_TTL               ID token lifetime in seconds, default 3600
//   REFRESH_TTL                refresh token lifetime in seconds, default 86400
//   API_RESOURCE               resource indicator (absolute URI) that access tokens
//                              are issued for, default "urn:meshgate:shop-api"
//   API_AUDIENCE               `aud` of those access tokens, default "shop-api"
//   ACCESS_TOKEN_FORMAT        "jwt" (default) or "opaque"
//
// Prints `listening on http://127.0.0.1:PORT` on stdout once it accepts
// connections. Accounts: alice and bob, each with its name as password; any other login
// ends the authorization with error=access_denied at the client's redirect_uri.

import { generateKeyPairSync, randomBytes } from 'node:crypto';

import Provider from 'oidc-provider';

function fail(message) {
  console.error(`oidc-provider test server: ${message}`);
  process.exit(2);
}

function env(name, fallback) {
  const value = process.env[name];
  return value === undefined || value === '' ? fallback : value;
}

function list(name) {
  return env(name, '').split(/[\s,]+/).filter(Boolean);
}

function seconds(name, fallback) {
  const raw = env(name, String(fallback));
  const value = Number(raw);
  if (!Number.isSafeInteger(value) || value <= 0) fail(`${name}=${raw} is not a positive integer`);
  return value;
}

const port = Number(process.argv[2] ?? env('PORT', ''));
if (!Number.isInteger(port) || port <= 0 || port > 65535) fail('set PORT (or pass it as the first argument)');
const issuer = `http://127.0.0.1:${port}`;

const redirectUris = list('REDIRECT_URIS');
if (redirectUris.length === 0) fail('set REDIRECT_URIS');
const postLogoutRedirectUris = list('POST_LOGOUT_REDIRECT_URIS');
const backchannelLogoutUri = env('BACKCHANNEL_LOGOUT_URI', undefined);

const accessTtl = seconds('ACCESS_TTL', 300);
const idTokenTtl = seconds('ID_TOKEN_TTL', 3600);
const refreshTtl = seconds('REFRESH_TTL', 86400);
const apiResource = env('API_RESOURCE', 'urn:meshgate:shop-api');
const apiAudience = env('API_AUDIENCE', 'shop-api');
const accessTokenFormat = env('ACCESS_TOKEN_FORMAT', 'jwt');
if (!['jwt', 'opaque'].includes(accessTokenFormat)) fail(`ACCESS_TOKEN_FORMAT=${accessTokenFormat} is not jwt or opaque`);

const accounts = {
  alice: {
    sub: 'alice',
    name: 'Alice Example',
    given_name: 'Alice',
    family_name: 'Example',
    preferred_username: 'alice',
    email: 'alice@example.com',
    email_verified: true,
  },
  bob: {
    sub: 'bob',
    name: 'Bob Example',
    given_name: 'Bob',
    family_name: 'Example',
    preferred_username: 'bob',
    email: 'bob@example.com',
    email_verified: true,
  },
};

// A fresh RS256 signing key per process: tests must fetch the JWKS, as a real
// relying party would, instead of trusting a key baked into a fixture.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: randomBytes(8).toString('hex'), alg: 'RS256', use: 'sig' };

const client = {
  client_id: env('CLIENT_ID', 'meshgate-bff'),
  client_secret: env('CLIENT_SECRET', 'meshgate-bff-secret'),
  client_name: 'meshgate BFF (test)',
  application_type: 'web',
  redirect_uris: redirectUris,
  post_logout_redirect_uris: postLogoutRedirectUris,
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  // client_secret_post is accepted as well: oidc-provider treats the two
  // secret methods as interchangeable.
  token_endpoint_auth_method: 'client_secret_basic',
  id_token_signed_response_alg: 'RS256',
  scope: 'openid profile email offline_access',
  ...(backchannelLogoutUri
    ? { backchannel_logout_uri: backchannelLogoutUri, backchannel_logout_session_required: true }
    : {}),
};

const provider = new Provider(issuer, {
  clients: [client],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  scopes: ['openid', 'profile', 'email', 'offline_access'],
  claims: {
    openid: ['sub'],
    profile: ['name', 'given_name', 'family_name', 'preferred_username'],
    email: ['email', 'email_verified'],
  },
  // Profile and email claims go into the ID token even when the access token
  // could reach userinfo, so a relying party needs no userinfo call.
  conformIdTokenClaims: false,
  responseTypes: ['code'],
  pkce: { required: () => true },
  async findAccount(_ctx, sub) {
    const claims = accounts[sub];
    if (!claims) return undefined;
    return { accountId: sub, async claims() { return { ...claims }; } };
  },
  // oidc-provider keeps `offline_access` only when the authorization request
  // says prompt=consent; issuing refresh tokens to any client allowed the
  // grant makes the code exchange return one whatever the relying party's
  // prompt choice.
  async issueRefreshToken(_ctx, c, source) {
    return c.grantTypeAllowed('refresh_token') && source.scopes.has('openid');
  },
  rotateRefreshToken: () => true,
  ttl: {
    AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? accessTtl,
    AuthorizationCode: 60,
    IdToken: idTokenTtl,
    RefreshToken: refreshTtl,
    Interaction: 600,
    Session: 86400,
    Grant: 86400,
  },
  features: {
    devInteractions: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    backchannelLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // Every authorization request is for the API unless it names a resource.
      defaultResource: (_ctx, _client, oneOf) => oneOf ?? apiResource,
      // ...and the code exchange keeps it even though the scope has `openid`
      // (otherwise oidc-provider issues an opaque userinfo token instead).
      useGrantedResource: () => true,
      getResourceServerInfo(_ctx, resource) {
        if (resource !== apiResource) throw new Provider.errors.InvalidTarget();
        return {
          // The OIDC scopes, so that the access token and the token response carry the
          // granted scope (with '', oidc-provider answers `"scope": ""`).
          scope: 'openid profile email offline_access',
          audience: apiAudience,
          accessTokenTTL: accessTtl,
          accessTokenFormat,
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  // oidc-provider refuses outgoing requests to special-use addresses (SSRF protection,
  // applied through `options.dispatcher`); every receiver in these tests, such as the
  // back-channel logout endpoint, is on loopback.
  fetch(url, options) {
    const { dispatcher: _ssrfGuard, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
  // CORS is for public (browser) clients; the BFF talks to the provider
  // server-to-server.
  clientBasedCORS: () => false,
  renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html><html><head><title>oidc-provider error</title></head><body>${Object.entries(out)
      .map(([k, v]) => `<pre id="${k}">${k}: ${String(v).replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`)}</pre>`)
      .join('')}</body></html>`;
  },
});

// The dev login form takes any login and password; an unknown account would then crash
// the authorization resume (500). Check them first: the password is the account's name,
// and a failed login ends the request with access_denied at the client's redirect_uri.
provider.use(async (ctx, next) => {
  if (ctx.method !== 'POST' || !/^\/interaction\/[^/]+$/.test(ctx.path)) return next();
  const chunks = [];
  for await (const chunk of ctx.req) chunks.push(chunk);
  const raw = Buffer.concat(chunks).toString('utf8');
  const form = new URLSearchParams(raw);
  if (form.get('prompt') === 'login') {
    const login = form.get('login') ?? '';
    if (!accounts[login] || form.get('password') !== login) {
      ctx.respond = false;
      return provider.interactionFinished(ctx.req, ctx.res, {
        error: 'access_denied',
        error_description: 'unknown account or wrong password',
      }, { mergeWithLastSubmission: false });
    }
  }
  // oidc-provider reads an already consumed body from here (and says so once on stderr).
  ctx.req.body = raw;
  return next();
});

// Failures the provider only reports as events, on stderr for the test's failure output.
for (const event of ['server_error', 'backchannel.error', 'grant.error', 'end_session.error']) {
  provider.on(event, (...args) => {
    const err = args.find((a) => a instanceof Error);
    console.error(`oidc-provider ${event}: ${err?.stack ?? err ?? ''}`);
  });
}

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`listening on ${issuer}`);
});
server.on('error', (err) => fail(`listen on 127.0.0.1:${port}: ${err.message}`));

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
