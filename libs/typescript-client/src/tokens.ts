// Access tokens: issued on first use, renewed 5 minutes before expiry (or a fifth of the lifetime when that
// is shorter), with one IssueToken in flight however many callers wait.
import { inspect } from "node:util";
import type { IssueTokenRequest, IssueTokenResponse } from "./gen/keymesh/v1/token_service_pb";
import type { Credentials } from "./credentials";

/** The longest renewal margin before expiry (5 minutes). */
export const MAX_RENEW_MARGIN_MS = 5 * 60 * 1000;

/** When a token with this lifetime, issued at `issuedAt`, should be renewed. */
export function renewAt(issuedAt: number, lifetimeMs: number): number {
  const margin = Math.min(MAX_RENEW_MARGIN_MS, lifetimeMs / 5);
  return issuedAt + lifetimeMs - margin;
}

/** Waits for `promise`, or rejects with the signal's reason when it aborts first (the promise keeps running). */
export function abortable<T>(promise: Promise<T>, signal?: AbortSignal): Promise<T> {
  if (!signal) {
    return promise;
  }
  if (signal.aborted) {
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e) => {
        signal.removeEventListener("abort", onAbort);
        reject(e);
      },
    );
  });
}

/** Issues and caches access tokens. The token lives in private fields only. */
export class TokenSource {
  readonly #credentials: Credentials;
  readonly #issue: (request: IssueTokenRequest) => Promise<IssueTokenResponse>;
  readonly #now: () => number;
  #token: string | undefined;
  #renewAt = 0;
  #inflight: Promise<string> | undefined;

  constructor(
    credentials: Credentials,
    issue: (request: IssueTokenRequest) => Promise<IssueTokenResponse>,
    now: () => number = Date.now,
  ) {
    this.#credentials = credentials;
    this.#issue = issue;
    this.#now = now;
  }

  /** A valid access token; concurrent callers share one renewal. `signal` stops this caller's wait only. */
  token(signal?: AbortSignal): Promise<string> {
    if (this.#token !== undefined && this.#now() < this.#renewAt) {
      return Promise.resolve(this.#token);
    }
    if (!this.#inflight) {
      const inflight = this.#renew().finally(() => {
        if (this.#inflight === inflight) {
          this.#inflight = undefined;
        }
      });
      inflight.catch(() => undefined); // every waiter gets the error; none is left unhandled
      this.#inflight = inflight;
    }
    return abortable(this.#inflight, signal);
  }

  /** Forgets the cached token: the next call issues a new one. */
  invalidate(): void {
    this.#token = undefined;
    this.#renewAt = 0;
  }

  async #renew(): Promise<string> {
    const request = await this.#credentials.issueTokenRequest();
    const issuedAt = this.#now();
    const response = await this.#issue(request);
    this.#token = response.accessToken;
    this.#renewAt = renewAt(issuedAt, response.expiresInSeconds * 1000);
    return response.accessToken;
  }

  toString(): string {
    return "TokenSource";
  }

  [inspect.custom](): string {
    return "TokenSource";
  }
}
