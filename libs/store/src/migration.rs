//! The one migration history of keymesh. Every service runs it on start, so services can share a Postgres
//! database or each own a SQLite file; a new migration is a new module appended to the list, never an edit.

use sea_orm_migration::prelude::*;

/// Applies keymesh's schema.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_initial::Migration),
            Box::new(m20261123_000002_key_lifecycle::Migration),
            Box::new(m20261123_000003_keyring::Migration),
            Box::new(m20261123_000004_signing_key_wraps::Migration),
            Box::new(m20261124_000005_identity::Migration),
            Box::new(m20261124_000006_audit_checkpoints::Migration),
            Box::new(m20261207_000007_registrations::Migration),
        ]
    }
}

mod m20261123_000001_initial {
    use sea_orm_migration::{prelude::*, schema::*};

    pub struct Migration;

    // Named by hand: the derive would take the file's name, and this module shares its file.
    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m20261123_000001_initial"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .create_table(
                    Table::create()
                        .table("tenants")
                        .if_not_exists()
                        .col(string("id").primary_key())
                        .col(string_uniq("name"))
                        .col(big_integer("created_at"))
                        .to_owned(),
                )
                .await?;
            manager
                .create_table(
                    Table::create()
                        .table("applications")
                        .if_not_exists()
                        .col(string("client_id").primary_key())
                        .col(string("tenant_id"))
                        .col(string("name"))
                        .col(text("roles"))
                        .col(text("permissions"))
                        .col(string("secret_hash"))
                        .col(string_null("previous_secret_hash"))
                        .col(big_integer_null("previous_secret_expires_at"))
                        .col(boolean("disabled"))
                        .col(big_integer("created_at"))
                        .to_owned(),
                )
                .await?;
            manager
                .create_index(
                    Index::create()
                        .if_not_exists()
                        .name("ux_applications_tenant_name")
                        .table("applications")
                        .col("tenant_id")
                        .col("name")
                        .unique()
                        .to_owned(),
                )
                .await?;
            manager
                .create_table(
                    Table::create()
                        .table("signing_keys")
                        .if_not_exists()
                        .col(string("kid").primary_key())
                        .col(string("algorithm"))
                        .col(blob("public_key"))
                        .col(blob("wrapped_private_key"))
                        .col(string("kek_backend"))
                        .col(string("kek_id"))
                        .col(big_integer("created_at"))
                        .col(big_integer_null("retired_at"))
                        .to_owned(),
                )
                .await?;
            manager
                .create_table(
                    Table::create()
                        .table("keys")
                        .if_not_exists()
                        .col(string("id").primary_key())
                        .col(string("tenant_id"))
                        .col(string("name"))
                        .col(text("description"))
                        .col(integer("purpose"))
                        .col(integer("algorithm"))
                        .col(integer("state"))
                        .col(integer("primary_version"))
                        .col(integer("min_decryption_version"))
                        .col(text("labels"))
                        .col(blob("policy"))
                        .col(big_integer("created_at"))
                        .col(big_integer_null("deletion_time"))
                        .to_owned(),
                )
                .await?;
            manager
                .create_index(
                    Index::create()
                        .if_not_exists()
                        .name("ux_keys_tenant_name")
                        .table("keys")
                        .col("tenant_id")
                        .col("name")
                        .unique()
                        .to_owned(),
                )
                .await?;
            manager
                .create_table(
                    Table::create()
                        .table("key_versions")
                        .if_not_exists()
                        .col(string("key_id"))
                        .col(integer("version"))
                        .col(integer("state"))
                        .col(integer("algorithm"))
                        .col(integer("origin"))
                        .col(blob_null("wrapped_material"))
                        .col(string("kek_backend"))
                        .col(string("kek_id"))
                        .col(big_integer("created_at"))
                        .col(big_integer_null("destroyed_at"))
                        .primary_key(Index::create().col("key_id").col("version"))
                        .to_owned(),
                )
                .await?;
            manager
                .create_table(
                    Table::create()
                        .table("audit_records")
                        .if_not_exists()
                        .col(big_integer("sequence").primary_key())
                        .col(string_uniq("event_id"))
                        .col(string("tenant_id"))
                        .col(big_integer("time"))
                        .col(string("service"))
                        .col(string("identity"))
                        .col(string("operation"))
                        .col(string("resource"))
                        .col(integer("outcome"))
                        .col(blob("event"))
                        .col(big_integer("received_at"))
                        .col(string("previous_hash"))
                        .col(string("hash"))
                        .to_owned(),
                )
                .await?;
            manager
                .create_index(
                    Index::create()
                        .if_not_exists()
                        .name("ix_audit_tenant_sequence")
                        .table("audit_records")
                        .col("tenant_id")
                        .col("sequence")
                        .to_owned(),
                )
                .await?;
            Ok(())
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            for table in ["audit_records", "key_versions", "keys", "signing_keys", "applications", "tenants"] {
                manager.drop_table(Table::drop().table(table).to_owned()).await?;
            }
            Ok(())
        }
    }
}

/// Key lifecycle: optimistic revisions and change times (replicas and crypto-service learn of changes by
/// polling `updated_at`), the next time a key needs maintenance (scheduled rotation, retiring old versions),
/// per-version deletion times and the count of encryptions granted per version.
mod m20261123_000002_key_lifecycle {
    use sea_orm_migration::{prelude::*, schema::*};

    pub struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m20261123_000002_key_lifecycle"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            // SQLite alters one column per statement.
            let columns = [
                ("keys", big_integer("revision").default(0).to_owned()),
                ("keys", big_integer("updated_at").default(0).to_owned()),
                ("keys", big_integer_null("next_maintenance_at").to_owned()),
                ("key_versions", big_integer_null("deletion_time").to_owned()),
                ("key_versions", big_integer("encryptions_granted").default(0).to_owned()),
            ];
            for (table, mut column) in columns {
                manager.alter_table(Table::alter().table(table).add_column(&mut column).to_owned()).await?;
            }
            for (name, table, column) in [
                ("ix_keys_updated_at", "keys", "updated_at"),
                ("ix_keys_next_maintenance_at", "keys", "next_maintenance_at"),
                ("ix_key_versions_deletion_time", "key_versions", "deletion_time"),
            ] {
                manager
                    .create_index(Index::create().if_not_exists().name(name).table(table).col(column).to_owned())
                    .await?;
            }
            Ok(())
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            for index in ["ix_key_versions_deletion_time", "ix_keys_next_maintenance_at", "ix_keys_updated_at"] {
                manager.drop_index(Index::drop().name(index).to_owned()).await?;
            }
            for (table, column) in [
                ("key_versions", "encryptions_granted"),
                ("key_versions", "deletion_time"),
                ("keys", "next_maintenance_at"),
                ("keys", "updated_at"),
                ("keys", "revision"),
            ] {
                manager.alter_table(Table::alter().table(table).drop_column(column).to_owned()).await?;
            }
            Ok(())
        }
    }
}

/// KEK keyrings: further wraps of each version's material under secondary backends, and the progress of
/// re-wraps.
mod m20261123_000003_keyring {
    use sea_orm_migration::{prelude::*, schema::*};

    pub struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m20261123_000003_keyring"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .alter_table(Table::alter().table("key_versions").add_column(text_null("extra_wraps")).to_owned())
                .await?;
            manager
                .create_table(
                    Table::create()
                        .table("rewrap_jobs")
                        .if_not_exists()
                        .col(string("scope").primary_key())
                        .col(text("target"))
                        .col(string("runner"))
                        .col(string_null("cursor"))
                        .col(big_integer("keys_total"))
                        .col(big_integer("keys_done"))
                        .col(big_integer("versions_rewrapped"))
                        .col(big_integer("versions_current"))
                        .col(big_integer("versions_failed"))
                        .col(big_integer("started_at"))
                        .col(big_integer("updated_at"))
                        .col(big_integer_null("finished_at"))
                        .col(text_null("last_error"))
                        .to_owned(),
                )
                .await
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager.drop_table(Table::drop().table("rewrap_jobs").to_owned()).await?;
            manager.alter_table(Table::alter().table("key_versions").drop_column("extra_wraps").to_owned()).await
        }
    }
}

/// token-service's signing keys wrapped under every member of the keyring, like key versions, so that it
/// starts while the primary KMS is down.
mod m20261123_000004_signing_key_wraps {
    use sea_orm_migration::{prelude::*, schema::*};

    pub struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m20261123_000004_signing_key_wraps"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .alter_table(Table::alter().table("signing_keys").add_column(text_null("extra_wraps")).to_owned())
                .await
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager.alter_table(Table::alter().table("signing_keys").drop_column("extra_wraps").to_owned()).await
        }
    }
}

/// Identity: tenants below tenants, refresh tokens (SHA-256 digests only) in rotation families, and the
/// revocations every verifying service polls.
mod m20261124_000005_identity {
    use sea_orm_migration::{prelude::*, schema::*};

    pub struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m20261124_000005_identity"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .alter_table(Table::alter().table("tenants").add_column(string_null("parent_id")).to_owned())
                .await?;
            manager
                .create_table(
                    Table::create()
                        .table("refresh_tokens")
                        .if_not_exists()
                        .col(string("token_hash").primary_key())
                        .col(string("family_id"))
                        .col(string("client_id"))
                        .col(string("tenant_id"))
                        .col(big_integer("created_at"))
                        .col(big_integer("expires_at"))
                        .col(big_integer_null("spent_at"))
                        .col(big_integer_null("revoked_at"))
                        .to_owned(),
                )
                .await?;
            manager
                .create_table(
                    Table::create()
                        .table("revocations")
                        .if_not_exists()
                        .col(string("id").primary_key())
                        .col(integer("scope"))
                        .col(string("value"))
                        .col(big_integer("revoked_at"))
                        .col(big_integer("expires_at"))
                        .to_owned(),
                )
                .await?;
            for (name, table, column) in [
                ("ix_refresh_tokens_family_id", "refresh_tokens", "family_id"),
                ("ix_refresh_tokens_client_id", "refresh_tokens", "client_id"),
                ("ix_revocations_expires_at", "revocations", "expires_at"),
            ] {
                manager
                    .create_index(Index::create().if_not_exists().name(name).table(table).col(column).to_owned())
                    .await?;
            }
            Ok(())
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            for table in ["revocations", "refresh_tokens"] {
                manager.drop_table(Table::drop().table(table).to_owned()).await?;
            }
            manager.alter_table(Table::alter().table("tenants").drop_column("parent_id").to_owned()).await
        }
    }
}

/// Signed checkpoints of the audit chain and the keys that sign them (private halves wrapped by the KMS).
mod m20261124_000006_audit_checkpoints {
    use sea_orm_migration::{prelude::*, schema::*};

    pub struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m20261124_000006_audit_checkpoints"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .create_table(
                    Table::create()
                        .table("audit_checkpoint_keys")
                        .if_not_exists()
                        .col(string("kid").primary_key())
                        .col(string("algorithm"))
                        .col(blob("public_key"))
                        .col(blob("wrapped_private_key"))
                        .col(string("kek_backend"))
                        .col(string("kek_id"))
                        .col(text_null("extra_wraps"))
                        .col(big_integer("created_at"))
                        .to_owned(),
                )
                .await?;
            manager
                .create_table(
                    Table::create()
                        .table("audit_checkpoints")
                        .if_not_exists()
                        .col(big_integer("sequence").primary_key())
                        .col(string("hash"))
                        .col(big_integer("signed_at"))
                        .col(string("kid"))
                        .col(blob("signature"))
                        .to_owned(),
                )
                .await?;
            Ok(())
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            for table in ["audit_checkpoints", "audit_checkpoint_keys"] {
                manager.drop_table(Table::drop().table(table).to_owned()).await?;
            }
            Ok(())
        }
    }
}

/// The SDK's auto-registration: which identity registered an application, under which name and environment.
mod m20261207_000007_registrations {
    use sea_orm_migration::{prelude::*, schema::*};

    pub struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m20261207_000007_registrations"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .create_table(
                    Table::create()
                        .table("application_registrations")
                        .if_not_exists()
                        .col(string("client_id").primary_key())
                        .col(string("tenant_id"))
                        .col(string("registrant"))
                        .col(string("name"))
                        .col(string("environment"))
                        .col(string("team"))
                        .col(big_integer("created_at"))
                        .to_owned(),
                )
                .await?;
            manager
                .create_index(
                    Index::create()
                        .if_not_exists()
                        .name("ux_application_registrations_tenant_name_environment")
                        .table("application_registrations")
                        .col("tenant_id")
                        .col("name")
                        .col("environment")
                        .unique()
                        .to_owned(),
                )
                .await
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager.drop_table(Table::drop().table("application_registrations").to_owned()).await
        }
    }
}
