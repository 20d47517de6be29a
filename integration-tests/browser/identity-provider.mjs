// A real OpenID Connect provider for the reading room's sign-in test:
// panva's oidc-provider (an OpenID Certified implementation), with its
// development login and consent pages, one public client (PKCE), JWT
// access tokens for the audience `meridian` carrying the reader and
// their roles, and short-lived access tokens so the room must renew them.
//
//   node identity-provider.mjs keys <dir>
//       writes <dir>/jwks.json (public, for auth.toml) and
//       <dir>/private.json (the signing key)
//   node identity-provider.mjs serve <port> <dir> <access-token-seconds> <redirect-uri>...
//       serves http://127.0.0.1:<port>; prints "ready", then one line per
//       token granted ("granted <grant type>")
//
// MERIDIAN_OIDC_PROVIDER names oidc-provider's package folder.

import { generateKeyPairSync, randomUUID } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [command, ...rest] = process.argv.slice(2);

if (command === "keys") {
  const [dir] = rest;
  const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const kid = randomUUID();
  const priv = { ...privateKey.export({ format: "jwk" }), kid, alg: "RS256", use: "sig" };
  const pub = { ...publicKey.export({ format: "jwk" }), kid, alg: "RS256", use: "sig" };
  writeFileSync(join(dir, "private.json"), JSON.stringify({ keys: [priv] }));
  writeFileSync(join(dir, "jwks.json"), JSON.stringify({ keys: [pub] }));
  process.exit(0);
}

if (command !== "serve") {
  console.error("usage: identity-provider.mjs keys <dir> | serve <port> <dir> <seconds> <redirect-uri>...");
  process.exit(64);
}

const [port, dir, seconds, ...redirects] = rest;
const root = process.env.MERIDIAN_OIDC_PROVIDER;
if (!root) {
  console.error("MERIDIAN_OIDC_PROVIDER names oidc-provider's folder");
  process.exit(64);
}
const { default: Provider } = await import(pathToFileURL(join(root, "lib/index.js")).href);
const issuer = `http://127.0.0.1:${port}`;
const resource = "urn:meridian";
// Who may sign in: the login name is the account. One is a reader; the
// other a reading group's coordinator, who is not.
const readers = { "dr-ana-ortiz": ["reader"] };

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: "reading-room",
      token_endpoint_auth_method: "none",
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      redirect_uris: redirects,
      // Signing out of the room ends the session here too, then back.
      post_logout_redirect_uris: redirects.map((r) => r.replace("/room/oidc/callback", "/room/sign-in")),
    },
  ],
  jwks: JSON.parse(readFileSync(join(dir, "private.json"), "utf8")),
  features: {
    devInteractions: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => resource,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, indicator) => {
        if (indicator !== resource) throw new Provider.errors.InvalidTarget();
        return {
          scope: "reading",
          audience: "meridian",
          accessTokenTTL: Number(seconds),
          accessTokenFormat: "jwt",
          jwt: { sign: { alg: "RS256" } },
        };
      },
    },
  },
  findAccount: async (_ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  // The identity provider's role mapper: the reader id and roles.
  extraTokenClaims: async (_ctx, token) => {
    if (token.kind !== "AccessToken") return undefined;
    const roles = readers[token.accountId];
    return roles ? { reader: token.accountId, roles } : { roles: ["group-admin"] };
  },
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed("refresh_token"),
  pkce: { required: () => true },
  ttl: { AccessToken: Number(seconds), IdToken: 600, RefreshToken: 3600, Grant: 3600, Session: 3600 },
});
provider.proxy = false;
provider.on("grant.success", (ctx) => {
  console.log(`granted ${ctx.oidc.params.grant_type}`);
});
provider.on("grant.error", (_ctx, error) => console.error(`grant refused: ${error.message} ${error.error_description ?? ""}`));
provider.on("server_error", (_ctx, error) => console.error(`server error: ${error.stack}`));
provider.listen(Number(port), "127.0.0.1", () => console.log("ready"));
