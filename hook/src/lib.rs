//! The wire protocol between `narpush-hook` (and the `narpush` CLI) and the narpush daemon.
//!
//! It lives in the hook crate because the hook must stay std-only: the daemon depends on this
//! crate and reuses the same encoder and parser, so the two sides cannot drift apart.
//! The protocol arrives with the daemon; until then this crate holds only the hook binary.
