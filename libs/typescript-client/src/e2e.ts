// The end-to-end driver the Rust integration test runs: `node dist/e2e.js basic`, with the KEYMESH_* variables.
// Everything goes through the wrapper. Prints one JSON object as the last line of stdout; on failure, one line
// on stderr and a non-zero exit.
import { randomBytes, randomInt } from "node:crypto";
import {
  Algorithm,
  createKeymeshClient,
  Credentials,
  GrantType,
  KeymeshError,
  KeyPurpose,
  type Endpoints,
} from "./index";

function env(name: string): string {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set`);
  }
  return value;
}

/** The error a call must fail with; anything else (or success) fails the driver. */
async function refusal(what: string, expected: string, call: () => Promise<unknown>): Promise<KeymeshError> {
  try {
    await call();
  } catch (e) {
    if (e instanceof KeymeshError && e.code === expected) {
      return e;
    }
    throw new Error(`${what}: expected ${expected}, got ${e instanceof Error ? e.message : String(e)}`);
  }
  throw new Error(`${what}: expected ${expected}, but it succeeded`);
}

async function basic(): Promise<Record<string, unknown>> {
  const endpoints: Endpoints = {
    keyService: env("KEYMESH_KEY_SERVICE"),
    cryptoService: env("KEYMESH_CRYPTO_SERVICE"),
    tokenService: env("KEYMESH_TOKEN_SERVICE"),
    auditService: env("KEYMESH_AUDIT_SERVICE"),
  };
  const tls = {
    caCert: env("KEYMESH_CA_CERT"),
    clientCert: env("KEYMESH_CLIENT_CERT"),
    clientKey: env("KEYMESH_CLIENT_KEY"),
  };
  const clientId = env("KEYMESH_CLIENT_ID");
  const keyName = env("KEYMESH_TEST_KEY");
  const rustCiphertext = Buffer.from(env("KEYMESH_TEST_RUST_CIPHERTEXT_B64"), "base64");
  const rustAad = Buffer.from(process.env.KEYMESH_TEST_RUST_AAD_B64 ?? "", "base64");

  const client = createKeymeshClient({
    endpoints,
    ...tls,
    credentials: Credentials.clientCredentials(clientId, env("KEYMESH_CLIENT_SECRET")),
  });
  const wrong = createKeymeshClient({
    endpoints,
    ...tls,
    credentials: Credentials.clientCredentials(clientId, `wrong-${randomBytes(12).toString("hex")}`),
  });
  try {
    // A token by client credentials (the calls below reuse it).
    await client.accessToken();

    const created = await client.keys.createKey({
      name: keyName,
      purpose: KeyPurpose.ENCRYPT,
      algorithm: Algorithm.AES_256_GCM,
    });
    if (!created.key?.keyId) {
      throw new Error("CreateKey returned no key");
    }

    const plaintext = randomBytes(randomInt(1, 4097));
    const aad = Buffer.from(`keymesh-typescript-e2e:${randomBytes(8).toString("hex")}`);
    const encrypted = await client.crypto.encrypt({ key: keyName, plaintext, aad });
    const decrypted = await client.crypto.decrypt({ ciphertext: encrypted.ciphertext, aad });
    const roundtrip = Buffer.from(decrypted.plaintext).equals(plaintext);
    if (!roundtrip) {
      throw new Error("Decrypt returned another plaintext");
    }

    const rust = await client.crypto.decrypt({ ciphertext: rustCiphertext, aad: rustAad });

    const missing = `missing-${randomBytes(8).toString("hex")}`;
    const notFound = await refusal("GetKey of a missing key", "NOT_FOUND", () => client.keys.getKey({ key: missing }));

    const unauthenticated = await refusal("IssueToken with a wrong secret", "UNAUTHENTICATED", () =>
      wrong.accessToken(),
    );
    // The raw call through the wrapper's typed client is refused the same way.
    await refusal("IssueToken with a wrong secret (typed client)", "UNAUTHENTICATED", () =>
      wrong.tokens.issueToken({
        grantType: GrantType.CLIENT_CREDENTIALS,
        clientId,
        clientSecret: `wrong-${randomBytes(12).toString("hex")}`,
      }),
    );

    return {
      language: "typescript",
      key_id: created.key.keyId,
      key_name: keyName,
      roundtrip,
      ciphertext_b64: Buffer.from(encrypted.ciphertext).toString("base64"),
      plaintext_b64: plaintext.toString("base64"),
      aad_b64: aad.toString("base64"),
      rust_plaintext_b64: Buffer.from(rust.plaintext).toString("base64"),
      refused: { code: notFound.code, code_number: notFound.codeNumber, message: notFound.serverMessage },
      unauthenticated: {
        code: unauthenticated.code,
        code_number: unauthenticated.codeNumber,
        message: unauthenticated.serverMessage,
      },
    };
  } finally {
    client.close();
    wrong.close();
  }
}

async function main(): Promise<void> {
  const command = process.argv[2];
  if (command !== "basic") {
    throw new Error(`usage: node e2e.js basic (got ${command ?? "nothing"})`);
  }
  const result = await basic();
  await new Promise<void>((resolve) => process.stdout.write(`${JSON.stringify(result)}\n`, () => resolve()));
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    const message = e instanceof Error ? e.message : String(e);
    process.stderr.write(`typescript e2e: ${message.replace(/\s+/g, " ")}\n`, () => process.exit(1));
  },
);
