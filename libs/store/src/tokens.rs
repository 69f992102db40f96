//! Tenants, applications, refresh tokens, revocations and token-signing keys.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, IntoActiveModel, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
    sea_query::{Expr, OnConflict},
};

use crate::{
    StoreError,
    entity::{application, refresh_token, registration, revocation, signing_key, tenant},
};

/// What presenting a refresh token came to.
#[derive(Debug)]
pub enum RefreshOutcome {
    /// It was live: it is spent now, and the successor stored.
    Rotated(refresh_token::Model),
    /// No such token.
    Unknown,
    /// Expired.
    Expired,
    /// Already spent or revoked: a replay. The whole family is revoked now (`family_id`).
    Replayed {
        /// The family revoked.
        family_id: String,
        /// Its application.
        client_id: String,
        /// The application's tenant.
        tenant_id: String,
    },
}

/// Repository of identities.
#[derive(Clone)]
pub struct TokenRepository {
    db: DatabaseConnection,
}

impl TokenRepository {
    /// Wraps a connection.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Number of tenants (zero means a fresh database).
    pub async fn tenant_count(&self) -> Result<u64, StoreError> {
        crate::bounded(async { Ok(tenant::Entity::find().count(&self.db).await?) }).await
    }

    /// Takes the start-up lock: replicas starting together against one Postgres then create the root tenant and
    /// the first signing key one at a time, so there is one of each, and the others find them. On Postgres it
    /// is a transaction-scoped advisory lock held by a connection of its own, while the work runs on the pool;
    /// SQLite is one process's file, and needs none.
    pub async fn startup_lock(&self) -> Result<StartupLock, StoreError> {
        if self.db.get_database_backend() != sea_orm::DatabaseBackend::Postgres {
            return Ok(StartupLock(None));
        }
        let txn = self.db.begin().await?;
        // The holder's transaction sits idle while the work runs on the pool. If its node vanished without
        // closing the connection, Postgres would keep the lock until TCP keepalive noticed (hours), blocking
        // every start: the transaction ends itself after a minute idle, and a waiter gives up after 90 s (and is
        // restarted) rather than hang.
        txn.execute_unprepared("SET LOCAL idle_in_transaction_session_timeout = '60s'").await?;
        txn.execute_unprepared("SET LOCAL lock_timeout = '90s'").await?;
        txn.execute_unprepared("SET LOCAL statement_timeout = 0").await?;
        txn.execute_unprepared("SELECT pg_advisory_xact_lock(7403740374037403)").await?;
        Ok(StartupLock(Some(txn)))
    }

    /// Creates a tenant together with its first application, atomically: a crash can never leave a root
    /// tenant without its bootstrap admin.
    pub async fn create_tenant_with_application(
        &self,
        tenant: tenant::Model,
        application: application::Model,
    ) -> Result<(), StoreError> {
        crate::bounded(async {
            let txn = self.db.begin().await?;
            tenant.into_active_model().insert(&txn).await.map_err(|e| StoreError::from_insert("tenant", e))?;
            application
                .into_active_model()
                .insert(&txn)
                .await
                .map_err(|e| StoreError::from_insert("application", e))?;
            txn.commit().await?;
            Ok(())
        })
        .await
    }

    /// A tenant by id.
    pub async fn tenant(&self, id: &str) -> Result<Option<tenant::Model>, StoreError> {
        crate::bounded(async { Ok(tenant::Entity::find_by_id(id.to_owned()).one(&self.db).await?) }).await
    }

    /// Stores a new tenant; a taken name is [`StoreError::AlreadyExists`].
    pub async fn create_tenant(&self, tenant: tenant::Model) -> Result<(), StoreError> {
        crate::bounded(async {
            tenant.into_active_model().insert(&self.db).await.map_err(|e| StoreError::from_insert("tenant", e))?;
            Ok(())
        })
        .await
    }

    /// Stores a new application; a name taken in its tenant is [`StoreError::AlreadyExists`].
    pub async fn create_application(&self, application: application::Model) -> Result<(), StoreError> {
        crate::bounded(async {
            application
                .into_active_model()
                .insert(&self.db)
                .await
                .map_err(|e| StoreError::from_insert("application", e))?;
            Ok(())
        })
        .await
    }

    /// The registration of `name` in `environment` in a tenant, with its application.
    pub async fn registration(
        &self,
        tenant_id: &str,
        name: &str,
        environment: &str,
    ) -> Result<Option<(registration::Model, application::Model)>, StoreError> {
        crate::bounded(async {
            let Some(found) = registration::Entity::find()
                .filter(registration::Column::TenantId.eq(tenant_id))
                .filter(registration::Column::Name.eq(name))
                .filter(registration::Column::Environment.eq(environment))
                .one(&self.db)
                .await?
            else {
                return Ok(None);
            };
            let app = application::Entity::find_by_id(found.client_id.clone()).one(&self.db).await?;
            Ok(app.map(|app| (found, app)))
        })
        .await
    }

    /// Every registration in a tenant.
    pub async fn registrations_in(&self, tenant_id: &str) -> Result<Vec<registration::Model>, StoreError> {
        crate::bounded(async {
            Ok(registration::Entity::find()
                .filter(registration::Column::TenantId.eq(tenant_id))
                .order_by_asc(registration::Column::ClientId)
                .all(&self.db)
                .await?)
        })
        .await
    }

    /// The registration of the application `client_id`, if it was registered.
    pub async fn registration_of(&self, client_id: &str) -> Result<Option<registration::Model>, StoreError> {
        crate::bounded(async { Ok(registration::Entity::find_by_id(client_id.to_owned()).one(&self.db).await?) }).await
    }

    /// A registered application registered again: a new secret (the old one valid until `previous_expires_at`)
    /// and the permissions as bounded now, in one statement, if the secret is still `previous_hash` (false:
    /// another rotation won).
    pub async fn reissue_registered(
        &self,
        client_id: &str,
        new_hash: String,
        previous_hash: &str,
        previous_expires_at: i64,
        permissions: String,
    ) -> Result<bool, StoreError> {
        crate::bounded(async {
            let updated = application::Entity::update_many()
                .col_expr(application::Column::SecretHash, Expr::value(new_hash))
                .col_expr(application::Column::PreviousSecretHash, Expr::value(previous_hash.to_owned()))
                .col_expr(application::Column::PreviousSecretExpiresAt, Expr::value(previous_expires_at))
                .col_expr(application::Column::Permissions, Expr::value(permissions))
                .filter(application::Column::ClientId.eq(client_id))
                .filter(application::Column::SecretHash.eq(previous_hash))
                .exec(&self.db)
                .await?
                .rows_affected;
            Ok(updated == 1)
        })
        .await
    }

    /// Stores a registered application and its registration together; a name and environment (or an application
    /// name) already taken in the tenant is [`StoreError::AlreadyExists`], and then neither row is stored.
    pub async fn create_registered_application(
        &self,
        application: application::Model,
        registration: registration::Model,
    ) -> Result<(), StoreError> {
        crate::bounded(async {
            let txn = self.db.begin().await?;
            application
                .into_active_model()
                .insert(&txn)
                .await
                .map_err(|e| StoreError::from_insert("application", e))?;
            registration
                .into_active_model()
                .insert(&txn)
                .await
                .map_err(|e| StoreError::from_insert("registration", e))?;
            txn.commit().await?;
            Ok(())
        })
        .await
    }

    /// A page of a tenant's applications in client-id order, after `after`.
    pub async fn list_applications(
        &self,
        tenant_id: &str,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<application::Model>, StoreError> {
        crate::bounded(async {
            let mut query = application::Entity::find().filter(application::Column::TenantId.eq(tenant_id));
            if let Some(after) = after {
                query = query.filter(application::Column::ClientId.gt(after));
            }
            Ok(query.order_by_asc(application::Column::ClientId).limit(limit).all(&self.db).await?)
        })
        .await
    }

    /// Replaces an application's secret hash if it is still `previous_hash` (false: another rotation won),
    /// keeping the old one valid until `previous_expires_at`; with `cut_off`, also revokes the application's
    /// refresh tokens and records the revocation of its access tokens, in the same transaction.
    pub async fn rotate_secret(
        &self,
        client_id: &str,
        new_hash: String,
        previous_hash: &str,
        previous_expires_at: i64,
        cut_off: Option<revocation::Model>,
    ) -> Result<bool, StoreError> {
        crate::bounded(async {
            let txn = self.db.begin().await?;
            let updated = application::Entity::update_many()
                .col_expr(application::Column::SecretHash, Expr::value(new_hash))
                .col_expr(application::Column::PreviousSecretHash, Expr::value(previous_hash.to_owned()))
                .col_expr(application::Column::PreviousSecretExpiresAt, Expr::value(previous_expires_at))
                .filter(application::Column::ClientId.eq(client_id))
                .filter(application::Column::SecretHash.eq(previous_hash))
                .exec(&txn)
                .await?
                .rows_affected;
            if updated != 1 {
                return Ok(false);
            }
            if let Some(revocation) = cut_off {
                revoke_application_tokens(&txn, client_id, revocation).await?;
            }
            txn.commit().await?;
            Ok(true)
        })
        .await
    }

    /// Disables an application for good, in one transaction: the flag, its refresh tokens, and a
    /// revocation of every access token it holds.
    pub async fn disable_application(&self, client_id: &str, revocation: revocation::Model) -> Result<(), StoreError> {
        crate::bounded(async {
            let txn = self.db.begin().await?;
            application::Entity::update_many()
                .col_expr(application::Column::Disabled, Expr::value(true))
                .filter(application::Column::ClientId.eq(client_id))
                .exec(&txn)
                .await?;
            revoke_application_tokens(&txn, client_id, revocation).await?;
            txn.commit().await?;
            Ok(())
        })
        .await
    }

    /// Stores the first refresh token of a new family.
    pub async fn insert_refresh_token(&self, token: refresh_token::Model) -> Result<(), StoreError> {
        crate::bounded(async {
            token
                .into_active_model()
                .insert(&self.db)
                .await
                .map_err(|e| StoreError::from_insert("refresh token", e))?;
            Ok(())
        })
        .await
    }

    /// Presents the refresh token hashed `token_hash`: spends it and stores `successor` (whose family,
    /// application and expiry, the family's, are set here) when it is live; revokes its family (tokens, and `session_revocation` for the access tokens)
    /// when it is spent or revoked, or when the family's session revocation exists (a successor stored in a
    /// race with the family's revocation is refused at its first use). One transaction, and the spend is
    /// conditional, so of two concurrent uses of one token exactly one rotates and the other is a replay.
    pub async fn use_refresh_token(
        &self,
        token_hash: &str,
        mut successor: refresh_token::Model,
        session_revocation: impl FnOnce(&str) -> revocation::Model,
    ) -> Result<RefreshOutcome, StoreError> {
        crate::bounded(async {
            let now = successor.created_at;
            let txn = self.db.begin().await?;
            let Some(current) = refresh_token::Entity::find_by_id(token_hash.to_owned()).one(&txn).await? else {
                return Ok(RefreshOutcome::Unknown);
            };
            let session = session_revocation(&current.family_id);
            let spent = refresh_token::Entity::update_many()
                .col_expr(refresh_token::Column::SpentAt, Expr::value(now))
                .filter(refresh_token::Column::TokenHash.eq(token_hash))
                .filter(refresh_token::Column::SpentAt.is_null())
                .filter(refresh_token::Column::RevokedAt.is_null())
                .exec(&txn)
                .await?
                .rows_affected
                == 1;
            let session_revoked = revocation::Entity::find_by_id(session.id.clone()).one(&txn).await?.is_some();
            if !spent || session_revoked {
                refresh_token::Entity::update_many()
                    .col_expr(refresh_token::Column::RevokedAt, Expr::value(now))
                    .filter(refresh_token::Column::FamilyId.eq(&current.family_id))
                    .filter(refresh_token::Column::RevokedAt.is_null())
                    .exec(&txn)
                    .await?;
                upsert_revocation(&txn, session).await?;
                txn.commit().await?;
                return Ok(RefreshOutcome::Replayed {
                    family_id: current.family_id,
                    client_id: current.client_id,
                    tenant_id: current.tenant_id,
                });
            }
            if current.expires_at <= now {
                // Leave it unspent: the transaction is dropped.
                return Ok(RefreshOutcome::Expired);
            }
            successor.family_id = current.family_id.clone();
            // The family's lifetime is absolute: rotation renews the token, not the grant.
            successor.expires_at = current.expires_at;
            successor.client_id = current.client_id.clone();
            successor.tenant_id = current.tenant_id.clone();
            successor.clone().into_active_model().insert(&txn).await?;
            txn.commit().await?;
            Ok(RefreshOutcome::Rotated(successor))
        })
        .await
    }

    /// Revokes the family of the refresh token hashed `token_hash`, if there is one; returns the token.
    pub async fn revoke_refresh_family(
        &self,
        token_hash: &str,
        session_revocation: impl FnOnce(&str) -> revocation::Model,
    ) -> Result<Option<refresh_token::Model>, StoreError> {
        crate::bounded(async {
            let txn = self.db.begin().await?;
            let Some(token) = refresh_token::Entity::find_by_id(token_hash.to_owned()).one(&txn).await? else {
                return Ok(None);
            };
            let revocation = session_revocation(&token.family_id);
            refresh_token::Entity::update_many()
                .col_expr(refresh_token::Column::RevokedAt, Expr::value(revocation.revoked_at))
                .filter(refresh_token::Column::FamilyId.eq(&token.family_id))
                .filter(refresh_token::Column::RevokedAt.is_null())
                .exec(&txn)
                .await?;
            upsert_revocation(&txn, revocation).await?;
            txn.commit().await?;
            Ok(Some(token))
        })
        .await
    }

    /// Records a revocation; recording one again replaces its time and expiry (the latest call wins).
    pub async fn revoke(&self, revocation: revocation::Model) -> Result<(), StoreError> {
        crate::bounded(async { upsert_revocation(&self.db, revocation).await }).await
    }

    /// The revocations still in force at `now`.
    pub async fn revocations_in_force(&self, now: i64) -> Result<Vec<revocation::Model>, StoreError> {
        crate::bounded(async {
            Ok(revocation::Entity::find().filter(revocation::Column::ExpiresAt.gt(now)).all(&self.db).await?)
        })
        .await
    }

    /// Deletes revocations and refresh tokens that can no longer matter at `now`: the tokens they match
    /// have expired. Returns how many rows went.
    pub async fn prune_expired(&self, now: i64) -> Result<u64, StoreError> {
        crate::bounded(async {
            let revocations =
                revocation::Entity::delete_many().filter(revocation::Column::ExpiresAt.lte(now)).exec(&self.db).await?;
            let tokens = refresh_token::Entity::delete_many()
                .filter(refresh_token::Column::ExpiresAt.lte(now))
                .exec(&self.db)
                .await?;
            Ok(revocations.rows_affected + tokens.rows_affected)
        })
        .await
    }

    /// An application by client id.
    pub async fn application(&self, client_id: &str) -> Result<Option<application::Model>, StoreError> {
        crate::bounded(async { Ok(application::Entity::find_by_id(client_id.to_owned()).one(&self.db).await?) }).await
    }

    /// Stores a new signing key.
    pub async fn insert_signing_key(&self, key: signing_key::Model) -> Result<(), StoreError> {
        crate::bounded(async {
            key.into_active_model().insert(&self.db).await.map_err(|e| StoreError::from_insert("signing key", e))?;
            Ok(())
        })
        .await
    }

    /// Replaces a signing key's wraps (after a keyring change), from `key`'s wrap columns.
    pub async fn rewrap_signing_key(&self, key: &signing_key::Model) -> Result<(), StoreError> {
        crate::bounded(async {
            signing_key::Entity::update_many()
                .col_expr(signing_key::Column::WrappedPrivateKey, Expr::value(key.wrapped_private_key.clone()))
                .col_expr(signing_key::Column::KekBackend, Expr::value(key.kek_backend.clone()))
                .col_expr(signing_key::Column::KekId, Expr::value(key.kek_id.clone()))
                .col_expr(signing_key::Column::ExtraWraps, Expr::value(key.extra_wraps.clone()))
                .filter(signing_key::Column::Kid.eq(&key.kid))
                .exec(&self.db)
                .await?;
            Ok(())
        })
        .await
    }

    /// Retires a signing key: it leaves the JWKS.
    pub async fn retire_signing_key(&self, kid: &str, at: i64) -> Result<(), StoreError> {
        crate::bounded(async {
            signing_key::Entity::update_many()
                .col_expr(signing_key::Column::RetiredAt, Expr::value(at))
                .filter(signing_key::Column::Kid.eq(kid))
                .exec(&self.db)
                .await?;
            Ok(())
        })
        .await
    }

    /// Signing keys not retired, newest first.
    pub async fn current_signing_keys(&self) -> Result<Vec<signing_key::Model>, StoreError> {
        crate::bounded(async {
            Ok(signing_key::Entity::find()
                .filter(signing_key::Column::RetiredAt.is_null())
                .order_by_desc(signing_key::Column::CreatedAt)
                .all(&self.db)
                .await?)
        })
        .await
    }
}

/// The start-up lock of [`TokenRepository::startup_lock`], held until [released](Self::release) (or dropped, when
/// the transaction holding it is rolled back).
pub struct StartupLock(Option<sea_orm::DatabaseTransaction>);

impl StartupLock {
    /// Lets the next replica in. An error means Postgres had already ended the transaction (idle too long),
    /// and the lock went with it: worth a log line, not a failed start.
    pub async fn release(self) -> Result<(), StoreError> {
        if let Some(txn) = self.0 {
            txn.commit().await?;
        }
        Ok(())
    }
}

/// Revokes every refresh token of an application and records `revocation` for its access tokens.
async fn revoke_application_tokens(
    db: &impl ConnectionTrait,
    client_id: &str,
    revocation: revocation::Model,
) -> Result<(), StoreError> {
    refresh_token::Entity::update_many()
        .col_expr(refresh_token::Column::RevokedAt, Expr::value(crate::now_millis()))
        .filter(refresh_token::Column::ClientId.eq(client_id))
        .filter(refresh_token::Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    upsert_revocation(db, revocation).await
}

async fn upsert_revocation(db: &impl ConnectionTrait, revocation: revocation::Model) -> Result<(), StoreError> {
    revocation::Entity::insert(revocation.into_active_model())
        .on_conflict(
            OnConflict::column(revocation::Column::Id)
                .update_columns([revocation::Column::RevokedAt, revocation::Column::ExpiresAt])
                .to_owned(),
        )
        .exec(db)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect_and_migrate;

    fn token(hash: &str, family: &str, now: i64) -> refresh_token::Model {
        refresh_token::Model {
            token_hash: hash.into(),
            family_id: family.into(),
            client_id: "app_a".into(),
            tenant_id: "t1".into(),
            created_at: now,
            expires_at: now + 1000,
            spent_at: None,
            revoked_at: None,
        }
    }

    fn session(family: &str, now: i64) -> revocation::Model {
        revocation::Model {
            id: format!("3:{family}"),
            scope: 3,
            value: family.into(),
            revoked_at: now,
            expires_at: now + 500,
        }
    }

    #[tokio::test]
    async fn refresh_tokens_rotate_once_and_a_replay_revokes_the_family() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("tokens.db").display());
        let repo = TokenRepository::new(connect_and_migrate(&url).await.unwrap());
        repo.insert_refresh_token(token("h1", "f1", 100)).await.unwrap();
        repo.insert_refresh_token(token("x1", "f2", 100)).await.unwrap();

        let outcome = repo.use_refresh_token("h1", token("h2", "ignored", 200), |f| session(f, 200)).await.unwrap();
        let RefreshOutcome::Rotated(next) = outcome else { panic!("{outcome:?}") };
        assert_eq!((next.family_id.as_str(), next.client_id.as_str()), ("f1", "app_a"), "the family carries on");
        assert_eq!(next.expires_at, 1100, "and ends when its first token does, however often it rotates");
        assert!(repo.revocations_in_force(200).await.unwrap().is_empty());

        // The spent one again: a replay, and its successor dies with the family.
        let outcome = repo.use_refresh_token("h1", token("h3", "", 300), |f| session(f, 300)).await.unwrap();
        assert!(matches!(outcome, RefreshOutcome::Replayed { ref family_id, .. } if family_id == "f1"), "{outcome:?}");
        let outcome = repo.use_refresh_token("h2", token("h4", "", 301), |f| session(f, 301)).await.unwrap();
        assert!(matches!(outcome, RefreshOutcome::Replayed { .. }), "{outcome:?}");
        let in_force = repo.revocations_in_force(301).await.unwrap();
        assert_eq!(in_force.len(), 1, "one row per family however often it is revoked");
        assert_eq!((in_force[0].value.as_str(), in_force[0].revoked_at), ("f1", 301));

        // Other families are untouched; unknown and expired tokens change nothing.
        assert!(matches!(
            repo.use_refresh_token("nope", token("h5", "", 302), |f| session(f, 302)).await.unwrap(),
            RefreshOutcome::Unknown
        ));
        assert!(matches!(
            repo.use_refresh_token("x1", token("x2", "", 1100), |f| session(f, 1100)).await.unwrap(),
            RefreshOutcome::Expired
        ));
        // Refusing an expired token spent nothing: at a time it was live, it still rotates.
        let outcome = repo.use_refresh_token("x1", token("x2", "", 1099), |f| session(f, 1099)).await.unwrap();
        assert!(matches!(outcome, RefreshOutcome::Rotated(_)), "{outcome:?}");
        repo.insert_refresh_token(token("y1", "f3", 100)).await.unwrap();
        assert!(matches!(
            repo.use_refresh_token("y1", token("y2", "", 900), |f| session(f, 900)).await.unwrap(),
            RefreshOutcome::Rotated(_)
        ));

        // Revoked families and expired rows are pruned once nothing they match can be valid.
        assert_eq!(repo.revoke_refresh_family("y2", |f| session(f, 950)).await.unwrap().unwrap().family_id, "f3");
        assert_eq!(repo.revocations_in_force(800).await.unwrap().len(), 2);
        assert_eq!(repo.revocations_in_force(950).await.unwrap().len(), 1, "f1's has run out");
        assert!(repo.prune_expired(5000).await.unwrap() >= 2);
        assert!(repo.revocations_in_force(0).await.unwrap().is_empty());
    }
}
