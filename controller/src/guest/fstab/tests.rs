use super::*;
use crate::guest::tests::Fixture;

const FSTAB: &str = "\
# /etc/fstab: static file system information.
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
# / was on /dev/sda1 during installation
UUID=0a3407de-014b-458b-b5c1-848e92a327a3 /               ext4    errors=remount-ro 0       1
LABEL=home      /home           xfs     defaults,usrquota 0     2
/dev/mapper/vg0-var /var        ext4    defaults        0       2
# swap was on /dev/sda5 during installation
UUID=d8d6bd6b-2b1a-4c0d-8d6b-2c4b9e3c4f7a none            swap    sw              0       0
/swapfile       none            swap    sw              0       0
/dev/sr0        /media/cdrom0   udf,iso9660 user,noauto 0       0
proc            /proc           proc    defaults        0       0
tmpfs           /tmp            tmpfs   defaults,size=512m 0    0
nas.example:/export/data /mnt/data nfs  defaults,_netdev 0      0
//fs.example/share /mnt/share   cifs    credentials=/etc/cifs.cred 0 0
/srv/www        /var/www        none    bind            0       0
";

const EXPECTED: &str = "\
# /etc/fstab: static file system information.
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
# / was on /dev/sda1 during installation
# swap was on /dev/sda5 during installation
proc            /proc           proc    defaults        0       0
tmpfs           /tmp            tmpfs   defaults,size=512m 0    0
nas.example:/export/data /mnt/data nfs  defaults,_netdev 0      0
//fs.example/share /mnt/share   cifs    credentials=/etc/cifs.cred 0 0
/srv/www        /var/www        none    bind            0       0
";

#[test]
fn local_disks_and_swap_go_pseudo_and_network_stay() {
    let out = rewrite(FSTAB);
    assert_eq!(out.text, EXPECTED);
    assert_eq!(
        out.removed,
        [
            "UUID=0a3407de-014b-458b-b5c1-848e92a327a3 on / (ext4)",
            "LABEL=home on /home (xfs)",
            "/dev/mapper/vg0-var on /var (ext4)",
            "UUID=d8d6bd6b-2b1a-4c0d-8d6b-2c4b9e3c4f7a on none (swap)",
            "/swapfile on none (swap)",
            "/dev/sr0 on /media/cdrom0 (udf,iso9660)",
        ]
    );
    assert_eq!(
        out.network,
        ["nas.example:/export/data on /mnt/data (nfs)", "//fs.example/share on /mnt/share (cifs)",]
    );
    assert_eq!(rewrite(EXPECTED).text, EXPECTED);
}

#[test]
fn applies_with_backup_and_links_mtab() {
    let f = Fixture::new();
    f.file_mode("etc/fstab", FSTAB, 0o640);
    f.file("etc/mtab", "stale copy\n");
    let tree = f.tree();
    let mut ed = Editor::open(&tree).unwrap();
    apply(&mut ed).unwrap();
    assert_eq!(f.read("etc/fstab"), EXPECTED);
    assert_eq!(f.mode("etc/fstab"), 0o640);
    assert_eq!(f.read("etc/p2c/backup/etc/fstab"), FSTAB);
    assert_eq!(f.mode("etc/p2c/backup/etc/fstab"), 0o640);
    assert_eq!(f.readlink("etc/mtab"), "/proc/mounts");
    assert_eq!(f.read("etc/p2c/backup/etc/mtab"), "stale copy\n");
    let c = ed.changes();
    assert_eq!(c.len(), 2);
    assert_eq!((c[0].path.as_str(), c[0].action.as_str()), ("/etc/fstab", "rewritten"));
    assert_eq!(c[0].backup.as_deref(), Some("/etc/p2c/backup/etc/fstab"));
    assert!(c[0].reason.contains("nas.example:/export/data on /mnt/data (nfs)"));
    assert_eq!((c[1].path.as_str(), c[1].action.as_str()), ("/etc/mtab", "rewritten"));
}

#[test]
fn debian_mtab_link_is_left_alone() {
    let f = Fixture::new();
    f.link("etc/mtab", "../proc/self/mounts");
    f.file("etc/fstab", "proc /proc proc defaults 0 0\n");
    let tree = f.tree();
    let mut ed = Editor::open(&tree).unwrap();
    apply(&mut ed).unwrap();
    assert!(ed.changes().is_empty());
    assert_eq!(f.readlink("etc/mtab"), "../proc/self/mounts");
}
