//! TLS for tunnel connections (rustls, TLS 1.3 only, ring provider).
//!
//! - Server `tls=1`: a self-signed certificate (made here, or handed in by the
//!   master so the fingerprint survives restarts); its SHA-256 is logged.
//! - Server `tls=2`: `crt`/`key` files, reloaded when they change on disk.
//! - Client: with `fp=` the server's leaf certificate must hash to it; at
//!   `tls=2` the chain is verified against the system roots plus the client's
//!   `crt=` file, for the name in `sni=`. One connector serves every link
//!   (rebuilt when the server's mode or the `crt=` file changes): building
//!   one per pool link loaded the system roots from disk each time and cost
//!   ~14 KiB of session cache per idle link.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use proto::certs::{self, CertResolver};

use super::error::TunnelError;

/// PEM certificate chain and private key.
#[derive(Clone)]
pub struct Material {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Material {
    /// A fresh self-signed certificate for `tls=1`.
    pub fn self_signed() -> Result<Self, TunnelError> {
        let ck = rcgen::generate_simple_self_signed(vec!["drover".to_string()])
            .map_err(|e| TunnelError::Config(format!("self-signed certificate: {e}")))?;
        Ok(Self {
            cert_pem: ck.cert.pem(),
            key_pem: ck.signing_key.serialize_pem(),
        })
    }
}

/// ring's provider with AES-128-GCM/SHA-256 first (ring's default puts
/// AES-256-GCM/SHA-384 first). SHA-256 runs on the CPU's SHA extensions where
/// SHA-384 does not, which shows in every pool link's key schedule, and AES-128
/// has 10 rounds to AES-256's 14 for every byte carried; Go's TLS, and so
/// NodePass, prefers it too. Both ends use this order, and a server follows
/// the client's.
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    })
}

/// `sha256:<hex>` of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Server-side TLS: the acceptor and the fingerprint to show.
pub struct ServerTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub fingerprint: String,
}

impl ServerTls {
    /// `tls=1` from given (or fresh) material.
    pub fn self_signed(material: &Material) -> Result<Self, TunnelError> {
        let ck = certs::certified_key(
            material.cert_pem.as_bytes(),
            material.key_pem.as_bytes(),
            "tls=1",
        )
        .map_err(TunnelError::Config)?;
        Self::build(CertResolver::fixed(ck))
    }

    /// `tls=2` from files, reloaded on change.
    pub fn files(crt: &str, key: &str) -> Result<Self, TunnelError> {
        let resolver =
            CertResolver::files(crt, key).map_err(|e| TunnelError::Config(format!("tls=2 {e}")))?;
        Self::build(resolver)
    }

    fn build(resolver: CertResolver) -> Result<Self, TunnelError> {
        let leaf = resolver.current().cert[0].clone();
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TunnelError::Config(format!("tls: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        // Idle pool links must carry no bytes (see Link::is_alive).
        cfg.send_tls13_tickets = 0;
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
            fingerprint: fingerprint(&leaf),
        })
    }
}

/// Client-side TLS settings from the client URL.
#[derive(Clone)]
pub struct ClientTls {
    fp: Option<String>,
    sni: Option<String>,
    ca_file: Option<String>,
    tunnel_host: String,
    /// The connector last built, shared by clones.
    built: Arc<Mutex<Option<Built>>>,
}

/// A connector, and what it was built for.
struct Built {
    mode: u8,
    ca_modified: Option<SystemTime>,
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl ClientTls {
    pub fn new(
        fp: Option<String>,
        sni: Option<String>,
        ca_file: Option<String>,
        tunnel_host: String,
    ) -> Self {
        Self {
            fp,
            sni,
            ca_file,
            tunnel_host,
            built: Arc::default(),
        }
    }

    /// A connector and server name for the mode the server announced: the
    /// one built before while the mode and the `crt=` file are unchanged.
    pub fn connector(
        &self,
        mode: u8,
    ) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), TunnelError> {
        let ca_modified = self
            .ca_file
            .as_ref()
            .and_then(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok());
        let mut built = self.built.lock().expect("tls connector lock");
        if let Some(b) = built.as_ref()
            && b.mode == mode
            && b.ca_modified == ca_modified
        {
            return Ok((b.connector.clone(), b.name.clone()));
        }
        let (connector, name) = self.build(mode)?;
        *built = Some(Built {
            mode,
            ca_modified,
            connector: connector.clone(),
            name: name.clone(),
        });
        Ok((connector, name))
    }

    fn build(
        &self,
        mode: u8,
    ) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), TunnelError> {
        let name_text = match (&self.sni, mode) {
            (Some(s), _) => s.clone(),
            (None, 2)
                if self.tunnel_host.parse::<std::net::IpAddr>().is_err()
                    && !self.tunnel_host.is_empty() =>
            {
                self.tunnel_host.clone()
            }
            (None, 2) => {
                return Err(TunnelError::Config(
                    "server uses tls=2 but the tunnel address is an IP: set sni=<certificate name>"
                        .into(),
                ));
            }
            (None, _) => "drover".into(),
        };
        let name = ServerName::try_from(name_text.clone())
            .map_err(|e| TunnelError::Config(format!("sni {name_text:?}: {e}")))?;
        let verifier: Arc<dyn ServerCertVerifier> = if mode == 2 {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if let Some(ca) = &self.ca_file {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
                    .and_then(|it| it.collect())
                    .map_err(|e| TunnelError::Config(format!("crt {ca}: {e}")))?;
                for c in certs {
                    roots
                        .add(c)
                        .map_err(|e| TunnelError::Config(format!("crt {ca}: {e}")))?;
                }
            }
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| TunnelError::Config(format!("tls=2 roots: {e}")))?;
            Arc::new(Pinned {
                fp: self.fp.clone(),
                chain: Some(webpki),
                algs: provider().signature_verification_algorithms,
            })
        } else {
            Arc::new(Pinned {
                fp: self.fp.clone(),
                chain: None,
                algs: provider().signature_verification_algorithms,
            })
        };
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TunnelError::Config(format!("tls: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        // Our servers issue no tickets (`send_tls13_tickets = 0`).
        cfg.resumption = rustls::client::Resumption::disabled();
        Ok((tokio_rustls::TlsConnector::from(Arc::new(cfg)), name))
    }
}

/// Checks the pinned fingerprint (when set) and the chain (at `tls=2`).
#[derive(Debug)]
struct Pinned {
    fp: Option<String>,
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(chain) = &self.chain {
            chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        }
        if let Some(want) = &self.fp {
            let got = fingerprint(end_entity);
            if &got != want {
                return Err(rustls::Error::General(format!(
                    "fingerprint mismatch: server certificate is sha256:{got}, fp= pins sha256:{want}"
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One connector serves every link while the mode and the `crt=` file
    /// stay the same; a changed file or mode builds a new one.
    #[test]
    fn connector_is_built_once_per_mode_and_file() {
        let ca = std::env::temp_dir().join(format!("drover-ca-{}.pem", std::process::id()));
        std::fs::write(&ca, Material::self_signed().expect("cert").cert_pem).expect("write ca");
        let tls = ClientTls::new(
            None,
            Some("drover".into()),
            Some(ca.display().to_string()),
            "127.0.0.1".into(),
        );
        let config = |mode| tls.connector(mode).expect("connector").0.config().clone();
        let first = config(1);
        assert!(Arc::ptr_eq(&first, &config(1)), "reused");
        let two = config(2);
        assert!(
            !Arc::ptr_eq(&first, &two),
            "another mode, another connector"
        );
        assert!(Arc::ptr_eq(&two, &config(2)));
        let earlier = SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&ca)
            .and_then(|f| f.set_modified(earlier))
            .expect("touch ca");
        assert!(!Arc::ptr_eq(&two, &config(2)), "crt= changed: rebuilt");
        let _ = std::fs::remove_file(&ca);
    }

    /// Our two ends agree on AES-128-GCM/SHA-256 (see `provider`).
    #[tokio::test]
    async fn ends_negotiate_aes128() {
        let server = ServerTls::self_signed(&Material::self_signed().expect("cert")).expect("tls");
        let client = ClientTls::new(Some(server.fingerprint.clone()), None, None, "x".into());
        let (connector, name) = client.connector(1).expect("connector");
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (c, s) = tokio::join!(connector.connect(name, a), server.acceptor.accept(b));
        let (c, _s) = (c.expect("client handshake"), s.expect("server handshake"));
        let suite = c.get_ref().1.negotiated_cipher_suite().expect("suite");
        assert_eq!(suite.suite(), rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    }
}
