//! The response headers of every console response. The source document's dashboard allowed `'unsafe-inline'`
//! scripts and styles; the console allows neither, so an injected `<script>` or `style` attribute does not run:
//! its pages load their scripts and styles from its own origin only. Framing is refused (clickjacking), MIME
//! sniffing is off, no referrer leaves for another site (URLs name keys and tenants), and nothing is cached (pages show secrets
//! once). HSTS is sent whenever the console is served over TLS.

use axum::{
    extract::{Request, State},
    http::{HeaderName, HeaderValue, header},
    middleware::Next,
    response::Response,
};

/// The Content-Security-Policy.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One year, subdomains included: the browser then never tries plain HTTP.
pub const STRICT_TRANSPORT_SECURITY: &str = "max-age=31536000; includeSubDomains";

/// Whether responses go out over TLS (and so carry HSTS).
#[derive(Clone, Copy, Debug)]
pub struct OverTls(pub bool);

/// Middleware: sets the headers on every response, replacing any a handler set.
pub async fn secure_headers(State(tls): State<OverTls>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let mut set = |name: HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::X_FRAME_OPTIONS, "DENY");
    // `same-origin`, not `no-referrer`: no other site ever sees a console URL, and the browser keeps sending this
    // console's own `Origin` on its form posts (under `no-referrer` it sends `Origin: null`), which the guard checks.
    set(header::REFERRER_POLICY, "same-origin");
    set(header::CACHE_CONTROL, "no-store");
    set(HeaderName::from_static("cross-origin-opener-policy"), "same-origin");
    if tls.0 {
        set(header::STRICT_TRANSPORT_SECURITY, STRICT_TRANSPORT_SECURITY);
    }
    response
}

#[cfg(test)]
mod tests {
    use axum::{Router, body::Body, middleware, response::IntoResponse, routing::get};
    use tower::ServiceExt;

    use super::*;

    async fn page() -> &'static str {
        "page"
    }

    /// A handler that tries to loosen the policy: the layer wins.
    async fn loosening() -> impl IntoResponse {
        ([(header::CONTENT_SECURITY_POLICY, "script-src *")], "page")
    }

    async fn headers_of(tls: bool, path: &str) -> axum::http::HeaderMap {
        let app = Router::new()
            .route("/", get(page))
            .route("/loose", get(loosening))
            .layer(middleware::from_fn_with_state(OverTls(tls), secure_headers));
        let response = app.oneshot(Request::builder().uri(path).body(Body::empty()).unwrap()).await.unwrap();
        response.headers().clone()
    }

    #[tokio::test]
    async fn every_response_carries_the_strict_policy_and_hsts_only_over_tls() {
        let headers = headers_of(true, "/loose").await;
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert_eq!(csp, CONTENT_SECURITY_POLICY, "the layer replaces what a handler set");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
            "object-src 'none'",
        ] {
            assert!(csp.contains(directive), "{directive}");
        }
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[header::REFERRER_POLICY], "same-origin");
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(headers[header::STRICT_TRANSPORT_SECURITY], STRICT_TRANSPORT_SECURITY);
        let plain = headers_of(false, "/").await;
        assert!(plain.get(header::STRICT_TRANSPORT_SECURITY).is_none(), "no HSTS over plain HTTP (loopback dev)");
        assert_eq!(plain[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
    }
}
