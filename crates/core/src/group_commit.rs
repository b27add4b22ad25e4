//! Group commit: hot writes that would each be a transaction of their own (the gateway accepting
//! a message or recording its delivery under the ledger's write lock, an agency storing a
//! delivered message) are written by one task that takes every request waiting at that moment
//! and writes them in one transaction: one lock, one commit (one `fsync`) for the lot. A request
//! is answered only after its batch committed, so an acknowledgement still means "durably
//! stored".
//!
//! Nothing waits to fill a batch: while one batch commits, the next one gathers, so a lone
//! request costs what it did before and a crowd shares the cost of each commit.
//!
//! The gateway's writers run on a thread of their own ([`WriterThread`]) with their own connections to
//! the store. A batch is a sequence of round trips to the store made while holding the ledger's
//! lock; on the shared runtime, under load, each round trip's answer waited behind every other
//! task that was ready (and for the runtime to look at its sockets at all): measured, a batch of
//! 64 sends took 100-230 ms. On its own thread the writer is woken as soon as the store answers.

use std::{
    future::Future,
    sync::{Arc, Weak},
};

use tokio::{
    runtime::Handle,
    sync::{mpsc, oneshot},
};

/// A thread running a single-threaded runtime for the writer tasks, until it is dropped.
pub struct WriterThread {
    handle: Handle,
    _stop: oneshot::Sender<()>,
}

impl WriterThread {
    pub fn start(name: &str) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                // Until the owner drops `stop`; then the writer tasks end with the runtime.
                let _ = runtime.block_on(stopped);
            })?;
        Ok(Self {
            handle,
            _stop: stop,
        })
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

/// The queue of one writer task.
#[derive(Debug)]
pub struct Batcher<T> {
    queue: mpsc::UnboundedSender<T>,
}

impl<T: Send + 'static> Batcher<T> {
    /// Starts the writer task: it takes at most `max_batch` waiting requests at a time and hands
    /// them to `write`, until `owner` is gone. The queue needs no bound of its own: every request
    /// in it is a call (or a delivery) the server's concurrency limit already admitted.
    pub fn spawn<S, F, Fut>(runtime: &Handle, owner: Weak<S>, max_batch: usize, write: F) -> Self
    where
        S: Send + Sync + 'static,
        F: Fn(Arc<S>, Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (queue, mut waiting) = mpsc::unbounded_channel();
        runtime.spawn(async move {
            let mut batch = Vec::with_capacity(max_batch);
            while waiting.recv_many(&mut batch, max_batch).await > 0 {
                let Some(owner) = owner.upgrade() else {
                    // New requests are refused before the ones taken are dropped unanswered.
                    waiting.close();
                    break;
                };
                // Each batch in a task of its own: a panic (a bug in a check) drops that batch's
                // requests, whose callers are told it was not stored, and the writer goes on
                // with the next batch instead of leaving every later request unanswered.
                let written = tokio::spawn(write(owner, std::mem::take(&mut batch))).await;
                if written.is_err() {
                    tracing::error!("a batch writer panicked; its requests were not stored");
                }
            }
        });
        Self { queue }
    }

    /// Queues `item`; gives it back when the writer task is gone.
    pub fn submit(&self, item: T) -> Result<(), T> {
        self.queue.send(item).map_err(|e| e.0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[tokio::test]
    async fn requests_waiting_together_are_written_together_and_each_is_answered() {
        let batches = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let owner = Arc::new(());
        // The writer is held at its first batch until every other request is queued.
        let (release, held) = oneshot::channel::<()>();
        let held = Arc::new(tokio::sync::Mutex::new(Some(held)));
        let seen = batches.clone();
        let batcher = Batcher::spawn(
            &Handle::current(),
            Arc::downgrade(&owner),
            8,
            move |_owner: Arc<()>, batch: Vec<(u32, oneshot::Sender<u32>)>| {
                let seen = seen.clone();
                let held = held.clone();
                async move {
                    if let Some(held) = held.lock().await.take() {
                        held.await.unwrap();
                    }
                    seen.lock()
                        .unwrap()
                        .push(batch.iter().map(|(n, _)| *n).collect());
                    for (n, reply) in batch {
                        reply.send(n * 10).unwrap();
                    }
                }
            },
        );
        let mut answers = Vec::new();
        for n in 0..20 {
            let (reply, answer) = oneshot::channel();
            batcher.submit((n, reply)).unwrap();
            answers.push(answer);
            if n == 0 {
                // Let the writer take the first request alone, then hold it there.
                tokio::task::yield_now().await;
            }
        }
        release.send(()).unwrap();
        for (n, answer) in (0..20).zip(answers) {
            assert_eq!(answer.await.unwrap(), n * 10);
        }
        let batches = batches.lock().unwrap().clone();
        assert_eq!(
            batches.concat(),
            (0..20).collect::<Vec<_>>(),
            "in order, each once"
        );
        assert!(batches.iter().all(|b| b.len() <= 8), "{batches:?}");
        assert_eq!(batches[1].len(), 8, "a crowd fills a batch: {batches:?}");
    }

    #[tokio::test]
    async fn a_batch_that_panics_loses_only_its_own_requests() {
        let owner = Arc::new(());
        let batcher = Batcher::spawn(
            &Handle::current(),
            Arc::downgrade(&owner),
            1,
            |_owner: Arc<()>, batch: Vec<(u32, oneshot::Sender<u32>)>| async move {
                for (n, reply) in batch {
                    assert_ne!(n, 13, "a bug met by one request");
                    reply.send(n).unwrap();
                }
            },
        );
        let mut answers = Vec::new();
        for n in [12, 13, 14] {
            let (reply, answer) = oneshot::channel();
            batcher.submit((n, reply)).unwrap();
            answers.push(answer);
        }
        let answers: Vec<_> = futures_answers(answers).await;
        assert_eq!(answers, vec![Some(12), None, Some(14)]);
    }

    async fn futures_answers(answers: Vec<oneshot::Receiver<u32>>) -> Vec<Option<u32>> {
        let mut out = Vec::new();
        for answer in answers {
            out.push(answer.await.ok());
        }
        out
    }

    #[tokio::test]
    async fn a_writer_whose_owner_is_gone_stops_and_refuses_more() {
        let owner = Arc::new(());
        let writer = WriterThread::start("test-writer").unwrap();
        let batcher = Batcher::spawn(
            writer.handle(),
            Arc::downgrade(&owner),
            4,
            |_owner: Arc<()>, _batch: Vec<oneshot::Sender<()>>| async {},
        );
        drop(owner);
        let (reply, answer) = oneshot::channel();
        // The writer sees the owner gone at its next batch and drops the queue.
        let _ = batcher.submit(reply);
        assert!(answer.await.is_err(), "never answered as if written");
        let (reply, _answer) = oneshot::channel();
        assert!(batcher.submit(reply).is_err());
    }
}
