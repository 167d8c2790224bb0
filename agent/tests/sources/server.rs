//! A small real HTTP/1.1 server for the HTTP and MJPEG source tests: it listens on 127.0.0.1, answers each request
//! through a handler, paces a response's chunks like a camera would, and can vanish at once (`stop` aborts the
//! listener and every open connection, which a keep-alive framework server would not).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use outpost_agent::source::{FrameSource, HttpConfig, HttpMode, SourceConfig, SourceContext};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// An HTTP source (snapshot polling or an MJPEG stream) on `url`, as a camera config would build it, with short
/// timeouts and retries for tests.
pub fn http_source(url: String, mode: HttpMode, interval_ms: u64, max_frame_bytes: usize) -> Box<dyn FrameSource> {
    let config = SourceConfig::Http(HttpConfig {
        url,
        mode,
        interval_ms,
        timeout_ms: 2000,
        retry_max_ms: 100,
        username: None,
        password: None,
        max_frame_bytes,
    });
    config.build(&SourceContext { camera: "cam".into(), state_dir: "/nonexistent".into() }).expect("builds")
}

/// What to answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    /// Written one after another with `gap` between them; the connection is closed after the last.
    pub chunks: Vec<Vec<u8>>,
    pub gap: Duration,
    /// Send a Content-Length header (otherwise the body ends when the connection closes).
    pub content_length: bool,
}

impl Reply {
    pub fn ok(content_type: &str, body: Vec<u8>) -> Self {
        Self {
            status: 200,
            content_type: content_type.into(),
            chunks: vec![body],
            gap: Duration::ZERO,
            content_length: true,
        }
    }

    pub fn status(status: u16) -> Self {
        Self {
            status,
            content_type: "text/plain".into(),
            chunks: vec![b"nope".to_vec()],
            gap: Duration::ZERO,
            content_length: true,
        }
    }

    pub fn stream(content_type: &str, chunks: Vec<Vec<u8>>, gap: Duration) -> Self {
        Self { status: 200, content_type: content_type.into(), chunks, gap, content_length: false }
    }
}

/// Called with the request path and the 0-based number of the connection.
pub type Handler = Arc<dyn Fn(&str, u64) -> Reply + Send + Sync>;

pub struct Server {
    pub addr: SocketAddr,
    hits: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

impl Server {
    pub async fn start(handler: impl Fn(&str, u64) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), Arc::new(handler)).await
    }

    /// A server that answers every request with `reply`.
    pub async fn always(reply: Reply) -> Self {
        Self::start(move |_, _| reply.clone()).await
    }

    pub async fn start_on(addr: SocketAddr, handler: Handler) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind test server");
        let addr = listener.local_addr().expect("local addr");
        let hits = Arc::new(AtomicU64::new(0));
        let accept = tokio::spawn(accept_loop(listener, handler, hits.clone()));
        Self { addr, hits, accept }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Connections accepted so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// Closes the listener and every connection.
    pub async fn stop(self) {
        self.accept.abort();
        let _ = self.accept.await;
    }
}

async fn accept_loop(listener: TcpListener, handler: Handler, hits: Arc<AtomicU64>) {
    // Dropping the set (when this task is aborted) aborts every connection task.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((socket, _)) = accepted else { continue };
                let n = hits.fetch_add(1, Ordering::SeqCst);
                connections.spawn(serve(socket, handler.clone(), n));
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

async fn serve(mut socket: TcpStream, handler: Handler, n: u64) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(k) => head.extend_from_slice(&buf[..k]),
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let reply = handler(&path, n);
    let mut out =
        format!("HTTP/1.1 {} X\r\nContent-Type: {}\r\nConnection: close\r\n", reply.status, reply.content_type);
    if reply.content_length {
        let len: usize = reply.chunks.iter().map(Vec::len).sum();
        out.push_str(&format!("Content-Length: {len}\r\n"));
    }
    out.push_str("\r\n");
    if socket.write_all(out.as_bytes()).await.is_err() {
        return;
    }
    for (i, chunk) in reply.chunks.iter().enumerate() {
        if i > 0 && !reply.gap.is_zero() {
            tokio::time::sleep(reply.gap).await;
        }
        if socket.write_all(chunk).await.is_err() {
            return;
        }
    }
    let _ = socket.shutdown().await;
}
