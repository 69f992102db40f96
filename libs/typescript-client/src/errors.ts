// Errors of the keymesh client. They carry the gRPC code (name and number) and the server's message, never
// a request, a header, a token or a secret.
import { Code, ConnectError } from "@connectrpc/connect";

/** The canonical gRPC code names, indexed by code number. */
export const GRPC_CODE_NAMES: readonly string[] = [
  "OK",
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
];

/** The name of a gRPC code number, e.g. 5 is "NOT_FOUND". */
export function grpcCodeName(code: number): string {
  return GRPC_CODE_NAMES[code] ?? `CODE_${code}`;
}

/** A call that failed: `code` ("NOT_FOUND"), `codeNumber` (5) and the server's message. */
export class KeymeshError extends Error {
  /** The gRPC code name, e.g. "NOT_FOUND". */
  readonly code: string;
  /** The gRPC code number, e.g. 5. */
  readonly codeNumber: number;
  /** The message the server sent (or the client's own, for local failures such as a deadline). */
  readonly serverMessage: string;
  /** The RPC, e.g. "keymesh.v1.KeyService/GetKey", when known. */
  readonly method: string | undefined;
  /** How many attempts were made (more than 1 after retries). */
  readonly attempts: number;

  constructor(codeNumber: number, serverMessage: string, method?: string, attempts = 1) {
    const code = grpcCodeName(codeNumber);
    super(`${method ? `${method}: ` : ""}${code} (${codeNumber}): ${serverMessage}`);
    this.name = "KeymeshError";
    this.code = code;
    this.codeNumber = codeNumber;
    this.serverMessage = serverMessage;
    this.method = method;
    this.attempts = attempts;
  }

  /** Converts any thrown value (ConnectError, KeymeshError, other) to a KeymeshError, keeping only safe fields. */
  static from(reason: unknown, method?: string, attempts = 1): KeymeshError {
    if (reason instanceof KeymeshError) {
      return reason;
    }
    const e = ConnectError.from(reason);
    return new KeymeshError(e.code, e.rawMessage, method, attempts);
  }

  toJSON(): Record<string, unknown> {
    return {
      name: this.name,
      code: this.code,
      code_number: this.codeNumber,
      message: this.serverMessage,
      method: this.method,
      attempts: this.attempts,
    };
  }
}

/** Local set-up failed (certificate files, endpoints, credentials). */
export class KeymeshSetupError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "KeymeshSetupError";
  }
}

/** A ConnectError with the same code and message as `e`, for throwing through connect's interceptors. */
export function asConnectError(e: unknown, prefix = ""): ConnectError {
  if (e instanceof KeymeshError) {
    return new ConnectError(prefix + e.serverMessage, e.codeNumber as Code);
  }
  if (e instanceof KeymeshSetupError) {
    return new ConnectError(prefix + e.message, Code.FailedPrecondition);
  }
  const c = ConnectError.from(e);
  return prefix ? new ConnectError(prefix + c.rawMessage, c.code) : c;
}
