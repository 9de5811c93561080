#!/usr/bin/env bash
# Download CIFAR-10 ahead of training (needs internet) and create the model folders,
# as the original's dataset_setup.sh did.
#
#   ./dataset_setup.sh                 # tensorflow-datasets copy in cifar10/
#   ./dataset_setup.sh /data/cifar10   # elsewhere (then train with --data_path /data/cifar10)
#   ./dataset_setup.sh --binary        # the original's binary files in cifar10/ instead
#
# The training scripts also download on first use when the data is missing.
set -euo pipefail
cd "$(dirname "$0")"

binary=0
if [ "${1:-}" = "--binary" ]; then binary=1; shift; fi
data_path="${1:-cifar10/}"

mkdir -p models baseline/baseline_models sphere_resnet/models sphere_resnet/baseline/models
mkdir -p "$data_path"

if [ "$binary" = 1 ]; then
  url=https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "Downloading $url"
  python - "$url" "$tmp/cifar-10-binary.tar.gz" <<'PY'
import sys, urllib.request
urllib.request.urlretrieve(sys.argv[1], sys.argv[2])
PY
  tar -xzf "$tmp/cifar-10-binary.tar.gz" -C "$tmp"
  cp "$tmp"/cifar-10-batches-bin/*.bin "$data_path"/
fi

# Downloads through tensorflow-datasets when no binary files are there; checks the data.
python -m spherenet_tf.cifar10_input "$data_path"
