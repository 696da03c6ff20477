//! Relaying a session's bytes between client and compute. Client-to-compute traffic passes a
//! [`FrontendFramer`] so that malformed or oversized messages end the session.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::proto::framer::FrontendFramer;
use crate::stream::ClientStream;
use crate::GatewayError;

const BUF: usize = 32 * 1024;

/// How a relayed session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// The client sent `Terminate` or closed its side.
    Client,
    /// The compute closed the connection (shutdown, crash, admin termination).
    Backend,
}

/// Relay until one side ends. On a client protocol violation returns the error with the client
/// stream so the caller can report it.
pub async fn relay(
    client: &mut ClientStream,
    backend: TcpStream,
    max_message: usize,
) -> Result<RelayEnd, GatewayError> {
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut br, mut bw) = backend.into_split();

    let c2s = async {
        let mut framer = FrontendFramer::new(max_message);
        let mut buf = vec![0u8; BUF];
        loop {
            let n = cr.read(&mut buf).await?;
            if n == 0 {
                return Ok(RelayEnd::Client);
            }
            let ev = framer.feed(&buf[..n])?;
            bw.write_all(&buf[..n]).await?;
            if ev.terminate {
                return Ok::<_, GatewayError>(RelayEnd::Client);
            }
        }
    };
    let s2c = async {
        let mut buf = vec![0u8; BUF];
        loop {
            let n = br.read(&mut buf).await?;
            if n == 0 {
                cw.flush().await?;
                return Ok::<_, GatewayError>(RelayEnd::Backend);
            }
            cw.write_all(&buf[..n]).await?;
        }
    };
    tokio::select! {
        r = c2s => r,
        r = s2c => r,
    }
}
