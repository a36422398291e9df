"""Test-wide setup.

Eight simulated CPU devices must exist before jax is first imported, so the sharded code paths
(shard_map, all_gather, NamedSharding) run in tests exactly as they would on an 8-chip host.
"""
import logging
import os
import pathlib

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after XLA_FLAGS, which jax reads once)
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# The peers' reference files live in the repository (tests/fixtures/README.md: provenance), so
# every clone runs the parity tests; only the real-data tests need ../shared.
FIXTURES = REPO_ROOT / "tests" / "fixtures"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _emocap_logs_reach_caplog():
    """A training run in this worker process (train._setup_logging) stops the "emocap_jax"
    logger propagating to the root logger, where pytest's caplog listens: a later test asserting
    a warning would then see none, depending on which tests ran before it on its xdist worker."""
    logger = logging.getLogger("emocap_jax")
    propagate = logger.propagate
    logger.propagate = True
    yield
    logger.propagate = propagate


def random_train_batch(batch: int, context_length: int, seed: int = 0, image_size: int = 32,
                       local_slots: int = 4) -> dict:
    """A training batch of random uint8 faces and token ids (1..48999, no end-of-text), about 70%
    of the local slots valid and labels in -1..2: what the loss and step tests feed the model."""
    rng = np.random.default_rng(seed)
    tokens = lambda *shape: rng.integers(1, 49000, shape).astype(np.int32)  # noqa: E731
    return {"image": rng.integers(0, 255, (batch, image_size, image_size, 3), dtype=np.uint8),
            "global_tokens": tokens(batch, context_length),
            "summary_tokens": tokens(batch, context_length),
            "local_tokens": tokens(batch, local_slots, context_length),
            "local_mask": rng.random((batch, local_slots)) < 0.7,
            "label_id": rng.integers(-1, 3, (batch,)).astype(np.int32)}


def load_bench_script(name: str):
    """bench/NAME.py as a module (bench/ is scripts, not a package); bench/ goes on sys.path
    first, as when the script runs, so its shared helpers (markdown_tables) import."""
    import importlib.util
    import sys

    bench_dir = str(REPO_ROOT / "bench")
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)
    spec = importlib.util.spec_from_file_location(f"bench_{name}", f"{bench_dir}/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def mesh():
    """The 8 simulated CPU devices as one data axis (a module's own `mesh` fixture overrides it)."""
    assert len(jax.devices()) == 8, "XLA_FLAGS above should provide 8 simulated devices"
    return Mesh(np.array(jax.devices()), ("data",))


@pytest.fixture(scope="session")
def fixtures_dir():
    return FIXTURES


@pytest.fixture(scope="session")
def shared_data_dir():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA
