//! The only module allowed `unsafe`: thin wrappers over syscalls the safe crates lack.
//! Every unsafe block carries a `// SAFETY:` comment.
#![allow(unsafe_code)]

pub mod btrfs;
pub mod mount;
pub mod process;
pub mod seccomp;
