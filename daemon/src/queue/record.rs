//! The stored form of a queue [`Entry`]: JSON, with store paths as absolute path strings
//! and sources by name, parsed back into typed values when read (a record that does not parse
//! is a [`QueueError::Corrupt`] naming its key).

use serde::{Deserialize, Serialize};

use super::{NewPath, QueueError};
use crate::format::realisation::Realisation;
use crate::format::store_path::StorePath;
use narpush_protocol::Source;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Uploading,
    Done,
    Failed,
    /// Not uploaded, by the push filters: finished, with [`Entry::skipped`] saying why.
    Skipped,
}

impl State {
    /// Nothing more is owed for the path: it is in the cache (`done`), or the push filters
    /// keep it out (`skipped`). Such entries are pruned after a while, and hold no GC root.
    pub fn is_finished(self) -> bool {
        matches!(self, State::Done | State::Skipped)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(with = "text::store_path")]
    pub path: StorePath,
    pub state: State,
    pub attempts: u32,
    pub next_attempt_ms: u64,
    pub last_error: Option<String>,
    pub arrived_ms: u64,
    #[serde(with = "text::source")]
    pub source: Source,
    #[serde(with = "text::optional_store_path")]
    pub drv: Option<StorePath>,
    pub updated_ms: u64,
    /// Realisations to publish after the path (content-addressed derivations), each as its
    /// `.doi` JSON; absent in records written before realisations were published.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "text::realisations"
    )]
    pub realisations: Vec<Realisation>,
    /// Why a `skipped` entry is (absent otherwise, and in records older than push filters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<Box<SkipRecord>>,
}

/// A skip as the queue keeps it: the reason's kind (one of
/// [`crate::filter::SKIP_KINDS`]) and its text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipRecord {
    pub kind: String,
    pub reason: String,
}

impl Entry {
    /// A path as it enters the queue: pending now, never tried, no history.
    pub fn fresh(item: &NewPath, now: u64) -> Entry {
        Entry {
            path: item.path.clone(),
            state: State::Pending,
            attempts: 0,
            next_attempt_ms: now,
            last_error: None,
            arrived_ms: now,
            source: item.source,
            drv: item.drv.clone(),
            updated_ms: now,
            realisations: item.realisations.clone(),
            skipped: None,
        }
    }
}

/// A record that does not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptRecord {
    pub key: String,
    pub reason: String,
}

/// The record's bytes; an entry that cannot be encoded is an error, never an empty record.
pub(super) fn encode(entry: &Entry) -> Result<Vec<u8>, QueueError> {
    serde_json::to_vec(entry).map_err(|source| QueueError::Encode {
        key: entry.path.to_absolute(),
        source,
    })
}

pub(super) fn decode(key: &str, bytes: &[u8]) -> Result<Entry, QueueError> {
    serde_json::from_slice(bytes).map_err(|e| QueueError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// Typed fields as the text they are stored as: store paths as absolute paths, sources by name.
pub(super) mod text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub mod store_path {
        use super::*;
        use crate::format::store_path::StorePath;

        pub fn serialize<S: Serializer>(path: &StorePath, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&path.to_absolute())
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<StorePath, D::Error> {
            let text = String::deserialize(d)?;
            StorePath::from_absolute_path(&text).map_err(serde::de::Error::custom)
        }
    }

    pub mod optional_store_path {
        use super::*;
        use crate::format::store_path::StorePath;

        pub fn serialize<S: Serializer>(path: &Option<StorePath>, s: S) -> Result<S::Ok, S::Error> {
            match path {
                Some(path) => s.serialize_some(&path.to_absolute()),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<StorePath>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|text| StorePath::from_absolute_path(&text).map_err(serde::de::Error::custom))
                .transpose()
        }
    }

    pub mod realisations {
        use super::*;
        use crate::format::realisation::Realisation;
        use serde::ser::SerializeSeq;

        pub fn serialize<S: Serializer>(list: &[Realisation], s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(list.len()))?;
            for realisation in list {
                seq.serialize_element(&realisation.to_queue_json())?;
            }
            seq.end()
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Realisation>, D::Error> {
            Vec::<String>::deserialize(d)?
                .iter()
                .map(|json| {
                    Realisation::from_json(json.as_bytes()).map_err(serde::de::Error::custom)
                })
                .collect()
        }
    }

    pub mod source {
        use super::*;
        use narpush_protocol::Source;

        pub fn serialize<S: Serializer>(source: &Source, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(source.as_str())
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Source, D::Error> {
            let text = String::deserialize(d)?;
            Source::parse(&text)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown source '{text}'")))
        }
    }
}
