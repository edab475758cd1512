#!/usr/bin/env bash
# Fill .gpu_bundle/ (`make gpu-bundle`): what scripts/gpu_check.sh needs on the device machine, which starts bare,
# offline, with its own torch, torchvision, timm, numpy, Pillow, PyYAML, matplotlib, scipy and requests.
#
#   .gpu_bundle/wheels/   cp312 manylinux x86_64 wheels of what that image lacks and a run imports there:
#                         hydra-core, omegaconf, antlr4-python3-runtime (an sdist only: built here, pure Python)
#                         and mnist1d (the default dataset). Not bundled: submitit and hydra-submitit-launcher
#                         (imported only for hydra/launcher=slurm|local) and wandb (imported only when enabled; the
#                         check runs with logger.wandb.mode=disabled, and its dependency tree is large).
#   .gpu_bundle/cifar10/  the CIFAR-10 JPEG archive, labels.npz, batches.meta and build.py from ../shared/data/cifar10.
#
# The folder is git-ignored and travels with the device tool's `carry: [".gpu_bundle"]`; with the working tree it must
# stay under 64 MiB, so this prints both sizes and fails above the limit. Idempotent: files already there are kept,
# wheels of other versions removed (two versions of one package stop the install there). Needs pip access to PyPI.
set -euo pipefail
case ${1:-} in
  "") ;;
  -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "gpu-bundle: unknown argument $1 (it takes none; see --help)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
BUNDLE=${GPU_BUNDLE:-.gpu_bundle}
# ../shared beside the checkout; from a git worktree elsewhere, beside the main checkout.
main_checkout=$(dirname "$(git rev-parse --path-format=absolute --git-common-dir 2>/dev/null || echo .git)")
for candidate in ../shared/data/cifar10 "$main_checkout/../shared/data/cifar10"; do
  [[ -n ${CIFAR_SRC:-} || ! -d $candidate ]] || CIFAR_SRC=$candidate
done
CIFAR_SRC=${CIFAR_SRC:-../shared/data/cifar10}
LIMIT_MIB=64
# The versions of the development environment, so the device runs what CI tests.
WHEELS=(hydra-core==1.3.8 omegaconf==2.3.1 mnist1d==0.0.2.post1)
SDISTS=(antlr4-python3-runtime==4.9.3)
CIFAR_FILES=(cifar10-jpeg.tar.gz labels.npz batches.meta build.py)
# The device's Python; pip matches each manylinux tag exactly, so the usual ones are listed.
TARGET=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
PIP=("$PYTHON" -m pip --disable-pip-version-check)

# hydra-core==1.3.8 -> hydra_core-1.3.8 (the start of its wheel's file name)
wheel_stem() { local name=${1%%==*}; echo "${name//-/_}-${1##*==}"; }
have_wheel() { compgen -G "$BUNDLE/wheels/$(wheel_stem "$1")-*.whl" >/dev/null; }

mkdir -p "$BUNDLE/wheels" "$BUNDLE/cifar10"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Wheels are fetched into a temporary folder and moved in whole, so an interrupted run leaves no partial file.
for spec in "${WHEELS[@]}"; do
  have_wheel "$spec" || "${PIP[@]}" download -q --no-deps --only-binary=:all: "${TARGET[@]}" -d "$tmp" "$spec"
done
for spec in "${SDISTS[@]}"; do
  have_wheel "$spec" || "${PIP[@]}" wheel -q --no-deps -w "$tmp" "$spec"
done
find "$tmp" -maxdepth 1 -name '*.whl' -exec mv {} "$BUNDLE/wheels/" \;

# One version of each package: drop any wheel that is not one of the pinned ones.
for file in "$BUNDLE"/wheels/*.whl; do
  keep=0
  for spec in "${WHEELS[@]}" "${SDISTS[@]}"; do
    [[ $(basename "$file") == "$(wheel_stem "$spec")"-*.whl ]] && keep=1
  done
  if [[ $keep == 0 ]]; then
    echo "gpu-bundle: removing $(basename "$file") (not a pinned version)"
    rm -f "$file"
  fi
done

for name in "${CIFAR_FILES[@]}"; do
  if [[ -f $CIFAR_SRC/$name ]]; then
    cmp -s "$CIFAR_SRC/$name" "$BUNDLE/cifar10/$name" || install -m 0644 "$CIFAR_SRC/$name" "$BUNDLE/cifar10/$name"
  elif [[ ! -f $BUNDLE/cifar10/$name ]]; then
    echo "gpu-bundle: $CIFAR_SRC/$name not found (set CIFAR_SRC to the shared cifar10 folder)" >&2
    exit 1
  fi
done

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
bundle_bytes=$(du -sb "$BUNDLE" | cut -f1)
# What travels besides the bundle: tracked files and untracked ones git does not ignore.
tree_bytes=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 -r stat -c %s 2>/dev/null |
  awk '{ s += $1 } END { print s + 0 }')
total_bytes=$((bundle_bytes + tree_bytes))
du -h "$BUNDLE"/wheels/* "$BUNDLE"/cifar10/*
echo "gpu-bundle: $BUNDLE $(mib "$bundle_bytes") MiB; with the working tree $(mib "$total_bytes") MiB" \
  "(the device tool's limit: $LIMIT_MIB MiB)"
if ((total_bytes >= LIMIT_MIB * 1048576)); then
  echo "gpu-bundle: too large to carry" >&2
  exit 1
fi
