#!/usr/bin/env bash
# Make sure the built-in Fashion-MNIST IDX files are present; install them when we can.
set -euo pipefail
dir="${MENET_DATA_DIR:-/usr/share/datasets/fashion-mnist}"
have_files() {
  for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    [ -f "$1/$f.gz" ] || [ -f "$1/$f" ] || [ -f "$1/fashion-mnist/$f.gz" ] || [ -f "$1/fashion-mnist/$f" ] || return 1
  done
}
have_files "$dir" && exit 0
if [ -n "${MENET_DATA_DIR:-}" ]; then
  echo "error: MENET_DATA_DIR=$MENET_DATA_DIR does not hold the Fashion-MNIST IDX files" >&2
  echo "       (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-*)." >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "Installing the built-in data: Debian package dataset-fashion-mnist" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  have_files "$dir" && exit 0
fi
echo "error: Fashion-MNIST not found in $dir." >&2
echo "       Install it with 'sudo apt-get install dataset-fashion-mnist', or download the" >&2
echo "       official IDX files and set MENET_DATA_DIR to their directory." >&2
exit 1
