//! The gRPC server every service runs: mTLS with mandatory client certificates that must be X.509-SVIDs
//! of the trust domain, health and reflection, a server span per request continuing the caller's trace, and
//! graceful shutdown that drains in-flight calls.
//!
//! TLS is terminated here rather than by tonic's `ServerTlsConfig`, which cannot take a certificate
//! verifier of our own: the SVID check must refuse a certificate during the handshake, before any handler
//! could read an identity from it.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{service::Routes, transport::Server};
use tonic_health::ServingStatus;

use crate::{MeshError, pki::TlsMaterial};

/// Binds the listen address first, so a taken port is reported before anything else starts.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MeshError> {
    TcpListener::bind(addr).await.map_err(|source| MeshError::Bind { addr, source })
}

/// The services every port serves beside its own API.
const PLATFORM_SERVICES: [&str; 3] =
    ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// Serves `routes` (plus health and reflection) until `shutdown` resolves, then stops accepting, reports
/// NOT_SERVING, and waits up to `grace` for in-flight calls.
pub async fn serve(
    listener: TcpListener,
    tls: &TlsMaterial,
    routes: Routes,
    service_names: &[&str],
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<(), MeshError> {
    let acceptor = Arc::new(RwLock::new(TlsAcceptor::from(Arc::new(keymesh_mtls::server_config(tls)?))));
    // A certificate rustls accepts but the X.509 parser cannot date costs the gauge, never the service.
    let expiry = Arc::new(AtomicI64::new(tls.not_after().unwrap_or_else(|error| {
        tracing::warn!(%error, "cannot read the certificate's expiry; keymesh.tls.certificate.expiration_timestamp is not reported");
        NO_EXPIRY
    })));
    certificate_expiry_gauge(expiry.clone());
    let reloader =
        tls.files.clone().map(|files| tokio::spawn(reload_on_change(files, tls.clone(), acceptor.clone(), expiry)));
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in service_names {
        health.set_service_status(*name, ServingStatus::Serving).await;
    }
    // Reflection in both versions (grpcurl before 1.9 and older clients speak only v1alpha), advertising what
    // this port serves and nothing else: its own API, health and reflection.
    let advertised: Vec<&str> = service_names
        .iter()
        .copied()
        .filter(|name| crate::rpc_telemetry::is_declared_service(name))
        .chain(PLATFORM_SERVICES)
        .collect();
    let reflection = || {
        let builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(keymesh_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        advertised.iter().fold(builder, |b, name| b.with_service_name(*name))
    };
    let reflection_error = |e: tonic_reflection::server::Error| MeshError::Tls(format!("reflection: {e}"));
    let reflection_v1 = reflection().build_v1().map_err(reflection_error)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let names: Vec<String> = service_names.iter().map(|s| (*s).to_owned()).collect();
    let health_on_stop = health.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: draining in-flight requests");
        health_on_stop.set_service_status("", ServingStatus::NotServing).await;
        for name in names {
            health_on_stop.set_service_status(name, ServingStatus::NotServing).await;
        }
        let _ = stop_tx.send(());
    });
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let stop_rx = async move {
        let _ = stop_rx.await;
        let _ = drained_tx.send(());
    };

    let incoming = tls_incoming(listener, acceptor);
    let _reloader = reloader.map(AbortOnDrop);
    let server = Server::builder()
        .timeout(Duration::from_secs(60))
        .layer(crate::request_id::RequestIdLayer)
        .layer(crate::rpc_telemetry::ServerSpanLayer)
        .add_routes(routes)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, stop_rx);
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result.map_err(MeshError::from),
        _ = async { let _ = drained_rx.await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "grace period over; closing remaining connections");
            Ok(())
        }
    }
}

/// Stops a background task when the server it belongs to stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long a client has to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The connections that completed the mTLS handshake. Each handshake runs in its own task, so a slow or
/// silent client never holds up the next one; a refused one is logged with rustls' reason (which names
/// what is wrong with the certificate) and never reaches the server. The accept loop ends when the server
/// stops reading, which frees the port.
fn tls_incoming(
    listener: TcpListener,
    acceptor: Arc<RwLock<TlsAcceptor>>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            // The material in use when the handshake starts (a renewal may have swapped it since the last one).
            let acceptor = acceptor.read().unwrap_or_else(|p| p.into_inner()).clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                        Some(refused) => tracing::warn!(%peer, reason = %refused, "refused a TLS connection"),
                        // A probe that connects and hangs up, a reset: nothing about the peer's identity.
                        None => tracing::debug!(%peer, error = %e, "TLS handshake did not complete"),
                    },
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Serves one gRPC service until SIGTERM or SIGINT: what every service's `main` does. `health_names` are
/// reported SERVING by the gRPC health service: the service's own name, and any fact a probe may ask for
/// (such as `keymesh.fips.enabled`).
pub async fn serve_until_signal(
    listener: TcpListener,
    tls: &TlsMaterial,
    routes: Routes,
    health_names: &[&str],
    grace: Duration,
) -> Result<(), MeshError> {
    tracing::info!(addr = ?listener.local_addr().ok(), services = ?health_names, "listening (mTLS)");
    serve(listener, tls, routes, health_names, shutdown_signal(), grace).await
}

/// The expiry gauge's value when the certificate could not be dated: nothing is reported.
const NO_EXPIRY: i64 = i64::MIN;

/// `keymesh.tls.certificate.expiration_timestamp` (seconds since the epoch): when the certificate this service
/// serves with now expires, for an alert well before it does (cert-manager's convention).
fn certificate_expiry_gauge(not_after: Arc<AtomicI64>) {
    opentelemetry::global::meter("keymesh")
        .f64_observable_gauge("keymesh.tls.certificate.expiration_timestamp")
        .with_unit("s")
        .with_description("When the certificate this service serves with expires (Unix time)")
        .with_callback(move |observer| {
            let not_after = not_after.load(Ordering::Relaxed);
            if not_after != NO_EXPIRY {
                observer.observe(not_after as f64, &[]);
            }
        })
        .build();
}

/// How often the certificate files are looked at. cert-manager renews by swapping a Secret volume's symlink, so
/// reading the files by their paths sees the new material whatever way it arrived.
const RELOAD_POLL: Duration = Duration::from_secs(1);

/// Takes renewed certificate, key or CA bundle files without a restart: new handshakes use them, as a server and
/// as a client of the other services (through the material's shared client identity); connections already open
/// keep theirs. Material that is not this service's identity, does not chain to its CA bundle or
/// does not match its key is refused and logged, and the material in use stays.
async fn reload_on_change(
    files: keymesh_mtls::TlsFiles,
    serving: TlsMaterial,
    acceptor: Arc<RwLock<TlsAcceptor>>,
    expiry: Arc<AtomicI64>,
) {
    let identity = match serving.spiffe_id() {
        Ok(identity) => identity,
        Err(error) => {
            tracing::warn!(%error, "cannot read this service's own SPIFFE id; certificate files are not watched");
            return;
        }
    };
    // What was last looked at, so that one bad renewal (or unreadable file) is logged once.
    let mut seen = serving.clone();
    let mut unreadable = false;
    loop {
        tokio::time::sleep(RELOAD_POLL).await;
        let renewed = match TlsMaterial::reread(&files) {
            Ok(renewed) => renewed,
            Err(error) => {
                if !unreadable {
                    tracing::warn!(%error, "cannot read the certificate files; the certificate in use keeps serving");
                }
                unreadable = true;
                continue;
            }
        };
        unreadable = false;
        let unchanged = renewed.ca_pem == seen.ca_pem
            && renewed.cert_pem == seen.cert_pem
            && renewed.key_pem.as_str() == seen.key_pem.as_str();
        if unchanged {
            continue;
        }
        seen = renewed;
        let renewed = &seen;
        match keymesh_mtls::check_identity(renewed, &identity) {
            Ok(config) => {
                // Clients first: once the server presents the renewal, peers may already be dropping the old CA.
                if let Err(error) = serving.renew_channels(renewed) {
                    tracing::warn!(reason = %error, "refused the renewed certificate files for calls to other services");
                    continue;
                }
                *acceptor.write().unwrap_or_else(|p| p.into_inner()) = TlsAcceptor::from(Arc::new(config));
                let not_after = renewed.not_after().unwrap_or(NO_EXPIRY);
                expiry.store(not_after, Ordering::Relaxed);
                let serial = renewed.serial().unwrap_or_default();
                tracing::info!(%serial, not_after, "took the renewed certificate; new connections use it");
            }
            Err(error) => tracing::warn!(
                cert = %files.cert.display(),
                reason = %error,
                "refused the renewed certificate files; the certificate in use keeps serving"
            ),
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
