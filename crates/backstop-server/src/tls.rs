//! HTTPS with rustls: the certificate chain and key from PEM files.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use backstop_repo::CancelToken;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
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

pub async fn serve(listener: tokio::net::TcpListener, acceptor: TlsAcceptor, app: Router, stop: CancelToken) {
    while !stop.is_cancelled() {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => continue,
        };
        let Ok((tcp, _)) = accepted else { continue };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let service = TowerToHyperService::new(app);
            let _ = Builder::new(TokioExecutor::new()).serve_connection_with_upgrades(TokioIo::new(tls), service).await;
        });
    }
}
