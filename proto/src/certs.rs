//! Server certificates for both binaries: PEM loading, and a rustls resolver
//! that serves a fixed certificate or re-reads `crt`/`key` files when either
//! changes on disk (a failed reload keeps the old certificate).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A certificate chain and its key from PEM text; `what` names it in errors.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    what: &str,
) -> Result<Arc<CertifiedKey>, String> {
    let bad = |e: String| format!("{what}: {e}");
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no certificate in the PEM".into()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad(format!("private key PEM: {e}")))?;
    let signer = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad(format!("private key: {e}")))?;
    let ck = CertifiedKey::new(certs, signer);
    ck.keys_match()
        .map_err(|e| bad(format!("key does not match certificate: {e}")))?;
    Ok(Arc::new(ck))
}

fn load_files(crt: &PathBuf, key: &PathBuf) -> Result<Arc<CertifiedKey>, String> {
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("read {}: {e}", p.display()));
    certified_key(&read(crt)?, &read(key)?, &crt.display().to_string())
}

fn mtime(p: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Loaded certificate plus the file times it was loaded at.
type Loaded = (Arc<CertifiedKey>, Option<SystemTime>, Option<SystemTime>);

#[derive(Debug)]
enum Source {
    Fixed(Arc<CertifiedKey>),
    Files {
        crt: PathBuf,
        key: PathBuf,
        state: Mutex<Loaded>,
    },
}

/// Serves the current certificate (see the module doc).
#[derive(Debug)]
pub struct CertResolver(Source);

impl CertResolver {
    /// Always the same certificate.
    pub fn fixed(ck: Arc<CertifiedKey>) -> Self {
        Self(Source::Fixed(ck))
    }

    /// From files, reloaded when they change; fails if they do not load now.
    pub fn files(crt: &str, key: &str) -> Result<Self, String> {
        let (crt, key) = (PathBuf::from(crt), PathBuf::from(key));
        let ck = load_files(&crt, &key)?;
        let state = Mutex::new((ck, mtime(&crt), mtime(&key)));
        Ok(Self(Source::Files { crt, key, state }))
    }

    /// The certificate served right now (reloading first if the files changed).
    pub fn current(&self) -> Arc<CertifiedKey> {
        match &self.0 {
            Source::Fixed(ck) => ck.clone(),
            Source::Files { crt, key, state } => {
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                let (mc, mk) = (mtime(crt), mtime(key));
                if (mc, mk) != (st.1, st.2) {
                    match load_files(crt, key) {
                        Ok(ck) => {
                            tracing::info!(crt = %crt.display(), "tls certificate reloaded");
                            *st = (ck, mc, mk);
                        }
                        Err(e) => {
                            tracing::warn!(cause = %e, "tls certificate reload failed; keeping the old one");
                            st.1 = mc;
                            st.2 = mk;
                        }
                    }
                }
                st.0.clone()
            }
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &std::path::Path, name: &str) -> (String, String, Vec<u8>) {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let (c, k) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&c, ck.cert.pem()).unwrap();
        std::fs::write(&k, ck.signing_key.serialize_pem()).unwrap();
        (
            c.display().to_string(),
            k.display().to_string(),
            ck.cert.der().to_vec(),
        )
    }

    /// A changed file pair is served on the next handshake; a broken one keeps the old.
    #[test]
    fn reloads_on_change() {
        let dir = std::env::temp_dir().join(format!("drover-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c, k, first) = write_pair(&dir, "a.example");
        let r = CertResolver::files(&c, &k).unwrap();
        assert_eq!(r.current().cert[0].as_ref(), &first[..]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (_, _, second) = write_pair(&dir, "b.example");
        // mtime granularity can hide a rewrite within the same tick: touch forward.
        let later = SystemTime::now() + std::time::Duration::from_secs(2);
        for p in [&c, &k] {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(later)
                .unwrap();
        }
        assert_eq!(r.current().cert[0].as_ref(), &second[..]);
        std::fs::write(&c, "garbage").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&c)
            .unwrap()
            .set_modified(later + std::time::Duration::from_secs(2))
            .unwrap();
        assert_eq!(r.current().cert[0].as_ref(), &second[..]);
        assert!(CertResolver::files(&c, &k).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
