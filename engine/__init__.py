"""The shared training engine: data, models, optimizers, the loop, probes, execution, files.

Nothing in here knows about any particular experiment.
"""

import warnings

# Two dependencies call torch.jit.script, which warns (FutureWarning) that it is deprecated: curvlinops'
# dependency linear_operator when it is imported (engine/curvature.py), and torch's own forward-mode
# decompositions on the first torch.func.jvp (experiments/kfac.py). normlab uses neither script, so a
# user would read noise in the middle of normlab's progress output; only that one message is muted.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
