#!/usr/bin/env bash
# The test suite under each kernel set PyTorch can run on this CPU (ATEN_CPU_CAPABILITY), one line each:
# what an AVX2-only laptop or a CPU without AVX would run, on this machine. Extra arguments go to pytest.
#   bash tests/across_cpus.sh                 # the whole suite, three times
#   bash tests/across_cpus.sh tests/unit -x
set -uo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(tests)
supported=$(python3 -c "import torch; print(torch.backends.cpu.get_cpu_capability())")
status=0
summary=()
for capability in default avx2 avx512; do
  if [ "$capability" = avx512 ] && [ "$supported" != AVX512 ]; then
    summary+=("$capability: skipped (this CPU runs $supported at most)")
    continue
  fi
  log=$(mktemp)
  started=$(date +%s)
  ATEN_CPU_CAPABILITY=$capability python3 -m pytest -q -p no:cacheprovider "${targets[@]}" >"$log" 2>&1
  code=$?
  ran=$(ATEN_CPU_CAPABILITY=$capability python3 -c "import torch; print(torch.backends.cpu.get_cpu_capability())")
  summary+=("$capability (torch reports $ran): $(tail -n 1 "$log" | sed 's/=//g; s/^ *//; s/ *$//') [$(( $(date +%s) - started )) s]")
  if [ $code -ne 0 ]; then
    status=1
    grep -E "^(FAILED|ERROR)" "$log" | sed "s/^/  $capability: /"
  fi
  rm -f "$log"
done
printf '%s\n' "${summary[@]}"
exit $status
