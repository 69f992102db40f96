// How an application authenticates: client credentials (client id and secret) or token exchange (a platform
// token, e.g. a projected Kubernetes service-account token, read afresh from its file at each renewal).
import { readFile } from "node:fs/promises";
import { readFileSync } from "node:fs";
import { inspect } from "node:util";
import { create } from "@bufbuild/protobuf";
import { GrantType, IssueTokenRequestSchema, type IssueTokenRequest } from "./gen/keymesh/v1/token_service_pb";
import { KeymeshSetupError } from "./errors";

/** The subject token type sent with token exchange. */
export const SUBJECT_TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt";

/** Plain-object forms accepted wherever credentials are. */
export type CredentialsInit =
  | { clientId: string; clientSecret: string }
  | { subjectTokenFile: string };

/**
 * Credentials for IssueToken. The secret is held in a private field: it never appears in toString, JSON or
 * util.inspect.
 */
export class Credentials {
  /** The client id (empty with token exchange). */
  readonly clientId: string;
  /** The platform token's file, with token exchange. */
  readonly subjectTokenFile: string | undefined;
  readonly #clientSecret: string;

  private constructor(clientId: string, clientSecret: string, subjectTokenFile: string | undefined) {
    this.clientId = clientId;
    this.#clientSecret = clientSecret;
    this.subjectTokenFile = subjectTokenFile;
  }

  /** GRANT_TYPE_CLIENT_CREDENTIALS with this client id and secret. */
  static clientCredentials(clientId: string, clientSecret: string): Credentials {
    if (!clientId || !clientSecret) {
      throw new KeymeshSetupError("client credentials need a client id and a client secret");
    }
    return new Credentials(clientId, clientSecret, undefined);
  }

  /** GRANT_TYPE_TOKEN_EXCHANGE with the token in `path`, read again at every renewal (the platform rotates it). */
  static tokenExchange(path: string): Credentials {
    if (!path) {
      throw new KeymeshSetupError("token exchange needs a subject token file");
    }
    return new Credentials("", "", path);
  }

  /** Reads a credentials JSON file (`client_id` and `client_secret`, or `subject_token_file`), e.g. bootstrap-credentials.json. */
  static fromFile(path: string): Credentials {
    let parsed: { client_id?: unknown; client_secret?: unknown; subject_token_file?: unknown };
    try {
      parsed = JSON.parse(readFileSync(path, "utf8"));
    } catch (e) {
      // The file's content is not quoted: it holds a secret.
      throw new KeymeshSetupError(`${path}: not a readable credentials JSON file (${(e as NodeJS.ErrnoException).code ?? "invalid JSON"})`);
    }
    if (typeof parsed.subject_token_file === "string" && parsed.subject_token_file) {
      return Credentials.tokenExchange(parsed.subject_token_file);
    }
    if (typeof parsed.client_id !== "string" || typeof parsed.client_secret !== "string") {
      throw new KeymeshSetupError(`${path}: needs client_id and client_secret (or subject_token_file)`);
    }
    return Credentials.clientCredentials(parsed.client_id, parsed.client_secret);
  }

  /** A Credentials from itself or a plain object. */
  static from(init: Credentials | CredentialsInit): Credentials {
    if (init instanceof Credentials) {
      return init;
    }
    if ("subjectTokenFile" in init && init.subjectTokenFile) {
      return Credentials.tokenExchange(init.subjectTokenFile);
    }
    const c = init as { clientId?: string; clientSecret?: string };
    return Credentials.clientCredentials(c.clientId ?? "", c.clientSecret ?? "");
  }

  /** The IssueToken request for a new token (reads the subject token file afresh). */
  async issueTokenRequest(): Promise<IssueTokenRequest> {
    if (this.subjectTokenFile !== undefined) {
      let subjectToken: string;
      try {
        subjectToken = (await readFile(this.subjectTokenFile, "utf8")).trim();
      } catch (e) {
        throw new KeymeshSetupError(`${this.subjectTokenFile}: cannot read the subject token (${(e as NodeJS.ErrnoException).code ?? "error"})`);
      }
      return create(IssueTokenRequestSchema, {
        grantType: GrantType.TOKEN_EXCHANGE,
        subjectToken,
        subjectTokenType: SUBJECT_TOKEN_TYPE_JWT,
      });
    }
    return create(IssueTokenRequestSchema, {
      grantType: GrantType.CLIENT_CREDENTIALS,
      clientId: this.clientId,
      clientSecret: this.#clientSecret,
    });
  }

  toString(): string {
    return this.subjectTokenFile !== undefined
      ? `Credentials(token exchange, subject_token_file=${this.subjectTokenFile})`
      : `Credentials(client_id=${this.clientId})`;
  }

  toJSON(): Record<string, string> {
    return this.subjectTokenFile !== undefined
      ? { subject_token_file: this.subjectTokenFile }
      : { client_id: this.clientId };
  }

  [inspect.custom](): string {
    return this.toString();
  }
}
