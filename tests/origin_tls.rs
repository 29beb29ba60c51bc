//! The origin HTTP client over TLS (monoio-rustls): keep-alive against a local
//! monoio TLS server, and an untrusted certificate as a connect error. The test
//! CA and leaf for 127.0.0.1 are made with the `openssl` CLI in a temp dir.
//!
//! Its own harness (`harness = false`, [`common::harness`]): without the
//! `openssl` CLI the tests are reported *ignored* (reason on stderr), never
//! passed; under `CI` they fail (`.ci/run` installs openssl when it can).

mod common;

use std::process::Command;
use std::sync::Arc;

use chartcache::origin::{Error, Method};
use common::{read_all, run};

pub fn main() {
    common::harness::run_needing(
        "the openssl CLI",
        openssl_missing,
        vec![
            ("tls_get_with_keep_alive_over_monoio_rustls", || {
                tls_get_with_keep_alive_over_monoio_rustls();
                Ok(())
            }),
            ("tls_untrusted_certificate_is_connect_error", || {
                tls_untrusted_certificate_is_connect_error();
                Ok(())
            }),
            (
                "tls_upstream_through_an_egress_proxy_connect_tunnel",
                || {
                    tls_upstream_through_an_egress_proxy_connect_tunnel();
                    Ok(())
                },
            ),
        ],
    );
}

/// Why `openssl` cannot be run here, or `None` when it can.
fn openssl_missing() -> Option<String> {
    match Command::new("openssl").arg("version").output() {
        Err(e) => Some(format!(
            "cannot run `openssl version`: {e}; install openssl"
        )),
        Ok(out) if !out.status.success() => Some(format!(
            "`openssl version` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// CA + leaf for 127.0.0.1 made with the openssl CLI; the error names the
/// command that failed and its stderr.
fn make_test_pki(dir: &std::path::Path) -> Result<(), String> {
    let sh = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| format!("openssl {}: {e}", args.join(" ")))?;
        match out.status.success() {
            true => Ok(()),
            false => Err(format!(
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    };
    std::fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .map_err(|e| e.to_string())?;
    sh(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "ca.key.sec1",
    ])?;
    sh(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        "ca.key.sec1",
        "-out",
        "ca.key",
    ])?;
    sh(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-sha256",
        "-days",
        "2",
        "-subj",
        "/CN=chartcache test CA",
        "-out",
        "ca.pem",
    ])?;
    sh(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "leaf.key.sec1",
    ])?;
    sh(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        "leaf.key.sec1",
        "-out",
        "leaf.key",
    ])?;
    sh(&[
        "req",
        "-new",
        "-key",
        "leaf.key",
        "-subj",
        "/CN=127.0.0.1",
        "-out",
        "leaf.csr",
    ])?;
    sh(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-sha256",
        "-extfile",
        "leaf.ext",
        "-out",
        "leaf.pem",
    ])?;
    Ok(())
}

/// The test leaf certificate (from `make_test_pki`) as a rustls server config.
fn test_tls_server_config(dir: &std::path::Path) -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let leaf = CertificateDer::from_pem_file(dir.join("leaf.pem")).unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("leaf.key")).unwrap();
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf], key)
        .unwrap()
}

/// A monoio TLS server on its own thread: accepts one TCP connection and hands
/// it, with the acceptor for `cfg`, to `handle`. Returns its address and thread.
fn spawn_tls_server<F, Fut>(
    cfg: rustls::ServerConfig,
    handle: F,
) -> (std::net::SocketAddr, std::thread::JoinHandle<()>)
where
    F: FnOnce(monoio::net::TcpStream, monoio_rustls::TlsAcceptor) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let (tcp, _) = listener.accept().await.unwrap();
            handle(tcp, monoio_rustls::TlsAcceptor::from(Arc::new(cfg))).await;
        });
    });
    (addr_rx.recv().unwrap(), server)
}

fn tls_get_with_keep_alive_over_monoio_rustls() {
    use chartcache::origin::client::{Endpoint, HttpClient};
    use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let dir = tempfile::tempdir().unwrap();
    make_test_pki(dir.path()).unwrap_or_else(|e| panic!("making the test CA and leaf: {e}"));
    let provider = || Arc::new(rustls::crypto::ring::default_provider());
    let server_cfg = test_tls_server_config(dir.path());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.path().join("ca.pem")).unwrap())
        .unwrap();
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();

    // A monoio TLS server answering two requests on one connection.
    let (addr, server) = spawn_tls_server(server_cfg, |tcp, acceptor| async move {
        let mut tls = acceptor.accept(tcp).await.unwrap();
        for body in ["first over tls", "second"] {
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let (r, buf) = tls.read(vec![0u8; 1]).await;
                assert_eq!(r.unwrap(), 1);
                head.push(buf[0]);
            }
            assert!(head.starts_with(b"GET /x HTTP/1.1\r\nhost: 127.0.0.1:"));
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let (r, _) = tls.write_all(reply.into_bytes()).await;
            r.unwrap();
        }
    });

    let client = HttpClient::with_tls_config(
        Endpoint {
            tls: true,
            host: "127.0.0.1".into(),
            port: addr.port(),
        },
        common::test_client_settings(),
        Arc::new(client_cfg),
    )
    .unwrap();
    run(async {
        for expected in [&b"first over tls"[..], b"second"] {
            let mut resp = client.send(Method::Get, "/x", &[]).await.unwrap();
            assert_eq!(resp.head.status, 200);
            assert_eq!(read_all(&mut resp.body).await.unwrap(), expected);
        }
    });
    let stats = client.stats();
    assert_eq!((stats.connects, stats.reuses), (1, 1));
    server.join().unwrap();
}

fn tls_untrusted_certificate_is_connect_error() {
    // The default (webpki) roots do not trust the test CA: handshake fails.
    use chartcache::origin::client::{Endpoint, HttpClient};

    let dir = tempfile::tempdir().unwrap();
    make_test_pki(dir.path()).unwrap_or_else(|e| panic!("making the test CA and leaf: {e}"));
    let (addr, server) = spawn_tls_server(
        test_tls_server_config(dir.path()),
        |tcp, acceptor| async move { assert!(acceptor.accept(tcp).await.is_err()) },
    );
    let client = HttpClient::new(
        Endpoint {
            tls: true,
            host: "127.0.0.1".into(),
            port: addr.port(),
        },
        common::test_client_settings(),
    )
    .unwrap();
    run(async {
        let err = client.send(Method::Get, "/x", &[]).await.err().unwrap();
        assert!(
            matches!(&err, Error::Connect(m) if m.contains("TLS")),
            "{err:?}"
        );
    });
    server.join().unwrap();
}

/// `HTTPS_PROXY`: TCP to the proxy, `CONNECT 127.0.0.1:PORT` with the proxy's
/// credentials, then TLS to the upstream inside the tunnel (the proxy sees the
/// CONNECT line only); the tunnelled connection is kept alive and reused.
fn tls_upstream_through_an_egress_proxy_connect_tunnel() {
    use chartcache::origin::client::{Endpoint, HttpClient};
    use chartcache::origin::proxy::EgressProxies;
    use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let dir = tempfile::tempdir().unwrap();
    make_test_pki(dir.path()).unwrap_or_else(|e| panic!("making the test CA and leaf: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.path().join("ca.pem")).unwrap())
        .unwrap();
    let client_cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let (addr, server) = spawn_tls_server(
        test_tls_server_config(dir.path()),
        |tcp, acceptor| async move {
            let mut tls = acceptor.accept(tcp).await.unwrap();
            for body in ["one", "two"] {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let (r, buf) = tls.read(vec![0u8; 1]).await;
                    assert_eq!(r.unwrap(), 1);
                    head.push(buf[0]);
                }
                // Origin form inside the tunnel, no proxy credentials.
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                assert!(text.starts_with("get /x http/1.1\r\n"), "{text}");
                assert!(!text.contains("proxy-authorization"), "{text}");
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let (r, _) = tls.write_all(reply.into_bytes()).await;
                r.unwrap();
            }
        },
    );
    let proxy = common::egress::spawn_egress_proxy(Some("Basic dTpw"));
    let mut settings = common::test_client_settings();
    settings.proxies = Arc::new(EgressProxies::new(
        "",
        &format!("http://u:p@{}", proxy.addr),
        "",
    ));
    let client = HttpClient::with_tls_config(
        Endpoint {
            tls: true,
            host: "127.0.0.1".into(),
            port: addr.port(),
        },
        settings,
        Arc::new(client_cfg),
    )
    .unwrap();
    run(async {
        for expected in [&b"one"[..], b"two"] {
            let mut resp = client.send(Method::Get, "/x", &[]).await.unwrap();
            assert_eq!(resp.head.status, 200);
            assert_eq!(read_all(&mut resp.body).await.unwrap(), expected);
        }
    });
    assert_eq!((client.stats().connects, client.stats().reuses), (1, 1));
    let seen = proxy.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].line,
        format!("CONNECT 127.0.0.1:{} HTTP/1.1", addr.port())
    );
    assert_eq!(seen[0].authorization.as_deref(), Some("Basic dTpw"));
    server.join().unwrap();

    // A proxy that refuses CONNECT (wrong credentials) is a connect error naming its answer.
    let refusing = common::egress::spawn_egress_proxy(Some("Basic other"));
    let mut settings = common::test_client_settings();
    settings.proxies = Arc::new(EgressProxies::new("", &refusing.url, ""));
    let client = HttpClient::new(
        Endpoint {
            tls: true,
            host: "127.0.0.1".into(),
            port: addr.port(),
        },
        settings,
    )
    .unwrap();
    run(async {
        let err = client.send(Method::Get, "/x", &[]).await.err().unwrap();
        assert!(
            matches!(&err, Error::Connect(m) if m.contains("407")),
            "{err:?}"
        );
    });
}
