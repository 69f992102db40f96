//! Compiles `proto/keymesh/v1` with protox (a pure-Rust protobuf compiler), so building keymesh needs no
//! `protoc` on the machine, and writes the descriptor set that server reflection serves.

use std::{env, path::PathBuf};

use protox::prost::Message as _;

/// Messages that carry plaintext, key material, client secrets or tokens. They get no `Debug` impl at all,
/// so no log line or error can print them; `lib.rs` asserts that at compile time.
const SECRET_MESSAGES: &[&str] = &[
    ".keymesh.v1.EncryptItem",
    ".keymesh.v1.EncryptRequest",
    ".keymesh.v1.DecryptItemResult",
    ".keymesh.v1.DecryptResponse",
    ".keymesh.v1.GenerateDataKeyResponse",
    ".keymesh.v1.DecapsulateResponse",
    ".keymesh.v1.EncapsulateResponse",
    ".keymesh.v1.GetDataKeyResponse",
    ".keymesh.v1.EncryptStreamRequest",
    ".keymesh.v1.DecryptStreamResponse",
    ".keymesh.v1.CreateApplicationResponse",
    ".keymesh.v1.RotateClientSecretResponse",
    ".keymesh.v1.RegisterApplicationResponse",
    ".keymesh.v1.IssueTokenRequest",
    ".keymesh.v1.IssueTokenResponse",
    ".keymesh.v1.RevokeTokenRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "keymesh/v1/common.proto",
        "keymesh/v1/key_service.proto",
        "keymesh/v1/crypto_service.proto",
        "keymesh/v1/token_service.proto",
        "keymesh/v1/audit_service.proto",
    ];
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(out.join("keymesh_descriptor.bin"), fds.encode_to_vec())?;

    // Type names (`prost::Name`): the CLI finds each message's descriptor by them to print the protobuf JSON.
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .skip_debug(SECRET_MESSAGES.iter().copied())
        // Audit batches carry their events as encoded bytes, wire-identical to the .proto (see audit_frames.rs).
        .extern_path(".keymesh.v1.AppendRequest", "crate::audit_frames::AppendRequest")
        .compile_fds_with_config(fds, config)?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
