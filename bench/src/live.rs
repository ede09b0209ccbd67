//! The live tail: subscribers at scale beside a raw broadcast of the same frames.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
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
    /// 500 events/s, and two lighter ones to show where capacity lies; with `scale`, 10,000
    /// subscribers over 100 tenants on one instance and on two.
    pub async fn subscribers(&self, scale: bool, report: &mut Report) -> anyhow::Result<()> {
        let target = "p99 < 50 ms, nothing dropped, RSS < 150 MB";
        let mut loads = vec![
            // 1,000 subscribers over 10 tenants, half of them with an `actions` filter, and
            // 500 events/s spread over the tenants.
            Load::new(1000, 500, 10).target(50.0, 143.0, target),
            Load::new(1000, 500, 1).target(100.0, 143.0, "p99 < 100 ms"),
            Load::new(1000, 50, 1),
            Load::new(100, 500, 1),
        ];
        if scale {
            let target = "every delivery, p99 < 250 ms, RSS < 1 GiB";
            loads = vec![
                Load::new(10_000, 500, 100).target(250.0, 1024.0, target),
                Load {
                    instances: 2,
                    ..Load::new(10_000, 500, 100).target(250.0, 1024.0, target)
                },
            ];
        }
        for load in loads {
            self.live_tail(load, report).await?;
        }
        Ok(())
    }

    /// The live tail under `load`, and the raw broadcast baseline under the same load.
    async fn live_tail(&self, load: Load, report: &mut Report) -> anyhow::Result<()> {
        let db = fresh_database(&self.admin_url, "audit_bench_live")?;
        // Ports of their own for each number of instances: the 10,000 connections of one
        // run leave as many ports in TIME_WAIT towards the server they closed.
        let first_port = 18186 + 4 * (load.instances as u16 - 1);
        let mut servers = Vec::new();
        for i in 0..load.instances {
            servers.push(Server::start(&self.bin, &db, first_port + 2 * i as u16).await?);
        }
        let urls: Vec<String> = (servers.iter())
            .map(|s| format!("{}/graphql", s.url.replacen("http", "ws", 1)))
            .collect();
        // Per instance, a client per tenant.
        let clients: Vec<Vec<Graphql>> = (servers.iter())
            .map(|server| {
                (0..load.tenants)
                    .map(|t| Graphql::new(&server.url, token(&format!("tenant-{t}"))))
                    .collect()
            })
            .collect();
        let ours = self
            .fan_out(&urls, load, &servers, move |tick| {
                let instance = (tick / load.tenants) as usize % clients.len();
                let gql = clients[instance][(tick % load.tenants) as usize].clone();
                tokio::spawn(async move {
                    let input = json!({ "actor": { "type": "SERVICE", "id": "bench" }, "action": "bench.tick", "metadata": { "sentAt": chrono::Utc::now().timestamp_micros() } });
                    let _ = gql.call(SINGLE, json!({ "input": input })).await;
                });
            })
            .await?;
        drop(servers);
        // The raw broadcast serves from this process, which then holds both ends of every
        // connection: 10,000 subscribers would take 20,000 descriptors, this machine's
        // limit.
        let baseline = match load.subscribers <= 5000 {
            true => Some(self.raw_broadcast(load).await?),
            false => None,
        };
        let rate = |f: &FanOut| f.delivered as f64 / self.duration.as_secs_f64();
        let p99 = ours.ms(99.0);
        let tenants = match load.tenants {
            1 => String::new(),
            n => format!(" over {n} tenants (half filtered)"),
        };
        let instances = match load.instances {
            1 => String::new(),
            n => format!(", {n} instances sharing one PostgreSQL"),
        };
        report.add(
            &format!(
                "live tail: {} subscribers{tenants}, {} events/s{instances}",
                load.subscribers, load.per_second
            ),
            ours.describe(load.subscribers),
            match &baseline {
                Some(raw) => format!("raw broadcast: {}", raw.describe(load.subscribers)),
                None => "(no raw broadcast: one process cannot hold both ends)".to_owned(),
            },
            baseline.map(|raw| rate(&ours) / rate(&raw).max(1.0)),
            load.target,
            (!load.target.is_empty()).then_some(
                p99 < load.p99_ms
                    && ours.delivered == ours.expected
                    && ours.peak_rss < load.rss_mib,
            ),
        );
        Ok(())
    }

    /// The raw broadcast baseline under `load`.
    async fn raw_broadcast(&self, load: Load) -> anyhow::Result<FanOut> {
        let frames = Arc::new(Broadcast::start(load.tenants).await?);
        let publisher = frames.clone();
        self.fan_out(std::slice::from_ref(&frames.url), load, &[], move |tick| {
            // The server's frame for this subscription, with the same content and size.
            let sent = chrono::Utc::now().timestamp_micros();
            publisher.publish(tick % load.tenants, format!(
                r#"{{"type":"next","id":"1","payload":{{"data":{{"auditLogCreated":{{"metadata":{{"sentAt":{sent}}}}}}}}}}}"#
            ));
        })
        .await
    }

    /// Connects `load.subscribers` graphql-transport-ws subscribers to `urls` (subscriber
    /// `i` to `urls[i % urls.len()]`, in tenant `i % tenants`, every second one with an
    /// `actions` filter), calls `publish` with the tick number at `per_second` for the run's
    /// duration (the event of tick `k` goes to tenant `k % tenants`), and measures
    /// send-to-delivery latency, and the memory of `servers` (their resident sets added).
    async fn fan_out(
        &self,
        urls: &[String],
        load: Load,
        servers: &[Server],
        publish: impl Fn(u64),
    ) -> anyhow::Result<FanOut> {
        let rss = || servers.iter().map(Server::rss_mib).sum::<f64>();
        let idle_rss = rss();
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
            let url = &urls[i % urls.len()];
            let socket = (subscribe(url, &auth, query, !servers.is_empty()).await)
                .with_context(|| format!("subscriber {i} of {}", load.subscribers))?;
            let (latency, received) = (latency.clone(), received.clone());
            subscribers.push(tokio::spawn(receive(socket, latency, received)));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let connected_rss = rss();
        let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / load.per_second));
        let deadline = Instant::now() + self.duration;
        let mut sent = 0u64;
        let mut peak_rss = 0f64;
        while Instant::now() < deadline {
            ticks.tick().await;
            publish(sent);
            sent += 1;
            if !servers.is_empty() && sent.is_multiple_of(250) {
                peak_rss = peak_rss.max(rss());
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
            connections_mib: connected_rss - idle_rss,
        })
    }
}

/// The shape of a fan-out run, and its targets.
#[derive(Clone, Copy)]
struct Load {
    subscribers: usize,
    per_second: u64,
    tenants: u64,
    /// Servers sharing the database; subscribers and events are spread over them.
    instances: usize,
    p99_ms: f64,
    rss_mib: f64,
    target: &'static str,
}

impl Load {
    fn new(subscribers: usize, per_second: u64, tenants: u64) -> Load {
        Load {
            subscribers,
            per_second,
            tenants,
            instances: 1,
            p99_ms: 0.0,
            rss_mib: 0.0,
            target: "",
        }
    }

    fn target(self, p99_ms: f64, rss_mib: f64, target: &'static str) -> Load {
        Load {
            p99_ms,
            rss_mib,
            target,
            ..self
        }
    }
}

/// What the subscribers of one fan-out run saw.
struct FanOut {
    histogram: hdrhistogram::Histogram<u64>,
    expected: u64,
    delivered: u64,
    peak_rss: f64,
    /// What the servers' resident sets grew by once every subscriber was connected.
    connections_mib: f64,
}

impl FanOut {
    fn ms(&self, percentile: f64) -> f64 {
        self.histogram.value_at_percentile(percentile) as f64 / 1000.0
    }

    fn describe(&self, subscribers: usize) -> String {
        let rss = match self.peak_rss {
            0.0 => String::new(),
            mib => format!(
                "; server RSS {mib:.0} MiB, {:.1} KiB per subscriber connected",
                self.connections_mib * 1024.0 / subscribers as f64
            ),
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
