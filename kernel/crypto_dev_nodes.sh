#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-only
#
# Create /dev/cryptodevN for the virtio-cryptodev devices, as the course's script did,
# but with the major read from /proc/devices (dynamic unless the module was loaded with
# major=60) and without its extra node: N nodes are cryptodev0 .. cryptodev(N-1).
#
#   crypto_dev_nodes.sh        one node per device present (from sysfs)
#   crypto_dev_nodes.sh N      nodes cryptodev0 .. cryptodev(N-1)
#
# Nodes that already exist with the right numbers are left alone. devtmpfs creates
# the nodes by itself; this script is for systems without it.
set -eu

NAME=virtio-cryptodev
CLASS=/sys/class/$NAME
MODE=${MODE:-0666}

major=$(awk -v name="$NAME" '
	/^Character devices:/ { chr = 1; next }
	/^Block devices:/ { chr = 0 }
	chr && $2 == name { print $1; exit }' /proc/devices)
if [ -z "$major" ]; then
	echo "$0: no '$NAME' in /proc/devices: load the module first (insmod virtio_cryptodev.ko)" >&2
	exit 1
fi

mknode() {	# mknode NAME MINOR
	node=/dev/$1
	if [ -c "$node" ] &&
	   [ "$(stat -c '%t:%T' "$node")" = "$(printf '%x:%x' "$major" "$2")" ]; then
		return 0
	fi
	rm -f "$node"
	mknod -m "$MODE" "$node" c "$major" "$2"
	echo "$node: c $major $2"
}

if [ $# -ge 1 ]; then
	case $1 in
	''|*[!0-9]*) echo "usage: $0 [COUNT]" >&2; exit 2 ;;
	esac
	i=0
	while [ "$i" -lt "$1" ]; do
		mknode "cryptodev$i" "$i"
		i=$((i + 1))
	done
	exit 0
fi

[ -d "$CLASS" ] || exit 0
for dev in "$CLASS"/cryptodev*; do
	[ -e "$dev/dev" ] || continue
	minor=$(cut -d: -f2 "$dev/dev")
	mknode "$(basename "$dev")" "$minor"
done
