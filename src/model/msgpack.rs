//! MessagePack decoding for everything Beacon reads that another process wrote: server-RPC
//! frames and bodies, Raft log entries, proposals and snapshots.
//!
//! `rmp_serde` bounds nesting at 1,024 levels, but a level of an ignored unknown map field costs
//! a few KiB of stack in a debug build, so 1,024 nested maps overflow the 2 MiB stack of a tokio
//! worker, and the process aborts (found by `tests/fuzz_corpus.rs`). Beacon's own messages nest
//! fewer than 16 levels; [`MAX_DEPTH`] leaves room and refuses anything deeper as malformed.

use std::io::Read;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Deepest nesting of arrays, maps and extension values a decode accepts.
pub const MAX_DEPTH: usize = 64;

/// Decodes one MessagePack value from `bytes`; nesting beyond [`MAX_DEPTH`] is an error
/// (`DepthLimitExceeded`), as is any other malformed input.
pub fn from_slice<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DEPTH);
    T::deserialize(&mut de)
}

/// [`from_slice`] from a reader (a streamed snapshot).
pub fn from_read<R: Read, T: DeserializeOwned>(reader: R) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::new(reader);
    de.set_max_depth(MAX_DEPTH);
    T::deserialize(&mut de)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_past_the_limit_is_refused_and_within_it_decodes() {
        let nested = |depth: usize| {
            let mut bytes = vec![0x91; depth]; // a one-element array, `depth` times
            bytes.push(0x01);
            bytes
        };
        type Deep = serde::de::IgnoredAny;
        assert!(from_slice::<Deep>(&nested(MAX_DEPTH - 1)).is_ok());
        assert!(from_read::<_, Deep>(&nested(MAX_DEPTH - 1)[..]).is_ok());
        for bytes in [nested(MAX_DEPTH + 1), nested(100_000)] {
            let err = from_slice::<Deep>(&bytes).unwrap_err();
            assert!(
                matches!(err, rmp_serde::decode::Error::DepthLimitExceeded),
                "{err}"
            );
            assert!(from_read::<_, Deep>(&bytes[..]).is_err());
        }
    }
}
