//! The image conformance suite on every backend: local filesystem, in-memory, and S3 against a
//! real S3-protocol server (s3s-fs, in-process, on a loopback port the OS picks).

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::memory::InMemory;
use spg_storage_lib::image::{conformance, ImageStore, ObjectRepo};
use spg_storage_lib::pageserver::{Pageserver, PageserverConfig};
use spg_storage_lib::DurableLocalStore;

#[tokio::test]
async fn durable_local_filesystem() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("objects");
    let raw = ObjectRepo::new(Arc::new(DurableLocalStore::open(&root).unwrap()), "images");
    let store = ImageStore::with_repo(Arc::new(raw.clone()));
    conformance::run_all(&store, &raw, tmp.path()).await;
}

#[tokio::test]
async fn in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = ObjectRepo::new(Arc::new(InMemory::new()), "");
    let store = ImageStore::with_repo(Arc::new(raw.clone()));
    conformance::run_all(&store, &raw, tmp.path()).await;
}

#[tokio::test]
async fn pageserver_in_front_of_local_filesystem() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("objects");
    let raw = ObjectRepo::new(Arc::new(DurableLocalStore::open(&root).unwrap()), "images");
    let ps = Pageserver::open(
        raw.clone(),
        &PageserverConfig::new(tmp.path().join("cache")),
    )
    .unwrap();
    let store = ImageStore::with_repo(Arc::new(ps));
    conformance::run_all(&store, &raw, tmp.path()).await;
}

const ACCESS_KEY: &str = spg_storage_lib::testing::S3_ACCESS_KEY;
const SECRET_KEY: &str = spg_storage_lib::testing::S3_SECRET_KEY;

async fn s3_server(root: &std::path::Path, bucket: &str) -> spg_storage_lib::testing::S3Server {
    spg_storage_lib::testing::S3Server::start(root, bucket, [127, 0, 0, 1].into())
        .await
        .unwrap()
}

#[tokio::test]
async fn s3_on_a_real_s3_protocol_server() {
    let tmp = tempfile::tempdir().unwrap();
    let server = s3_server(&tmp.path().join("s3"), "spg-images").await;
    let s3 = AmazonS3Builder::new()
        .with_endpoint(&server.endpoint)
        .with_allow_http(true)
        .with_bucket_name("spg-images")
        .with_region("us-east-1")
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .build()
        .unwrap();
    let raw = ObjectRepo::new(Arc::new(s3), "images");
    let store = ImageStore::with_repo(Arc::new(raw.clone()));
    conformance::run_all(&store, &raw, tmp.path()).await;
}

/// Object storage given as a URL: `file://` and `s3://bucket/prefix` (configured from the AWS
/// environment variables, here against the S3-protocol server), and clear errors otherwise.
#[tokio::test]
async fn object_storage_urls() {
    use object_store::{path::Path as ObjPath, ObjectStore, PutPayload};
    let tmp = tempfile::tempdir().unwrap();
    let server = s3_server(&tmp.path().join("s3"), "spg-url").await;
    // Only this test reads these (the others configure their S3 client explicitly).
    std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    std::env::set_var("AWS_ENDPOINT_URL", &server.endpoint);
    let s3 = spg_storage_lib::open_object_store("s3://spg-url/tenant-a/objects").unwrap();
    let local_dir = tmp.path().join("local");
    let local =
        spg_storage_lib::open_object_store(&format!("file://{}", local_dir.display())).unwrap();
    for store in [&s3, &local] {
        let key = ObjPath::from("images/x/manifest");
        store
            .put(&key, PutPayload::from_static(b"hello"))
            .await
            .unwrap();
        let got = store.get(&key).await.unwrap().bytes().await.unwrap();
        assert_eq!(&got[..], b"hello");
    }
    assert!(
        tmp.path()
            .join("s3/spg-url/tenant-a/objects/images/x/manifest")
            .exists(),
        "the prefix of the URL is where objects go"
    );
    assert!(local_dir.join("images/x/manifest").exists());
    for (bad, says) in [
        ("ftp://host/x", "unknown scheme"),
        ("s3:///prefix", "expected s3://bucket"),
        ("not a url", "object storage URL"),
    ] {
        let e = spg_storage_lib::open_object_store(bad)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
    std::env::set_var("AWS_ENDPOINT_URL", "http://198.51.100.7:9000");
    let e = spg_storage_lib::open_object_store("s3://spg-url")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("loopback"), "{e}");
    std::env::remove_var("AWS_ENDPOINT_URL");
}
