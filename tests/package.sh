#!/usr/bin/env bash
# The Debian package: build it (cargo-deb), install it with dpkg, start the installed
# binary with the installed config exactly as the unit's ExecStart line says (systemd
# itself does not run in CI), check the unit with systemd-analyze where there is one,
# then remove (the data folder stays) and purge (it goes), leaving nothing else.
#
# It installs a package on this machine, so it runs only under CI=true or with
# FOGLINE_TEST_PACKAGE=1; needs root, dpkg and cargo-deb (cargo install cargo-deb).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${CI:-}" != true ] && [ "${FOGLINE_TEST_PACKAGE:-}" != 1 ]; then
    echo "package: SKIPPED: it installs a package on this machine (set FOGLINE_TEST_PACKAGE=1)"
    exit 0
fi
for tool in dpkg cargo-deb; do
    command -v "$tool" >/dev/null || { echo "package: $tool is missing" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "package: needs root (dpkg -i)" >&2; exit 1; }
fail() { echo "package: $*" >&2; exit 1; }

# The tests' own build (debug) is packaged: a release build would double CI's time and
# the package's contents are what is tested here, not its speed.
cargo build -q
deb=$(cargo deb --no-build --profile dev --no-strip -q 2>/dev/null | tail -1)
[ -f "$deb" ] || deb=$(ls -t target/debian/fogline_*.deb | head -1)
echo "package: built $(basename "$deb") ($(du -h "$deb" | cut -f1))"
dpkg -i "$deb" >/dev/null
for f in /usr/bin/fogline /etc/fogline/node.toml /lib/systemd/system/fogline-node.service \
         /usr/share/doc/fogline/node.toml; do
    [ -e "$f" ] || fail "$f was not installed"
done
getent passwd fogline >/dev/null || fail "no fogline user"
[ "$(stat -c %U /var/lib/fogline)" = fogline ] || fail "/var/lib/fogline is not the fogline user's"
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify /lib/systemd/system/fogline-node.service 2>&1 | grep -v "^$" || true
fi
# The unit's ExecStart line, as its user.
exec_start=$(sed -n 's/^ExecStart=//p' /lib/systemd/system/fogline-node.service)
out=$(mktemp)
# From /, as systemd starts it: the dashboard's scenarios come from the package.
(cd / && exec runuser -u fogline -- $exec_start --http 127.0.0.1:0) >"$out" 2>&1 &
pid=$!
for _ in $(seq 1 100); do grep -q " ready; data in " "$out" && break; sleep 0.1; done
grep -q " ready; data in /var/lib/fogline" "$out" || { cat "$out"; fail "the installed node did not start"; }
url=$(sed -n 's/^gateway listening on //p' "$out" | head -1)
curl -fsS "$url/healthz" >/dev/null || fail "the installed node does not answer"
curl -fsS "$url/ui" | grep -q "app.js" || fail "the installed node serves no dashboard"
sim=$(curl -fsS -H "Authorization: Bearer $(cat /var/lib/fogline/admin.token)" \
    -d '{"scenario": "bursty-azure.toml", "invocations": 2000, "policies": "regression,oracle"}' \
    "$url/v1/simulate") || fail "the installed node's simulator failed"
echo "$sim" | grep -q '"name":"oracle"' || fail "the packaged scenario did not run: $sim"
kill -TERM "$pid"; wait "$pid" || true
[ -f /var/lib/fogline/admin.token ] || fail "no admin token in the data folder"
echo "package: installed node started from its unit's ExecStart, answered, and ran a packaged scenario"

# The README's "Add an edge node" with the package: join a router's cluster with a token
# (replacing the default config), hand the folder to the unit's user, start the unit's line.
work=$(mktemp -d)
trap 'kill $rpid $npid 2>/dev/null || true; rm -rf "$work"' EXIT
bin=target/debug/fogline
$bin certs init --dir "$work/pki" >/dev/null
$bin certs issue router-1 --role router --ca "$work/pki" --out "$work/pki/router-1" >/dev/null
printf 'version = 1\n[mesh]\nmdns = false\n[enroll]\nlisten = "127.0.0.1:0"\nca_dir = "%s"\n' "$work/pki" >"$work/router.toml"
$bin router --config "$work/router.toml" --data-dir "$work/router" --http 127.0.0.1:0 \
    --quic 127.0.0.1:0 --tls-dir "$work/pki/router-1" --mesh /ip4/127.0.0.1/tcp/0 >"$work/router.out" 2>&1 &
rpid=$!
for _ in $(seq 1 100); do grep -q " ready; data in " "$work/router.out" && break; sleep 0.1; done
rurl=$(sed -n 's/^gateway listening on //p' "$work/router.out" | head -1)
token=$($bin --gateway "$rurl" --token "$(cat "$work/router/admin.token")" token create --role node | tail -1)
/usr/bin/fogline join "$token" --id pkg-edge --no-start --force --config /etc/fogline/node.toml \
    --http 127.0.0.1:0 --quic 127.0.0.1:0 --mesh /ip4/127.0.0.1/tcp/0 >/dev/null
chown -R fogline:fogline /var/lib/fogline
runuser -u fogline -- $exec_start >"$work/node.out" 2>&1 &
npid=$!
for _ in $(seq 1 100); do grep -q " ready; data in " "$work/node.out" && break; sleep 0.1; done
grep -q "edge node pkg-edge ready" "$work/node.out" || { cat "$work/node.out"; fail "the joined packaged node did not start"; }
seen=
for _ in $(seq 1 150); do
    if $bin --gateway "$rurl" --token "$(cat "$work/router/admin.token")" mesh 2>/dev/null | grep -q "pkg-edge.*alive"; then
        seen=yes; break
    fi
    sleep 0.1
done
[ -n "$seen" ] || fail "the router never saw the packaged node alive"
kill -TERM "$npid" "$rpid"; wait "$npid" "$rpid" 2>/dev/null || true
echo "package: joined a cluster with a token, started from the unit's line, alive in the router's mesh"

dpkg -r fogline >/dev/null
[ ! -e /usr/bin/fogline ] || fail "remove left /usr/bin/fogline"
[ ! -e /lib/systemd/system/fogline-node.service ] || fail "remove left the unit"
[ -d /var/lib/fogline ] || fail "remove deleted the data folder"
dpkg --purge fogline >/dev/null
for f in /var/lib/fogline /etc/fogline /usr/share/doc/fogline; do
    [ ! -e "$f" ] || fail "purge left $f"
done
! getent passwd fogline >/dev/null || fail "purge left the fogline user"
echo "package: removed (data kept), then purged (nothing left)"
