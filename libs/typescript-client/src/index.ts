export {
  createKeymeshClient,
  createKeymeshClientWithTransports,
  DEFAULT_TIMEOUT_MS,
  endpointUrl,
  MAX_MESSAGE_BYTES,
  readPem,
  type CommonOptions,
  type Endpoints,
  type KeymeshClient,
  type KeymeshClientOptions,
  type PemSource,
  type ServiceName,
} from "./client";
export { Credentials, SUBJECT_TOKEN_TYPE_JWT, type CredentialsInit } from "./credentials";
export { GRPC_CODE_NAMES, grpcCodeName, KeymeshError, KeymeshSetupError } from "./errors";
export { type RetryOptions, retryDelayMs, serverRetryDelayMs } from "./retry";
export { RetryInfoSchema, type RetryInfo } from "./rpc";
export { renewAt, TokenSource } from "./tokens";
export * from "./gen/keymesh/v1/common_pb";
export * from "./gen/keymesh/v1/key_service_pb";
export * from "./gen/keymesh/v1/crypto_service_pb";
export * from "./gen/keymesh/v1/token_service_pb";
export * from "./gen/keymesh/v1/audit_service_pb";
export { create, fromBinary, toBinary } from "@bufbuild/protobuf";
