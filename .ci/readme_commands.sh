#!/usr/bin/env bash
# Run every shell command of the README's "From the shell" section, in order, in the current checkout.
# Fails on the first command that fails, or if the commands leave `git status` different from before
# (everything they write must go to ignored folders such as results/). Prints each command's wall time.
#   bash .ci/readme_commands.sh [README.md]
set -euo pipefail
cd "$(dirname "$0")/.."
readme="${1:-README.md}"

# The ```bash blocks between "## From the shell" and the next "## " heading, one command per line,
# trailing "# ..." comments removed.
mapfile -t commands < <(awk '
  /^## / { in_section = ($0 ~ /^## From the shell/) }
  in_section && /^```bash/ { in_block = 1; next }
  in_section && /^```/ { in_block = 0; next }
  in_section && in_block && NF { print }
' "$readme" | sed -E 's/[[:space:]]+#[^"'"'"']*$//')

if [ "${#commands[@]}" -eq 0 ]; then
  echo "readme_commands: no commands found in the 'From the shell' section of $readme" >&2
  exit 1
fi

before="$(git status --porcelain 2>/dev/null || true)"
total_start=$(date +%s)
# Wall time, and CPU time (user + sys): on a busy machine the CPU time is what a quiet one would take
# (single-threaded), up to the threads torch uses.
TIMEFORMAT="  [%R s wall, %U s user + %S s sys CPU]"
for cmd in "${commands[@]}"; do
  echo "+ $cmd"
  status=0
  time bash -c "$cmd" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "readme_commands: FAILED (exit $status): $cmd" >&2
    exit 1
  fi
done
after="$(git status --porcelain 2>/dev/null || true)"
if [ "$before" != "$after" ]; then
  echo "readme_commands: the commands changed git status:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
echo "readme_commands: ${#commands[@]} commands passed in $(( $(date +%s) - total_start )) s; git status unchanged"
