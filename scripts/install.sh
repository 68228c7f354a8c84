#!/usr/bin/env bash
# Installs (or removes) Drover as a systemd service. Run as root from a
# checkout; safe to run again (an upgrade is the same command).
#
#   sudo scripts/install.sh              build, install, enable and (re)start
#   sudo scripts/install.sh --no-build   install binaries already in target/release
#   sudo scripts/install.sh --uninstall  stop, disable, remove binaries and unit
#
# 1. cargo build --release --workspace --bins (as the user who ran sudo, so
#    target/ and ~/.cargo stay theirs).
# 2. install -m 0755 drover and drover-worker into /usr/local/bin.
# 3. install -m 0644 scripts/drover.service as /etc/systemd/system/drover.service.
# 4. When systemd runs: daemon-reload, enable --now, and restart if it was
#    already running so the new binaries take over. Else: how to start it.
#
# The data (/var/lib/drover: store and API key) is never removed; --uninstall
# says where it is. DESTDIR=/some/dir stages the files below that directory
# instead (packaging, or trying the script out) and skips systemctl.
set -euo pipefail

DESTDIR="${DESTDIR:-}"
BIN_DIR="$DESTDIR/usr/local/bin"
UNIT_DIR="$DESTDIR/etc/systemd/system"
UNIT=drover.service
BINS=(drover drover-worker)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

usage() {
    sed -n '5,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

build=1
uninstall=0
for arg in "$@"; do
    case "$arg" in
    --uninstall) uninstall=1 ;;
    --no-build) build=0 ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        echo "install.sh: unknown option $arg" >&2
        usage >&2
        exit 2
        ;;
    esac
done

if [[ $EUID -ne 0 && -z "$DESTDIR" ]]; then
    echo "install.sh: run as root (sudo $0 $*)" >&2
    exit 1
fi

# systemd is PID 1 and reachable (not a container or a chroot without it).
systemd_running() {
    [[ -z "$DESTDIR" && -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1
}

if [[ $uninstall -eq 1 ]]; then
    if systemd_running; then
        systemctl disable --now "$UNIT" 2>/dev/null || true
    fi
    rm -f "$UNIT_DIR/$UNIT"
    for b in "${BINS[@]}"; do
        rm -f "$BIN_DIR/$b"
    done
    if systemd_running; then
        systemctl daemon-reload
        systemctl reset-failed "$UNIT" 2>/dev/null || true
    fi
    echo "Drover removed. Its data (store, API key) is kept in /var/lib/drover;"
    echo "delete it yourself if you no longer need it: rm -rf /var/lib/drover"
    exit 0
fi

if [[ $build -eq 1 ]]; then
    cd "$root"
    # Build as the invoking user when run through sudo: root-owned target/
    # files would break their next `cargo build`, and root may have no cargo.
    if [[ -n "${SUDO_USER:-}" && "$SUDO_USER" != root ]]; then
        sudo -u "$SUDO_USER" -H bash -lc 'cd "$1" && cargo build --release --workspace --bins' _ "$root"
    else
        cargo build --release --workspace --bins
    fi
fi

target="${CARGO_TARGET_DIR:-$root/target}/release"
for b in "${BINS[@]}"; do
    if [[ ! -x "$target/$b" ]]; then
        echo "install.sh: $target/$b missing: build failed or --no-build without a release build" >&2
        exit 1
    fi
done

# install(1) writes a new file and renames it: a running master or worker
# keeps executing the old inode, never a half-written one.
install -d -m 0755 "$BIN_DIR" "$UNIT_DIR"
for b in "${BINS[@]}"; do
    install -m 0755 "$target/$b" "$BIN_DIR/$b"
done
install -m 0644 "$here/$UNIT" "$UNIT_DIR/$UNIT"
echo "Installed $BIN_DIR/drover, $BIN_DIR/drover-worker and $UNIT_DIR/$UNIT"

if systemd_running; then
    systemctl daemon-reload
    was_active=0
    systemctl is-active --quiet "$UNIT" && was_active=1
    systemctl enable --now "$UNIT"
    if [[ $was_active -eq 1 ]]; then
        # enable --now leaves a running unit alone; an upgrade must restart.
        systemctl restart "$UNIT"
    fi
    systemctl --no-pager --lines=0 status "$UNIT" || true
elif [[ -n "$DESTDIR" ]]; then
    echo "Staged under DESTDIR=$DESTDIR; systemctl skipped."
else
    echo "systemd is not running here (container or chroot?): start Drover by hand:"
    echo "  install -d -m 0700 /var/lib/drover"
    echo "  DROVER_DATA_DIR=/var/lib/drover DROVER_WORKER_BIN=/usr/local/bin/drover-worker \\"
    echo "    /usr/local/bin/drover \"master://0.0.0.0:9090/api?log=info&tls=1\""
    echo "or, on a host with systemd: systemctl daemon-reload && systemctl enable --now drover"
fi

echo
echo "The API key is printed once, on the first start; find it with:"
echo "  journalctl -u drover | grep \"API Key\""
echo "(without systemd: in the master's output, the line \"API Key created: ...\")"
