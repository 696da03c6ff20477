//! Reading whole packets from a stream, with bounds on their size.

use tokio::io::{AsyncRead, AsyncReadExt};

use super::MAX_STARTUP_PACKET;
use crate::GatewayError;

fn eof_as_truncated(e: std::io::Error, what: &'static str) -> GatewayError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        GatewayError::Truncated(what)
    } else {
        GatewayError::Io(e)
    }
}

/// Whether the length a first packet declares (its own four bytes included) is acceptable.
fn check_startup_len(n: usize) -> Result<(), GatewayError> {
    if (8..=MAX_STARTUP_PACKET).contains(&n) {
        Ok(())
    } else {
        Err(GatewayError::Protocol(format!(
            "invalid length of startup packet ({n} bytes)"
        )))
    }
}

/// Whether the length a typed message declares (its own four bytes included) is acceptable for
/// a body of at most `max_body` bytes.
fn check_message_len(len: usize, max_body: usize) -> Result<(), GatewayError> {
    if len < 4 {
        return Err(GatewayError::Protocol(format!(
            "invalid message length {len}"
        )));
    }
    if len - 4 > max_body {
        return Err(GatewayError::MessageTooLarge {
            len: len - 4,
            max: max_body,
        });
    }
    Ok(())
}

/// Read a first packet (length-prefixed, no type byte), bounded by `MAX_STARTUP_PACKET`.
/// Returns the whole packet including its length.
pub async fn read_startup_packet<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, GatewayError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .await
        .map_err(|e| eof_as_truncated(e, "the startup packet"))?;
    let n = u32::from_be_bytes(len) as usize;
    check_startup_len(n)?;
    let mut packet = vec![0u8; n];
    packet[..4].copy_from_slice(&len);
    r.read_exact(&mut packet[4..])
        .await
        .map_err(|e| eof_as_truncated(e, "the startup packet"))?;
    Ok(packet)
}

/// Read one typed message (`tag`, `int32` length, body) whose body is at most `max_body` bytes.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    max_body: usize,
) -> Result<(u8, Vec<u8>), GatewayError> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head)
        .await
        .map_err(|e| eof_as_truncated(e, "a message"))?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    check_message_len(len, max_body)?;
    let mut body = vec![0u8; len - 4];
    r.read_exact(&mut body)
        .await
        .map_err(|e| eof_as_truncated(e, "a message"))?;
    Ok((head[0], body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounds_and_truncation() {
        let mut ok: &[u8] = b"p\0\0\0\x07abc";
        assert_eq!(
            read_message(&mut ok, 10).await.unwrap(),
            (b'p', b"abc".to_vec())
        );
        let mut big: &[u8] = b"p\0\0\x10\x00";
        assert!(matches!(
            read_message(&mut big, 100).await,
            Err(GatewayError::MessageTooLarge { .. })
        ));
        let mut short: &[u8] = b"p\0\0\0\x09ab";
        assert!(matches!(
            read_message(&mut short, 100).await,
            Err(GatewayError::Truncated(_))
        ));
        let mut tiny: &[u8] = b"p\0\0\0\x02";
        assert!(read_message(&mut tiny, 100).await.is_err());
        let mut huge: &[u8] = b"\x7f\xff\xff\xff";
        assert!(read_startup_packet(&mut huge).await.is_err());
    }
}

/// Reads the packets of a client's login through a buffer: one `recv` usually brings a whole
/// packet, where reading its header and its body exactly took two (and a third that found the
/// socket empty). What the client sent past a packet stays buffered ([`PacketReader::leftover`]).
#[derive(Debug, Default)]
pub struct PacketReader {
    buf: bytes::BytesMut,
}

/// Least room offered to one `recv`.
const READ_CHUNK: usize = 512;
/// Most room reserved ahead of bytes that have arrived.
const MAX_READ_AHEAD: usize = 8 * 1024;

impl PacketReader {
    /// A first packet (length-prefixed, no type byte), bounded by `MAX_STARTUP_PACKET`; the
    /// whole packet including its length.
    pub async fn startup_packet<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<Vec<u8>, GatewayError> {
        const WHAT: &str = "the startup packet";
        self.fill(r, 4, WHAT).await?;
        let n = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        check_startup_len(n)?;
        self.fill(r, n, WHAT).await?;
        Ok(self.buf.split_to(n).to_vec())
    }

    /// One typed message (`tag`, `int32` length, body) whose body is at most `max_body` bytes.
    pub async fn message<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        max_body: usize,
    ) -> Result<(u8, Vec<u8>), GatewayError> {
        const WHAT: &str = "a message";
        self.fill(r, 5, WHAT).await?;
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        check_message_len(len, max_body)?;
        self.fill(r, 1 + len, WHAT).await?;
        let m = self.buf.split_to(1 + len);
        Ok((m[0], m[5..].to_vec()))
    }

    /// Whether nothing is buffered (a client may not send anything past an `SSLRequest`
    /// before the TLS handshake: bytes there would be taken as sent over TLS).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// What the client sent past the packets read.
    pub fn leftover(self) -> bytes::BytesMut {
        self.buf
    }

    async fn fill<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        want: usize,
        what: &'static str,
    ) -> Result<(), GatewayError> {
        while self.buf.len() < want {
            // Room for what has a chance to arrive in one read, not for what the peer announced:
            // an unauthenticated client claiming a large packet holds only what it sends.
            self.buf
                .reserve((want - self.buf.len()).clamp(READ_CHUNK, MAX_READ_AHEAD));
            let n = r
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| eof_as_truncated(e, what))?;
            if n == 0 {
                return Err(GatewayError::Truncated(what));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod packet_reader_tests {
    use super::*;

    /// Yields its bytes a few at a time, as a slow client does.
    struct Dribble(Vec<u8>, usize);

    impl AsyncRead for Dribble {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let at = self.1;
            let n = 3.min(self.0.len() - at).min(buf.remaining());
            buf.put_slice(&self.0[at..at + n]);
            self.1 += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn startup() -> Vec<u8> {
        let body = b"\x00\x03\x00\x00user\x00u\x00\x00";
        let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        p.extend_from_slice(body);
        p
    }

    #[tokio::test]
    async fn packets_split_anyhow_come_out_whole_and_the_rest_stays() {
        let mut bytes = startup();
        bytes.extend_from_slice(b"p\x00\x00\x00\x08abcd");
        bytes.extend_from_slice(b"Q\x00\x00\x00\x05x");
        for mut r in [
            Box::new(Dribble(bytes.clone(), 0)) as Box<dyn AsyncRead + Unpin>,
            Box::new(&bytes[..]),
        ] {
            let mut pr = PacketReader::default();
            assert_eq!(pr.startup_packet(&mut r).await.unwrap(), startup());
            assert_eq!(
                pr.message(&mut r, 100).await.unwrap(),
                (b'p', b"abcd".to_vec())
            );
            // The reader may have taken more than it handed out: it is kept.
            let (tag, body) = pr.message(&mut r, 100).await.unwrap();
            assert_eq!((tag, body.len()), (b'Q', 1));
            assert!(pr.leftover().is_empty());
        }
    }

    #[tokio::test]
    async fn short_bad_and_oversized_packets_are_clear_errors() {
        let mut pr = PacketReader::default();
        let cut = &startup()[..6];
        assert!(matches!(
            pr.startup_packet(&mut &cut[..]).await,
            Err(GatewayError::Truncated(_))
        ));
        let mut pr = PacketReader::default();
        let tiny = [0u8, 0, 0, 4];
        assert!(matches!(
            pr.startup_packet(&mut &tiny[..]).await,
            Err(GatewayError::Protocol(_))
        ));
        let mut pr = PacketReader::default();
        let big = b"p\x00\x01\x00\x00";
        assert!(matches!(
            pr.message(&mut &big[..], 100).await,
            Err(GatewayError::MessageTooLarge { .. })
        ));
        let mut pr = PacketReader::default();
        let short_len = b"p\x00\x00\x00\x02";
        assert!(matches!(
            pr.message(&mut &short_len[..], 100).await,
            Err(GatewayError::Protocol(_))
        ));
    }
}
