//! The sample source server `p2c demo` builds when no `--source` is given.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

/// A small Debian-like server with two NICs, IPv6, several file kinds and owners.
pub fn build_sample(root: &Path) -> std::io::Result<()> {
    let w = |p: &str, data: &str| -> std::io::Result<()> {
        let path = root.join(p);
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(path, data)
    };
    std::fs::create_dir_all(root)?;
    w(
        "etc/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nID=debian\n",
    )?;
    w("etc/debian_version", "12.5\n")?;
    w("etc/hostname", "web01\n")?;
    w("etc/hosts", "127.0.0.1 localhost\n192.0.2.10 web01.example.com web01\n")?;
    w("etc/resolv.conf", "search example.com\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n")?;
    w(
        "etc/network/interfaces",
        "auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet static\n    address 192.0.2.10/24\n    gateway 192.0.2.1\n\niface eth0 inet6 static\n    address 2001:db8::10/64\n    gateway 2001:db8::1\n\nauto eth0:1\niface eth0:1 inet static\n    address 192.0.2.11/24\n\nauto eth1\niface eth1 inet static\n    address 198.51.100.7/24\n",
    )?;
    w(
        "etc/fstab",
        "UUID=0a1b2c3d-1111-2222-3333-444455556666 / ext4 errors=remount-ro 0 1\nUUID=0a1b2c3d-7777-8888-9999-000011112222 /home ext4 defaults,usrquota 0 2\nUUID=0a1b2c3d-aaaa-bbbb-cccc-ddddeeeeffff none swap sw 0 0\nproc /proc proc defaults 0 0\n",
    )?;
    w(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n",
    )?;
    w("etc/group", "root:x:0:\nalice:x:1000:\nwww-data:x:33:\n")?;
    w("etc/motd", "This server was moved into a container by p2c.\n")?;
    w("srv/www/index.html", "<html><body><h1>web01</h1></body></html>\n")?;
    w("var/log/app.log", &"2026-11-25 request served\n".repeat(2000))?;
    w("home/alice/notes.txt", "remember the milk\n")?;
    w("usr/local/bin/hello", "#!/bin/sh\necho hello from web01\n")?;
    std::fs::set_permissions(root.join("usr/local/bin/hello"), std::fs::Permissions::from_mode(0o755))?;
    w("usr/local/bin/suid-helper", "#!/bin/sh\nid\n")?;
    std::fs::set_permissions(
        root.join("usr/local/bin/suid-helper"),
        std::fs::Permissions::from_mode(0o4755),
    )?;
    let mut blob = Vec::with_capacity(3 << 20);
    let mut x: u64 = 0x9e3779b97f4a7c15;
    while blob.len() < 3 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        blob.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::create_dir_all(root.join("opt/app"))?;
    std::fs::write(root.join("opt/app/data.bin"), &blob)?;
    std::fs::hard_link(root.join("opt/app/data.bin"), root.join("opt/app/data.bin.hardlink"))?;
    let sparse = std::fs::File::create(root.join("opt/app/sparse.img"))?;
    sparse.set_len(64 << 20)?;
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"header", 0)?;
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"trailer", (64 << 20) - 7)?;
    symlink("../share/doc", root.join("usr/local/doc"))?;
    std::fs::create_dir_all(root.join("usr/share/doc"))?;
    for d in ["proc", "sys", "dev", "run", "tmp", "root", "boot"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    let _ = nix::unistd::mkfifo(&root.join("run/initctl"), nix::sys::stat::Mode::from_bits_truncate(0o600));
    if rustix::process::geteuid().is_root() {
        let _ = std::os::unix::fs::chown(root.join("home/alice"), Some(1000), Some(1000));
        let _ = std::os::unix::fs::chown(root.join("home/alice/notes.txt"), Some(1000), Some(1000));
        let _ = std::os::unix::fs::chown(root.join("srv/www/index.html"), Some(33), Some(33));
        let _ = rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("dev/null"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        );
    }
    Ok(())
}
