import os
import shutil

import pytest


@pytest.fixture(autouse=True, scope="session")
def _c_cache(tmp_path_factory):
    """Compiled libraries go to a per-session cache (not ~/.cache), and the tests need gcc and make:
    a machine without them skips with the reason shown (CI, which has them, fails instead)."""
    missing = [t for t in ("gcc", "make") if shutil.which(t) is None]
    if missing:
        msg = f"the c target tests need {' and '.join(missing)} (apt-get install gcc make)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    old = os.environ.get("SLIMGRAPH_CACHE_DIR")
    os.environ["SLIMGRAPH_CACHE_DIR"] = str(tmp_path_factory.mktemp("c_cache"))
    yield
    if old is None:
        os.environ.pop("SLIMGRAPH_CACHE_DIR", None)
    else:
        os.environ["SLIMGRAPH_CACHE_DIR"] = old
