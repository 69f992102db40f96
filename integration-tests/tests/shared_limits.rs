//! The limits shared through a real Redis, driven in process (no gRPC, so the callers can outrun a fast window):
//! two limiters standing for two replicas share one application limit of 1,000 calls a second, which they lease
//! ten calls at a time; together they admit the figure, not twice it.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, clippy::print_stdout)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use integration_tests::RedisServer;
use keymesh_limits::{Limiter, LimitsConfig};

/// Calls each limiter admits for `application` over `length`, from four callers each.
async fn admitted(limiters: &[Arc<Limiter>], length: Duration) -> Vec<u64> {
    let until = Instant::now() + length;
    let counts: Vec<Arc<AtomicU64>> = limiters.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut callers = Vec::new();
    for (limiter, count) in limiters.iter().zip(&counts) {
        for _ in 0..4 {
            let (limiter, count) = (limiter.clone(), count.clone());
            callers.push(tokio::spawn(async move {
                while Instant::now() < until {
                    match limiter.admit_call("t_1", "app_fast").await {
                        Ok(()) => {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        // A refused caller waits a little, as a client told to retry would.
                        Err(refused) => tokio::time::sleep(refused.retry_after.min(Duration::from_millis(2))).await,
                    }
                }
            }));
        }
    }
    for caller in callers {
        caller.await.unwrap();
    }
    counts.iter().map(|c| c.load(Ordering::Relaxed)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_leasing_a_fast_window_admit_its_figure_together() {
    let redis = RedisServer::start();
    let mut config = LimitsConfig { application_per_second: Some(1000), ..LimitsConfig::default() };
    config.shared.redis_url = Some(redis.url.clone());
    let limiters: Vec<_> = (0..2).map(|_| Arc::new(Limiter::from_config(&config, "crypto-service").unwrap())).collect();
    assert!(limiters.iter().all(|l| l.is_shared()));
    admitted(&limiters, Duration::from_millis(1500)).await; // the burst a quiet limit starts with
    let length = Duration::from_secs(3);
    let counts = admitted(&limiters, length).await;
    let together = counts.iter().sum::<u64>() as f64 / length.as_secs_f64();
    println!(
        "a 1,000/s limit shared by two limiters leasing 10 calls at a time: {together:.0}/s ({counts:?} in {length:?})"
    );
    assert!(counts.iter().all(|c| *c > 0), "both admit: {counts:?}");
    // At most one lease (10 calls) per limiter above the figure at any moment, and a few calls of edge.
    assert!((900.0..=1050.0).contains(&together), "{together:.0}/s against a figure of 1,000/s");

    // Per process, the same figure is each limiter's own: about twice it together.
    let mut apart = config.clone();
    apart.shared.redis_url = None;
    let limiters: Vec<_> = (0..2).map(|_| Arc::new(Limiter::from_config(&apart, "crypto-service").unwrap())).collect();
    admitted(&limiters, Duration::from_millis(1500)).await;
    let counts = admitted(&limiters, length).await;
    let together = counts.iter().sum::<u64>() as f64 / length.as_secs_f64();
    println!("the same figure per process: {together:.0}/s together");
    assert!(together > 1800.0, "{together:.0}/s");
}
