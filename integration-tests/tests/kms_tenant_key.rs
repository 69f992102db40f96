//! Hold your own key: a tenant whose keyring is its own AWS KMS key (moto_server) has its DEKs wrapped by
//! that key alone. Disabling the key at the provider makes the tenant's data unreadable, with a
//! FAILED_PRECONDITION that says which backend refuses and why, while other tenants are unaffected; enabling
//! it again restores access.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use integration_tests::{Mesh, kms_servers::Moto, second_tenant};
use keymesh_client::ClientError;
use keymesh_mesh::ServiceName;
use sea_orm::{ConnectionTrait, Database, Statement};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_key_disabled_at_the_provider_makes_that_tenant_unreadable() {
    keymesh_mesh::install_crypto_provider();
    let moto = Moto::start();
    let key_id = moto.create_key().await;
    let tenant_keyring = [
        ("KEYMESH_KMS__TENANTS__T_SECOND__PRIMARY", "second_aws"),
        ("KEYMESH_KMS__BACKENDS__SECOND_AWS__TYPE", "aws"),
        ("KEYMESH_KMS__BACKENDS__SECOND_AWS__KEY_ID", key_id.as_str()),
        ("KEYMESH_KMS__BACKENDS__SECOND_AWS__REGION", "us-east-1"),
        ("KEYMESH_KMS__BACKENDS__SECOND_AWS__ENDPOINT", moto.endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ];
    let per_service: Vec<_> = tenant_keyring.iter().map(|(k, v)| (ServiceName::KeyService, *k, *v)).collect();
    let mut mesh = Mesh::start(&[], &per_service).await;
    let admin = mesh.admin_client();
    let (other_id, other_secret) = second_tenant(&mesh).await;
    let other = mesh.client_with(&other_id, &other_secret);

    let theirs = other.create_key("their-key").await.unwrap();
    let ours = admin.create_key("our-key").await.unwrap();
    let db_url = format!("sqlite://{}?mode=ro", mesh.dir.path().join("key-service.db").display());
    let db = Database::connect(db_url.as_str()).await.unwrap();
    let wrapped_by = |key_id: String| {
        let db = &db;
        async move {
            let query = format!("SELECT kek_backend, kek_id FROM key_versions WHERE key_id = '{key_id}'");
            let row =
                db.query_one_raw(Statement::from_string(db.get_database_backend(), query)).await.unwrap().unwrap();
            (row.try_get_by_index::<String>(0).unwrap(), row.try_get_by_index::<String>(1).unwrap())
        }
    };
    let (backend, kek) = wrapped_by(theirs.key_id.clone()).await;
    assert_eq!(backend, "second_aws");
    assert!(kek.starts_with("arn:aws:kms:us-east-1:") && kek.ends_with(&key_id), "{kek}");
    assert_eq!(wrapped_by(ours.key_id.clone()).await.0, "local");

    let their_secret = other.encrypt("their-key", b"tenant data".to_vec(), Vec::new()).await.unwrap();
    let our_secret = admin.encrypt("our-key", b"our data".to_vec(), Vec::new()).await.unwrap();

    // The tenant disables its key. Once caches have let go of the DEK (here: restarts), its data is unreadable
    // and keymesh says why; the other tenant goes on.
    moto.client().disable_key().key_id(&key_id).send().await.unwrap();
    mesh.restart(ServiceName::KeyService, &[]).await;
    mesh.restart(ServiceName::CryptoService, &[]).await;
    let (admin, other) = (mesh.admin_client(), mesh.client_with(&other_id, &other_secret));
    for refused in [
        other.decrypt(their_secret.clone(), Vec::new()).await.map(|_| ()),
        other.create_key("another").await.map(|_| ()),
    ] {
        let Err(ClientError::Status(status)) = refused else { panic!("expected a refusal, got {refused:?}") };
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains("second_aws") && status.message().contains("disabled"), "{status:?}");
    }
    assert_eq!(admin.decrypt(our_secret.clone(), Vec::new()).await.unwrap().as_slice(), b"our data");

    // Enabled again, the tenant's data reads again.
    moto.client().enable_key().key_id(&key_id).send().await.unwrap();
    assert_eq!(other.decrypt(their_secret, Vec::new()).await.unwrap().as_slice(), b"tenant data");
}
