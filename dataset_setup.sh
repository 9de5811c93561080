#!/usr/bin/env bash
# Download CIFAR-10 (or CIFAR-100) ahead of training (needs internet) and create the
# model folders, as the original's dataset_setup.sh did.
#
#   ./dataset_setup.sh                       # tensorflow-datasets copy in cifar10/
#   ./dataset_setup.sh /data/cifar10         # elsewhere (then train with --data_path /data/cifar10)
#   ./dataset_setup.sh --binary              # the original's binary files in cifar10/ instead
#   ./dataset_setup.sh --dataset cifar100    # CIFAR-100 in cifar100/ (train with --dataset cifar100)
#
# The training scripts also download on first use when the data is missing.
set -euo pipefail
cd "$(dirname "$0")"

binary=0
dataset=cifar10
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=1; shift ;;
    --dataset) dataset="${2:?--dataset needs cifar10 or cifar100}"; shift 2 ;;
    --dataset=*) dataset="${1#--dataset=}"; shift ;;
    -*) echo "error: unknown option $1 (options: --binary, --dataset cifar10|cifar100)" >&2; exit 2 ;;
    *) break ;;
  esac
done
case "$dataset" in
  cifar10) url=https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz; folder=cifar-10-batches-bin ;;
  cifar100) url=https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz; folder=cifar-100-binary ;;
  *) echo "error: --dataset $dataset is not one of cifar10, cifar100" >&2; exit 2 ;;
esac
data_path="${1:-$dataset/}"

mkdir -p models baseline/baseline_models sphere_resnet/models sphere_resnet/baseline/models
mkdir -p "$data_path"

if [ "$binary" = 1 ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "Downloading $url"
  python - "$url" "$tmp/data.tar.gz" <<'PY'
import sys, urllib.request
urllib.request.urlretrieve(sys.argv[1], sys.argv[2])
PY
  tar -xzf "$tmp/data.tar.gz" -C "$tmp"
  cp "$tmp/$folder"/*.bin "$data_path"/
fi

# Downloads through tensorflow-datasets when no binary files are there; checks the data.
python -m spherenet_tf.cifar10_input --dataset "$dataset" "$data_path"
