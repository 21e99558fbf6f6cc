// A real OpenID Connect provider for the sign-in tests: panva's oidc-provider (a certified
// implementation, from npm), with one confidential client, accounts from a JSON file, and a
// password form of its own in place of the package's development-only interactions.
//
//   node oidc_provider.mjs SETTINGS.json
//
// SETTINGS: {"port", "client_id", "client_secret", "redirect_uri", "accounts_file"}
// ACCOUNTS (read at each look-up, so a test can change someone's groups as a directory would):
//   {"<login>": {"password", "name", "email", "groups": [...], "admin": bool}}
// Binds 127.0.0.1 only; prints "ready <issuer>" once it listens.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import querystring from 'node:querystring';

import Provider from 'oidc-provider';

const settings = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const issuer = `http://127.0.0.1:${settings.port}`;
const accounts = () => JSON.parse(fs.readFileSync(settings.accounts_file, 'utf8'));

const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });

const provider = new Provider(issuer, {
  clients: [{
    client_id: settings.client_id,
    client_secret: settings.client_secret,
    redirect_uris: [settings.redirect_uri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  // The directory's attributes: groups (a cohort, a team) and an admin flag.
  scopes: ['openid', 'profile', 'email', 'groups', 'oraculo'],
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
    oraculo: ['oraculo_admin'],
  },
  async findAccount(ctx, id) {
    const all = accounts();
    if (!Object.hasOwn(all, id)) return undefined;
    const account = all[id];
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          preferred_username: id,
          name: account.name,
          email: account.email,
          email_verified: true,
          groups: account.groups,
          oraculo_admin: Boolean(account.admin),
        };
      },
    };
  },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  jwks: { keys: [privateKey.export({ format: 'jwk' })] },
});

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginPage(uid, error) {
  return `<!doctype html><html><head><meta charset="utf-8"><title>Institution sign-in</title></head>
<body><h1>Institution sign-in</h1>${error ? `<p id="error">${escape(error)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}/login">
<label>User <input id="login" name="login" autocomplete="username" required></label>
<label>Password <input id="password" name="password" type="password" required></label>
<button id="submit" type="submit">Sign in</button></form></body></html>`;
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 10000) throw new Error('form too large');
  }
  return querystring.parse(body);
}

// First-party client: consent is granted without asking (what an institution's own portal does).
async function grantConsent(req, res, details) {
  const { prompt, params, session, grantId } = details;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
  if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
  await provider.interactionFinished(
    req, res, { consent: { grantId: await grant.save() } }, { mergeWithLastSubmission: true },
  );
}

const callback = provider.callback();
const server = http.createServer(async (req, res) => {
  const match = /^\/interaction\/([\w-]+)(\/login)?$/.exec(req.url.split('?')[0]);
  if (!match) return callback(req, res);
  try {
    const details = await provider.interactionDetails(req, res);
    if (req.method === 'GET' && details.prompt.name === 'login') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      return res.end(loginPage(details.uid));
    }
    if (req.method === 'GET' && details.prompt.name === 'consent') {
      return await grantConsent(req, res, details);
    }
    if (req.method === 'POST' && match[2]) {
      const form = await readForm(req);
      const all = accounts();
      const account = Object.hasOwn(all, form.login) ? all[form.login] : undefined;
      const given = Buffer.from(String(form.password || ''));
      const wanted = Buffer.from(account ? account.password : crypto.randomBytes(16).toString('hex'));
      if (!account || given.length !== wanted.length || !crypto.timingSafeEqual(given, wanted)) {
        res.writeHead(401, { 'content-type': 'text/html; charset=utf-8' });
        return res.end(loginPage(details.uid, 'Wrong user or password.'));
      }
      return await provider.interactionFinished(
        req, res, { login: { accountId: form.login } }, { mergeWithLastSubmission: false },
      );
    }
    res.writeHead(405);
    return res.end();
  } catch (err) {
    res.writeHead(400, { 'content-type': 'text/plain' });
    return res.end(`interaction failed: ${err.message}`);
  }
});

server.listen(settings.port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
