//! A keyring: the KEK backends a deployment wraps DEKs under, in order. Every new DEK is wrapped under the
//! primary and under each secondary, so when one KMS (or one region of it) is down, the DEK still unwraps
//! through another. Retired members only unwrap: they are what a re-wrap moves material away from.
//!
//! Each wrap is labelled with the member's configured name, not its backend type, so two members of one
//! type (two AWS regions, two local master keys) stay apart. Renaming a member orphans its wraps.

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use keymesh_crypto::SecretKey;
use opentelemetry::KeyValue;

use crate::{BackendDescription, KeyEncryptionBackend, KmsError, WrapContext, WrappedKey};

/// What a member of the keyring is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Wraps every new DEK and unwraps first.
    Primary,
    /// Also wraps every new DEK; unwraps when the members before it cannot.
    Secondary,
    /// Only unwraps, so that material wrapped under it can be re-wrapped elsewhere.
    Retired,
}

/// One member: a named backend in a role.
#[derive(Clone)]
pub struct Member {
    /// The label stored with each of its wraps.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The backend.
    pub backend: Arc<dyn KeyEncryptionBackend>,
}

/// The wraps of one DEK, one per keyring member it is wrapped under; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrapSet(Vec<WrappedKey>);

impl WrapSet {
    /// A set from stored wraps; `None` when there are none.
    pub fn new(wraps: Vec<WrappedKey>) -> Option<Self> {
        (!wraps.is_empty()).then_some(Self(wraps))
    }

    /// A set of one wrap.
    pub fn single(wrap: WrappedKey) -> Self {
        Self(vec![wrap])
    }

    /// The first wrap (the primary's, for sets this keyring made) and the others.
    pub fn split_first(&self) -> (&WrappedKey, &[WrappedKey]) {
        // `new` and `single` never build an empty set.
        (&self.0[0], &self.0[1..])
    }

    /// Every wrap.
    pub fn wraps(&self) -> &[WrappedKey] {
        &self.0
    }

    /// A set as rows store it: the first wrap in the row's own columns (so rows of one wrap read as they
    /// always did) and the others as a JSON list (`extra_wraps`). Fails on a list that does not parse.
    pub fn from_columns(first: WrappedKey, extra_wraps: Option<&str>) -> Result<Self, String> {
        let mut wraps = vec![first];
        if let Some(extra) = extra_wraps {
            let extra: Vec<StoredWrap> = serde_json::from_str(extra).map_err(|e| e.to_string())?;
            for wrap in extra {
                let ciphertext = B64.decode(&wrap.ciphertext).map_err(|e| e.to_string())?;
                wraps.push(WrappedKey { backend: wrap.backend, kek_id: wrap.kek_id, ciphertext });
            }
        }
        Ok(Self(wraps))
    }

    /// The first wrap and the others' JSON list (`None` when there are none), for [`WrapSet::from_columns`].
    pub fn to_columns(&self) -> (WrappedKey, Option<String>) {
        let (first, rest) = self.split_first();
        let extra = (!rest.is_empty()).then(|| {
            let rest: Vec<StoredWrap> = rest
                .iter()
                .map(|w| StoredWrap {
                    backend: w.backend.clone(),
                    kek_id: w.kek_id.clone(),
                    ciphertext: B64.encode(&w.ciphertext),
                })
                .collect();
            // A Vec of plain strings always serializes.
            serde_json::to_string(&rest).unwrap_or_default()
        });
        (first.clone(), extra)
    }
}

/// One further wrap in an `extra_wraps` list.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredWrap {
    backend: String,
    kek_id: String,
    ciphertext: String,
}

/// The keyring.
#[derive(Clone)]
pub struct Keyring {
    members: Vec<Member>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.members.iter().map(|m| (&m.name, m.role))).finish()
    }
}

impl Keyring {
    /// A keyring of one primary backend.
    pub fn single(name: &str, backend: Arc<dyn KeyEncryptionBackend>) -> Self {
        Self { members: vec![Member { name: name.to_owned(), role: Role::Primary, backend }] }
    }

    /// A keyring from its members: exactly one primary, unique names. Members unwrap in the order given,
    /// except that the primary always goes first.
    pub fn new(mut members: Vec<Member>) -> Result<Self, KmsError> {
        let invalid = |reason: String| KmsError::Config { reason };
        if members.iter().filter(|m| m.role == Role::Primary).count() != 1 {
            return Err(invalid("a keyring needs exactly one primary backend".into()));
        }
        for (i, member) in members.iter().enumerate() {
            if members[..i].iter().any(|m| m.name == member.name) {
                return Err(invalid(format!("backend {:?} is listed twice", member.name)));
            }
        }
        members.sort_by_key(|m| m.role != Role::Primary);
        Ok(Self { members })
    }

    /// The members, primary first.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The primary member.
    pub fn primary(&self) -> &Member {
        // `new` and `single` guarantee a primary, placed first.
        &self.members[0]
    }

    /// Descriptions of every member, for start-up logs and health.
    pub fn describe(&self) -> Vec<(String, Role, BackendDescription)> {
        self.members.iter().map(|m| (m.name.clone(), m.role, m.backend.describe())).collect()
    }

    /// One line naming each member and its KEK, for logs.
    pub fn summary(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{} ({:?}, {})", m.name, m.role, m.backend.describe().detail))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Wraps under the primary only: for short-lived material (import tokens) and for stores that keep one
    /// wrap per row.
    pub async fn wrap_primary(&self, dek: &SecretKey, context: &WrapContext) -> Result<WrappedKey, KmsError> {
        let member = self.primary();
        Ok(label(member, traced(member, "wrap", member.backend.wrap(dek, context)).await?))
    }

    /// Wraps under the primary and every secondary. The primary must succeed; a secondary that fails is
    /// logged and left out, so an outage of a secondary does not stop key creation. A re-wrap adds it later.
    pub async fn wrap(&self, dek: &SecretKey, context: &WrapContext) -> Result<WrapSet, KmsError> {
        let mut wraps = vec![self.wrap_primary(dek, context).await?];
        for member in self.members.iter().filter(|m| m.role == Role::Secondary) {
            match traced(member, "wrap", member.backend.wrap(dek, context)).await.map(|w| label(member, w)) {
                Ok(wrapped) => wraps.push(wrapped),
                Err(e) => tracing::warn!(
                    backend = %member.name,
                    error = %e,
                    key_id = %context.key_id,
                    version = context.version,
                    "could not wrap under a secondary backend; a re-wrap will add it"
                ),
            }
        }
        Ok(WrapSet(wraps))
    }

    /// Unwraps through the first member, in keyring order, that holds a wrap of the set and can open it.
    /// When none can, the error is the most actionable one seen: an unavailable or refusing backend before
    /// a wrap that does not open.
    pub async fn unwrap(&self, set: &WrapSet, context: &WrapContext) -> Result<SecretKey, KmsError> {
        let mut worst: Option<KmsError> = None;
        for member in &self.members {
            for wrapped in set.0.iter().filter(|w| w.backend == member.name) {
                match traced(member, "unwrap", member.backend.unwrap(wrapped, context)).await {
                    Ok(dek) => return Ok(dek),
                    Err(e) => {
                        tracing::debug!(backend = %member.name, error = %e, "unwrap failed; trying the next backend");
                        if worst.as_ref().is_none_or(|w| e.rank() > w.rank()) {
                            worst = Some(e);
                        }
                    }
                }
            }
        }
        Err(worst.unwrap_or_else(|| {
            let (first, _) = set.split_first();
            KmsError::UnknownKek { backend: first.backend.clone(), kek_id: first.kek_id.clone() }
        }))
    }

    /// Whether the set is exactly what this keyring would make now: one current wrap per primary and
    /// secondary member, and nothing else.
    pub fn is_current(&self, set: &WrapSet) -> bool {
        let wanted: Vec<&Member> = self.members.iter().filter(|m| m.role != Role::Retired).collect();
        set.0.len() == wanted.len() && wanted.iter().all(|m| current_wrap(m, set).is_some())
    }

    /// Whether a single wrap (of material kept under the primary only) is under the primary's current KEK.
    pub fn is_current_primary(&self, wrapped: &WrappedKey) -> bool {
        let primary = self.primary();
        wrapped.backend == primary.name && primary.backend.is_current(wrapped)
    }

    /// What wrapping under this keyring means now, as "name=kek-id" pairs of the members that wrap: two
    /// keyrings with the same target wrap alike.
    pub fn target(&self) -> String {
        self.members
            .iter()
            .filter(|m| m.role != Role::Retired)
            .map(|m| format!("{}={}", m.name, m.backend.describe().kek_id))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The set this keyring would make now, keeping the wraps that are already current, or `None` when the
    /// set is current. Unlike [`Keyring::wrap`], every member must succeed: a re-wrap exists to complete
    /// sets. Wraps under retired or unknown backends are dropped.
    pub async fn rewrap(&self, set: &WrapSet, context: &WrapContext) -> Result<Option<WrapSet>, KmsError> {
        if self.is_current(set) {
            return Ok(None);
        }
        let mut dek = None;
        let mut wraps = Vec::new();
        for member in self.members.iter().filter(|m| m.role != Role::Retired) {
            if let Some(wrapped) = current_wrap(member, set) {
                wraps.push(wrapped.clone());
                continue;
            }
            if dek.is_none() {
                dek = Some(self.unwrap(set, context).await?);
            }
            if let Some(dek) = &dek {
                wraps.push(label(member, member.backend.wrap(dek, context).await?));
            }
        }
        Ok(Some(WrapSet(wraps)))
    }

    /// Checks every member with a wrap/unwrap probe; the first failure names its member.
    pub async fn health(&self) -> Result<(), KmsError> {
        for member in &self.members {
            member.backend.health().await?;
        }
        Ok(())
    }
}

/// The default keyring and the tenants' own: a tenant with a keyring of its own ("hold your own key") has
/// its DEKs wrapped by it alone, so what its provider refuses, keymesh cannot read either.
#[derive(Debug, Clone)]
pub struct Keyrings {
    default: Keyring,
    tenants: std::collections::BTreeMap<String, Keyring>,
}

impl Keyrings {
    /// The default keyring and tenant keyrings by tenant id.
    pub fn new(default: Keyring, tenants: std::collections::BTreeMap<String, Keyring>) -> Self {
        Self { default, tenants }
    }

    /// One keyring for every tenant.
    pub fn single(default: Keyring) -> Self {
        Self { default, tenants: Default::default() }
    }

    /// The keyring that wraps `tenant`'s keys.
    pub fn for_tenant(&self, tenant: &str) -> &Keyring {
        self.tenants.get(tenant).unwrap_or(&self.default)
    }

    /// The keyring of tenants without their own.
    pub fn default_keyring(&self) -> &Keyring {
        &self.default
    }

    /// Every keyring, the default one first (`None`), then each tenant's.
    pub fn all(&self) -> impl Iterator<Item = (Option<&str>, &Keyring)> {
        std::iter::once((None, &self.default)).chain(self.tenants.iter().map(|(t, k)| (Some(t.as_str()), k)))
    }

    /// What wrapping means for every tenant: the default keyring's target and each tenant keyring's.
    pub fn target(&self) -> String {
        self.all()
            .map(|(tenant, ring)| match tenant {
                None => ring.target(),
                Some(tenant) => format!("[{tenant}]{}", ring.target()),
            })
            .collect::<Vec<_>>()
            .join(";")
    }

    /// One line naming every keyring, for logs.
    pub fn summary(&self) -> String {
        self.all()
            .map(|(tenant, ring)| match tenant {
                None => ring.summary(),
                Some(tenant) => format!("tenant {tenant}: {}", ring.summary()),
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

fn current_wrap<'a>(member: &Member, set: &'a WrapSet) -> Option<&'a WrappedKey> {
    set.0.iter().find(|w| w.backend == member.name && member.backend.is_current(w))
}

/// Stamps a backend's wrap with the member's name.
/// One call to a member's backend as a client span (`kms.wrap`, `kms.unwrap`) naming the member and its
/// backend, with an error status when it fails: the KMS leg of a request's trace. The backends' own SDKs add
/// their HTTP spans below it where they emit any.
async fn traced<T>(
    member: &Member,
    operation: &'static str,
    call: impl Future<Output = Result<T, KmsError>>,
) -> Result<T, KmsError> {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "kms",
        otel.name = %format_args!("kms.{operation}"),
        otel.kind = "client",
        kms.member = %member.name,
        kms.backend = member.backend.kind(),
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    let started = std::time::Instant::now();
    let outcome = call.instrument(span.clone()).await;
    if let Err(e) = &outcome {
        span.record("otel.status_code", "error");
        span.record("otel.status_description", tracing::field::display(e));
    }
    KMS_DURATION.record(
        started.elapsed().as_secs_f64(),
        &[
            KeyValue::new("kms.member", member.name.clone()),
            KeyValue::new("kms.backend", member.backend.kind()),
            KeyValue::new("kms.operation", operation),
            KeyValue::new("outcome", if outcome.is_ok() { "ok" } else { "error" }),
        ],
    );
    outcome
}

/// `keymesh.kms.duration` by `kms.member`, `kms.backend`, `kms.operation` (wrap, unwrap) and `outcome` (ok,
/// error): the latency and the failures of each keyring member. Members and backends are named in the
/// configuration, so the labels are bounded.
static KMS_DURATION: std::sync::LazyLock<opentelemetry::metrics::Histogram<f64>> = std::sync::LazyLock::new(|| {
    opentelemetry::global::meter("keymesh")
        .f64_histogram("keymesh.kms.duration")
        .with_unit("s")
        .with_description("KMS wrap and unwrap calls, by keyring member, backend, operation and outcome")
        // A local KEK answers in microseconds, a cloud KMS in tens to hundreds of milliseconds, a failing one
        // at its deadline (1.5 s per attempt).
        .with_boundaries(vec![0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        .build()
});

fn label(member: &Member, mut wrapped: WrappedKey) -> WrappedKey {
    wrapped.backend = member.name.clone();
    wrapped
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::{LocalKms, LocalKmsConfig};

    /// A local backend that can be switched off, as a KMS outage.
    struct Switchable {
        inner: LocalKms,
        down: AtomicBool,
    }

    #[async_trait::async_trait]
    impl KeyEncryptionBackend for Switchable {
        async fn wrap(&self, dek: &SecretKey, context: &WrapContext) -> Result<WrappedKey, KmsError> {
            self.check()?;
            self.inner.wrap(dek, context).await
        }
        async fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext) -> Result<SecretKey, KmsError> {
            self.check()?;
            self.inner.unwrap(wrapped, context).await
        }
        fn kind(&self) -> &'static str {
            self.inner.kind()
        }

        fn describe(&self) -> BackendDescription {
            self.inner.describe()
        }
        async fn health(&self) -> Result<(), KmsError> {
            self.check()
        }
    }

    impl Switchable {
        fn check(&self) -> Result<(), KmsError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(KmsError::Unavailable { backend: "test".into(), reason: "switched off".into() });
            }
            Ok(())
        }
    }

    fn local(dir: &tempfile::TempDir, secret: &str) -> Arc<Switchable> {
        let config = LocalKmsConfig::resolve(dir.path().to_path_buf(), Some(secret.into()), None);
        Arc::new(Switchable { inner: LocalKms::open(&config).unwrap(), down: AtomicBool::new(false) })
    }

    fn member(name: &str, role: Role, backend: &Arc<Switchable>) -> Member {
        Member { name: name.into(), role, backend: backend.clone() }
    }

    fn ctx() -> WrapContext {
        WrapContext { tenant_id: "t".into(), key_id: "k".into(), version: 1, algorithm: "AES-256-GCM".into() }
    }

    #[tokio::test]
    async fn wraps_under_every_member_and_unwraps_through_a_secondary_when_the_primary_is_down() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (local(&d1, "one"), local(&d2, "two"));
        let ring = Keyring::new(vec![member("b", Role::Secondary, &b), member("a", Role::Primary, &a)]).unwrap();
        assert_eq!(ring.primary().name, "a");
        let dek = SecretKey::generate(32).unwrap();
        let set = ring.wrap(&dek, &ctx()).await.unwrap();
        assert_eq!(set.wraps().iter().map(|w| w.backend.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert!(ring.is_current(&set));

        a.down.store(true, Ordering::SeqCst);
        assert_eq!(ring.unwrap(&set, &ctx()).await.unwrap().expose_secret(), dek.expose_secret());
        b.down.store(true, Ordering::SeqCst);
        // Both down: the error says a backend is unavailable, not that the wrap is bad.
        assert!(matches!(ring.unwrap(&set, &ctx()).await, Err(KmsError::Unavailable { .. })));
        a.down.store(false, Ordering::SeqCst);
        // A secondary that is down does not stop wrapping; the set is then incomplete until re-wrapped.
        let partial = ring.wrap(&dek, &ctx()).await.unwrap();
        assert_eq!(partial.wraps().len(), 1);
        assert!(!ring.is_current(&partial));
        assert!(ring.rewrap(&partial, &ctx()).await.is_err(), "re-wrap needs every member");
        b.down.store(false, Ordering::SeqCst);
        let completed = ring.rewrap(&partial, &ctx()).await.unwrap().unwrap();
        assert!(ring.is_current(&completed));
        assert_eq!(completed.wraps()[0], partial.wraps()[0], "the current wrap is kept as is");
    }

    #[tokio::test]
    async fn rewrap_moves_material_off_a_retired_backend() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (old, new) = (local(&d1, "old"), local(&d2, "new"));
        let before = Keyring::single("old", old.clone());
        let dek = SecretKey::generate(32).unwrap();
        let set = before.wrap(&dek, &ctx()).await.unwrap();

        let after = Keyring::new(vec![member("new", Role::Primary, &new), member("old", Role::Retired, &old)]).unwrap();
        assert!(!after.is_current(&set));
        // Retired members still unwrap.
        assert_eq!(after.unwrap(&set, &ctx()).await.unwrap().expose_secret(), dek.expose_secret());
        let moved = after.rewrap(&set, &ctx()).await.unwrap().unwrap();
        assert_eq!(moved.wraps().len(), 1);
        assert_eq!(moved.wraps()[0].backend, "new");
        assert!(after.rewrap(&moved, &ctx()).await.unwrap().is_none(), "a current set is left alone");
        // The old backend can go: the moved set no longer needs it.
        let only_new = Keyring::single("new", new.clone());
        assert_eq!(only_new.unwrap(&moved, &ctx()).await.unwrap().expose_secret(), dek.expose_secret());
        // Context binding survives the move.
        let other = WrapContext { version: 2, ..ctx() };
        assert!(matches!(only_new.unwrap(&moved, &other).await, Err(KmsError::UnwrapFailed { .. })));
    }

    #[test]
    fn refuses_keyrings_without_one_primary_or_with_repeated_names() {
        let d = tempfile::tempdir().unwrap();
        let a = local(&d, "x");
        assert!(Keyring::new(vec![member("a", Role::Secondary, &a)]).is_err());
        assert!(Keyring::new(vec![member("a", Role::Primary, &a), member("a", Role::Secondary, &a)]).is_err());
    }
}
