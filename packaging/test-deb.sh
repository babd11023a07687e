#!/bin/sh
# The package as an admin meets it (run as root, on a machine without ctsentry installed):
# checks the file list and control data, installs it, checks the service user, folders and unit,
# runs the deep config check and the daemon as the service user on the installed config, scores
# the series SERIES_DIR dropped into /var/lib/ctsentry/incoming, reads `ctsentry status`, stops
# the daemon, purges the package and checks what purge removed and what it kept.
#   packaging/test-deb.sh target/debian/ctsentry_*.deb SERIES_DIR
set -eu
deb=$(realpath "$1")
series=$(realpath "$2")
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null || true' EXIT
fail() { echo "test-deb: FAILED: $*" >&2; exit 1; }
step() { echo "test-deb: $*"; }
[ "$(id -u)" = 0 ] || fail "run as root"
! dpkg -s ctsentry >/dev/null 2>&1 || fail "ctsentry is already installed here"

step "file list"
dpkg-deb -c "$deb" | awk '{print $6}' > /tmp/ctsentry-deb-files
for f in ./usr/bin/ctsentry ./etc/ctsentry/ctsentry.toml \
         ./usr/share/ctsentry/models/densenet121-covid.onnx ./usr/share/ctsentry/models/densenet121-covid.toml \
         ./usr/share/ctsentry/models/densenet121-covid.int8.onnx \
         ./usr/share/doc/ctsentry/README.md ./usr/lib/ctsentry/openvino/libopenvino_c.so \
         ./usr/lib/ctsentry/openvino/libopenvino_intel_cpu_plugin.so ./usr/lib/ctsentry/openvino/LICENSE; do
    grep -qx "$f" /tmp/ctsentry-deb-files || fail "$f missing from the package"
done
grep -qE '^\./(usr/)?lib/systemd/system/ctsentry\.service$' /tmp/ctsentry-deb-files || fail "unit missing"
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -qx /etc/ctsentry/ctsentry.toml || fail "config is not a conffile"
dpkg-deb -f "$deb" Depends | grep -q adduser || fail "Depends lacks adduser"

step "install"
apt-get install -y -qq "$deb" >/dev/null
id ctsentry >/dev/null || fail "no user ctsentry"
id -nG ctsentry | tr ' ' '\n' | grep -qx dialout || fail "ctsentry is not in group dialout"
for d in incoming done quarantine results state; do
    [ "$(stat -c '%U:%G %a' /var/lib/ctsentry/$d)" = "ctsentry:ctsentry 750" ] || fail "/var/lib/ctsentry/$d: $(stat -c '%U:%G %a' /var/lib/ctsentry/$d)"
done
[ -L /etc/systemd/system/multi-user.target.wants/ctsentry.service ] || fail "unit not enabled"
grep -q '^incoming = "/var/lib/ctsentry/incoming"' /etc/ctsentry/ctsentry.toml || fail "installed config paths"

step "deep check and doctor as the service user (config found in /etc, from /)"
cd /
runuser -u ctsentry -- ctsentry check-config --deep || fail "check-config --deep"
runuser -u ctsentry -- ctsentry doctor > /tmp/ctsentry-doctor.txt || { cat /tmp/ctsentry-doctor.txt; fail "doctor found problems"; }
grep -q "checked as    user ctsentry" /tmp/ctsentry-doctor.txt || fail "doctor did not check as the service user"
grep -q "engine ov     library /usr/lib/ctsentry/openvino/" /tmp/ctsentry-doctor.txt || fail "doctor does not find the packaged OpenVINO: $(grep engine /tmp/ctsentry-doctor.txt)"
# As the README has it (`ctsentry doctor` as root): checking as the service user.
ctsentry doctor > /tmp/ctsentry-doctor-root.txt || { cat /tmp/ctsentry-doctor-root.txt; fail "doctor as root found problems"; }
grep -q "checked as    user ctsentry" /tmp/ctsentry-doctor-root.txt || fail "doctor as root did not check as the service user"

step "commissioning as the README has it (as root, runuser, no sudo)"
labels=/tmp/ctsentry-commission-labels.csv
{ echo "file,covid"; ls "$series" | sed 's/$/,0/'; } > "$labels"
chmod 644 "$labels"
mkdir -p /var/lib/ctsentry/commission && chown ctsentry: /var/lib/ctsentry/commission
rc=0
runuser -u ctsentry -- ctsentry commission --labels "$labels" --out /var/lib/ctsentry/commission "$series" > /tmp/ctsentry-commission.txt || rc=$?
[ "$rc" -le 1 ] || { cat /tmp/ctsentry-commission.txt; fail "commission exit $rc"; }
grep -q "^claim series_specificity" /tmp/ctsentry-commission.txt || fail "commission compared no claims: $(cat /tmp/ctsentry-commission.txt)"
for f in report.html series.csv reference.toml; do
    [ "$(stat -c %U /var/lib/ctsentry/commission/$f)" = ctsentry ] || fail "commission/$f missing or not the service user's"
done
# README step 5: the daemon's drift reference is the site's run.
sed -i 's|^\[drift\]$|[drift]\nreference = "/var/lib/ctsentry/commission/reference.toml"|' /etc/ctsentry/ctsentry.toml
runuser -u ctsentry -- ctsentry check-config --deep || fail "check-config with [drift] reference"

step "daemon as the service user"
# setpriv execs the daemon itself (as systemd would), so $! is the daemon and gets SIGTERM.
setpriv --reuid=ctsentry --regid=ctsentry --init-groups ctsentry run 2>/tmp/ctsentry-daemon.log &
pid=$!
i=0
until [ -e /var/lib/ctsentry/state/status.json ]; do
    i=$((i + 1)); [ $i -lt 600 ] || { cat /tmp/ctsentry-daemon.log; fail "daemon not up"; }
    sleep 0.1
done
n=$(ls "$series" | wc -l)
# The README's copy (`runuser -u ctsentry -- cp -r --no-preserve=mode SERIES …/incoming/`): as the
# service user, without the read-only source's modes, so the daemon may move the files out.
runuser -u ctsentry -- cp -r --no-preserve=mode "$series" /var/lib/ctsentry/incoming/
i=0
until grep -q '"stage":"FINAL"' /var/lib/ctsentry/results/events.jsonl 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 3000 ] || { cat /tmp/ctsentry-daemon.log; fail "no FINAL verdict"; }
    sleep 0.1
done
grep '"stage":"FINAL"' /var/lib/ctsentry/results/events.jsonl | grep -q "\"slices\":$n," || fail "FINAL does not count $n slices: $(cat /var/lib/ctsentry/results/events.jsonl)"
[ "$(find /var/lib/ctsentry/done -type f | wc -l)" = "$n" ] || fail "not every file in done/"
[ -z "$(find /var/lib/ctsentry/incoming -type f)" ] || fail "files left in incoming/"
runuser -u ctsentry -- ctsentry status --json > /tmp/ctsentry-status.json || fail "status while running"
grep -q '"running":true' /tmp/ctsentry-status.json || fail "status: $(cat /tmp/ctsentry-status.json)"
grep -q '"reference":"commission ' /tmp/ctsentry-status.json || fail "drift does not watch against the site's commissioning run: $(cat /tmp/ctsentry-status.json)"
# The fastest CPU engine, from the package's own OpenVINO (the service user has no pip package).
grep -q '"engine":"openvino"' /tmp/ctsentry-status.json || fail "the installed daemon does not run OpenVINO: $(cat /tmp/ctsentry-status.json); $(grep -i engine /tmp/ctsentry-daemon.log)"
# The README's `ctsentry status`, as root from /: the text view of the same daemon.
ctsentry status > /tmp/ctsentry-status.txt || fail "status (text) while running"
grep -q "daemon      running" /tmp/ctsentry-status.txt || fail "status: $(cat /tmp/ctsentry-status.txt)"
kill -TERM $pid
wait $pid || fail "daemon exit status $?"
pid=
[ -z "$(find /var/lib/ctsentry -user root)" ] || fail "files owned by root: $(find /var/lib/ctsentry -user root)"

step "purge"
apt-get purge -y -qq ctsentry >/tmp/ctsentry-purge.log 2>&1 || { cat /tmp/ctsentry-purge.log; fail "purge"; }
! id ctsentry >/dev/null 2>&1 || fail "user ctsentry left"
[ ! -e /etc/ctsentry ] || fail "/etc/ctsentry left"
[ ! -e /usr/bin/ctsentry ] || fail "/usr/bin/ctsentry left"
[ ! -e /var/lib/ctsentry/state ] || fail "state left"
[ ! -e /var/lib/ctsentry/incoming ] || fail "the emptied drop folder left"
[ ! -e /etc/systemd/system/multi-user.target.wants/ctsentry.service ] || fail "unit still enabled"
# Scored images and results are kept and named, never deleted.
[ "$(find /var/lib/ctsentry/done -type f | wc -l)" = "$n" ] || fail "purge deleted scored images"
grep -q "kept /var/lib/ctsentry/done" /tmp/ctsentry-purge.log || fail "purge did not name what it kept"
rm -rf /var/lib/ctsentry
step "ok: $n slices scored by the installed service"
