//! HTTP load generator for `prepare` and `ingest` (issue 3's load benchmark).
//!
//! Drives a running `memoryrouter` over real loopback HTTP/1.1 from many concurrent keep-alive
//! connections: seeds one vault with N memories through `/v1/memory/ingest`, then measures
//! `/v1/memory/prepare` and `/v1/memory/ingest` latency (p50/p99) and throughput.
//! `benches/scripts/load.sh` starts a release server on a temp data dir and runs this.
//!
//! ```text
//! loadgen --base-url http://127.0.0.1:PORT --admin-key mk_… [--memories 100000]
//!         [--connections 1,8,32] [--seconds 10]
//! ```
//!
//! Each phase runs once per connection count, so the latency at low concurrency (the
//! service time) and under saturation (queueing on the cores) come from the same vault.
//!
//! Right after seeding, while the vault still seals and compacts what it was sent, `prepare`
//! is measured too (windows of each connection count in turn until the vault settles): that
//! is what a user who imports a history and starts chatting meets. The settle time is counted
//! from the end of the import; with `--server-pid` the server's CPU time for the import and
//! for settling, and its resident memory once settled, are read from `/proc`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use benches::words::{Rng, sentence};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1;
use tokio::net::TcpStream;

/// Messages per ingest request while seeding (`--seed-batch`): an import's batch size, well
/// inside the server's default per-request message limit (1000).
const SEED_BATCH_MESSAGES: usize = 500;
/// Concurrent seeding connections; the WAL's group commit shares fsyncs between them.
const SEED_CONNECTIONS: usize = 8;

struct Args {
    base_url: String,
    admin_key: String,
    memories: usize,
    connections: Vec<usize>,
    seconds: u64,
    /// A Memory Key whose vault is already seeded: skips minting and seeding, so a vault
    /// that took minutes to settle can be measured again (e.g. against another build).
    key: Option<String>,
    /// Which endpoints to drive: `prepare`, `ingest` or both (comma-separated).
    phases: Vec<String>,
    /// Messages per seeding request.
    seed_batch: usize,
    /// The server's process id, for its CPU time and resident memory (`/proc/PID/…`).
    server_pid: Option<u32>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        base_url: String::new(),
        admin_key: String::new(),
        memories: 100_000,
        connections: vec![1, 8, 32],
        seconds: 10,
        key: None,
        phases: vec!["prepare".into(), "ingest".into()],
        seed_batch: SEED_BATCH_MESSAGES,
        server_pid: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--base-url" => args.base_url = value,
            "--admin-key" => args.admin_key = value,
            "--memories" => args.memories = value.parse()?,
            "--connections" => {
                args.connections = value
                    .split(',')
                    .map(|n| n.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--seconds" => args.seconds = value.parse()?,
            "--key" => args.key = Some(value),
            "--phases" => args.phases = value.split(',').map(|p| p.trim().to_string()).collect(),
            "--seed-batch" => args.seed_batch = value.parse::<usize>()?.max(1),
            "--server-pid" => args.server_pid = Some(value.parse()?),
            other => bail!("unknown flag {other}"),
        }
    }
    if let Some(p) = args
        .phases
        .iter()
        .find(|p| !matches!(p.as_str(), "prepare" | "ingest"))
    {
        bail!("--phases: unknown phase `{p}` (prepare, ingest)");
    }
    if args.base_url.is_empty() || args.admin_key.is_empty() {
        bail!(
            "usage: loadgen --base-url URL --admin-key KEY [--memories N] [--connections N] [--seconds N] [--key MEMORY_KEY] [--phases prepare,ingest] [--seed-batch N] [--server-pid PID]"
        );
    }
    Ok(args)
}

/// One persistent HTTP/1.1 connection.
struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    async fn open(base_url: &str) -> Result<Conn> {
        let host = base_url
            .strip_prefix("http://")
            .context("base url must be http://")?
            .trim_end_matches('/')
            .to_string();
        let stream = TcpStream::connect(&host).await?;
        stream.set_nodelay(true)?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (sender, conn) = http1::handshake(io).await?;
        tokio::spawn(conn);
        Ok(Conn { sender, host })
    }

    async fn get(&mut self, path: &str, key: &str) -> Result<(u16, Bytes)> {
        self.sender.ready().await?;
        let req = Request::get(path)
            .header("host", &self.host)
            .header("authorization", format!("Bearer {key}"))
            .body(Full::new(Bytes::new()))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    async fn post(
        &mut self,
        path: &str,
        key: &str,
        body: &serde_json::Value,
    ) -> Result<(u16, Bytes)> {
        self.sender.ready().await?;
        let req = Request::post(path)
            .header("host", &self.host)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn report(name: &str, mut lat: Vec<Duration>, elapsed: Duration) {
    lat.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<14} requests={:<7} throughput={:>8.0} req/s  p50={:.3} ms  p99={:.3} ms  max={:.3} ms",
        lat.len(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default()),
    );
}

async fn mint_key(base_url: &str, admin_key: &str) -> Result<String> {
    let mut conn = Conn::open(base_url).await?;
    let (status, body) = conn
        .post(
            "/v1/keys",
            admin_key,
            &serde_json::json!({"name": "loadgen"}),
        )
        .await?;
    if status != 201 {
        bail!(
            "minting a key failed: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    v["key"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no key in {v}"))
}

async fn seed(args: &Args, key: &str) -> Result<()> {
    let started = Instant::now();
    let per_batch = args.seed_batch;
    let batches = args.memories.div_ceil(per_batch);
    let mut tasks = Vec::new();
    for worker in 0..SEED_CONNECTIONS {
        let base = args.base_url.clone();
        let key = key.to_string();
        let total = args.memories;
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&base).await?;
            let mut rng = Rng::new(0x5eed_0000 + worker as u64);
            for batch in (worker..batches).step_by(SEED_CONNECTIONS) {
                let first = batch * per_batch;
                let last = (first + per_batch).min(total);
                let messages: Vec<_> = (first..last)
                    .map(|i| {
                        let role = if i % 2 == 0 { "user" } else { "assistant" };
                        serde_json::json!({"role": role, "content": format!("{} (#{i})", sentence(&mut rng, 14))})
                    })
                    .collect();
                let body = serde_json::json!({"session_id": format!("s{}", first / 50 % 200), "messages": messages});
                let (status, resp) = conn.post("/v1/memory/ingest", &key, &body).await?;
                if status != 202 {
                    bail!("seed ingest failed: {status} {}", String::from_utf8_lossy(&resp));
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "seeded {} memories in {:.1} s ({:.0} memories/s over HTTP)",
        args.memories,
        secs,
        args.memories as f64 / secs
    );
    Ok(())
}

/// The vault has settled: the memtable is below the seal threshold and no seal or compaction
/// is queued or running.
async fn settled(conn: &mut Conn, key: &str) -> Result<Option<u64>> {
    const MEMTABLE_SETTLED_MAX: u64 = 4096;
    let (status, body) = conn.get("/v1/memory/stats", key).await?;
    if status != 200 {
        bail!("stats failed: {status} {}", String::from_utf8_lossy(&body));
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let memtable = v["memtable"].as_u64().unwrap_or(u64::MAX);
    let compacting = v["compacting"].as_bool().unwrap_or(true);
    Ok((memtable <= MEMTABLE_SETTLED_MAX && !compacting)
        .then(|| v["segments"].as_u64().unwrap_or(0)))
}

/// Waits until background sealing and compaction have caught up with the seeding, so the
/// measured vault is the settled one a user would have; gives up after `SETTLE_SECS_MAX`.
async fn settle(base_url: &str, key: &str) -> Result<()> {
    const SETTLE_SECS_MAX: u64 = 600;
    let started = Instant::now();
    let mut conn = Conn::open(base_url).await?;
    while started.elapsed() < Duration::from_secs(SETTLE_SECS_MAX) {
        if let Some(segments) = settled(&mut conn, key).await? {
            println!(
                "settled after {:.1} s more: {segments} segments",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("not settled after {SETTLE_SECS_MAX} s; measuring anyway");
    Ok(())
}

/// `prepare` while the just-imported vault seals and compacts: windows of each connection
/// count in turn until the vault settles. Prints each count's latencies, the settle time
/// (from `import_end`) and, given the server's pid, its CPU time and resident memory.
async fn during_settle(
    args: &Args,
    key: &str,
    import_end: Instant,
    cpu_at_import_end: Option<Duration>,
) -> Result<()> {
    const WINDOW: Duration = Duration::from_secs(2);
    const SETTLE_SECS_MAX: u64 = 1800;
    let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); args.connections.len()];
    let mut busy: Vec<Duration> = vec![Duration::ZERO; args.connections.len()];
    let mut conn = Conn::open(&args.base_url).await?;
    let segments = 'settle: loop {
        for (i, &connections) in args.connections.iter().enumerate() {
            if let Some(segments) = settled(&mut conn, key).await? {
                break 'settle segments;
            }
            if import_end.elapsed() > Duration::from_secs(SETTLE_SECS_MAX) {
                bail!("not settled {SETTLE_SECS_MAX} s after the import");
            }
            let (l, elapsed) = drive_for(
                &args.base_url,
                connections,
                key,
                WINDOW,
                "/v1/memory/prepare",
                200,
                prepare_body,
            )
            .await?;
            lat[i].extend(l);
            busy[i] += elapsed;
        }
    };
    let settle = import_end.elapsed();
    println!(
        "settled {:.1} s after the import: {segments} segments",
        settle.as_secs_f64()
    );
    if let (Some(pid), Some(before)) = (args.server_pid, cpu_at_import_end) {
        let cpu = proc_cpu(pid).unwrap_or_default().saturating_sub(before);
        println!(
            "server CPU while settling: {:.1} s (includes serving the prepare load above)",
            cpu.as_secs_f64()
        );
    }
    for (i, &connections) in args.connections.iter().enumerate() {
        report(
            &format!("prepare c={connections} while compacting"),
            std::mem::take(&mut lat[i]),
            busy[i],
        );
    }
    if let Some(pid) = args.server_pid {
        print_rss(pid, "settled");
    }
    Ok(())
}

/// CPU time (user + system) of process `pid`.
fn proc_cpu(pid: u32) -> Option<Duration> {
    benches::cpu_time(&format!("/proc/{pid}/stat"))
}

/// Prints `VmRSS` and `RssAnon` of process `pid`.
fn print_rss(pid: u32, when: &str) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    println!(
        "server resident memory ({when}): {:.0} MiB ({:.0} MiB anonymous)",
        field("VmRSS:"),
        field("RssAnon:")
    );
}

/// Runs `connections` workers for `seconds`, each sending requests made by `make` in a loop;
/// returns every latency and the wall time.
async fn drive(
    args: &Args,
    connections: usize,
    key: &str,
    path: &'static str,
    expect: u16,
    make: fn(&mut Rng, u64) -> serde_json::Value,
) -> Result<(Vec<Duration>, Duration)> {
    let length = Duration::from_secs(args.seconds);
    drive_for(&args.base_url, connections, key, length, path, expect, make).await
}

/// [`drive`] for `length`.
async fn drive_for(
    base_url: &str,
    connections: usize,
    key: &str,
    length: Duration,
    path: &'static str,
    expect: u16,
    make: fn(&mut Rng, u64) -> serde_json::Value,
) -> Result<(Vec<Duration>, Duration)> {
    let deadline = Instant::now() + length;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..connections {
        let base = base_url.to_string();
        let key = key.to_string();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&base).await?;
            // Seeded by phase size too, so one phase never resends (and dedupes) another's texts.
            let mut rng = Rng::new(0xbeef + ((connections as u64) << 20) + worker as u64);
            let mut lat = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let body = make(&mut rng, (worker as u64) << 32 | n);
                n += 1;
                let t = Instant::now();
                let (status, resp) = conn.post(path, &key, &body).await?;
                lat.push(t.elapsed());
                if status != expect {
                    bail!("{path}: {status} {}", String::from_utf8_lossy(&resp));
                }
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all, started.elapsed()))
}

fn prepare_body(rng: &mut Rng, _n: u64) -> serde_json::Value {
    serde_json::json!({"messages": [{"role": "user", "content": sentence(rng, 10)}]})
}

fn ingest_body(rng: &mut Rng, n: u64) -> serde_json::Value {
    serde_json::json!({
        "session_id": "load",
        "messages": [
            {"role": "user", "content": format!("{} (load {n})", sentence(rng, 12))},
            {"role": "assistant", "content": format!("{} (answer {n})", sentence(rng, 16))}
        ]
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let key = match &args.key {
        Some(key) => key.clone(),
        None => {
            let key = mint_key(&args.base_url, &args.admin_key).await?;
            let cpu_before = args.server_pid.and_then(proc_cpu);
            seed(&args, &key).await?;
            let import_end = Instant::now();
            let cpu_at_import_end = args.server_pid.and_then(proc_cpu);
            if let (Some(before), Some(after)) = (cpu_before, cpu_at_import_end) {
                println!(
                    "server CPU during the import: {:.1} s",
                    after.saturating_sub(before).as_secs_f64()
                );
            }
            println!("seeded vault's key: {key}");
            if args.phases.iter().any(|p| p == "prepare") {
                during_settle(&args, &key, import_end, cpu_at_import_end).await?;
            }
            key
        }
    };
    settle(&args.base_url, &key).await?;
    if let (Some(_), Some(pid)) = (&args.key, args.server_pid) {
        print_rss(pid, "reopened, before the load");
    }
    println!(
        "load: {} s per phase, vault of {} memories",
        args.seconds, args.memories
    );
    let prepare = args.phases.iter().any(|p| p == "prepare");
    let ingest = args.phases.iter().any(|p| p == "ingest");
    for &connections in args.connections.iter().filter(|_| prepare) {
        let (lat, elapsed) = drive(
            &args,
            connections,
            &key,
            "/v1/memory/prepare",
            200,
            prepare_body,
        )
        .await?;
        report(&format!("prepare c={connections}"), lat, elapsed);
    }
    for &connections in args.connections.iter().filter(|_| ingest) {
        let (lat, elapsed) = drive(
            &args,
            connections,
            &key,
            "/v1/memory/ingest",
            202,
            ingest_body,
        )
        .await?;
        report(&format!("ingest c={connections}"), lat, elapsed);
    }
    if let Some(pid) = args.server_pid {
        print_rss(pid, "after the load");
    }
    Ok(())
}
