// A real OpenID Connect provider (the `oidc-provider` npm package) on 127.0.0.1, run as a
// child process by the jwks-sidecar end-to-end test (tests/oidc_provider/), or by anything
// else that can write a line to its stdin and read one from its stdout.
//
//   node provider.mjs --port 0        (0: any free port; a fixed port to restart in place)
//   stdin:  one JSON line {"keys": [{"kid": "...", "pkcs8": "<base64 DER>"}, ...],
//                          "clients": [<oidc-provider client metadata>, ...]}
//           (a client with tls_client_certificate_bound_access_tokens gets tokens bound to the
//           certificate sent as URL-encoded PEM in x-e2e-client-cert: see mTLS below)
//   stdout: one JSON line {"issuer": "http://127.0.0.1:<port>", "port": <port>, "kids": [...]}
//           once listening, or {"error": "...", "code": "EADDRINUSE"} and exit 1.
//   SIGTERM, SIGINT, or the end of stdin (the parent went away): close, exit 0.
//
// Keys are RSA private keys (PKCS#8 DER), made by the caller per run and only held in memory;
// they sign RS256. The first key signs new tokens, the others are still published in the
// JWKS: a key rotation is staged by restarting on the same port with [new, old], then [new].
//
// Settings for plain http on loopback: oidc-provider 9 has no production/https switch of its
// own (no NODE_ENV check); the issuer is simply http://127.0.0.1:<port>. Cookies are not used
// by the client_credentials grant; they still get random keys so nothing warns. `proxy` is
// left false (no reverse proxy in front). devInteractions is disabled: no browser flows.
// Its warnings go to stderr (console.warn), so stdout carries only the line above.
import * as crypto from 'node:crypto';
import * as http from 'node:http';
import * as readline from 'node:readline';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

// Resource servers (RFC 8707 resource indicators) this provider issues JWT access tokens for.
const RESOURCE_SERVERS = {
  'https://api.test': { scope: 'api:read', audience: 'https://api.test' },
  // A second API, so that a token with the wrong audience can be minted.
  'https://other.test': { scope: 'other:read', audience: 'https://other.test' },
};

function buildProvider({ issuer, keys, clients }) {
  const provider = new Provider(issuer, {
    clients,
    jwks: { keys },
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
    ttl: { ClientCredentials: 300 },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      // Certificate-bound access tokens (RFC 8705) for clients registered with
      // tls_client_certificate_bound_access_tokens. The provider stands in for one behind a
      // proxy that ends mutual TLS: the client certificate (URL-encoded PEM) comes in the
      // x-e2e-client-cert header, which only the test sends.
      mTLS: {
        enabled: true,
        certificateBoundAccessTokens: true,
        getCertificate: (ctx) => {
          const v = ctx.get('x-e2e-client-cert');
          return v ? decodeURIComponent(v) : undefined;
        },
      },
      introspection: { enabled: false },
      revocation: { enabled: false },
      resourceIndicators: {
        enabled: true,
        // client_credentials always names its resource explicitly in this test.
        defaultResource: async () => undefined,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resourceIndicator) => {
          const rs = RESOURCE_SERVERS[resourceIndicator];
          if (!rs) throw new errors.InvalidTarget();
          return {
            ...rs,
            accessTokenTTL: 300,
            accessTokenFormat: 'jwt',
            // No kid given: the first RS256 key of the keystore signs.
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
  });
  provider.on('server_error', (ctx, err) => {
    process.stderr.write(`provider: server_error: ${err?.stack || err}\n`);
  });
  return provider;
}

const say = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);
const fail = (message, code) => { say({ error: message, code }); process.exit(1); };

const server = http.createServer();
function shutdown() {
  if (!server.listening) process.exit(0);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

const { values: args } = parseArgs({ options: { port: { type: 'string', default: '0' } } });
const input = readline.createInterface({ input: process.stdin });
input.on('close', shutdown);
input.once('line', (line) => {
  let config;
  try {
    config = JSON.parse(line);
    config.keys = config.keys.map((k) => ({
      ...crypto.createPrivateKey({ key: Buffer.from(k.pkcs8, 'base64'), format: 'der', type: 'pkcs8' })
        .export({ format: 'jwk' }),
      kid: k.kid,
      alg: 'RS256',
      use: 'sig',
    }));
  } catch (err) {
    fail(`bad configuration line on stdin: ${err?.message || err}`);
  }
  server.on('error', (err) => fail(`listen 127.0.0.1:${args.port}: ${err.message}`, err.code));
  server.listen(Number(args.port), '127.0.0.1', () => {
    const { port } = server.address();
    const issuer = `http://127.0.0.1:${port}`;
    try {
      // Attached in the same tick as the listen callback: no request is served without it.
      server.on('request', buildProvider({ ...config, issuer }).callback());
    } catch (err) {
      fail(err?.stack || String(err));
    }
    say({ issuer, port, kids: config.keys.map((k) => k.kid) });
  });
});
