#!/bin/sh
# Installs zentry on this host from the source tree this script lives in:
# a virtualenv of the host's own Python, the fast launcher as the console
# script, a link on PATH, and containerd's drop-in. Run as root on the host
# (node-installer.yaml runs it with chroot from its init container, which
# copies the source to /opt/zentry/src first). Idempotent.
#
#   install-node.sh            # the defaults below
#
# Environment (for tests and other layouts):
#   ZENTRY_PREFIX     where the venv goes            (/opt/zentry/venv)
#   ZENTRY_LINK       the path engines call           (/usr/local/bin/zentry)
#   ZENTRY_CONF_D     containerd's drop-in directory  (/etc/containerd/conf.d)
#   PYTHON            the host Python, 3.11 or newer (/usr/bin/python3)
#   ZENTRY_NO_APT=1   do not install missing Debian packages
set -eu

src=$(cd "$(dirname "$0")/.." && pwd)
prefix=${ZENTRY_PREFIX:-/opt/zentry/venv}
link=${ZENTRY_LINK:-/usr/local/bin/zentry}
conf_d=${ZENTRY_CONF_D:-/etc/containerd/conf.d}
python=${PYTHON:-/usr/bin/python3}

if [ "$(id -u)" -ne 0 ]; then
    echo "install-node.sh: must run as root" >&2
    exit 1
fi

# What zentry needs from the host: a Python with venv, and what the sentry's
# C extension is built with (without them the install still works, slower).
if [ "${ZENTRY_NO_APT:-}" != 1 ] && command -v apt-get >/dev/null 2>&1; then
    missing=
    for p in python3 python3-venv python3-dev gcc libc6-dev libseccomp2; do
        if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
            missing="$missing $p"
        fi
    done
    if [ -n "$missing" ]; then
        echo "install-node.sh: apt-get install$missing"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        # shellcheck disable=SC2086  # a list of package names
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
    fi
fi

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "install-node.sh: $python is older than Python 3.11" >&2
    exit 1
}

# The venv is made by the host's interpreter, so it runs on the host; the
# package is built from this source tree, never fetched by name from an index.
if [ ! -x "$prefix/bin/python" ]; then
    "$python" -m venv "$prefix"
fi
"$prefix/bin/python" -m pip install --disable-pip-version-check -q --no-cache-dir "$src"
# pip's console script starts the interpreter with site: replace it with the
# launcher that starts it as `python -IS` (cmd/launcher.py).
"$prefix/bin/python" -m zentry.cmd.launcher --path "$prefix/bin/zentry"

mkdir -p "$(dirname "$link")"
ln -sfn "$prefix/bin/zentry" "$link"
mkdir -p "$conf_d"
sed "s#BinaryName = \".*\"#BinaryName = \"$link\"#" "$src/k8s/containerd-zentry.toml" > "$conf_d/zentry.toml.tmp"
mv "$conf_d/zentry.toml.tmp" "$conf_d/zentry.toml"
echo "install-node.sh: $("$link" --version | head -1) at $link; containerd drop-in $conf_d/zentry.toml"
