// The keymesh client: typed connect clients for the four services over gRPC (HTTP/2, mutual TLS), with a
// bearer token on every call that needs one, retries and per-call deadlines.
import { readFileSync } from "node:fs";
import { inspect } from "node:util";
import type { DescService } from "@bufbuild/protobuf";
import {
  type CallOptions,
  type Client,
  Code,
  ConnectError,
  createClient,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { AuditService } from "./gen/keymesh/v1/audit_service_pb";
import { CryptoService } from "./gen/keymesh/v1/crypto_service_pb";
import { KeyService } from "./gen/keymesh/v1/key_service_pb";
import { TokenService } from "./gen/keymesh/v1/token_service_pb";
import { Credentials, type CredentialsInit } from "./credentials";
import { asConnectError, grpcCodeName, KeymeshError, KeymeshSetupError } from "./errors";
import { resolveRetryOptions, retryDelayMs, type ResolvedRetryOptions, type RetryOptions, sleep } from "./retry";
import { TokenSource } from "./tokens";

/** The default per-call deadline. */
export const DEFAULT_TIMEOUT_MS = 30_000;

/** The largest message read or written (crypto-service's largest unary limit, 64 MiB, twice, with room). */
export const MAX_MESSAGE_BYTES = 2 * 64 * 1024 * 1024 + 64 * 1024;

/** Failures to get an access token, passed through connect as ConnectErrors: never retried by the call. */
const tokenErrors = new WeakSet<ConnectError>();

/** RPCs that carry no access token. */
const UNAUTHENTICATED_METHODS = new Set([
  "keymesh.v1.TokenService/IssueToken",
  "keymesh.v1.TokenService/RevokeToken",
  "keymesh.v1.TokenService/GetJwks",
]);

export type ServiceName = "keyService" | "cryptoService" | "tokenService" | "auditService";

/** Where each service listens: "host:port" (TLS) or an https:// URL. */
export type Endpoints = Record<ServiceName, string>;

/** A PEM file path, a PEM string, or PEM bytes. */
export type PemSource = string | Buffer;

export interface CommonOptions {
  /** Client credentials or token exchange. */
  credentials: Credentials | CredentialsInit;
  /** The per-call deadline when a call names none (default 30 s); retries stay within it. */
  timeoutMs?: number;
  retry?: RetryOptions;
}

export interface KeymeshClientOptions extends CommonOptions {
  endpoints: Endpoints;
  /** The CA that signed the services' certificates. */
  caCert: PemSource;
  /** This client's certificate (chain) and key, for mutual TLS. */
  clientCert: PemSource;
  clientKey: PemSource;
}

export interface KeymeshClient {
  readonly keys: Client<typeof KeyService>;
  readonly crypto: Client<typeof CryptoService>;
  readonly tokens: Client<typeof TokenService>;
  readonly audit: Client<typeof AuditService>;
  /** A valid access token (issued or renewed as needed). */
  accessToken(signal?: AbortSignal): Promise<string>;
  /** Closes the connections. */
  close(): void;
}

/** Reads a PEM source: a PEM string or bytes as is, anything else as a file path. */
export function readPem(what: string, source: PemSource): Buffer {
  if (Buffer.isBuffer(source)) {
    return source;
  }
  if (source.trimStart().startsWith("-----BEGIN")) {
    return Buffer.from(source, "utf8");
  }
  // Only something that looks like a path is named in an error: a mangled PEM key must not be echoed.
  const shown = source.length < 1024 && !/[\r\n]/.test(source) ? source : "<value not shown>";
  try {
    return readFileSync(source);
  } catch (e) {
    throw new KeymeshSetupError(`${what}: cannot read ${shown} (${(e as NodeJS.ErrnoException).code ?? "error"})`);
  }
}

/** "host:port" becomes "https://host:port"; a URL is kept. */
export function endpointUrl(endpoint: string): string {
  if (/^https?:\/\//.test(endpoint)) {
    return endpoint;
  }
  if (!endpoint) {
    throw new KeymeshSetupError("empty endpoint");
  }
  return `https://${endpoint}`;
}

/**
 * Connects (lazily) to the four services over mutual TLS. Every call carries `authorization: Bearer <token>`
 * (except IssueToken, RevokeToken and GetJwks), UNAVAILABLE (and RESOURCE_EXHAUSTED with RetryInfo) is retried
 * within the call's deadline, and failures are thrown as KeymeshError.
 */
export function createKeymeshClient(options: KeymeshClientOptions): KeymeshClient {
  const ca = readPem("caCert", options.caCert);
  const cert = readPem("clientCert", options.clientCert);
  const key = readPem("clientKey", options.clientKey);
  const managers: Http2SessionManager[] = [];
  const client = createKeymeshClientWithTransports(options, (service, interceptors) => {
    const baseUrl = endpointUrl(options.endpoints[service]);
    const nodeOptions = { ca, cert, key };
    const sessionManager = new Http2SessionManager(baseUrl, {}, nodeOptions);
    managers.push(sessionManager);
    return createGrpcTransport({
      baseUrl,
      sessionManager,
      nodeOptions,
      interceptors,
      readMaxBytes: MAX_MESSAGE_BYTES,
      writeMaxBytes: MAX_MESSAGE_BYTES,
    });
  });
  const closeTokens = client.close;
  client.close = () => {
    closeTokens();
    for (const m of managers) {
      m.abort();
    }
  };
  return client;
}

/**
 * The same client over transports the caller builds (tests, custom TLS): `makeTransport` receives the
 * interceptors it must install.
 */
export function createKeymeshClientWithTransports(
  options: CommonOptions,
  makeTransport: (service: ServiceName, interceptors: Interceptor[]) => Transport,
): KeymeshClient {
  const credentials = Credentials.from(options.credentials);
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const retry = resolveRetryOptions(options.retry);

  let tokens: TokenSource | undefined;
  const auth: Interceptor = (next) => async (req) => {
    if (!UNAUTHENTICATED_METHODS.has(`${req.service.typeName}/${req.method.name}`)) {
      let token: string;
      try {
        token = await tokens!.token(req.signal);
      } catch (e) {
        if (req.signal.aborted) {
          throw e; // connect reports the deadline or the cancellation
        }
        const err = asConnectError(e, "getting an access token: ");
        tokenErrors.add(err); // IssueToken was retried already: the call is not retried on top
        throw err;
      }
      req.header.set("authorization", `Bearer ${token}`);
    }
    return next(req);
  };
  const interceptors = [auth];

  const wrap = <S extends DescService>(service: S, name: ServiceName): Client<S> =>
    wrapClient(service, createClient(service, makeTransport(name, interceptors)), timeoutMs, retry);

  const tokenClient = wrap(TokenService, "tokenService");
  tokens = new TokenSource(credentials, (request) => tokenClient.issueToken(request));
  const source = tokens;
  return {
    keys: wrap(KeyService, "keyService"),
    crypto: wrap(CryptoService, "cryptoService"),
    tokens: tokenClient,
    audit: wrap(AuditService, "auditService"),
    accessToken: (signal?: AbortSignal) => source.token(signal),
    close() {
      source.invalidate();
    },
    [inspect.custom]: () => `KeymeshClient(${credentials})`,
    toString: () => `KeymeshClient(${credentials})`,
  } as KeymeshClient;
}

/** Wraps each method of a connect client: deadline, retries (unary) and KeymeshError. */
function wrapClient<S extends DescService>(
  service: S,
  inner: Client<S>,
  defaultTimeoutMs: number,
  retry: ResolvedRetryOptions,
): Client<S> {
  const wrapped: Record<string, unknown> = {};
  const raw = inner as unknown as Record<string, (...args: unknown[]) => unknown>;
  for (const method of service.methods) {
    const call = raw[method.localName].bind(inner);
    const name = `${service.typeName}/${method.name}`;
    switch (method.methodKind) {
      case "unary":
        wrapped[method.localName] = (request: unknown, options?: CallOptions) =>
          callUnary(call, name, request, options ?? {}, defaultTimeoutMs, retry);
        break;
      case "client_streaming":
        wrapped[method.localName] = async (request: unknown, options?: CallOptions) => {
          try {
            return await call(request, withDefaultTimeout(options, defaultTimeoutMs));
          } catch (e) {
            throw KeymeshError.from(e, name);
          }
        };
        break;
      case "server_streaming":
      case "bidi_streaming":
        wrapped[method.localName] = (request: unknown, options?: CallOptions) =>
          convertErrors(call(request, withDefaultTimeout(options, defaultTimeoutMs)) as AsyncIterable<unknown>, name);
        break;
    }
  }
  return wrapped as Client<S>;
}

function withDefaultTimeout(options: CallOptions | undefined, defaultTimeoutMs: number): CallOptions {
  return { ...options, timeoutMs: options?.timeoutMs ?? defaultTimeoutMs };
}

async function* convertErrors<T>(iterable: AsyncIterable<T>, name: string): AsyncIterable<T> {
  try {
    yield* iterable;
  } catch (e) {
    throw KeymeshError.from(e, name);
  }
}

async function callUnary(
  call: (request: unknown, options: CallOptions) => unknown,
  name: string,
  request: unknown,
  options: CallOptions,
  defaultTimeoutMs: number,
  retry: ResolvedRetryOptions,
): Promise<unknown> {
  const timeoutMs = options.timeoutMs ?? defaultTimeoutMs;
  // timeoutMs <= 0: no deadline (as in connect).
  const deadline = timeoutMs > 0 ? Date.now() + timeoutMs : Infinity;
  for (let attempt = 1; ; attempt++) {
    const remaining = deadline - Date.now();
    if (remaining <= 0) {
      throw new KeymeshError(Code.DeadlineExceeded, `deadline of ${timeoutMs} ms exceeded`, name, attempt - 1);
    }
    let err: ConnectError;
    try {
      return await call(request, {
        ...options,
        timeoutMs: Number.isFinite(remaining) ? Math.max(1, Math.ceil(remaining)) : 0,
      });
    } catch (e) {
      err = ConnectError.from(e);
    }
    const delay =
      attempt < retry.maxAttempts && !tokenErrors.has(err) ? retryDelayMs(err, attempt, retry) : undefined;
    if (delay === undefined) {
      throw KeymeshError.from(err, name, attempt);
    }
    if (Date.now() + delay >= deadline) {
      // Waiting would outlive the deadline: fail now rather than at the deadline.
      throw new KeymeshError(
        Code.DeadlineExceeded,
        `deadline of ${timeoutMs} ms would pass before the next attempt (retry in ${Math.round(delay)} ms; ` +
          `last error ${grpcCodeName(err.code)}: ${err.rawMessage})`,
        name,
        attempt,
      );
    }
    try {
      await sleep(delay, options.signal);
    } catch {
      throw new KeymeshError(Code.Canceled, "the call was cancelled", name, attempt);
    }
  }
}
