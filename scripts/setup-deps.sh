#!/usr/bin/env bash
# Installs the system packages p2c's tests and benchmarks use (Debian/Ubuntu, apt).
# Idempotent: installs only what is missing, and refreshes the package lists only then.
# Quiet when everything is already there. Run as root, or it re-runs itself with sudo.
set -euo pipefail

# qemu-utils (qemu-img, qemu-nbd), qemu-system-common (qemu-storage-daemon) and fdisk
# (sfdisk) make and attach vz7/vz9 ploop images where the ploop tool is not installed;
# systemd-container (systemd-nspawn) boots containers for the boot check.
packages=(
    debootstrap rsync quota btrfs-progs e2fsprogs attr acl iproute2 iputils-ping
    util-linux kmod cpio qemu-system-x86 busybox-static xz-utils zstd
    qemu-utils qemu-system-common fdisk systemd-container
)

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo -- "$0" "$@"
    fi
    echo "setup-deps: must run as root (sudo is not installed)" >&2
    exit 1
fi

if ! command -v dpkg >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-deps: needs a Debian/Ubuntu system with dpkg and apt-get; install by hand: ${packages[*]}" >&2
    exit 1
fi

missing=()
for pkg in "${packages[@]}"; do
    # `dpkg -s` also knows removed packages whose config files remain; only this status counts.
    if ! dpkg -s "$pkg" 2>/dev/null | grep -qx 'Status: install ok installed'; then
        missing+=("$pkg")
    fi
done

[ "${#missing[@]}" -eq 0 ] && exit 0

echo "setup-deps: installing ${missing[*]}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! apt-get update -q >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup-deps: apt-get update failed; check the apt sources and network access" >&2
    exit 1
fi
if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup-deps: could not install: ${missing[*]}" >&2
    exit 1
fi
echo "setup-deps: done"
