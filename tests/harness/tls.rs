//! Test certificates for `tls=2`: a CA and a server certificate it signed,
//! written as PEM files to a temporary directory.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
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
