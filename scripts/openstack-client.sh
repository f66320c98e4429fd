#!/usr/bin/env bash
# Installs the unmodified OpenStack clients (python-openstackclient and openstacksdk, from PyPI)
# into a virtualenv for the OpenStack-compatibility tests and docs/openstack.md's session.
#
#   scripts/openstack-client.sh [DIR]    (default: target/openstack-client)
#
# Idempotent: a virtualenv whose clients already answer is left alone. Prints DIR/bin.
set -euo pipefail
dir=${1:-"$(dirname "$0")/../target/openstack-client"}
# The versions the tests were written against; pip resolves their dependencies.
pins=(python-openstackclient==10.5.0 openstacksdk==4.22.0)

if "$dir/bin/openstack" --version >/dev/null 2>&1 \
	&& "$dir/bin/python" -c 'import openstack' 2>/dev/null; then
	echo "$dir/bin"
	exit 0
fi
# Debian's interpreter (python3-venv), whatever else is first on PATH.
py=/usr/bin/python3
[[ -x $py ]] || py=python3
rm -rf "$dir"
"$py" -m venv "$dir" >&2
"$dir/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}" >&2
"$dir/bin/openstack" --version >&2
echo "$dir/bin"
