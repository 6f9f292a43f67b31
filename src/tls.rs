//! TLS termination with rustls (Pingora's `rustls` backend: no system OpenSSL). The certificate
//! is served through a resolver whose certificate a reload swaps: new connections get the new
//! one, connections already open keep theirs. A certificate that does not load is a problem at
//! its key path, at start-up (`wxgate check`, `run`) as on reload (which then keeps the old one).

use crate::config::{Problem, TlsConfig};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};
use std::sync::Arc;

/// Install the process's rustls provider, before anything uses TLS (Pingora's listeners and
/// upstreams, reqwest, Redis). `tls13_only` keeps only TLS 1.3 suites: rustls in Pingora 0.9 has
/// no per-listener minimum version, so this applies to the whole process (WeChat and Redis
/// connections included).
pub fn install_crypto(tls13_only: bool) {
    if tls13_only {
        let mut provider = rustls::crypto::ring::default_provider();
        provider
            .cipher_suites
            .retain(|s| s.version() == &rustls::version::TLS13);
        let _ = provider.install_default();
    } else {
        pingora::tls::install_default_crypto_provider();
    }
}

/// Read and check a certificate chain and its key (the key must match the leaf).
pub fn load(config: &TlsConfig) -> Result<CertifiedKey, Vec<Problem>> {
    let problem = |path: &str, message: String| {
        vec![Problem {
            path: path.to_string(),
            message,
        }]
    };
    let cert = config.cert.display().to_string();
    let key = config.key.display().to_string();
    for (path, file) in [("server.tls.cert", &cert), ("server.tls.key", &key)] {
        // A device or a huge file is refused before the PEM parser reads it without end.
        if let Err(e) = crate::config::open_small_file(std::path::Path::new(file)) {
            return Err(problem(path, format!("cannot read {file:?}: {e}")));
        }
    }
    let loaded = pingora::tls::load_certs_and_key_files(&cert, &key).map_err(|e| {
        problem(
            "server.tls.cert",
            format!("cannot read {cert:?} / {key:?}: {e}"),
        )
    })?;
    let Some((certs, private_key)) = loaded else {
        return Err(problem(
            "server.tls.cert",
            format!("no PEM certificate in {cert:?} or no PEM private key in {key:?}"),
        ));
    };
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    CertifiedKey::from_der(certs, private_key, &provider).map_err(|e| {
        problem(
            "server.tls.key",
            format!("{key:?} does not go with the certificate in {cert:?} ({e})"),
        )
    })
}

/// The certificate served now; [`CertResolver::replace`] swaps it for the next handshakes.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    pub fn new(cert: CertifiedKey) -> Self {
        CertResolver {
            current: ArcSwap::from_pointee(cert),
        }
    }

    pub fn replace(&self, cert: CertifiedKey) {
        self.current.store(Arc::new(cert));
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Pingora's TLS settings want callbacks to install a resolver; these are the defaults.
pub struct NoCallbacks;

#[async_trait]
impl TlsAccept for NoCallbacks {}

/// The certificates of a PEM file of trust roots (`routes[].upstream_ca`).
pub fn read_ca(path: &std::path::Path) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::pem::PemObject;
    let shown = path.display();
    let iter = pingora::tls::CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {shown:?}: {e}"))?;
    let mut out = Vec::new();
    for cert in iter {
        let cert = cert.map_err(|e| format!("{shown:?} is not PEM certificates: {e}"))?;
        out.push(cert.as_ref().to_vec());
    }
    if out.is_empty() {
        return Err(format!("{shown:?} holds no PEM certificate"));
    }
    Ok(out)
}

/// Trust roots for a route's `https://` upstreams: the system's and `extra` (Pingora's per-peer
/// list replaces the system's, so both go in). Built once per route, at start-up and reload.
pub fn upstream_roots(
    extra: &std::path::Path,
) -> Result<Arc<pingora::protocols::tls::CaType>, String> {
    use pingora::utils::tls::{parse_x509, WrappedX509};
    let mut roots: Vec<WrappedX509> = pingora::tls::load_native_certs()
        .unwrap_or_default()
        .into_iter()
        .map(|c| WrappedX509::new(c.as_ref().to_vec(), parse_x509))
        .collect();
    for der in read_ca(extra)? {
        roots.push(WrappedX509::new(der, parse_x509));
    }
    Ok(Arc::from(roots))
}
