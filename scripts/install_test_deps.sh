#!/usr/bin/env bash
# What the tests need beyond pip, from Debian/Ubuntu packages (skipped when already there):
#   wordnet-base, wordnet-sense-index  WordNet 3.0 for WUPS (tests/vlm/evaluation/test_qa.py)
#   chromium                           the app's browser tests (Playwright drives it headless)
#   g++                                torch compiles flex attention on the CPU with it
# Needs apt-get (as root or through sudo). A failed install is reported and the script goes on:
# the tests that need the package then fail with instructions (they never skip).
set -uo pipefail

missing=()
[ -f /usr/share/wordnet/data.noun ] || missing+=(wordnet-base wordnet-sense-index)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_test_deps: no apt-get here; install ${missing[*]} with your package manager" >&2
    exit 0
fi
as_root=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then as_root="sudo"; fi
{ $as_root apt-get update -qq && DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null; } \
    || echo "install_test_deps: warning: could not install ${missing[*]}; the tests that need them will fail" >&2
exit 0
