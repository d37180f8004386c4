//! The upstream cache of a seed (with `--upstream on`): a second bucket of the memory model that
//! the engines ask as they ask `upstream_caches`. It offers some of the base paths (the
//! "compiler" and "libc" every build may depend upon) in one of four ways, drawn per path:
//!
//! - **served**: a narinfo signed by the upstream key and its NAR;
//! - **replayed**: the signed narinfo without its NAR (a cache replaying another's narinfo, or
//!   one that collected the NAR) — serves nothing, so narpush must upload the path;
//! - **foreign**: the NAR and a narinfo signed by a key narpush does not trust;
//! - nothing at all.
//!
//! Only "served" paths may be left out of the bucket: the checker counts them as present.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use narpush::format::hash::Sha256;
use narpush::format::narinfo::NarInfo;
use narpush::format::signing::{SigningKey, VerifyingKey};
use narpush::sink::memory::{Bucket, Faults};
use narpush::store::PathInfo;

use crate::rng::Rng;

pub struct UpstreamCache {
    pub bucket: Arc<Bucket>,
    key: SigningKey,
    foreign_key: SigningKey,
    rng: Rng,
    /// Hash parts of the paths it serves (narinfo signed by its key, and the NAR).
    pub served: BTreeSet<String>,
}

fn key(name: &str, byte: u8) -> SigningKey {
    use base64::Engine as _;
    let key = ed25519_dalek::SigningKey::from_bytes(&[byte; 32]);
    SigningKey::parse(&format!(
        "{name}:{}",
        base64::engine::general_purpose::STANDARD.encode(key.to_keypair_bytes())
    ))
    .expect("a valid key")
}

impl UpstreamCache {
    pub fn new(faults: Faults, seed: u64) -> UpstreamCache {
        UpstreamCache {
            bucket: Bucket::new(faults),
            key: key("upstream-1", 11),
            foreign_key: key("stranger-1", 13),
            rng: Rng::new(seed),
            served: BTreeSet::new(),
        }
    }

    /// The key engines trust for it.
    pub fn public_key(&self) -> VerifyingKey {
        self.key.public_key()
    }

    /// Offers `info` (whose NAR is `nar`) in one of the four ways.
    pub fn offer(&mut self, info: &PathInfo, nar: &Bytes) {
        let way = self.rng.below(100);
        if way >= 90 {
            return;
        }
        let url = format!("nar/upstream-{}.nar", info.path.hash_part());
        let mut narinfo = NarInfo {
            store_path: info.path.clone(),
            url: url.clone(),
            compression: "none".to_owned(),
            file_hash: Some(Sha256::digest(nar)),
            file_size: Some(nar.len() as u64),
            nar_hash: info.nar_hash,
            nar_size: info.nar_size,
            references: info.references.clone(),
            deriver: None,
            system: None,
            signatures: Vec::new(),
            ca: None,
        };
        let signer = if way >= 75 {
            &self.foreign_key
        } else {
            &self.key
        };
        narinfo.add_signature(signer).expect("a signable narinfo");
        self.bucket.insert(
            &format!("{}.narinfo", info.path.hash_part()),
            Bytes::from(narinfo.to_string()),
        );
        let replayed = (40..75).contains(&way);
        if !replayed {
            self.bucket.insert(&url, nar.clone());
        }
        if way < 40 {
            self.served.insert(info.path.hash_part().to_owned());
        }
    }
}
