//! A router served over HTTPS on a loopback port the OS chose, as a daemon serves its API.

use std::path::Path;

use axum::Router;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::tls::TlsMaterial;

/// `router` served over HTTPS on `127.0.0.1` with a certificate from a CA of its own (kept in
/// `tls_dir`); stopped by [`Served::stop`], or when dropped.
pub struct Served {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// The CA (PEM) clients trust.
    pub ca_pem: Vec<u8>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Served {
    /// Serve `router`.
    pub async fn start(router: Router, tls_dir: &Path) -> Served {
        let tls = TlsMaterial::load_or_generate(tls_dir, None, None, None).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let task = tokio::spawn(spg_lifecycle_lib::api::http::serve_https(
            listener,
            tls.https().unwrap(),
            router,
            stop.clone(),
            spg_lifecycle_lib::api::http::HttpLimits::default(),
        ));
        Served {
            url,
            ca_pem: std::fs::read(&tls.ca_file).unwrap(),
            stop,
            task: Some(task),
        }
    }

    /// Stop serving and wait until the server has.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
