"""Op declarations, one module per family. Importing this package registers them all."""
from . import elementwise, nn, shape, reduce, quant, extra, state, scatter, spatial, linear_attention  # noqa: F401
