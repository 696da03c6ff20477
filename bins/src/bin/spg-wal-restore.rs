//! `spg-wal-restore wal-restore <url> <file> <dest>`: the `restore_command` computes run. It does
//! what `spg wal-restore` does in a binary that links almost nothing, because PostgreSQL runs it
//! once per WAL file it looks for and every millisecond of its start is on a wake's path.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.as_slice() {
        [_, cmd, url, file, dest] if cmd == "wal-restore" => {
            spg::wal_restore_exit(url, file, std::path::Path::new(dest))
        }
        _ => {
            eprintln!("usage: spg-wal-restore wal-restore <url> <file> <dest>");
            std::process::exit(126)
        }
    }
}
