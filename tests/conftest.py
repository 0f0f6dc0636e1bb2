import os

# Tests run on the CPU with a deterministic, quiet JAX.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

# Start JAX now, with one CPU device: the CLI gives JAX one device per core when it starts it
# (runs.use_cpu_cores), and a test calling cli.main first would change the device count for every
# later test of its worker. Tests of several devices run in a subprocess with their own count.
jax.devices()
