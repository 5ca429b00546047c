#!/usr/bin/env bash
# Installs the Debian packages Cairn's tests and benchmarks drive as real
# clients and peers. Only installs what is missing; needs root for apt.
set -euo pipefail

declare -A pkg_for=(
  [fio]=fio [qemu-img]=qemu-utils [nbdkit]=nbdkit [nbdinfo]=libnbd-bin
  [aws]=awscli [restic]=restic [mkfs.ext4]=e2fsprogs [mkfs.xfs]=xfsprogs
  [losetup]=mount [fusermount3]=fuse3 [chromium]=chromium [iptables]=iptables
)
missing=()
for tool in "${!pkg_for[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${pkg_for[$tool]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "missing packages: ${missing[*]} (run as root, or: sudo apt-get install -y ${missing[*]})" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
