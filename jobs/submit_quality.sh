#!/usr/bin/env bash
# Submit the nightly quality job with `ray job submit` and exit with the job's own verdict:
#   0 PASS, 1 FAIL (a fail_on limit passed), 3 WARN (a warn_on limit passed), 2 the job failed.
#
# `ray job submit` exits 1 for every job that ends non-zero, so its exit code cannot tell a failed
# limit from a crash. The quality job prints its verdict as its very last line,
# `QUALITY PASS|WARN|FAIL|ERROR <reason>`, and this script reads that line from the streamed log.
# No line (the driver was killed, the cluster went away) counts as 2.
#
# usage: jobs/submit_quality.sh [--address URL] [--working-dir DIR] [--python PYTHON]
#                               [--runtime-env-json JSON] [--alert COMMAND] -- QUALITY_ARGS...
#   --address           the cluster's job API (default $RAY_ADDRESS, else http://127.0.0.1:8265)
#   --working-dir       uploaded as the job's working directory (default: .)
#   --python            the Python on the cluster that runs `-m jobs quality` (default: python)
#   --alert COMMAND     run by `sh -c` when the verdict is not PASS, with the verdict line on its
#                       stdin, e.g. --alert 'mail -s "image quality" data-team@example.com'
#   QUALITY_ARGS        what `python -m jobs quality` takes: --config, --set, --run-date, --fail-on...
# Example (cron): jobs/submit_quality.sh --alert 'mail -s quality team@example.com' -- \
#   --config configs/quality.yaml --run-date "$(date -u +%F)" --fail-on dead_pixels --warn-on blurry
set -u -o pipefail

address="${RAY_ADDRESS:-http://127.0.0.1:8265}"
working_dir="."
python="python"
runtime_env=""
alert=""
usage="usage: $0 [--address URL] [--working-dir DIR] [--python PYTHON] [--runtime-env-json JSON] [--alert COMMAND] -- QUALITY_ARGS..."
while [ $# -gt 0 ]; do
  case "$1" in
    --address|--working-dir|--python|--runtime-env-json|--alert)
      if [ $# -lt 2 ]; then echo "$usage" >&2; exit 2; fi
      case "$1" in
        --address) address="$2" ;;
        --working-dir) working_dir="$2" ;;
        --python) python="$2" ;;
        --runtime-env-json) runtime_env="$2" ;;
        --alert) alert="$2" ;;
      esac
      shift 2 ;;
    --) shift; break ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
submit=(ray job submit --address "$address" --working-dir "$working_dir")
if [ -n "$runtime_env" ]; then submit+=(--runtime-env-json "$runtime_env"); fi
# The job's log streams through as it comes (progress lines included) and is kept to be read.
"${submit[@]}" -- "$python" -m jobs quality "$@" 2>&1 | tee "$log"
submit_rc=${PIPESTATUS[0]}

line="$(grep -aoE 'QUALITY (PASS|WARN|FAIL|ERROR)( .*)?$' "$log" | tail -n 1)"
case "$line" in
  "QUALITY PASS"*) code=0 ;;
  "QUALITY FAIL"*) code=1 ;;
  "QUALITY WARN"*) code=3 ;;
  "QUALITY ERROR"*) code=2 ;;
  *) code=2; line="QUALITY ERROR the job printed no verdict (ray job submit exited $submit_rc)" ;;
esac
if [ "$code" -eq 0 ] && [ "$submit_rc" -ne 0 ]; then
  # a PASS line but a failed job: something broke after the verdict; do not call it a pass
  code=2
  line="QUALITY ERROR the job said PASS but ray job submit exited $submit_rc"
fi
echo "submit_quality: $line (exit $code)" >&2
if [ "$code" -ne 0 ] && [ -n "$alert" ]; then
  printf '%s\n' "$line" | sh -c "$alert" || echo "submit_quality: the alert command failed" >&2
fi
exit "$code"
