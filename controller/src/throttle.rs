//! The node-wide bandwidth cap (`transfer.node_bwlimit`), enforced where data arrives.
//!
//! Every transfer stream takes its messages through one shared [`NodeThrottle`]: each
//! message books the next free stretch of time on a single clock (its size divided by the
//! rate) and is handed on when that stretch begins. A stream books its next message only
//! after the previous one was handed on, so streams take turns and share the cap evenly
//! however many start or finish, while HTTP/2 flow control slows each agent to its share.
//! (An agent-side limit set at the start of a pass cannot follow migrations that start or
//! end during the pass.)

use p2c_common::sync::Locked;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::time::Instant;

/// One shared byte-rate limit.
#[derive(Debug)]
pub struct NodeThrottle {
    /// Bytes per second; 0 for no limit.
    rate: u64,
    /// When the time booked so far ends.
    next: Mutex<Instant>,
}

impl NodeThrottle {
    pub fn new(rate: u64) -> Self {
        Self { rate, next: Mutex::new(Instant::now()) }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Waits until `bytes` may pass.
    pub async fn take(&self, bytes: u64) {
        if self.rate == 0 || bytes == 0 {
            return;
        }
        let start = {
            let mut next = self.next.locked();
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(bytes as f64 / self.rate as f64);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// `inbound` with every message paced by `throttle`, by the size `size` gives it (an error
/// passes at once).
pub fn paced<S, T, E>(
    inbound: S,
    throttle: Arc<NodeThrottle>,
    size: fn(&T) -> u64,
) -> impl Stream<Item = Result<T, E>> + Send + Unpin
where
    S: Stream<Item = Result<T, E>> + Send + Unpin + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    Box::pin(futures::stream::unfold((inbound, throttle), move |(mut inbound, throttle)| async move {
        let item = inbound.next().await?;
        if let Ok(m) = &item {
            throttle.take(size(m)).await;
        }
        Some((item, (inbound, throttle)))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(len: usize) -> Result<Vec<u8>, ()> {
        Ok(vec![7u8; len])
    }

    #[allow(clippy::ptr_arg)] // the stream's items are Vec<u8>
    fn len(m: &Vec<u8>) -> u64 {
        m.len() as u64
    }

    #[tokio::test]
    async fn unlimited_passes_at_once() {
        let t = Arc::new(NodeThrottle::new(0));
        let started = std::time::Instant::now();
        let n = paced(futures::stream::iter((0..100).map(|_| chunk(1 << 20))), t, len).count().await;
        assert_eq!(n, 100);
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    #[tokio::test]
    async fn streams_share_the_rate_evenly() {
        // 1 MiB/s shared by a stream that starts alone and one that joins later.
        let t = Arc::new(NodeThrottle::new(1 << 20));
        let started = std::time::Instant::now();
        let run = |t: Arc<NodeThrottle>, delay: u64| async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let mut s = paced(futures::stream::iter((0..20).map(|_| chunk(16 << 10))), t, len);
            let mut at = Vec::new();
            while s.next().await.is_some() {
                at.push(started.elapsed());
            }
            at
        };
        let (a, b) = tokio::join!(run(t.clone(), 0), run(t.clone(), 100));
        // 40 × 16 KiB = 640 KiB at 1 MiB/s: about 0.6 s for both together.
        let total = a.last().unwrap().max(b.last().unwrap());
        assert!(*total >= Duration::from_millis(550), "{total:?}");
        assert!(*total < Duration::from_millis(1500), "{total:?}");
        // Once both run they alternate: the early stream does not finish far ahead.
        let gap = a.last().unwrap().abs_diff(*b.last().unwrap());
        assert!(gap < Duration::from_millis(250), "a {:?} b {:?}", a.last(), b.last());
    }
}
