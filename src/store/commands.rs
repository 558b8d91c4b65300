//! The fold thread's command channel, bounded by commands *and* by the observations they carry.
//!
//! A bound by count alone let memory run away whenever the fold thread waited for the sink: a
//! 150-minute soak's catch-up burst (8-10k transitions a second) met a busy sink, 1,544
//! commands of thousands of observations each queued up, and RSS rose to 4.35 GB. Here a
//! command first takes a permit per observation (one carrying more than the whole budget takes
//! all of it), and gives them back once the fold thread has folded it. The fold thread itself
//! waits while the file is too far behind (`writer.rs`, `MAX_UNFLUSHED`), so everything between
//! ingest and the file is bounded: ingest then waits, its queue fills, and past that it counts
//! lagged events and resyncs from Redis.

use super::writer::WriterCommand;
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// A command on its way to the fold thread, with the room it takes in the channel.
#[derive(Debug)]
pub(super) struct Queued {
    pub cmd: WriterCommand,
    /// Given back when dropped: after the fold thread has folded the command.
    pub room: Option<OwnedSemaphorePermit>,
}

/// The sending side (cheap to clone).
#[derive(Debug, Clone)]
pub(super) struct CommandSender {
    tx: mpsc::Sender<Queued>,
    room: Arc<Semaphore>,
    observations: u32,
}

/// The receiver is gone.
#[derive(Debug)]
pub(super) struct Gone;

/// A channel of at most `commands` commands carrying at most `observations` observations and
/// queue samples between them (both at least 1).
pub(super) fn channel(
    commands: usize,
    observations: usize,
) -> (CommandSender, mpsc::Receiver<Queued>) {
    let observations = u32::try_from(observations.max(1)).unwrap_or(u32::MAX);
    let (tx, rx) = mpsc::channel(commands.max(1));
    let room = Arc::new(Semaphore::new(observations as usize));
    (
        CommandSender {
            tx,
            room,
            observations,
        },
        rx,
    )
}

impl CommandSender {
    /// Queues `cmd`, waiting while the channel is full by either measure.
    pub async fn send(&self, cmd: WriterCommand) -> Result<(), Gone> {
        let weight = carried(&cmd);
        let room = if weight == 0 {
            None
        } else {
            let permits = u32::try_from(weight)
                .unwrap_or(u32::MAX)
                .min(self.observations);
            // The semaphore is never closed.
            Some(
                self.room
                    .clone()
                    .acquire_many_owned(permits)
                    .await
                    .map_err(|_| Gone)?,
            )
        };
        self.tx.send(Queued { cmd, room }).await.map_err(|_| Gone)
    }

    /// Commands waiting.
    pub fn commands_waiting(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Observations and samples waiting (as counted against the budget).
    pub fn observations_waiting(&self) -> usize {
        self.observations as usize - self.room.available_permits()
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The observations or samples a command carries (what its memory grows with).
pub(super) fn carried(cmd: &WriterCommand) -> usize {
    match cmd {
        WriterCommand::Observations(v) => v.len(),
        WriterCommand::QueueSamples(v) => v.len(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_adapters::QueueSample;
    use futures::FutureExt;

    fn samples(n: usize) -> WriterCommand {
        let sample = QueueSample {
            broker: broker_adapters::Broker::Celery,
            name: "q".into(),
            length: 1,
            delayed: 0,
            dead: 0,
            running: 0,
            sampled_at: chrono::Utc::now(),
            oldest_enqueued_at: None,
        };
        WriterCommand::QueueSamples(vec![sample; n])
    }

    #[tokio::test]
    async fn a_sender_waits_once_the_commands_waiting_carry_the_budget() {
        let (tx, mut rx) = channel(10_000, 1_000);
        for _ in 0..10 {
            tx.send(samples(100))
                .now_or_never()
                .expect("room for 1,000 observations")
                .expect("receiver alive");
        }
        assert_eq!(tx.observations_waiting(), 1_000);
        assert_eq!(tx.commands_waiting(), 10);
        // Room for 9,990 more commands, none for another observation.
        let mut blocked = Box::pin(tx.send(samples(1)));
        assert!((&mut blocked).now_or_never().is_none());
        // A barrier carries nothing and is not held back by the budget.
        let (flush, _answer) = tokio::sync::oneshot::channel();
        tx.send(WriterCommand::Flush(flush))
            .now_or_never()
            .expect("a flush takes no room")
            .expect("receiver alive");
        // Folding a command gives its room back.
        let folded = rx.recv().await.expect("queued");
        drop(folded);
        blocked.await.expect("room after a fold");
        assert_eq!(tx.observations_waiting(), 901);
    }

    #[tokio::test]
    async fn a_command_larger_than_the_budget_takes_all_of_it() {
        let (tx, mut rx) = channel(10, 100);
        tx.send(samples(5_000))
            .now_or_never()
            .expect("an empty channel takes any command")
            .expect("receiver alive");
        assert_eq!(tx.observations_waiting(), 100);
        let mut blocked = Box::pin(tx.send(samples(1)));
        assert!((&mut blocked).now_or_never().is_none());
        drop(rx.recv().await);
        blocked.await.expect("room after a fold");
    }
}
