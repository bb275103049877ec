// A real OpenID provider (the npm package oidc-provider) on a loopback port, for the
// sign-in tests. Any login name is accepted by its development login form; the account's
// e-mail is <login>@example.com and its name "User <login>", unless the JSON file named by
// OIDC_ACCOUNTS_FILE (read at every sign-in) gives others: {"<login>": {"email", "name"}}.
// Prints "ready" once it listens.
import { existsSync, readFileSync } from "node:fs";
import Provider from "oidc-provider";

function profile(sub) {
  const file = process.env.OIDC_ACCOUNTS_FILE;
  const accounts = file && existsSync(file) ? JSON.parse(readFileSync(file, "utf8")) : {};
  return { email: `${sub}@example.com`, name: `User ${sub}`, ...accounts[sub] };
}

const port = Number(process.env.OIDC_PORT);
const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  clients: [
    {
      client_id: process.env.OIDC_CLIENT_ID,
      client_secret: process.env.OIDC_CLIENT_SECRET,
      redirect_uris: [process.env.OIDC_REDIRECT_URI],
      grant_types: ["authorization_code"],
      response_types: ["code"],
      token_endpoint_auth_method: "client_secret_post",
    },
  ],
  claims: { openid: ["sub"], email: ["email", "email_verified"], profile: ["name"] },
  async findAccount(_ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return { sub, email_verified: true, ...profile(sub) };
      },
    };
  },
  cookies: { keys: ["delidev-test-cookie-key"] },
  features: { devInteractions: { enabled: true } },
});
const server = provider.listen(port, "127.0.0.1", () => console.log("ready"));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
