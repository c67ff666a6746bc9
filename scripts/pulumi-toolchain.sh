#!/usr/bin/env bash
# Build the Pulumi engine pieces this project needs from Go modules (the official
# Pulumi downloads are not reachable here), at the versions pinned in requirements.txt
# (pulumi-language-yaml: below).
#
# Usage: PATH="$(scripts/pulumi-toolchain.sh):$PATH"
#   stdout: one line, the absolute path of a bin directory holding
#           pulumi, pulumi-language-python, pulumi-language-python-exec,
#           pulumi-resource-pulumi-python, pulumi-language-yaml and pulumi-resource-postgresql
#   stderr: progress, one line per step with elapsed seconds (counted from SECURE_WEBHOOKS_T0,
#           epoch seconds, when the caller sets it: scripts/setup.sh does, so both share one clock)
#
# Results are cached per version under
#   ${SECURE_WEBHOOKS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secure-webhooks}/toolchain/
# (delete a directory there to force a rebuild). The stamp in each directory records the
# versions and a hash of the language host's sources: a changed host is rebuilt on its own,
# reusing the rest. Needs only go, bash and coreutils.
#
# Notes:
# - pulumi-language-python is built from scripts/toolchain/pulumi-language-python
#   (a small host of our own): the upstream host module is not served by the Go
#   module proxy. The two Python scripts next to it come from the sdk/v3 module.
# - pulumi-language-yaml runs Pulumi YAML programs (examples/yaml): `go install` of
#   the pulumi-yaml module, which needs no replace directives.
# - pulumi-resource-postgresql: if its Go module cannot be downloaded (the proxy reachable
#   here refuses it), the step is skipped with one note and the bin directory lacks that
#   plugin; stacks with manageExtensions: false (the local ones) do not need it.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
requirements="$here/../requirements.txt"
t0=${SECURE_WEBHOOKS_T0:-$EPOCHSECONDS}

say() { printf 'pulumi-toolchain: [%4ds] %s\n' "$((EPOCHSECONDS - t0))" "$*" >&2; }
die() { say "error: $*"; exit 1; }

# run STEP-NAME COMMAND...: run a step with its output in a log file, fail naming the step.
run() {
	local name=$1 log="$logs/${1// /-}.log"
	shift
	say "step '$name'"
	if ! "$@" >"$log" 2>&1; then
		tail -n 15 "$log" | sed 's/^/    /' >&2
		printf "pulumi-toolchain: step '%s' failed; see %s\n" "$name" "$log" >&2
		exit 1
	fi
}

# pin NAME: the version pinned as NAME==X in requirements.txt ('-' and '_' are equal).
pin() {
	local want=${1//_/-} line name
	while IFS= read -r line || [[ -n $line ]]; do
		line=${line%%#*}
		line=${line//[[:space:]]/}
		[[ $line == *==* ]] || continue
		name=${line%%==*}
		name=${name,,}
		if [[ ${name//_/-} == "$want" ]]; then
			printf '%s\n' "${line#*==}"
			return
		fi
	done <"$requirements"
}

# ---------------------------------------------------------------- versions
pulumi_version=$(pin pulumi)
postgresql_version=$(pin pulumi-postgresql)
[[ -n $pulumi_version ]] || die "no 'pulumi==X' pin in $requirements"
[[ -n $postgresql_version ]] || die "no 'pulumi_postgresql==X' pin in $requirements"
# The newest pulumi-yaml the Go module proxy lists; requirements.txt pins Python packages only.
yaml_version=v1.25.0

# The provider module (github.com/pulumi/pulumi-postgresql/provider/v3) has no tags of
# its own: map each Python package version to pseudo-versions of its release commit and
# of the terraform provider commit pinned by its 'upstream' submodule.
case $postgresql_version in
3.18.0)
	postgresql_module_version=v3.0.0-20260716141723-b57d264d8aee
	tf_postgresql_version=v1.26.1-0.20260615081603-ff936b9548c1
	;;
*) die "pulumi_postgresql==$postgresql_version: add its commit pseudo-versions to $0" ;;
esac

host_dir="$here/toolchain/pulumi-language-python"
# every file of the host's source directory, by name and content
host_hash=$(cd "$host_dir" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
stamp_text="pulumi v$pulumi_version
pulumi-language-python $host_hash
pulumi-language-yaml $yaml_version
pulumi-resource-postgresql $postgresql_version"
tools=(pulumi pulumi-language-python pulumi-language-python-exec pulumi-resource-pulumi-python pulumi-language-yaml)

cache=${SECURE_WEBHOOKS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secure-webhooks}/toolchain
dest="$cache/pulumi-$pulumi_version-postgresql-$postgresql_version"
logs="$cache/logs/${dest##*/}"

# complete DIR: DIR holds a finished build of exactly these versions.
complete() {
	local tool
	[[ -f $1/stamp ]] || return 1
	# the postgresql line (the last) may say 'unavailable' (see build_postgresql)
	[[ $(head -n 3 "$1/stamp") == "$(head -n 3 <<<"$stamp_text")" ]] || return 1
	for tool in "${tools[@]}"; do [[ -x $1/bin/$tool ]] || return 1; done
}

# only_host_differs DIR: DIR holds a finished build of these versions but another language host.
only_host_differs() {
	local tool
	[[ -f $1/stamp ]] || return 1
	[[ $(sed -n '1p;3p' "$1/stamp") == "$(sed -n '1p;3p' <<<"$stamp_text")" ]] || return 1
	for tool in "${tools[@]}"; do [[ -x $1/bin/$tool ]] || return 1; done
}

finish() {
	if [[ ! -x $dest/bin/pulumi-resource-postgresql ]]; then
		say "note: no pulumi-resource-postgresql plugin (the Go module proxy does not serve its module);" \
			"stacks with manageExtensions: false, as the local ones, do not need it"
	fi
	say "ready: $dest/bin"
	printf '%s\n' "$dest/bin"
	exit 0
}

# A pulumi of the pinned version already installed (the official install ships the language host
# and the dynamic-provider script next to it, and downloads provider plugins on demand) is used as is.
if installed=$(command -v pulumi) && [[ $("$installed" version 2>/dev/null) == "v$pulumi_version" ]]; then
	installed_dir=$(dirname "$(readlink -f "$installed")")
	if [[ -x $installed_dir/pulumi-language-python && -x $installed_dir/pulumi-resource-pulumi-python &&
		-x $installed_dir/pulumi-language-yaml ]]; then
		say "using the installed pulumi v$pulumi_version in $installed_dir"
		printf '%s\n' "$installed_dir"
		exit 0
	fi
fi

if complete "$dest"; then finish; fi
reuse=""
if only_host_differs "$dest"; then reuse=yes; fi

# publish: replace $dest by the finished build in $out (another run may have published the same).
publish() {
	rm -rf "$dest"
	mv -T "$out" "$dest" || complete "$dest" || die "cannot move the build into $dest"
	finish
}

# ---------------------------------------------------------------- go environment
if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then PATH="/usr/local/go/bin:$PATH"; fi
command -v go >/dev/null || die "go is not on PATH"
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=auto
unset GOOS GOARCH # the binaries must run on this machine
# GOPATH / GOMODCACHE / GOPROXY: the user's settings or Go's defaults.

mkdir -p "$cache" "$logs"
work=$(mktemp -d "$cache/.build.XXXXXX") # same file system as $dest: the final mv is atomic
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM HUP # so that the EXIT trap cleans up
out="$work/out"
mkdir -p "$out/bin"
go_flags=(-trimpath -tags osusergo,grpcnotrace)
build=(go build "${go_flags[@]}")
[[ -z $reuse ]] || say "the language host's sources changed: rebuilding it alone, the rest from $dest"
[[ -n $reuse ]] || say "building pulumi v$pulumi_version, pulumi-language-yaml $yaml_version and pulumi-resource-postgresql $postgresql_version into $dest (go: $(go env GOVERSION), module cache: $(go env GOMODCACHE))"

# ---------------------------------------------------------------- pulumi CLI + language host
# A wrapper module requiring pkg/v3 and sdk/v3 at the same version. pkg's go.mod has
# replace directives, which only apply in the main module: repeat the non-local ones.
cli="$work/cli"
mkdir -p "$cli/pulumi-language-python"
cp -R "$host_dir/." "$cli/pulumi-language-python/"
cat >"$cli/go.mod" <<EOF
module local/pulumi-toolchain

go 1.26

require (
	github.com/pulumi/pulumi/pkg/v3 v$pulumi_version
	github.com/pulumi/pulumi/sdk/v3 v$pulumi_version
)
EOF
cd "$cli"
run "download pulumi modules" go mod download github.com/pulumi/pulumi/pkg/v3 github.com/pulumi/pulumi/sdk/v3
grep -E '^replace [^ ]+ => [^./]' "$(go list -m -f '{{.GoMod}}' github.com/pulumi/pulumi/pkg/v3)" >>"$cli/go.mod" || true

cli_ldflags="-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$pulumi_version"
if [[ -n $reuse ]]; then
	cp -a "$dest/bin/." "$out/bin/"
	run "build pulumi-language-python" "${build[@]}" -ldflags "$cli_ldflags" -o "$out/bin/pulumi-language-python" ./pulumi-language-python
	printf '%s\n' "$(head -n 3 <<<"$stamp_text")" "$(tail -n 1 "$dest/stamp")" >"$out/stamp"
	publish
fi
run "build pulumi" "${build[@]}" -ldflags "$cli_ldflags" -o "$out/bin/pulumi" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi
run "build pulumi-language-python" "${build[@]}" -ldflags "$cli_ldflags" -o "$out/bin/pulumi-language-python" ./pulumi-language-python

sdk_dir=$(go list -m -f '{{.Dir}}' github.com/pulumi/pulumi/sdk/v3)
run "install python executor scripts" install -m 0755 \
	"$sdk_dir/python/cmd/pulumi-language-python-exec" \
	"$sdk_dir/python/dist/pulumi-resource-pulumi-python" "$out/bin/"

check_version() { "$out/bin/pulumi" version && [[ $("$out/bin/pulumi" version) == "v$pulumi_version" ]]; }
run "check pulumi version" check_version

# ---------------------------------------------------------------- pulumi-language-yaml
cd "$work"
run "build pulumi-language-yaml" env GOBIN="$out/bin" go install "${go_flags[@]}" \
	-ldflags "-s -w -X github.com/pulumi/pulumi-yaml/pkg/version.Version=$yaml_version" \
	"github.com/pulumi/pulumi-yaml/cmd/pulumi-language-yaml@$yaml_version"

# ---------------------------------------------------------------- pulumi-resource-postgresql
build_postgresql() {
	local pg="$work/postgresql" provider_dir tf_dir
	mkdir -p "$pg"
	cat >"$pg/go.mod" <<EOF
module local/pulumi-resource-postgresql

go 1.26

require github.com/pulumi/pulumi-postgresql/provider/v3 $postgresql_module_version
EOF
	cd "$pg"
	say "step 'download pulumi-resource-postgresql module'"
	if ! go mod download github.com/pulumi/pulumi-postgresql/provider/v3 >"$logs/download-postgresql.log" 2>&1; then
		# The proxy answers 403 for this module; go's own words stay in the log (named in the stamp), and
		# finish says it in one note.
		postgresql_state="unavailable (module download refused, see $logs/download-postgresql.log)"
		return
	fi
	provider_dir=$(go list -m -f '{{.Dir}}' github.com/pulumi/pulumi-postgresql/provider/v3)

	# The provider builds against its 'upstream' git submodule, whose go.mod declares the old
	# module path github.com/terraform-providers/...: fetch that, and point a directory replace
	# at a copy with the module line the provider imports.
	run "download terraform-provider-postgresql" go mod download github.com/terraform-providers/terraform-provider-postgresql@"$tf_postgresql_version"
	tf_dir=$(go list -m -f '{{.Dir}}' github.com/terraform-providers/terraform-provider-postgresql@"$tf_postgresql_version")
	cp -R "$tf_dir" "$pg/upstream"
	chmod -R u+w "$pg/upstream"
	sed -i '1s#.*#module github.com/cyrilgdn/terraform-provider-postgresql#' "$pg/upstream/go.mod"
	grep -E '^replace [^ ]+ => [^./]' "$provider_dir/go.mod" >>"$pg/go.mod" || true
	echo 'replace github.com/cyrilgdn/terraform-provider-postgresql => ./upstream' >>"$pg/go.mod"

	# main.go embeds schema-embed.json, which is generated (not in the module zip).
	cp "$provider_dir"/cmd/pulumi-resource-postgresql/{main.go,generate.go,schema.json} "$pg/"
	chmod u+w "$pg"/*.go "$pg/schema.json"
	run "generate postgresql schema" env VERSION="$postgresql_version" go run generate.go
	run "build pulumi-resource-postgresql" "${build[@]}" \
		-ldflags "-s -w -X github.com/pulumi/pulumi-postgresql/provider/v3/pkg/version.Version=$postgresql_version" \
		-o "$out/bin/pulumi-resource-postgresql" .
	postgresql_state=$postgresql_version
}
postgresql_state=""
build_postgresql

# ---------------------------------------------------------------- publish
printf '%s\n' "$(head -n 3 <<<"$stamp_text")" "pulumi-resource-postgresql $postgresql_state" >"$out/stamp"
publish
