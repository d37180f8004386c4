//! The check of every throttled write a writer took as published (rule U7,
//! `narpush::sink::contended`): what the judge's GET found in the key is what the writer
//! wanted there, and at the instant it decided the key is not empty and what it found is whole.
//!
//! - `nix-cache-info`: the writer's very bytes, or the same announcement
//!   (`layout::same_cache_info`);
//! - a narinfo: the writer's very bytes, or a narinfo of the same StorePath, NarHash and
//!   NarSize whose signature verifies with the simulation's public key (cryptographically, not
//!   by its name), whose URL is under `nar/`; its NAR has its FileSize and its references are
//!   there (the judge takes them on the other writer's word, U4) when it decides.
//!
//! The bucket reports what the GET found and when it landed, and when the HEAD after it landed
//! ([`narpush::sink::memory::Change::Judged`]). Damage excuses only what the judge could not
//! see: the key emptied after its GET landed, another writer's NAR harmed after its HEAD
//! landed. A narinfo taken as the writer's own (its bytes, or one naming its own NAR) is taken
//! without a HEAD: its NAR is excused as [`crate::checker`] excuses a narinfo's, while
//! damage's taint lasts. Another writer may write the key between the GET and the decision
//! (an announcement of its own, say): what it writes is checked as any write is.

use std::collections::BTreeMap;

use narpush::format::narinfo::NarInfo;
use narpush::sink::contended::Outcome;
use narpush::sink::memory::{Landed, Stored};

use crate::checker::Checker;

/// A throttled write, as judged ([`narpush::sink::memory::Change::Judged`]).
pub struct Judgement<'a> {
    pub key: &'a str,
    pub outcome: Outcome,
    pub ours: &'a [u8],
    pub got: Option<Landed>,
    pub seen: Option<&'a [u8]>,
    pub headed: Option<(&'a str, Landed)>,
}

pub fn check(checker: &mut Checker, judged: Judgement<'_>, objects: &BTreeMap<String, Stored>) {
    let Judgement {
        key,
        outcome,
        ours,
        got,
        seen,
        headed,
    } = judged;
    let at = |landed: Option<Landed>| landed.map_or(String::new(), |l| format!("#{}", l.serial));
    checker.note(format!(
        "throttled write of {key}: {} (GET landed {}, HEAD {})",
        outcome.label(),
        at(got),
        headed.map_or("none".to_owned(), |(nar, l)| format!("{nar} #{}", l.serial)),
    ));
    if outcome != Outcome::TakenAsPublished {
        return;
    }
    let Some(got) = got else {
        checker.violate(format!(
            "throttled: {key} was taken as published without a GET of it"
        ));
        return;
    };
    let mut problems = Vec::new();
    if !objects.contains_key(key) && !checker.taint.harmed_after(key, got.serial) {
        problems.push("the key is empty".to_owned());
    }
    match seen {
        None => problems.push("its GET found nothing".to_owned()),
        Some(seen) if key.ends_with(".narinfo") => {
            problems.extend(narinfo_problems(checker, key, ours, seen, headed, objects))
        }
        Some(seen) => {
            let announcement = String::from_utf8_lossy(ours);
            if seen != ours && !narpush::layout::same_cache_info(seen, &announcement) {
                problems.push(format!(
                    "its GET found {:?}, the writer announces {:?}",
                    String::from_utf8_lossy(seen),
                    announcement
                ));
            }
        }
    }
    for problem in problems {
        checker.violate(format!(
            "throttled: {key} was taken as published but {problem}"
        ));
    }
}

fn parse(body: &[u8]) -> Option<NarInfo> {
    NarInfo::parse(std::str::from_utf8(body).ok()?).ok()
}

/// What is wrong with the narinfo `theirs` at `key`, taken in place of `ours`.
fn narinfo_problems(
    checker: &Checker,
    key: &str,
    ours: &[u8],
    theirs: &[u8],
    headed: Option<(&str, Landed)>,
    objects: &BTreeMap<String, Stored>,
) -> Vec<String> {
    let Some(narinfo) = parse(theirs) else {
        return vec!["what its GET found does not parse".to_owned()];
    };
    let Some(wanted) = parse(ours) else {
        return vec!["the writer's own narinfo does not parse".to_owned()];
    };
    let mut problems = Vec::new();
    let own = theirs == ours || narinfo.url == wanted.url;
    if theirs != ours {
        if narinfo.store_path != wanted.store_path {
            problems.push(format!(
                "it is of {}, the writer's of {}",
                narinfo.store_path, wanted.store_path
            ));
        }
        if narinfo.nar_hash != wanted.nar_hash || narinfo.nar_size != wanted.nar_size {
            problems.push(format!(
                "it says NarHash {} NarSize {}, the writer's {} {}",
                narinfo.nar_hash, narinfo.nar_size, wanted.nar_hash, wanted.nar_size
            ));
        }
        if !narinfo.verify_signature(&crate::run::signing_key().public_key()) {
            problems.push(format!(
                "no signature verifies with our key ({:?})",
                narinfo.signatures
            ));
        }
        if !narinfo.url.starts_with("nar/") {
            problems.push(format!("its URL {} is outside nar/", narinfo.url));
        }
    }
    // Its own NAR the writer takes without a HEAD (stored before the narinfo): harm to it is
    // excused while tainted, as for any narinfo. Another writer's NAR was looked at: only harm
    // that landed after the HEAD is excused.
    let nar_excused = match own {
        true => checker.taint.harmed(&narinfo.url),
        false => headed.is_some_and(|(nar, landed)| {
            nar == narinfo.url && checker.taint.harmed_after(nar, landed.serial)
        }),
    };
    match objects.get(&narinfo.url) {
        _ if nar_excused => {}
        None => problems.push(format!("its NAR {} is missing", narinfo.url)),
        Some(nar) if Some(nar.body.len() as u64) != narinfo.file_size => problems.push(format!(
            "its NAR {} has {} bytes, it says FileSize {:?}",
            narinfo.url,
            nar.body.len(),
            narinfo.file_size
        )),
        Some(_) => {}
    }
    let own_hash = key.trim_end_matches(".narinfo");
    for reference in &narinfo.references {
        let hash = reference.hash_part();
        let reference_key = format!("{hash}.narinfo");
        if hash != own_hash
            && !objects.contains_key(&reference_key)
            && !checker.upstream_serves.contains(hash)
            && !checker.taint.deleted(&reference_key)
        {
            problems.push(format!("its reference {reference_key} is missing"));
        }
    }
    problems
}
