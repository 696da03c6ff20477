//! The PageStore conformance suite over every PageStore SPG ships: the local-directory store,
//! and the object-storage store reaching its images directly and through a pageserver.

use std::sync::Arc;

use object_store::memory::InMemory;
use spg_storage_lib::image::{ImageStore, ObjectRepo};
use spg_storage_lib::page_store_conformance::run_all;
use spg_storage_lib::pageserver::{Pageserver, PageserverConfig};
use spg_storage_lib::{DurableLocalStore, LocalDirPageStore, ObjectPageStore};

#[tokio::test]
async fn the_local_directory_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    run_all(&LocalDirPageStore::new(dir.path().join("pages"))).await;
}

#[tokio::test]
async fn the_object_storage_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let images = ImageStore::new(Arc::new(InMemory::new()), "images");
    run_all(&ObjectPageStore::new(images, dir.path().join("cache"))).await;
}

#[tokio::test]
async fn the_object_storage_store_conforms_through_a_pageserver_on_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Arc::new(DurableLocalStore::open(dir.path().join("objects")).unwrap());
    let ps = Pageserver::open(
        ObjectRepo::new(objects, "images"),
        &PageserverConfig::new(dir.path().join("pageserver")),
    )
    .unwrap();
    let images = ImageStore::with_repo(Arc::new(ps));
    run_all(&ObjectPageStore::new(images, dir.path().join("cache"))).await;
}
