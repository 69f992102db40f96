//! Rate limits and quotas through the real crypto-service: an application flooding it is refused with
//! RESOURCE_EXHAUSTED and a retry delay while another application of the same tenant is never refused; a
//! tenant's limit covers all its applications; a daily quota on plaintext stops bulk decryption by one
//! application while its encryptions and other applications' decryptions go on, and the refusals are audited.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use integration_tests::{Mesh, create_application, key_request, with_token};
use keymesh_mesh::ServiceName;
use keymesh_proto::v1::{
    self as pb, crypto_service_client::CryptoServiceClient, token_service_client::TokenServiceClient,
};
use tonic::Code;
use tonic_types::StatusExt;

async fn token(mesh: &Mesh, client_id: &str, secret: &str) -> String {
    mesh.client_with(client_id, secret).access_token().await.unwrap().to_string()
}

async fn encrypt(mesh: &Mesh, token: &str) -> Result<Vec<u8>, tonic::Status> {
    let request = pb::EncryptRequest { key: "shared".into(), plaintext: b"row".to_vec(), ..Default::default() };
    Ok(CryptoServiceClient::new(mesh.channel(ServiceName::CryptoService))
        .encrypt(with_token(request, token))
        .await?
        .into_inner()
        .ciphertext)
}

async fn decrypt(mesh: &Mesh, token: &str, ciphertext: &[u8]) -> Result<(), tonic::Status> {
    let request = pb::DecryptRequest { ciphertext: ciphertext.to_vec(), ..Default::default() };
    CryptoServiceClient::new(mesh.channel(ServiceName::CryptoService)).decrypt(with_token(request, token)).await?;
    Ok(())
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    exhausted: AtomicU64,
}

/// `workers` loops encrypting as `token` for `period`.
async fn hammer(mesh: &Arc<Mesh>, token: &str, workers: usize, period: Duration) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let until = Instant::now() + period;
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (mesh, token, tally) = (mesh.clone(), token.to_owned(), tally.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                match encrypt(&mesh, &token).await {
                    Ok(_) => tally.ok.fetch_add(1, Ordering::Relaxed),
                    Err(s) if s.code() == Code::ResourceExhausted => {
                        let delay = s.get_details_retry_info().and_then(|r| r.retry_delay).expect("RetryInfo");
                        assert!(delay > Duration::ZERO && delay <= Duration::from_secs(1), "{delay:?}");
                        assert!(s.metadata().get("retry-after").is_some());
                        tally.exhausted.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(s) => panic!("unexpected refusal: {s:?}"),
                };
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_the_limit_is_refused_and_others_are_unaffected() {
    let mut mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    let admin_token = admin.access_token().await.unwrap().to_string();
    integration_tests::create_key(&admin, key_request("shared", pb::KeyPurpose::Encrypt, pb::Algorithm::Aes256Gcm))
        .await
        .unwrap();
    let perms: &[(&str, &[pb::Operation])] =
        &[("shared", &[pb::Operation::Encrypt, pb::Operation::Decrypt, pb::Operation::GenerateDataKey])];
    let (noisy_id, noisy_secret) =
        create_application(&mesh, &admin_token, "", "noisy", &[pb::Role::Developer], perms).await.unwrap();
    let (quiet_id, quiet_secret) =
        create_application(&mesh, &admin_token, "", "quiet", &[pb::Role::Developer], perms).await.unwrap();
    let child = TokenServiceClient::new(mesh.channel(ServiceName::TokenService))
        .create_tenant(with_token(pb::CreateTenantRequest { name: "small".into() }, &admin_token))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap()
        .tenant_id;
    let child_perms: &[(&str, &[pb::Operation])] = &[("*", &[pb::Operation::Encrypt])];
    let mut child_apps = Vec::new();
    for name in ["small-1", "small-2"] {
        child_apps.push(
            create_application(&mesh, &admin_token, &child, name, &[pb::Role::Admin], child_perms).await.unwrap(),
        );
    }
    let child_admin = mesh.client_with(&child_apps[0].0, &child_apps[0].1);
    integration_tests::create_key(
        &child_admin,
        key_request("shared", pb::KeyPurpose::Encrypt, pb::Algorithm::Aes256Gcm),
    )
    .await
    .unwrap();

    // The noisy application gets 20 calls per second, the small tenant 10 for all its applications, and the
    // quiet one a daily quota of 5 plaintexts; everything else keeps the generous defaults.
    let env = [
        (format!("KEYMESH_LIMITS__APPLICATIONS__{noisy_id}__PER_SECOND"), "20".to_owned()),
        (format!("KEYMESH_LIMITS__TENANTS__{child}__PER_SECOND"), "10".to_owned()),
        (format!("KEYMESH_LIMITS__QUOTAS__APPLICATIONS__{quiet_id}__PER_DAY"), "5".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    mesh.restart(ServiceName::CryptoService, &env).await;
    let mesh = Arc::new(mesh);
    let noisy = token(&mesh, &noisy_id, &noisy_secret).await;
    let quiet = token(&mesh, &quiet_id, &quiet_secret).await;

    // Eight workers flood as the noisy application while one works as the quiet one.
    let period = Duration::from_secs(3);
    let (flood, calm) = tokio::join!(hammer(&mesh, &noisy, 8, period), hammer(&mesh, &quiet, 1, period));
    let (ok, exhausted) = (flood.ok.load(Ordering::Relaxed), flood.exhausted.load(Ordering::Relaxed));
    assert!(exhausted > 0, "the flood must be refused");
    // 20 per second over 3 s, plus the one-second burst, plus slack for the window edges.
    assert!(ok <= 20 * 3 + 20 + 10, "{ok} admitted against a limit of 20/s");
    assert!(ok >= 20 * 3, "{ok} admitted: the limit must still admit its rate");
    assert_eq!(calm.exhausted.load(Ordering::Relaxed), 0, "the quiet application is never refused");
    assert!(calm.ok.load(Ordering::Relaxed) > 0);

    // A tenant's limit covers its applications together: two of them share 10 per second. Their 20 calls
    // go out at once; what is admitted is the burst of 10 plus what the limit refills while they run.
    let mut tokens = Vec::new();
    for (id, secret) in &child_apps {
        tokens.push(token(&mesh, id, secret).await);
    }
    let started = std::time::Instant::now();
    let calls = tokens.iter().flat_map(|token| (0..10).map(|_| encrypt(&mesh, token)));
    let results = futures_util::future::join_all(calls).await;
    let elapsed = started.elapsed().as_secs_f64();
    let (mut admitted, mut refused) = (0, 0);
    for result in results {
        match result {
            Ok(_) => admitted += 1,
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(s.message().contains(&format!("tenant {child}")), "{}", s.message());
                refused += 1;
            }
            Err(s) => panic!("{s:?}"),
        }
    }
    let allowed = 10 + (elapsed * 10.0).ceil() as i32 + 1;
    assert!(
        (10..=allowed).contains(&admitted) && refused > 0,
        "{admitted} admitted, {refused} refused in {elapsed:.2} s (at most {allowed})"
    );

    // The quiet application's daily quota: five plaintexts (decrypts and data keys together), then
    // RESOURCE_EXHAUSTED naming the day; its encryptions go on, and other applications decrypt its data.
    let ciphertext = encrypt(&mesh, &quiet).await.unwrap();
    for _ in 0..4 {
        decrypt(&mesh, &quiet, &ciphertext).await.unwrap();
    }
    let data_key = pb::GenerateDataKeyRequest { key: "shared".into(), ..Default::default() };
    CryptoServiceClient::new(mesh.channel(ServiceName::CryptoService))
        .generate_data_key(with_token(data_key.clone(), &quiet))
        .await
        .unwrap();
    let err = decrypt(&mesh, &quiet, &ciphertext).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(err.message().contains("5 decrypts, data keys and KEM secrets per day"), "{}", err.message());
    let delay = err.get_details_retry_info().and_then(|r| r.retry_delay).unwrap();
    assert!(delay > Duration::from_secs(3600), "a daily quota refills slowly: {delay:?}");
    let err = CryptoServiceClient::new(mesh.channel(ServiceName::CryptoService))
        .generate_data_key(with_token(data_key, &quiet))
        .await
        .err()
        .expect("the sixth plaintext is refused");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(encrypt(&mesh, &quiet).await.is_ok(), "encryption hands out no plaintext and is not counted");
    for _ in 0..10 {
        decrypt(&mesh, &admin_token, &ciphertext).await.unwrap();
    }

    // The quota refusals are in the audit trail, with the reason.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let query = pb::QueryRequest { identity: quiet_id.clone(), operation: "Decrypt".into(), ..Default::default() };
        let records = admin.audit_query(query).await.unwrap();
        let refused = records
            .iter()
            .filter_map(|r| r.event.as_ref())
            .any(|e| e.status_code == Code::ResourceExhausted as i32 && e.reason.contains("per day"));
        if refused {
            break;
        }
        assert!(Instant::now() < deadline, "quota refusal not audited");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// token-service's administration methods pass the same gate as every other service: an application over its
/// per-second limit is refused with RESOURCE_EXHAUSTED and a retry delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_service_administration_passes_the_application_limit() {
    keymesh_mesh::install_crypto_provider();
    let metrics = format!("127.0.0.1:{}", integration_tests::free_port());
    let mesh = Mesh::start(
        &[("KEYMESH_LIMITS__APPLICATION_PER_SECOND", "5")],
        &[(ServiceName::TokenService, "KEYMESH_TELEMETRY__METRICS_ADDR", &metrics)],
    )
    .await;
    let admin = mesh.admin_client().access_token().await.unwrap().to_string();
    let calls = (0..40).map(|_| {
        let mut tokens = TokenServiceClient::new(mesh.channel(ServiceName::TokenService));
        let request = with_token(pb::ListApplicationsRequest::default(), &admin);
        async move { tokens.list_applications(request).await.map(|_| ()) }
    });
    let answers = futures_util::future::join_all(calls).await;
    let refused: Vec<&tonic::Status> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(!refused.is_empty(), "40 ListApplications at once under a limit of 5/s were all admitted");
    assert!(answers.iter().any(Result::is_ok), "the burst is admitted");
    for status in refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.get_details_retry_info().is_some(), "a retry delay: {status:?}");
    }
    // Counted by kind of limit, never by who was refused.
    let families = integration_tests::parse_prometheus(&integration_tests::scrape_metrics(&metrics).await.1);
    let refusals = families.get("keymesh_limits_refusals").unwrap_or_else(|| panic!("{:?}", families.keys()));
    assert!(
        refusals.iter().any(|s| s.name == "keymesh_limits_refusals_total"
            && s.has(&[("limit", "application_rate")])
            && s.value >= 1.0),
        "{refusals:?}"
    );
    assert!(refusals.iter().all(|s| s.labels.keys().all(|k| k == "limit" || k.starts_with("otel_"))));
}
