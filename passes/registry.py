"""Imports every pass module so that they register themselves. Add new pass files here."""
from . import canonicalize, cse, dce, fold_constants, verify  # noqa: F401  (cleanup passes)
from . import quantize  # noqa: F401,E402
from . import fuse_dequant_matmul  # noqa: F401,E402
from . import select_precision  # noqa: F401,E402
from . import merge_siblings  # noqa: F401,E402
from . import draft_heads  # noqa: F401,E402
from . import sparsify_attention  # noqa: F401,E402
from . import linearize_attention  # noqa: F401,E402
from . import bind_shapes  # noqa: F401,E402
from . import quantize_activations  # noqa: F401,E402
