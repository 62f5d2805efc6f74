//! Latency of two or more HTTP targets measured in interleaved rounds, so that whatever the
//! machine does meanwhile (other processes, frequency changes, the scheduler) falls on every
//! target alike. Each round sends one request to each target, in a rotating order, one at a
//! time, each target over its own kept-alive HTTP/1.1 connection. The difference between two
//! targets' quantiles is then the cost of what one path adds over the other (the ingress hop
//! over the data plane, a Service call over a plain answer), with far less noise than two wrk
//! runs minutes apart.
//!
//! Usage: `paired_latency ROUNDS TARGET…`, where TARGET is `URL` or `URL|HOST` (the Host header).
//! Prints, per target, `p50 p90 p99 p99.9` in microseconds; every answer must be 2xx.
//!
//! `CONNECTIONS=K` (default 1) gives each target K connections, opened one after another before
//! the next target's, and round r uses connection r mod K. A node with K reactor threads hands
//! its connections to them in turn, so each target then has one connection on every reactor and
//! the targets share the same mix of threads (with one connection each, which reactor a target
//! lands on, and how long waking that thread takes, would differ between targets).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

struct Target {
    label: String,
    address: String,
    path: String,
    host: String,
    senders: Vec<Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>>,
    samples: Vec<Duration>,
}

impl Target {
    fn parse(spec: &str, connections: usize) -> anyhow::Result<Self> {
        let (url, host) = match spec.split_once('|') {
            Some((url, host)) => (url, Some(host)),
            None => (spec, None),
        };
        let uri: hyper::Uri = url.parse()?;
        let authority = uri.authority().ok_or_else(|| anyhow::anyhow!("{url}: no host"))?.to_string();
        Ok(Self {
            label: spec.to_owned(),
            host: host.map(str::to_owned).unwrap_or_else(|| authority.clone()),
            address: authority,
            path: uri.path_and_query().map(|p| p.to_string()).unwrap_or_else(|| "/".into()),
            senders: (0..connections).map(|_| None).collect(),
            samples: Vec::new(),
        })
    }

    /// Opens every connection that is not open.
    async fn connect(&mut self) -> anyhow::Result<()> {
        for slot in self.senders.iter_mut() {
            if slot.as_ref().is_none_or(|s| s.is_closed()) {
                let stream = tokio::net::TcpStream::connect(&self.address).await?;
                stream.set_nodelay(true)?;
                let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(connection);
                *slot = Some(sender);
            }
        }
        Ok(())
    }

    /// One request over connection `round` mod K.
    async fn once(&mut self, round: usize) -> anyhow::Result<Duration> {
        let count = self.senders.len();
        if self.senders[round % count].as_ref().is_none_or(|s| s.is_closed()) {
            self.connect().await?;
        }
        let sender = self.senders[round % count].as_mut().expect("connected");
        sender.ready().await?;
        let request = hyper::Request::get(&self.path).header(hyper::header::HOST, &self.host).body(Empty::new())?;
        let started = Instant::now();
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let elapsed = started.elapsed();
        anyhow::ensure!(status.is_success(), "{}: {status} {}", self.label, String::from_utf8_lossy(&body));
        Ok(elapsed)
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().ok_or_else(|| anyhow::anyhow!("usage: paired_latency ROUNDS TARGET…"))?.parse()?;
    let connections: usize = std::env::var("CONNECTIONS").ok().map(|k| k.parse()).transpose()?.unwrap_or(1).max(1);
    let mut targets = args.map(|a| Target::parse(&a, connections)).collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!targets.is_empty(), "usage: paired_latency ROUNDS TARGET…");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        for target in targets.iter_mut() {
            target.connect().await?;
        }
        // Warm-up: caches, the pods' pools.
        for round in 0..rounds.min(1_000) {
            for target in targets.iter_mut() {
                target.once(round).await?;
            }
        }
        let count = targets.len();
        for round in 0..rounds {
            for offset in 0..count {
                let target = &mut targets[(round + offset) % count];
                let elapsed = target.once(round).await?;
                target.samples.push(elapsed);
            }
        }
        anyhow::Ok(())
    })?;
    for target in &mut targets {
        target.samples.sort();
        let at = |q: f64| target.samples[((target.samples.len() as f64 * q) as usize).min(target.samples.len() - 1)].as_secs_f64() * 1e6;
        println!("{}: p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs", target.label, at(0.5), at(0.9), at(0.99), at(0.999));
    }
    Ok(())
}
