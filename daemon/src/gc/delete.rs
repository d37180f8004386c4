//! Carrying out a plan, under the protocol's rules G5 and G6 ([`crate::coexist`]): every delete
//! follows a look (HEAD) at what it deletes, and is sent only within [`DELETE_WINDOW`] of the
//! moment that look began.
//!
//! - A narinfo goes only if it is unchanged since the listing and none of the narinfos this run
//!   deleted that reference it is back; one rewritten since, or written back, means an
//!   uploader builds upon it, and the plan is made again.
//! - Between two layers of narinfos, and before the rest, the run waits until a refresh that
//!   found a narinfo just deleted has written it back (G7), so that the look above sees it.
//! - Any other object goes only if it is unchanged since the listing (an uploader that stores
//!   the same NAR again rewrites it) and none of the narinfos it belongs to is back (a refresh
//!   writes one back).
//! - Within each look that allows narinfo deletes, `pins/` is listed again: a pin the plan
//!   did not take as a root means the plan is made again ([`crate::pins`], P1).
//! - A look that took too long is made again for half as many keys; when one key's look and
//!   delete do not fit in the window, the run stops.

use std::collections::{HashMap, HashSet};

use tokio::time::Instant;

use futures::stream::{self, StreamExt};

use super::plan::READ_CONCURRENCY;
use super::{gc_read, GcError, Plan, DELETE_WINDOW};
use crate::coexist::{Check, WRITE_BACK_SETTLE};
use crate::sink::inventory::{Head, Object};
use crate::sink::Sink;

/// Objects looked at and deleted together.
const BATCH: usize = 256;

pub(super) enum Outcome {
    Done,
    /// A narinfo about to go was rewritten: the plan is made again.
    Rewritten,
}

/// Deletes what `plan` says, narinfos layer by layer, then the rest; objects found in use
/// again are taken out of the plan.
pub(super) async fn carry_out(
    sink: &Sink,
    plan: &mut Plan,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Outcome, GcError> {
    let mut deleter = Deleter {
        sink,
        deleted: 0,
        pinned: &plan.pinned,
        pin_added: false,
    };
    let mut start = 0;
    // When the last narinfo delete was answered.
    let mut deleted_at: Option<Instant> = None;
    let layers = plan.narinfo_layers.len();
    for (number, &size) in plan.narinfo_layers.iter().enumerate() {
        let layer = &plan.delete[start..start + size];
        start += size;
        let_write_backs_land(deleted_at).await;
        progress(&format!(
            "deleting narinfos: layer {} of {layers}",
            number + 1
        ));
        let kept = deleter
            .delete(layer, &plan.referred_by, Batch::AllOrNone)
            .await?;
        if !kept.is_empty() || deleter.pin_added {
            return Ok(Outcome::Rewritten);
        }
        deleted_at = Some(Instant::now());
    }
    let rest = plan.delete[start..].to_vec();
    if rest.is_empty() {
        return Ok(Outcome::Done);
    }
    let_write_backs_land(deleted_at).await;
    progress("deleting NARs, listings, logs and realisations");
    let kept = deleter
        .delete(&rest, &plan.named_by, Batch::EachOnItsOwn)
        .await?;
    for object in kept {
        plan.keep_after_all(&object);
    }
    Ok(Outcome::Done)
}

/// Rule G7: waits until [`WRITE_BACK_SETTLE`] after the narinfo deletes answered at
/// `deleted_at`, so that a refresh that found one of those narinfos just before its delete has
/// written it back before anything that relies on its absence is looked at.
async fn let_write_backs_land(deleted_at: Option<Instant>) {
    if let Some(at) = deleted_at {
        tokio::time::sleep_until(at + WRITE_BACK_SETTLE).await;
    }
}

/// What an object of a batch found in use means for the others.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Batch {
    /// Nothing of the batch is deleted, and nothing after it.
    AllOrNone,
    /// The others are deleted.
    EachOnItsOwn,
}

struct Deleter<'a> {
    sink: &'a Sink,
    /// Objects deleted so far in this run.
    deleted: u64,
    /// The hash parts of the paths the plan took as pinned roots.
    pinned: &'a HashSet<String>,
    /// A listing of `pins/` found one that the plan did not take as a root.
    pin_added: bool,
}

impl Deleter<'_> {
    /// Deletes `objects` in batches, each within the window of its look; returns those found
    /// in use again (kept).
    async fn delete(
        &mut self,
        objects: &[Object],
        named_by: &HashMap<String, Vec<String>>,
        mode: Batch,
    ) -> Result<Vec<Object>, GcError> {
        let mut kept = Vec::new();
        let mut remaining = objects;
        let mut batch_size = BATCH;
        while !remaining.is_empty() {
            let batch = &remaining[..batch_size.min(remaining.len())];
            let check = Check::begin();
            let (in_use, unplanned_pin) = if mode == Batch::AllOrNone {
                let (sink, pinned) = (self.sink, self.pinned);
                let (in_use, unplanned) =
                    tokio::join!(self.in_use(batch, named_by), unplanned_pin(sink, pinned));
                (
                    in_use?,
                    unplanned.map_err(|e| super::plan::pin_error(e, self.deleted))?,
                )
            } else {
                (self.in_use(batch, named_by).await?, false)
            };
            if unplanned_pin {
                self.pin_added = true;
                return Ok(Vec::new());
            }
            if mode == Batch::AllOrNone && !in_use.is_empty() {
                return Ok(batch
                    .iter()
                    .filter(|o| in_use.contains(&o.key))
                    .cloned()
                    .collect());
            }
            let Some(_) = check.time_left() else {
                if batch.len() == 1 {
                    return Err(GcError::TooSlow {
                        key: batch[0].key.clone(),
                        took: check.elapsed(),
                        deleted: self.deleted,
                    });
                }
                // A slow link: look again at fewer at a time.
                batch_size = batch.len() / 2;
                continue;
            };
            let keys: Vec<String> = batch
                .iter()
                .filter(|o| !in_use.contains(&o.key))
                .map(|o| o.key.clone())
                .collect();
            if let Err(error) = self.sink.delete_within(&keys, &check).await {
                return Err(GcError::Delete {
                    error,
                    deleted: self.deleted,
                });
            }
            self.deleted += keys.len() as u64;
            kept.extend(batch.iter().filter(|o| in_use.contains(&o.key)).cloned());
            if check.elapsed() >= DELETE_WINDOW / 2 {
                batch_size = (batch.len() / 2).max(1);
            }
            remaining = &remaining[batch.len()..];
        }
        Ok(kept)
    }

    /// The keys of `batch` in use again: changed since the listing, or named by a narinfo
    /// this run deleted that is back.
    async fn in_use(
        &mut self,
        batch: &[Object],
        named_by: &HashMap<String, Vec<String>>,
    ) -> Result<HashSet<String>, GcError> {
        let names: HashSet<&str> = batch
            .iter()
            .flat_map(|o| named_by.get(&o.key).into_iter().flatten())
            .map(String::as_str)
            .collect();
        let keys: Vec<&str> = batch.iter().map(|o| o.key.as_str()).chain(names).collect();
        let deleted = self.deleted;
        let sink = self.sink;
        let looks: Vec<(&str, Result<Option<Head>, GcError>)> = stream::iter(keys)
            .map(|key| async move { (key, gc_read(sink, key, sink.head(key).await, deleted)) })
            .buffer_unordered(READ_CONCURRENCY)
            .collect()
            .await;
        let mut heads = HashMap::new();
        for (key, head) in looks {
            heads.insert(key, head?);
        }
        let back = |name: &String| heads.get(name.as_str()).is_some_and(Option::is_some);
        Ok(batch
            .iter()
            .filter(|o| {
                let changed = heads
                    .get(o.key.as_str())
                    .copied()
                    .flatten()
                    .is_some_and(|head| changed(o, &head));
                changed || named_by.get(&o.key).into_iter().flatten().any(back)
            })
            .map(|o| o.key.clone())
            .collect())
    }
}

/// Whether a pin now names a path the plan did not take as a pinned root (a new pin, or one
/// moved to another path): read whole, since a pin rewritten within the same second with a
/// body of the same length looks unchanged in a listing.
async fn unplanned_pin(
    sink: &Sink,
    pinned: &HashSet<String>,
) -> Result<bool, crate::pins::PinError> {
    let listed = crate::pins::list_objects(sink).await?;
    if listed.is_empty() {
        return Ok(false);
    }
    let pins = crate::pins::read(sink, &listed).await?;
    Ok(pins
        .iter()
        .any(|pin| !pinned.contains(pin.path.hash_part())))
}

/// Whether `head` shows `object` written again since it was listed. S3 lists modification
/// times in milliseconds but HEAD gives them in whole seconds. The ETag would not do: the same
/// bytes written again keep it.
fn changed(object: &Object, head: &Head) -> bool {
    crate::clock::whole_seconds(head.modified) != crate::clock::whole_seconds(object.modified)
        || head.size != object.size
}
