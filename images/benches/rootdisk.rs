//! Root disk benchmark: a generated ~100 MB image (many small files and a
//! few large ones) imported as a directory, then unpack + ext4 build, then
//! the cached path. Prints the figures; run as root (`cargo bench -p
//! bulkhead-images --bench rootdisk`).

use std::io::Write;
use std::time::Instant;

use bulkhead_images::rootdisk::{self, Format};
use bulkhead_images::store::{import, Store};

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("rootdisk bench: needs root (unpacking keeps owners)");
        std::process::exit(1);
    }
    let work = tempfile::tempdir().expect("temp dir");
    let src = work.path().join("src");
    // 6000 small files of 1-8 KiB in 60 directories, three 25 MiB files.
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut total = 0u64;
    for d in 0..60 {
        let dir = src.join(format!("usr/share/d{d}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for f in 0..100 {
            let len = 1024 + (next() % 7168) as usize;
            let data: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
            std::fs::write(dir.join(format!("f{f}")), &data).expect("write");
            total += len as u64;
        }
    }
    std::fs::create_dir_all(src.join("opt")).expect("mkdir");
    for i in 0..3 {
        let mut f = std::fs::File::create(src.join(format!("opt/big{i}"))).expect("create");
        let chunk: Vec<u8> = (0..1 << 20).map(|_| next().to_le_bytes()[0]).collect();
        for _ in 0..25 {
            f.write_all(&chunk).expect("write");
        }
        total += 25 << 20;
    }
    let store = Store::open(work.path().join("store")).expect("store");
    let t = Instant::now();
    let imported = import::import_dir(&store, &src, "bench").expect("import");
    let import_time = t.elapsed();
    let t = Instant::now();
    let disk =
        rootdisk::build(&store, &imported.manifest, Format::Ext4, &mut |_| {}).expect("build");
    let build_time = t.elapsed();
    let t = Instant::now();
    let again =
        rootdisk::build(&store, &imported.manifest, Format::Ext4, &mut |_| {}).expect("cached");
    let cached_time = t.elapsed();
    assert_eq!(disk, again);
    let disk_size = std::fs::metadata(&disk).map(|m| m.len()).unwrap_or(0);
    println!("image: {} MiB in 6003 files", total >> 20);
    println!("import-dir (tar + hash + store): {import_time:.2?}");
    println!(
        "unpack + mkfs.ext4 -d:           {build_time:.2?}  (disk {} MiB)",
        disk_size >> 20
    );
    println!("cached disk:                     {cached_time:.2?}");
}
