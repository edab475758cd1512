#!/usr/bin/env bash
# Run the DDP tests of tests/test_distributed.py N times in a row under `make test`-like CPU load; stop at the first
# failure (its output is printed) and end with `passed K of N` and the wall time. For flakes such as a rank dying at
# exit (SIGABRT from a gloo thread left to C++ destructors), which a single `make test` only shows now and then.
#
#   scripts/stress_ddp.sh [N]          N runs (default 30; or N=... in the environment)
#
# Environment:
#   PYTHON  interpreter (default: .venv/bin/python when present, else python3)
#   LOAD    pytest (default: tests/test_training.py and tests/test_masks.py in a loop), yes (one `yes` per core),
#           both, or none
#   TESTS   pytest node ids to repeat (default: the two DDP tests)
#   LOGDIR  where every run's output is kept (default: a fresh temporary directory)
set -u -o pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 1
N="${1:-${N:-30}}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
LOAD="${LOAD:-pytest}"
TESTS="${TESTS:-tests/test_distributed.py::test_two_processes_train_what_one_process_trains_with_the_same_global_batch tests/test_distributed.py::test_torchrun_ranks_share_one_output_directory}"
LOGDIR="${LOGDIR:-$(mktemp -d "${TMPDIR:-/tmp}/stress_ddp.XXXXXX")}"
mkdir -p "$LOGDIR"
if ! [[ "$N" =~ ^[1-9][0-9]*$ ]]; then
    echo "stress_ddp: N must be a positive integer (got '$N')" >&2
    exit 2
fi

LOAD_PIDS=()
start_load() {
    # each load runs in its own session (setsid), so stop_load can end it and its children by its process group id
    case "$LOAD" in
        pytest | both)
            # shellcheck disable=SC2016  # $0 is expanded by the inner shell
            setsid bash -c 'while :; do "$0" -m pytest -q -p no:cacheprovider tests/test_training.py tests/test_masks.py \
                >/dev/null 2>&1; done' "$PYTHON" </dev/null &
            LOAD_PIDS+=("$!")
            ;;
    esac
    case "$LOAD" in
        yes | both)
            for _ in $(seq "$(nproc)"); do
                setsid bash -c 'exec yes >/dev/null' </dev/null &
                LOAD_PIDS+=("$!")
            done
            ;;
        pytest | none) ;;
        *)
            echo "stress_ddp: LOAD must be pytest, yes, both or none (got '$LOAD')" >&2
            exit 2
            ;;
    esac
}
stop_load() {
    local pid
    for pid in "${LOAD_PIDS[@]}"; do
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${LOAD_PIDS[@]}"; do
        wait "$pid" 2>/dev/null
    done
    LOAD_PIDS=()
}
interrupted=0
trap 'stop_load' EXIT
trap 'interrupted=1' INT TERM

start_load
echo "stress_ddp: $N runs of: $TESTS"
echo "stress_ddp: python $PYTHON, load '$LOAD' on $(nproc) cores, logs in $LOGDIR"
start=$SECONDS
passed=0
for i in $(seq "$N"); do
    [[ $interrupted -eq 1 ]] && break
    log="$LOGDIR/run_$i.log"
    t0=$SECONDS
    # shellcheck disable=SC2086  # TESTS is a list of node ids
    "$PYTHON" -m pytest -q -p no:cacheprovider $TESTS >"$log" 2>&1
    rc=$?
    [[ $interrupted -eq 1 ]] && break
    if [[ $rc -ne 0 ]]; then
        echo "run $i of $N FAILED (exit $rc, $((SECONDS - t0)) s); its output ($log):"
        cat "$log"
        break
    fi
    passed=$((passed + 1))
    echo "run $i of $N passed ($((SECONDS - t0)) s)"
done
stop_load
[[ $interrupted -eq 1 ]] && echo "stress_ddp: interrupted after $passed passing runs"
echo "passed $passed of $N in $((SECONDS - start)) s (load: $LOAD)"
[[ $passed -eq $N ]]
