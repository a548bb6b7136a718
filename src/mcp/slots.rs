//! How many cells one server runs at once: every `run` call holds a slot while its
//! cell lives; calls beyond the slots wait in arrival order, and calls beyond the
//! waiting bound are refused at once with an error saying so (never dropped).

use super::McpError;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Calls that may wait for a slot unless `--max-queued` says otherwise.
pub const DEFAULT_MAX_QUEUED: usize = 256;
/// Runs per CPU when the memory allows more: sandboxed commands often wait (on I/O,
/// on a sleep, on a service), so a few per CPU keep it busy without starving it.
pub const RUNS_PER_CPU: usize = 4;

/// The server's bound on concurrent cells, as asked on the command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Concurrency {
    /// Cells at once; `None`: [`default_max_runs`] of the profile's memory limit.
    pub max_runs: Option<usize>,
    /// Calls waiting for a slot; `None`: [`DEFAULT_MAX_QUEUED`].
    pub max_queued: Option<usize>,
}

/// The default bound: as many cells as the machine's memory holds with each at the
/// profile's per-run memory limit, at most [`RUNS_PER_CPU`] per CPU, at least one.
pub fn default_max_runs(per_run_memory: Option<u64>) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let by_cpu = cpus * RUNS_PER_CPU;
    let by_memory = match (per_run_memory, mem_total()) {
        (Some(per_run), Some(total)) if per_run > 0 => (total / per_run) as usize,
        _ => by_cpu,
    };
    by_cpu.min(by_memory).max(1)
}

/// The machine's memory (MemTotal of /proc/meminfo) in bytes.
fn mem_total() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[derive(Debug)]
pub(super) struct Slots {
    free: Arc<Semaphore>,
    max_runs: usize,
    max_queued: usize,
    waiting: AtomicUsize,
}

/// Counts a waiting call for as long as it waits (a cancelled wait included).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Slots {
    pub(super) fn new(max_runs: usize, max_queued: usize) -> Slots {
        Slots {
            free: Arc::new(Semaphore::new(max_runs)),
            max_runs,
            max_queued,
            waiting: AtomicUsize::new(0),
        }
    }

    /// A slot for one cell, held until the permit is dropped; waits for one when all
    /// are taken, refuses when the waiting calls are already at the bound.
    pub(super) async fn acquire(
        &self,
        cancel: &CancellationToken,
    ) -> Result<OwnedSemaphorePermit, McpError> {
        if let Ok(p) = self.free.clone().try_acquire_owned() {
            return Ok(p);
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_queued {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(McpError::Busy {
                running: self.max_runs,
                queued: self.max_queued,
            });
        }
        let _counted = Waiting(&self.waiting);
        tokio::select! {
            p = self.free.clone().acquire_owned() => {
                p.map_err(|_| McpError::Transport("the server is shutting down".into()))
            }
            () = cancel.cancelled() => Err(McpError::Cancelled),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_holds_every_cell_at_its_memory_limit() {
        let total = mem_total().unwrap();
        let cpus = std::thread::available_parallelism().unwrap().get();
        // A limit of a third of the machine: three cells.
        assert_eq!(
            default_max_runs(Some(total / 3)),
            3.min(cpus * RUNS_PER_CPU)
        );
        // A limit above the machine's memory still runs one at a time.
        assert_eq!(default_max_runs(Some(total * 2)), 1);
        // No memory limit: the CPUs alone.
        assert_eq!(default_max_runs(None), cpus * RUNS_PER_CPU);
    }

    #[tokio::test]
    async fn calls_beyond_the_waiting_bound_are_refused() {
        let slots = Arc::new(Slots::new(1, 1));
        let none = CancellationToken::new();
        let held = slots.acquire(&none).await.unwrap();
        let s = slots.clone();
        let waiter = tokio::spawn(async move { s.acquire(&CancellationToken::new()).await });
        while slots.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let refused = slots.acquire(&none).await.unwrap_err();
        assert!(matches!(refused, McpError::Busy { .. }), "{refused}");
        drop(held);
        assert!(waiter.await.unwrap().is_ok());
        assert_eq!(slots.waiting.load(Ordering::SeqCst), 0);
        // A cancelled wait leaves the count as it was.
        let held = slots.acquire(&none).await.unwrap();
        let gone = CancellationToken::new();
        gone.cancel();
        assert!(matches!(
            slots.acquire(&gone).await,
            Err(McpError::Cancelled)
        ));
        assert_eq!(slots.waiting.load(Ordering::SeqCst), 0);
        drop(held);
    }
}
