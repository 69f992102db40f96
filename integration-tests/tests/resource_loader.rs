//! The resource-loader platform's use case (`shared/seeds/001_…`), rebuilt on keymesh. There, every resource
//! was encrypted with one static key derived from a fixed string, and "per-user, per-machine" protection came
//! from hashing a hardware fingerprint on the client. Here:
//! - the resource API (an application with client credentials) encrypts each resource under its own data
//!   key, whose encryption context names the user and the machine it is for;
//! - the loader on each machine is a workload with no stored secret: it exchanges the service-account token
//!   its platform projects for a keymesh access token;
//! - the key's policy lets a loader open only data keys whose context names its own machine, so a user's
//!   resource fetched on another machine is refused, a forged context does not open, and another tenant's
//!   loader is refused outright.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::HashMap;

use integration_tests::{Mesh, create_application, oidc_issuer::TestIssuer, second_tenant};
use keymesh_client::{ClientError, KeymeshClient, envelope::Associated};
use keymesh_mesh::ServiceName;
use keymesh_proto::v1 as pb;
use tonic::Code;

const KEY: &str = "resources";

fn associated(resource: &str, user: &str, machine: &str) -> Associated {
    Associated {
        aad: resource.as_bytes().to_vec(),
        encryption_context: HashMap::from([("user".into(), user.into()), ("machine".into(), machine.into())]),
    }
}

fn refusal(result: Result<impl Sized, ClientError>) -> (Code, String) {
    match result {
        Ok(_) => panic!("opened what should be refused"),
        Err(ClientError::Status(s)) => (s.code(), s.message().to_owned()),
        Err(e) => panic!("local failure instead of a refusal: {e}"),
    }
}

/// A loader on `machine` of `namespace`: its platform writes a projected token to a file, and that file is
/// all the client has.
fn loader(mesh: &Mesh, cluster: &TestIssuer, dir: &std::path::Path, namespace: &str, machine: &str) -> KeymeshClient {
    let path = dir.join(format!("{namespace}-{machine}.token"));
    std::fs::write(&path, cluster.service_account_token(namespace, machine, "keymesh", 600)).unwrap();
    mesh.client_exchanging(&path)
}

#[tokio::test]
async fn per_user_per_machine_resources() {
    let cluster = TestIssuer::start().await;
    let mut mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    let admin_token = admin.access_token().await.unwrap().to_string();

    // The key: data keys for resources; a loader decrypts only what names its own machine.
    let mut request = integration_tests::key_request(KEY, pb::KeyPurpose::Encrypt, pb::Algorithm::Aes256Gcm);
    request.policy = Some(pb::KeyPolicy {
        enforcement: pb::PolicyEnforcement::Enforce as i32,
        rules: vec![pb::PolicyRule {
            name: "same-machine".into(),
            expression: r#"identity.subject == "system:serviceaccount:loaders:" + request.context.machine"#.into(),
            operations: vec![pb::Operation::Decrypt as i32],
        }],
        ..Default::default()
    });
    integration_tests::create_key(&admin, request).await.unwrap();

    // The resource API may only make data keys; the loaders may only decrypt them.
    let (api_id, api_secret) = create_application(
        &mesh,
        &admin_token,
        "",
        "resource-api",
        &[pb::Role::Developer],
        &[(KEY, &[pb::Operation::GenerateDataKey])],
    )
    .await
    .unwrap();
    let (loader_id, _) = create_application(
        &mesh,
        &admin_token,
        "",
        "loader",
        &[pb::Role::Developer],
        &[(KEY, &[pb::Operation::Decrypt])],
    )
    .await
    .unwrap();
    // Another tenant runs its own loaders in its own namespace of the same cluster.
    let (other_admin_id, other_admin_secret) = second_tenant(&mesh).await;
    let other_admin_token = mesh.client_with(&other_admin_id, &other_admin_secret).access_token().await.unwrap();
    let (other_loader_id, _) = create_application(
        &mesh,
        &other_admin_token,
        "",
        "loader",
        &[pb::Role::Developer],
        &[("*", &[pb::Operation::Decrypt])],
    )
    .await
    .unwrap();
    let issuers = format!(r#"[{{name = "cluster", issuer = "{}", audience = "keymesh"}}]"#, cluster.url);
    let rules = format!(
        r#"[{{issuer = "cluster", subject = "system:serviceaccount:loaders:*", client_id = "{loader_id}"}},
            {{issuer = "cluster", subject = "system:serviceaccount:other-tenant:*", client_id = "{other_loader_id}"}}]"#
    );
    mesh.restart(
        ServiceName::TokenService,
        &[("KEYMESH_TOKENS__EXCHANGE__ISSUERS", &issuers), ("KEYMESH_TOKENS__EXCHANGE__RULES", &rules)],
    )
    .await;

    // The API encrypts each user's resource for the machine it is downloaded to, under a data key of its own.
    let api = mesh.client_with(&api_id, &api_secret);
    let mut envelopes = HashMap::new();
    for (user, machine) in [("alice", "m1"), ("bob", "m1"), ("alice", "m2")] {
        let binding = associated("model.bin", user, machine);
        let data_key = api.generate_data_key(KEY, &binding).await.unwrap();
        let content = format!("weights for {user} on {machine}");
        envelopes.insert((user, machine), data_key.seal(&binding, content.as_bytes()).unwrap());
    }
    let (code, message) =
        refusal(api.open_envelope(&envelopes[&("alice", "m1")], &associated("model.bin", "alice", "m1"), KEY).await);
    assert_eq!(code, Code::PermissionDenied, "the API cannot read what it encrypted: {message}");

    // The loader on m1 opens what was made for m1, for any user.
    let dir = tempfile::tempdir().unwrap();
    let on_m1 = loader(&mesh, &cluster, dir.path(), "loaders", "m1");
    for user in ["alice", "bob"] {
        let opened =
            on_m1.open_envelope(&envelopes[&(user, "m1")], &associated("model.bin", user, "m1"), KEY).await.unwrap();
        assert_eq!(&opened[..], format!("weights for {user} on m1").as_bytes());
    }

    // Alice on m2: her m2 resource opens; her m1 resource does not, whether the loader states its true context
    // (refused by the key's rule) or forges one naming m2 (the context is bound: it does not open).
    let on_m2 = loader(&mesh, &cluster, dir.path(), "loaders", "m2");
    let opened =
        on_m2.open_envelope(&envelopes[&("alice", "m2")], &associated("model.bin", "alice", "m2"), KEY).await.unwrap();
    assert_eq!(&opened[..], b"weights for alice on m2");
    let stolen = &envelopes[&("alice", "m1")];
    let (code, message) = refusal(on_m2.open_envelope(stolen, &associated("model.bin", "alice", "m1"), KEY).await);
    assert_eq!(code, Code::PermissionDenied, "{message}");
    assert!(message.contains("same-machine"), "the refusal names the rule: {message}");
    let (code, message) = refusal(on_m2.open_envelope(stolen, &associated("model.bin", "alice", "m2"), KEY).await);
    assert_eq!((code, message.as_str()), (Code::InvalidArgument, "decryption failed"));
    // Nor does another user's context or another resource's name open it on the right machine.
    let (code, _) = refusal(on_m1.open_envelope(stolen, &associated("model.bin", "bob", "m1"), KEY).await);
    assert_eq!(code, Code::InvalidArgument);
    let (code, _) = refusal(on_m1.open_envelope(stolen, &associated("other.bin", "alice", "m1"), KEY).await);
    assert_eq!(code, Code::InvalidArgument);

    // Another tenant's loader on the same cluster: refused, the key is not its tenant's (and is answered as
    // any key it does not know).
    let foreign = loader(&mesh, &cluster, dir.path(), "other-tenant", "m1");
    let (code, message) = refusal(foreign.open_envelope(stolen, &associated("model.bin", "alice", "m1"), KEY).await);
    assert_eq!((code, message.as_str()), (Code::InvalidArgument, "decryption failed"));

    // A workload the rules do not name gets no token at all.
    let stranger = loader(&mesh, &cluster, dir.path(), "default", "m1");
    let (code, message) = refusal(stranger.access_token().await);
    assert_eq!(code, Code::Unauthenticated, "{message}");
    assert!(message.contains("no rule maps"), "{message}");
}
