//! An application using the SDK need not install a rustls `CryptoProvider`: a channel made in a process with
//! none falls back to ring, as tonic's own TLS did. Its own test binary, so that no other test installs one.

#![allow(clippy::unwrap_used)]

use keymesh_mtls::{ServiceName, TlsMaterial, mtls_channel};
use rcgen::{CertificateParams, KeyPair, SanType};
use zeroize::Zeroizing;

#[tokio::test]
async fn a_channel_needs_no_installed_provider() {
    assert!(rustls::crypto::CryptoProvider::get_default().is_none(), "the premise: no provider installed");
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI("spiffe://keymesh/app/no-provider".try_into().unwrap())];
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.pem(), ca_key).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let tls = TlsMaterial::from_pem(ca.pem(), cert.pem(), Zeroizing::new(key.serialize_pem()), None);
    mtls_channel("127.0.0.1:1", &tls, ServiceName::CryptoService).unwrap();
}
