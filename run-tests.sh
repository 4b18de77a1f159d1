#!/usr/bin/env bash
# Install what the test suite needs (Debian packages, a virtual environment) and run it all.
# Runs as root (CI) or as a user with sudo. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"

packages=(python3-venv dovecot-core dovecot-imapd dovecot-lmtpd tar util-linux strace gcc libc6-dev
          bacula-director bacula-director-sqlite3 bacula-sd bacula-fd bacula-console sqlite3)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "installing: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

bash ./scripts/venv.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
