//! What TLS and the auth layer cost a small RPC (docs/benchmarks.md): the
//! gRPC health check served by tonic as a region serves it, four ways —
//! plaintext, plaintext behind the token interceptor (EdDSA verify and
//! principal per call), TLS through `meridian_region::tls::ServerTls`
//! (the region's certificate path: ring, handshakes apart from the accept
//! loop), and TLS with the interceptor. One connection per client, reused
//! (HTTP/2), 16 calls in flight; calls/s and p50/p99 per call.
//!
//! Usage: cargo run --release -p meridian-integration-tests --bin tls-bench [-- --calls N]
//! (needs `MERIDIAN_PYTHON` with `cryptography` for the test certificate,
//! as `scripts/test` sets it).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_auth::grpc::Authenticate;
use meridian_auth::{Authenticator, Principal, TokenSigner};
use meridian_config::PrincipalKind;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Serves health on a loopback port, with or without TLS and the
/// interceptor; the address.
async fn server(tls: Option<meridian_region::tls::ServerTls>, auth: Option<Authenticate>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let mut routes = tonic::service::RoutesBuilder::default();
    match auth {
        Some(auth) => routes.add_service(tonic::service::interceptor::InterceptedService::new(health, auth)),
        None => routes.add_service(health),
    };
    let routes = routes.routes();
    match tls {
        None => {
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            tokio::spawn(Server::builder().add_routes(routes).serve_with_incoming(incoming));
            format!("http://{addr}")
        }
        Some(tls) => {
            let connections = tls.incoming(listener, "bench");
            let connections =
                tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(connections), |(s, _)| {
                    Ok::<_, std::io::Error>(s)
                });
            tokio::spawn(Server::builder().add_routes(routes).serve_with_incoming(connections));
            format!("https://localhost:{}", addr.port())
        }
    }
}

/// `calls` health checks over one connection, 16 in flight: calls/s, and
/// the p50 and p99 of one call in microseconds.
async fn measure(url: &str, ca: &Path, token: Option<&str>, calls: usize) -> (f64, u128, u128) {
    let mut endpoint = Channel::from_shared(url.to_owned()).unwrap();
    if url.starts_with("https://") {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()));
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    let channel = endpoint.connect().await.unwrap();
    let header: Option<tonic::metadata::MetadataValue<_>> = token.map(|t| format!("Bearer {t}").parse().unwrap());
    let call = |client: &mut HealthClient<Channel>| {
        let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
        if let Some(h) = &header {
            request.metadata_mut().insert("authorization", h.clone());
        }
        let mut client = client.clone();
        async move { client.check(request).await.unwrap() }
    };
    let mut warm = HealthClient::new(channel.clone());
    for _ in 0..500 {
        call(&mut warm).await;
    }
    const IN_FLIGHT: usize = 16;
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..IN_FLIGHT {
        let mut client = HealthClient::new(channel.clone());
        let header = header.clone();
        let share = calls / IN_FLIGHT + usize::from(w < calls % IN_FLIGHT);
        workers.push(tokio::spawn(async move {
            let mut took = Vec::with_capacity(share);
            for _ in 0..share {
                let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
                if let Some(h) = &header {
                    request.metadata_mut().insert("authorization", h.clone());
                }
                let at = Instant::now();
                client.check(request).await.unwrap();
                took.push(at.elapsed().as_micros());
            }
            took
        }));
    }
    let mut took = Vec::with_capacity(calls);
    for w in workers {
        took.extend(w.await.unwrap());
    }
    let elapsed = started.elapsed();
    took.sort_unstable();
    let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
    (calls as f64 / elapsed.as_secs_f64(), at(0.50), at(0.99))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let calls = arg("--calls", 40_000);
    let dir = tempfile::TempDir::new().unwrap();
    let pair = meridian_integration_tests::test_certificates(dir.path(), "bench", &[]);
    let ca = pair.ca;
    let tls = meridian_region::tls::ServerTls::load(meridian_region::tls::TlsFiles {
        cert: pair.cert,
        key: pair.key,
        client_ca: None,
    })
    .unwrap();
    let (private, public) = meridian_auth::token::generate_ed25519().unwrap();
    let verifier = Arc::new(Authenticator::new("iss", "aud", &[("k1".into(), public.into_bytes())]).unwrap());
    let signer = TokenSigner::new("k1", private.as_bytes(), "iss", "aud").unwrap();
    let reader = Principal {
        subject: "dr-bench".into(),
        kind: PrincipalKind::Group,
        tenant: None,
        facility: None,
        group: Some("atlantic-rads".into()),
        reader: Some("dr-bench".into()),
        roles: vec!["reader".into()],
        trail: Default::default(),
    };
    #[allow(clippy::disallowed_methods)] // the bench's edge: the token must be valid now
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let token = signer.mint(&reader, now, 3_600).unwrap();
    let auth = || Some(Authenticate::new(verifier.clone()));

    let plain = server(None, None).await;
    let plain_auth = server(None, auth()).await;
    let tls_only = server(Some(tls.clone()), None).await;
    let tls_auth = server(Some(tls), auth()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    println!("{calls} health checks a way, one connection, 16 in flight; 2 rounds");
    println!("{:<32} {:>10} {:>9} {:>9}", "way", "calls/s", "p50 µs", "p99 µs");
    for round in 1..=2 {
        let mut base = 0.0;
        for (name, url, token) in [
            ("plaintext", &plain, None),
            ("plaintext + token check", &plain_auth, Some(token.as_str())),
            ("TLS", &tls_only, None),
            ("TLS + token check", &tls_auth, Some(token.as_str())),
        ] {
            let (rate, p50, p99) = measure(url, &ca, token, calls).await;
            if base == 0.0 {
                base = rate;
            }
            println!(
                "round {round}: {name:<23} {rate:>10.0} {p50:>9} {p99:>9}   ({:+.1}% vs plaintext)",
                (rate / base - 1.0) * 100.0
            );
        }
    }
}
