//! Pins: named roots of a cache. `pins/NAME` names one store path whose closure `narpush gc`
//! keeps whatever its age; `narpush pin` makes, lists and removes them.
//!
//! # The object
//!
//! `pins/<NAME>`, `text/plain`, one `Key: value` line per field, as a narinfo:
//!
//! ```text
//! StorePath: /nix/store/<hash>-<name>
//! ```
//!
//! `StorePath` is required; other lines are ignored (room for later fields). `NAME` is 1 to
//! [`MAX_NAME_LEN`] characters of `A-Z a-z 0-9 . _ + -`, not starting with `.`.
//!
//! # The invariant (P1): a pin stands only for a whole closure
//!
//! A pin is made only for a path whose closure is whole in the cache (every narinfo, each with
//! its NAR), checked before the pin is written and again [`PIN_SETTLE`] after its write was
//! answered. GC reads `pins/` before planning (pins are roots) and lists it again within every
//! check that allows narinfo deletes; a pin it has not planned with makes it plan again. A
//! delete allowed by a listing that did not yet see the pin was sent within `W` of that
//! check's start, before the pin's write landed, so it lands before the second look; that look
//! sees the gap, and the pin is put back as it was and refused with the path that is missing. The
//! argument is [`crate::coexist`]'s for U6, with the pin in the place of the NAR.

use std::collections::{BTreeMap, HashSet};

use futures::stream::{self, StreamExt};

use crate::coexist::{Reader, REFRESH_SETTLE};
use crate::format::narinfo::NarInfo;
use crate::format::store_path::StorePath;
use crate::layout;
use crate::sink::inventory::Object;
use crate::sink::{Sink, SinkError};
use crate::upstream::Upstream;

/// Where pins live.
pub const PIN_PREFIX: &str = "pins/";

/// The longest pin name.
pub const MAX_NAME_LEN: usize = 100;

/// How long after writing a pin its closure is looked at again (P1): as long as an uploader
/// waits after a refresh, `S`.
pub const PIN_SETTLE: std::time::Duration = REFRESH_SETTLE;

const CONTENT_TYPE: &str = "text/plain; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "invalid pin name '{name}': use 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ + - \
         (not starting with '.')"
    )]
    InvalidName { name: String },
    #[error("pins/{name} is not a pin narpush can read: {reason}")]
    Unreadable { name: String, reason: String },
    #[error("no pin named '{name}' in the cache")]
    NoSuchPin { name: String },
    #[error("refused: the closure of {path} is not whole in the cache: {gap}")]
    NotWhole { path: String, gap: Gap },
    #[error(
        "refused: the closure of {path} lost {gap} while it was being pinned (a `narpush gc` \
         ran beside it); the pin was put back as it was, upload the path and pin it again"
    )]
    CollectedMeanwhile { path: String, gap: Gap },
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// What a closure lacks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Gap {
    #[error("{path} has no narinfo")]
    NoNarInfo { path: String },
    #[error("the narinfo of {path} cannot be read: {reason}")]
    BadNarInfo { path: String, reason: String },
    #[error("{path}'s NAR {key} is missing")]
    NoNar { path: String, key: String },
}

/// A pin's name, checked.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PinName(String);

impl PinName {
    pub fn parse(name: &str) -> Result<PinName, PinError> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || "._+-".contains(c);
        if name.is_empty()
            || name.len() > MAX_NAME_LEN
            || name.starts_with('.')
            || !name.chars().all(allowed)
        {
            return Err(PinError::InvalidName {
                name: name.to_owned(),
            });
        }
        Ok(PinName(name.to_owned()))
    }

    /// The key of this pin's object.
    pub fn key(&self) -> String {
        format!("{PIN_PREFIX}{}", self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A pin as read from the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    pub name: PinName,
    pub path: StorePath,
}

/// The body of the pin object for `path`.
pub fn body(path: &StorePath) -> String {
    format!("StorePath: {}\n", path.to_absolute())
}

/// Parses the body of `pins/<name>`.
pub fn parse(name: &str, body: &[u8]) -> Result<Pin, PinError> {
    let unreadable = |reason: String| PinError::Unreadable {
        name: name.to_owned(),
        reason,
    };
    let name = PinName::parse(name).map_err(|e| unreadable(e.to_string()))?;
    let text = std::str::from_utf8(body).map_err(|e| unreadable(format!("not UTF-8: {e}")))?;
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix("StorePath:"))
        .ok_or_else(|| unreadable("no 'StorePath:' line".to_owned()))?;
    let path = StorePath::from_absolute_path(value.trim())
        .map_err(|e| unreadable(format!("StorePath: {e}")))?;
    Ok(Pin { name, path })
}

/// The name of the pin stored under `key`, when `key` is one: a valid [`PinName`] right under
/// `pins/`. Other keys there (a console's zero-byte `pins/` "folder") are not pins.
pub fn name_of_key(key: &str) -> Option<&str> {
    key.strip_prefix(PIN_PREFIX)
        .filter(|name| PinName::parse(name).is_ok())
}

/// The largest pin body read; a pin is one line.
pub const MAX_PIN_BYTES: u64 = 64 * 1024;

/// Pins read at once.
const READ_CONCURRENCY: usize = 16;

/// The pin objects of the cache, as listed (one LIST; S3 ListObjectsV2 with a prefix).
pub async fn list_objects(sink: &Sink) -> Result<Vec<Object>, SinkError> {
    let mut objects = sink.list_under(PIN_PREFIX).await?;
    objects.retain(|o| name_of_key(&o.key).is_some());
    Ok(objects)
}

/// Reads the pins among `objects` (other keys are passed over). A refused read is an error
/// (GC's rule: a pin it cannot read may name a root), a pin gone since the listing is left
/// out, and one too big or that does not parse is an error naming it.
pub async fn read(sink: &Sink, objects: &[Object]) -> Result<Vec<Pin>, PinError> {
    let named = objects
        .iter()
        .filter_map(|o| name_of_key(&o.key).map(|name| (name, o)));
    let reads: Vec<Result<Option<Pin>, PinError>> = stream::iter(named)
        .map(|(name, object)| async move {
            if object.size > MAX_PIN_BYTES {
                return Err(PinError::Unreadable {
                    name: name.to_owned(),
                    reason: format!("{} bytes, more than a pin's {MAX_PIN_BYTES}", object.size),
                });
            }
            match sink.read(&object.key).await?.for_reader(Reader::Gc)? {
                Some(fetched) => parse(name, &fetched.body).map(Some),
                None => Ok(None),
            }
        })
        .buffered(READ_CONCURRENCY)
        .collect()
        .await;
    let mut pins = Vec::new();
    for read in reads {
        pins.extend(read?);
    }
    Ok(pins)
}

/// Every pin of the cache, by name.
pub async fn list(sink: &Sink) -> Result<BTreeMap<PinName, Pin>, PinError> {
    let objects = list_objects(sink).await?;
    Ok(read(sink, &objects)
        .await?
        .into_iter()
        .map(|pin| (pin.name.clone(), pin))
        .collect())
}

/// The first gap in the closure of `path` in the cache, if any: every narinfo must be there,
/// readable, with its NAR, except for references `upstream` serves (uploaders leave those out
/// of the cache on purpose; their closures are upstream's).
pub async fn closure_gap(
    sink: &Sink,
    path: &StorePath,
    upstream: &Upstream,
) -> Result<Option<Gap>, SinkError> {
    let mut seen: HashSet<String> = HashSet::from([path.hash_part().to_owned()]);
    let mut pending = vec![path.clone()];
    while let Some(next) = pending.pop() {
        let key = layout::narinfo_key(&next);
        let Some(fetched) = sink.read(&key).await?.for_reader(Reader::Gc)? else {
            if next != *path && upstream.serves(&next).await.is_some() {
                continue;
            }
            return Ok(Some(Gap::NoNarInfo {
                path: next.to_absolute(),
            }));
        };
        let narinfo = match std::str::from_utf8(&fetched.body)
            .map_err(|e| e.to_string())
            .and_then(|text| NarInfo::parse(text).map_err(|e| e.to_string()))
        {
            Ok(narinfo) => narinfo,
            Err(reason) => {
                return Ok(Some(Gap::BadNarInfo {
                    path: next.to_absolute(),
                    reason,
                }))
            }
        };
        if sink
            .head(&narinfo.url)
            .await?
            .for_reader(Reader::Gc)?
            .is_none()
        {
            return Ok(Some(Gap::NoNar {
                path: next.to_absolute(),
                key: narinfo.url,
            }));
        }
        for reference in narinfo.references {
            if seen.insert(reference.hash_part().to_owned()) {
                pending.push(reference);
            }
        }
    }
    Ok(None)
}

/// Pins `path` as `name` (replacing a pin of that name) by rule P1: refused unless its closure
/// is whole before the write and [`PIN_SETTLE`] after it; when the second look finds a gap, the
/// pin is put back as it was (the previous body, or none). Returns the path the name pinned
/// before, if any.
pub async fn pin(
    sink: &Sink,
    name: &PinName,
    path: &StorePath,
    upstream: &Upstream,
) -> Result<Option<StorePath>, PinError> {
    if let Some(gap) = closure_gap(sink, path, upstream).await? {
        return Err(PinError::NotWhole {
            path: path.to_absolute(),
            gap,
        });
    }
    let key = name.key();
    let previous = sink.read(&key).await?.for_reader(Reader::Gc)?;
    let previous_path = previous
        .as_ref()
        .and_then(|fetched| parse(name.as_str(), &fetched.body).ok())
        .map(|pin| pin.path);
    let written = sink.put(&key, body(path).into(), CONTENT_TYPE).await;
    // A lost answer may hide a write that landed: the second look decides either way.
    tokio::time::sleep(PIN_SETTLE).await;
    if let Some(gap) = closure_gap(sink, path, upstream).await? {
        match previous {
            Some(fetched) => sink.put(&key, fetched.body, CONTENT_TYPE).await?,
            None => sink.delete(&[key]).await?,
        }
        return Err(PinError::CollectedMeanwhile {
            path: path.to_absolute(),
            gap,
        });
    }
    written?;
    Ok(previous_path)
}

/// Removes the pin `name`, readable or not; an error if there is none. Returns the path it
/// pinned, when its body says.
pub async fn remove(sink: &Sink, name: &PinName) -> Result<Option<StorePath>, PinError> {
    let key = name.key();
    let Some(fetched) = sink.read(&key).await?.for_reader(Reader::Gc)? else {
        return Err(PinError::NoSuchPin {
            name: name.as_str().to_owned(),
        });
    };
    sink.delete(&[key]).await?;
    Ok(parse(name.as_str(), &fetched.body).ok().map(|pin| pin.path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-release";

    #[test]
    fn names_are_checked() {
        for good in ["release-1.0", "a", "x_y+z.1", &"n".repeat(MAX_NAME_LEN)] {
            assert_eq!(PinName::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "a b",
            "ü",
            &"n".repeat(MAX_NAME_LEN + 1),
        ] {
            let error = PinName::parse(bad).unwrap_err();
            assert!(matches!(&error, PinError::InvalidName { name } if name == bad));
        }
    }

    #[test]
    fn a_pin_reads_back_as_written() {
        let path = StorePath::from_absolute_path(PATH).unwrap();
        let text = body(&path);
        assert_eq!(text, format!("StorePath: {PATH}\n"));
        let pin = parse("release", text.as_bytes()).unwrap();
        assert_eq!(pin.path, path);
        assert_eq!(pin.name.key(), "pins/release");
        let with_more = format!("Comment: later fields are ignored\nStorePath:  {PATH}\n");
        assert_eq!(parse("release", with_more.as_bytes()).unwrap().path, path);
    }

    #[test]
    fn unreadable_pins_name_the_problem() {
        for (body, reason) in [
            (&b"Path: /nix/store/x\n"[..], "no 'StorePath:' line"),
            (b"StorePath: /tmp/x\n", "StorePath:"),
            (b"\xff\xfe", "not UTF-8"),
        ] {
            let error = parse("r", body).unwrap_err().to_string();
            assert!(
                error.contains("pins/r") && error.contains(reason),
                "{error}"
            );
        }
    }

    #[test]
    fn only_direct_children_of_pins_are_pins() {
        assert_eq!(name_of_key("pins/release"), Some("release"));
        assert_eq!(name_of_key("pins/a/b"), None);
        assert_eq!(name_of_key("pins/"), None);
        assert_eq!(name_of_key("pins/.hidden"), None);
        assert_eq!(name_of_key("other/release"), None);
    }
}

#[cfg(test)]
mod protocol_tests {
    //! Rule P1 on a directory cache, in real time (the settle is 5 s).

    use super::*;
    use crate::format::hash::Sha256;
    use crate::sink::file::FileSink;

    fn store_path(name: &str) -> StorePath {
        StorePath::from_basename(&format!("9jm1vj6j3ixsz2x5s77jxchbljjfn6s{name}-p")).unwrap()
    }

    fn add(dir: &std::path::Path, name: &str, references: &[&str]) {
        let narinfo = NarInfo {
            store_path: store_path(name),
            url: format!("nar/{name}.nar"),
            compression: "none".to_owned(),
            file_hash: None,
            file_size: None,
            nar_hash: Sha256::digest(name),
            nar_size: 1,
            references: references.iter().map(|r| store_path(r)).collect(),
            deriver: None,
            system: None,
            signatures: Vec::new(),
            ca: None,
        };
        std::fs::create_dir_all(dir.join("nar")).unwrap();
        std::fs::write(dir.join(format!("nar/{name}.nar")), "nar").unwrap();
        std::fs::write(
            dir.join(layout::narinfo_key(&store_path(name))),
            narinfo.to_string(),
        )
        .unwrap();
    }

    #[tokio::test]
    async fn a_closure_collected_while_it_is_pinned_puts_the_previous_pin_back() {
        let dir = tempfile::tempdir().unwrap();
        add(dir.path(), "a", &[]);
        add(dir.path(), "b", &["a"]);
        add(dir.path(), "c", &[]);
        let sink = Sink::File(FileSink::open(dir.path()).unwrap());
        let name = PinName::parse("stable").unwrap();
        let off = Upstream::off();
        assert_eq!(
            pin(&sink, &name, &store_path("c"), &off).await.unwrap(),
            None
        );
        let before = std::fs::read(dir.path().join("pins/stable")).unwrap();
        // A collection deletes a's narinfo while b is being pinned.
        let collector = async {
            tokio::time::sleep(PIN_SETTLE / 2).await;
            std::fs::remove_file(dir.path().join(layout::narinfo_key(&store_path("a")))).unwrap();
        };
        let b = store_path("b");
        let (pinned, ()) = tokio::join!(pin(&sink, &name, &b, &off), collector);
        let error = pinned.unwrap_err();
        assert!(
            matches!(&error, PinError::CollectedMeanwhile { gap: Gap::NoNarInfo { path }, .. } if *path == store_path("a").to_absolute()),
            "{error}"
        );
        assert_eq!(
            std::fs::read(dir.path().join("pins/stable")).unwrap(),
            before
        );

        let fresh = PinName::parse("fresh").unwrap();
        let error = pin(&sink, &fresh, &store_path("b"), &off)
            .await
            .unwrap_err();
        assert!(matches!(error, PinError::NotWhole { .. }), "{error}");
        assert!(!dir.path().join("pins/fresh").exists());
    }
}
