//! The CryptoService gRPC methods, one module per family of RPCs.

mod data_key;
mod decrypt;
mod encrypt;
mod kem;
mod mac;
mod re_encrypt;
mod sign;
mod stream;
mod utility;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use keymesh_audit::{AuditScope, AuditSink};
use keymesh_gate::Gate;
use keymesh_limits::Limiter;
use keymesh_mesh::auth::AccessClaims;
use keymesh_policy::{Attributes, PolicyEngine};
use keymesh_proto::algorithm::ToProto;
use keymesh_proto::identifiers::{self, KEY_ID_PREFIX};
use keymesh_proto::v1::{self as pb, crypto_service_server::CryptoService};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    dek_cache::{CachedDek, DekCache, DekRequest},
    error::CryptoServiceError,
};

/// The CryptoService implementation.
pub struct CryptoRpc {
    gate: Gate,
    deks: Arc<DekCache>,
    audit: AuditSink,
    /// Largest unary plaintext or ciphertext (batch items summed); larger data goes through
    /// EncryptStream/DecryptStream.
    unary_limit: usize,
    policy: Arc<PolicyEngine>,
    limits: Arc<Limiter>,
}

impl CryptoRpc {
    /// Wires the service. `gate` admits callers; `audit` is the sink it records into; `limits` also
    /// holds the plaintext quotas checked on each use of a key.
    pub fn new(
        gate: Gate,
        deks: Arc<DekCache>,
        audit: AuditSink,
        unary_limit: usize,
        policy: Arc<PolicyEngine>,
        limits: Arc<Limiter>,
    ) -> Self {
        Self { gate, deks, audit, unary_limit, policy, limits }
    }

    /// The quotas on plaintext leaving the mesh (Decrypt, data keys, KEM shared secrets) for one use of
    /// `key_id`; other operations are not counted.
    async fn admit_plaintext(
        &self,
        claims: &AccessClaims,
        key_id: &str,
        permission: pb::Operation,
    ) -> Result<(), Status> {
        match permission {
            pb::Operation::Decrypt
            | pb::Operation::GenerateDataKey
            | pb::Operation::Decapsulate
            | pb::Operation::Encapsulate => Ok(self.limits.admit_plaintext(&claims.sub, key_id).await?),
            _ => Ok(()),
        }
    }

    /// FIPS mode, the tenant's and the key's policy on one use of a key: the warnings to return, or the
    /// refusal. Recorded in the audit event either way.
    fn decide(
        &self,
        claims: &AccessClaims,
        audit: &mut Audited,
        dek: &CachedDek,
        operation: pb::Operation,
        context: &HashMap<String, String>,
    ) -> Result<Vec<String>, CryptoServiceError> {
        let (external_issuer, external_subject) = claims.external();
        let attributes = Attributes {
            identity: &claims.sub,
            tenant: &claims.tenant,
            roles: claims.role_names(),
            external_issuer,
            external_subject,
            context,
            operation,
            key_id: &dek.key_id,
            key_name: &dek.key_name,
            labels: &dek.labels,
            algorithm: dek.algorithm,
            version: dek.version,
            time: chrono::Utc::now(),
        };
        let warnings = self.policy.check_use(dek.policy.as_ref(), &attributes)?;
        audit.0.policy_warnings(&warnings);
        Ok(warnings)
    }

    /// The gate: the caller authenticated and admitted under its rate limits, and the call's audit event.
    async fn admit<T>(&self, request: &Request<T>, operation: &str) -> Result<(Arc<AccessClaims>, Audited), Status> {
        let admitted = self.gate.admit(request, operation).await?;
        Ok((admitted.claims, Audited(admitted.audit)))
    }

    /// A further audit event of an admitted caller (a batch item, the second side of a ReEncrypt).
    fn audited(&self, operation: &str, claims: &AccessClaims) -> Audited {
        Audited(self.gate.scope(operation, claims))
    }

    /// One use of a key, the same steps for every operation (unary, batch item, stream, both sides of a
    /// ReEncrypt, data keys, public-key decryption, sign, MAC): authorize by the name the request or the
    /// ciphertext gives before any material moves, fetch the material, name the key in the audit event,
    /// authorize again by the stored name (the request may have named the key by id, and a ciphertext's
    /// header is authenticated only once it opens), count the plaintext quotas, and decide by policy. The
    /// key and the policy's warnings.
    pub(super) async fn key_use(
        &self,
        claims: &AccessClaims,
        audit: &mut Audited,
        key: KeyUse<'_>,
    ) -> Result<(Arc<CachedDek>, Vec<String>), Status> {
        // A reference key-service would refuse is refused here, naming the field; one from a ciphertext's
        // header (which keymesh never writes malformed) is any other bad ciphertext.
        let invalid = |e: identifiers::InvalidIdentifier| -> Status {
            if key.from_ciphertext {
                CryptoServiceError::DecryptionFailed.into()
            } else {
                CryptoServiceError::from(e).into()
            }
        };
        identifiers::key_reference(key.field, key.key).map_err(invalid)?;
        if let Some(name) = key.claimed_name {
            // A request's name was checked as the reference just above; a header's name is checked here.
            if name != key.key {
                identifiers::key_name(key.field, name).map_err(invalid)?;
            }
            claims.require_key_operation(name, key.permission)?;
        }
        let request = DekRequest {
            tenant_id: &claims.tenant,
            key: key.key,
            version: key.version,
            operation: key.fetch,
            on_behalf_of: &claims.sub,
        };
        let fetched = if key.fetch == pb::Operation::Encrypt {
            self.deks.get_for_encryption(request).await
        } else {
            self.deks.get(request).await
        };
        let dek = fetched.map_err(|e| match e {
            // An unknown key id a ciphertext names (tampered, or another tenant's) is any other bad ciphertext.
            CryptoServiceError::KeyNotFound(_) | CryptoServiceError::InvalidArgument { .. } if key.from_ciphertext => {
                CryptoServiceError::DecryptionFailed
            }
            other => other,
        })?;
        audit.resource(&dek.key_id, dek.version, dek.algorithm.to_proto() as i32);
        claims.require_key_operation(&dek.key_name, key.permission)?;
        self.admit_plaintext(claims, &dek.key_id, key.permission).await?;
        let warnings = self.decide(claims, audit, &dek, key.permission, key.context)?;
        count_operation(key.permission, &dek);
        Ok((dek, warnings))
    }
}

/// `keymesh.crypto.operations` by `operation` and `algorithm`: every admitted use of a key (a batch item, each
/// side of a ReEncrypt, a stream), counted once it passed authorization, quotas and policy. Both labels come
/// from closed lists (the API's operations, keymesh's algorithms), never from the caller.
static OPERATIONS: std::sync::LazyLock<opentelemetry::metrics::Counter<u64>> = std::sync::LazyLock::new(|| {
    opentelemetry::global::meter("keymesh")
        .u64_counter("keymesh.crypto.operations")
        .with_description("Admitted uses of a key, by operation and algorithm")
        .build()
});

fn count_operation(operation: pb::Operation, dek: &CachedDek) {
    // The names permissions and audit events use, static strings: no allocation on the hot path.
    let operation = keymesh_mesh::auth::operation_name(operation);
    OPERATIONS.add(
        1,
        &[
            opentelemetry::KeyValue::new("operation", operation),
            opentelemetry::KeyValue::new("algorithm", dek.algorithm.name()),
        ],
    );
}

/// What one use of a key names.
pub(super) struct KeyUse<'a> {
    /// The key: a name or an id (`k_…`), from the request or a ciphertext's header.
    pub key: &'a str,
    /// The request field that names it, for INVALID_ARGUMENT.
    pub field: &'static str,
    /// The name to authorize before the key is fetched: the request's name, or the name a ciphertext's
    /// header claims; `None` when only an id is known.
    pub claimed_name: Option<&'a str>,
    /// The version (0: the primary; ignored when sealing, which uses the ACTIVE one).
    pub version: u32,
    /// What the material is fetched for: ENCRYPT takes a grant of encryptions with the ACTIVE version.
    pub fetch: pb::Operation,
    /// The operation the caller must be allowed on the key.
    pub permission: pb::Operation,
    /// The encryption context the policy sees.
    pub context: &'a HashMap<String, String>,
    /// The key reference came from a ciphertext: an unknown key is "decryption failed".
    pub from_ciphertext: bool,
}

impl<'a> KeyUse<'a> {
    /// A key the request names (a name, authorized before the fetch, or an id, authorized after it).
    pub fn named(key: &'a str, version: u32, permission: pb::Operation, context: &'a HashMap<String, String>) -> Self {
        Self {
            key,
            field: "key",
            claimed_name: (!key.starts_with(KEY_ID_PREFIX)).then_some(key),
            version,
            fetch: permission,
            permission,
            context,
            from_ciphertext: false,
        }
    }
}

/// No encryption context (signatures, MACs, public-key decryption).
static NO_CONTEXT: std::sync::LazyLock<HashMap<String, String>> = std::sync::LazyLock::new(HashMap::new);

/// The audit event of one call by an application.
pub(super) struct Audited(AuditScope);

impl Audited {
    fn resource(&mut self, key_id: &str, version: u32, algorithm: i32) {
        self.0.resource(key_id, version, algorithm);
    }

    async fn finish<T>(self, sink: &AuditSink, result: Result<T, Status>) -> Result<Response<T>, Status> {
        self.0.finish(sink, result).await.map(Response::new)
    }
}

/// Most items in one batch.
pub const MAX_BATCH: usize = 1000;

/// The encryption context as the ciphertext format binds it (sorted).
fn context_of(map: &std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Checks a batch as a whole: its size, its total payload, and that the single-item fields are unused.
fn check_batch(
    items: usize,
    total_bytes: usize,
    single_set: bool,
    field: &'static str,
    unary_limit: usize,
) -> Result<(), CryptoServiceError> {
    if single_set {
        return Err(CryptoServiceError::InvalidArgument {
            field,
            reason: format!("set either {field} or batch, not both"),
        });
    }
    if items > MAX_BATCH {
        return Err(CryptoServiceError::InvalidArgument {
            field: "batch",
            reason: format!("{items} items is over the limit of {MAX_BATCH}; split the batch"),
        });
    }
    if total_bytes > unary_limit {
        return Err(CryptoServiceError::InvalidArgument {
            field: "batch",
            reason: format!(
                "{total_bytes} bytes in all is over the unary limit of {unary_limit}; split the batch, or use \
                 EncryptStream/DecryptStream for large data"
            ),
        });
    }
    Ok(())
}

/// A refused batch item, as the API reports it.
fn item_error(status: &Status) -> pb::ItemError {
    pb::ItemError { code: status.code() as i32, message: status.message().to_owned() }
}

type ResponseStream<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl CryptoService for CryptoRpc {
    async fn encrypt(&self, request: Request<pb::EncryptRequest>) -> Result<Response<pb::EncryptResponse>, Status> {
        self.handle_encrypt(request).await
    }

    async fn decrypt(&self, request: Request<pb::DecryptRequest>) -> Result<Response<pb::DecryptResponse>, Status> {
        self.handle_decrypt(request).await
    }

    async fn re_encrypt(
        &self,
        request: Request<pb::ReEncryptRequest>,
    ) -> Result<Response<pb::ReEncryptResponse>, Status> {
        self.handle_re_encrypt(request).await
    }

    async fn generate_data_key(
        &self,
        request: Request<pb::GenerateDataKeyRequest>,
    ) -> Result<Response<pb::GenerateDataKeyResponse>, Status> {
        self.handle_generate_data_key(request).await
    }

    async fn generate_data_key_without_plaintext(
        &self,
        request: Request<pb::GenerateDataKeyWithoutPlaintextRequest>,
    ) -> Result<Response<pb::GenerateDataKeyWithoutPlaintextResponse>, Status> {
        self.handle_generate_data_key_without_plaintext(request).await
    }

    async fn sign(&self, request: Request<pb::SignRequest>) -> Result<Response<pb::SignResponse>, Status> {
        self.handle_sign(request).await
    }

    async fn verify(&self, request: Request<pb::VerifyRequest>) -> Result<Response<pb::VerifyResponse>, Status> {
        self.handle_verify(request).await
    }

    async fn generate_mac(
        &self,
        request: Request<pb::GenerateMacRequest>,
    ) -> Result<Response<pb::GenerateMacResponse>, Status> {
        self.handle_generate_mac(request).await
    }

    async fn verify_mac(
        &self,
        request: Request<pb::VerifyMacRequest>,
    ) -> Result<Response<pb::VerifyMacResponse>, Status> {
        self.handle_verify_mac(request).await
    }

    async fn decapsulate(
        &self,
        request: Request<pb::DecapsulateRequest>,
    ) -> Result<Response<pb::DecapsulateResponse>, Status> {
        self.handle_decapsulate(request).await
    }

    async fn encapsulate(
        &self,
        request: Request<pb::EncapsulateRequest>,
    ) -> Result<Response<pb::EncapsulateResponse>, Status> {
        self.handle_encapsulate(request).await
    }

    async fn hash(&self, request: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
        self.handle_hash(request).await
    }

    async fn generate_random(
        &self,
        request: Request<pb::GenerateRandomRequest>,
    ) -> Result<Response<pb::GenerateRandomResponse>, Status> {
        self.handle_generate_random(request).await
    }

    type EncryptStreamStream = ResponseStream<pb::EncryptStreamResponse>;

    async fn encrypt_stream(
        &self,
        request: Request<Streaming<pb::EncryptStreamRequest>>,
    ) -> Result<Response<Self::EncryptStreamStream>, Status> {
        self.handle_encrypt_stream(request).await
    }

    type DecryptStreamStream = ResponseStream<pb::DecryptStreamResponse>;

    async fn decrypt_stream(
        &self,
        request: Request<Streaming<pb::DecryptStreamRequest>>,
    ) -> Result<Response<Self::DecryptStreamStream>, Status> {
        self.handle_decrypt_stream(request).await
    }
}
