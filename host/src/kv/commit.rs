//! Group commit: many waiters, one flush.
//!
//! Written here rather than taken from a crate because it is ten lines of
//! protocol on the hot path and no crate offers "durable-after" tickets over
//! an arbitrary flush function.
//!
//! Protocol: `started` counts flushes begun. A waiter reads `started` (= s)
//! *after* its writes; flush number s may have begun before those writes, but
//! flush s+1 begins after the read, so it covers them. The waiter therefore
//! waits until `completed >= s + 1`. The flusher thread runs one flush for all
//! waiters queued while the previous flush ran.
//!
//! It also knows whether any write is not yet durable ([`WriteTracker`]):
//! writers count themselves before writing, and each flush records how many
//! writes it covers, so a reader can tell whether what it read might still be
//! lost (and wait for the next flush before answering).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use anyhow::{Context, anyhow};
use tokio::sync::watch;

type FlushFn = Box<dyn Fn() -> anyhow::Result<()> + Send + Sync>;

/// Called after each flush with how long it took and whether it succeeded.
pub type FlushObserver = Box<dyn Fn(std::time::Duration, bool) + Send + Sync>;

/// A group-commit flusher over any flush function, on its own OS thread
/// (flushes block on fsync; they must not hold a tokio worker).
pub struct GroupCommit {
    shared: Arc<Shared>,
    completed: watch::Receiver<Completed>,
    thread: Option<thread::JoinHandle<()>>,
}

#[derive(Clone, Default)]
struct Completed {
    /// Number of the last finished flush.
    number: u64,
    /// Number of the last flush that succeeded.
    last_ok: u64,
    /// The last failure, if the last flush failed.
    error: Option<Arc<str>>,
}

struct Shared {
    started: AtomicU64,
    /// Writes begun (counted before the write is applied).
    issued: AtomicU64,
    /// Writes covered by the last successful flush.
    covered: AtomicU64,
    wanted: Mutex<bool>,
    wake: Condvar,
    stop: std::sync::atomic::AtomicBool,
}

impl GroupCommit {
    /// Starts the flusher thread.
    pub fn start(name: &str, flush: FlushFn) -> anyhow::Result<GroupCommit> {
        Self::start_observed(name, flush, Box::new(|_, _| {}))
    }

    /// Starts the flusher thread; `observe` hears of every flush.
    pub fn start_observed(
        name: &str,
        flush: FlushFn,
        observe: FlushObserver,
    ) -> anyhow::Result<GroupCommit> {
        let shared = Arc::new(Shared {
            started: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            covered: AtomicU64::new(0),
            wanted: Mutex::new(false),
            wake: Condvar::new(),
            stop: Default::default(),
        });
        let (tx, rx) = watch::channel(Completed::default());
        let s = shared.clone();
        let thread = thread::Builder::new()
            .name(format!("atoll-{name}-flush"))
            .spawn(move || flusher(s, flush, observe, tx))
            .context("starting flush thread")?;
        Ok(GroupCommit {
            shared,
            completed: rx,
            thread: Some(thread),
        })
    }

    /// Resolves once a flush that began after this call has completed.
    pub async fn sync(&self) -> anyhow::Result<()> {
        let target = self.shared.started.load(Ordering::SeqCst) + 1;
        {
            let mut wanted = self.shared.wanted.lock().unwrap_or_else(|e| e.into_inner());
            *wanted = true;
        }
        self.shared.wake.notify_one();
        let mut rx = self.completed.clone();
        let done = rx
            .wait_for(|c| c.number >= target)
            .await
            .map_err(|_| anyhow!("flush thread stopped"))?;
        // A later flush's failure says nothing about ours: look at the last success.
        if done.last_ok >= target {
            return Ok(());
        }
        Err(anyhow!(
            "flush failed: {}",
            done.error.as_deref().unwrap_or("unknown error")
        ))
    }

    /// A handle writers use to count themselves.
    pub fn tracker(&self) -> WriteTracker {
        WriteTracker(self.shared.clone())
    }

    /// Whether some write is not yet covered by a successful flush.
    pub fn has_pending(&self) -> bool {
        self.shared.covered.load(Ordering::SeqCst) < self.shared.issued.load(Ordering::SeqCst)
    }
}

/// Counts writes so [`GroupCommit::has_pending`] can tell whether everything
/// readable is durable. Call [`WriteTracker::note_write`] *before* applying a
/// write, so anyone who can read it also sees it counted.
#[derive(Clone)]
pub struct WriteTracker(Arc<Shared>);

impl WriteTracker {
    /// Counts one write about to be applied.
    pub fn note_write(&self) {
        self.0.issued.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        {
            // Under the lock the flusher waits with, so the wake-up cannot be lost.
            let _wanted = self.shared.wanted.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.stop.store(true, Ordering::SeqCst);
        }
        self.shared.wake.notify_one();
        // Join, so whatever the flush function holds (a database handle and
        // its file lock) is released when the owner is dropped.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn flusher(
    shared: Arc<Shared>,
    flush: FlushFn,
    observe: FlushObserver,
    done: watch::Sender<Completed>,
) {
    loop {
        {
            let mut wanted = shared.wanted.lock().unwrap_or_else(|e| e.into_inner());
            while !*wanted && !shared.stop.load(Ordering::SeqCst) {
                wanted = shared.wake.wait(wanted).unwrap_or_else(|e| e.into_inner());
            }
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            *wanted = false;
        }
        let number = shared.started.fetch_add(1, Ordering::SeqCst) + 1;
        let covers = shared.issued.load(Ordering::SeqCst);
        let began = std::time::Instant::now();
        let result = flush();
        observe(began.elapsed(), result.is_ok());
        let error = result.err().map(|e| {
            tracing::error!(error = %format!("{e:#}"), "kv flush failed");
            Arc::from(format!("{e:#}"))
        });
        if error.is_none() {
            shared.covered.fetch_max(covers, Ordering::SeqCst);
        }
        done.send_modify(|c| {
            c.number = number;
            if error.is_none() {
                c.last_ok = number;
            }
            c.error = error;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_waiters_share_few_flushes() {
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let gc = Arc::new(
            GroupCommit::start(
                "test",
                Box::new(move || {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    c.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }),
            )
            .unwrap(),
        );
        let waiters: Vec<_> = (0..64)
            .map(|_| {
                let gc = gc.clone();
                tokio::spawn(async move { gc.sync().await })
            })
            .collect();
        for w in waiters {
            w.await.unwrap().unwrap();
        }
        let flushes = count.load(Ordering::SeqCst);
        assert!(
            (1..64).contains(&flushes),
            "{flushes} flushes for 64 waiters"
        );
    }

    #[tokio::test]
    async fn pending_writes_are_known_until_flushed() {
        let gc = GroupCommit::start("test", Box::new(|| Ok(()))).unwrap();
        assert!(!gc.has_pending());
        gc.tracker().note_write();
        assert!(gc.has_pending());
        gc.sync().await.unwrap();
        assert!(!gc.has_pending());
    }

    #[tokio::test]
    async fn flush_errors_reach_waiters() {
        let gc = GroupCommit::start("test", Box::new(|| Err(anyhow!("disk on fire")))).unwrap();
        let e = gc.sync().await.unwrap_err();
        assert!(e.to_string().contains("disk on fire"), "{e}");
    }
}
