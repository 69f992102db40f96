//! What the benchmarks share: the load generator (calls in flight from tasks, every latency in an HDR histogram,
//! the servers' CPU and peak memory read from /proc over the measured window), the raw AES-256-GCM baseline,
//! and the endless source and counting sink the stream rows use.

#![allow(dead_code)]

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use keymesh_crypto::{SecretKey, SymmetricAlgorithm};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How one call ended, for the load generator.
pub enum Outcome {
    Done,
    /// Refused by load shedding (UNAVAILABLE, or RESOURCE_EXHAUSTED): counted apart, not in the latencies. The
    /// caller waits as long as the refusal asked (its RetryInfo), as a well-behaved client does, before calling
    /// again.
    Shed(Duration),
}

/// What one measured window gave.
pub struct Measured {
    pub calls_per_second: f64,
    pub shed_per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// The servers' CPU time per completed call, µs.
    pub cpu_per_call: f64,
    /// The servers' peak RSS (summed over their processes) during the window, MiB.
    pub peak_rss: f64,
    /// Peak RSS per process, MiB, in the order of the pids.
    pub peak_each: Vec<f64>,
}

/// A server's processes, watched from /proc.
#[derive(Clone)]
pub struct Processes {
    pub pids: Vec<u32>,
}

impl Processes {
    /// A mesh's four services.
    pub fn of_mesh(mesh: &integration_tests::Mesh) -> Processes {
        Processes { pids: mesh.children.iter().filter_map(|(_, child)| child.id()).collect() }
    }

    /// User + system CPU time of all the processes so far.
    pub fn cpu(&self) -> Duration {
        // utime and stime are fields 14 and 15 of /proc/<pid>/stat, in clock ticks (100 per second on Linux),
        // counted after the parenthesised command name, which may hold spaces.
        let ticks: u64 = self
            .pids
            .iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .filter_map(|stat| {
                let rest = stat.rsplit_once(')')?.1.to_owned();
                let fields: Vec<u64> =
                    rest.split_whitespace().skip(11).take(2).filter_map(|f| f.parse().ok()).collect();
                Some(fields.iter().sum::<u64>())
            })
            .sum();
        Duration::from_millis(ticks * 10)
    }

    /// Resident memory of each process, MiB.
    pub fn rss(&self) -> Vec<f64> {
        self.status_mib("VmRSS:")
    }

    /// The anonymous part of each process's resident memory (heap, stacks), MiB: RSS without the pages of the
    /// executable and libraries mapped from files, which are clean, shared by every process of the same binary
    /// and reclaimable.
    pub fn rss_anon(&self) -> Vec<f64> {
        self.status_mib("RssAnon:")
    }

    /// A `kB` field of each process's /proc status, MiB.
    fn status_mib(&self, field: &str) -> Vec<f64> {
        self.pids
            .iter()
            .map(|pid| {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(field))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                    .map_or(0.0, |kib| kib / 1024.0)
            })
            .collect()
    }

    /// Samples RSS every 50 ms until the returned flag is set; the peak per process.
    pub fn watch_rss(&self) -> (Arc<AtomicBool>, std::thread::JoinHandle<Vec<f64>>) {
        let stop = Arc::new(AtomicBool::new(false));
        let (processes, flag) = (self.clone(), stop.clone());
        let watcher = std::thread::spawn(move || {
            let mut peak = processes.rss();
            while !flag.load(Ordering::Relaxed) {
                for (p, now) in peak.iter_mut().zip(processes.rss()) {
                    *p = p.max(now);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        (stop, watcher)
    }
}

/// Runs `call` from `in_flight` tasks: a warm-up of a fifth of `duration`, then the measured window.
pub async fn load<F, Fut>(servers: &Processes, in_flight: usize, duration: Duration, call: F) -> Measured
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    let call = Arc::new(call);
    let run = |duration: Duration| {
        let call = call.clone();
        async move {
            let deadline = Instant::now() + duration;
            let shed = Arc::new(AtomicU64::new(0));
            let tasks: Vec<_> = (0..in_flight)
                .map(|_| {
                    let (call, shed) = (call.clone(), shed.clone());
                    tokio::spawn(async move {
                        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                        while Instant::now() < deadline {
                            let started = Instant::now();
                            match call().await {
                                Outcome::Done => {
                                    histogram.record(started.elapsed().as_micros().max(1) as u64).unwrap();
                                }
                                Outcome::Shed(wait) => {
                                    shed.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(wait).await;
                                }
                            }
                        }
                        histogram
                    })
                })
                .collect();
            let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            for task in tasks {
                total.add(task.await.unwrap()).unwrap();
            }
            (total, shed.load(Ordering::Relaxed))
        }
    };
    run(duration / 5).await;
    let (stop, watcher) = servers.watch_rss();
    let (cpu_before, started) = (servers.cpu(), Instant::now());
    let (histogram, shed) = run(duration).await;
    let (cpu, elapsed) = (servers.cpu().saturating_sub(cpu_before), started.elapsed().as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    let peak_each = watcher.join().unwrap();
    eprintln!(
        "  {:.0} calls/s, p99 {:?}, {:.1} µs CPU per call, {} calls shed",
        histogram.len() as f64 / elapsed,
        Duration::from_micros(histogram.value_at_quantile(0.99)),
        cpu.as_secs_f64() * 1e6 / histogram.len().max(1) as f64,
        shed
    );
    Measured {
        calls_per_second: histogram.len() as f64 / elapsed,
        shed_per_second: shed as f64 / elapsed,
        p50: Duration::from_micros(histogram.value_at_quantile(0.50)),
        p99: Duration::from_micros(histogram.value_at_quantile(0.99)),
        cpu_per_call: cpu.as_secs_f64() * 1e6 / histogram.len().max(1) as f64,
        peak_rss: peak_each.iter().sum(),
        peak_each,
    }
}

/// AES-256-GCM seals of `size` bytes per second on one core (keymesh's own primitive, the v3 body).
pub fn raw_seals_per_second(size: usize) -> f64 {
    let key = SecretKey::from_bytes(vec![7; 32]);
    let plaintext = vec![1u8; size];
    let nonce = [0u8; 12];
    let seal = || SymmetricAlgorithm::Aes256Gcm.seal(&key, &nonce, b"header", &plaintext).unwrap();
    for _ in 0..1000 {
        seal();
    }
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        for _ in 0..100 {
            std::hint::black_box(seal());
        }
        n += 100;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// `remaining` bytes of a repeating block.
pub struct Source {
    pub block: Vec<u8>,
    pub remaining: u64,
}

impl AsyncRead for Source {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let n = buf.remaining().min(self.block.len()).min(self.remaining as usize);
        buf.put_slice(&self.block[..n]);
        self.remaining -= n as u64;
        Poll::Ready(Ok(()))
    }
}

/// A writer that keeps the first `keep` bytes and counts the rest.
pub struct Sink {
    pub kept: Vec<u8>,
    pub keep: usize,
    pub written: u64,
}

impl AsyncWrite for Sink {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let room = self.keep.saturating_sub(self.kept.len()).min(buf.len());
        self.kept.extend_from_slice(&buf[..room]);
        self.written += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A duration in milliseconds, for the tables.
pub fn millis(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}
