#!/usr/bin/env bash
# The system tools some tests need, from Debian's packages; idempotent, quiet, quick when present:
# - strace: sees every file the real image readers open (tests/test_header_differential.py);
# - dcmtk and libgdcm-tools: DCMTK's dcmcjpeg/dcmcjpls/dcmcrle and GDCM's gdcmconv write the compressed DICOM
#   series the DICOM reader is compared against (tests/test_dicom_compressed.py, the PACS loop's tests).
#   Files another tool wrote are the test: our own encoder would only agree with our decoder.
# Root is needed to install (as on CI); prints only the installer's errors.
set -euo pipefail

declare -A PACKAGE=([strace]=strace [dcmcjpeg]=dcmtk [dcmcjpls]=dcmtk [dcmcrle]=dcmtk [dcmdjpeg]=dcmtk
    [dcmdump]=dcmtk [gdcmconv]=libgdcm-tools)
missing=()
for tool in "${!PACKAGE[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("${PACKAGE[$tool]}")
done
((${#missing[@]} == 0)) && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [[ $(id -u) -ne 0 ]]; then
    echo "test-tools.sh: ${missing[*]} missing and only root can install them (apt-get install ${missing[*]})" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
fi
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for tool in "${!PACKAGE[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "test-tools.sh: ${PACKAGE[$tool]} installed, but $tool is missing" >&2
        exit 1
    }
done
