//! DAMAGE: what a lifecycle rule or an accident does to the bucket, outside every protocol:
//! a NAR deleted, truncated or replaced by other bytes (of its size or not), a narinfo that
//! others reference deleted, a narinfo's signature replaced by one of a key nobody trusts, or
//! everything older than some age deleted. With `--throttling on`, some strokes aim at the
//! narinfo written last, while other writers may be judging a throttled write of it: its NAR
//! deleted, truncated or replaced, or the narinfo re-signed with a foreign key. Damage lands at once (no request); with a chance
//! the damaged paths are also gone from the local store (its own GC took them, with their
//! referrers), so that repair finds some of them and not others.
//!
//! The checker does not check damage's changes; it *taints* the keys damage harmed
//! ([`Taint`]) until another actor writes them again. Invariant: only a tainted key excuses a
//! broken narinfo, so every other break is still a violation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use narpush::format::narinfo::NarInfo;
use narpush::format::signing::SigningKey;
use narpush::sink::memory::{Bucket, Stored};

use crate::checker::Checker;
use crate::rng::Rng;
use crate::run::lock;
use crate::world::World;

/// Percent of strokes aimed at the narinfo written last, with `fresh`.
const FRESH_PERCENT: u64 = 40;

/// What damage did to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Harm {
    /// Deleted (the key is absent).
    Deleted,
    /// A NAR overwritten with bytes of another size.
    Resized,
    /// A NAR overwritten with other bytes of its size (seen only with `--nar-hash`).
    Rebytes,
    /// A narinfo whose signature was replaced by one of a key nobody trusts.
    ForeignSignature,
}

/// The keys damage harmed, until another actor writes them again.
#[derive(Default)]
pub struct Taint {
    /// Set while damage changes the bucket (its changes are not checked).
    pub damaging: bool,
    pub keys: BTreeMap<String, Harm>,
    /// When damage last harmed each of `keys`: the serial of its change in the bucket
    /// ([`narpush::sink::memory::Bucket::serial`]), to order it with the reads that land.
    pub struck_at: BTreeMap<String, u64>,
    /// narinfos damage rewrote as another build of their path, with the ETag of what it
    /// wrote (a refresh writes the same bytes back): while a key holds them, what repair makes
    /// of it is not modelled ([`crate::repair`]).
    pub other_builds: BTreeMap<String, String>,
}

impl Taint {
    pub fn harmed(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    /// Damage harmed `key` by the bucket's event `serial`.
    pub fn strike(&mut self, key: String, harm: Harm, serial: u64) {
        self.struck_at.insert(key.clone(), serial);
        self.keys.insert(key, harm);
    }

    /// Whether damage harmed `key` after the bucket's event `serial` (a read that landed
    /// then could not see it), and it is not healed.
    pub fn harmed_after(&self, key: &str, serial: u64) -> bool {
        self.struck_at.get(key).is_some_and(|at| *at > serial)
    }

    pub fn harm(&self, key: &str) -> Option<Harm> {
        self.keys.get(key).copied()
    }

    /// Whether `key` holds, in `objects`, another build damage wrote there.
    pub fn other_build(&self, key: &str, objects: &BTreeMap<String, Stored>) -> bool {
        self.other_builds
            .get(key)
            .is_some_and(|etag| objects.get(key).is_some_and(|o| o.etag == *etag))
    }

    pub fn deleted(&self, key: &str) -> bool {
        self.keys.get(key) == Some(&Harm::Deleted)
    }

    /// Another actor wrote or deleted `key`: what it is now is that actor's doing.
    pub fn heal(&mut self, key: &str) {
        self.keys.remove(key);
        self.struck_at.remove(key);
    }
}

/// The key damage re-signs narinfos with.
fn vandal_key() -> SigningKey {
    use base64::Engine as _;
    let key = ed25519_dalek::SigningKey::from_bytes(&[17; 32]);
    SigningKey::parse(&format!(
        "vandal-1:{}",
        base64::engine::general_purpose::STANDARD.encode(key.to_keypair_bytes())
    ))
    .expect("a valid key")
}

/// One stroke of damage; returns what it did (for the log), or `None` if there was nothing
/// to damage.
///
/// With `fresh` (`--throttling on`), a stroke is sometimes aimed at the narinfo written last,
/// while other writers of it may still be judging a throttled write of it (rule U7 must not
/// take a narinfo whose NAR is gone or not of its FileSize, nor one not signed by our key): its NAR deleted, truncated or replaced (a collector outside the
/// protocol, an accident), or the narinfo re-signed with a foreign key.
pub fn strike(
    rng: &mut Rng,
    bucket: &Arc<Bucket>,
    checker: &Arc<Mutex<Checker>>,
    world: &mut World,
    fresh: bool,
) -> Option<String> {
    let objects = bucket.snapshot();
    let nars: Vec<&String> = objects.keys().filter(|k| k.starts_with("nar/")).collect();
    let narinfos: Vec<&String> = objects.keys().filter(|k| k.ends_with(".narinfo")).collect();
    if narinfos.is_empty() || nars.is_empty() {
        return None;
    }
    let mut harmed: Vec<(String, Harm)> = Vec::new();
    // The narinfos whose paths may also leave the local store, and the chance they do.
    let mut paths_of: Vec<String> = Vec::new();
    let mut forget_percent = 40;
    let serial;
    let what = if fresh && rng.chance(FRESH_PERCENT) {
        let (key, narinfo) = latest_narinfo(&objects)?;
        let nar = narinfo.url.clone();
        let what = match rng.below(5) {
            0..=2 => {
                let body = objects.get(&nar)?.body.clone();
                let (what, harm, bytes) = nar_stroke(rng, &body);
                serial = land(bucket, checker, |b| match bytes {
                    None => b.remove(std::slice::from_ref(&nar)),
                    Some(bytes) => b.insert(&nar, bytes),
                });
                paths_of.extend(narinfos_naming(&objects, &nar));
                harmed.push((nar.clone(), harm));
                format!("{what} {nar}")
            }
            3 => {
                let mut other = narinfo;
                other.nar_hash = narpush::format::hash::Sha256::digest(other.nar_hash.0);
                let body = signed_by(other, &crate::run::signing_key())?;
                serial = land(bucket, checker, |b| b.insert(&key, body));
                paths_of.push(key.clone());
                let etag = bucket.snapshot().get(&key)?.etag.clone();
                lock(checker).taint.other_builds.insert(key.clone(), etag);
                harmed.push((key.clone(), Harm::ForeignSignature));
                format!("rewrites {key} as another build (another NarHash, signed by our key)")
            }
            _ => {
                let body = signed_by(narinfo, &vandal_key())?;
                serial = land(bucket, checker, |b| b.insert(&key, body));
                paths_of.push(key.clone());
                harmed.push((key.clone(), Harm::ForeignSignature));
                format!("re-signs {key} with a foreign key")
            }
        };
        format!("{what}, aimed at the narinfo written last")
    } else {
        match rng.below(100) {
            0..=59 => {
                let nar = rng.pick(&nars).to_string();
                let (what, harm, bytes) = nar_stroke(rng, &objects[&nar].body);
                serial = land(bucket, checker, |b| match bytes {
                    None => b.remove(std::slice::from_ref(&nar)),
                    Some(bytes) => b.insert(&nar, bytes),
                });
                paths_of.extend(narinfos_naming(&objects, &nar));
                harmed.push((nar.clone(), harm));
                format!("{what} {nar}")
            }
            60..=74 => {
                let referenced = referenced_narinfos(&objects);
                let pool = if referenced.is_empty() {
                    narinfos.iter().map(|k| k.to_string()).collect()
                } else {
                    referenced
                };
                let key = rng.pick(&pool).clone();
                serial = land(bucket, checker, |b| b.remove(std::slice::from_ref(&key)));
                paths_of.push(key.clone());
                harmed.push((key.clone(), Harm::Deleted));
                format!("deletes {key}")
            }
            75..=91 => {
                let key = rng.pick(&narinfos).to_string();
                let body = signed_by(parse(&objects[&key])?, &vandal_key())?;
                serial = land(bucket, checker, |b| b.insert(&key, body));
                paths_of.push(key.clone());
                harmed.push((key.clone(), Harm::ForeignSignature));
                format!("re-signs {key} with a foreign key")
            }
            _ => {
                let older_than = Duration::from_secs(rng.between(1800, 3 * 3600));
                let now = narpush::clock::now();
                let keys: Vec<String> = objects
                    .iter()
                    .filter(|(_, o)| narpush::clock::age(now, o.modified) >= older_than)
                    .map(|(k, _)| k.clone())
                    .collect();
                if keys.is_empty() {
                    return None;
                }
                serial = land(bucket, checker, |b| b.remove(&keys));
                for key in &keys {
                    harmed.push((key.clone(), Harm::Deleted));
                    if key.ends_with(".narinfo") {
                        paths_of.push(key.clone());
                    }
                }
                forget_percent = 20;
                format!(
                    "a lifecycle rule deletes the {} objects older than {}s",
                    keys.len(),
                    older_than.as_secs()
                )
            }
        }
    };
    let mut checker = lock(checker);
    for (key, harm) in harmed {
        checker.taint.strike(key, harm, serial);
    }
    let doomed: BTreeSet<String> = paths_of
        .iter()
        .filter(|_| rng.chance(forget_percent))
        .map(|k| k.trim_end_matches(".narinfo").to_owned())
        .collect();
    let mut what = format!("damage: {what}");
    if !doomed.is_empty() {
        let removed = world.remove_with_referrers(&doomed);
        what.push_str(&format!(
            "; the local store's GC removes {} path(s)",
            removed.len()
        ));
    }
    checker.note(what.clone());
    crate::repair::after_damage(&mut checker, &bucket.snapshot());
    Some(what)
}

/// A stroke at a NAR of these bytes: deleted (no bytes), truncated, or replaced by other
/// bytes of its size or not; what it is called and the harm.
fn nar_stroke(rng: &mut Rng, body: &Bytes) -> (&'static str, Harm, Option<Bytes>) {
    match rng.below(3) {
        0 => ("deletes", Harm::Deleted, None),
        1 => {
            let keep = rng.below(body.len() as u64) as usize;
            ("truncates", Harm::Resized, Some(body.slice(..keep)))
        }
        _ => {
            let same_size = rng.chance(50);
            let len = if same_size {
                body.len()
            } else {
                rng.between(1, 2000) as usize
            };
            let bytes: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
            let harm = if len == body.len() {
                Harm::Rebytes
            } else {
                Harm::Resized
            };
            ("replaces", harm, Some(Bytes::from(bytes)))
        }
    }
}

/// `narinfo` with `key`'s signature only, as text.
fn signed_by(mut narinfo: NarInfo, key: &SigningKey) -> Option<Bytes> {
    narinfo.signatures.clear();
    narinfo.add_signature(key).ok()?;
    Some(Bytes::from(narinfo.to_string()))
}

/// The narinfo written last (the latest `LastModified`, then the last key), when its NAR is
/// there.
fn latest_narinfo(objects: &BTreeMap<String, Stored>) -> Option<(String, NarInfo)> {
    let (key, latest) = objects
        .iter()
        .filter(|(k, _)| k.ends_with(".narinfo"))
        .max_by_key(|&(k, o)| (o.modified, k))?;
    let narinfo = parse(latest)?;
    objects
        .contains_key(&narinfo.url)
        .then(|| (key.clone(), narinfo))
}

/// Applies `change` to the bucket as damage (the checker does not check it); the serial of
/// the change.
fn land(bucket: &Bucket, checker: &Mutex<Checker>, change: impl FnOnce(&Bucket)) -> u64 {
    lock(checker).taint.damaging = true;
    change(bucket);
    lock(checker).taint.damaging = false;
    bucket.serial()
}

fn parse(object: &Stored) -> Option<NarInfo> {
    NarInfo::parse(std::str::from_utf8(&object.body).ok()?).ok()
}

/// The narinfo keys whose URL is `nar`.
fn narinfos_naming(objects: &BTreeMap<String, Stored>, nar: &str) -> Vec<String> {
    objects
        .iter()
        .filter(|(k, _)| k.ends_with(".narinfo"))
        .filter(|(_, o)| parse(o).is_some_and(|n| n.url == nar))
        .map(|(k, _)| k.clone())
        .collect()
}

/// The narinfo keys another narinfo here references.
fn referenced_narinfos(objects: &BTreeMap<String, Stored>) -> Vec<String> {
    let mut referenced = BTreeSet::new();
    for (key, object) in objects.iter().filter(|(k, _)| k.ends_with(".narinfo")) {
        let Some(narinfo) = parse(object) else {
            continue;
        };
        for reference in &narinfo.references {
            let target = format!("{}.narinfo", reference.hash_part());
            if &target != key && objects.contains_key(&target) {
                referenced.insert(target);
            }
        }
    }
    referenced.into_iter().collect()
}

/// Whether `key`, or a narinfo its closure reaches through the references the checker knows,
/// holds the bytes of another build that damage wrote: repair reports such a narinfo
/// unfixable (the local store contradicts it), and keeps or deletes the ones that need it.
pub fn reaches_other_build(
    checker: &Checker,
    key: &str,
    objects: &BTreeMap<String, Stored>,
) -> bool {
    let mut seen = BTreeSet::new();
    let mut todo = vec![key.to_owned()];
    while let Some(key) = todo.pop() {
        if !seen.insert(key.clone()) {
            continue;
        }
        if checker.taint.other_build(&key, objects) {
            return true;
        }
        if let Some(needs) = checker.needs.get(&key) {
            todo.extend(
                needs
                    .references
                    .iter()
                    .map(|hash| format!("{hash}.narinfo")),
            );
        }
    }
    false
}
