use p2c_common::inventory::{RawBinding, Swap};
use p2c_common::paths::RelPath;
use p2c_common::scan::DeviceRef;

use super::*;

fn device_ref(device: &str, file: &str, context: &str) -> DeviceRef {
    DeviceRef {
        device: device.into(),
        file: RelPath::new(file.as_bytes().to_vec()).unwrap(),
        line: 3,
        context: context.into(),
        text: format!("x {device}"),
    }
}

fn block(name: &str, kind: &str, gib: u64, fs: Option<&str>, mp: Option<&str>) -> BlockDevice {
    BlockDevice {
        name: name.into(),
        kind: kind.into(),
        size_bytes: gib * GIB,
        fs_type: fs.map(str::to_string),
        mountpoint: mp.map(str::to_string),
        ..Default::default()
    }
}

#[test]
fn raw_device_lists_every_kind_of_raw_use() {
    let mut inv = plain_inventory();
    inv.raw_bindings.push(RawBinding {
        raw_device: "/dev/raw/raw1".into(),
        bound_to: "/dev/sdb1".into(),
        source: "/etc/sysconfig/rawdevices".into(),
    });
    inv.swaps.push(Swap {
        device: "/dev/sda2".into(),
        kind: "partition".into(),
        size_bytes: 2 * GIB,
        in_fstab: true,
        active: true,
    });
    inv.block_devices.extend([
        block("sda2", "part", 2, Some("swap"), None),
        block("sdb", "disk", 100, None, None),
        block("vg0-oradata", "lvm", 50, None, None),
        block("sdc1", "part", 10, Some("ext4"), None),
        block("sda14", "part", 0, None, None), // BIOS boot, 1 MiB
        block("loop0", "loop", 1, Some("squashfs"), None),
    ]);
    let mut scan = plain_scan();
    scan.device_refs = vec![
        device_ref("/dev/sdb", "etc/systemd/system/db.service", "ExecStart"),
        device_ref("/dev/sdb", "etc/systemd/system/db.service", "ExecStart"),
        device_ref("/dev/sda1", "etc/fstab", "fstab ext4"),
        device_ref("/dev/sda2", "etc/fstab", "fstab swap"),
        device_ref("/dev/sda1", "etc/systemd/system/x.mount", "What"),
        // The binding's own line is the binding, not another use.
        device_ref("/dev/raw/raw1", "etc/sysconfig/rawdevices", "rawdevices"),
    ];
    let r = run(&inv, Some(&scan), &plain_node(), &AssessOptions::default());
    let f = get(&r, codes::RAW_DEVICE);
    assert_eq!(f.severity, Severity::Warning);
    assert!(has(f, "raw binding /dev/raw/raw1 → /dev/sdb1 (from /etc/sysconfig/rawdevices)"));
    assert!(has(f, "swap partition /dev/sda2 (2.0 GiB, active, in fstab)"));
    assert!(has(f, "/dev/sdb (disk, 100.0 GiB) has no file system and is not mounted"));
    assert!(has(f, "/dev/vg0-oradata (lvm, 50.0 GiB) has no file system"));
    assert!(has(f, "/dev/sdc1 (part, 10.0 GiB) holds a ext4 file system that is not mounted"));
    assert!(has(f, "/etc/systemd/system/db.service line 3 (ExecStart) names /dev/sdb"));
    assert!(!has(f, "sda14") && !has(f, "loop0") && !has(f, "/dev/sda1"));
    assert_eq!(f.evidence.len(), 6, "{:?}", f.evidence);
    assert_eq!(f.data["config_references"].as_array().unwrap().len(), 1);
}

#[test]
fn swap_files_and_mounted_devices_are_not_raw() {
    let mut inv = plain_inventory();
    inv.swaps.push(Swap {
        device: "/swapfile".into(),
        kind: "file".into(),
        size_bytes: GIB,
        in_fstab: true,
        active: true,
    });
    let r = run(&inv, Some(&plain_scan()), &plain_node(), &AssessOptions::default());
    assert!(r.find(codes::RAW_DEVICE).is_none(), "{}", r.render());
}
