//! The raw fan-out baseline: a minimal WebSocket server that sends every published frame,
//! serialized once, to every connection of its group (the tenants of the live tail), and
//! does nothing else. The live tail is reported as a ratio to it (same machine, same
//! clients, frames of the same size).

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

pub struct Broadcast {
    pub url: String,
    groups: Vec<broadcast::Sender<Utf8Bytes>>,
    server: tokio::task::JoinHandle<()>,
}

impl Broadcast {
    /// Listens on a free port of 127.0.0.1; the `i`-th connection is in group `i % groups`.
    pub async fn start(groups: u64) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address: SocketAddr = listener.local_addr()?;
        // As deep as the server's default subscriber buffer.
        let groups: Vec<_> = (0..groups.max(1))
            .map(|_| broadcast::channel(1000).0)
            .collect();
        let senders = groups.clone();
        let server = tokio::spawn(async move {
            let mut accepted = 0;
            while let Ok((stream, _)) = listener.accept().await {
                let mut frames = senders[accepted % senders.len()].subscribe();
                accepted += 1;
                tokio::spawn(async move {
                    // Agrees to graphql-transport-ws, as the clients ask.
                    #[expect(
                        clippy::result_large_err,
                        reason = "the callback type is tungstenite's"
                    )]
                    let agree = |_: &Request, mut response: Response| {
                        let protocol = HeaderValue::from_static("graphql-transport-ws");
                        response
                            .headers_mut()
                            .insert("Sec-WebSocket-Protocol", protocol);
                        Ok(response)
                    };
                    let Ok(socket) = tokio_tungstenite::accept_hdr_async(stream, agree).await
                    else {
                        return;
                    };
                    let (mut sink, mut source) = socket.split();
                    // Whatever the client sends (init, subscribe, pongs) is read and dropped.
                    tokio::spawn(async move { while source.next().await.is_some() {} });
                    while let Ok(frame) = frames.recv().await {
                        if sink.send(Message::Text(frame)).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(Broadcast {
            url: format!("ws://{address}"),
            groups,
            server,
        })
    }

    /// Sends `frame` to every connection of `group`.
    pub fn publish(&self, group: u64, frame: String) {
        let sender = &self.groups[group as usize % self.groups.len()];
        let _ = sender.send(frame.into());
    }
}

impl Drop for Broadcast {
    fn drop(&mut self) {
        self.server.abort();
    }
}
