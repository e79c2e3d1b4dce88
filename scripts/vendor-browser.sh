#!/usr/bin/env bash
# Refreshes the browser page's vendored libraries from npm and checks each file against its pinned sha256.
# CI needs no npm: the files are committed under tomaat/server/static/. To move to another version, change
# its lines below (version and hashes), run this, and run tests/test_browser.py.
set -euo pipefail
cd "$(dirname "$0")/.."
static=tomaat/server/static
# package version file-in-package destination sha256
FILES="
@niivue/niivue 0.69.0 dist/index.js niivue.js d6c2be4feb1ad53b2ac76b4196da8d8fd2263b662b511c55ca0fd127eb6a6532
@niivue/dcm2niix 1.2.0 dist/index.js dcm2niix/index.js 7107d091fc3fae5697edce7cd6cef4d28e3b158a67a435c6c13766fdd40829a3
@niivue/dcm2niix 1.2.0 dist/worker.js dcm2niix/worker.js 301818964650502e155b17b9f62b28574e5945b240e44b3421a07b84978d1d2f
@niivue/dcm2niix 1.2.0 dist/dcm2niix.js dcm2niix/dcm2niix.js 8751021578d7869f2f91fcd09ac9868c693a093fa88cfb8f931f8c7773b2f7cb
@niivue/dcm2niix 1.2.0 dist/dcm2niix.wasm dcm2niix/dcm2niix.wasm 9457a7d93be0c79203a7d5f60637e673b40163128f0d2c8744a8a1fc67a7b2f1
"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "$FILES" | while read -r package version source destination sha256; do
    [ -n "$package" ] || continue
    folder="$work/${package//\//_}-$version"
    if [ ! -d "$folder" ]; then
        mkdir -p "$folder"
        (cd "$folder" && npm pack --silent "$package@$version" > /dev/null && tar xzf ./*.tgz)
    fi
    got=$(sha256sum "$folder/package/$source" | cut -d' ' -f1)
    if [ "$got" != "$sha256" ]; then
        echo "vendor-browser.sh: $package@$version $source has sha256 $got, expected $sha256" >&2
        exit 1
    fi
    mkdir -p "$(dirname "$static/$destination")"
    cp "$folder/package/$source" "$static/$destination"
    echo "vendor-browser.sh: $static/$destination is $package@$version $source"
done
