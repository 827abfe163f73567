"""The X rows: one claim per check; `how` says whether a claim reads the largest value of its check
(an error that must stay small) or the smallest (a difference that must stay large)."""

from __future__ import annotations

from normlab.engine.claims import DESCRIPTIVE, EXACT, Claim, Rule


CLAIMS: dict[str, tuple[Claim, str]] = {}  # check -> (claim, how: max or min over its rows)


def _add(check: str, claim: Claim, how: str) -> Claim:
    CLAIMS[check] = (claim, how)
    return claim


_add(
    "ema_age",
    Claim(
        "X20-ema",
        EXACT,
        "An exponential moving average with parameter beta weights the last (1 - beta)^-1 steps on average "
        "(Grosse ch. 5, §2, the footnote on beta; beta2 = 0.999 gives 1000)",
        "max over beta in {0.9, 0.99, 0.999} of |mean age of the weights the recursion gives - (1 - beta)^-1| "
        "/ (1 - beta)^-1 (the newest gradient has age 1)",
        Rule("<", "identity_tol"),
    ),
    "max",
)
_add(
    "bias_correction",
    Claim(
        "X20-bias",
        EXACT,
        "With bias correction, Adam's moments are unbiased from the first step: on a constant gradient g, "
        "torch's Adam steps alpha g / (|g| + eps) at every step k, while the uncorrected moments are short "
        "by the factors 1 - beta^k (Grosse ch. 5, §2, Adam's update)",
        "max over steps 1-50, coordinates and seeds of the relative difference between torch.optim.Adam's step "
        "and alpha g / (|g| + eps)",
        Rule("<", "identity_tol"),
    ),
    "max",
)
_add(
    "terminal_velocity",
    Claim(
        "X20-velocity",
        EXACT,
        "On a constant gradient, heavy-ball momentum's step grows to alpha / (1 - beta) times the gradient "
        "while Adam's stays alpha in size: the two learning rates mean different things (Grosse ch. 5, §2, "
        "the note on heavy ball)",
        "max over steps 1-200 and seeds of the relative difference between torch's SGD-with-momentum step and "
        "alpha g (1 - beta^k) / (1 - beta)",
        Rule("<", "identity_tol"),
    ),
    "max",
)
_add(
    "fisher_ggn",
    Claim(
        "X20-fisher",
        EXACT,
        "With a softmax output and cross-entropy (natural parameters of an exponential family), the true "
        "Fisher equals the Gauss-Newton matrix (Grosse ch. 5, §2.1, the text after Eq. 1)",
        "max over seeds of ||F - G||_F / ||G||_F, F summed over labels drawn from the model exactly, G = "
        "J^T (diag p - p p^T) J from autograd Jacobians",
        Rule("<", "identity_tol"),
    ),
    "max",
)
_add(
    "ema_rank",
    Claim(
        "X20-rank",
        EXACT,
        "One gradient's outer product has rank 1, but a moving average of the outer products along a "
        "trajectory has rank above 1 (Grosse ch. 5, §2.1, the note after Eq. 2)",
        "min over seeds of the numerical rank of the EMA (beta 0.9) of g_k g_k^T over 10 gradient-descent "
        "steps (singular values above 1e-10 of the largest)",
        Rule(">", "rank_min"),
    ),
    "min",
)
_add(
    "batch_ef_formula",
    Claim(
        "X20-batch-ef",
        EXACT,
        "The batch empirical Fisher is the per-example gradient covariance shrunk with the batch size plus "
        "the mean gradient's outer product (Grosse ch. 5, §2.1, Eq. 4; exactly, for batches drawn without "
        "replacement from N examples, the covariance is scaled by (N - B) / (B (N - 1)))",
        "max over batch sizes and seeds of ||E_B[g_B g_B^T] - closed form||_F / ||E_B[g_B g_B^T]||_F, the "
        "expectation over every batch of B of the N examples, each batch's gradient from autograd",
        Rule("<", "identity_tol"),
    ),
    "max",
)
_add(
    "batch_ef_drift",
    Claim(
        "X20-batch-drift",
        EXACT,
        "As the batch grows, the batch empirical Fisher's covariance term shrinks against the outer-product "
        "term and the matrix moves away from the true Fisher (Grosse ch. 5, §2.1, after Eq. 4)",
        "min over seeds and consecutive batch sizes of the increase in ||E[F_B] - F||_F / ||F||_F, labels "
        "drawn from the model (so that at B = 1 the two are close)",
        Rule(">", "drift_min"),
    ),
    "min",
)
_add(
    "batch_ef_ends",
    Claim(
        "X20-batch-ends",
        DESCRIPTIVE,
        "The full batch's empirical Fisher lies further from the true Fisher than the per-example one",
        "min over seeds of ||E[F_N] - F||_F / ||E[F_1] - F||_F (the two ends of the batch sizes)",
        Rule("none"),
    ),
    "min",
)
_add(
    "ef_power",
    Claim(
        "X21-ef-power",
        EXACT,
        "Preconditioning by the inverse of the empirical Fisher built from the gradients themselves shrinks the "
        "step in proportion to the gradient's size (Eq. 3's pathology), while its inverse square root, as in "
        "RMSprop and Adam, leaves the step's size independent of it (Grosse ch. 5, §2.1, after Eq. 3)",
        "max over c in {0.01, 100} and seeds of the relative errors of c * step_inverse(c g) against "
        "step_inverse(g), and of step_sqrt(c g) against step_sqrt(g), for a moving average of g^2 over 30 gradients",
        Rule("<", "identity_tol"),
    ),
    "max",
)
_add(
    "regression_outlier",
    Claim(
        "X30-outlier",
        EXACT,
        "Linear regression on uncentered features (mean m, covariance I) has one outlier eigenvalue in its "
        "Hessian, growing linearly with the dimension: 1 + ||m||^2 without the homogeneous coordinate, "
        "(2 + r + sqrt(r^2 + 4r)) / 2 with it (r = ||m||^2; Grosse ch. 5, §3)",
        "max over dimensions, both design matrices and seeds of |top eigenvalue of the autograd Hessian - closed "
        "form| / closed form",
        Rule("<", "identity_tol"),
    ),
    "max",
)
_add(
    "standardize",
    Claim(
        "X30-standardize",
        EXACT,
        "Standardizing each feature removes the mean's outlier but not all ill-conditioning: with correlated "
        "features the standardized Hessian is the correlation matrix (Grosse ch. 5, §3)",
        "min over dimensions and seeds of the condition number of the standardized problem's autograd Hessian "
        "(its spectrum matches the correlation matrix's; see detail)",
        Rule(">", "remains_min"),
    ),
    "min",
)
_add(
    "kfac_a_outlier",
    Claim(
        "X30-kfac-a",
        EXACT,
        "K-FAC's factor A for uncentered activations has a single outlier eigenvalue, and the eigenvalues of "
        "A (x) S are the products of the factors', so the top M are nu lambda_i(S) with eigenvectors m~ (x) v_i "
        "(Grosse ch. 5, §3, Eq. 5 and the ICS conditioning hypothesis, for K-FAC's approximation)",
        "max over seeds of the relative errors of (a) A's single eigenvalue above 2 against its closed form and "
        "(b) the top M eigenvalues of kron(A, S) against nu lambda_i(S)",
        Rule("<", "identity_tol"),
    ),
    "max",
)
_add(
    "eq10_step",
    Claim(
        "X31-eq10",
        EXACT,
        "Plain SGD in Eq. 9's centered coordinates is SGD preconditioned by R R^T, whose inverse is Eq. 10's "
        "matrix, and R R^T couples each weight only with its own unit's bias (quasi-diagonal) (Grosse ch. 5, "
        "§3.1, Eqs. 7-10)",
        "max over seeds of the relative errors of (a) the step taken through the reparameterized forward pass "
        "against -alpha R R^T grad, (b) inv(R R^T) against Eq. 10, and (c) R R^T's largest entry outside the "
        "quasi-diagonal pattern",
        Rule("<", "identity_tol"),
    ),
    "max",
)
_add(
    "diag_keeps",
    Claim(
        "X31-diag",
        EXACT,
        "A diagonal preconditioner cannot undo off-centering: in §3.1's example (m = 0.1 in every coordinate, "
        "Sigma = I) it leaves the outlier almost where it was at every dimension (Grosse ch. 5, §3.1)",
        "min over dimensions and seeds of the top eigenvalue of D^-1/2 H D^-1/2 (D = diag H) over H's top eigenvalue",
        Rule(">", "diag_keeps_min"),
    ),
    "min",
)
_add(
    "quasi_removes",
    Claim(
        "X31-quasi",
        EXACT,
        "The quasi-diagonal preconditioner of Eq. 10, built from the true mean and variances, removes the "
        "outlier: the preconditioned Hessian is the identity (Grosse ch. 5, §3.1)",
        "max over dimensions and seeds of |eigenvalue of R^T H R - 1|",
        Rule("<", "identity_tol"),
    ),
    "max",
)
_add(
    "kfac_affine",
    Claim(
        "X32-kfac",
        EXACT,
        "After one undamped K-FAC step, a network and its reparameterization by fixed invertible affine maps "
        "of the activations and pre-activations (shifts included) still compute the same function (Grosse "
        "ch. 5, §3.2, Fig. 3)",
        "max over seeds of ||f_1(x) - f_2(x)||_F / ||f_1(x) - f_0(x)||_F after one step of each (the change a "
        "step makes is the scale)",
        Rule("<", "identity_tol"),
    ),
    "max",
)
_add(
    "sgd_affine",
    Claim(
        "X32-sgd",
        EXACT,
        "After one SGD step, the same two networks compute different functions (Grosse ch. 5, Fig. 3)",
        "min over seeds of ||f_1(x) - f_2(x)||_F / ||f_1(x) - f_0(x)||_F after one SGD step of each",
        Rule(">", "differs_min"),
    ),
    "min",
)
_add(
    "quasi_invariant",
    Claim(
        "X32-unitwise",
        EXACT,
        "Ollivier's quasi-diagonal step is invariant to an affine map of each input unit on its own; a "
        "diagonal step is not (Grosse ch. 5, §3.2, last paragraph; the diagonal arm is in the detail)",
        "max over seeds of the relative change in the function's update when each input is mapped to s_i a_i "
        "+ c_i before the quasi-diagonal step",
        Rule("<", "identity_tol"),
    ),
    "max",
)
_add(
    "bn_paths",
    Claim(
        "X40-paths",
        EXACT,
        "BN's backward pass is the direct path X_bar = S_bar / sigma (Eq. 12) plus a statistics path, "
        "-(mean(S_bar) + X~ mean(S_bar X~)) / sigma (Grosse ch. 5, §4, Eqs. 11-12)",
        "max over seeds of the relative errors of autograd's gradient (a) with mu and sigma detached against "
        "Eq. 12 and (b) in full against the sum of the two paths",
        Rule("<", "identity_tol"),
    ),
    "max",
)
_add(
    "bn_shift_scale",
    Claim(
        "X42-shift",
        EXACT,
        "A layer followed by BN computes the same function when its inputs are rescaled and shifted, A -> "
        "s A + 1 m^T (Grosse ch. 5, §4.2)",
        "max over seeds of the relative change of relu(BN(A W^T)) under a random s and m",
        Rule("<", "identity_tol"),
    ),
    "max",
)
_add(
    "bn_unitwise",
    Claim(
        "X42-unitwise",
        EXACT,
        "The same layer does change its function when each input unit is rescaled by its own factor (Grosse "
        "ch. 5, §4.2, the footnote on scalar s)",
        "min over seeds of the relative change of relu(BN(A W^T)) under per-unit factors in [0.5, 2]",
        Rule(">", "differs_min"),
    ),
    "min",
)
_add(
    "bn_mean_step",
    Claim(
        "X42-mean-step",
        EXACT,
        "A weight step along v (x) m shifts every example's pre-activations by nearly the same vector (the "
        "common share of the shift is r / (1 + r), r = ||m||^2, for covariance I), and the next BN cancels "
        "the common part exactly (Grosse ch. 5, §4.2)",
        "max over dimensions and seeds of the relative errors of (a) the common share against r / (1 + r) and "
        "(b) BN's output after the step against BN's output after the step with its common part removed",
        Rule("<", "identity_tol"),
    ),
    "max",
)
_add(
    "ln_matrix",
    Claim(
        "X44-ln-matrix",
        EXACT,
        "A layer followed by layer norm ignores rescaling its whole weight matrix (Grosse ch. 5, §4.4)",
        "max over seeds of the relative change of LN(A W^T) under W -> gamma W, and of "
        "|tr(W^T grad_W J)| / (||W|| ||grad_W J||)",
        Rule("<", "identity_tol"),
    ),
    "max",
)
_add(
    "ln_unit",
    Claim(
        "X44-ln-unit",
        EXACT,
        "The same layer does not ignore rescaling one unit's incoming weights, so its units' weights are not "
        "orthogonal to their gradients (Grosse ch. 5, §4.4)",
        "min over seeds of the relative change of LN(A W^T) under per-unit factors in [0.5, 2]",
        Rule(">", "differs_min"),
    ),
    "min",
)
_add(
    "lrn_scale",
    Claim(
        "X44-lrn",
        EXACT,
        "AlexNet's local response normalization, with its published constants (k = 2, n = 5, alpha = 1e-4, "
        "beta = 0.75), is scale invariant, so the implicit decay of §4.3 applies to it (Grosse ch. 5, §4.4, "
        "last paragraph)",
        "max over seeds of ||LRN(2 a) - LRN(a)|| / ||LRN(a)|| on unit-variance activations (the same with k = 0, "
        "beta = 1/2, an invariant variant, is in the detail)",
        Rule("<", "identity_tol"),
    ),
    "max",
)
_add(
    "bn_after_centers",
    Claim(
        "X42-after",
        EXACT,
        "BN placed after the ReLU hands the next layer inputs whose batch mean is zero in every unit "
        "(Grosse ch. 5, §4.2, on the two placements)",
        "max over units and seeds of |column mean| / column std of BN(relu(Z))",
        Rule("<", "identity_tol"),
    ),
    "max",
)
_add(
    "bn_before_uncentered",
    Claim(
        "X42-before",
        EXACT,
        "BN placed before the ReLU leaves the next layer's inputs uncentered: relu of a standardized column "
        "has a positive mean (Grosse ch. 5, §4.2)",
        "min over units and seeds of column mean / column std of relu(BN(Z))",
        Rule(">", "uncentered_min"),
    ),
    "min",
)
_add(
    "ln_batch",
    Claim(
        "X44-ln-batch",
        EXACT,
        "Layer norm's output for an example does not depend on the other examples in its batch, so it "
        "carries none of BN's batch noise (Grosse ch. 5, §4.4, stochastic regularization)",
        "max over seeds of the relative change of LN's outputs for 8 examples when the other 8 are replaced",
        Rule("<", "identity_tol"),
    ),
    "max",
)
_add(
    "bn_batch",
    Claim(
        "X44-bn-batch",
        EXACT,
        "BN's output for an example does depend on its batch-mates (Grosse ch. 5, §4.1 and §4.4)",
        "min over seeds of the relative change of BN's outputs for 8 examples when the other 8 are replaced",
        Rule(">", "differs_min"),
    ),
    "min",
)
_add(
    "ln_shift",
    Claim(
        "X44-ln-shift",
        EXACT,
        "Layer norm's centering does not cancel the common shift 1 v^T that a step along the mean direction "
        "gives every example's pre-activations, unless v is the same in every unit (Grosse ch. 5, §4.4, why "
        "LN keeps the outliers)",
        "min over seeds of the relative change of LN(Z + 1 v^T) against LN(Z), v with zero mean over units (the "
        "change for v constant over units is in the detail)",
        Rule(">", "differs_min"),
    ),
    "min",
)
_add(
    "renorm",
    Claim(
        "X43-renorm",
        EXACT,
        "Rescaling each BN-fed unit's incoming weights to unit norm leaves the network's function unchanged, "
        "so after it the effective learning rate alpha / ||w||^2 is alpha (Grosse ch. 5, §4.3)",
        "max over seeds of the relative change of the outputs",
        Rule("<", "identity_tol"),
    ),
    "max",
)
_add(
    "exp_lr",
    Claim(
        "X43-explr",
        EXACT,
        "Holding the effective learning rate at eta needs alpha_k = eta ||w_k||^2, and then every SGD step "
        "multiplies ||w||^2 by 1 + eta^2 ||grad J(w_hat)||^2 (Eq. 19): the learning rate must grow "
        "exponentially (Grosse ch. 5, §4.3, Li & Arora's corollary)",
        "max over 20 steps and seeds of the relative error of ||w_{k+1}||^2 against ||w_k||^2 (1 + eta^2 "
        "||grad J(w_hat_k)||^2), per unit, gradients by autograd",
        Rule("<", "identity_tol"),
    ),
    "max",
)
_add(
    "bn_path_radial",
    Claim(
        "X43-paths",
        EXACT,
        "Along a BN-fed unit's weights, BN's direct path gives the gradient a radial part y_bar . y + mu sum(y_bar) "
        "/ sigma; the mean path cancels the second term and the variance path the first, so only the whole "
        "statistics path leaves the gradient orthogonal to w (Grosse ch. 5, §4.3, the question of which path "
        "carries the implicit decay)",
        "max over the four arms (full BN; mean, sigma or both detached), units and seeds of |w . grad - closed "
        "form| / (||w|| ||grad||), gradients by autograd",
        Rule("<", "identity_tol"),
    ),
    "max",
)
_add(
    "bn_path_needed",
    Claim(
        "X43-paths-needed",
        EXACT,
        "With the batch mean or the batch standard deviation detached, the gradient is no longer orthogonal to "
        "the weights, although the forward pass is still scale invariant: neither path alone carries the decay "
        "(Grosse ch. 5, §4.3)",
        "min over the three detached arms and seeds of the arm's largest |cos(w_j, grad_j)| over its units (full "
        "BN's, about 1e-16, is in the detail)",
        Rule(">", "differs_min"),
    ),
    "min",
)
_add(
    "wd_is_l2",
    Claim(
        "X50-wd-l2",
        EXACT,
        "For gradient descent, the weight-decay update (Eq. 22) is a gradient step on J + lambda/2 ||w||^2 "
        "(Grosse ch. 5, §5)",
        "max over seeds of the relative difference between torch's SGD(weight_decay) step, (1 - alpha lambda) w "
        "- alpha grad J, and a step on autograd's gradient of the penalized cost",
        Rule("<", "identity_tol"),
    ),
    "max",
)
_add(
    "adam_l2",
    Claim(
        "X50-adam-l2",
        EXACT,
        "For Adam, putting the L2 gradient into the update is not Eq. 22: torch's Adam(weight_decay) differs "
        "from decoupled decay, which AdamW applies exactly (Grosse ch. 5, §5, AdamW)",
        "min over seeds of the relative difference after 20 steps between Adam with L2 in its gradient and "
        "Eq. 22 followed by Adam's step (AdamW's agreement with Eq. 22 is in the detail)",
        Rule(">", "differs_min"),
    ),
    "min",
)
_add(
    "schatten",
    Claim(
        "X50-schatten",
        EXACT,
        "For a full-width deep linear network, the smallest sum of squared Frobenius norms over the "
        "factorizations of an end-to-end map is K times its Schatten-2/K quasi-norm to the power 2/K, reached "
        "at balanced factors (Grosse ch. 5, §5, the footnote on width above 1)",
        "max over depths K in {2, 3, 4} and seeds of |minimized penalty - K sum sigma_i^{2/K}| / K sum "
        "sigma_i^{2/K}, the minimum found by L-BFGS over the invertible maps between the factors",
        Rule("<", "optimum_tol"),
    ),
    "max",
)
_add(
    "free_rescale",
    Claim(
        "X50-free",
        EXACT,
        "With BN, shrinking every BN-fed weight matrix leaves the network's function unchanged while the L2 "
        "penalty shrinks without bound, so L2 does not limit capacity (Grosse ch. 5, §5, interaction with "
        "normalization)",
        "max over seeds and gamma in {1e-3, 1e3} of the relative change of the outputs",
        Rule("<", "identity_tol"),
    ),
    "max",
)
_add(
    "g_gamma",
    Claim(
        "X52-gamma",
        EXACT,
        "Rescaling a BN-fed layer's weights by gamma leaves K-FAC's factor A unchanged and scales S, hence "
        "G_ll, by gamma^-2 (Grosse ch. 5, §5.2)",
        "max over gamma in {0.1, 10} and seeds of the relative errors of A(gamma w) against A(w) and of "
        "gamma^2 S(gamma w) against S(w)",
        Rule("<", "identity_tol"),
    ),
    "max",
)
_add(
    "eq27",
    Claim(
        "X53-eq27",
        EXACT,
        "Decay with a preconditioner C^-1 is the preconditioned step on J + lambda/2 ||w||_C^2 (Grosse ch. 5, "
        "§5.3, Eq. 27)",
        "max over seeds of the relative difference between (1 - alpha lambda) w - alpha C^-1 grad J and a "
        "C^-1-preconditioned step on autograd's gradient of the C-norm-penalized cost",
        Rule("<", "identity_tol"),
    ),
    "max",
)
_add(
    "cnorm_kfac",
    Claim(
        "X53-cnorm",
        EXACT,
        "In a BN network, K-FAC's C-norm of a BN-fed layer does not change when the layer is rescaled, and the "
        "exact Gauss-Newton C-norm of the layer's own weights is zero, so rescaling cannot shrink either: the "
        "chapter's remark that rescaling makes the C-norm arbitrarily small holds for C = I, not for these "
        "(Grosse ch. 5, §5.3, the footnote on scale invariance)",
        "max over gamma in {0.1, 10} and seeds of the relative change of w^T (A (x) S) w under w -> gamma w, "
        "and of w^T G w / (||w||^2 ||G||)",
        Rule("<", "identity_tol"),
    ),
    "max",
)
X53_CNORM_SGD = _add(
    "cnorm_sgd",
    Claim(
        "X53-cnorm-sgd",
        DESCRIPTIVE,
        "For SGD's metric (C = I) rescaling by gamma scales the C-norm squared by gamma^2",
        "the exponent p in ||gamma w||_C^2 = gamma^p ||w||_C^2 for C = I, fitted between gamma 0.1 and 10",
        Rule("none"),
    ),
    "max",
)
