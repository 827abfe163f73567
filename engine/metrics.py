"""The name of every metric the engine writes to metrics.csv, in one place.

The training loop, the probes, the batched path and the curvature measurements write rows under
these names, and analyses and plots read them through `Tables.series`, which refuses a name no
run wrote: a mistyped name is an error, never a column of NaN that turns into `inconclusive`.
Units and meaning are in the comments; engine/probes.py says how each probe is computed.
"""

from __future__ import annotations

# The training loop (engine/train.py and engine/ensemble.py), every probe interval
BATCH_LOSS = "batch_loss"  # the loss of the step's own batch, in training mode
BATCH_LOSS_AVG = "batch_loss_avg"  # mean batch loss since the previous probe
BATCH_ACC = "batch_acc"  # accuracy on the step's batch (fraction)
LR = "lr"  # the step size alpha in force (schedules included)

# Evaluation on every split, every train.eval_every steps (and the final_* columns of runs.csv)
TRAIN_LOSS, TRAIN_ACC = "train_loss", "train_acc"
VAL_LOSS, VAL_ACC = "val_loss", "val_acc"
TEST_LOSS, TEST_ACC = "test_loss", "test_acc"
EVALUATION = (TRAIN_LOSS, TRAIN_ACC, VAL_LOSS, VAL_ACC, TEST_LOSS, TEST_ACC)
# At the end only (probes.jacobian_examples), in runs.csv as final_jacobian_fro_sq and as a row at the last step
JACOBIAN_FRO_SQ = "jacobian_fro_sq"  # mean over test examples of ||d logits / d x||_F^2
FINAL = (*EVALUATION, JACOBIAN_FRO_SQ)  # what runs.csv holds as final_<name>
# Wall time a run spent in its curvature checkpoints (runs.csv: final_curvature_seconds), like
# train_seconds a cost, not a result
CURVATURE_SECONDS = "curvature_seconds"
FINAL_PREFIX = "final_"


def final(name: str) -> str:
    """runs.csv's column of a run's final value of `name` (final_test_acc for test_acc)."""
    return FINAL_PREFIX + name


# Weight probes, per layer, summarized over its units (probes.weights)
WEIGHT_NORM_SQ = "weight_norm_sq"  # ||w_j||^2 of a unit's incoming weights
GRAD_NORM = "grad_norm"  # ||grad_j||
W_DOT_GRAD = "w_dot_grad"  # w_j . grad_j (Grosse ch. 5, Eq. 16: 0 for scale-invariant units)
W_GRAD_COS = "w_grad_cos"  # cos(w_j, grad_j)
NORMALIZED_GRAD_NORM = "normalized_grad_norm"  # ||grad J(w_hat_j)|| = ||w_j|| ||grad_j||
WEIGHT_METRICS = (WEIGHT_NORM_SQ, GRAD_NORM, W_DOT_GRAD, W_GRAD_COS, NORMALIZED_GRAD_NORM)  # in row order
EFF_LR = "eff_lr"  # alpha / ||w_j||^2 of scale-invariant units (of the whole layer under layer norm)
EFF_STEP = "eff_step"  # alpha ||grad_j|| / ||w_j||, the normalized step of scale-invariant units
NORMALIZED_GRAD_NORM_LAYER = "normalized_grad_norm_layer"  # the whole layer's, under layer norm
STEP_GRAD_COS = "step_grad_cos"  # cos(W after - W before, -grad) of a weight layer across the step
ANGULAR_UPDATE = "angular_update"  # the angle (radians) each unit's w_j turned across the step

# Per-unit window means (probes.unit_window), one row per unit at the end
UNIT_U_MEAN = "unit_u_mean"  # mean ||w_j||^2 over the window
UNIT_G2_MEAN = "unit_g2_mean"  # mean normalized gradient norm squared
UNIT_ANG2_MEAN = "unit_ang2_mean"  # mean squared angular update
UNIT_U_FIRST, UNIT_U_LAST = "unit_u_first", "unit_u_last"  # ||w_j||^2 at the window's ends

# Input and pre-activation statistics (probes.inputs, probes.preacts)
INPUT_MEAN_SQ_NORM = "input_mean_sq_norm"  # ||batch mean of a weight layer's inputs||^2
INPUT_VAR_MEAN = "input_var_mean"  # the inputs' per-feature variance, averaged over features
PREACT_MEAN, PREACT_VAR = "preact_mean", "preact_var"  # per unit, at the input of every activation
PREACT_MEAN_DRIFT, PREACT_VAR_DRIFT = "preact_mean_drift", "preact_var_drift"  # change since the last probe
DEAD_FRACTION = "dead_fraction"  # share of a layer's units whose ReLU input is <= 0 on every probed example

# Curvature (engine/curvature.py): MATRIX is ggn or hessian
GGN, HESSIAN = "ggn", "hessian"


def eig(matrix: str) -> str:
    """Top eigenvalues of the layer's MATRIX (stat "rank", item = rank)."""
    return f"{matrix}_eig"


def products(matrix: str) -> str:
    """Curvature-vector products the eigensolver used."""
    return f"{matrix}_products"


GGN_TOP_PRODUCTS = "ggn_top_products"
# The GGN of the same network reparameterized as in Grosse ch. 5, Eq. 9 (the measured layer's inputs
# centered, its bias absorbing W m): the same function, another parameterization (curvature.eq9_steps)
GGN_EQ9 = "ggn_eq9"
# Per top eigenvector (stat "rank", item = rank): its share ||V m_hat||^2 along the direction of the
# layer's uncentered input mean m (V the unit eigenvector as a weight matrix, out x in)
GGN_MEAN_SHARE = "ggn_mean_share"
GGN_EQ9_MEAN_SHARE = "ggn_eq9_mean_share"
# Per top eigenvector: its share ||V^T 1_hat||^2 on the subspace {1_hat (x) x} (its unit-side factor along
# the all-ones direction of the layer's outputs, the one direction layer norm's centering projects out),
# and its share (1_hat^T V m_hat)^2 along the single direction 1_hat (x) m_hat
GGN_ONES_SHARE = "ggn_ones_share"
GGN_ONES_MEAN_SHARE = "ggn_ones_mean_share"
INPUT_MEAN_SQ = "input_mean_sq"  # ||m||^2 / E||a||^2: the share of the inputs' second moment in their mean
GGN_DENSITY = "ggn_density"  # the GGN's spectral density on a grid (stat "grid", item = grid point)
GGN_DENSITY_AT = "ggn_density_at"  # the grid's eigenvalue at each point
GGN_DENSITY_PRODUCTS = "ggn_density_products"

ALL = frozenset(
    [BATCH_LOSS, BATCH_LOSS_AVG, BATCH_ACC, LR, *FINAL, *WEIGHT_METRICS, EFF_LR, EFF_STEP]
    + [NORMALIZED_GRAD_NORM_LAYER, ANGULAR_UPDATE, UNIT_U_MEAN, UNIT_G2_MEAN, UNIT_ANG2_MEAN, UNIT_U_FIRST]
    + [UNIT_U_LAST, INPUT_MEAN_SQ_NORM, INPUT_VAR_MEAN, PREACT_MEAN, PREACT_VAR, PREACT_MEAN_DRIFT]
    + [PREACT_VAR_DRIFT, eig(GGN), eig(HESSIAN), products(GGN), products(HESSIAN), GGN_TOP_PRODUCTS]
    + [GGN_DENSITY, GGN_DENSITY_AT, GGN_DENSITY_PRODUCTS]
    + [eig(GGN_EQ9), products(GGN_EQ9), GGN_MEAN_SHARE, GGN_EQ9_MEAN_SHARE, INPUT_MEAN_SQ]
    + [GGN_ONES_SHARE, GGN_ONES_MEAN_SHARE, DEAD_FRACTION, STEP_GRAD_COS]
)
