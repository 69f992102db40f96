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
    pin::Pin,
    sync::{
        Arc, LazyLock, RwLock,
        atomic::{AtomicI64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use opentelemetry::{KeyValue, metrics::Counter};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    service::Routes,
    transport::{Server, server::Connected},
};
use tonic_health::ServingStatus;

use crate::{MeshError, config::ServerSettings, pki::TlsMaterial, shedding::LoadShedLayer};

/// Binds the listen address first, so a taken port is reported before anything else starts.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MeshError> {
    TcpListener::bind(addr).await.map_err(|source| MeshError::Bind { addr, source })
}

/// The services every port serves beside its own API.
const PLATFORM_SERVICES: [&str; 3] =
    ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// Serves `routes` (plus health and reflection) until `shutdown` resolves, then stops accepting, reports
/// NOT_SERVING, and waits up to the settings' grace for in-flight calls. Connections and calls are bounded as
/// `settings` says: see [`tls_incoming`] and [`crate::shedding`].
pub async fn serve(
    listener: TcpListener,
    tls: &TlsMaterial,
    routes: Routes,
    service_names: &[&str],
    shutdown: impl Future<Output = ()> + Send + 'static,
    settings: &ServerSettings,
) -> Result<(), MeshError> {
    let grace = settings.shutdown_grace;
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

    let incoming = tls_incoming(listener, acceptor, settings);
    let _reloader = reloader.map(AbortOnDrop);
    let mut builder = Server::builder()
        .timeout(Duration::from_secs(60))
        .initial_stream_window_size(keymesh_mtls::HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(keymesh_mtls::HTTP2_CONNECTION_WINDOW);
    if let Some(age) = settings.max_connection_age {
        // Calls in flight get the drain period to finish after the GOAWAY.
        builder = builder.max_connection_age(age).max_connection_age_grace(grace);
    }
    let server = builder
        // Outermost, so a shed call costs no span, no request id and no handler.
        .layer(LoadShedLayer::new(settings.capacity))
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

/// `keymesh.server.connections.refused`: connections closed as soon as accepted because the service already
/// held `server.max_connections`.
static CONNECTIONS_REFUSED: LazyLock<Counter<u64>> = LazyLock::new(|| {
    opentelemetry::global::meter("keymesh")
        .u64_counter("keymesh.server.connections.refused")
        .with_description("Connections closed at once because the service held server.max_connections already")
        .build()
});

/// `keymesh.tls.handshakes`: completed mTLS handshakes by the key-exchange group they negotiated, so an operator
/// sees which peers still connect without the post-quantum X25519MLKEM768.
static HANDSHAKES: LazyLock<Counter<u64>> = LazyLock::new(|| {
    opentelemetry::global::meter("keymesh")
        .u64_counter("keymesh.tls.handshakes")
        .with_description("Completed mTLS handshakes, by negotiated key-exchange group")
        .build()
});

/// Counts and logs (at debug) the key-exchange group a handshake negotiated; the label comes from rustls's
/// closed list of named groups.
fn count_handshake(peer: &std::net::SocketAddr, connection: &rustls::ServerConnection) {
    let group = connection.negotiated_key_exchange_group().and_then(|g| g.name().as_str()).unwrap_or("other");
    tracing::debug!(%peer, group, "mTLS handshake completed");
    HANDSHAKES.add(1, &[KeyValue::new("group", group)]);
}

/// Reports `keymesh.server.connections.open` from the connection slots.
fn open_connections_gauge(slots: &Arc<Semaphore>, max: usize) {
    let slots = Arc::downgrade(slots);
    opentelemetry::global::meter("keymesh")
        .i64_observable_gauge("keymesh.server.connections.open")
        .with_description("Open connections, TLS handshakes included (at most server.max_connections)")
        .with_callback(move |observer| {
            if let Some(slots) = slots.upgrade() {
                observer.observe(max.saturating_sub(slots.available_permits()) as i64, &[]);
            }
        })
        .build();
    CONNECTIONS_REFUSED.add(0, &[]);
}

/// Dead peers are found by TCP keepalive (a minute of silence, then 3 probes 10 s apart), not by HTTP/2 pings
/// from the server, which would count as traffic and keep forgotten connections from ever being idle.
fn tcp_keepalive(stream: &TcpStream) -> std::io::Result<()> {
    use rustix::net::sockopt;
    sockopt::set_socket_keepalive(stream, true)?;
    sockopt::set_tcp_keepidle(stream, Duration::from_secs(60))?;
    sockopt::set_tcp_keepintvl(stream, Duration::from_secs(10))?;
    sockopt::set_tcp_keepcnt(stream, 3)?;
    Ok(())
}

/// The connections that completed the mTLS handshake, at most `server.max_connections` open at once (a
/// connection over it is closed as soon as accepted, before any TLS work), each closed after
/// `server.idle_timeout_seconds` without a byte either way. Each handshake runs in its own task under
/// `server.handshake_timeout_seconds`, so a slow or silent client never
/// holds up the next one and holds its slot for at most the deadline; a refused one is logged with rustls'
/// reason (which names what is wrong with the certificate) and never reaches the server. The accept loop
/// ends when the server stops reading, which frees the port.
fn tls_incoming(
    listener: TcpListener,
    acceptor: Arc<RwLock<TlsAcceptor>>,
    settings: &ServerSettings,
) -> ReceiverStream<Result<ServedConnection, std::io::Error>> {
    let ServerSettings { max_connections, idle_timeout, handshake_timeout, .. } = *settings;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(max_connections));
    open_connections_gauge(&slots, max_connections);
    tokio::spawn(async move {
        let mut refusing = false;
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
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                CONNECTIONS_REFUSED.add(1, &[]);
                if !refusing {
                    tracing::warn!(
                        max_connections,
                        "connection limit reached; closing new connections until some close"
                    );
                }
                refusing = true;
                continue;
            };
            refusing = false;
            let _ = stream.set_nodelay(true);
            if let Err(error) = tcp_keepalive(&stream) {
                tracing::debug!(%peer, %error, "cannot set TCP keepalive");
            }
            // The material in use when the handshake starts (a renewal may have swapped it since the last one).
            let acceptor = acceptor.read().unwrap_or_else(|p| p.into_inner()).clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        count_handshake(&peer, tls.get_ref().1);
                        let _ = tx.send(Ok(ServedConnection::new(tls, slot, idle_timeout))).await;
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

/// One served connection: holds its slot of `server.max_connections` while open, and ends with an error (which
/// closes it) once it has passed the idle timeout without a byte read or written.
struct ServedConnection {
    tls: TlsStream<TcpStream>,
    _slot: OwnedSemaphorePermit,
    idle_timeout: Duration,
    /// Tokio's clock, the one the idle check's timer runs on.
    last_traffic: Instant,
    /// Wakes the reader at the earliest moment the connection could be idle; re-armed from `last_traffic`.
    idle_check: Pin<Box<tokio::time::Sleep>>,
}

impl ServedConnection {
    fn new(tls: TlsStream<TcpStream>, slot: OwnedSemaphorePermit, idle_timeout: Duration) -> Self {
        Self {
            tls,
            _slot: slot,
            idle_timeout,
            last_traffic: Instant::now(),
            idle_check: Box::pin(tokio::time::sleep(idle_timeout)),
        }
    }

    /// Notes traffic when a poll moved bytes.
    fn traffic<T>(&mut self, poll: &Poll<std::io::Result<T>>, moved: bool) {
        if moved && matches!(poll, Poll::Ready(Ok(_))) {
            self.last_traffic = Instant::now();
        }
    }
}

impl Connected for ServedConnection {
    type ConnectInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tls.connect_info()
    }
}

impl AsyncRead for ServedConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.tls).poll_read(cx, buf);
        let moved = buf.filled().len() > before;
        self.traffic(&poll, moved);
        if poll.is_ready() {
            return poll;
        }
        // The server always has a read pending, so this is where idleness is noticed.
        while self.idle_check.as_mut().poll(cx).is_ready() {
            let idle_until = self.last_traffic + self.idle_timeout;
            if Instant::now() >= idle_until {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no traffic for server.idle_timeout_seconds",
                )));
            }
            self.idle_check.as_mut().reset(idle_until);
        }
        Poll::Pending
    }
}

impl AsyncWrite for ServedConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.tls).poll_write(cx, buf);
        let moved = matches!(poll, Poll::Ready(Ok(n)) if n > 0);
        self.traffic(&poll, moved);
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.tls).poll_write_vectored(cx, bufs);
        let moved = matches!(poll, Poll::Ready(Ok(n)) if n > 0);
        self.traffic(&poll, moved);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

/// Serves one gRPC service until SIGTERM or SIGINT: what every service's `main` does. `health_names` are
/// reported SERVING by the gRPC health service: the service's own name, and any fact a probe may ask for
/// (such as `keymesh.fips.enabled`).
pub async fn serve_until_signal(
    listener: TcpListener,
    tls: &TlsMaterial,
    routes: Routes,
    health_names: &[&str],
    settings: &ServerSettings,
) -> Result<(), MeshError> {
    tracing::info!(addr = ?listener.local_addr().ok(), services = ?health_names, "listening (mTLS)");
    serve(listener, tls, routes, health_names, shutdown_signal(), settings).await
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
