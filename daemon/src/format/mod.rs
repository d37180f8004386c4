//! The Nix wire formats narpush produces and consumes, with no I/O policy in them.
//!
//! Every module here is a pure translation between Rust values and the exact bytes Nix
//! reads or writes: nothing in this group knows about tokio, S3, configuration or the
//! upload queue, so each format can be tested against golden bytes from real Nix in
//! isolation. The only module that touches the filesystem is [`nar`], and only to read
//! the tree it serializes into a caller-supplied [`std::io::Write`]; [`signing`] reads a
//! key file in [`signing::SigningKey::load`] because the permission check belongs next to
//! the parser.
//!
//! Layers, lowest first:
//!
//! - [`nixbase32`]: Nix's own base-32 (reversed bit order, no padding, its own alphabet).
//! - [`hash`]: the validated [`hash::Sha256`] digest and its textual encodings, plus a
//!   hashing writer that computes NarHash/NarSize or FileHash/FileSize while streaming.
//! - [`store_path`]: the validated [`store_path::StorePath`] newtype.
//! - [`nar`]: a streaming NAR serializer byte-identical to `nix-store --dump`.
//! - [`listing`]: the `.ls` JSON listing of a NAR, as Nix's cache writer produces it.
//! - [`compression`]: the compression methods a narinfo names, and their object extensions.
//! - [`narinfo`]: the `.narinfo` text format and the signature fingerprint.
//! - [`signing`]: Ed25519 secret and public keys in Nix's `name:base64` format.
//! - [`realisation`]: the realisations of content-addressed derivation outputs and their
//!   signature fingerprint.
//! - [`build_trace`]: Nix 2.35's build trace entries (`build-trace-v2/`), keyed by resolved
//!   derivation, with structured signatures.
//! - [`derivation`]: the outputs and input derivations of a `.drv`.
//!
//! The reference for every rule enforced here is `reference/nix-binary-cache-format.md`
//! (§1 NAR, §2 hashes and store paths, §3 narinfo, §4 signatures and keys).

pub mod build_trace;
pub mod compression;
pub mod derivation;
pub mod hash;
pub mod listing;
pub mod nar;
pub mod narinfo;
pub mod nixbase32;
pub mod realisation;
pub mod signing;
pub mod store_path;
