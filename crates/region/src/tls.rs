//! TLS on a region's gRPC and HTTP ports: the region's certificate and key
//! (`[tls]` of `regions/<r>.toml`, by secret reference), read again when
//! their files change so a rotated certificate is served without a
//! restart. Handshakes run apart from the accept loop: a slow or failed
//! one (unknown CA, expired, plaintext on a TLS port) is logged with the
//! peer and the reason, and holds up no one else.
//!
//! One crypto provider: rustls's ring, the one the object store's and
//! tonic's clients already use, named explicitly so no process-wide
//! default is needed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How often the certificate's files are looked at for a change.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// A handshake not finished in this long is dropped.
const HANDSHAKE_WITHIN: Duration = Duration::from_secs(10);

/// Why the region's certificate could not be used; `field` is the
/// `[tls]` field (`tls.cert`, `tls.key`) and `path` its file.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {path}: {reason}")]
pub struct TlsError {
    pub field: &'static str,
    pub path: String,
    pub reason: String,
}

/// Where the certificate chain and its key are read from.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl TlsFiles {
    /// The chain and key, checked to belong together.
    fn load(&self) -> Result<CertifiedKey, TlsError> {
        let cert_err = |reason: String| TlsError { field: "tls.cert", path: self.cert.display().to_string(), reason };
        let key_err = |reason: String| TlsError { field: "tls.key", path: self.key.display().to_string(), reason };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| cert_err(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| cert_err(e.to_string()))?;
        if chain.is_empty() {
            return Err(cert_err("no PEM certificate in the file".into()));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| key_err(e.to_string()))?;
        let provider = rustls::crypto::ring::default_provider();
        let signing = provider.key_provider.load_private_key(key).map_err(|e| key_err(e.to_string()))?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(|e| key_err(format!("does not match the certificate: {e}")))?;
        Ok(certified)
    }

    fn stamp(&self) -> (Option<SystemTime>, Option<SystemTime>) {
        (modified(&self.cert), modified(&self.key))
    }
}

/// The certificate served now, swapped when its files change.
#[derive(Debug)]
struct Served {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Served {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }
}

/// A region's server TLS: one configuration for its gRPC and HTTP ports.
#[derive(Clone)]
pub struct ServerTls {
    files: TlsFiles,
    served: Arc<Served>,
    config: Arc<rustls::ServerConfig>,
    acceptor: TlsAcceptor,
}

impl ServerTls {
    /// Reads the certificate and key; an error names the field and file.
    pub fn load(files: TlsFiles) -> Result<ServerTls, TlsError> {
        let served = Arc::new(Served { current: RwLock::new(Arc::new(files.load()?)) });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError { field: "tls", path: String::new(), reason: e.to_string() })?
            .with_no_client_auth()
            .with_cert_resolver(served.clone());
        // gRPC needs HTTP/2; browsers and curl may take either.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let config = Arc::new(config);
        Ok(ServerTls { files, served, acceptor: TlsAcceptor::from(config.clone()), config })
    }

    /// The configuration, for a port that runs its own handshake (DICOM):
    /// it serves the certificate read last, as the others do.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }

    /// Reads the files again if they changed since `seen`; keeps serving
    /// the certificate it has when the new one does not load.
    fn reload_if_changed(&self, seen: &mut (Option<SystemTime>, Option<SystemTime>)) {
        let now = self.files.stamp();
        if now == *seen {
            return;
        }
        match self.files.load() {
            Ok(certified) => {
                *self.served.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(certified);
                *seen = now;
                tracing::info!(cert = %self.files.cert.display(), "serving the certificate read again");
            }
            // Half-written (the key before the certificate): tried again
            // at the next look, the old one served meanwhile.
            Err(e) => tracing::warn!(error = %e, "the changed certificate does not load yet; serving the previous one"),
        }
    }

    /// Watches the files until `stop` resolves.
    pub async fn watch(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut seen = self.files.stamp();
        loop {
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(RELOAD_EVERY) => self.reload_if_changed(&mut seen),
            }
        }
    }

    /// Accepts on `listener` and hands over each connection whose
    /// handshake succeeded; the others are logged and dropped.
    pub fn incoming(
        &self,
        listener: TcpListener,
        port: &'static str,
    ) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
        let (send, receive) = mpsc::channel(64);
        let acceptor = self.acceptor.clone();
        tokio::spawn(async move {
            loop {
                let (socket, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(port, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                if send.is_closed() {
                    return;
                }
                let (acceptor, handed) = (acceptor.clone(), send.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_WITHIN, acceptor.accept(socket)).await {
                        Ok(Ok(stream)) => {
                            let _ = handed.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::warn!(port, %peer, reason = %e, "TLS handshake refused"),
                        Err(_) => tracing::warn!(port, %peer, "TLS handshake not finished in time"),
                    }
                });
            }
        });
        receive
    }
}

/// The peer of a TLS connection, as axum's connect info; handed on to
/// the routes as `ConnectInfo<SocketAddr>`, as a plain connection's is.
#[derive(Clone, Copy, Debug)]
pub struct TlsPeer(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for TlsPeer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> TlsPeer {
        TlsPeer(*stream.remote_addr())
    }
}

/// Gives the routes a TLS peer's address where they read a plain one's.
pub async fn plain_peer(mut request: axum::extract::Request) -> axum::extract::Request {
    use axum::extract::ConnectInfo;
    if let Some(ConnectInfo(TlsPeer(addr))) = request.extensions().get::<ConnectInfo<TlsPeer>>().copied() {
        request.extensions_mut().insert(ConnectInfo(addr));
    }
    request
}

/// An HTTP listener of TLS connections, for `axum::serve`.
pub struct TlsListener {
    pub incoming: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    pub local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(accepted) => accepted,
            // The accept task ended: the server is stopping.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
