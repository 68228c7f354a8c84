//! Test certificates for `tls=2`: a CA and a server certificate it signed,
//! written as PEM files to a temporary directory; and the client side for
//! the master's HTTPS API: a rustls config that trusts a CA file, or one that
//! pins a `tls=1` self-signed certificate by its logged SHA-256 fingerprint.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// A CA and one server certificate for `server_name`, on disk.
pub struct TestPki {
    /// Holds the files; removed on drop.
    pub dir: TempDir,
    /// The CA certificate (what the client trusts via `crt=`).
    pub ca_pem: PathBuf,
    /// The server certificate (`crt=` on the server).
    pub cert_pem: PathBuf,
    /// The server's private key (`key=` on the server).
    pub key_pem: PathBuf,
}

/// Makes a CA and a server certificate for the DNS name `server_name`.
pub fn make_pki(server_name: &str) -> TestPki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Drover Test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().expect("ca key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign ca");
    let issuer = Issuer::new(ca_params, ca_key);

    let mut params = CertificateParams::new(vec![server_name.to_string()]).expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, server_name);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("server key");
    let cert = params.signed_by(&key, &issuer).expect("sign server cert");

    let dir = tempfile::tempdir().expect("tempdir");
    let ca_pem = dir.path().join("ca.pem");
    let cert_pem = dir.path().join("server.pem");
    let key_pem = dir.path().join("server.key");
    std::fs::write(&ca_pem, ca_cert.pem()).expect("write ca.pem");
    std::fs::write(&cert_pem, cert.pem()).expect("write server.pem");
    std::fs::write(&key_pem, key.serialize_pem()).expect("write server.key");
    TestPki {
        dir,
        ca_pem,
        cert_pem,
        key_pem,
    }
}

/// Extracts `<hex>` from a `fingerprint=sha256:<hex>` log line (64 lowercase
/// hex digits, or the test fails).
pub fn fingerprint_of(line: &str) -> String {
    let start = line
        .find("fingerprint=sha256:")
        .unwrap_or_else(|| panic!("no fingerprint=sha256: in {line:?}"))
        + "fingerprint=sha256:".len();
    let hex: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    assert!(
        hex.len() == 64
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "the fingerprint in {line:?} is not 64 lowercase hex digits"
    );
    hex
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config that verifies the server's chain against the CA in
/// `ca_pem` (and the name it connects to).
pub fn trusting(ca_pem: &Path) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    let ca = CertificateDer::from_pem_file(ca_pem)
        .unwrap_or_else(|e| panic!("reading {}: {e}", ca_pem.display()));
    roots.add(ca).expect("adding the test CA");
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A client config that accepts exactly the certificate whose SHA-256 is
/// `fingerprint` (hex) and checks the handshake signatures with it.
pub fn pinning(fingerprint: &str) -> ClientConfig {
    let provider = provider();
    let verifier = Pinned {
        fingerprint: fingerprint.to_string(),
        algorithms: provider.signature_verification_algorithms,
    };
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth()
}

#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = hex::encode(Sha256::digest(end_entity.as_ref()));
        if got == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate is sha256:{got}, pinned sha256:{}",
                self.fingerprint
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
