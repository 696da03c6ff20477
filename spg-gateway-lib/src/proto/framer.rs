//! Checks the client-to-server byte stream of a relayed session message by message, without
//! buffering or copying: it follows message boundaries as bytes pass and stops the session at the
//! first malformed or oversized message.

use crate::GatewayError;

/// Frontend message types of protocol 3.0 after startup.
const FRONTEND_TAGS: &[u8] = b"BCcdDEfFHPpQSX";

/// What the client sent in a chunk, as far as the gateway cares.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FrameEvents {
    /// A `Terminate` message was seen: the client is closing the session.
    pub terminate: bool,
}

/// Incremental validator of frontend messages.
#[derive(Debug, Clone)]
pub struct FrontendFramer {
    max_body: usize,
    /// Header bytes collected so far (tag + length), when inside a header.
    head: [u8; 5],
    head_len: usize,
    /// Body bytes still to pass of the current message.
    remaining: usize,
}

impl FrontendFramer {
    /// A framer accepting message bodies of at most `max_body` bytes.
    pub fn new(max_body: usize) -> Self {
        FrontendFramer {
            max_body,
            head: [0; 5],
            head_len: 0,
            remaining: 0,
        }
    }

    /// Account for `chunk`, the next bytes the client sent.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<FrameEvents, GatewayError> {
        let mut ev = FrameEvents::default();
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(chunk.len());
                self.remaining -= n;
                chunk = &chunk[n..];
                continue;
            }
            let need = 5 - self.head_len;
            let n = need.min(chunk.len());
            self.head[self.head_len..self.head_len + n].copy_from_slice(&chunk[..n]);
            self.head_len += n;
            chunk = &chunk[n..];
            if self.head_len < 5 {
                break;
            }
            self.head_len = 0;
            let tag = self.head[0];
            if !FRONTEND_TAGS.contains(&tag) {
                return Err(GatewayError::Protocol(format!(
                    "invalid frontend message type {tag}"
                )));
            }
            let len = u32::from_be_bytes([self.head[1], self.head[2], self.head[3], self.head[4]])
                as usize;
            if len < 4 {
                return Err(GatewayError::Protocol(format!(
                    "invalid message length {len}"
                )));
            }
            if len - 4 > self.max_body {
                return Err(GatewayError::MessageTooLarge {
                    len: len - 4,
                    max: self.max_body,
                });
            }
            if tag == b'X' {
                ev.terminate = true;
            }
            self.remaining = len - 4;
        }
        Ok(ev)
    }

    /// Whether the stream is between messages (a clean place for it to end).
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0 && self.head_len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn follows_boundaries_and_flags_terminate() {
        let mut stream = msg(b'Q', b"SELECT 1\0");
        stream.extend(msg(b'X', b""));
        let mut f = FrontendFramer::new(100);
        let ev = f.feed(&stream).unwrap();
        assert!(ev.terminate);
        assert!(f.at_boundary());
    }

    #[test]
    fn refuses_bad_streams() {
        let mut f = FrontendFramer::new(100);
        assert!(f.feed(&msg(b'!', b"")).is_err());
        let mut f = FrontendFramer::new(4);
        assert!(matches!(
            f.feed(&msg(b'Q', b"too long")),
            Err(GatewayError::MessageTooLarge { .. })
        ));
        let mut f = FrontendFramer::new(100);
        assert!(f.feed(b"Q\0\0\0\x01").is_err());
    }

    proptest! {
        /// However the stream is cut into chunks, the framer ends at the same boundary.
        #[test]
        fn chunking_does_not_matter(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..8),
            cuts in proptest::collection::vec(1usize..17, 1..40),
        ) {
            let mut stream = Vec::new();
            for b in &bodies { stream.extend(msg(b'd', b)); }
            let mut f = FrontendFramer::new(64);
            let mut rest = &stream[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts[i % cuts.len()].min(rest.len());
                f.feed(&rest[..n]).unwrap();
                rest = &rest[n..];
                i += 1;
            }
            prop_assert!(f.at_boundary());
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut f = FrontendFramer::new(50);
            let _ = f.feed(&bytes);
        }
    }
}
