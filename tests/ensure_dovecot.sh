#!/bin/sh
# Install Debian's dovecot-imapd for the email adapter tests (idempotent; needs root to install).
set -eu
if command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "ensure_dovecot: dovecot is missing and we are not root; email tests will be skipped" >&2
    exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-imapd >/dev/null
