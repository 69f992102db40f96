// Retries: UNAVAILABLE always, RESOURCE_EXHAUSTED when the server attached a google.rpc.RetryInfo; the wait
// is the server's RetryInfo delay (else its retry-after header, whole seconds), else exponential backoff,
// plus jitter; bounded attempts, all within the call's deadline.
import { Code, ConnectError } from "@connectrpc/connect";
import { RetryInfoSchema } from "./rpc";

export interface RetryOptions {
  /** Attempts in all, the first included (default 5; 1 disables retries). */
  maxAttempts?: number;
  /** The first backoff when the server names no delay (default 100 ms); doubles each attempt. */
  initialBackoffMs?: number;
  /** The longest backoff (default 5000 ms). */
  maxBackoffMs?: number;
  /** Random source in [0, 1) for jitter (tests). */
  random?: () => number;
}

export type ResolvedRetryOptions = Required<RetryOptions>;

export function resolveRetryOptions(o: RetryOptions = {}): ResolvedRetryOptions {
  return {
    maxAttempts: Math.max(1, Math.floor(o.maxAttempts ?? 5)),
    initialBackoffMs: Math.max(0, o.initialBackoffMs ?? 100),
    maxBackoffMs: Math.max(0, o.maxBackoffMs ?? 5000),
    random: o.random ?? Math.random,
  };
}

/** The delay the server asked for, in ms: google.rpc.RetryInfo, else a retry-after header in whole seconds. */
export function serverRetryDelayMs(err: ConnectError): { ms: number; fromRetryInfo: boolean } | undefined {
  const info = err.findDetails(RetryInfoSchema)[0];
  if (info?.retryDelay) {
    const ms = Number(info.retryDelay.seconds) * 1000 + info.retryDelay.nanos / 1e6;
    return { ms: Math.max(0, ms), fromRetryInfo: true };
  }
  const header = err.metadata.get("retry-after")?.trim();
  if (header && /^\d+$/.test(header)) {
    return { ms: Number(header) * 1000, fromRetryInfo: false };
  }
  return undefined;
}

/**
 * How long to wait before attempt `attempt + 1` after `err` failed attempt `attempt` (1-based), or undefined
 * when `err` is not retryable.
 */
export function retryDelayMs(err: ConnectError, attempt: number, o: ResolvedRetryOptions): number | undefined {
  const server = serverRetryDelayMs(err);
  const retryable =
    err.code === Code.Unavailable || (err.code === Code.ResourceExhausted && server?.fromRetryInfo === true);
  if (!retryable) {
    return undefined;
  }
  if (server) {
    // At least what the server said, spread by up to a fifth (at most a second) so callers do not return together.
    return server.ms + o.random() * Math.min(server.ms / 5, 1000);
  }
  const backoff = Math.min(o.maxBackoffMs, o.initialBackoffMs * 2 ** (attempt - 1));
  // "Equal jitter": half fixed, half random.
  return backoff / 2 + o.random() * (backoff / 2);
}

/** Resolves after `ms`, or rejects with the signal's reason when it aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
