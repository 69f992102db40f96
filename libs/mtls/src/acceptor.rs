//! The server side of the mesh's mTLS: a rustls configuration that requires a client certificate from the
//! mesh CA *and* refuses, during the handshake, any that is not an X.509-SVID of the trust domain (no URI
//! SAN, several, or a foreign one). A handler then reads the peer's identity from a certificate that can
//! only say one thing.

use std::sync::Arc;

use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};

use crate::{TlsError, TlsMaterial, spiffe_id_from_der};

/// The CA chain check, then the SVID check.
#[derive(Debug)]
struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        spiffe_id_from_der(end_entity.as_ref())
            .map_err(|e| rustls::Error::General(format!("client certificate refused: {e}")))?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The CA bundle of `tls` as a root store.
pub(crate) fn root_store(tls: &TlsMaterial) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(tls.ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| TlsError::Invalid(format!("CA certificate: {e}")))?;
        roots.add(cert).map_err(|e| TlsError::Invalid(format!("CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Invalid("the CA bundle holds no certificate".into()));
    }
    Ok(roots)
}

/// The certificate chain (never empty) and private key of `tls`.
pub(crate) fn chain_and_key(
    tls: &TlsMaterial,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid(format!("certificate: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError::Invalid("the certificate file holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes())
        .map_err(|e| TlsError::Invalid(format!("private key: {e}")))?;
    Ok((chain, key))
}

/// Checks that `tls` is usable as the identity `spiffe_id`: its leaf certificate chains to its own CA bundle
/// (for client use too, as services call each other with it), carries exactly that SPIFFE id, and matches the
/// key. What a server checks before it swaps in renewed material.
pub fn check_identity(tls: &TlsMaterial, spiffe_id: &str) -> Result<ServerConfig, TlsError> {
    let config = server_config(tls)?;
    let chain = CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid(format!("certificate: {e}")))?;
    let (leaf, intermediates) = chain.split_first().ok_or_else(|| TlsError::Invalid("no certificate".into()))?;
    let verifier = WebPkiClientVerifier::builder(Arc::new(root_store(tls)?))
        .build()
        .map_err(|e| TlsError::Invalid(format!("CA certificate: {e}")))?;
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map_err(|e| TlsError::Invalid(format!("the certificate does not chain to the CA bundle: {e}")))?;
    let found = spiffe_id_from_der(leaf.as_ref()).map_err(|e| TlsError::Invalid(e.to_string()))?;
    if found != spiffe_id {
        return Err(TlsError::Invalid(format!("the certificate is for {found}, not {spiffe_id}")));
    }
    Ok(config)
}

/// A server's TLS configuration: its own certificate chain and key, client certificates required from the
/// CA bundle and read as X.509-SVIDs, HTTP/2 only (gRPC). Uses the process's rustls `CryptoProvider`.
pub fn server_config(tls: &TlsMaterial) -> Result<ServerConfig, TlsError> {
    let inner = WebPkiClientVerifier::builder(Arc::new(root_store(tls)?))
        .build()
        .map_err(|e| TlsError::Invalid(format!("CA certificate: {e}")))?;
    let (chain, key) = chain_and_key(tls)?;
    let mut config = ServerConfig::builder()
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier { inner }))
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Invalid(format!("certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
