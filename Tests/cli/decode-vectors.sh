#!/usr/bin/env bash
# `dlm-peer decode` on every hex vector of wire.md §10 must print exactly the expected line
# (fields checked by hand against the spec's tables), and bad input must fail with the
# offset. Usage: Tests/cli/decode-vectors.sh [path/to/dlm-peer]
set -uo pipefail
cd "$(dirname "$0")/../.."
bin="${1:-.build/debug/dlm-peer}"
pass=0 fail=0
while IFS=$'\t' read -r name hex expected; do
    case "$name" in ''|'#'*) continue ;; esac
    got=$("$bin" decode "$hex")
    if [ $? -eq 0 ] && [ "$got" = "$expected" ]; then pass=$((pass + 1)); else
        fail=$((fail + 1)); echo "FAIL $name"; echo "  expected: $expected"; echo "  got:      $got"; fi
done < Tests/cli/spec-vectors.tsv
check_error() {  # hex, expected fragment
    local out; out=$("$bin" decode "$1" 2>/dev/null); local rc=$?
    if [ $rc -eq 1 ] && [[ "$out" == *"$2"* ]]; then pass=$((pass + 1)); else
        fail=$((fail + 1)); echo "FAIL bad input $1: rc=$rc out=$out"; fi
}
check_error 0200030000000000010000000c000400 "invalidLength: h_length at offset 12 (value 12)"
check_error 020003000600000002000000100004 "truncated: dlm_header at offset 0 (value 15)"
check_error 0200030006000000020000001800040000 "truncated: h_length at offset 12 (value 24)"
check_error 02000300060000000200000010000900 "unknownCommand: h_cmd at offset 14 (value 9)"
echo "decode vectors: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
