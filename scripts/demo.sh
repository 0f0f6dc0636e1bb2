#!/usr/bin/env bash
# The demo: the whole un-pruning pipeline on real FashionMNIST (a few minutes on 2 CPU cores).
# Extra arguments go to `unprune-jax run`, e.g. `-o prune.density=0.05` or `--fresh`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/unprune-jax run --config experiments/demo.toml --run-dir runs/demo "$@"
