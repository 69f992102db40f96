//! The source document's SDK features in the Rust SDK, against the real binaries: `keymesh login` keeps a session
//! (never the secret) in a 0700 directory; auto-registration gives one application per name and environment for
//! the logged-in identity, stores its credentials 0600, hands out fresh credentials when asked again, never more
//! permissions than the registrant holds, and is rate-limited; 32 callers near a token's expiry share one renewal;
//! local hashes and MACs equal the service's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{os::unix::fs::PermissionsExt, path::Path, sync::Arc, time::Duration};

use integration_tests::{Mesh, audit_events, create_application, import_material};
use keymesh_client::{
    KeymeshClient,
    home::{KeymeshHome, Login},
    local,
};
use keymesh_mesh::ServiceName;
use keymesh_proto::v1 as pb;
use tonic::Code;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn registration(name: &str, environment: &str, keys: &[&str]) -> pb::RegisterApplicationRequest {
    pb::RegisterApplicationRequest {
        name: name.into(),
        team: "platform".into(),
        environment: environment.into(),
        keys: keys.iter().map(|k| (*k).to_owned()).collect(),
    }
}

/// A developer application allowed to encrypt and decrypt `orders-*` keys, and its credentials.
async fn developer(mesh: &Mesh, admin: &KeymeshClient, name: &str, role: pb::Role) -> keymesh_client::Credentials {
    let token = admin.access_token().await.unwrap();
    let (client_id, secret) = create_application(
        mesh,
        &token,
        "",
        name,
        &[role],
        &[("orders-*", &[pb::Operation::Encrypt, pb::Operation::Decrypt])],
    )
    .await
    .unwrap();
    serde_json::from_value(serde_json::json!({"client_id": client_id, "client_secret": secret})).unwrap()
}

async fn register_call(
    mesh: &Mesh,
    home: &KeymeshHome,
    request: pb::RegisterApplicationRequest,
) -> Result<(KeymeshClient, keymesh_client::home::Registered), keymesh_client::ClientError> {
    home.register(&mesh.endpoints, &mesh.app_tls("sdk"), request).await
}

fn status_of(result: Result<impl Sized, keymesh_client::ClientError>) -> tonic::Status {
    match result {
        Err(keymesh_client::ClientError::Status(status)) => status,
        Err(other) => panic!("not a status: {other}"),
        Ok(_) => panic!("accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_twice_gives_one_application_per_environment_with_private_credentials() {
    let mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    admin.create_key("orders-eu").await.unwrap();
    admin.create_key("payments").await.unwrap();
    let credentials = developer(&mesh, &admin, "alice", pb::Role::Developer).await;
    let secret = credentials.client_secret.to_string();
    let root = tempfile::tempdir().unwrap();
    let home = KeymeshHome::at(root.path().join(".keymesh"));

    // Login: the session holds a refresh token, never the secret; 0600 in a 0700 directory.
    let tls = mesh.app_tls("sdk");
    let who = home.login(&mesh.endpoints, &tls, Login::ClientCredentials(credentials)).await.unwrap();
    let session = std::fs::read_to_string(home.session_file()).unwrap();
    assert!(session.contains(&who) && session.contains("kmrt_"), "a refresh-token session");
    assert!(!session.contains(&secret), "the client secret is not stored");
    assert_eq!((mode(home.dir()), mode(&home.session_file())), (0o700, 0o600));

    // Register: created on the server, credentials stored 0600 in apps/ (0700).
    let (client, first) =
        register_call(&mesh, &home, registration("orders", "development", &["orders-*"])).await.unwrap();
    assert!(first.created);
    assert_eq!(first.application_name, "orders.development");
    assert_eq!((mode(&first.credentials_file), mode(&home.dir().join("apps"))), (0o600, 0o700));
    let ciphertext = client.encrypt("orders-eu", b"order 1".to_vec(), vec![]).await.unwrap();
    assert_eq!(*client.decrypt(ciphertext, vec![]).await.unwrap(), b"order 1");
    let refused = status_of(client.encrypt("payments", b"x".to_vec(), vec![]).await);
    assert_eq!(refused.code(), Code::PermissionDenied, "only the keys it registered for: {refused:?}");

    // Again: the same application, from the stored credentials.
    let (_, again) = register_call(&mesh, &home, registration("orders", "development", &["orders-*"])).await.unwrap();
    assert_eq!((again.client_id.as_str(), again.created), (first.client_id.as_str(), false));

    // Without the stored file the server finds it again and hands out fresh credentials; the old secret keeps
    // working for the grace period.
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&first.credentials_file).unwrap()).unwrap();
    let old_secret = stored["client_secret"].as_str().unwrap().to_owned();
    std::fs::remove_file(&first.credentials_file).unwrap();
    // (Asked for narrower keys this time: the permissions are recomputed at every registration.)
    let (fresh, found) =
        register_call(&mesh, &home, registration("orders", "development", &["orders-eu"])).await.unwrap();
    assert_eq!((found.client_id.as_str(), found.created), (first.client_id.as_str(), false));
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&found.credentials_file).unwrap()).unwrap();
    assert_ne!(stored["client_secret"].as_str().unwrap(), old_secret, "fresh credentials");
    fresh.access_token().await.unwrap();
    mesh.client_with(&first.client_id, &old_secret).access_token().await.expect("the old secret in its grace period");

    // A registered application cannot register others: its token must not become a chain of lasting secrets.
    let token = fresh.access_token().await.unwrap();
    let chained = pb::token_service_client::TokenServiceClient::new(mesh.channel(ServiceName::TokenService))
        .register_application(integration_tests::with_token(
            registration("chained", "development", &["orders-*"]),
            &token,
        ))
        .await
        .err()
        .unwrap();
    assert_eq!(chained.code(), Code::PermissionDenied, "{chained:?}");
    assert!(chained.message().contains("was itself registered"), "{chained:?}");

    // Another environment is another application.
    let (_, staging) = register_call(&mesh, &home, registration("orders", "staging", &["orders-*"])).await.unwrap();
    assert!(staging.created && staging.client_id != first.client_id);
    let token = admin.access_token().await.unwrap();
    let listed = pb::token_service_client::TokenServiceClient::new(mesh.channel(ServiceName::TokenService))
        .list_applications(integration_tests::with_token(pb::ListApplicationsRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> =
        listed.applications.iter().map(|a| a.name.as_str()).filter(|n| n.starts_with("orders.")).collect();
    assert_eq!(names.len(), 2, "one application per environment: {names:?}");
    let registered = listed.applications.iter().find(|a| a.client_id == first.client_id).unwrap();
    assert_eq!(registered.roles, [pb::Role::Developer as i32]);
    let ops: Vec<i32> = registered.permissions.iter().flat_map(|p| p.operations.clone()).collect();
    assert_eq!(ops, [pb::Operation::Encrypt as i32, pb::Operation::Decrypt as i32], "never more than alice holds");
    assert_eq!(registered.permissions[0].key_pattern, "orders-eu", "as asked at the last registration");

    // Keys the registrant holds nothing on are refused; so is someone else's name, a viewer, and bad input.
    let refused = status_of(register_call(&mesh, &home, registration("pay", "development", &["payments"])).await);
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let bob = developer(&mesh, &admin, "bob", pb::Role::Developer).await;
    let bob_home = KeymeshHome::at(root.path().join("bob"));
    bob_home.login(&mesh.endpoints, &tls, Login::ClientCredentials(bob)).await.unwrap();
    let taken = status_of(register_call(&mesh, &bob_home, registration("orders", "development", &["orders-*"])).await);
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
    let viewer = developer(&mesh, &admin, "carol", pb::Role::Viewer).await;
    let viewer_home = KeymeshHome::at(root.path().join("carol"));
    viewer_home.login(&mesh.endpoints, &tls, Login::ClientCredentials(viewer)).await.unwrap();
    let denied = status_of(register_call(&mesh, &viewer_home, registration("v", "development", &["orders-*"])).await);
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    // Admins and owners register too (the bootstrap application holds both, and every permission).
    let admin_home = KeymeshHome::at(root.path().join("admin"));
    let bootstrap =
        keymesh_client::Credentials::from_file(&mesh.dir.path().join("bootstrap-credentials.json")).unwrap();
    admin_home.login(&mesh.endpoints, &tls, Login::ClientCredentials(bootstrap)).await.unwrap();
    let (_, by_admin) = register_call(&mesh, &admin_home, registration("ops", "production", &["*"])).await.unwrap();
    assert!(by_admin.created);
    for (request, field) in [
        (registration("Orders!", "development", &[]), "name: "),
        (registration("orders", "a-very-long-environment", &[]), "environment: "),
        (registration("orders", "dev", &[""]), "keys: "),
    ] {
        let bad = status_of(register_call(&mesh, &home, request).await);
        assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
        assert!(bad.message().starts_with(field), "{field} {bad:?}");
    }

    // Disabling the registrant disables what it registered: the registered applications' secrets stop working.
    let staging_secret = {
        let stored: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&staging.credentials_file).unwrap()).unwrap();
        stored["client_secret"].as_str().unwrap().to_owned()
    };
    mesh.client_with(&staging.client_id, &staging_secret).access_token().await.expect("works before");
    let admin_token = admin.access_token().await.unwrap();
    pb::token_service_client::TokenServiceClient::new(mesh.channel(ServiceName::TokenService))
        .disable_application(integration_tests::with_token(
            pb::DisableApplicationRequest { client_id: who.clone() },
            &admin_token,
        ))
        .await
        .unwrap();
    let after = status_of(mesh.client_with(&staging.client_id, &staging_secret).access_token().await);
    assert_eq!(after.code(), Code::Unauthenticated, "the registered application went with its registrant: {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_rate_limited_per_registrant() {
    let mesh = Mesh::start(&[], &[(ServiceName::TokenService, "KEYMESH_LIMITS__REGISTRATIONS_PER_MINUTE", "2")]).await;
    let admin = mesh.admin_client();
    let credentials = developer(&mesh, &admin, "dave", pb::Role::Developer).await;
    let root = tempfile::tempdir().unwrap();
    let home = KeymeshHome::at(root.path());
    home.login(&mesh.endpoints, &mesh.app_tls("sdk"), Login::ClientCredentials(credentials)).await.unwrap();
    for environment in ["one", "two"] {
        register_call(&mesh, &home, registration("svc", environment, &["orders-*"])).await.unwrap();
    }
    use tonic_types::StatusExt;
    let limited = status_of(register_call(&mesh, &home, registration("svc", "three", &["orders-*"])).await);
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    assert!(limited.get_details_retry_info().and_then(|r| r.retry_delay).is_some(), "RetryInfo attached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_callers_near_expiry_share_one_token_renewal() {
    // Tokens of 5 s: the SDK renews when a fifth of the life (1 s) remains.
    let mesh = Mesh::start(&[], &[(ServiceName::TokenService, "KEYMESH_TOKENS__ACCESS_TOKEN_TTL_SECONDS", "5")]).await;
    let admin = mesh.admin_client();
    admin.create_key("orders-renewal").await.unwrap();
    let credentials = developer(&mesh, &admin, "erin", pb::Role::Developer).await;
    let client_id = credentials.client_id.clone();
    let client = Arc::new(KeymeshClient::new(&mesh.endpoints, &mesh.app_tls("sdk"), credentials).unwrap());
    client.encrypt("orders-renewal", b"first".to_vec(), vec![]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(4_200)).await;
    let callers: Vec<_> = (0..32)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(
                async move { client.encrypt("orders-renewal", format!("call {i}").into_bytes(), vec![]).await },
            )
        })
        .collect();
    for caller in callers {
        caller.await.unwrap().unwrap();
    }
    let token = admin.access_token().await.unwrap();
    let issued = || async {
        audit_events(&mesh, &token, "token-service", "IssueToken.client_credentials")
            .await
            .into_iter()
            .filter(|e| e.identity == client_id)
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while issued().await < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(issued().await, 2, "the first token and one renewal for all 32 callers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_hashes_and_macs_equal_the_services() {
    let mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    let mut crypto = admin.crypto_service();
    for (name, number) in [
        ("sha256", pb::HashAlgorithm::Sha256),
        ("sha384", pb::HashAlgorithm::Sha384),
        ("sha512", pb::HashAlgorithm::Sha512),
        ("sha3-256", pb::HashAlgorithm::Sha3256),
        ("blake2b", pb::HashAlgorithm::Blake2b512),
    ] {
        for data in [&b""[..], b"abc", &[0x61; 1000]] {
            let request =
                admin.authorized(pb::HashRequest { algorithm: number as i32, data: data.to_vec() }).await.unwrap();
            let service = crypto.hash(request).await.unwrap().into_inner().digest;
            assert_eq!(local::hash(name, data).unwrap(), service, "{name} of {} bytes", data.len());
        }
    }
    // RFC 4231 cases 1 and 2 (keys zero-extended to the hash's length, which HMAC's own padding makes the same key)
    // under imported MAC keys, so the material is known here.
    for (name, algorithm, size) in
        [("hmac-sha256", pb::Algorithm::HmacSha256, 32), ("hmac-sha512", pb::Algorithm::HmacSha512, 64)]
    {
        for (key, message) in [(&[0x0bu8; 20][..], &b"Hi There"[..]), (b"Jefe", b"what do ya want for nothing?")] {
            let mut material = key.to_vec();
            material.resize(size, 0);
            let key_name = format!("{name}-{}", material[0]);
            let request = pb::CreateKeyRequest {
                name: key_name.clone(),
                purpose: pb::KeyPurpose::Mac as i32,
                algorithm: algorithm as i32,
                origin: pb::KeyOrigin::External as i32,
                ..Default::default()
            };
            integration_tests::create_key(&admin, request).await.unwrap();
            import_material(&admin, &key_name, &material, pb::WrappingAlgorithm::RsaAesKeyWrapSha256).await.unwrap();
            let request = admin
                .authorized(pb::GenerateMacRequest { key: key_name.clone(), message: message.to_vec() })
                .await
                .unwrap();
            let service = crypto.generate_mac(request).await.unwrap().into_inner().mac;
            assert_eq!(local::mac(name, &material, message).unwrap(), service, "{key_name}");
            assert!(local::verify_mac(name, &material, message, &service).unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_exchange_login_registers_as_the_person_it_names() {
    let cluster = integration_tests::oidc_issuer::TestIssuer::start().await;
    let mut mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    let token = admin.access_token().await.unwrap();
    let perms: &[(&str, &[pb::Operation])] = &[("orders-*", &[pb::Operation::Encrypt, pb::Operation::Decrypt])];
    let (developers, _) =
        create_application(&mesh, &token, "", "developers", &[pb::Role::Developer], perms).await.unwrap();
    let issuers = format!(
        r#"[{{name = "cluster", issuer = "{}", audience = "keymesh", max_token_lifetime_seconds = 3600}}]"#,
        cluster.url
    );
    let rules =
        format!(r#"[{{issuer = "cluster", subject = "system:serviceaccount:devs:*", client_id = "{developers}"}}]"#);
    mesh.restart(
        ServiceName::TokenService,
        &[("KEYMESH_TOKENS__EXCHANGE__ISSUERS", &issuers), ("KEYMESH_TOKENS__EXCHANGE__RULES", &rules)],
    )
    .await;
    let root = tempfile::tempdir().unwrap();
    let tls = mesh.app_tls("sdk");
    // Two people exchanged for the same application are two registrants: the second cannot take the first's.
    for person in ["alice", "bob"] {
        let token_file = root.path().join(format!("{person}.token"));
        std::fs::write(&token_file, cluster.service_account_token("devs", person, "keymesh", 600)).unwrap();
        let home = KeymeshHome::at(root.path().join(person));
        let who = home.login(&mesh.endpoints, &tls, Login::TokenExchange(token_file.clone())).await.unwrap();
        assert_eq!(who, developers);
        let session = std::fs::read_to_string(home.session_file()).unwrap();
        assert!(session.contains("token_exchange") && session.contains(&format!("{person}.token")), "{session}");
        assert!(!session.contains(&std::fs::read_to_string(&token_file).unwrap()), "the path, not the token");
        let outcome = register_call(&mesh, &home, registration("svc", "development", &["orders-*"])).await;
        match person {
            "alice" => assert!(outcome.unwrap().1.created),
            _ => assert_eq!(status_of(outcome).code(), Code::AlreadyExists),
        }
    }
}
