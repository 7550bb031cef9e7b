import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["SME_DISABLE_PLUGIN_AUTOLOAD"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    """One training cache per test session, never the user's."""
    monkeypatch.setenv("SME_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sme-cache"))
