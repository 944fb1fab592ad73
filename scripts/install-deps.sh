#!/usr/bin/env bash
# Installs what building, running and testing the agent need on a fresh
# Debian 12 machine: Debian's packages (the real runtimes the integration
# tests drive) and the pinned Go tools. Quick and quiet when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
	runc crun containerd docker.io iptables   # the runtime the agent starts and the sandboxes' OCI runtimes
	btrfs-progs e2fsprogs xfsprogs cryptsetup-bin fdisk util-linux  # the data volume and the filesystems it must refuse
	busybox-static                            # the default sandbox root filesystem and test images
	iproute2 kmod                             # network namespaces for tests; module loading
	qemu-guest-agent                          # the peer of the ping benchmark
	prometheus                                # promtool, to check the metrics
	socat curl                                # the documented ways to poke the agent
	tmux                                      # arcboxctl exec -it is tested in a real terminal
	qemu-system-x86                           # the VM test boots the agent as PID 1
)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo=sudo
	echo "installing: ${missing[*]}"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Go tools the project pins; oapi-codegen is a `tool` of go.mod instead.
GOLANGCI_LINT_VERSION=v2.15.0
bin="$PWD/.cache/bin"
if ! "$bin/golangci-lint" version 2>/dev/null | grep -q "${GOLANGCI_LINT_VERSION#v}"; then
	echo "installing golangci-lint $GOLANGCI_LINT_VERSION"
	GOBIN="$bin" go install "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$GOLANGCI_LINT_VERSION"
fi

# npm packages, as each package-lock.json pins them; installed again only
# when the lock changes: the TypeScript client check's (e2e/tsclient) and
# the OpenAPI linters `make lint` runs (scripts/apilint).
for ts in e2e/tsclient scripts/apilint; do
	if ! cmp -s "$ts/package-lock.json" "$ts/node_modules/.installed-lock.json"; then
		echo "installing the npm packages of $ts"
		(cd "$ts" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
		cp "$ts/package-lock.json" "$ts/node_modules/.installed-lock.json"
	fi
done
