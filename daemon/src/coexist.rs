//! The GC–uploader protocol: how `narpush gc` and any number of uploaders (daemons,
//! `narpush upload`, `narpush exec`) share one cache without a client ever seeing a narinfo
//! whose NAR or references are missing (the closure invariant). Its rules, constants and the
//! checks that enforce them are stated here, once; `gc` and the engine follow them.
//!
//! # The names
//!
//! | name | value | what |
//! |---|---|---|
//! | `K` | [`KNOWN_FOR`], 10 min | how long an uploader trusts a lookup without asking again |
//! | `R` | `refresh_after` (config, 1 d) | an uploader rewrites a narinfo it builds upon once it is older than this |
//! | `G` | `--grace` (≥ [`MIN_GRACE`], 15 min) | GC deletes nothing younger |
//! | `O` | `--older-than` | narinfos younger than this are roots |
//! | `W` | [`DELETE_WINDOW`], 2 s | GC sends a delete only within this of the check that allowed it; an uploader sends a refresh only within this of the lookup that found the narinfo |
//! | `S` | [`REFRESH_SETTLE`] = [`STORED_SETTLE`] = [`WRITE_BACK_SETTLE`], `2·W + 1 s` | an uploader looks again this long after a refresh, or after finding a kept NAR under its FileHash; GC waits this long after a layer of narinfo deletes, a repair this long after its forced narinfos before it lists what to delete |
//! | `C` | [`CLOCK_SLACK`], 1 min | how far the clocks of the machines and the store may disagree |
//!
//! # What an uploader may trust, and for how long
//!
//! - **U1, lookups.** A narinfo found in the cache, signed by one of its own keys, whose NAR a
//!   HEAD found too, is trusted for at most `K` from the lookup (the engine's known-present
//!   set); after that the path is looked up again. A narinfo found younger than `S + C` (another
//!   uploader just wrote it, perhaps a refresh after GC's look at it) is trusted only if a
//!   second look, `S` after the first, finds it and its NAR: a delete allowed before that
//!   write has landed by then. An upstream cache's answer is trusted as the
//!   `upstream` module says.
//! - **U2, refresh.** A narinfo found older than `R` is written again, unchanged, so that GC
//!   sees the path in use; `S` after that write the narinfo and its NAR are looked for again,
//!   and the path is uploaded again if either is gone. The write is sent only within `W` of
//!   the start of the lookup that found the narinfo, and given only the time left (as G6); a
//!   lookup that took longer is made again (after [`REFRESH_ROUNDS`], the path is uploaded
//!   again). A refresh may land just after GC deleted the narinfo (its lookup read it just
//!   before): that write-back is bounded so that GC can wait for it (G7).
//! - **U3, reuse.** A NAR stored by an earlier attempt is reused only while younger than
//!   `G / 2`: older, no narinfo protects it from GC.
//! - **U4, order.** A narinfo is written only after its NAR and its references' narinfos; a
//!   realisation (either form: `realisations/`, or Nix 2.35's `build-trace-v2/` entry, written
//!   right after it) only after its output's narinfo and the realisations it depends on.
//! - **U5, NARs of their own.** Every NAR an upload writes gets a key no other upload uses
//!   ([`crate::layout::nar_key_unique`]), so no collection has ever listed it, and its
//!   LastModified is its own; no NAR object is ever written twice. (Nix, and narpush before
//!   2026-12, name a NAR of one PUT by its FileHash: an object other paths and writers may
//!   share, which a collection may be deleting while it is written again: U6.)
//! - **U6, shared NARs settle.** A narinfo naming a NAR under its FileHash that the uploader
//!   reuses (kept from an earlier attempt by narpush before 2026-12) is published only after
//!   a HEAD, sent at least `S` after the NAR was found, found it; if it is gone, the NAR is
//!   stored again under a key of its own, which needs no look (U5).
//! - **U7, throttled narinfos.** A narinfo write the store throttled (R2: a second write of the
//!   key within a second) counts as written when a GET finds another writer's narinfo of the
//!   same path, `NarHash` and `NarSize`, signed by one of its own keys, and a HEAD then finds
//!   its NAR ([`crate::sink::contended`]): the other writer followed U4–U6 for it, so the
//!   key holds what the uploader's own write would have left, written afresh as far as GC can
//!   tell (G2, G5).
//!
//! # What GC checks, and when
//!
//! - **G1, policy.** `G ≥ MIN_GRACE > K + C`, and `O ≥ R + G + C` ([`Bounds::check_policy`]):
//!   whatever an uploader trusts (U1) or has just refreshed (U2) is a root.
//! - **G2, roots.** The narinfos younger than `O` when listed, the closures of `--keep`, and
//!   every narinfo written after the listing.
//! - **G3, grace.** Nothing younger than `G` is deleted; so a NAR whose narinfo is not
//!   published yet stays.
//! - **G4, order.** narinfos first, each only after every narinfo that references it; then NARs,
//!   listings, logs and realisations.
//! - **G5, a look before each delete.** A narinfo is deleted only if a HEAD shows it unchanged
//!   since the listing, and HEADs show every narinfo this run deleted that references it
//!   still absent (a rewritten or written-back one is a root: the plan is made again). Every other object
//!   is deleted only if a HEAD shows it unchanged since the listing (an uploader wrote it again:
//!   kept) and every narinfo it belongs to (that names it; for a realisation or build trace
//!   entry, its output's) is
//!   still absent (a refresh wrote one back: kept).
//! - **G6, the bound.** A delete request is sent only while less than `W` has passed since its
//!   check began ([`Check`]), and it is given only the time that is left, retries included
//!   ([`Check::time_left`]); one that does not answer by then ends the run. A check that took
//!   too long is made again for half as many keys; when a single key's check and delete do not
//!   fit in `W`, the run stops. A run that stops leaves the invariant whole (G4): what is left
//!   goes in the next run.
//! - **G7, write-backs land first.** After a layer of narinfo deletes, the looks of G5 that
//!   rely on their absence (the next layer's, then those of NARs, listings, logs and
//!   realisations) begin only [`WRITE_BACK_SETTLE`] after the last of those deletes was
//!   answered.
//! - **G8, pins.** Pins are roots; `pins/` is listed again at the start of every check that
//!   allows narinfo deletes, and a pin the plan did not take as a root makes it anew (the
//!   pin's side, P1, is in [`crate::pins`]).
//!
//! # What `narpush verify --repair` may do ([`crate::repair`])
//!
//! - **R1, repair.** Its uploads are an uploader's (U1–U6), forced for the paths it repairs:
//!   their lookups answer absent, so a narinfo whose NAR is damaged is rewritten only after a
//!   fresh NAR. With `--delete-broken` it deletes only narinfos whose closure is not whole and
//!   cannot be made whole from its local store, together with every narinfo referring to
//!   them (the set is closed under referrers; what a pin or a narinfo younger than `G` needs is
//!   taken out with its whole closure, which keeps it closed), then NARs and listings no
//!   narinfo names; all under G3–G8 exactly as GC (`G ≥ MIN_GRACE`, layers referrers first, a
//!   look before each delete within `W`, write-backs let land, pins listed again).
//!
//! Why it is enough: a whole narinfo refers only to whole narinfos, so none is in the set; a
//! narinfo an uploader writes or refreshes after the listing is seen changed by the look
//! before its delete (G5) and kept, with everything after it in that run.
//!
//! # Why `S = 2·W + 1 s`
//!
//! GC's HEAD of a narinfo can come just before an uploader's refresh of it (U2), and its delete
//! up to `W` later, after the refresh. A delete request sent just before its deadline may reach
//! the store a little later still; the uploader's second look comes `S` after its write, more
//! than `W` after the latest moment a delete may be sent, plus `W + 1 s` for it to land. A
//! delete that lands earlier is seen by that look, and the path is uploaded again.
//!
//! # Why G7 and the bound of U2 are needed, and enough
//!
//! A refresh whose lookup read a narinfo just before GC's delete of it landed writes it back
//! after the delete: GC would otherwise go on as if it were gone, and delete the narinfos it
//! references, then its NAR, under it (the refresh's own look, `S` later, finds the narinfo
//! there and cannot tell). The lookup began before the delete landed, so before GC had the
//! answer; the write is sent within `W` of that beginning and lands within `W + 1 s` of being
//! sent: before `S` after GC's answer. GC's looks made after that (G7) see the narinfo back
//! (G5), and the plan is made again, with the narinfo a root. Ordering the refreshes alone
//! (references first) would not do: GC's delete of a reference, allowed before its refresh,
//! may still land after the dependent is written back.
//!
//! # Why U6 is enough
//!
//! GC deletes a NAR only with a delete allowed by a HEAD of it (G5), and every delete lands
//! within `S` of that HEAD's start (see above). A HEAD that began after the uploader's PUT
//! landed sees the object written since the listing (kept), or a listing made after the PUT
//! sees it younger than `G` (G3): only a HEAD begun before the PUT can allow its deletion, and
//! that delete lands before `PUT + S`. The uploader's look comes after that (its own clock
//! measures `S` from the PUT's answer, later than the PUT landed; no wall clocks are compared),
//! so it sees any such delete, and the NAR is stored again before the narinfo names it. The
//! same holds for each new PUT, so the narinfo never names a NAR that a delete allowed before
//! its publication can still remove. A look made before the PUT would not do: GC also sends
//! the delete when its HEAD finds the key absent, and a delete retried after a lost answer
//! takes effect twice. A NAR reused from an earlier attempt was PUT before the uploader found
//! it, so a look `S` after finding it comes later still; one found gone is written under a key
//! of its own (U5), which no HEAD can have preceded.
//!
//! # What a 403 means, to whom ([`Reader`])
//!
//! S3 answers 403 both for a key that is missing (to credentials without `s3:ListBucket`) and
//! for one the credentials may not read. Who asks decides:
//!
//! - **GC: stop.** A narinfo GC cannot read may be a live root; deleting on a guess breaks its
//!   closure. Any refused read stops the run before anything more is deleted, naming the
//!   permission.
//! - **Uploader lookups: absent.** The path is uploaded again, which is harmless (the same
//!   bytes, a few requests) and needs no read permission; credentials that cannot write fail
//!   on the PUT with their reason.
//! - **Upstream caches: not served.** The path is uploaded to the target.
//! - **`narpush verify`: stop.** It reports on what it read; a refusal ends the run with exit
//!   status 2 ("could not read"), never a guess either way.
//!
//! # What this does not cover
//!
//! The window of G4 between a narinfo's delete and that of a realisation or build trace entry
//! naming it as its output (at least [`WRITE_BACK_SETTLE`]): a client that reads the
//! realisation then finds no narinfo, does not substitute the output and builds it instead.
//! Deleting realisations first would need them looked at again after the narinfos (a refresh
//! may write one back).
//! A narinfo that an uploader writes afresh (not a refresh: one it did not trust) between the
//! look of G5 and the delete that look allowed is deleted, and a referrer it publishes within
//! `K` then names a missing narinfo until the path is uploaded again. For `narpush verify
//! --repair` such a narinfo was broken (its NAR missing or damaged, or signed by another key),
//! and is written afresh only by an uploader that holds the path, racing the repair within `W`.
//! An upload that takes longer than `G − K` from the lookup of its references to the write of
//! its narinfo (choose `G` above the longest upload). A delete request that reaches the store
//! more than `W + 1 s` after it was sent. An uploader whose credentials may not read: its
//! look of U6 is refused, and the narinfo is published without it (a warning says so).

use std::time::Duration;

use tokio::time::Instant;

/// How long an uploader trusts a path it found in the cache without asking again (`K`).
pub const KNOWN_FOR: Duration = Duration::from_secs(600);
/// The longest the clocks of writers, GC and the store may disagree (`C`): NTP keeps them far
/// closer.
pub const CLOCK_SLACK: Duration = Duration::from_secs(60);
/// The shortest `--grace` accepted (`G`): longer than an uploader trusts a lookup, plus the
/// clock slack, plus margin.
pub const MIN_GRACE: Duration = Duration::from_secs(15 * 60);
/// The bound between the start of GC's check of an object and the moment its delete request
/// is given up (`W`).
pub const DELETE_WINDOW: Duration = Duration::from_secs(2);
/// How long an uploader waits after a refresh before it looks for the narinfo and its NAR
/// again (`S`; see the module doc).
pub const REFRESH_SETTLE: Duration = Duration::from_secs(2 * DELETE_WINDOW.as_secs() + 1);
/// How long after finding a NAR under its FileHash (reused from an earlier attempt) an uploader
/// looks at it again before its narinfo (U6): as after a refresh, a delete allowed before the
/// write has landed by then.
pub const STORED_SETTLE: Duration = REFRESH_SETTLE;
/// How long GC waits after a layer of narinfo deletes before it looks at what they leave
/// unused (G7): a refresh that read one of them just before its delete has written it back by
/// then (its write is sent within `W` of its lookup's start, and lands within `W + 1 s`).
pub const WRITE_BACK_SETTLE: Duration = REFRESH_SETTLE;
/// How many lookups of a path may each take too long to refresh it within `W` (U2) before it
/// is uploaded again instead.
pub const REFRESH_ROUNDS: u32 = 3;
/// How many times a NAR deleted right after its PUT is stored again (U6) before the path
/// fails: GC takes a NAR at most once per PUT that preceded its HEAD, so more means that
/// something else deletes NARs.
pub const SETTLE_ROUNDS: u32 = 3;
/// A delete request is not sent with less time left than this: it could not be answered.
pub const MIN_TIME_LEFT: Duration = Duration::from_millis(200);

// The rules above, checked when the crate is built.
const _: () = assert!(MIN_GRACE.as_secs() > KNOWN_FOR.as_secs() + CLOCK_SLACK.as_secs());
const _: () = assert!(REFRESH_SETTLE.as_secs() > 2 * DELETE_WINDOW.as_secs());
const _: () = assert!(STORED_SETTLE.as_secs() > 2 * DELETE_WINDOW.as_secs());
const _: () = assert!(WRITE_BACK_SETTLE.as_secs() > 2 * DELETE_WINDOW.as_secs());

/// The time bounds of one collection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// `R`: uploaders rewrite a narinfo older than this.
    pub refresh_after: Duration,
    /// `G`: nothing younger is deleted.
    pub grace: Duration,
    /// `O`: narinfos younger than this are roots.
    pub older_than: Duration,
}

/// A policy that would let GC collect what uploaders rely on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnsafeBounds {
    #[error(
        "--grace {grace} is shorter than the minimum of 15m: uploaders trust what they found \
         in the cache for 10 minutes"
    )]
    ShortGrace { grace: String },
    #[error(
        "--older-than {older_than} is shorter than refresh_after ({refresh_after}) + --grace \
         ({grace}) + 1m of clock slack: a path an uploader builds upon could be collected \
         under it"
    )]
    ShortAge {
        older_than: String,
        refresh_after: String,
        grace: String,
    },
}

impl Bounds {
    /// G1: refuses a grace or an age limit under which a path an uploader trusts or has just
    /// refreshed could be collected.
    pub fn check_policy(&self) -> Result<(), UnsafeBounds> {
        let text = |d: Duration| humantime::format_duration(d).to_string();
        if self.grace < MIN_GRACE {
            return Err(UnsafeBounds::ShortGrace {
                grace: text(self.grace),
            });
        }
        if self.older_than < self.refresh_after + self.grace + CLOCK_SLACK {
            return Err(UnsafeBounds::ShortAge {
                older_than: text(self.older_than),
                refresh_after: text(self.refresh_after),
                grace: text(self.grace),
            });
        }
        Ok(())
    }
}

/// The start of a check that allows deletes (G5), and the bound it sets on them (G6).
#[derive(Clone, Copy, Debug)]
pub struct Check {
    began: Instant,
}

impl Check {
    /// A check beginning now: before its first request is sent.
    pub fn begin() -> Check {
        Check {
            began: Instant::now(),
        }
    }

    /// A check that began at `began` (a simulation's or a test's instant).
    pub fn began_at(began: Instant) -> Check {
        Check { began }
    }

    /// When a delete this check allowed must have been answered, or given up.
    pub fn deadline(&self) -> Instant {
        self.began + DELETE_WINDOW
    }

    /// The time a delete request may still take, retries included; `None` when too little is
    /// left to send one (the check must be made again).
    pub fn time_left(&self) -> Option<Duration> {
        let left = self.deadline().saturating_duration_since(Instant::now());
        (left >= MIN_TIME_LEFT).then_some(left)
    }

    /// How long the check has taken so far.
    pub fn elapsed(&self) -> Duration {
        self.began.elapsed()
    }
}

/// Who reads the cache, which decides what a refused read (HTTP 403) means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reader {
    /// `narpush gc`.
    Gc,
    /// An uploader looking a path up in its target.
    Uploader,
    /// An uploader asking an upstream cache.
    Upstream,
    /// `narpush verify`, which only reads: what it cannot read it cannot vouch for.
    Verify,
}

/// What a refused read means to its [`Reader`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenRefused {
    /// Stop before anything more is deleted.
    Stop,
    /// As if the object were absent.
    Absent,
}

impl Reader {
    /// The one rule per reader (see the module doc).
    pub const fn when_refused(self) -> WhenRefused {
        match self {
            Reader::Gc | Reader::Verify => WhenRefused::Stop,
            Reader::Uploader | Reader::Upstream => WhenRefused::Absent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn bounds(older_than: Duration, grace: Duration) -> Bounds {
        Bounds {
            refresh_after: DAY,
            grace,
            older_than,
        }
    }

    #[test]
    fn the_policy_leaves_room_for_what_uploaders_trust() {
        assert!(bounds(2 * DAY, HOUR).check_policy().is_ok());
        assert!(matches!(
            bounds(DAY + HOUR, HOUR).check_policy(),
            Err(UnsafeBounds::ShortAge { .. })
        ));
        assert!(matches!(
            bounds(30 * DAY, MIN_GRACE - Duration::from_secs(1)).check_policy(),
            Err(UnsafeBounds::ShortGrace { .. })
        ));
    }

    #[test]
    fn a_check_allows_deletes_only_within_the_window() {
        let fresh = Check::begin();
        assert!(fresh.time_left().is_some_and(|left| left <= DELETE_WINDOW));
        let began = |ago: Duration| Check::began_at(Instant::now() - ago);
        let nearly_over = began(DELETE_WINDOW - MIN_TIME_LEFT * 2);
        assert!(nearly_over
            .time_left()
            .is_some_and(|left| left <= MIN_TIME_LEFT * 2));
        assert_eq!(began(DELETE_WINDOW - MIN_TIME_LEFT / 2).time_left(), None);
        assert_eq!(began(DELETE_WINDOW * 2).time_left(), None);
    }

    #[test]
    fn only_gc_and_verify_stop_on_a_refused_read() {
        assert_eq!(Reader::Gc.when_refused(), WhenRefused::Stop);
        assert_eq!(Reader::Verify.when_refused(), WhenRefused::Stop);
        assert_eq!(Reader::Uploader.when_refused(), WhenRefused::Absent);
        assert_eq!(Reader::Upstream.when_refused(), WhenRefused::Absent);
    }
}
