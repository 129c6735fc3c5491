// End-to-end test: jwks-sidecar in front of an echo app, verifying JWT access tokens issued
// by a real OpenID Connect provider (oidc-provider, see provider.mjs) that it finds through
// OIDC discovery; then a signing-key rotation of that provider.
//
// Usage: node run.mjs            (from anywhere; needs `npm ci` in this directory first)
// Env:   OIDC_E2E_SIDECAR        sidecar binary (default: <repo>/target/debug/jwks-sidecar)
//        OIDC_E2E_PIDFILE        append the pid of every process started here to this file
//        OIDC_E2E_KEEP=1         keep the temp dir (config, logs) after the run
//
// Everything listens on 127.0.0.1 only. Keys and client secrets are generated per run and
// only held in memory (the sidecar config holds no secret). Ends with the line
// "oidc-e2e: N passed, M failed" and exits 1 if M > 0 (2 if it could not run at all).
import { fork, spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..', '..');
const SIDECAR = process.env.OIDC_E2E_SIDECAR || path.join(REPO, 'target', 'debug', 'jwks-sidecar');
const AUDIENCE = 'https://api.test';
const OTHER_AUDIENCE = 'https://other.test';
const CLIENT_ID = 'e2e-client';
const CLIENT_SECRET = crypto.randomBytes(24).toString('base64url');
const T0 = Date.now();

// ---------------------------------------------------------------- reporting

let passed = 0;
let failed = 0;
const failures = [];

function step(title) {
  const t = ((Date.now() - T0) / 1000).toFixed(1);
  console.log(`\n--- [${t}s] ${title}`);
}

function check(name, ok, detail = '') {
  if (ok) {
    passed += 1;
    console.log(`  ok   ${name}`);
  } else {
    failed += 1;
    failures.push(name);
    console.log(`  FAIL ${name}${detail ? `\n       ${detail.split('\n').join('\n       ')}` : ''}`);
  }
  return ok;
}

function info(msg) {
  console.log(`  info ${msg}`);
}

// ---------------------------------------------------------------- process bookkeeping

const children = new Set();

// Each child's pid also goes to $OIDC_E2E_PIDFILE (if set), so that the calling script can
// still end them if this process is killed outright (SIGKILL leaves no chance to clean up).
function track(child) {
  children.add(child);
  if (process.env.OIDC_E2E_PIDFILE && child.pid) {
    fs.appendFileSync(process.env.OIDC_E2E_PIDFILE, `${child.pid}\n`);
  }
  return child;
}
let tmpDir;
let sidecarLog;

function cleanup() {
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) {
      try { c.kill('SIGKILL'); } catch { /* already gone */ }
    }
  }
  children.clear();
  if (tmpDir && !process.env.OIDC_E2E_KEEP) {
    fs.rmSync(tmpDir, { recursive: true, force: true });
  }
}
process.on('exit', cleanup);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    console.log(`\noidc-e2e: interrupted by ${sig}`);
    console.log(`oidc-e2e: ${passed} passed, ${failed + 1} failed`);
    process.exit(1);
  });
}

function waitExit(child, ms) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    child.once('exit', () => { clearTimeout(t); resolve(true); });
  });
}

async function stop(child, ms = 5000) {
  if (!child) return;
  child.kill('SIGTERM');
  if (!(await waitExit(child, ms))) {
    child.kill('SIGKILL');
    await waitExit(child, 2000);
  }
  children.delete(child);
}

// A port that was free a moment ago (for the processes that need it in a config file).
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

// ---------------------------------------------------------------- HTTP helpers

function request(url, { method = 'GET', headers = {}, body, timeoutMs = 10000 } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        try { json = JSON.parse(text); } catch { json = undefined; }
        resolve({ status: res.statusCode, headers: res.headers, text, json });
      });
      res.on('error', reject);
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`timeout after ${timeoutMs} ms: ${method} ${url}`)));
    req.on('error', reject);
    if (body) req.write(body);
    req.end();
  });
}

function describe(res) {
  return `HTTP ${res.status} ${res.text.slice(0, 400)}`;
}

function decodeJwt(token) {
  const [h, p] = token.split('.');
  return {
    header: JSON.parse(Buffer.from(h, 'base64url').toString('utf8')),
    payload: JSON.parse(Buffer.from(p, 'base64url').toString('utf8')),
  };
}

// ---------------------------------------------------------------- the OpenID provider

function generateSigningKey(kid) {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
}

const op = { child: null, port: 0, issuer: '' };
const providerLines = new Set();

// (Re)starts provider.mjs as a new process on op.port with these private keys; the first one
// signs new tokens. Used for the initial start and for each step of the key rotation.
async function startProvider(keys) {
  if (op.child) await stop(op.child);
  let lastError = '';
  for (let attempt = 1; attempt <= 5; attempt += 1) {
    const child = fork(path.join(HERE, 'provider.mjs'), [], {
      cwd: HERE,
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      env: { ...process.env, DEBUG: '' },
    });
    track(child);
    for (const stream of [child.stdout, child.stderr]) {
      readline.createInterface({ input: stream }).on('line', (line) => {
        // The same start-up warnings come with every restart: show each once.
        if (providerLines.has(line)) return;
        providerLines.add(line);
        console.log(`       provider: ${line}`);
      });
    }
    const outcome = await new Promise((resolve) => {
      const t = setTimeout(() => resolve({ event: 'error', message: 'provider not ready within 30 s' }), 30000);
      child.on('message', (m) => {
        if (m?.event === 'ready' || m?.event === 'error') { clearTimeout(t); resolve(m); }
      });
      child.on('exit', (code, sig) => {
        clearTimeout(t);
        resolve({ event: 'error', message: `provider exited (code ${code}, signal ${sig})` });
      });
      child.send({
        cmd: 'start',
        port: op.port,
        issuer: op.issuer,
        keys,
        clients: [{
          client_id: CLIENT_ID,
          client_secret: CLIENT_SECRET,
          grant_types: ['client_credentials'],
          response_types: [],
          redirect_uris: [],
          token_endpoint_auth_method: 'client_secret_basic',
        }],
      });
    });
    if (outcome.event === 'ready') {
      op.child = child;
      return outcome;
    }
    lastError = outcome.message;
    await stop(child);
    if (outcome.code !== 'EADDRINUSE') break;
    await sleep(200 * attempt);
  }
  throw new Error(`could not start the OpenID provider: ${lastError}`);
}

let tokenEndpoint;

async function getToken({ resource = AUDIENCE, scope = 'api:read' } = {}) {
  const form = new URLSearchParams({ grant_type: 'client_credentials', resource });
  if (scope) form.set('scope', scope);
  const res = await request(tokenEndpoint, {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from(`${CLIENT_ID}:${CLIENT_SECRET}`).toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: form.toString(),
  });
  if (res.status !== 200 || !res.json?.access_token) {
    throw new Error(`token endpoint: ${describe(res)}`);
  }
  return res.json.access_token;
}

// ---------------------------------------------------------------- the echo upstream

const seen = []; // headers of every request the upstream received

function startUpstream() {
  const server = http.createServer((req, res) => {
    seen.push(req.headers);
    const body = JSON.stringify({ method: req.method, url: req.url, headers: req.headers });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
  return new Promise((resolve, reject) => {
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

// ---------------------------------------------------------------- the sidecar

const sc = { child: null, proxy: '', admin: '' };
const counts = { allow: 0, deny: 0 }; // proxy answers seen by this driver

function sidecarLogTail(lines = 40) {
  try {
    return fs.readFileSync(sidecarLog, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

// Runs the sidecar binary with these arguments (bounded), for the `check` subcommand.
function runSidecarCommand(args, ms = 20000) {
  return new Promise((resolve) => {
    const child = spawn(SIDECAR, args, { stdio: ['ignore', 'pipe', 'pipe'], env: sidecarEnv() });
    track(child);
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { out += d; });
    const t = setTimeout(() => child.kill('SIGKILL'), ms);
    child.on('exit', (code, signal) => {
      clearTimeout(t);
      children.delete(child);
      resolve({ code, signal, out });
    });
  });
}

// The sidecar's config: the provider is found by OIDC discovery on its issuer.
function sidecarConfig({ proxyPort, adminPort, upstreamUrl, issuer = op.issuer }) {
  return `# written by e2e/oidc/run.mjs
[proxy]
listen = "127.0.0.1:${proxyPort}"
upstream = "${upstreamUrl}"

[admin]
listen = "127.0.0.1:${adminPort}"

[log]
format = "json"

[[providers]]
name = "oidc"
issuer = "${issuer}"
discovery = true
audiences = ["${AUDIENCE}"]
algorithms = ["RS256"]
required_scopes = ["api:read"]
refresh_interval = "5m"

[providers.claim_headers]
sub = "x-jwt-sub"
client_id = "x-jwt-client-id"
scope = "x-jwt-scope"
`;
}

// Only the config file counts: JWKS_SIDECAR_* variables of the caller would override it.
function sidecarEnv() {
  return {
    ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('JWKS_SIDECAR_'))),
    RUST_LOG: 'info',
  };
}

async function startSidecar(config) {
  const cfgPath = path.join(tmpDir, 'sidecar.toml');
  fs.writeFileSync(cfgPath, config);
  sidecarLog = path.join(tmpDir, 'sidecar.log');
  const out = fs.openSync(sidecarLog, 'a');
  const child = spawn(SIDECAR, ['--config', cfgPath], {
    stdio: ['ignore', out, out],
    env: sidecarEnv(),
  });
  fs.closeSync(out);
  track(child);
  sc.child = child;
  let exited = null;
  child.on('exit', (code, sig) => { exited = { code, sig }; });
  // /readyz answers 200 once every provider has had keys: bounded wait.
  const deadline = Date.now() + 30000;
  let last = '';
  while (Date.now() < deadline) {
    if (exited) break;
    try {
      const r = await request(`${sc.admin}/readyz`, { timeoutMs: 2000 });
      if (r.status === 200) return true;
      last = describe(r);
    } catch (e) {
      last = e.message;
    }
    await sleep(100);
  }
  const why = exited ? `sidecar exited (code ${exited.code}, signal ${exited.sig})` : `not ready within 30 s (last /readyz: ${last})`;
  throw new Error(`${why}\n--- sidecar log (last lines):\n${sidecarLogTail()}`);
}

async function proxied(token, { extraHeaders = {}, pathname = '/api/hello' } = {}) {
  const headers = { ...extraHeaders };
  if (token) headers.authorization = `Bearer ${token}`;
  const before = seen.length;
  const res = await request(`${sc.proxy}${pathname}`, { headers });
  res.upstream = seen.length > before ? seen[seen.length - 1] : undefined;
  if (res.status === 200) counts.allow += 1; else counts.deny += 1;
  return res;
}

async function metrics() {
  const r = await request(`${sc.admin}/metrics`);
  return r.text;
}

// Sum of the samples of `name` whose labels include all of `labels`.
function metricValue(text, name, labels = {}) {
  let sum = 0;
  let found = false;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const m = line.match(/^([^{ ]+)(?:\{(.*)\})?\s+(\S+)$/);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries([...(m[2] || '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) {
      sum += Number(m[3]);
      found = true;
    }
  }
  return found ? sum : undefined;
}

async function providerKids() {
  const r = await request(`${sc.admin}/providers`);
  return r.json?.providers?.find((p) => p.name === 'oidc')?.kids ?? [];
}

// ---------------------------------------------------------------- the test

async function expectAllowed(name, token, kid) {
  const res = await proxied(token);
  const sub = decodeJwt(token).payload.sub;
  check(`${name}: 200 from the upstream`, res.status === 200, describe(res));
  if (res.status === 200) {
    check(`${name}: upstream saw x-jwt-sub=${sub}`, res.upstream?.['x-jwt-sub'] === sub, `upstream headers: ${JSON.stringify(res.upstream)}`);
  }
  if (kid) check(`${name}: token was signed with kid ${kid}`, decodeJwt(token).header.kid === kid, JSON.stringify(decodeJwt(token).header));
  return res;
}

async function expectDenied(name, token, status, reason, extra = {}) {
  const res = await proxied(token, extra);
  check(`${name}: ${status}`, res.status === status, describe(res));
  if (reason) check(`${name}: reason ${reason}`, res.json?.reason === reason, describe(res));
  check(`${name}: never reached the upstream`, res.upstream === undefined, `upstream headers: ${JSON.stringify(res.upstream)}`);
  return res;
}

async function main() {
  step('setup');
  if (!fs.existsSync(SIDECAR)) {
    throw new Error(`sidecar binary not found: ${SIDECAR} (run cargo build, or set OIDC_E2E_SIDECAR)`);
  }
  tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'oidc-e2e-'));
  info(`sidecar binary: ${SIDECAR}`);
  info(`temp dir: ${tmpDir}${process.env.OIDC_E2E_KEEP ? ' (kept)' : ''}`);

  const tag = crypto.randomBytes(3).toString('hex');
  const key1 = generateSigningKey(`e2e-${tag}-1`);
  const key2 = generateSigningKey(`e2e-${tag}-2`);

  step('start the OpenID provider (oidc-provider), key 1 only');
  op.port = await freePort();
  op.issuer = `http://127.0.0.1:${op.port}`;
  const ready = await startProvider([key1]);
  info(`issuer ${op.issuer}, keys ${ready.kids.join(', ')}`);

  step('OIDC discovery document');
  const disc = await request(`${op.issuer}/.well-known/openid-configuration`);
  check('discovery: 200', disc.status === 200, describe(disc));
  check('discovery: issuer is exactly the configured issuer', disc.json?.issuer === op.issuer, describe(disc));
  check('discovery: has a jwks_uri', typeof disc.json?.jwks_uri === 'string', describe(disc));
  check('discovery: client_credentials grant offered', disc.json?.grant_types_supported?.includes('client_credentials'), describe(disc));
  tokenEndpoint = disc.json?.token_endpoint;
  if (!tokenEndpoint) throw new Error(`no token_endpoint in the discovery document: ${describe(disc)}`);
  const jwks = await request(disc.json.jwks_uri);
  check('provider JWKS publishes key 1 (public parts only)',
    jwks.json?.keys?.length === 1 && jwks.json.keys[0].kid === key1.kid && jwks.json.keys[0].d === undefined, describe(jwks));

  step('start the echo upstream');
  const upstream = await startUpstream();
  const upstreamUrl = `http://127.0.0.1:${upstream.address().port}`;
  info(`upstream ${upstreamUrl}`);

  step('jwks-sidecar check (validates the config, one discovery + JWKS fetch)');
  {
    const ports = { proxyPort: await freePort(), adminPort: await freePort(), upstreamUrl };
    const good = path.join(tmpDir, 'check-good.toml');
    fs.writeFileSync(good, sidecarConfig(ports));
    const r = await runSidecarCommand(['check', '--config', good]);
    check('check: exit 0', r.code === 0, `exit ${r.code} ${r.signal ?? ''}\n${r.out}`);
    check(`check: reports jwks_uri and kid ${key1.kid}`, r.out.includes(`${op.issuer}/jwks`) && r.out.includes(key1.kid), r.out);
    // A very common mistake: the configured issuer differs from the discovery document's
    // (here by a trailing slash). The sidecar must refuse it, and say why.
    const bad = path.join(tmpDir, 'check-bad.toml');
    fs.writeFileSync(bad, sidecarConfig({ ...ports, issuer: `${op.issuer}/` }));
    const rb = await runSidecarCommand(['check', '--config', bad]);
    check('check: issuer with a trailing slash fails (exit non-zero)', rb.code !== 0 && rb.code !== null, `exit ${rb.code}\n${rb.out}`);
    check('check: the failure names the discovery issuer mismatch', /issuer/.test(rb.out) && rb.out.includes(JSON.stringify(op.issuer)), rb.out);
  }

  step('start jwks-sidecar (provider found by discovery)');
  // The ports are picked free just before the sidecar binds them; if another process took
  // one in between, try again with new ones.
  for (let attempt = 1; ; attempt += 1) {
    const proxyPort = await freePort();
    const adminPort = await freePort();
    sc.proxy = `http://127.0.0.1:${proxyPort}`;
    sc.admin = `http://127.0.0.1:${adminPort}`;
    try {
      await startSidecar(sidecarConfig({ proxyPort, adminPort, upstreamUrl }));
      break;
    } catch (err) {
      if (attempt >= 3 || !/Address already in use/.test(String(err.message))) throw err;
      info(`port taken before the sidecar bound it; retrying (${err.message.split('\n').find((l) => /in use/.test(l))})`);
    }
  }
  check('sidecar: /readyz 200', true);
  const kids0 = await providerKids();
  check(`sidecar: /providers lists kid ${key1.kid}`, kids0.includes(key1.kid), JSON.stringify(kids0));
  const mirrored = await request(`${sc.admin}/jwks/oidc`);
  check('sidecar: /jwks/oidc mirrors key 1', mirrored.json?.keys?.some((k) => k.kid === key1.kid), describe(mirrored));

  step('tokens from the provider, through the sidecar');
  const t1 = await getToken();
  const c1 = decodeJwt(t1);
  info(`token: header ${JSON.stringify(c1.header)}, iss ${c1.payload.iss}, aud ${JSON.stringify(c1.payload.aud)}, sub ${c1.payload.sub}`);
  check('token: iss is the issuer', c1.payload.iss === op.issuer, JSON.stringify(c1.payload));
  check(`token: sub is the client_id (${CLIENT_ID})`, c1.payload.sub === CLIENT_ID, JSON.stringify(c1.payload));
  const r1 = await expectAllowed('valid token', t1, key1.kid);
  if (r1.status === 200) {
    check('valid token: upstream saw x-jwt-client-id', r1.upstream?.['x-jwt-client-id'] === CLIENT_ID, JSON.stringify(r1.upstream));
    check('valid token: upstream saw x-jwt-scope=api:read', r1.upstream?.['x-jwt-scope'] === 'api:read', JSON.stringify(r1.upstream));
  }

  const spoof = await proxied(t1, { extraHeaders: { 'x-jwt-sub': 'admin', 'X_JWT_Client_Id': 'evil' } });
  check('spoofed x-jwt-sub with a valid token: 200', spoof.status === 200, describe(spoof));
  check('spoofed x-jwt-sub: upstream saw the verified sub only',
    spoof.upstream?.['x-jwt-sub'] === CLIENT_ID && spoof.upstream?.['x_jwt_client_id'] === undefined, JSON.stringify(spoof.upstream));

  const none = await expectDenied('no token', null, 401, 'missing_token');
  check('no token: WWW-Authenticate: Bearer', /^Bearer\b/i.test(none.headers['www-authenticate'] || ''), JSON.stringify(none.headers));

  const [h, p, s] = t1.split('.');
  const flipped = s[10] === 'A' ? 'B' : 'A';
  const tamperedSig = `${h}.${p}.${s.slice(0, 10)}${flipped}${s.slice(11)}`;
  const td = await expectDenied('tampered signature', tamperedSig, 401, 'bad_signature');
  check('tampered signature: JSON error invalid_token', td.json?.error === 'invalid_token', describe(td));

  const forgedPayload = Buffer.from(JSON.stringify({ ...c1.payload, sub: 'admin' })).toString('base64url');
  await expectDenied('tampered payload (sub=admin)', `${h}.${forgedPayload}.${s}`, 401, 'bad_signature');

  const wrongAud = await getToken({ resource: OTHER_AUDIENCE, scope: 'other:read' });
  check('wrong-audience token: aud is the other API', JSON.stringify(decodeJwt(wrongAud).payload.aud).includes(OTHER_AUDIENCE), JSON.stringify(decodeJwt(wrongAud).payload));
  await expectDenied('token for another audience', wrongAud, 401, 'bad_audience');

  const noScope = await getToken({ scope: null });
  await expectDenied('token without the required scope', noScope, 403, 'insufficient_scope');

  step('key rotation 1/2: provider restarted with [key 2 (signs), key 1 (still published)]');
  const fetchesBefore = metricValue(await metrics(), 'jwks_sidecar_jwks_fetch_total', { provider: 'oidc', result: 'ok' }) ?? 0;
  const ready2 = await startProvider([key2, key1]);
  info(`provider restarted, keys ${ready2.kids.join(', ')}`);
  const t2 = await getToken();
  check(`rotation: new token is signed with the new kid ${key2.kid}`, decodeJwt(t2).header.kid === key2.kid, JSON.stringify(decodeJwt(t2).header));
  // The acceptance test of the "unknown kid" refetch: the sidecar has not seen key 2 yet
  // (its periodic refresh is 5 minutes away), and the very first request with it must pass.
  // Several requests at once, none of them sent before: every one is a "first request".
  const wave = 4;
  const started = Date.now();
  const firsts = await Promise.all(Array.from({ length: wave }, () => proxied(t2)));
  const waveMs = Date.now() - started;
  const bad = firsts.filter((r) => r.status !== 200);
  const firstOk = check(`rotation: FIRST requests with the new kid ${key2.kid} (${wave} at once) are all 200 (no 401 window)`, bad.length === 0,
    `${bad.length} of ${wave} refused: ${describe(bad[0] || firsts[0])}\n`
    + 'The sidecar did not accept the new signing key on its first use. It must refetch the JWKS when a\n'
    + "token's kid is not in its mirror (the \"unknown kid\" refetch, single-flight); without that, a rotation\n"
    + 'is only seen at the next periodic refresh (refresh_interval = 5m here), and every request signed\n'
    + 'with the new key is refused until then. The checks below that use the new key fail for the same reason.');
  if (firstOk) {
    check(`rotation: upstream saw x-jwt-sub=${CLIENT_ID}`, firsts.every((r) => r.upstream?.['x-jwt-sub'] === CLIENT_ID), JSON.stringify(firsts.map((r) => r.upstream)));
  }
  info(`first-wave latency: ${waveMs} ms for ${wave} concurrent requests`);
  const m2 = await metrics();
  const fetchesAfter = metricValue(m2, 'jwks_sidecar_jwks_fetch_total', { provider: 'oidc', result: 'ok' }) ?? 0;
  check('rotation: the new kid made the sidecar refetch its keys', fetchesAfter > fetchesBefore, `jwks_fetch_total{result="ok"}: ${fetchesBefore} before, ${fetchesAfter} after`);
  check(`rotation: ${wave} concurrent unknown-kid requests cost one refetch (single-flight)`, fetchesAfter - fetchesBefore <= 1, `jwks_fetch_total{result="ok"}: ${fetchesBefore} before, ${fetchesAfter} after`);
  info(`JWKS fetches ok: ${fetchesBefore} before the first new-kid wave, ${fetchesAfter} after; `
    + `kid_miss_total: ${JSON.stringify(m2.split('\n').filter((l) => l.startsWith('jwks_sidecar_jwks_kid_miss_total')))}`);
  const kids1 = await providerKids();
  check('rotation: sidecar now mirrors both kids', kids1.includes(key1.kid) && kids1.includes(key2.kid), JSON.stringify(kids1));
  await expectAllowed('rotation: new-kid token again', t2, key2.kid);
  await expectAllowed('rotation: old-kid token (issued before the rotation) still accepted', t1, key1.kid);

  step('key rotation 2/2: provider restarted with [key 2] only (key 1 retired)');
  const ready3 = await startProvider([key2]);
  info(`provider restarted, keys ${ready3.kids.join(', ')}`);
  const t3 = await getToken();
  await expectAllowed('after retirement: fresh new-kid token', t3, key2.kid);
  await expectAllowed('after retirement: earlier new-kid token', t2, key2.kid);
  // When the sidecar drops key 1 depends on its fetches (periodic, or triggered by unknown
  // kids), so this is reported, not asserted.
  const old = await proxied(t1);
  info(`old-kid token after key 1 was retired by the provider: HTTP ${old.status} ${old.json?.reason ?? ''} (not asserted)`);

  step('a token signed by a key the provider never published');
  {
    // Same claims as a real token, but signed with a key of our own under an unknown kid:
    // the sidecar may refetch (rate-limited), must not find the kid, and refuses.
    const rogue = generateSigningKey(`e2e-${tag}-rogue`);
    const header = Buffer.from(JSON.stringify({ alg: 'RS256', typ: 'at+jwt', kid: rogue.kid })).toString('base64url');
    const now = Math.floor(Date.now() / 1000);
    const payload = Buffer.from(JSON.stringify({ ...decodeJwt(t3).payload, iat: now, exp: now + 300 })).toString('base64url');
    const sig = crypto.sign('RSA-SHA256', Buffer.from(`${header}.${payload}`), crypto.createPrivateKey({ key: rogue, format: 'jwk' }));
    await expectDenied('unknown kid (rogue key)', `${header}.${payload}.${sig.toString('base64url')}`, 401, 'unknown_kid');
  }

  step('metrics');
  const m = await metrics();
  const okFetches = metricValue(m, 'jwks_sidecar_jwks_fetch_total', { provider: 'oidc', result: 'ok' });
  check('metrics: jwks_sidecar_jwks_fetch_total{provider="oidc",result="ok"} >= 1', okFetches >= 1, `value: ${okFetches}`);
  const allow = metricValue(m, 'jwks_sidecar_requests_total', { listener: 'proxy', decision: 'allow' });
  check(`metrics: jwks_sidecar_requests_total{decision="allow"} = ${counts.allow} (the 200s this test got)`, allow === counts.allow, `value: ${allow}`);
  const deny = metricValue(m, 'jwks_sidecar_requests_total', { listener: 'proxy', decision: 'deny' });
  check(`metrics: jwks_sidecar_requests_total{decision="deny"} = ${counts.deny} (the refusals this test got)`, deny === counts.deny, `value: ${deny}`);
  const allowOidc = metricValue(m, 'jwks_sidecar_requests_total', { provider: 'oidc', decision: 'allow', reason: 'ok' });
  check('metrics: jwks_sidecar_requests_total{provider="oidc",decision="allow",reason="ok"} present', allowOidc >= 1, `value: ${allowOidc}`);
  for (const reason of ['missing_token', 'bad_signature', 'bad_audience', 'insufficient_scope']) {
    const v = metricValue(m, 'jwks_sidecar_requests_total', { decision: 'deny', reason });
    check(`metrics: jwks_sidecar_requests_total{decision="deny",reason="${reason}"} counted`, v >= 1, `value: ${v}`);
  }
  const keysGauge = metricValue(m, 'jwks_sidecar_jwks_keys', { provider: 'oidc' });
  info(`jwks_sidecar_jwks_keys{provider="oidc"} = ${keysGauge}; key changes: `
    + `added ${metricValue(m, 'jwks_sidecar_jwks_key_changes_total', { provider: 'oidc', change: 'added' })}, `
    + `removed ${metricValue(m, 'jwks_sidecar_jwks_key_changes_total', { provider: 'oidc', change: 'removed' })}`);

  step('shutdown');
  sc.child.kill('SIGTERM');
  const exitedClean = await waitExit(sc.child, 10000);
  check('sidecar: exits 0 on SIGTERM', exitedClean && sc.child.exitCode === 0, `exit code ${sc.child.exitCode}, signal ${sc.child.signalCode}`);
  await stop(op.child);
  upstream.close();
}

try {
  await main();
} catch (err) {
  failed += 1;
  failures.push('aborted');
  console.log(`\n  FAIL aborted: ${err?.stack || err}`);
}
if (failures.length) {
  if (sidecarLog) console.log(`\n--- sidecar log (last lines):\n${sidecarLogTail(15)}`);
  console.log(`\nfailed checks:\n  - ${failures.join('\n  - ')}`);
}
console.log(`\ntook ${((Date.now() - T0) / 1000).toFixed(1)}s`);
console.log(`oidc-e2e: ${passed} passed, ${failed} failed`);
cleanup();
process.exit(failed > 0 ? 1 : 0);
