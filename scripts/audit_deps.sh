#!/usr/bin/env bash
# CI: pip-audit of every package installed in the virtual environment (runtime, dev and train
# extras: what the tests ran), against PyPI's advisory data (the Python Packaging Advisory
# Database, served in PyPI's JSON API).
#
# pip-audit runs from its own environment ($VENV/audit-tool), so neither it nor its own
# dependencies are mixed into what is audited.
#
# Exit status: 0 nothing known; 1 a known vulnerability (pip-audit's report says which, and
# the fixed version); 3 NOT AUDITED: the advisory data could not be reached or did not know
# the packages.  A CI that cannot audit says so and fails, it never passes in silence;
# WETMARKET_AUDIT_UNREACHABLE_OK=1 (set knowingly, where no advisory source can be reached)
# makes that case exit 0 after the same NOT AUDITED report.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
tool="$VENV/audit-tool"

if [ ! -x "$tool/bin/pip-audit" ]; then
    "$PYTHON" -m venv "$tool" && "$tool/bin/pip" install -q "pip-audit>=2.7" || {
        echo "audit: NOT AUDITED: pip-audit could not be installed into $tool" >&2; exit 3; }
fi

reqs=$(mktemp)
trap 'rm -f "$reqs"' EXIT
# wetmarket itself is installed editable from this checkout: not a PyPI package.  torch's
# local version (+cpu) is PyPI's torch of that version.
"$VENV/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check \
    | grep -v '^-e ' | sed 's/+cpu$//' > "$reqs"
echo "audit: $(wc -l < "$reqs") packages of $VENV"

out=$("$tool/bin/pip-audit" --requirement "$reqs" --no-deps --disable-pip --strict \
      --vulnerability-service pypi --progress-spinner off --desc off 2>&1)
status=$?
echo "$out"
if [ $status -eq 0 ]; then
    exit 0
fi
if grep -q "could not be audited\|ConnectionError\|Max retries exceeded\|Failed to resolve" <<<"$out"; then
    # Say exactly why: what the advisory sources answer from here, for the first package.
    first=$(grep -m1 '==' "$reqs")
    why=$("$VENV/bin/python" - "${first%%==*}" "${first##*==}" <<'PY'
import socket, sys, urllib.error, urllib.request
name, version = sys.argv[1], sys.argv[2]
for url in (f"https://pypi.org/pypi/{name}/json", f"https://pypi.org/pypi/{name}/{version}/json",
            "https://api.osv.dev/v1/query"):
    try:
        with urllib.request.urlopen(url, timeout=15) as r:
            print(f"{url}: HTTP {r.status}")
    except urllib.error.HTTPError as exc:
        print(f"{url}: HTTP {exc.code} ({exc.reason})")
    except (urllib.error.URLError, socket.timeout, OSError) as exc:
        print(f"{url}: unreachable ({getattr(exc, 'reason', exc)})")
PY
)
    echo "audit: NOT AUDITED: pip-audit's advisory data cannot be reached from this machine:" >&2
    echo "$why" | sed 's/^/audit:   /' >&2
    echo "audit: (pip-audit -s pypi reads each package's https://pypi.org/pypi/<name>/<version>/json," \
         "-s osv posts to https://api.osv.dev/v1/query)" >&2
    if [ "${WETMARKET_AUDIT_UNREACHABLE_OK:-}" = 1 ]; then
        echo "audit: WETMARKET_AUDIT_UNREACHABLE_OK=1: going on without the audit" >&2
        exit 0
    fi
    exit 3
fi
exit 1
