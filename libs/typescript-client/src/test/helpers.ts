// Test helpers: a raw HTTP/2 (h2c) gRPC server whose answers are scripted byte for byte, a hand-written
// protobuf encoder for google.rpc.Status (so the client's RetryInfo decoding is checked against the wire
// format, not against itself), and a client over h2c transports.
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { createKeymeshClientWithTransports, type CommonOptions, type KeymeshClient } from "../index";

export function varint(n: number): Buffer {
  const out: number[] = [];
  while (n > 127) {
    out.push((n & 127) | 128);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return Buffer.from(out);
}

export function varintField(num: number, value: number): Buffer {
  return Buffer.concat([varint(num << 3), varint(value)]);
}

export function bytesField(num: number, value: Buffer | string): Buffer {
  const b = typeof value === "string" ? Buffer.from(value, "utf8") : value;
  return Buffer.concat([varint((num << 3) | 2), varint(b.length), b]);
}

/** google.rpc.Status{code, message, details: [Any(google.rpc.RetryInfo{retry_delay})]}. */
export function statusWithRetryInfo(code: number, message: string, delayMs: number): Buffer {
  const duration = Buffer.concat([
    varintField(1, Math.floor(delayMs / 1000)),
    varintField(2, (delayMs % 1000) * 1_000_000),
  ]);
  const retryInfo = bytesField(1, duration);
  const any = Buffer.concat([bytesField(1, "type.googleapis.com/google.rpc.RetryInfo"), bytesField(2, retryInfo)]);
  return Buffer.concat([varintField(1, code), bytesField(2, message), bytesField(3, any)]);
}

export interface Received {
  path: string;
  headers: http2.IncomingHttpHeaders;
  body: Buffer;
  at: number;
}

export type Answer =
  | { ok: Uint8Array; delayMs?: number }
  | { code: number; message: string; retryInfoMs?: number; retryAfter?: string; delayMs?: number }
  | { hang: true };

/** A gRPC server on 127.0.0.1 (h2c) answering each call with `answer(call)`. */
export class ScriptedServer {
  readonly received: Received[] = [];
  private server = http2.createServer();
  private sessions = new Set<http2.ServerHttp2Session>();
  port = 0;

  constructor(private answer: (call: Received, index: number) => Answer) {
    this.server.on("session", (s) => {
      this.sessions.add(s);
      s.on("close", () => this.sessions.delete(s));
    });
    this.server.on("stream", (stream, headers) => {
      const chunks: Buffer[] = [];
      stream.on("data", (c: Buffer) => chunks.push(c));
      stream.on("end", () => {
        const call: Received = { path: String(headers[":path"]), headers, body: Buffer.concat(chunks), at: Date.now() };
        this.received.push(call);
        const answer = this.answer(call, this.received.filter((r) => r.path === call.path).length - 1);
        if ("hang" in answer) {
          return;
        }
        setTimeout(() => this.respond(stream, answer), answer.delayMs ?? 0);
      });
      stream.on("error", () => undefined);
    });
  }

  private respond(stream: http2.ServerHttp2Stream, answer: Exclude<Answer, { hang: true }>): void {
    if (stream.destroyed) {
      return;
    }
    if ("ok" in answer) {
      stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
      stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
      const prefix = Buffer.alloc(5);
      prefix.writeUInt32BE(answer.ok.length, 1);
      stream.end(Buffer.concat([prefix, answer.ok]));
      return;
    }
    const headers: http2.OutgoingHttpHeaders = {
      ":status": 200,
      "content-type": "application/grpc",
      "grpc-status": String(answer.code),
      "grpc-message": encodeURIComponent(answer.message),
    };
    if (answer.retryInfoMs !== undefined) {
      headers["grpc-status-details-bin"] = statusWithRetryInfo(answer.code, answer.message, answer.retryInfoMs).toString("base64");
    }
    if (answer.retryAfter !== undefined) {
      headers["retry-after"] = answer.retryAfter;
    }
    // Trailers-only, as tonic sends errors.
    stream.respond(headers, { endStream: true });
  }

  calls(path: string): Received[] {
    return this.received.filter((r) => r.path === path);
  }

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.port = (this.server.address() as AddressInfo).port;
    return this;
  }

  async stop(): Promise<void> {
    for (const s of this.sessions) {
      s.destroy();
    }
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** A keymesh client whose four services are all at `http://127.0.0.1:port` (h2c). */
export function clientAt(port: number, options: CommonOptions): KeymeshClient {
  return createKeymeshClientWithTransports(options, (_service, interceptors) =>
    createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}`, interceptors }),
  );
}

/** Runs `f` and returns what it threw (fails when it does not throw). */
export async function thrown(f: () => Promise<unknown>): Promise<unknown> {
  try {
    await f();
  } catch (e) {
    return e;
  }
  throw new Error("expected an error");
}

export const GET_KEY = "/keymesh.v1.KeyService/GetKey";
export const ISSUE_TOKEN = "/keymesh.v1.TokenService/IssueToken";
