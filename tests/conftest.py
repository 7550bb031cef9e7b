import os
import textwrap

import pytest
from hypothesis import settings

# tox (and so CI) runs the "ci" profile: every property test draws the same examples on every run, so a
# result is reproducible; a plain local pytest run keeps exploring new examples.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["SME_DISABLE_PLUGIN_AUTOLOAD"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    """One training cache per test session, never the user's."""
    monkeypatch.setenv("SME_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sme-cache"))


@pytest.fixture
def write_squeezer_plugin(tmp_path):
    """Factory: ``write_squeezer_plugin(module, name)`` writes ``<tmp_path>/<module>.py``, a plugin that
    registers an identity squeezer called ``name``, and returns its path."""

    def write(module: str, name: str):
        path = tmp_path / f"{module}.py"
        path.write_text(textwrap.dedent(f'''
            from sme_plugin import hookimpl
            from sme_plugin.params import StrategyParams

            class Keep:
                class Params(StrategyParams):
                    pass
                def __init__(self, params):
                    pass
                def squeeze(self, mapped, mapper):
                    return mapped

            @hookimpl
            def sme_register_squeezers(register):
                register("{name}", Keep)
        '''))
        return path

    return write
