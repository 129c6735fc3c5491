// End-to-end test: the official MCP client (@modelcontextprotocol/sdk, pinned in package.json)
// authorizes itself against an MCP server behind jwks-sidecar, with the `oidc-provider`
// package as the authorization server. Everything listens on 127.0.0.1; keys are made per run.
//
//   node e2e/oidc/mcp.mjs --sidecar target/debug/jwks-sidecar [--keep]
//
// In this process: the provider (authorization code + PKCE S256, dynamic client registration,
// RFC 8707 resource indicators issuing RFC 9068 JWT access tokens, a headless login/consent
// at /interaction/<uid>) and the MCP server (SDK McpServer, stateless Streamable HTTP at
// /mcp, one tool `whoami` that answers with the identity headers it received). As a child
// process: the sidecar, with [resource] (RFC 9728 protected-resource metadata) and a rule
// requiring the scope mcp:tools on /mcp. The SDK client then finds its way on its own: the
// 401's resource_metadata, the metadata document, the provider's discovery, registration,
// the authorization (the "browser" is plain HTTP here), the token, and the tool call.
//
// Output: one line per check, `ok - <text>` or `FAIL - <text>: <detail>`, `# ...` lines of
// information (the URLs the SDK requested), and last `mcp-e2e: N passed, M failed`.
// Exit 0 only when every check passed. The run is bounded (90 s); the sidecar is killed on
// any exit. --keep (or MCP_E2E_KEEP=1) keeps the temp dir (sidecar config and log).
import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { auth, UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import Provider, { errors } from 'oidc-provider';

const DEADLINE_MS = 90_000;
const SCOPE = 'mcp:tools';
const ACCOUNT = 'alice';
const ACR = 'urn:e2e:mfa';

// ---------------------------------------------------------------------------------------------
// Report

let passed = 0;
let failed = 0;
const say = (line) => process.stdout.write(`${line}\n`);
const info = (line) => say(`# ${line}`);
let finished = false; // set once finish() starts: later checks and aborts are not reported
function check(ok, text, detail) {
  if (finished) return ok;
  if (ok) {
    passed += 1;
    say(`ok - ${text}`);
  } else {
    failed += 1;
    say(`FAIL - ${text}: ${detail ?? 'false'}`);
  }
  return ok;
}
const show = (v) => {
  const s = typeof v === 'string' ? v : JSON.stringify(v);
  return s && s.length > 400 ? `${s.slice(0, 400)}...` : s;
};

// ---------------------------------------------------------------------------------------------
// Cleanup: the sidecar child is killed on every exit path; the temp dir is removed.

const state = { sidecar: null, servers: [], dir: null, keep: false, sidecarLog: null };

function killSidecarNow() {
  const c = state.sidecar;
  if (c && c.exitCode === null && c.signalCode === null) {
    try { c.kill('SIGKILL'); } catch { /* gone */ }
  }
}
process.on('exit', () => {
  killSidecarNow();
  if (state.dir && !state.keep) {
    try { fs.rmSync(state.dir, { recursive: true, force: true }); } catch { /* best effort */ }
  }
});

function logTail(file, lines = 40) {
  try {
    const text = fs.readFileSync(file, 'utf8').trimEnd().split('\n');
    return text.slice(-lines).join('\n');
  } catch (err) {
    return `(no log: ${err.message})`;
  }
}

async function finish(code) {
  if (finished) return;
  finished = true;
  if (failed > 0 && state.sidecarLog) {
    info(`sidecar log (last 40 lines of ${state.sidecarLog}):`);
    for (const l of logTail(state.sidecarLog).split('\n')) info(`  ${l}`);
  }
  await stopSidecar();
  for (const s of state.servers) {
    s.closeAllConnections?.();
    s.close();
  }
  if (state.keep && state.dir) info(`kept ${state.dir}`);
  say(`mcp-e2e: ${passed} passed, ${failed} failed`);
  process.exit(code ?? (failed > 0 ? 1 : 0));
}

function abort(why) {
  if (finished) return;
  failed += 1;
  say(`FAIL - run aborted: ${why}`);
  finish(1);
}
process.on('uncaughtException', (err) => abort(`uncaught: ${err?.stack || err}`));
process.on('unhandledRejection', (err) => abort(`unhandled rejection: ${err?.stack || err}`));
process.on('SIGINT', () => abort('SIGINT'));
process.on('SIGTERM', () => abort('SIGTERM'));
// Not unref()'d: it also keeps the process alive while main() waits on something without a handle.
setTimeout(() => abort(`not finished within ${DEADLINE_MS / 1000} s`), DEADLINE_MS);
process.on('beforeExit', () => abort('the event loop emptied before the run finished'));

// ---------------------------------------------------------------------------------------------
// Helpers

const sleep = (ms) => new Promise((r) => { setTimeout(r, ms); });

/** A port free at this moment on 127.0.0.1 (bind 0, read, close). */
function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function listen(server) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server.address().port));
  });
}

function decodeJwt(token) {
  const [h, p] = String(token).split('.');
  return {
    header: JSON.parse(Buffer.from(h, 'base64url').toString()),
    payload: JSON.parse(Buffer.from(p, 'base64url').toString()),
  };
}

/** Fetch with a per-request bound (these are all loopback requests). */
const timedFetch = (url, init = {}) => fetch(url, { signal: AbortSignal.timeout(15_000), ...init });

async function jsonOrText(res) {
  const text = await res.text();
  try { return JSON.parse(text); } catch { return text; }
}

// ---------------------------------------------------------------------------------------------
// 1. The authorization server: oidc-provider, in this process.

async function startProvider() {
  const server = http.createServer();
  state.servers.push(server);
  const port = await listen(server);
  const issuer = `http://127.0.0.1:${port}`;
  const jwk = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  // Filled in once the sidecar's port (hence the resource URL) is known; before that the
  // provider knows no resource server, and refuses every resource indicator.
  const resources = new Map();
  const interactions = [];

  const provider = new Provider(issuer, {
    jwks: { keys: [{ ...jwk, kid: `e2e-${crypto.randomBytes(4).toString('hex')}`, alg: 'RS256', use: 'sig' }] },
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
    // Resource scopes must also be known to the provider as scopes: dynamic registration
    // validates the client's `scope` against this list, and the SDK registers with the scope
    // the resource asks for.
    scopes: ['openid', 'offline_access', SCOPE],
    claims: { openid: ['sub'], profile: ['name'] },
    findAccount: async (ctx, id) => (id === ACCOUNT
      ? { accountId: id, claims: async () => ({ sub: id, name: 'Alice' }) }
      : undefined),
    interactions: { url: async (ctx, interaction) => `/interaction/${interaction.uid}` },
    pkce: { required: () => true },
    ttl: { AccessToken: 300, AuthorizationCode: 60, IdToken: 300, Grant: 600, Interaction: 300, Session: 600 },
    features: {
      devInteractions: { enabled: false },
      registration: { enabled: true },
      introspection: { enabled: false },
      revocation: { enabled: false },
      resourceIndicators: {
        enabled: true,
        // The client names its resource (the SDK sends the metadata's `resource`).
        defaultResource: async () => undefined,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, indicator) => {
          const rs = resources.get(indicator);
          if (!rs) throw new errors.InvalidTarget();
          return rs;
        },
      },
    },
  });
  provider.on('server_error', (ctx, err) => process.stderr.write(`provider: server_error: ${err?.stack || err}\n`));

  // The headless user: alice logs in (acr urn:e2e:mfa) and consents to what is asked.
  async function interaction(req, res) {
    const details = await provider.interactionDetails(req, res);
    const { prompt, params, session } = details;
    let result;
    if (prompt.name === 'login') {
      result = { login: { accountId: ACCOUNT, acr: ACR } };
    } else if (prompt.name === 'consent') {
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      const d = prompt.details;
      // mcp:tools is in `scopes` (see above), so the provider also counts it as an OIDC scope
      // to consent to, besides the resource scope.
      if (d.missingOIDCScope?.length) grant.addOIDCScope(d.missingOIDCScope.join(' '));
      if (d.missingOIDCClaims?.length) grant.addOIDCClaims(d.missingOIDCClaims);
      for (const [indicator, scopes] of Object.entries(d.missingResourceScopes ?? {})) {
        if (resources.has(indicator) && scopes.includes(SCOPE)) grant.addResourceScope(indicator, SCOPE);
      }
      result = { consent: { grantId: await grant.save() } };
    } else {
      throw new Error(`unexpected prompt ${prompt.name}`);
    }
    interactions.push({ uid: details.uid, prompt: prompt.name, reasons: prompt.reasons, client: params.client_id, scope: params.scope, resource: params.resource });
    await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
  }

  const callback = provider.callback();
  server.on('request', (req, res) => {
    if (/^\/interaction\/[^/]+$/.test(new URL(req.url, issuer).pathname)) {
      interaction(req, res).catch((err) => {
        process.stderr.write(`provider: interaction: ${err?.stack || err}\n`);
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(`interaction failed: ${err?.message || err}\n`);
      });
    } else {
      callback(req, res);
    }
  });

  return {
    provider,
    issuer,
    interactions,
    addResource(resource) {
      resources.set(resource, {
        scope: SCOPE,
        audience: resource,
        accessTokenTTL: 300,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      });
    },
  };
}

// ---------------------------------------------------------------------------------------------
// 2. The MCP server (the app behind the sidecar): stateless Streamable HTTP on /mcp.

async function startMcpServer() {
  const seen = []; // every request that reached the app: method, url, x-jwt-* headers
  const server = http.createServer((req, res) => {
    const identity = Object.fromEntries(Object.entries(req.headers).filter(([k]) => /^x[-_]jwt[-_]/i.test(k)));
    seen.push({ method: req.method, url: req.url, identity, authorization: 'authorization' in req.headers });
    if (new URL(req.url, 'http://app').pathname !== '/mcp') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    if (req.method !== 'POST') {
      // Stateless: no standalone SSE stream, no session to delete.
      res.writeHead(405, { allow: 'POST', 'content-type': 'application/json' })
        .end(JSON.stringify({ jsonrpc: '2.0', error: { code: -32000, message: 'Method not allowed.' }, id: null }));
      return;
    }
    const mcp = new McpServer({ name: 'jwks-sidecar-e2e', version: '0.0.0' });
    mcp.registerTool('whoami', {
      description: 'The identity headers this request received from the sidecar',
    }, async (extra) => {
      const headers = extra.requestInfo?.headers ?? {};
      const identity = Object.fromEntries(Object.entries(headers).filter(([k]) => /^x[-_]jwt[-_]/i.test(k)));
      const authorization = headers.authorization;
      const body = {
        identity,
        authorization: authorization !== undefined,
        authorization_scheme: authorization ? authorization.split(' ')[0] : null,
      };
      return { content: [{ type: 'text', text: JSON.stringify(body) }] };
    });
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: true });
    res.on('close', () => { transport.close(); mcp.close(); });
    mcp.connect(transport)
      .then(() => transport.handleRequest(req, res))
      .catch((err) => {
        process.stderr.write(`mcp server: ${err?.stack || err}\n`);
        if (!res.headersSent) res.writeHead(500).end();
      });
  });
  state.servers.push(server);
  const port = await listen(server);
  return { port, seen };
}

// ---------------------------------------------------------------------------------------------
// 3. The sidecar, as a child process.

function sidecarConfig({ proxyPort, adminPort, upstreamPort, issuer, resource }) {
  return `# written by e2e/oidc/mcp.mjs
[proxy]
listen = "127.0.0.1:${proxyPort}"
upstream = "http://127.0.0.1:${upstreamPort}"
shutdown_grace = "1s"

[admin]
listen = "127.0.0.1:${adminPort}"

[log]
format = "json"
level = "info"

[reload]
watch = false

# RFC 9728: the metadata MCP clients start from. authorization_servers defaults to the
# providers' issuers.
[resource]
resource = "${resource}"
scopes_supported = ["${SCOPE}"]
resource_name = "jwks-sidecar MCP e2e"

[[rules]]
name = "mcp"
match = { path_prefix = "/mcp" }
require = { scopes = ["${SCOPE}"] }

[default_rule]
action = "deny"

[[providers]]
name = "oidc"
issuer = "${issuer}"
discovery = true
audiences = ["${resource}"]
algorithms = ["RS256"]
# oidc-provider's JWT access tokens follow RFC 9068; its ID tokens are refused as such.
profile = "rfc9068"

# A [[providers]] block forwards no claim unless mapped here.
[providers.claim_headers]
sub = "x-jwt-sub"
iss = "x-jwt-iss"
client_id = "x-jwt-client-id"
scope = "x-jwt-scope"
`;
}

async function waitReady(adminPort, child) {
  const until = Date.now() + 20_000;
  let last = 'no answer';
  while (Date.now() < until) {
    if (child.exitCode !== null || child.signalCode !== null) {
      return `the sidecar exited (${child.exitCode ?? child.signalCode})`;
    }
    try {
      const res = await timedFetch(`http://127.0.0.1:${adminPort}/readyz?wait=10`);
      const body = await res.text();
      if (res.status === 200) return null;
      last = `readyz ${res.status}: ${body.trim()}`;
    } catch (err) {
      last = `readyz: ${err.cause?.code || err.message}`;
      await sleep(100);
    }
  }
  return `not ready within 20 s (${last})`;
}

async function startSidecar(bin, provider, upstreamPort) {
  const file = path.join(state.dir, 'sidecar.toml');
  const log = path.join(state.dir, 'sidecar.log');
  state.sidecarLog = log;
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('JWKS_SIDECAR_')));
  env.RUST_LOG = 'info';
  for (let attempt = 1; attempt <= 3; attempt += 1) {
    const proxyPort = await freePort();
    let adminPort = await freePort();
    while (adminPort === proxyPort) adminPort = await freePort();
    const proxy = `http://127.0.0.1:${proxyPort}`;
    const resource = `${proxy}/mcp`;
    provider.addResource(resource);
    fs.writeFileSync(file, sidecarConfig({ proxyPort, adminPort, upstreamPort, issuer: provider.issuer, resource }));
    const fd = fs.openSync(log, 'w');
    const child = spawn(bin, ['--config', file], { env, stdio: ['ignore', fd, fd] });
    fs.closeSync(fd);
    state.sidecar = child;
    const spawned = await new Promise((resolve) => {
      child.once('spawn', () => resolve(null));
      child.once('error', (err) => resolve(err));
    });
    if (spawned) throw new Error(`cannot run ${bin}: ${spawned.message}`);
    const why = await waitReady(adminPort, child);
    if (!why) return { proxy, resource, adminPort, file, log };
    await stopSidecar();
    const tail = logTail(log);
    if (attempt < 3 && /address already in use/i.test(tail)) {
      info(`a port was taken before the sidecar bound it (${why}); again`);
      continue;
    }
    throw new Error(`sidecar: ${why}\n${tail}`);
  }
  throw new Error('unreachable');
}

async function stopSidecar() {
  const c = state.sidecar;
  if (!c || c.exitCode !== null || c.signalCode !== null) return;
  const exited = new Promise((r) => { c.once('exit', r); });
  c.kill('SIGTERM');
  const t = setTimeout(() => killSidecarNow(), 3000);
  await Promise.race([exited, sleep(5000)]);
  clearTimeout(t);
}

// ---------------------------------------------------------------------------------------------
// 4. The client side: the SDK's OAuthClientProvider, in memory, and a headless "browser".

/** Cookies by name, for the one origin the browser visits (the provider). */
class CookieJar {
  constructor() { this.cookies = new Map(); }

  header() {
    return [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ');
  }

  take(res) {
    for (const line of res.headers.getSetCookie()) {
      const [pair, ...attrs] = line.split(';').map((s) => s.trim());
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq);
      const value = pair.slice(eq + 1);
      const expired = attrs.some((a) => {
        const [k, v] = a.split('=');
        if (k.toLowerCase() === 'max-age') return Number(v) <= 0;
        if (k.toLowerCase() === 'expires') return Date.parse(v) <= Date.now();
        return false;
      });
      if (expired || value === '') this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
  }
}

/**
 * Does a browser's job: GETs the authorization URL and follows the redirects by hand
 * (/auth -> /interaction/<uid> -> /auth/<uid> resume -> ... ) until one points at the
 * redirect URL; returns the callback's query parameters.
 */
async function browse(startUrl, redirectUrl, jar, hops) {
  let url = String(startUrl);
  for (let i = 0; i < 20; i += 1) {
    const res = await timedFetch(url, { redirect: 'manual', headers: { cookie: jar.header() } });
    jar.take(res);
    const location = res.headers.get('location');
    hops.push(`${res.status} ${new URL(url).pathname}${location ? ` -> ${location.startsWith(redirectUrl) ? redirectUrl : new URL(location, url).pathname}` : ''}`);
    if (res.status < 300 || res.status >= 400 || !location) {
      throw new Error(`browser: ${url} answered ${res.status} without a redirect: ${show(await res.text())}`);
    }
    await res.body?.cancel();
    const next = new URL(location, url).href;
    if (next.startsWith(redirectUrl)) {
      return new URL(next).searchParams;
    }
    url = next;
  }
  throw new Error('browser: more than 20 redirects');
}

/** The SDK's OAuthClientProvider, all in memory. */
class MemoryOAuthProvider {
  constructor({ redirectUrl, scope, jar, name }) {
    this._redirectUrl = redirectUrl;
    this._scope = scope;
    this.jar = jar;
    this.name = name;
    this.saved = { client: undefined, tokens: undefined, verifier: undefined };
    this.savedTokensRaw = [];
    this.authorizationUrls = [];
    this.hops = [];
    this.code = undefined;
    this._state = undefined;
  }

  get redirectUrl() { return this._redirectUrl; }

  get clientMetadata() {
    return {
      client_name: `jwks-sidecar e2e (${this.name})`,
      redirect_uris: [this._redirectUrl],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
      scope: this._scope,
    };
  }

  state() {
    this._state = crypto.randomBytes(16).toString('base64url');
    return this._state;
  }

  clientInformation() { return this.saved.client; }

  saveClientInformation(info) { this.saved.client = info; }

  tokens() { return this.saved.tokens; }

  saveTokens(tokens) {
    this.saved.tokens = tokens;
    this.savedTokensRaw.push(tokens);
  }

  saveCodeVerifier(v) { this.saved.verifier = v; }

  codeVerifier() {
    if (!this.saved.verifier) throw new Error('no code verifier saved');
    return this.saved.verifier;
  }

  async redirectToAuthorization(url) {
    this.authorizationUrls.push(new URL(url));
    const params = await browse(url, this._redirectUrl, this.jar, this.hops);
    if (params.get('error')) {
      throw new Error(`authorization refused: ${params.get('error')}: ${params.get('error_description')}`);
    }
    if (params.get('state') !== this._state) {
      throw new Error(`state mismatch: sent ${this._state}, got ${params.get('state')}`);
    }
    this.code = params.get('code');
  }
}

/** A fetch that records what the SDK asks for (method, URL, status, and a form body's keys). */
function recordingFetch(log) {
  return async (input, init) => {
    const url = input instanceof Request ? input.url : String(input);
    const method = init?.method ?? (input instanceof Request ? input.method : 'GET');
    const entry = { method, url, status: null };
    if (init?.body instanceof URLSearchParams) entry.form = Object.fromEntries(init.body);
    else if (typeof init?.body === 'string' && method === 'POST') {
      try { entry.json = JSON.parse(init.body); } catch { /* not JSON */ }
    }
    log.push(entry);
    const res = await fetch(input, init);
    entry.status = res.status;
    entry.wwwAuthenticate = res.headers.get('www-authenticate') ?? undefined;
    return res;
  };
}

function printRequests(label, log, from = 0) {
  log.slice(from).forEach((e) => {
    const rpc = e.json?.method ? ` (${e.json.method})` : '';
    info(`${label}: ${e.method} ${e.url}${rpc} -> ${e.status}`);
  });
}

const whoamiOf = (result) => JSON.parse(result.content.find((c) => c.type === 'text').text);

// ---------------------------------------------------------------------------------------------
// The run

async function main() {
  const { values: args } = parseArgs({
    options: { sidecar: { type: 'string' }, keep: { type: 'boolean', default: false } },
  });
  if (!args.sidecar) throw new Error('usage: node mcp.mjs --sidecar <path to the jwks-sidecar binary>');
  const started = Date.now();
  state.keep = args.keep || process.env.MCP_E2E_KEEP === '1';
  state.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mcp-e2e-'));

  const op = await startProvider();
  const app = await startMcpServer();
  const sc = await startSidecar(path.resolve(args.sidecar), op, app.port);
  const mcpUrl = `${sc.proxy}/mcp`;
  const metadataUrl = `${sc.proxy}/.well-known/oauth-protected-resource/mcp`;
  info(`provider ${op.issuer}, app http://127.0.0.1:${app.port}/mcp, sidecar ${sc.proxy} (admin 127.0.0.1:${sc.adminPort}), resource ${sc.resource}`);

  // -- The resource's answers without a token.
  {
    const res = await timedFetch(mcpUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' }),
    });
    const www = res.headers.get('www-authenticate') ?? '';
    await res.body?.cancel();
    check(
      res.status === 401 && www.includes(`resource_metadata="${metadataUrl}"`) && www.includes(`scope="${SCOPE}"`),
      'a request to /mcp without a token gets 401 naming the resource metadata and the scope',
      `${res.status}, WWW-Authenticate: ${www}`,
    );
    info(`401 WWW-Authenticate: ${www}`);
  }
  {
    const res = await timedFetch(metadataUrl);
    const doc = await jsonOrText(res);
    check(
      res.status === 200 && doc?.resource === sc.resource
        && JSON.stringify(doc.authorization_servers) === JSON.stringify([op.issuer]),
      'the protected-resource metadata (no token) names the resource and the provider as its authorization server',
      `${res.status} ${res.headers.get('content-type')}: ${show(doc)}`,
    );
    info(`metadata: ${show(doc)}`);
  }

  // -- The SDK's flow: connect -> 401 -> discovery -> registration -> authorization.
  const redirectUrl = `http://127.0.0.1:${await freePort()}/callback`;
  const jar = new CookieJar();
  const oauth = new MemoryOAuthProvider({ redirectUrl, scope: `openid ${SCOPE}`, jar, name: 'sdk flow' });
  const sdkLog = [];
  const sdkFetch = recordingFetch(sdkLog);

  const client1 = new Client({ name: 'jwks-sidecar-e2e', version: '0.0.0' });
  const transport1 = new StreamableHTTPClientTransport(new URL(mcpUrl), { authProvider: oauth, fetch: sdkFetch });
  let connectError;
  try {
    await client1.connect(transport1);
  } catch (err) {
    connectError = err;
  }
  printRequests('sdk', sdkLog);
  oauth.hops.forEach((h) => info(`browser: ${h}`));
  const authUrl = oauth.authorizationUrls[0];
  if (authUrl) {
    info(`authorization request: ${authUrl.origin}${authUrl.pathname}?${[...authUrl.searchParams].filter(([k]) => k !== 'code_challenge').map(([k, v]) => `${k}=${v}`).join('&')}`);
  }
  {
    const i401 = sdkLog.findIndex((e) => e.url === mcpUrl && e.status === 401);
    const iMeta = sdkLog.findIndex((e, i) => i > i401 && e.method === 'GET' && e.url === metadataUrl);
    const asMeta = sdkLog.find((e) => e.url.startsWith(op.issuer) && e.url.includes('/.well-known/') && e.status === 200);
    const reg = sdkLog.find((e) => e.method === 'POST' && e.url === `${op.issuer}/reg`);
    const clientId = oauth.saved.client?.client_id;
    const registered = clientId ? await op.provider.Client.find(clientId) : undefined;
    const problems = [];
    if (!(connectError instanceof UnauthorizedError)) problems.push(`connect ended with ${connectError ? `${connectError.name}: ${connectError.message}` : 'success'}`);
    if (i401 < 0) problems.push('no 401 from /mcp');
    if (iMeta < 0) problems.push(`the SDK did not GET ${metadataUrl} after the 401`);
    else if (sdkLog[iMeta].status !== 200) problems.push(`metadata GET answered ${sdkLog[iMeta].status}`);
    if (!asMeta) problems.push('no authorization-server metadata fetched from the provider');
    if (!reg || reg.status !== 201) problems.push(`registration: ${reg ? reg.status : 'not requested'}`);
    if (!registered) problems.push(`client ${clientId} not found at the provider`);
    else if (registered.tokenEndpointAuthMethod !== 'none') problems.push(`client auth method ${registered.tokenEndpointAuthMethod}`);
    if (!oauth.code) problems.push('no authorization code came back');
    check(
      problems.length === 0,
      'the first connect fails with UnauthorizedError after the SDK found the metadata via the 401, discovered the provider and registered a public client',
      problems.join('; '),
    );
    if (registered) info(`registered client ${clientId}: auth method ${registered.tokenEndpointAuthMethod}, scope ${JSON.stringify(registered.scope)}, redirect_uris ${JSON.stringify(registered.redirectUris)}`);
    const ap = authUrl?.searchParams;
    check(
      ap && ap.get('code_challenge_method') === 'S256' && ap.get('code_challenge') && ap.get('resource') === sc.resource && ap.get('scope')?.split(' ').includes(SCOPE),
      'the SDK asked for a code with PKCE S256, the resource indicator from the metadata and the scope mcp:tools',
      ap ? [...ap].map(([k, v]) => `${k}=${v}`).join('&') : 'no authorization URL',
    );
  }

  if (!oauth.code) throw new Error('no authorization code came back: the flow cannot go on');

  // -- finishAuth: the code for tokens.
  const before = sdkLog.length;
  await transport1.finishAuth(oauth.code);
  printRequests('sdk', sdkLog, before);
  const tokens = oauth.saved.tokens;
  {
    const tokenReq = sdkLog.slice(before).find((e) => e.method === 'POST' && e.url === `${op.issuer}/token`);
    let at;
    try { at = decodeJwt(tokens.access_token); } catch (err) { at = { error: err.message }; }
    const scopes = String(at.payload?.scope ?? '').split(' ');
    check(
      at.header?.typ === 'at+jwt' && at.header?.alg === 'RS256' && at.payload?.aud === sc.resource
        && scopes.includes(SCOPE) && at.payload?.sub === ACCOUNT && at.payload?.iss === op.issuer
        && at.payload?.client_id === oauth.saved.client?.client_id,
      'after finishAuth the saved access token is an RS256 at+jwt JWT for the resource, with mcp:tools, for alice',
      `header ${show(at.header)}, payload ${show(at.payload)}`,
    );
    info(`access token: header ${show(at.header)}, payload ${show(at.payload)}`);
    if (!tokens?.access_token) throw new Error('finishAuth saved no access token: the flow cannot go on');
    info(`token request form: ${show(Object.keys(tokenReq?.form ?? {}))}, resource=${tokenReq?.form?.resource}; token response keys: ${show(Object.keys(tokens ?? {}))}`);
  }

  // -- A new transport with the tokens: initialize, tools/list, tools/call.
  const client2 = new Client({ name: 'jwks-sidecar-e2e', version: '0.0.0' });
  const transport2 = new StreamableHTTPClientTransport(new URL(mcpUrl), { authProvider: oauth, fetch: sdkFetch });
  const before2 = sdkLog.length;
  const appBefore = app.seen.length;
  let whoami;
  try {
    await client2.connect(transport2);
    const tools = await client2.listTools();
    info(`tools: ${tools.tools.map((t) => t.name).join(', ')}`);
    whoami = whoamiOf(await client2.callTool({ name: 'whoami', arguments: {} }));
  } catch (err) {
    whoami = { error: `${err?.name}: ${err?.message}` };
  }
  printRequests('sdk', sdkLog, before2);
  check(
    whoami?.identity?.['x-jwt-sub'] === ACCOUNT && whoami.authorization === true && whoami.authorization_scheme === 'Bearer'
      && whoami.identity['x-jwt-client-id'] === oauth.saved.client?.client_id,
    'the SDK connects with its token, lists the tools and calls whoami: the app sees x-jwt-sub alice and the bearer token',
    show(whoami),
  );
  info(`whoami (SDK): ${show(whoami)}`);
  const appSaw = app.seen.slice(appBefore);
  check(
    appSaw.length > 0 && appSaw.every((s) => s.identity['x-jwt-sub'] === ACCOUNT),
    'every request the app received through the SDK session carried x-jwt-sub alice',
    show(appSaw),
  );
  await client2.close().catch(() => {});

  // -- Identity headers sent by the client never reach the app.
  {
    const res = await timedFetch(mcpUrl, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${tokens.access_token}`,
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
        'mcp-protocol-version': '2025-06-18',
        'x-jwt-sub': 'mallory',
        x_jwt_sub: 'mallory',
        'x-jwt-admin': 'mallory',
      },
      body: JSON.stringify({ jsonrpc: '2.0', id: 7, method: 'tools/call', params: { name: 'whoami', arguments: {} } }),
    });
    const body = await jsonOrText(res);
    let w;
    try { w = whoamiOf(body.result); } catch { w = undefined; }
    const anyMallory = app.seen.some((s) => JSON.stringify(s.identity).includes('mallory'));
    check(
      res.status === 200 && w?.identity?.['x-jwt-sub'] === ACCOUNT && !anyMallory
        && !('x-jwt-admin' in w.identity) && !('x_jwt_sub' in w.identity),
      'client-sent x-jwt-sub / x_jwt_sub / x-jwt-admin: mallory (valid token) never reach the app, which sees alice',
      `${res.status} ${show(body)}; mallory seen by the app: ${anyMallory}`,
    );
  }

  // -- An ID token is not an access token. The SDK flow above asked for the scope the
  // resource named (WWW-Authenticate scope, SEP-835), so it got no ID token: a second
  // session asks, through the SDK's auth(), for `openid mcp:tools` explicitly.
  {
    const oauth2 = new MemoryOAuthProvider({ redirectUrl, scope: `openid ${SCOPE}`, jar, name: 'id token' });
    const log2 = [];
    const f2 = recordingFetch(log2);
    const first = await auth(oauth2, { serverUrl: mcpUrl, scope: `openid ${SCOPE}`, fetchFn: f2 });
    const second = await auth(oauth2, { serverUrl: mcpUrl, scope: `openid ${SCOPE}`, authorizationCode: oauth2.code, fetchFn: f2 });
    printRequests('sdk auth(openid)', log2);
    oauth2.hops.forEach((h) => info(`browser: ${h}`));
    const t2 = oauth2.savedTokensRaw.at(-1) ?? {};
    info(`auth() -> ${first}, ${second}; token response keys: ${show(Object.keys(t2))}`);
    let idt;
    try { idt = decodeJwt(t2.id_token); } catch (err) { idt = { error: err.message }; }
    info(`id token: header ${show(idt.header)}, payload ${show(idt.payload)}`);
    const res = await timedFetch(mcpUrl, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${t2.id_token}`,
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
      },
      body: JSON.stringify({ jsonrpc: '2.0', id: 8, method: 'ping' }),
    });
    const body = await jsonOrText(res);
    const detail = `id_token ${t2.id_token ? 'present' : 'absent'}; ${res.status} ${show(body)}; WWW-Authenticate: ${res.headers.get('www-authenticate')}`;
    check(
      typeof t2.id_token === 'string' && idt.payload?.sub === ACCOUNT && res.status === 401 && body?.error === 'invalid_token',
      'the ID token from the same token response, as a bearer token, is refused: 401 invalid_token',
      detail,
    );
    // oidc-provider's ID token here is {iss, sub, aud: <client id>, iat, exp}: no nonce (the
    // SDK sends none), no at_hash, no azp or client_id to compare aud with. The sidecar's
    // profile names a token an ID token only by those, so it answers bad_typ.
    check(
      res.status === 401 && body?.reason === 'id_token',
      'the refusal names it an ID token (reason id_token)',
      `reason ${JSON.stringify(body?.reason)}; ID token claims ${show(Object.keys(idt.payload ?? {}))}`,
    );
    // The access token of that response is fine: the refusal is about the token's kind.
    const res2 = await timedFetch(mcpUrl, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${t2.access_token}`,
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
      },
      body: JSON.stringify({ jsonrpc: '2.0', id: 9, method: 'tools/call', params: { name: 'whoami', arguments: {} } }),
    });
    const b2 = await jsonOrText(res2);
    let w2;
    try { w2 = whoamiOf(b2.result); } catch { w2 = undefined; }
    check(
      res2.status === 200 && w2?.identity?.['x-jwt-sub'] === ACCOUNT,
      'the access token of that same response is accepted (whoami: alice)',
      `${res2.status} ${show(b2)}`,
    );
  }

  // -- A tampered access token.
  {
    const [h, p, s] = tokens.access_token.split('.');
    const i = Math.floor(s.length / 2); // mid-signature: every bit of this character counts
    const flipped = s[i] === 'A' ? 'B' : 'A';
    const tampered = `${h}.${p}.${s.slice(0, i)}${flipped}${s.slice(i + 1)}`;
    const res = await timedFetch(mcpUrl, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${tampered}`,
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
      },
      body: JSON.stringify({ jsonrpc: '2.0', id: 10, method: 'ping' }),
    });
    const body = await jsonOrText(res);
    check(
      res.status === 401,
      'a tampered access token (one signature character changed) gets 401',
      `${res.status} ${show(body)}`,
    );
    info(`tampered token: ${res.status} ${show(body)}`);
  }

  info(`interactions: ${op.interactions.map((x) => `${x.prompt} [${x.reasons}] for scope "${x.scope}"`).join('; ')}`);
  info(`run time ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

main().then(() => finish(), (err) => abort(err?.stack || String(err)));
