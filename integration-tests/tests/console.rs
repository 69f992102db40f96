//! The admin console (`services/console`) against the real mesh: a person signs in at a local OIDC provider that
//! checks PKCE, and headless Chromium (Selenium, `integration-tests/browser/console_browser.py`) drives every page:
//! applications, keys (create, rotate, deletion scheduled behind a typed confirmation and cancelled), the policy
//! editor (a bad CEL rule shows the compiler's message; ENFORCE needs the warning acknowledged), the audit trail
//! with its chain verified, sign-out; then the refusals (a viewer's forged POST, a POST without the CSRF token,
//! another tenant's key, a stolen cookie after sign-out). Every page is screenshotted and checked for CSP
//! violations, console errors and serious or critical axe-core findings. Here, around the browser: the mesh's
//! audit trail names the person behind every change, sign-out revoked the token, and the development login is
//! refused anywhere but loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{path::PathBuf, process::Stdio, time::Duration};

use integration_tests::{Mesh, bin_dir, create_application, free_port, oidc_issuer::TestIssuer, second_tenant};
use keymesh_mesh::ServiceName;
use keymesh_proto::v1 as pb;
use tokio::process::{Child, Command};

const CONSOLE_CLIENT: &str = "keymesh-console";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Starts a console and waits until it answers `/healthz`; panics with its exit status if it stops.
async fn start_console(mesh: &Mesh, port: u16, extra: &[(&str, &str)]) -> Child {
    start_console_logging(mesh, port, extra, None).await
}

/// [`start_console`], its log (standard error) written to `log`.
async fn start_console_logging(mesh: &Mesh, port: u16, extra: &[(&str, &str)], log: Option<&std::path::Path>) -> Child {
    let listen = format!("127.0.0.1:{port}");
    let mut settings = vec![("KEYMESH_CONSOLE__LISTEN", listen.as_str())];
    settings.extend_from_slice(extra);
    let mut command = mesh.console(&settings);
    if let Some(path) = log {
        command.stderr(std::fs::File::create(path).unwrap());
    }
    let mut child = command.spawn().expect("start keymesh-console");
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("keymesh-console exited during start-up: {status}");
        }
        if client.get(format!("http://{listen}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("keymesh-console did not answer on {listen} within 10 s");
}

/// The bootstrap admin's client id and secret (the development login's username and password).
fn bootstrap_credentials(mesh: &Mesh) -> (String, String) {
    let file = std::fs::read_to_string(mesh.dir.path().join("bootstrap-credentials.json")).unwrap();
    let credentials: serde_json::Value = serde_json::from_str(&file).unwrap();
    let field = |name: &str| credentials[name].as_str().unwrap().to_owned();
    (field("client_id"), field("client_secret"))
}

async fn audit_events(mesh: &Mesh, operation: &str) -> Vec<pb::AuditEvent> {
    let admin = mesh.admin_client();
    let query = pb::QueryRequest { operation: operation.into(), limit: 1000, ..Default::default() };
    admin.audit_query(query).await.unwrap().into_iter().filter_map(|r| r.event).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_manages_keys_and_applications_in_a_real_browser() {
    let idp = TestIssuer::start().await;
    let mut mesh = Mesh::start(&[], &[]).await;
    let token = mesh.admin_client().access_token().await.unwrap();
    let (admins, _) =
        create_application(&mesh, &token, "", "console-admins", &[pb::Role::Admin, pb::Role::Auditor], &[])
            .await
            .unwrap();
    let (viewers, _) =
        create_application(&mesh, &token, "", "console-viewers", &[pb::Role::Viewer], &[]).await.unwrap();
    // A key of another tenant, whose id the browser then tries.
    let (second, second_secret) = second_tenant(&mesh).await;
    let other_key = mesh.client_with(&second, &second_secret).create_key("other-tenant-key").await.unwrap().key_id;
    // token-service trusts the provider for ID tokens minted for the console, and maps two people.
    let issuers = format!(
        r#"[{{name = "corp", issuer = "{}", audience = "{CONSOLE_CLIENT}", max_token_lifetime_seconds = 3600}}]"#,
        idp.url
    );
    let rules = format!(
        r#"[{{issuer = "corp", subject = "alice", client_id = "{admins}"}}, {{issuer = "corp", subject = "victor", client_id = "{viewers}"}}]"#
    );
    mesh.restart(
        ServiceName::TokenService,
        &[("KEYMESH_TOKENS__EXCHANGE__ISSUERS", &issuers), ("KEYMESH_TOKENS__EXCHANGE__RULES", &rules)],
    )
    .await;

    let port = free_port();
    let console_url = format!("http://127.0.0.1:{port}");
    let secret_dir = tempfile::tempdir().unwrap();
    let secret_file = secret_dir.path().join("oidc-client-secret");
    std::fs::write(&secret_file, "console-client-secret-0123456789\n").unwrap();
    idp.register_client(CONSOLE_CLIENT, "console-client-secret-0123456789", &format!("{console_url}/oidc/callback"));
    let log = secret_dir.path().join("console.log");
    let _console = start_console_logging(
        &mesh,
        port,
        &[
            ("KEYMESH_CONSOLE__OIDC__ISSUER", &idp.url),
            ("KEYMESH_CONSOLE__OIDC__CLIENT_ID", CONSOLE_CLIENT),
            ("KEYMESH_CONSOLE__OIDC__CLIENT_SECRET_FILE", secret_file.to_str().unwrap()),
            ("KEYMESH_CONSOLE__OIDC__DISPLAY_NAME", "Corp SSO"),
        ],
        Some(&log),
    )
    .await;

    let screenshots = bin_dir().join("console-screenshots");
    let _ = std::fs::remove_dir_all(&screenshots);
    std::fs::create_dir_all(&screenshots).unwrap();
    let output = Command::new("python3")
        .arg(repo().join("integration-tests/browser/console_browser.py"))
        .env("CONSOLE_URL", &console_url)
        .env("ISSUER_URL", &idp.url)
        .env("OTHER_TENANT_KEY_ID", &other_key)
        .env("SCREENSHOT_DIR", &screenshots)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("python3 runs (make test-deps installs selenium and chromium)");
    let report = format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("{report}\nscreenshots: {}", screenshots.display());
    assert!(output.status.success(), "the browser checks failed:\n{report}");
    let pngs = std::fs::read_dir(&screenshots)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "png"))
        .count();
    assert!(pngs >= 10, "{pngs} screenshots in {}", screenshots.display());

    // The console logged the sign-ins and sign-out, and no token (a JWT starts `eyJ`), code or secret.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("signed in to the console") && logged.contains("signed out of the console"), "{logged}");
    for secret in ["eyJ", "console-client-secret", "code=", "csrf"] {
        assert!(!logged.contains(secret), "the console's log holds {secret:?}:\n{logged}");
    }

    // Two sign-ins (alice, victor), each code redeemed with its PKCE verifier, none refused.
    let (redeemed, refused) = idp.redemptions();
    assert!(redeemed >= 2 && refused == 0, "codes redeemed {redeemed}, refused {refused}");

    // Every change reached the audit trail under the console-admins application, on behalf of alice.
    for operation in
        ["CreateApplication", "CreateKey", "RotateKey", "ScheduleKeyDeletion", "CancelKeyDeletion", "UpdateKeyPolicy"]
    {
        let events = audit_events(&mesh, operation).await;
        assert!(
            events.iter().any(|e| e.identity == admins
                && e.on_behalf_of == "corp:alice"
                && e.outcome == pb::Outcome::Success as i32),
            "{operation}: no successful event on behalf of alice: {events:?}"
        );
    }
    // The viewer's forged rotation was refused by the console before it reached the mesh: the only RotateKey
    // events are alice's.
    let rotations = audit_events(&mesh, "RotateKey").await;
    assert!(rotations.iter().all(|e| e.on_behalf_of == "corp:alice"), "{rotations:?}");
    // Sign-out revoked alice's keymesh token at token-service.
    let revocations = audit_events(&mesh, "RevokeToken").await;
    assert!(
        revocations.iter().any(|e| e.identity == admins && e.outcome == pb::Outcome::Success as i32),
        "no revocation of alice's token at sign-out: {revocations:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_development_login_works_on_loopback_only() {
    let mesh = Mesh::start(&[], &[]).await;
    // Beyond loopback the console refuses to start with the development login on, naming the setting.
    let output = mesh
        .console(&[
            ("KEYMESH_CONSOLE__LISTEN", &format!("0.0.0.0:{}", free_port())),
            ("KEYMESH_CONSOLE__PUBLIC_URL", "https://console.example.com"),
            ("KEYMESH_CONSOLE__DEV_LOGIN", "true"),
        ])
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("console.dev_login") && stderr.contains("loopback"), "{stderr}");

    // On loopback: the bootstrap admin's client id and secret sign in; a wrong secret does not.
    let port = free_port();
    let _console = start_console(&mesh, port, &[("KEYMESH_CONSOLE__DEV_LOGIN", "true")]).await;
    let base = format!("http://127.0.0.1:{port}");
    let (id, secret) = bootstrap_credentials(&mesh);
    let (id, secret) = (id.as_str(), secret.as_str());
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let login = |password: &str, origin: &str| {
        http.post(format!("{base}/login/dev"))
            .header("origin", origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("username={id}&password={password}"))
            .send()
    };
    let wrong = login("not-the-secret", &base).await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let cross_site = login(secret, "https://evil.example").await.unwrap();
    assert_eq!(cross_site.status(), 403, "a sign-in posted from another site");
    let signed_in = login(secret, &base).await.unwrap();
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers().get("set-cookie").unwrap().to_str().unwrap().to_owned();
    assert!(
        cookie.starts_with("keymesh-console=") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    assert!(!cookie.contains(secret));
    let session = cookie.split(';').next().unwrap().to_owned();
    let keys = http.get(format!("{base}/keys")).header("cookie", &session).send().await.unwrap();
    assert_eq!(keys.status(), 200);
    let csp = keys.headers().get("content-security-policy").unwrap().to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    let page = keys.text().await.unwrap();
    assert!(page.contains(id) && page.contains("id=\"keys\""), "{page}");
    // Without a session a page sends the browser to sign in.
    let anonymous = http.get(format!("{base}/keys")).send().await.unwrap();
    assert_eq!(anonymous.status(), 303);
    let location = anonymous.headers()["location"].to_str().unwrap();
    assert!(location.starts_with("/login?return_to=%2Fkeys"), "{location}");
}

/// Follows one redirect by hand (the console's cookie is set on the last hop, so each hop is looked at).
async fn hop(http: &reqwest::Client, url: &str) -> reqwest::Response {
    let response = http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 303, "{url}: {:?}", response.text().await);
    response
}

fn location(response: &reqwest::Response, base: &str) -> String {
    let target = response.headers()["location"].to_str().unwrap();
    if target.starts_with('/') { format!("{base}{target}") } else { target.to_owned() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_sign_in_is_exchanged_only_for_a_token_of_the_consoles_own_app() {
    use integration_tests::oidc_issuer::github_id;
    let github = TestIssuer::start().await;
    let mut mesh = Mesh::start(&[], &[]).await;
    let token = mesh.admin_client().access_token().await.unwrap();
    let (admins, _) = create_application(&mesh, &token, "", "github-admins", &[pb::Role::Admin], &[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("github-app-secret");
    let app_secret = "github-app-secret-0123456789abcdef";
    std::fs::write(&secret_file, app_secret).unwrap();
    let issuers = format!(
        r#"[{{name = "github", kind = "github", issuer = "https://github.com", audience = "Iv1.console", api_url = "{}", client_secret_file = "{}"}}]"#,
        github.url,
        secret_file.display()
    );
    // People by their numeric id, or by the claims GitHub's check names (login, a public email).
    let rules = format!(
        r#"[{{issuer = "github", subject = "{}", client_id = "{admins}"}}, {{issuer = "github", subject = "*", claims = {{login = "hubber", email = "hubber@users.example"}}, client_id = "{admins}"}}]"#,
        github_id("octocat")
    );
    mesh.restart(
        ServiceName::TokenService,
        &[("KEYMESH_TOKENS__EXCHANGE__ISSUERS", &issuers), ("KEYMESH_TOKENS__EXCHANGE__RULES", &rules)],
    )
    .await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    github.register_github_app("Iv1.console", app_secret, &format!("{base}/github/callback"));
    let _console = start_console(
        &mesh,
        port,
        &[
            ("KEYMESH_CONSOLE__GITHUB__CLIENT_ID", "Iv1.console"),
            ("KEYMESH_CONSOLE__GITHUB__CLIENT_SECRET_FILE", secret_file.to_str().unwrap()),
            ("KEYMESH_CONSOLE__GITHUB__WEB_URL", &github.url),
        ],
    )
    .await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let sign_in = |login: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        github.sign_in_as(login);
        async move {
            let start = hop(&http, &format!("{base}/login/github?return_to=/keys")).await;
            // The browser binding of the sign-in: only the browser that started it may finish it.
            let binding = start.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
            assert!(binding.starts_with("keymesh-signin="), "{binding}");
            let authorize = location(&start, &base);
            assert!(authorize.contains("code_challenge_method=S256") && authorize.contains("state="), "{authorize}");
            let back = hop(&http, &authorize).await;
            (binding, location(&back, &base))
        }
    };
    let finish = |binding: Option<String>, callback: String| {
        let http = http.clone();
        async move {
            let request = http.get(callback);
            let request = match binding {
                Some(cookie) => request.header("cookie", cookie),
                None => request,
            };
            request.send().await.unwrap()
        }
    };

    // Login CSRF: the callback of someone's sign-in, opened in another browser (the victim's), is refused, and
    // the code is never redeemed.
    let (_, attackers_callback) = sign_in("octocat").await;
    let forced = finish(None, attackers_callback).await;
    assert_eq!(forced.status(), 400);
    assert!(
        forced.headers().get_all("set-cookie").iter().all(|c| !c.to_str().unwrap().starts_with("keymesh-console="))
    );
    assert!(forced.text().await.unwrap().contains("started in another browser"));
    assert_eq!(github.redemptions(), (0, 0));

    // The person a rule maps signs in, lands where they were going, and the page names their GitHub id.
    let (binding, callback) = sign_in("octocat").await;
    let signed_in = finish(Some(binding), callback).await;
    assert_eq!(signed_in.status(), 303);
    assert_eq!(signed_in.headers()["location"], "/keys");
    let cookie = signed_in
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_owned())
        .find(|c| c.starts_with("keymesh-console="))
        .expect("a session cookie");
    let page = http.get(format!("{base}/keys")).header("cookie", &cookie).send().await.unwrap().text().await.unwrap();
    assert!(page.contains(&format!("github:{}", github_id("octocat"))), "{page}");
    assert_eq!(github.redemptions(), (1, 0), "one code redeemed with its PKCE verifier and the app's secret");

    // Someone no rule maps is turned away with token-service's reason.
    let (binding, callback) = sign_in("mallory").await;
    let refused = finish(Some(binding), callback).await;
    assert_eq!(refused.status(), 403);
    let text = refused.text().await.unwrap();
    assert!(text.contains("no rule maps subject"), "{text}");

    // A rule on claims: the login and public email GitHub names.
    let (binding, callback) = sign_in("hubber").await;
    let by_claims = finish(Some(binding), callback).await;
    assert_eq!(by_claims.status(), 303, "{:?}", by_claims.text().await);

    // A token GitHub issued to another app for the same person is refused: that app cannot sign in as them.
    let foreign = github.github_token_for("Iv1.other-app", "octocat");
    let request = pb::IssueTokenRequest {
        grant_type: pb::GrantType::TokenExchange as i32,
        subject_token: foreign,
        subject_token_type: "urn:ietf:params:oauth:token-type:access_token".into(),
        ..Default::default()
    };
    let status = pb::token_service_client::TokenServiceClient::new(mesh.channel(ServiceName::TokenService))
        .issue_token(request)
        .await
        .err()
        .expect("a foreign app's token is refused");
    assert!(status.message().contains("none of the configured OAuth apps"), "{status:?}");
}

/// The value of the first hidden `csrf` input of a page.
fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + "name=\"csrf\" value=\"".len();
    page[at..].split('"').next().unwrap().to_owned()
}

/// The text of the element with `id` (its first text node).
fn text_of(page: &str, id: &str) -> String {
    let at = page.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in {page}"));
    page[at..].split('>').nth(1).unwrap().split('<').next().unwrap().trim().to_owned()
}

/// The console over plain HTTP, as a browser without JavaScript would use it: forms posted with the session's cookie,
/// redirects not followed (each hop is looked at).
struct ConsoleHttp {
    http: reqwest::Client,
    base: String,
}

impl ConsoleHttp {
    fn new(port: u16) -> Self {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Self { http, base: format!("http://127.0.0.1:{port}") }
    }

    /// `GET path` with the session cookie.
    async fn get(&self, path: &str, cookie: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.base)).header("cookie", cookie).send().await.unwrap()
    }

    /// `POST path` of a form with `pairs`, with the session cookie if any.
    async fn post(&self, path: &str, cookie: Option<&str>, pairs: &[(&str, &str)]) -> reqwest::Response {
        let body = pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", integration_tests::oidc_issuer::url_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        match cookie {
            Some(c) => request.header("cookie", c),
            None => request,
        }
        .send()
        .await
        .unwrap()
    }

    /// Signs in with the development login; the session cookie (`name=value`).
    async fn dev_login(&self, id: &str, secret: &str) -> String {
        let response = self.post("/login/dev", None, &[("username", id), ("password", secret)]).await;
        assert_eq!(response.status(), 303);
        response.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applications_and_keys_change_state_from_the_console_as_asked() {
    let mesh = Mesh::start(&[], &[]).await;
    let port = free_port();
    let _console = start_console(&mesh, port, &[("KEYMESH_CONSOLE__DEV_LOGIN", "true")]).await;
    let web = ConsoleHttp::new(port);
    let (id, secret) = bootstrap_credentials(&mesh);
    let cookie = web.dev_login(&id, &secret).await;
    let page = web.get("/applications", &cookie).await.text().await.unwrap();
    let csrf = csrf_of(&page);
    let created = web
        .post(
            "/applications",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("name", "rotated-in-console"),
                ("role", "viewer"),
                ("key_pattern", ""),
                ("operations", ""),
            ],
        )
        .await;
    assert_eq!(created.status(), 200);
    let page = created.text().await.unwrap();
    let (client_id, first) = (text_of(&page, "new-client-id"), text_of(&page, "new-secret"));
    let issues = |secret: String| {
        let client_id = client_id.clone();
        let tokens = pb::token_service_client::TokenServiceClient::new(mesh.channel(ServiceName::TokenService));
        async move {
            let request = pb::IssueTokenRequest {
                grant_type: pb::GrantType::ClientCredentials as i32,
                client_id,
                client_secret: secret,
                ..Default::default()
            };
            tokens.clone().issue_token(request).await.is_ok()
        }
    };
    assert!(issues(first.clone()).await);

    // With a grace period the old secret keeps working beside the new one.
    let rotated = web
        .post(
            &format!("/applications/{client_id}/rotate-secret"),
            Some(&cookie),
            &[("csrf", &csrf), ("grace_hours", "24")],
        )
        .await;
    assert_eq!(rotated.status(), 200);
    let second = text_of(&rotated.text().await.unwrap(), "new-secret");
    assert!(issues(first.clone()).await && issues(second.clone()).await);

    // With none, the previous secret stops at once (a leaked secret is revoked from the console).
    let rotated = web
        .post(
            &format!("/applications/{client_id}/rotate-secret"),
            Some(&cookie),
            &[("csrf", &csrf), ("grace_hours", "0")],
        )
        .await;
    assert_eq!(rotated.status(), 200, "{:?}", rotated.text().await.unwrap());
    let third = text_of(&rotated.text().await.unwrap(), "new-secret");
    assert!(issues(third.clone()).await);
    assert!(!issues(second).await, "the previous secret still works after a rotation without grace");

    // Disabling takes the application's name typed out; then its secret no longer works.
    let disable_path = format!("/applications/{client_id}/disable");
    let named = |confirm| [("csrf", csrf.as_str()), ("name", "rotated-in-console"), ("confirm", confirm)];
    assert_eq!(web.post(&disable_path, Some(&cookie), &named("rotated")).await.status(), 422, "a partial name");
    assert!(issues(third.clone()).await, "nothing changed");
    assert_eq!(web.post(&disable_path, Some(&cookie), &named("rotated-in-console")).await.status(), 303);
    assert!(!issues(third).await, "a disabled application's secret still works");

    // A key disabled and enabled again from its page.
    let created =
        web.post("/keys", Some(&cookie), &[("csrf", &csrf), ("name", "toggled"), ("purpose", "encrypt")]).await;
    assert_eq!(created.status(), 303);
    let state = || async {
        let page = web.get("/keys/toggled", &cookie).await;
        text_of(&page.text().await.unwrap(), "key-state")
    };
    assert_eq!(state().await, "ENABLED");
    assert_eq!(web.post("/keys/toggled/disable", Some(&cookie), &[("csrf", &csrf)]).await.status(), 303);
    assert_eq!(state().await, "DISABLED");
    assert_eq!(web.post("/keys/toggled/enable", Some(&cookie), &[("csrf", &csrf)]).await.status(), 303);
    assert_eq!(state().await, "ENABLED");

    // The owner (the bootstrap admin is one) creates a tenant below their own; an admin who is not may not.
    let created = web.post("/tenants", Some(&cookie), &[("csrf", &csrf), ("name", "subsidiary")]).await;
    assert_eq!(created.status(), 200);
    let page = created.text().await.unwrap();
    assert!(page.contains("id=\"created-tenant\"") && page.contains("subsidiary"), "{page}");
    let token = mesh.admin_client().access_token().await.unwrap();
    let admin = create_application(&mesh, &token, "", "admin-only", &[pb::Role::Admin], &[]).await.unwrap();
    let cookie = web.dev_login(&admin.0, &admin.1).await;
    let csrf = csrf_of(&web.get("/keys", &cookie).await.text().await.unwrap());
    assert_eq!(web.get("/tenants", &cookie).await.status(), 403);
    let refused = web.post("/tenants", Some(&cookie), &[("csrf", &csrf), ("name", "not-mine")]).await;
    assert_eq!(refused.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_developer_registers_an_application_of_their_own_and_a_viewer_cannot() {
    let mesh = Mesh::start(&[], &[]).await;
    let token = mesh.admin_client().access_token().await.unwrap();
    let perms: &[(&str, &[pb::Operation])] = &[("orders-*", &[pb::Operation::Encrypt, pb::Operation::Decrypt])];
    let developer = create_application(&mesh, &token, "", "dev-person", &[pb::Role::Developer], perms).await.unwrap();
    let viewer = create_application(&mesh, &token, "", "view-person", &[pb::Role::Viewer], &[]).await.unwrap();
    let port = free_port();
    let _console = start_console(&mesh, port, &[("KEYMESH_CONSOLE__DEV_LOGIN", "true")]).await;
    let web = ConsoleHttp::new(port);
    // The developer's applications page lists nothing of the tenant's, and offers registration.
    let cookie = web.dev_login(&developer.0, &developer.1).await;
    let page = web.get("/applications", &cookie).await;
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("id=\"cannot-list\"") && page.contains("id=\"register-application\""), "{page}");
    assert!(!page.contains("data-application="), "a developer sees no other application");
    let form_page = web.get("/applications/register", &cookie).await;
    let csrf = csrf_of(&form_page.text().await.unwrap());
    let fields = |keys| [("csrf", csrf.as_str()), ("name", "billing"), ("environment", "staging"), ("keys", keys)];
    // Key rights the developer does not hold are refused with token-service's reason, on the form.
    let refused = web.post("/applications/register", Some(&cookie), &fields("payroll-*")).await;
    assert_eq!(refused.status(), 403);
    let registered = web.post("/applications/register", Some(&cookie), &fields("orders-*")).await;
    assert_eq!(registered.status(), 200);
    let page = registered.text().await.unwrap();
    assert!(page.contains("billing.staging registered"), "{page}");
    let (client_id, secret) = (text_of(&page, "new-client-id"), text_of(&page, "new-secret"));
    let issued = pb::token_service_client::TokenServiceClient::new(mesh.channel(ServiceName::TokenService))
        .issue_token(pb::IssueTokenRequest {
            grant_type: pb::GrantType::ClientCredentials as i32,
            client_id: client_id.clone(),
            client_secret: secret.clone(),
            ..Default::default()
        })
        .await;
    assert!(issued.is_ok(), "the registered application's credentials work");
    // Again: the same application, fresh credentials.
    let again = web.post("/applications/register", Some(&cookie), &fields("orders-*")).await.text().await.unwrap();
    assert!(again.contains("was registered already"), "{again}");
    assert_eq!(text_of(&again, "new-client-id"), client_id);
    assert_ne!(text_of(&again, "new-secret"), secret);

    // A viewer may not register (checked by the console before the mesh, and by the mesh).
    let cookie = web.dev_login(&viewer.0, &viewer.1).await;
    let page = web.get("/applications", &cookie).await.text().await.unwrap();
    assert!(!page.contains("id=\"register-application\""), "{page}");
    let csrf = csrf_of(&page);
    let forged = web
        .post(
            "/applications/register",
            Some(&cookie),
            &[("csrf", &csrf), ("name", "sneaky"), ("environment", "staging"), ("keys", "orders-*")],
        )
        .await;
    assert_eq!(forged.status(), 403);
}
