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

/// Read a first packet (length-prefixed, no type byte), bounded by `MAX_STARTUP_PACKET`.
/// Returns the whole packet including its length.
pub async fn read_startup_packet<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, GatewayError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .await
        .map_err(|e| eof_as_truncated(e, "the startup packet"))?;
    let n = u32::from_be_bytes(len) as usize;
    if !(8..=MAX_STARTUP_PACKET).contains(&n) {
        return Err(GatewayError::Protocol(format!(
            "invalid length of startup packet ({n} bytes)"
        )));
    }
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
