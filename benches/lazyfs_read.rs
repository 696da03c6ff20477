//! lazyfs read cost: a 256 MiB relation-like file read in 8 KiB blocks (PostgreSQL's page size)
//! through a lazyfs mount, first while its chunks are fetched, then once every chunk is local,
//! next to the same reads straight from the local backing file (the anchor), in one run. The
//! kernel's page cache is dropped before each cold pass (as root); each is followed by a pass
//! over the warm page cache (lazyfs keeps the kernel's cache of its files across opens).
//!
//! `cargo bench -p spg-benches --bench lazyfs_read` (size: `SPG_BENCH_FILE_MB`, default 256).

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::memory::InMemory;
use spg_core::{DatabaseName, Generation, Lsn, TimelineId};
use spg_storage_lib::image::{ImageId, ImageStore, DEFAULT_CHUNK_SIZE};
use spg_storage_lib::lazyfs::{self, ImageChunks, LazyTree};

const BLOCK: usize = 8192;

/// Drop the kernel's page cache (written back first); false when not permitted.
fn drop_caches() -> bool {
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", b"3").is_ok()
}

fn sequential(path: &Path, size: u64) -> Duration {
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; BLOCK];
    let t0 = Instant::now();
    let mut off = 0;
    while off < size {
        f.read_exact_at(&mut buf, off).unwrap();
        off += BLOCK as u64;
    }
    t0.elapsed()
}

fn random(path: &Path, size: u64, n: usize) -> Duration {
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; BLOCK];
    let blocks = size / BLOCK as u64;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let t0 = Instant::now();
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f.read_exact_at(&mut buf, (x % blocks) * BLOCK as u64)
            .unwrap();
    }
    t0.elapsed()
}

fn main() {
    let mb: u64 = std::env::var("SPG_BENCH_FILE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let size = mb << 20;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let tmp = std::env::temp_dir().join(format!("spg-lazyfs-bench-{}", std::process::id()));
    let src = tmp.join("src");
    std::fs::create_dir_all(src.join("base/1")).unwrap();
    // Incompressible, never-repeating bytes: every chunk is its own object.
    let mut data = vec![0u8; size as usize];
    let mut x: u64 = 1;
    for w in data.chunks_mut(8) {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
    }
    std::fs::write(src.join("base/1/16384"), &data).unwrap();
    drop(data);
    let store = ImageStore::new(Arc::new(InMemory::new()), "");
    let db = DatabaseName::new("bench").unwrap();
    let id = ImageId {
        lsn: Lsn(0x100),
        timeline: TimelineId(2),
        generation: Generation(1),
    };
    let (m, _) = rt
        .block_on(store.capture(&db, &src, id, None, DEFAULT_CHUNK_SIZE, &|_| true))
        .unwrap();
    let m = Arc::new(m);
    let backing = tmp.join("backing");
    let mnt = tmp.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let source = Arc::new(ImageChunks::new(store, Arc::clone(&m), rt.handle().clone()));
    let tree = Arc::new(LazyTree::new(&m, &backing, source).unwrap());
    let mount = match lazyfs::mount(Arc::clone(&tree), &mnt, 0, 0) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("FUSE unavailable ({e}): nothing to measure");
            return;
        }
    };
    let through = mnt.join("base/1/16384");
    let mbps = |d: Duration| size as f64 / 1e6 / d.as_secs_f64();
    let iops = |n: usize, d: Duration| n as f64 / d.as_secs_f64();

    let fetching = sequential(&through, size);
    let stats = tree.stats();
    let fetched = stats
        .bytes_fetched
        .load(std::sync::atomic::Ordering::Relaxed);
    let local_file = std::fs::read_dir(&backing)
        .unwrap()
        .filter_map(|e| e.ok())
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .unwrap()
        .path();
    let dropped = drop_caches();
    let lazy_cold = sequential(&through, size);
    let lazy_warm = sequential(&through, size);
    drop_caches();
    let direct_cold = sequential(&local_file, size);
    let direct_warm = sequential(&local_file, size);
    let n = 20_000;
    drop_caches();
    let lazy_rand = random(&through, size, n);
    drop_caches();
    let direct_rand = random(&local_file, size, n);

    println!();
    println!("lazyfs reads of a {mb} MiB file in 8 KiB blocks (one run, one machine)");
    println!(
        "  first read, chunks fetched (in-memory store): {:>8.0} MB/s  ({:.0} MB fetched)",
        mbps(fetching),
        fetched as f64 / 1e6
    );
    if !dropped {
        println!("  (page cache could not be dropped: the cold passes below are warm)");
    }
    println!(
        "  sequential, all chunks local, cold cache:  lazyfs {:>8.0} MB/s   local file {:>8.0} MB/s   ratio {:.2}",
        mbps(lazy_cold),
        mbps(direct_cold),
        mbps(lazy_cold) / mbps(direct_cold)
    );
    println!(
        "  sequential, all chunks local, warm cache:  lazyfs {:>8.0} MB/s   local file {:>8.0} MB/s   ratio {:.2}",
        mbps(lazy_warm),
        mbps(direct_warm),
        mbps(lazy_warm) / mbps(direct_warm)
    );
    println!(
        "  random 8 KiB, all chunks local, cold:      lazyfs {:>8.0} IOPS      local file {:>8.0} IOPS      ratio {:.2}",
        iops(n, lazy_rand),
        iops(n, direct_rand),
        iops(n, lazy_rand) / iops(n, direct_rand)
    );
    mount.unmount().unwrap();
    let _ = std::fs::remove_dir_all(&tmp);
}
