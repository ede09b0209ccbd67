//! The live tail: subscribers at scale beside a raw broadcast of the same frames.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::broadcast::Broadcast;
use crate::load::{Graphql, new_histogram, token};
use crate::report::Report;
use crate::scenarios::{Bench, SINGLE};
use crate::server::{Server, fresh_database};

impl Bench {
    /// WebSocket subscribers while events are logged at a steady rate: time from sending
    /// an event to each subscriber receiving it. The target point, 1,000 subscribers at
    /// 500 events/s, and two lighter ones to show where capacity lies.
    pub async fn subscribers(&self, report: &mut Report) -> anyhow::Result<()> {
        let loads = [
            // 1,000 subscribers over 10 tenants, half of them with an `actions` filter, and
            // 500 events/s spread over the tenants.
            (1000, 500, 10, "p99 < 50 ms, nothing dropped, RSS < 150 MB"),
            (1000, 500, 1, "p99 < 100 ms"),
            (1000, 50, 1, ""),
            (100, 500, 1, ""),
        ];
        for (subscribers, per_second, tenants, target) in loads {
            let load = Load {
                subscribers,
                per_second,
                tenants,
            };
            self.live_tail(load, target, report).await?;
        }
        Ok(())
    }

    /// The live tail under `load`, and the raw broadcast baseline under the same load.
    async fn live_tail(&self, load: Load, target: &str, report: &mut Report) -> anyhow::Result<()> {
        let db = fresh_database(&self.admin_url, "audit_bench_live")?;
        let server = Server::start(&self.bin, &db, 18186).await?;
        let url = format!("{}/graphql", server.url.replacen("http", "ws", 1));
        let clients: Vec<Graphql> = (0..load.tenants)
            .map(|t| Graphql::new(&server.url, token(&format!("tenant-{t}"))))
            .collect();
        let ours = self
            .fan_out(&url, load, Some(&server), move |tick| {
                let gql = clients[(tick % load.tenants) as usize].clone();
                tokio::spawn(async move {
                    let input = json!({ "actor": { "type": "SERVICE", "id": "bench" }, "action": "bench.tick", "metadata": { "sentAt": chrono::Utc::now().timestamp_micros() } });
                    let _ = gql.call(SINGLE, json!({ "input": input })).await;
                });
            })
            .await?;
        drop(server);
        let raw = Broadcast::start(load.tenants).await?;
        let frames = Arc::new(raw);
        let publisher = frames.clone();
        let baseline = self
            .fan_out(&frames.url, load, None, move |tick| {
                // The server's frame for this subscription, with the same content and size.
                let sent = chrono::Utc::now().timestamp_micros();
                publisher.publish(tick % load.tenants, format!(
                    r#"{{"type":"next","id":"1","payload":{{"data":{{"auditLogCreated":{{"metadata":{{"sentAt":{sent}}}}}}}}}}}"#
                ));
            })
            .await?;
        let rate = |f: &FanOut| f.delivered as f64 / self.duration.as_secs_f64();
        let p99 = ours.ms(99.0);
        let tenants = match load.tenants {
            1 => String::new(),
            n => format!(" over {n} tenants (half filtered)"),
        };
        report.add(
            &format!(
                "live tail: {} subscribers{tenants}, {} events/s",
                load.subscribers, load.per_second
            ),
            ours.describe(),
            format!("raw broadcast: {}", baseline.describe()),
            Some(rate(&ours) / rate(&baseline).max(1.0)),
            target,
            (!target.is_empty()).then(|| {
                let limit = if load.tenants > 1 { 50.0 } else { 100.0 };
                p99 < limit && ours.delivered == ours.expected && ours.peak_rss < 143.0
            }),
        );
        Ok(())
    }

    /// Connects `load.subscribers` graphql-transport-ws subscribers to `url` (subscriber `i`
    /// in tenant `i % tenants`, every second one with an `actions` filter), calls `publish`
    /// with the tick number at `per_second` for the run's duration (the event of tick `k`
    /// goes to tenant `k % tenants`), and measures send-to-delivery latency.
    async fn fan_out(
        &self,
        url: &str,
        load: Load,
        server: Option<&Server>,
        publish: impl Fn(u64),
    ) -> anyhow::Result<FanOut> {
        let latency = Arc::new(std::sync::Mutex::new(new_histogram()));
        let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut subscribers = Vec::new();
        for i in 0..load.subscribers {
            let auth = format!(
                "Bearer {}",
                token(&format!("tenant-{}", i as u64 % load.tenants))
            );
            let query = match (load.tenants > 1, i % 2) {
                (true, 1) => {
                    r#"subscription { auditLogCreated(filter: { actions: ["bench.*"] }) { metadata } }"#
                }
                _ => "subscription { auditLogCreated { metadata } }",
            };
            let socket = subscribe(url, &auth, query, server.is_some()).await?;
            let (latency, received) = (latency.clone(), received.clone());
            subscribers.push(tokio::spawn(receive(socket, latency, received)));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / load.per_second));
        let deadline = Instant::now() + self.duration;
        let mut sent = 0u64;
        let mut peak_rss = 0f64;
        while Instant::now() < deadline {
            ticks.tick().await;
            publish(sent);
            sent += 1;
            if let Some(server) = server
                && sent.is_multiple_of(250)
            {
                peak_rss = peak_rss.max(server.rss_mib());
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        for s in &subscribers {
            s.abort();
        }
        let histogram = latency
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| new_histogram());
        Ok(FanOut {
            histogram,
            expected: sent * load.subscribers as u64 / load.tenants,
            delivered: received.load(std::sync::atomic::Ordering::Relaxed),
            peak_rss,
        })
    }
}

/// The shape of a fan-out run.
#[derive(Clone, Copy)]
struct Load {
    subscribers: usize,
    per_second: u64,
    tenants: u64,
}

/// What the subscribers of one fan-out run saw.
struct FanOut {
    histogram: hdrhistogram::Histogram<u64>,
    expected: u64,
    delivered: u64,
    peak_rss: f64,
}

impl FanOut {
    fn ms(&self, percentile: f64) -> f64 {
        self.histogram.value_at_percentile(percentile) as f64 / 1000.0
    }

    fn describe(&self) -> String {
        let rss = match self.peak_rss {
            0.0 => String::new(),
            mib => format!("; server RSS {mib:.0} MiB"),
        };
        format!(
            "p50 {:.1} / p99 {:.1} ms send-to-delivery; {} of {} deliveries{rss}",
            self.ms(50.0),
            self.ms(99.0),
            self.delivered,
            self.expected
        )
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A graphql-transport-ws connection to `url` that subscribes with `query`; `ack` waits
/// for the server's `connection_ack` first (the raw broadcast sends none).
async fn subscribe(url: &str, auth: &str, query: &str, ack: bool) -> anyhow::Result<Socket> {
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    socket
        .send(Message::Text(
            json!({ "type": "connection_init", "payload": { "authorization": auth } })
                .to_string()
                .into(),
        ))
        .await?;
    if ack {
        socket.next().await;
    }
    socket
        .send(Message::Text(
            json!({ "id": "1", "type": "subscribe", "payload": { "query": query } })
                .to_string()
                .into(),
        ))
        .await?;
    Ok(socket)
}

/// Records each delivery's latency from the `sentAt` it carries, answering pings.
async fn receive(
    mut socket: Socket,
    latency: Arc<std::sync::Mutex<hdrhistogram::Histogram<u64>>>,
    received: Arc<std::sync::atomic::AtomicU64>,
) {
    while let Some(Ok(message)) = socket.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        // Cheaper than parsing JSON 500,000 times a second on the same two cores.
        let Some(sent) = text
            .split("\"sentAt\":")
            .nth(1)
            .and_then(|r| r.split(['}', ',']).next())
            .and_then(|n| n.parse::<i64>().ok())
        else {
            if text.contains("\"ping\"") {
                let _ = socket
                    .send(Message::Text(r#"{"type":"pong"}"#.into()))
                    .await;
            }
            continue;
        };
        let micros = (chrono::Utc::now().timestamp_micros() - sent).max(1) as u64;
        let _ = latency.lock().map(|mut h| h.record(micros));
        received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}
