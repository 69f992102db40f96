// Retries against a raw gRPC server: RetryInfo in grpc-status-details-bin, retry-after, backoff, bounded
// attempts, and the call's deadline.
import { test, after, before } from "node:test";
import * as assert from "node:assert/strict";
import {
  create,
  GetKeyResponseSchema,
  IssueTokenResponseSchema,
  KeymeshError,
  toBinary,
  type KeymeshClient,
} from "../index";
import { type Answer, clientAt, GET_KEY, ISSUE_TOKEN, ScriptedServer, thrown } from "./helpers";

const TOKEN = toBinary(
  IssueTokenResponseSchema,
  create(IssueTokenResponseSchema, { accessToken: "tok-1", tokenType: "Bearer", expiresInSeconds: 3600 }),
);
const KEY = toBinary(GetKeyResponseSchema, create(GetKeyResponseSchema, { key: { keyId: "k_test", name: "test" } }));

/** GetKey answers are taken from `script` in order (the last repeats); IssueToken always succeeds. */
let script: Answer[] = [];
const server = new ScriptedServer((call, index) => {
  if (call.path === ISSUE_TOKEN) {
    return { ok: TOKEN };
  }
  return script[Math.min(index, script.length - 1)]!;
});

let client: KeymeshClient;
before(async () => {
  await server.start();
  client = clientAt(server.port, {
    credentials: { clientId: "app", clientSecret: "s3cret-value" },
    retry: { maxAttempts: 4, initialBackoffMs: 20, maxBackoffMs: 200 },
  });
  await client.accessToken(); // the timings below measure the calls alone
});
after(() => server.stop());

function reset(answers: Answer[]): void {
  script = answers;
  server.received.length = 0;
}

test("UNAVAILABLE with RetryInfo is retried after at least the server's delay", async () => {
  reset([{ code: 14, message: "overloaded", retryInfoMs: 600 }, { ok: KEY }]);
  const started = Date.now();
  const response = await client.keys.getKey({ key: "test" });
  const elapsed = Date.now() - started;
  assert.equal(response.key?.keyId, "k_test");
  const calls = server.calls(GET_KEY);
  assert.equal(calls.length, 2);
  assert.ok(calls[1]!.at - calls[0]!.at >= 600, `second attempt ${calls[1]!.at - calls[0]!.at} ms after the first`);
  assert.ok(elapsed >= 600 && elapsed < 2500, `took ${elapsed} ms`);
  for (const c of calls) {
    assert.equal(c.headers.authorization, "Bearer tok-1");
  }
  // The retry carries the time left of the same deadline, not a fresh one.
  const timeout = (c: (typeof calls)[number]) => Number(String(c.headers["grpc-timeout"]).replace(/m$/, ""));
  assert.ok(timeout(calls[0]!) <= 30_000 && timeout(calls[0]!) > 29_000, `first grpc-timeout ${timeout(calls[0]!)}`);
  assert.ok(timeout(calls[1]!) <= 30_000 - 600, `second grpc-timeout ${timeout(calls[1]!)}`);
});

test("a deadline shorter than the RetryInfo delay fails with DEADLINE_EXCEEDED at once", async () => {
  reset([{ code: 14, message: "overloaded", retryInfoMs: 2000 }, { ok: KEY }]);
  const started = Date.now();
  const e = await thrown(() => client.keys.getKey({ key: "test" }, { timeoutMs: 800 }));
  const elapsed = Date.now() - started;
  assert.ok(e instanceof KeymeshError, String(e));
  assert.equal(e.code, "DEADLINE_EXCEEDED");
  assert.equal(e.codeNumber, 4);
  assert.match(e.serverMessage, /UNAVAILABLE: overloaded/);
  assert.ok(elapsed < 500, `took ${elapsed} ms: should not wait for a retry that cannot fit`);
  assert.equal(server.calls(GET_KEY).length, 1);
});

test("retry-after (whole seconds) is honoured when RetryInfo is absent", async () => {
  reset([{ code: 14, message: "draining", retryAfter: "1" }, { ok: KEY }]);
  const started = Date.now();
  await client.keys.getKey({ key: "test" });
  const elapsed = Date.now() - started;
  assert.equal(server.calls(GET_KEY).length, 2);
  assert.ok(elapsed >= 1000 && elapsed < 3000, `took ${elapsed} ms`);
});

test("RESOURCE_EXHAUSTED is retried only with RetryInfo", async () => {
  reset([{ code: 8, message: "quota", retryAfter: "1" }, { ok: KEY }]);
  const e = await thrown(() => client.keys.getKey({ key: "test" }));
  assert.ok(e instanceof KeymeshError);
  assert.equal(e.code, "RESOURCE_EXHAUSTED");
  assert.equal(e.codeNumber, 8);
  assert.equal(server.calls(GET_KEY).length, 1);

  reset([{ code: 8, message: "quota", retryInfoMs: 150 }, { ok: KEY }]);
  const started = Date.now();
  const response = await client.keys.getKey({ key: "test" });
  assert.equal(response.key?.keyId, "k_test");
  assert.equal(server.calls(GET_KEY).length, 2);
  assert.ok(Date.now() - started >= 150);
});

test("UNAVAILABLE without hints backs off, and attempts are bounded", async () => {
  reset([{ code: 14, message: "connection reset" }]);
  const e = await thrown(() => client.keys.getKey({ key: "test" }));
  assert.ok(e instanceof KeymeshError);
  assert.equal(e.code, "UNAVAILABLE");
  assert.equal(e.codeNumber, 14);
  assert.equal(e.serverMessage, "connection reset");
  assert.equal(e.attempts, 4);
  const calls = server.calls(GET_KEY);
  assert.equal(calls.length, 4);
  // Exponential backoff with equal jitter: 20 ms then 40 ms then 80 ms, each at least half of it.
  for (let i = 1; i < calls.length; i++) {
    const gap = calls[i]!.at - calls[i - 1]!.at;
    assert.ok(gap >= 10 * 2 ** (i - 1), `gap ${i}: ${gap} ms`);
  }
});

test("other codes are not retried and keep the server's message", async () => {
  reset([{ code: 5, message: "key nope not found" }]);
  const e = await thrown(() => client.keys.getKey({ key: "nope" }));
  assert.ok(e instanceof KeymeshError);
  assert.equal(e.code, "NOT_FOUND");
  assert.equal(e.codeNumber, 5);
  assert.equal(e.serverMessage, "key nope not found");
  assert.equal(e.method, "keymesh.v1.KeyService/GetKey");
  assert.equal(server.calls(GET_KEY).length, 1);
});

test("a server that never answers is cut at the deadline", async () => {
  reset([{ hang: true }]);
  const started = Date.now();
  const e = await thrown(() => client.keys.getKey({ key: "test" }, { timeoutMs: 300 }));
  const elapsed = Date.now() - started;
  assert.ok(e instanceof KeymeshError);
  assert.equal(e.code, "DEADLINE_EXCEEDED");
  assert.ok(elapsed >= 290 && elapsed < 1500, `took ${elapsed} ms`);
});

test("a cancelled call stops waiting for its retry", async () => {
  reset([{ code: 14, message: "overloaded", retryInfoMs: 5000 }, { ok: KEY }]);
  const controller = new AbortController();
  setTimeout(() => controller.abort(), 100);
  const started = Date.now();
  const e = await thrown(() => client.keys.getKey({ key: "test" }, { signal: controller.signal }));
  assert.ok(e instanceof KeymeshError);
  assert.equal(e.code, "CANCELLED");
  assert.ok(Date.now() - started < 1000);
});

test("a token-service outage is retried once, not again by every call waiting for the token", async () => {
  const down = await new ScriptedServer(() => ({ code: 14, message: "token-service down" })).start();
  try {
    const c = clientAt(down.port, {
      credentials: { clientId: "app", clientSecret: "s3cret-value" },
      retry: { maxAttempts: 3, initialBackoffMs: 10, maxBackoffMs: 50 },
    });
    const e = await thrown(() => c.keys.getKey({ key: "test" }));
    assert.ok(e instanceof KeymeshError);
    assert.equal(e.code, "UNAVAILABLE");
    assert.match(e.serverMessage, /getting an access token: token-service down/);
    assert.equal(down.calls(ISSUE_TOKEN).length, 3);
    assert.equal(down.calls(GET_KEY).length, 0);
  } finally {
    await down.stop();
  }
});
