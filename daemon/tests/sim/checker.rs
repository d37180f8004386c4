//! The invariants, checked at every change of the bucket (the memory sink's observer) and at
//! every report an uploader acts upon:
//! - **closure**: every narinfo's NAR exists with its FileSize, and every reference has a
//!   narinfo, or is served by the upstream cache (its trusted narinfo and its NAR);
//! - **NARs are immutable**: a NAR object is never overwritten with other bytes;
//! - **one writer per NAR key**: no `nar/` key is written (PUT, multipart completion) twice
//!   in a run, by anyone but damage (every NAR gets a name no other upload uses);
//! - **taken as published means what the writer wanted** (`--throttling on`): when a writer
//!   takes a throttled write as published by another (rule U7), the key holds at that instant
//!   what it wanted there: see [`crate::judged`];
//! - **done means there**: a path reported done (uploaded or found) has its narinfo in the
//!   bucket at that moment;
//! - **push filters**: see [`crate::verdicts`].
//!
//! With damage and repair (`--repair on`), a change DAMAGE makes is not checked; the keys it
//! harmed are *tainted* ([`crate::damage::Taint`]) until another actor writes them again, and
//! a problem a later change leaves is excused only when a tainted key explains it (a NAR
//! deleted or overwritten by damage, a reference whose narinfo damage deleted). A repair in
//! progress is watched ([`crate::repair::Watch`]).
//!
//! The check is incremental (indexes of what each narinfo needs), so it costs little per
//! change. Every change is also logged, so that a failure can show the history of the keys it
//! names, and folded into a digest that two runs of one seed must agree on.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use narpush::format::narinfo::NarInfo;
use narpush::sink::memory::{Change, Stored};

/// What a narinfo needs.
pub struct Needs {
    pub url: String,
    pub file_size: u64,
    /// Hash parts of its references (itself excluded).
    pub references: Vec<String>,
}

pub struct Checker {
    epoch: SystemTime,
    pub needs: BTreeMap<String, Needs>,
    /// narinfo keys by the NAR they name.
    by_url: BTreeMap<String, BTreeSet<String>>,
    /// Every NAR key written in the run, with when it was first written.
    nars_written: BTreeMap<String, f64>,
    /// narinfo keys by the hash parts they reference.
    pub referrers: BTreeMap<String, BTreeSet<String>>,
    /// The store path of every hash part a narinfo named (itself or as a reference).
    pub paths: BTreeMap<String, narpush::format::store_path::StorePath>,
    /// What damage harmed, and whether a change now is damage's.
    pub taint: crate::damage::Taint,
    /// The repair in progress, if any, and what repairs did.
    pub watch: Option<crate::repair::Watch>,
    pub repair_figures: BTreeMap<&'static str, u64>,
    pub violations: Vec<String>,
    /// Hash parts of the paths the upstream cache serves (see `crate::upstream`).
    pub upstream_serves: BTreeSet<String>,
    /// What the push filters' rules say of each path (none excluded without filters).
    pub verdicts: crate::verdicts::Shared,
    /// Every change: (seconds since the epoch, what).
    log: Vec<(f64, String)>,
    pub digest: u64,
    pub changes: u64,
}

fn narinfo_key(hash: &str) -> String {
    format!("{hash}.narinfo")
}

impl Checker {
    pub fn new(epoch: SystemTime) -> Checker {
        Checker {
            epoch,
            needs: BTreeMap::new(),
            by_url: BTreeMap::new(),
            nars_written: BTreeMap::new(),
            referrers: BTreeMap::new(),
            paths: BTreeMap::new(),
            taint: crate::damage::Taint::default(),
            watch: None,
            repair_figures: BTreeMap::new(),
            violations: Vec::new(),
            upstream_serves: BTreeSet::new(),
            verdicts: crate::verdicts::Shared::default(),
            log: Vec::new(),
            digest: 0xcbf2_9ce4_8422_2325,
            changes: 0,
        }
    }

    pub fn seconds(&self) -> f64 {
        narpush::clock::now()
            .duration_since(self.epoch)
            .unwrap_or_default()
            .as_secs_f64()
    }

    fn fold(&mut self, text: &str) {
        for byte in text.bytes() {
            self.digest ^= u64::from(byte);
            self.digest = self.digest.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn note(&mut self, what: String) {
        let at = self.seconds();
        if std::env::var_os("SIM_TRACE").is_some() {
            eprintln!("{at:.3} {what}");
        }
        self.fold(&format!("{at:.3} {what}"));
        self.log.push((at, what));
    }

    pub fn violate(&mut self, what: String) {
        let at = self.seconds();
        self.violations.push(format!("t={at:.3}s {what}"));
    }

    pub fn observe(&mut self, change: Change<'_>, objects: &BTreeMap<String, Stored>) {
        if let Change::Judged {
            key,
            outcome,
            ours,
            got,
            seen,
            headed,
            ..
        } = change
        {
            let judgement = crate::judged::Judgement {
                key,
                outcome,
                ours,
                got,
                seen,
                headed,
            };
            crate::judged::check(self, judgement, objects);
            return;
        }
        self.changes += 1;
        let damage = self.taint.damaging;
        let by = if damage { " (damage)" } else { "" };
        match change {
            Change::Put(key) => {
                let Some(object) = objects.get(key) else {
                    return;
                };
                self.note(format!("PUT {key} etag {}{by}", object.etag));
                if !damage {
                    self.taint.heal(key);
                }
                if key.ends_with(".narinfo") {
                    self.forget(key);
                    self.learn(key, object);
                    if !damage {
                        self.check_narinfo(key, objects);
                        crate::verdicts::narinfo_written(self, key);
                    }
                } else if key.starts_with("nar/") && !damage {
                    self.check_nar_key_new(key);
                    self.check_nar_users(key, objects);
                    crate::verdicts::nar_written(self, key, objects);
                }
            }
            Change::Delete(keys) => {
                for key in keys {
                    self.note(format!("DELETE {key}{by}"));
                }
                for key in keys {
                    // Damage is not checked; a key damage deleted stays tainted until written
                    // again (deleting it again changes nothing).
                    if damage || self.taint.deleted(key) {
                        if key.ends_with(".narinfo") {
                            self.forget(key);
                        }
                        continue;
                    }
                    self.taint.heal(key);
                    if key.ends_with(".narinfo") {
                        self.forget(key);
                        let hash = key.trim_end_matches(".narinfo");
                        if self.upstream_serves.contains(hash) {
                            continue;
                        }
                        let users: Vec<String> = self
                            .referrers
                            .get(hash)
                            .into_iter()
                            .flatten()
                            .filter(|k| objects.contains_key(*k))
                            .cloned()
                            .collect();
                        for user in users {
                            self.violate(format!(
                                "closure: {user} references {key}, which was just deleted"
                            ));
                        }
                    } else if key.starts_with("nar/") {
                        self.check_nar_users(key, objects);
                    }
                }
            }
            Change::Judged { .. } => {}
        }
        crate::repair::after_change(self, change, objects);
    }

    fn learn(&mut self, key: &str, object: &Stored) {
        let parsed = std::str::from_utf8(&object.body)
            .ok()
            .and_then(|text| NarInfo::parse(text).ok());
        let Some(narinfo) = parsed else {
            self.violate(format!("{key} does not parse"));
            return;
        };
        let own = key.trim_end_matches(".narinfo");
        for path in narinfo.references.iter().chain([&narinfo.store_path]) {
            self.paths
                .entry(path.hash_part().to_owned())
                .or_insert_with(|| path.clone());
        }
        let references: Vec<String> = narinfo
            .references
            .iter()
            .map(|r| r.hash_part().to_owned())
            .filter(|h| h != own)
            .collect();
        for hash in &references {
            self.referrers
                .entry(hash.clone())
                .or_default()
                .insert(key.to_owned());
        }
        self.by_url
            .entry(narinfo.url.clone())
            .or_default()
            .insert(key.to_owned());
        self.needs.insert(
            key.to_owned(),
            Needs {
                url: narinfo.url,
                file_size: narinfo.file_size.unwrap_or(0),
                references,
            },
        );
    }

    fn forget(&mut self, key: &str) {
        let Some(needs) = self.needs.remove(key) else {
            return;
        };
        for hash in &needs.references {
            if let Some(users) = self.referrers.get_mut(hash) {
                users.remove(key);
            }
        }
        if let Some(users) = self.by_url.get_mut(&needs.url) {
            users.remove(key);
        }
    }

    fn check_narinfo(&mut self, key: &str, objects: &BTreeMap<String, Stored>) {
        let Some(needs) = self.needs.get(key) else {
            return;
        };
        let mut problems = Vec::new();
        // A NAR damage deleted or overwrote may be named by a narinfo written meanwhile (its
        // writer found it a moment before); the narinfo is broken by the damage.
        let nar_harmed = self.taint.harmed(&needs.url);
        match objects.get(&needs.url) {
            _ if nar_harmed => {}
            None => problems.push(format!(
                "closure: {key} was written but its NAR {} is missing",
                needs.url
            )),
            Some(nar) if nar.body.len() as u64 != needs.file_size => problems.push(format!(
                "closure: {key} says FileSize {} but {} has {} bytes",
                needs.file_size,
                needs.url,
                nar.body.len()
            )),
            Some(_) => {}
        }
        for hash in &needs.references {
            if !objects.contains_key(&narinfo_key(hash))
                && !self.upstream_serves.contains(hash)
                && !self.taint.deleted(&narinfo_key(hash))
            {
                problems.push(format!(
                    "closure: {key} was written but its reference {} is missing",
                    narinfo_key(hash)
                ));
            }
        }
        for problem in problems {
            self.violate(problem);
        }
    }

    /// After a NAR changed: every narinfo naming it must still find it, at its size.
    fn check_nar_users(&mut self, nar: &str, objects: &BTreeMap<String, Stored>) {
        let users: Vec<String> = self
            .by_url
            .get(nar)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for user in users {
            let Some(needs) = self.needs.get(&user) else {
                continue;
            };
            match objects.get(nar) {
                None => self.violate(format!(
                    "closure: {user} names {nar}, which was just deleted"
                )),
                Some(o) if o.body.len() as u64 != needs.file_size => self.violate(format!(
                    "NAR overwritten: {nar} now has {} bytes, {user} says {}",
                    o.body.len(),
                    needs.file_size
                )),
                Some(_) => {}
            }
        }
    }

    /// A NAR key is written once: no other upload uses it, and nothing writes it again.
    fn check_nar_key_new(&mut self, key: &str) {
        let at = self.seconds();
        if let Some(first) = self.nars_written.insert(key.to_owned(), at) {
            self.nars_written.insert(key.to_owned(), first);
            self.violate(format!(
                "NAR key reused: {key} is written again (first written at t={first:.3}s)"
            ));
        }
    }

    /// A path an uploader reported done must be in the bucket now, or served upstream.
    pub fn check_done(&mut self, who: &str, hash: &str, objects: &BTreeMap<String, Stored>) {
        self.note(format!("{who} reports {hash} done"));
        if !objects.contains_key(&narinfo_key(hash))
            && !self.upstream_serves.contains(hash)
            && !self.taint.deleted(&narinfo_key(hash))
        {
            self.violate(format!(
                "done: {who} reported {} done but it is not in the bucket",
                narinfo_key(hash)
            ));
        }
        crate::verdicts::reported(self, who, hash, None);
    }

    /// Events that name any of `keys` (the history of a violation).
    pub fn history(&self, keys: &[String]) -> Vec<String> {
        self.log
            .iter()
            .filter(|(_, what)| keys.iter().any(|k| what.contains(k.as_str())))
            .map(|(at, what)| format!("  t={at:.3}s {what}"))
            .collect()
    }
}
