#!/usr/bin/env bash
# Builds the lab's two image layers for one Debian release (bookworm = 12, trixie = 13)
# into OUT (a new directory):   build.sh OUT [RELEASE]
#   OUT/base  Debian with systemd, sshd and sudo, plus a local apt repository
#             (/srv/lab-apt) holding PostgreSQL, its client and pgpool2, because lab
#             hosts have no network and `apt install` must still really work there.
#   OUT/db    an overlay layer on top of base with PostgreSQL installed and its
#             default cluster created, as the guide's VM1 and VM2 start out.
# The sha256 of this file and of packages.txt is the cache key (ci/labctl/image.py).
set -euo pipefail
out=$1
release=${2:-bookworm}
here=$(cd "$(dirname "$0")" && pwd)
mirror=${LAB_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${LAB_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}

read_list() { grep -v '^#' "$here/packages.txt" | awk -v k="$1" '$1 == k { $1 = ""; print }' | xargs; }
base_packages=$(read_list base | tr ' ' ,)
repo_packages=$(read_list repo)

mounted=()
cleanup() {
  for ((i=${#mounted[@]}-1; i>=0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
bind_system_dirs() {  # chroot needs these for package scripts (initdb, adduser)
  local root=$1
  for d in proc sys dev dev/pts; do
    mount --bind "/$d" "$root/$d"; mounted+=("$root/$d")
  done
}
release_system_dirs() { cleanup; mounted=(); }

mkdir -p "$out"
base=$out/base
echo "lab image: debootstrap $release into $base"
debootstrap --variant=minbase --include="$base_packages" "$release" "$base" "$mirror" >"$out/debootstrap.log" 2>&1 \
  || { tail -20 "$out/debootstrap.log"; exit 1; }

cat >"$base/etc/apt/sources.list" <<SRC
deb $mirror $release main
deb $mirror $release-updates main
deb $security $release-security main
SRC
cp /etc/resolv.conf "$base/etc/resolv.conf"
bind_system_dirs "$base"
echo "lab image: upgrading and downloading the local repository's packages"
chroot "$base" apt-get update -qq
DEBIAN_FRONTEND=noninteractive chroot "$base" apt-get -y -qq dist-upgrade >/dev/null
chroot "$base" apt-get clean
pg=$(chroot "$base" apt-cache depends postgresql | sed -n 's/^ *Depends: postgresql-\([0-9][0-9]*\)$/\1/p' | head -1)
[ -n "$pg" ] || { echo "lab image: cannot tell which PostgreSQL $release ships" >&2; exit 1; }
repo_packages=${repo_packages//\{pg\}/$pg}
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive chroot "$base" apt-get install -y -qq --download-only $repo_packages >/dev/null
mkdir -p "$base/srv/lab-apt"
mv "$base"/var/cache/apt/archives/*.deb "$base/srv/lab-apt/"
(cd "$base/srv/lab-apt" && apt-ftparchive packages . >Packages 2>/dev/null)
echo "deb [trusted=yes] file:/srv/lab-apt ./" >"$base/etc/apt/sources.list"
rm -rf "$base"/var/lib/apt/lists/*
chroot "$base" apt-get update -qq
chroot "$base" apt-get clean

# Identity is per host: each host gets its own keys, machine-id and hostname at `lab up`.
rm -f "$base"/etc/ssh/ssh_host_*
: >"$base/etc/machine-id"
rm -f "$base/var/lib/dbus/machine-id"
echo "labhost" >"$base/etc/hostname"
: >"$base/etc/resolv.conf"
# A container has no consoles to offer logins on, and nothing must wait for a network.
chroot "$base" systemctl mask -q console-getty.service getty@tty1.service systemd-networkd-wait-online.service 2>/dev/null || true
release_system_dirs

echo "lab image: installing PostgreSQL into the db layer"
db=$out/db
mkdir -p "$db" "$out/work" "$out/merged"
mount -t overlay overlay -o "lowerdir=$base,upperdir=$db,workdir=$out/work" "$out/merged"
mounted+=("$out/merged")
bind_system_dirs "$out/merged"
printf '#!/bin/sh\nexit 101\n' >"$out/merged/usr/sbin/policy-rc.d"   # install, do not start
chmod +x "$out/merged/usr/sbin/policy-rc.d"
DEBIAN_FRONTEND=noninteractive chroot "$out/merged" apt-get install -y -qq $(read_list db) >"$out/db-install.log" 2>&1 \
  || { tail -20 "$out/db-install.log"; exit 1; }
rm -f "$out/merged/usr/sbin/policy-rc.d"
chroot "$out/merged" apt-get clean
release_system_dirs
rm -rf "$out/work" "$out/merged"
echo "lab image: done"
