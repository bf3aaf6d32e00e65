//! A per-target job runner: jobs of one target run one at a time, and a job triggered while
//! another runs waits in a single slot. A later trigger replaces the waiting job and hands it
//! back to the caller, so a burst of triggers during a long build leads to one more build,
//! not a queue.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::task::AbortOnDropHandle;

/// The outcome of a trigger.
#[derive(Debug, PartialEq, Eq)]
pub enum Triggered<J> {
    /// The runner was idle; the job starts now.
    Started,
    /// A job is running; this one waits for it.
    Queued,
    /// A job is running and one was already waiting: the new job took its place, and the
    /// waiting one is returned unrun.
    Replaced(J),
    /// A job is running and the waiting one was kept: the new job is returned unrun.
    Rejected(J),
}

struct Slot<J> {
    waiting: Option<J>,
    running: bool,
}

struct Shared<J> {
    slot: Mutex<Slot<J>>,
    wake: Notify,
}

/// Runs jobs of type `J` one at a time on its own task. Dropping the runner aborts the task
/// and with it the running job.
pub struct Runner<J> {
    shared: Arc<Shared<J>>,
    _task: AbortOnDropHandle<()>,
}

impl<J: Send + 'static> Runner<J> {
    /// Starts the runner task; `execute` runs each job to completion.
    pub fn spawn<F, Fut>(mut execute: F) -> Self
    where
        F: FnMut(J) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot {
                waiting: None,
                running: false,
            }),
            wake: Notify::new(),
        });
        let worker = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let job = worker.next_job().await;
                execute(job).await;
                worker.lock().running = false;
            }
        });
        Runner {
            shared,
            _task: AbortOnDropHandle::new(task),
        }
    }

    /// Hands a job to the runner; it replaces a waiting job.
    pub fn trigger(&self, job: J) -> Triggered<J> {
        self.trigger_with(job, |_| true)
    }

    /// Hands a job to the runner. When another job is waiting, `replaces` decides whether the
    /// new job takes its place.
    pub fn trigger_with(&self, job: J, replaces: impl FnOnce(&J) -> bool) -> Triggered<J> {
        let mut slot = self.shared.lock();
        if let Some(waiting) = &slot.waiting
            && !replaces(waiting)
        {
            return Triggered::Rejected(job);
        }
        let replaced = slot.waiting.replace(job);
        let running = slot.running;
        drop(slot);
        self.shared.wake.notify_one();
        match (replaced, running) {
            (Some(old), _) => Triggered::Replaced(old),
            (None, true) => Triggered::Queued,
            (None, false) => Triggered::Started,
        }
    }

    /// Returns whether a job is running.
    pub fn is_running(&self) -> bool {
        self.shared.lock().running
    }
}

impl<J> Shared<J> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot<J>> {
        self.slot
            .lock()
            .expect("the runner slot lock is never poisoned")
    }

    /// Waits for a job and marks it running under the same lock, so `trigger` never finds a
    /// taken job not running.
    async fn next_job(&self) -> J {
        loop {
            {
                let mut slot = self.lock();
                if let Some(job) = slot.waiting.take() {
                    slot.running = true;
                    return job;
                }
            }
            self.wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::sync::{Semaphore, mpsc};

    /// Starts a runner whose jobs wait for a permit, report their number when done, and
    /// track how many run at once.
    fn gated_runner() -> (
        Runner<u32>,
        Arc<Semaphore>,
        mpsc::UnboundedReceiver<u32>,
        Arc<AtomicUsize>,
    ) {
        let gate = Arc::new(Semaphore::new(0));
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let active = Arc::new(AtomicUsize::new(0));
        let max_active = Arc::new(AtomicUsize::new(0));
        let (job_gate, job_active, job_max) = (gate.clone(), active.clone(), max_active.clone());
        let runner = Runner::spawn(move |job: u32| {
            let (gate, active, max_active, done) = (
                job_gate.clone(),
                job_active.clone(),
                job_max.clone(),
                done_tx.clone(),
            );
            async move {
                let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                max_active.fetch_max(now, Ordering::SeqCst);
                gate.acquire().await.unwrap().forget();
                active.fetch_sub(1, Ordering::SeqCst);
                let _ = done.send(job);
            }
        });
        (runner, gate, done_rx, max_active)
    }

    async fn wait_running(runner: &Runner<u32>) {
        for _ in 0..200 {
            if runner.is_running() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the runner never started its job");
    }

    #[tokio::test]
    async fn triggers_during_run_coalesce() {
        let (runner, gate, mut done, max_active) = gated_runner();
        assert_eq!(runner.trigger(1), Triggered::Started);
        wait_running(&runner).await;
        assert_eq!(runner.trigger(2), Triggered::Queued);
        assert_eq!(runner.trigger(3), Triggered::Replaced(2));
        assert_eq!(runner.trigger_with(4, |_| false), Triggered::Rejected(4));
        gate.add_permits(10);
        assert_eq!(done.recv().await, Some(1));
        assert_eq!(done.recv().await, Some(3));
        assert_eq!(max_active.load(Ordering::SeqCst), 1);
        let extra = tokio::time::timeout(Duration::from_millis(100), done.recv()).await;
        assert!(extra.is_err(), "a replaced job ran");
    }

    #[tokio::test]
    async fn idle_runner_starts_each_trigger() {
        let (runner, gate, mut done, _) = gated_runner();
        gate.add_permits(10);
        assert_eq!(runner.trigger(1), Triggered::Started);
        assert_eq!(done.recv().await, Some(1));
        while runner.is_running() {
            tokio::task::yield_now().await;
        }
        assert_eq!(runner.trigger(2), Triggered::Started);
        assert_eq!(done.recv().await, Some(2));
    }
}
