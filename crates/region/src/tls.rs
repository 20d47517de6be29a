//! TLS on a region's gRPC and HTTP ports: the region's certificate and key
//! (`[tls]` of `regions/<r>.toml`, by secret reference), read again when
//! their files change so a rotated certificate is served without a
//! restart. Handshakes run apart from the accept loop: a slow or failed
//! one (unknown CA, expired, plaintext on a TLS port) is logged with the
//! peer and the reason, and holds up no one else.
//!
//! With a client CA (`tls.client_ca`), every handshake asks for a client
//! certificate and verifies one against it; a client without one still
//! connects (people send tokens). The DICOM port captures the certificate
//! per association, as the association's principal is decided after the
//! handshake (`meridian_auth::dimse`).
//!
//! One crypto provider: rustls's ring, the one the object store's and
//! tonic's clients already use, named explicitly so no process-wide
//! default is needed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use meridian_auth::PresentedCertificate;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::UnixTime;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
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

/// Where the certificate chain and its key are read from, and the CA
/// bundle client certificates are verified against.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// The files' modification times: a change to any is a reload.
type Stamp = [Option<SystemTime>; 3];

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

    /// A verifier of client certificates against the CA bundle, when
    /// there is one.
    fn load_client_ca(&self) -> Result<Option<Arc<dyn ClientCertVerifier>>, TlsError> {
        let Some(path) = &self.client_ca else { return Ok(None) };
        let err = |reason: String| TlsError { field: "tls.client_ca", path: path.display().to_string(), reason };
        let mut roots = RootCertStore::empty();
        let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| err(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| err(e.to_string()))?;
        let (added, _) = roots.add_parsable_certificates(certificates);
        if added == 0 {
            return Err(err("no usable PEM CA certificate in the file".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .allow_unauthenticated()
            .build()
            .map(Some)
            .map_err(|e| err(e.to_string()))
    }

    fn stamp(&self) -> Stamp {
        [modified(&self.cert), modified(&self.key), self.client_ca.as_deref().and_then(modified)]
    }
}

/// Client certificates trusted now: verified against the CA bundle read
/// last (the verifier is swapped when the file changes). For one DICOM
/// association, it also keeps the certificate it verified, for the
/// association's access control to read (`presented`).
#[derive(Clone, Debug)]
struct Trusted {
    current: Arc<RwLock<Arc<dyn ClientCertVerifier>>>,
    presented: Option<PresentedCertificate>,
}

impl Trusted {
    fn now(&self) -> Arc<dyn ClientCertVerifier> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl ClientCertVerifier for Trusted {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    // No hints: clients with one certificate (PACS, interface engines)
    // send it whatever is hinted, and the hints would follow rotation.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.now().verify_client_cert(end_entity, intermediates, now)?;
        if let Some(presented) = &self.presented {
            let _ = presented.set(end_entity.clone().into_owned());
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.now().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.now().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.now().supported_verify_schemes()
    }
}

/// A server configuration serving `served`, asking for client
/// certificates when `verifier` is given.
fn server_config(
    served: Arc<Served>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError { field: "tls", path: String::new(), reason: e.to_string() })?;
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    Ok(builder.with_cert_resolver(served))
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
    trusted: Option<Trusted>,
    config: Arc<rustls::ServerConfig>,
    acceptor: TlsAcceptor,
}

impl ServerTls {
    /// Reads the certificate, key and client CA; an error names the field
    /// and file.
    pub fn load(files: TlsFiles) -> Result<ServerTls, TlsError> {
        let served = Arc::new(Served { current: RwLock::new(Arc::new(files.load()?)) });
        let trusted = files.load_client_ca()?.map(|v| Trusted { current: Arc::new(RwLock::new(v)), presented: None });
        let verifier = trusted.clone().map(|t| Arc::new(t) as Arc<dyn ClientCertVerifier>);
        let mut config = server_config(served.clone(), verifier)?;
        // gRPC needs HTTP/2; browsers and curl may take either.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let config = Arc::new(config);
        Ok(ServerTls { files, served, trusted, acceptor: TlsAcceptor::from(config.clone()), config })
    }

    /// A configuration for one DICOM association, which runs its own
    /// handshake: it serves the certificate read last, as the others do,
    /// and keeps the client certificate it verified in the slot returned.
    pub fn for_association(&self) -> Result<(Arc<rustls::ServerConfig>, PresentedCertificate), TlsError> {
        let presented = PresentedCertificate::default();
        let Some(trusted) = &self.trusted else { return Ok((self.config.clone(), presented)) };
        let keeping = Arc::new(Trusted { presented: Some(presented.clone()), ..trusted.clone() });
        Ok((Arc::new(server_config(self.served.clone(), Some(keeping))?), presented))
    }

    /// Reads the files again if they changed since `seen`; keeps serving
    /// the certificate (and trusting the CA) it has when the new ones do
    /// not load.
    fn reload_if_changed(&self, seen: &mut Stamp) {
        let now = self.files.stamp();
        if now == *seen {
            return;
        }
        match self.files.load().and_then(|certified| Ok((certified, self.files.load_client_ca()?))) {
            Ok((certified, verifier)) => {
                *self.served.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(certified);
                if let (Some(trusted), Some(verifier)) = (&self.trusted, verifier) {
                    *trusted.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = verifier;
                }
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

/// The peer of a TLS connection, as axum's connect info: its address and
/// the client certificate its handshake verified, if any. Handed on to
/// the routes as `ConnectInfo<SocketAddr>`, as a plain connection's is,
/// and a [`PeerCertificate`](meridian_auth::PeerCertificate).
#[derive(Clone, Debug)]
pub struct TlsPeer {
    pub addr: SocketAddr,
    pub certificate: Option<CertificateDer<'static>>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for TlsPeer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> TlsPeer {
        let (_, connection) = stream.io().get_ref();
        let certificate =
            connection.peer_certificates().and_then(|chain| chain.first()).map(|c| c.clone().into_owned());
        TlsPeer { addr: *stream.remote_addr(), certificate }
    }
}

/// Gives the routes a TLS peer's address where they read a plain one's,
/// and its certificate where the authentication layer looks.
pub async fn plain_peer(mut request: axum::extract::Request) -> axum::extract::Request {
    use axum::extract::ConnectInfo;
    if let Some(ConnectInfo(peer)) = request.extensions_mut().remove::<ConnectInfo<TlsPeer>>() {
        request.extensions_mut().insert(ConnectInfo(peer.addr));
        if let Some(certificate) = peer.certificate {
            request.extensions_mut().insert(meridian_auth::PeerCertificate(certificate));
        }
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
