// Tokens against an in-process connect gRPC server: one IssueToken in flight however many callers, renewal
// before expiry, token exchange reading its file afresh, and no secret in errors or string forms.
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as http2 from "node:http2";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { inspect } from "node:util";
import type { AddressInfo } from "node:net";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import {
  Credentials,
  GrantType,
  type IssueTokenRequest,
  KeymeshError,
  KeyService,
  renewAt,
  SUBJECT_TOKEN_TYPE_JWT,
  TokenService,
} from "../index";
import { clientAt, thrown } from "./helpers";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A fake token-service (slow IssueToken, `lifetimeS`-second tokens "token-N") and key-service echoing the bearer. */
async function fakeMesh(options: { issueDelayMs: number; lifetimeS: number; refuse?: string }) {
  const issued: IssueTokenRequest[] = [];
  const issueHeaders: Headers[] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const routes = (router: ConnectRouter) => {
    router.service(TokenService, {
      async issueToken(request, context) {
        issued.push(request);
        issueHeaders.push(context.requestHeader);
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        try {
          await sleep(options.issueDelayMs);
        } finally {
          inFlight--;
        }
        if (options.refuse) {
          throw new ConnectError(options.refuse, Code.Unauthenticated);
        }
        return { accessToken: `token-${issued.length}`, tokenType: "Bearer", expiresInSeconds: options.lifetimeS };
      },
    });
    router.service(KeyService, {
      async getKey(request, context) {
        return { key: { keyId: context.requestHeader.get("authorization") ?? "", name: request.key } };
      },
    });
  };
  const server = http2.createServer(connectNodeAdapter({ routes }));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (s) => {
    sessions.add(s);
    s.on("close", () => sessions.delete(s));
  });
  return {
    port: (server.address() as AddressInfo).port,
    issued,
    issueHeaders,
    maxInFlight: () => maxInFlight,
    async stop() {
      for (const s of sessions) {
        s.destroy();
      }
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

test("renewal margin: 5 minutes, or a fifth of a shorter lifetime", () => {
  assert.equal(renewAt(0, 3600_000), 3600_000 - 300_000);
  assert.equal(renewAt(0, 1000_000), 1000_000 - 200_000);
  assert.equal(renewAt(1000, 1000), 1800);
});

test("32 concurrent calls share one IssueToken, cold and near expiry, and all carry the new token", async () => {
  const mesh = await fakeMesh({ issueDelayMs: 300, lifetimeS: 1 });
  try {
    const client = clientAt(mesh.port, { credentials: { clientId: "app", clientSecret: "s3cret-value" } });
    const burst = () =>
      Promise.all(Array.from({ length: 32 }, (_, i) => client.keys.getKey({ key: `k${i}` })).map((p) => p.then((r) => r.key?.keyId)));

    const cold = await burst();
    assert.equal(mesh.issued.length, 1, "one IssueToken for 32 cold callers");
    assert.deepEqual(new Set(cold), new Set(["Bearer token-1"]));
    assert.equal(mesh.issued[0]!.grantType, GrantType.CLIENT_CREDENTIALS);
    assert.equal(mesh.issued[0]!.clientId, "app");
    assert.equal(mesh.issued[0]!.clientSecret, "s3cret-value");
    assert.equal(mesh.issueHeaders[0]!.get("authorization"), null, "IssueToken carries no bearer token");

    // Still fresh: no renewal.
    await burst();
    assert.equal(mesh.issued.length, 1);

    // Past the renewal point (4/5 of the 1 s lifetime) but before expiry: exactly one renewal for all 32.
    await sleep(900);
    const renewed = await burst();
    assert.equal(mesh.issued.length, 2, "one IssueToken for 32 callers near expiry");
    assert.deepEqual(new Set(renewed), new Set(["Bearer token-2"]));
    assert.equal(mesh.maxInFlight(), 1, "never two IssueToken in flight");
    client.close();
  } finally {
    await mesh.stop();
  }
});

test("token exchange reads the subject token file afresh at each renewal", async () => {
  const mesh = await fakeMesh({ issueDelayMs: 10, lifetimeS: 1 });
  const dir = mkdtempSync(join(tmpdir(), "keymesh-ts-"));
  const file = join(dir, "token");
  try {
    writeFileSync(file, "subject-one\n");
    const client = clientAt(mesh.port, { credentials: Credentials.tokenExchange(file) });
    await client.keys.getKey({ key: "a" });
    writeFileSync(file, "subject-two\n");
    await sleep(900);
    const r = await client.keys.getKey({ key: "a" });
    assert.equal(r.key?.keyId, "Bearer token-2");
    assert.equal(mesh.issued.length, 2);
    for (const request of mesh.issued) {
      assert.equal(request.grantType, GrantType.TOKEN_EXCHANGE);
      assert.equal(request.subjectTokenType, SUBJECT_TOKEN_TYPE_JWT);
      assert.equal(request.clientSecret, "");
    }
    assert.equal(mesh.issued[0]!.subjectToken, "subject-one");
    assert.equal(mesh.issued[1]!.subjectToken, "subject-two");
  } finally {
    await mesh.stop();
  }
});

test("a refused IssueToken fails the call with its code, and no secret appears anywhere", async () => {
  const secret = "very-secret-client-secret-42";
  const mesh = await fakeMesh({ issueDelayMs: 10, lifetimeS: 3600, refuse: "invalid client credentials" });
  try {
    const credentials = Credentials.clientCredentials("app", secret);
    const client = clientAt(mesh.port, { credentials });
    const e = await thrown(() => client.keys.getKey({ key: "a" }));
    assert.ok(e instanceof KeymeshError, String(e));
    assert.equal(e.code, "UNAUTHENTICATED");
    assert.equal(e.codeNumber, 16);
    assert.match(e.serverMessage, /invalid client credentials/);
    assert.equal(mesh.issued[0]!.clientSecret, secret, "the secret was sent to IssueToken");

    const direct = await thrown(() => client.accessToken());
    assert.ok(direct instanceof KeymeshError);
    assert.equal(direct.code, "UNAUTHENTICATED");
    assert.equal(direct.serverMessage, "invalid client credentials");

    for (const shown of [
      String(e),
      e.stack ?? "",
      JSON.stringify(e),
      inspect(e, { depth: 10, showHidden: true }),
      inspect(direct, { depth: 10, showHidden: true }),
      String(credentials),
      JSON.stringify(credentials),
      inspect(credentials, { depth: 10, showHidden: true }),
      inspect(client, { depth: 10, showHidden: true }),
      JSON.stringify({ credentials }),
    ]) {
      assert.ok(!shown.includes(secret), `secret shown in: ${shown.slice(0, 200)}`);
    }
  } finally {
    await mesh.stop();
  }
});

test("tokens never appear in the client's string forms", async () => {
  const mesh = await fakeMesh({ issueDelayMs: 1, lifetimeS: 3600 });
  try {
    const client = clientAt(mesh.port, { credentials: { clientId: "app", clientSecret: "s3cret-value" } });
    assert.equal(await client.accessToken(), "token-1");
    const shown = inspect(client, { depth: 10, showHidden: true }) + String(client);
    assert.ok(!shown.includes("token-1") && !shown.includes("s3cret-value"), shown);
  } finally {
    await mesh.stop();
  }
});
