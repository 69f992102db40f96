//! The development PKI: when no certificates are configured, a CA and per-identity certificates are
//! generated under `<data_dir>/pki` on first start and reused afterwards. Four services starting at once
//! share one CA thanks to a file lock. Production configures `[tls]` files instead (cert-manager).

use std::{
    fs::{self, OpenOptions},
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::{MeshError, error::io_err};

pub use keymesh_mtls::TlsMaterial;

/// An identity the development CA issues certificates for.
#[derive(Debug, Clone)]
pub struct DevIdentity {
    /// File stem, e.g. "key-service" or "cli".
    pub name: String,
    /// SPIFFE URI.
    pub spiffe_id: String,
    /// Also valid as a TLS server (adds loopback names and addresses).
    pub server: bool,
}

/// The directory of the development PKI.
pub fn pki_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

/// Returns the identity's material, generating the CA and the certificate when missing.
pub fn ensure_dev_identity(data_dir: &Path, identity: &DevIdentity) -> Result<TlsMaterial, MeshError> {
    let dir = pki_dir(data_dir);
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let lock_path = dir.join(".lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    lock.lock().map_err(io_err(&lock_path))?;

    let (ca_cert, ca_key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    if !ca_cert.exists() {
        let (cert, key) = generate_ca()?;
        write_file(&ca_key, key.as_bytes(), 0o600)?;
        write_file(&ca_cert, cert.as_bytes(), 0o644)?;
    }
    let ca_pem = fs::read_to_string(&ca_cert).map_err(io_err(&ca_cert))?;
    let (cert_path, key_path) =
        (dir.join(format!("{}.pem", identity.name)), dir.join(format!("{}-key.pem", identity.name)));
    if !cert_path.exists() {
        let ca_key_pem = Zeroizing::new(fs::read_to_string(&ca_key).map_err(io_err(&ca_key))?);
        let (cert, key) = issue(&ca_pem, &ca_key_pem, identity)?;
        write_file(&key_path, key.as_bytes(), 0o600)?;
        write_file(&cert_path, cert.as_bytes(), 0o644)?;
    }
    let material = TlsMaterial::from_pem(
        ca_pem,
        fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?,
        Zeroizing::new(fs::read_to_string(&key_path).map_err(io_err(&key_path))?),
        Some(keymesh_mtls::TlsFiles { ca_cert, cert: cert_path, key: key_path }),
    );
    drop(lock);
    Ok(material)
}

fn tls_err(e: rcgen::Error) -> MeshError {
    MeshError::Tls(e.to_string())
}

fn generate_ca() -> Result<(String, Zeroizing<String>), MeshError> {
    let key = KeyPair::generate().map_err(tls_err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "keymesh development CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(3650);
    let cert = params.self_signed(&key).map_err(tls_err)?;
    Ok((cert.pem(), Zeroizing::new(key.serialize_pem())))
}

fn issue(ca_pem: &str, ca_key_pem: &str, identity: &DevIdentity) -> Result<(String, Zeroizing<String>), MeshError> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(tls_err)?;
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key).map_err(tls_err)?;
    let key = KeyPair::generate().map_err(tls_err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, identity.name.as_str());
    params.subject_alt_names.push(SanType::URI(identity.spiffe_id.as_str().try_into().map_err(tls_err)?));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if identity.server {
        for dns in ["localhost".to_owned(), identity.name.clone()] {
            params.subject_alt_names.push(SanType::DnsName(dns.try_into().map_err(tls_err)?));
        }
        params.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.subject_alt_names.push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(825);
    let cert = params.signed_by(&key, &issuer).map_err(tls_err)?;
    Ok((cert.pem(), Zeroizing::new(key.serialize_pem())))
}

/// Writes a new file with `mode` atomically (temp file, fsync, rename), so a crash never leaves half a
/// certificate or credential behind.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), MeshError> {
    let tmp = path.with_extension("tmp");
    let mut file =
        OpenOptions::new().create(true).truncate(true).write(true).mode(mode).open(&tmp).map_err(io_err(&tmp))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::identity::spiffe_id_from_der;

    #[test]
    fn issues_once_and_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let id =
            DevIdentity { name: "key-service".into(), spiffe_id: "spiffe://keymesh/key-service".into(), server: true };
        let first = ensure_dev_identity(dir.path(), &id).unwrap();
        let second = ensure_dev_identity(dir.path(), &id).unwrap();
        assert_eq!(first.cert_pem, second.cert_pem);
        let mode = fs::metadata(dir.path().join("pki/ca-key.pem")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let der = rustls_pemfile_first(&first.cert_pem);
        assert_eq!(spiffe_id_from_der(&der).as_deref(), Ok("spiffe://keymesh/key-service"));
        assert!(!format!("{first:?}").contains("PRIVATE KEY"));
    }

    fn rustls_pemfile_first(pem: &str) -> Vec<u8> {
        use base64::Engine;
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD.decode(body).unwrap()
    }
}
