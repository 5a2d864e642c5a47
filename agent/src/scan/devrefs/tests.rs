use super::*;

fn rel(s: &str) -> RelPath {
    RelPath::new(s.as_bytes().to_vec()).unwrap()
}

fn refs(kind: ConfigKind, text: &str) -> Vec<(String, String, u32)> {
    let mut out = Vec::new();
    assert!(scan_config(kind, &rel("etc/x"), text.as_bytes(), &mut out).unwrap());
    out.into_iter().map(|r| (r.device, r.context, r.line)).collect()
}

#[test]
fn classifies_config_paths() {
    let k = |s: &str| classify(&rel(s));
    assert_eq!(k("etc/fstab"), Some(ConfigKind::Fstab));
    assert_eq!(k("etc/crypttab"), Some(ConfigKind::Crypttab));
    assert_eq!(k("etc/systemd/system/db.service"), Some(ConfigKind::SystemdUnit));
    assert_eq!(k("usr/lib/systemd/system/x.service.d/o.conf"), Some(ConfigKind::SystemdUnit));
    assert_eq!(k("etc/udev/rules.d/60-raw.rules"), Some(ConfigKind::UdevRule));
    assert_eq!(k("etc/mysql/my.cnf"), Some(ConfigKind::Config));
    assert_eq!(k("etc/my.cnf"), Some(ConfigKind::Config));
    assert_eq!(k("etc/oracleasm/asm.conf"), Some(ConfigKind::Config));
    assert_eq!(k("etc/sysconfig/rawdevices"), Some(ConfigKind::Config));
    assert_eq!(k("etc/fstab.bak"), None);
    assert_eq!(k("etc/systemd/systemx/a"), None);
    assert_eq!(k("etc/passwd"), None);
}

#[test]
fn extracts_device_tokens() {
    assert_eq!(
        device_paths("ExecStart=/usr/bin/dd if=/dev/sdb of=/dev/null bs=1M"),
        ["/dev/sdb", "/dev/null"]
    );
    assert_eq!(device_paths("char-/dev/watchdog rw"), ["/dev/watchdog"]);
    assert_eq!(
        device_paths("innodb_data_file_path=/dev/sdc1:3Gnewraw;/dev/sdd1:2Graw"),
        ["/dev/sdc1", "/dev/sdd1"]
    );
    assert_eq!(device_paths(r#"RUN+="/usr/bin/raw /dev/raw/raw1 %N""#), ["/dev/raw/raw1"]);
    assert!(device_paths("/usr/dev/x /home/dev/ /dev/").is_empty());
    assert!(container_provided("/dev/null"));
    assert!(container_provided("/dev/pts/0"));
    assert!(!container_provided("/dev/sdb"));
    assert!(!container_provided("/dev/tty1"));
}

#[test]
fn reads_systemd_units_by_key() {
    let unit = "[Unit]\nDescription=uses /dev/sdz in prose\n[Service]\n\
                ExecStartPre=/sbin/blockdev --setra 0 /dev/sdb\n\
                ExecStart=/usr/bin/db --log /dev/null\n\
                DeviceAllow=/dev/sdb rw\n# ExecStart=/dev/sdq\n";
    assert_eq!(
        refs(ConfigKind::SystemdUnit, unit),
        [("/dev/sdb".into(), "ExecStartPre".into(), 4), ("/dev/sdb".into(), "DeviceAllow".into(), 6),]
    );
}

#[test]
fn reads_fstab_crypttab_and_free_form_configs() {
    let fstab = "/dev/sda1 / ext4 defaults 0 1\nUUID=x /home ext4 defaults 0 2\n\
                 /dev/sda2 none swap sw 0 0\ntmpfs /dev/shm tmpfs defaults 0 0\n";
    assert_eq!(
        refs(ConfigKind::Fstab, fstab),
        [("/dev/sda1".into(), "fstab ext4".into(), 1), ("/dev/sda2".into(), "fstab swap".into(), 3),]
    );
    assert_eq!(
        refs(ConfigKind::Crypttab, "data /dev/sdc2 none luks\n"),
        [("/dev/sdc2".into(), "crypttab".into(), 1)]
    );
    assert_eq!(
        refs(ConfigKind::UdevRule, "ACTION==\"add\", KERNEL==\"sdb1\", RUN+=\"/bin/raw /dev/raw/raw1 %N\"\n"),
        [("/dev/raw/raw1".into(), "udev rule".into(), 1)]
    );
    assert_eq!(
        refs(ConfigKind::Config, "[mysqld]\n; /dev/sdx\ninnodb_data_file_path=/dev/sdc1:3Graw\n"),
        [("/dev/sdc1".into(), "config".into(), 3)]
    );
}

#[test]
fn stops_at_the_cap() {
    let text = "x /dev/sdb\n".repeat(limits::MAX_DEVICE_REFS + 1);
    let mut out = Vec::new();
    let complete = scan_config(ConfigKind::Config, &rel("etc/x"), text.as_bytes(), &mut out).unwrap();
    assert!(!complete);
    assert_eq!(out.len(), limits::MAX_DEVICE_REFS);
}
