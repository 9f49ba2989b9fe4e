#!/usr/bin/env bash
# The whole test suite: every Go module of the repository, with the race
# detector, against a real PostgreSQL that the tests start themselves
# (internal/testdb) and the real AWS SDK talking to smtest. Needs the
# PostgreSQL server binaries (Debian/Ubuntu: apt-get install -y postgresql).
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for mod in $(find . -name go.mod -not -path './.git/*' -exec dirname {} \; | sort); do
	echo "== go test -race ./... in $mod"
	(cd "$mod" && go test -race -count=1 ./...) || status=1
done
exit $status
