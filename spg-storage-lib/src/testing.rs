//! Test tooling (feature `testing`): a real S3-protocol server (s3s over a directory) on a
//! loopback address.

use std::net::IpAddr;
use std::path::Path;

/// The server's access key.
pub const S3_ACCESS_KEY: &str = "spg-test-access";
/// The server's secret key.
pub const S3_SECRET_KEY: &str = "spg-test-secret";

/// An S3-protocol server serving buckets from a directory, on a port the OS picked; stops
/// when dropped.
pub struct S3Server {
    /// `http://host:port`.
    pub endpoint: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl S3Server {
    /// Serve `root` (with bucket `bucket` created) on `host`, with [`S3_ACCESS_KEY`] and
    /// [`S3_SECRET_KEY`].
    pub async fn start(root: &Path, bucket: &str, host: IpAddr) -> std::io::Result<S3Server> {
        std::fs::create_dir_all(root.join(bucket))?;
        let fs =
            s3s_fs::FileSystem::new(root).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(
            S3_ACCESS_KEY,
            S3_SECRET_KEY,
        ));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind((host, 0)).await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let service = service.clone();
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                    .await;
                });
            }
        });
        Ok(S3Server { endpoint, task })
    }
}
