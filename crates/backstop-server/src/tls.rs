//! HTTPS with rustls: the certificate chain and key from PEM files.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::StartError;

pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, StartError> {
    let bad = |what: &Path, e: &dyn std::fmt::Display| StartError::Config(format!("{}: {e}", what.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(cert, &e))?;
    if certs.is_empty() {
        return Err(StartError::Config(format!("{}: no certificate in the file", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Config(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StartError::Config(format!("the TLS certificate and key do not fit together: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
