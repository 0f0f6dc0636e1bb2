#!/usr/bin/env bash
# Installs everything the demo and the tests need on a fresh machine (idempotent):
# a virtual environment in .venv with the package and its test, TFDS and experiment (matplotlib)
# extras, and the FashionMNIST IDX files from the Debian package dataset-fashion-mnist.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test,tfds,experiments]'

DATA_DIR=${UNPRUNE_JAX_DATA_DIR:-/usr/share/datasets/fashion-mnist}
if [ ! -f "$DATA_DIR/train-images-idx3-ubyte.gz" ] && [ ! -f "$DATA_DIR/train-images-idx3-ubyte" ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
