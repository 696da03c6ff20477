//! A backend connection's socket with readiness managed by hand: after a read that did not fill
//! the buffer the socket is known to be drained, so its readiness is cleared at once instead of
//! learning it from one more `recv` that fails with `EAGAIN` (on every transaction, twice).

use std::io::{self, Write};

use bytes::{Buf, BytesMut};
use std::os::fd::{AsRawFd, RawFd};
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;

/// Non-blocking TCP socket registered with the runtime.
#[derive(Debug)]
pub struct BackendSocket {
    fd: AsyncFd<std::net::TcpStream>,
}

impl BackendSocket {
    /// Take over a connected socket.
    pub fn new(stream: tokio::net::TcpStream) -> io::Result<BackendSocket> {
        let std = stream.into_std()?;
        std.set_nonblocking(true)?;
        // SAFETY: the `TcpStream` owns a valid, open descriptor; it stays inside the `AsyncFd`
        // (never replaced or closed) until the `AsyncFd` is dropped, which deregisters it first.
        let fd = unsafe { AsyncFd::register(std) }.map_err(io::Error::from)?;
        Ok(BackendSocket { fd })
    }

    /// Peer address.
    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.fd.get_ref().peer_addr()
    }

    /// Wait until readable, then read once into `buf` (reserving room). `Ok(0)`: end of stream.
    /// Cancel-safe: nothing is read unless the call returns.
    pub async fn read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_buf(cx, buf)).await
    }

    /// Poll form of [`BackendSocket::read_buf`]: read once into `buf` if the socket is readable,
    /// else register `cx` for its next readiness. The wait uses the socket's one reader slot, so
    /// a caller that polls several sockets in turn registers and drops nothing per poll.
    pub fn poll_read_buf(
        &self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(32 * 1024);
            }
            let room = buf.capacity() - buf.len();
            match recv_into(self.fd.as_raw_fd(), buf) {
                Ok(n) => {
                    if n > 0 && n < room {
                        // Drained: wait for the next readiness event without another recv.
                        guard.clear_ready();
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Write as much of `out` as the socket takes now, without waiting; consumed bytes are
    /// removed from `out`.
    pub fn write_now(&self, out: &mut BytesMut) -> io::Result<()> {
        while !out.is_empty() {
            match self.fd.get_ref().write(out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => out.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Wait until writable, then write some of `out`. Cancel-safe.
    pub async fn write_some(&self, out: &mut BytesMut) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_write_some(cx, out)).await
    }

    /// Poll form of [`BackendSocket::write_some`] (the socket's one writer slot holds the wait).
    pub fn poll_write_some(
        &self,
        cx: &mut Context<'_>,
        out: &mut BytesMut,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|inner| inner.get_ref().write(out)) {
                Ok(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(Ok(n)) => {
                    out.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    /// Write all of `data`.
    pub async fn write_all(&self, data: &[u8]) -> io::Result<()> {
        let mut out = BytesMut::from(data);
        while !out.is_empty() {
            self.write_now(&mut out)?;
            if !out.is_empty() {
                self.write_some(&mut out).await?;
            }
        }
        Ok(())
    }

    /// Whether the reactor has seen the socket readable since its last drained read: for an
    /// idle connection, the backend closed it or sent something unasked. No system call.
    pub fn seen_readable(&self) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        self.fd.poll_read_ready(&mut cx).is_ready()
    }

    /// Whether the peer closed the connection or sent something unasked (a compute shutting
    /// down sends an error, then closes), checked without waiting.
    pub fn closed_or_talking(&self) -> bool {
        let mut probe = [0u8; 1];
        !matches!(self.fd.get_ref().peek(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// `recv(2)` into the spare capacity of `buf` (no zero-filling), growing its length by what
/// arrived.
pub(crate) fn recv_into(fd: RawFd, buf: &mut BytesMut) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    // SAFETY: `recv` writes at most `spare.len()` bytes into memory `buf` owns and reports how
    // many; exactly those become initialised and part of `buf` below.
    let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the kernel initialised `n` bytes past the current length.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}
