//! The generated `keymesh.v1` API (prost messages and tonic clients and servers), the conversions
//! between its algorithm enums and keymesh-crypto's types, and what its identifiers may hold.
//!
//! The `.proto` files under `proto/` are the one source of truth; this crate exists so every service, the
//! SDK and the tests share one compiled copy.

pub mod algorithm;
pub mod audit_frames;
pub mod identifiers;

/// The `keymesh.v1` package.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("keymesh.v1");

    pub use crate::audit_frames::AppendRequest;
}

/// Encoded `FileDescriptorSet` of the whole API (with its imports), for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("keymesh_descriptor");

// Messages that carry secrets must not be printable: a `{:?}` of one fails to compile.
static_assertions::assert_not_impl_any!(v1::EncryptRequest: std::fmt::Debug);
static_assertions::assert_not_impl_any!(v1::EncryptItem: std::fmt::Debug);
static_assertions::assert_not_impl_any!(v1::DecryptResponse: std::fmt::Debug);
static_assertions::assert_not_impl_any!(v1::DecapsulateResponse: std::fmt::Debug);
static_assertions::assert_not_impl_any!(v1::EncapsulateResponse: std::fmt::Debug);
static_assertions::assert_not_impl_any!(v1::DecryptItemResult: std::fmt::Debug);
static_assertions::assert_not_impl_any!(v1::GetDataKeyResponse: std::fmt::Debug);
static_assertions::assert_not_impl_any!(v1::GenerateDataKeyResponse: std::fmt::Debug);
static_assertions::assert_not_impl_any!(v1::IssueTokenRequest: std::fmt::Debug);
static_assertions::assert_not_impl_any!(v1::IssueTokenResponse: std::fmt::Debug);
static_assertions::assert_not_impl_any!(v1::CreateApplicationResponse: std::fmt::Debug);
static_assertions::assert_not_impl_any!(v1::RotateClientSecretResponse: std::fmt::Debug);
static_assertions::assert_not_impl_any!(v1::RegisterApplicationResponse: std::fmt::Debug);
static_assertions::assert_not_impl_any!(v1::RevokeTokenRequest: std::fmt::Debug);
static_assertions::assert_not_impl_any!(v1::EncryptStreamRequest: std::fmt::Debug);
static_assertions::assert_not_impl_any!(v1::DecryptStreamResponse: std::fmt::Debug);
