//! The mover: the task that moves the intake journal ([`super::intake`]) into the queue
//! whenever woken and checkpoints the queue after a move; asleep otherwise. It lives apart from
//! the intake so that the intake does not depend on [`Shared`], which holds it.

use std::sync::Arc;

use tokio::time::Instant;

use super::intake::CHECKPOINT_AFTER;
use super::shared::Shared;
use crate::queue::QueueError;
use crate::{error_chain, sleep_until};

/// Moves the journal into the queue whenever woken, and checkpoints
/// [`CHECKPOINT_AFTER`] after the first move since the last checkpoint; asleep otherwise.
pub async fn run(shared: Arc<Shared>) {
    let mut checkpoint_at: Option<Instant> = None;
    loop {
        tokio::select! {
            () = shared.intake.woken() => {
                if let Err(e) = shared.intake.move_now(&shared.queue, &shared.roots, &shared.wake).await {
                    failed(&shared, "move acknowledged requests from the intake journal into the queue", &e);
                }
            }
            () = sleep_until(checkpoint_at) => {
                checkpoint_at = None;
                if let Err(e) = shared.intake.checkpoint(&shared.queue).await {
                    failed(&shared, "flush the requests moved from the intake journal", &e);
                }
            }
            () = shared.stop.cancelled() => return,
        }
        if checkpoint_at.is_none() && shared.intake.has_unchecked() {
            checkpoint_at = Some(Instant::now() + CHECKPOINT_AFTER);
        }
    }
}

fn failed(shared: &Shared, what: &str, error: &QueueError) {
    // The pipeline is what reopens a failed queue; it wakes the mover once it did.
    shared.wake.notify_one();
    tracing::error!(
        "cannot {what} yet (they stay in the journal, and are moved once the queue works \
         again): {}",
        error_chain(error)
    );
}
