//! TLS under tonic: client channels that dial with a [`ClientTls`], and a listener
//! stream for tonic's server that finishes each handshake before handing the
//! connection over, with the peer's identity attached to every request on it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

use crate::cert::PeerIdentity;
use crate::tls::ClientTls;
use crate::PkiError;

/// Endpoint settings for [`channel`].
#[derive(Debug, Clone)]
pub struct ChannelOptions {
    pub connect_timeout: Duration,
    pub request_timeout: Option<Duration>,
    /// HTTP/2 keepalive pings, for long-lived channels between masters.
    pub keepalive: Option<Duration>,
}

impl Default for ChannelOptions {
    fn default() -> ChannelOptions {
        ChannelOptions { connect_timeout: Duration::from_secs(2), request_timeout: None, keepalive: None }
    }
}

/// A lazily connected channel to `addr` (host:port) over TLS.
pub fn channel(addr: &str, tls: &ClientTls, o: &ChannelOptions) -> Result<Channel, PkiError> {
    let (e, dial) = endpoint(addr, tls, o)?;
    Ok(e.connect_with_connector_lazy(dial))
}

/// Like [`channel`], but connects (and finishes the handshake) before returning.
pub async fn connect(addr: &str, tls: &ClientTls, o: &ChannelOptions) -> Result<Channel, PkiError> {
    let (e, dial) = endpoint(addr, tls, o)?;
    e.connect_with_connector(dial).await.map_err(|e| {
        use std::error::Error;
        let mut msg = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        PkiError::Tls(format!("{addr}: {msg}"))
    })
}

type Dial = tower::util::ServiceFn<
    Box<
        dyn Fn(
                http::Uri,
            ) -> Pin<
                Box<
                    dyn std::future::Future<
                            Output = std::io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>,
                        > + Send,
                >,
            > + Send
            + Sync,
    >,
>;

fn endpoint(addr: &str, tls: &ClientTls, o: &ChannelOptions) -> Result<(Endpoint, Dial), PkiError> {
    // The scheme stays http: TLS is below HTTP/2 here, done by the connector.
    let mut e = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| PkiError::Invalid(format!("bad address {addr:?}: {e}")))?
        .connect_timeout(o.connect_timeout);
    if let Some(t) = o.request_timeout {
        e = e.timeout(t);
    }
    if let Some(k) = o.keepalive {
        e = e.http2_keep_alive_interval(k).keep_alive_timeout(k);
    }
    let connector = TlsConnector::from(tls.config.clone());
    let name = tls.server_name.clone();
    let target = addr.to_string();
    let dial: Dial = tower::service_fn(Box::new(move |_uri: http::Uri| {
        let (connector, name, target) = (connector.clone(), name.clone(), target.clone());
        Box::pin(async move {
            let tcp = TcpStream::connect(&target).await?;
            // Small RPCs must not wait for a delayed ACK.
            tcp.set_nodelay(true)?;
            let s = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(s))
        }) as Pin<Box<dyn std::future::Future<Output = _> + Send>>
    }));
    Ok((e, dial))
}

/// What a request learns about the connection it came on (a request extension).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// `None`: the client showed no certificate.
    pub identity: Option<PeerIdentity>,
}

/// A TLS connection accepted by [`incoming`].
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Limits on connections that have not finished their handshake.
#[derive(Debug, Clone)]
pub struct AcceptLimits {
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once; more connections wait in the kernel's backlog.
    pub max_handshakes: usize,
}

impl Default for AcceptLimits {
    fn default() -> AcceptLimits {
        AcceptLimits { handshake_timeout: Duration::from_secs(10), max_handshakes: 256 }
    }
}

/// The connections of `listener`, each after a successful handshake, for
/// `Server::serve_with_incoming`. Handshakes run concurrently, so a client that stalls
/// its handshake holds up nobody; a failed one is logged and dropped. The accepting task
/// ends when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    limits: AcceptLimits,
) -> impl Stream<Item = Result<TlsConn, std::io::Error>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<TlsConn>(64);
    let acceptor = TlsAcceptor::from(config);
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_handshakes.max(1)));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
                _ = tx.closed() => return,
            };
            let (tcp, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off rather than spin.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, timeout) = (acceptor.clone(), tx.clone(), limits.handshake_timeout);
            tokio::spawn(async move {
                let _permit = permit;
                let tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, "TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
                let identity = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|leaf| {
                    PeerIdentity::from_der(leaf)
                        .inspect_err(|e| tracing::debug!(%remote, "client certificate names no identity: {e}"))
                        .ok()
                });
                let _ = tx.send(TlsConn { inner: tls, info: PeerInfo { remote: Some(remote), identity } }).await;
            });
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (Ok(c), rx)) })
}
