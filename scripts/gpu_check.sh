#!/usr/bin/env bash
# GPU check (`make gpu-check`): prepare this machine, then run scripts/gpu_check.py, which measures ResNet-20 /
# CIFAR-10 training speed and a 3-round LTH-Iter run and prints a table (also written to $OUT when that is set).
#
#   scripts/gpu_check.sh          full mode: one CUDA GPU, real CIFAR-10, within 8 minutes on an H200
#   scripts/gpu_check.sh --tiny   tiny mode (or GPU_CHECK_TINY=1): a CPU is enough, synthetic data, well under a
#                                 minute; tests/test_gpu_check.py runs it so the check keeps working without a GPU
#
# Made for the device machine, which starts bare and offline: when hydra-core is not importable, the wheels in
# .gpu_bundle/ (`make gpu-bundle`; carried with `carry: [".gpu_bundle"]`) are installed into /tmp/site, the project
# itself without its dependencies, and CIFAR-10 is built from the bundle into data/cifar10 (once: kept while the
# machine stays warm). Environment: PYTHON (default python3), GPU_CHECK_DEVICE (auto | cuda | cpu),
# GPU_CHECK_DATA (default data/cifar10), OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
BUNDLE=$REPO/.gpu_bundle
DATA=${GPU_CHECK_DATA:-$REPO/data/cifar10}
SITE=/tmp/site
TINY=${GPU_CHECK_TINY:-0}
export WANDB_MODE=disabled PYTHONUNBUFFERED=1 PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

for arg in "$@"; do
  case $arg in
    --tiny) TINY=1 ;;
    -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu-check: unknown argument $arg (expected --tiny)" >&2; exit 2 ;;
  esac
done

say() { echo "gpu-check: $*"; }
die() { echo "gpu-check: $*" >&2; exit 1; }

# hydra-core, omegaconf, antlr4 and mnist1d from the bundle, where the image lacks them (the wheels name no deps).
install_dependencies() {
  if "$PY" -c 'import hydra, omegaconf' 2>/dev/null; then
    return
  fi
  local wheels=("$BUNDLE"/wheels/*.whl)
  [[ -f ${wheels[0]} ]] ||
    die "hydra-core is not importable and $BUNDLE/wheels/ is missing: run 'make gpu-bundle' and carry .gpu_bundle"
  say "installing ${#wheels[@]} wheels from $BUNDLE/wheels into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "${wheels[@]}"
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
}

# The project without its dependencies (they are the image's or the bundle's). This checkout goes first on
# PYTHONPATH in any case, so that the copy measured is this one even where another is installed.
install_project() {
  if ! (cd / && "$PY" -c 'import lth_runner') 2>/dev/null; then
    say "installing the project (editable, --no-deps)"
    "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e "$REPO" >/tmp/gpu_check_pip.log 2>&1 ||
      say "editable install failed (see /tmp/gpu_check_pip.log); using PYTHONPATH=$REPO"
  fi
  export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
}

# CIFAR-10 in torchvision's layout with its PROVENANCE.json, by scripts/prepare_cifar10.py from the bundle (or the
# shared data beside a development checkout); built in a temporary folder and renamed, so an interrupted build
# leaves no half-written batches.
build_cifar10() {
  if [[ -f $DATA/cifar-10-batches-py/PROVENANCE.json ]]; then
    say "CIFAR-10 already built in $DATA"
    return
  fi
  local source
  for source in "$BUNDLE/cifar10" "$REPO/../shared/data/cifar10" ""; do
    [[ -n $source && -f $source/build.py && -f $source/cifar10-jpeg.tar.gz ]] && break
  done
  [[ -n $source ]] || die "CIFAR-10 is not in $DATA and no source was found: run 'make gpu-bundle'"
  say "building CIFAR-10 from $source into $DATA"
  "$PY" "$REPO/scripts/prepare_cifar10.py" --source "$source" --out "$DATA" >/dev/null
}

start=$SECONDS
GPU_CHECK_STARTED=$(date +%s.%N)  # the driver's wall-time row counts this setup too
export GPU_CHECK_STARTED
install_dependencies
install_project
args=(--device "${GPU_CHECK_DEVICE:-auto}")
if [[ $TINY == 1 ]]; then
  args+=(--tiny)
else
  build_cifar10
  args+=(--data "$DATA")
fi
say "setup took $((SECONDS - start)) s"
status=0
"$PY" "$REPO/scripts/gpu_check.py" "${args[@]}" || status=$?
say "finished in $((SECONDS - start)) s (exit status $status)"
exit $status
