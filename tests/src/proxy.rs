//! A TCP proxy on a loopback port in front of a real server, with one fault to inject: going deaf. While deaf, what
//! the client sends still reaches the server, but nothing the server answers reaches the client (the connection
//! stays open). Against an MQTT broker this makes a publisher's messages arrive and be delivered while their PUBACKs
//! are lost, which is how an agent ends up holding messages the fleet already has.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running proxy; it stops accepting when dropped (connections already open end when either side closes).
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    deaf: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let deaf = Arc::new(AtomicBool::new(false));
        let flag = deaf.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let flag = flag.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    let (mut client_rx, mut client_tx) = client.into_split();
                    let (mut server_rx, mut server_tx) = server.into_split();
                    // Each direction passes its end of stream on, so the server sees a killed client go at once.
                    let up = async {
                        let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
                        server_tx.shutdown().await
                    };
                    let down = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = server_rx.read(&mut buf).await?;
                            if n == 0 {
                                return client_tx.shutdown().await;
                            }
                            if !flag.load(Ordering::Acquire) {
                                client_tx.write_all(&buf[..n]).await?;
                            }
                        }
                    };
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Ok(Proxy { port, deaf, task })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// From now on, drop what the server sends to clients (`true`), or forward it again (`false`).
    pub fn set_deaf(&self, deaf: bool) {
        self.deaf.store(deaf, Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
