// google.rpc.RetryInfo (google/rpc/error_details.proto), described at run time: no npm package ships the
// google.rpc types for protobuf-es v2, and proto/ holds only keymesh's own files. The field numbers and
// types are those of googleapis' error_details.proto:
//   message RetryInfo { google.protobuf.Duration retry_delay = 1; }
import { create, createFileRegistry, type Message } from "@bufbuild/protobuf";
import type { GenMessage } from "@bufbuild/protobuf/codegenv2";
import {
  type Duration,
  FieldDescriptorProto_Label,
  FieldDescriptorProto_Type,
  FileDescriptorProtoSchema,
  file_google_protobuf_duration,
} from "@bufbuild/protobuf/wkt";

/** google.rpc.RetryInfo: how long the client should wait before retrying. */
export type RetryInfo = Message<"google.rpc.RetryInfo"> & {
  retryDelay?: Duration;
};

const errorDetailsFile = create(FileDescriptorProtoSchema, {
  name: "google/rpc/error_details.proto",
  package: "google.rpc",
  dependency: ["google/protobuf/duration.proto"],
  syntax: "proto3",
  messageType: [
    {
      name: "RetryInfo",
      field: [
        {
          name: "retry_delay",
          jsonName: "retryDelay",
          number: 1,
          label: FieldDescriptorProto_Label.OPTIONAL,
          type: FieldDescriptorProto_Type.MESSAGE,
          typeName: ".google.protobuf.Duration",
        },
      ],
    },
  ],
});

const registry = createFileRegistry(errorDetailsFile, (name) =>
  name === "google/protobuf/duration.proto" ? file_google_protobuf_duration : undefined,
);

/** The descriptor of google.rpc.RetryInfo, for ConnectError.findDetails. */
export const RetryInfoSchema = registry.getMessage("google.rpc.RetryInfo") as unknown as GenMessage<RetryInfo>;
if (!RetryInfoSchema) {
  throw new Error("google.rpc.RetryInfo descriptor missing");
}
