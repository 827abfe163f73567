"""K-FAC (Martens & Grosse 2015) for the linear layers of a network, with exact damping.

For a linear layer s = W a (+ b), K-FAC approximates the layer's block of the Fisher (for these
likelihoods, the Gauss-Newton matrix) by a Kronecker product A (x) S: A = E[a a^T] over the layer's
inputs (a 1 appended when it has a bias) and S = E[g g^T] over the gradients g of the loss with
respect to s when the targets are *drawn from the model's own predictive distribution*. The update
solves the damped system of Grosse ch. 5, Eq. 26 exactly, in the factors' eigenbases:

    (A (x) S + eta I)^-1 vec(G) = vec( Q_S [ (Q_S^T G Q_A) / (s_i a_j + eta) ] Q_A^T ).

Exact damping rather than Martens & Grosse's factored (A + pi sqrt(eta) I) (x) (S + sqrt(eta)/pi I):
the chapter's mechanism 2 (§5.2) is about eta added to the curvature itself, and the exact form makes
the single-layer identity (a Gaussian likelihood: K-FAC's block *is* the Fisher) hold to rounding.

Running averages (`ema`) of A and S are updated every `cov_every` steps from the training forward
pass (a second backward pass, through the same graph, with the sampled targets: no extra forward, so
batch norm sees each batch once); eigenbases are refreshed every `inverse_every` steps. Weight decay
is either coupled (lambda w added to G before preconditioning) or decoupled (w shrunk by lr lambda,
Eq. 27's form), as for the other optimizers. Parameters outside the preconditioned layers (batch-norm
gains, the biases of other modules) take plain SGD steps. Optional heavy-ball momentum acts on the
preconditioned step.

curvlinops' KFACLinearOperator (used by the tests as an independent reference for A and S) computes
the same factors, but from its own forward pass over a data set; in a training loop that would double
the forward cost and run batch norm twice per batch, so the factors are taken here with hooks.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Likelihood = Literal["categorical", "gaussian"]
FisherType = Literal["mc", "exact"]


class KFAC(torch.optim.Optimizer):
    """K-FAC over `layers` (nn.Linear modules); every other parameter in `params` takes SGD steps.

    Call `observe(outputs)` after the forward pass and before `loss.backward()` (it needs the graph),
    then `step()` after the backward pass. `groups` are ordinary param groups (lr, weight_decay)."""

    def __init__(
        self,
        params,
        layers: list[nn.Module],
        lr: float = 0.01,
        damping: float = 1e-3,
        ema: float = 0.95,
        cov_every: int = 1,
        inverse_every: int = 10,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        likelihood: Likelihood = "categorical",
        fisher: FisherType = "mc",
    ):
        for m in layers:
            if not isinstance(m, nn.Linear):
                raise TypeError(f"K-FAC preconditions nn.Linear layers only, not {type(m).__name__}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum))
        self.layers = list(layers)
        self.damping, self.ema, self.likelihood, self.fisher = damping, ema, likelihood, fisher
        self.cov_every, self.inverse_every = cov_every, inverse_every
        self.steps = 0
        self.A: dict[nn.Module, torch.Tensor] = {}
        self.S: dict[nn.Module, torch.Tensor] = {}
        self._eig: dict[nn.Module, tuple[torch.Tensor, ...]] = {}
        self._captured: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles = [m.register_forward_hook(self._capture) for m in self.layers]

    # -- curvature factors -------------------------------------------------------------------
    def _capture(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        # Only the training forward pass of a factor-update step (not evaluation, not probes' side passes).
        if self.steps % self.cov_every == 0 and torch.is_grad_enabled() and module.training:
            self._captured[module] = (inputs[0].detach(), output)

    def _output_vectors(self, outputs: torch.Tensor) -> torch.Tensor:
        """(K, B, C) per-example vectors h with E[sum_k h h^T] = the loss Hessian w.r.t. the outputs
        (the Fisher's middle factor): one sampled target per example for "mc", the exact square root
        of the Hessian's columns for "exact"."""
        z = outputs.detach()
        if self.likelihood == "gaussian":  # unit variance: Hessian I
            if self.fisher == "exact":
                return torch.eye(z.shape[1], dtype=z.dtype, device=z.device).unsqueeze(1).expand(-1, z.shape[0], -1)
            return -torch.randn_like(z).unsqueeze(0)  # d/dz 0.5 ||z - y||^2 at y = z + noise
        p = F.softmax(z, dim=1)
        if self.fisher == "exact":  # diag(p) - p p^T = sum_c h_c h_c^T, h_c = sqrt(p_c) (e_c - p)
            eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
            return (p.sqrt().T.unsqueeze(-1) * (eye.unsqueeze(1) - p.unsqueeze(0))).contiguous()
        y = torch.multinomial(p, 1).squeeze(1)
        return (p - F.one_hot(y, z.shape[1]).to(z.dtype)).unsqueeze(0)

    @torch.no_grad()
    def _update(self, old: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
        return new if old is None else old.mul_(self.ema).add_(new, alpha=1.0 - self.ema)

    def observe(self, outputs: torch.Tensor) -> None:
        """Update the factors from the forward pass that produced `outputs` (graph kept for the loss)."""
        if not self._captured:
            return
        mods = list(self._captured)
        acts = [self._captured[m][1] for m in mods]
        vectors = self._output_vectors(outputs)  # (K, B, C)
        batch = outputs.shape[0]
        # d(sum_i h_i . z_i)/ds = the per-example gradients for targets h: all K vectors in one
        # vmapped backward pass (is_grads_batched), rather than K passes through the graph.
        gs = torch.autograd.grad(outputs, acts, grad_outputs=vectors, retain_graph=True, is_grads_batched=True)
        grads = [g.reshape(-1, g.shape[-1]).T @ g.reshape(-1, g.shape[-1]) / batch for g in gs]
        for m, S_new in zip(mods, grads):
            a = self._captured[m][0]
            if m.bias is not None:
                a = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
            self.A[m] = self._update(self.A.get(m), a.T @ a / batch)
            self.S[m] = self._update(self.S.get(m), S_new)
        self._captured.clear()

    # -- the step ------------------------------------------------------------------------------
    def _precondition(self, m: nn.Module, G: torch.Tensor) -> torch.Tensor:
        if m not in self._eig or self.steps % self.inverse_every == 0:
            ea, qa = torch.linalg.eigh(self.A[m])
            es, qs = torch.linalg.eigh(self.S[m])
            self._eig[m] = (ea.clamp_(min=0.0), qa, es.clamp_(min=0.0), qs)
        ea, qa, es, qs = self._eig[m]
        return qs @ ((qs.T @ G @ qa) / (es[:, None] * ea[None, :] + self.damping)) @ qa.T

    @torch.no_grad()
    def step(self) -> None:
        directions: dict[torch.Tensor, torch.Tensor] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    directions[p] = p.grad + group["weight_decay"] * p if group["weight_decay"] else p.grad
        for m in self.layers:  # the layer's weight and bias are preconditioned together
            if m.weight not in directions or m not in self.A:
                continue
            parts = [directions[m.weight]] + ([directions[m.bias].unsqueeze(1)] if m.bias is not None else [])
            U = self._precondition(m, torch.cat(parts, dim=1))
            directions[m.weight] = U[:, : m.weight.shape[1]]
            if m.bias is not None:
                directions[m.bias] = U[:, -1]
        for group in self.param_groups:
            for p in group["params"]:
                if p not in directions:
                    continue
                d = directions[p]
                if group["momentum"]:
                    state = self.state[p]
                    buf = state.get("momentum")
                    state["momentum"] = d = d.clone() if buf is None else buf.mul_(group["momentum"]).add_(d)
                p.add_(d, alpha=-group["lr"])
        self.steps += 1


class StackedKFAC:
    """`KFAC`'s factors, damping and preconditioning for M stacked runs at once (engine/ensemble.py):
    layer i's weights are one (M, out, in) tensor and its factors one batch of M matrices, A_i of shape
    (M, in(+1), in(+1)) and S_i of shape (M, out, out). Their running averages are updated from one
    batched backward pass for all members, their eigendecompositions refreshed by one batched `eigh`
    every `inverse_every` steps, and the damping may differ per member. Member m's factors and
    directions are those `KFAC` computes for run m alone, up to float rounding (tests/test_ensemble_kfac.py).

    The caller (engine.ensemble.EnsembleOptimizer) applies weight decay, momentum and the learning
    rates around `precondition`, as engine.optim.Optimizer and `KFAC.step` do for one run."""

    def __init__(
        self,
        layers: list[tuple[torch.Tensor, torch.Tensor | None]],
        damping: list[float],
        ema: float = 0.95,
        cov_every: int = 1,
        inverse_every: int = 10,
        fisher: FisherType = "mc",
        generators: list[torch.Generator] | None = None,
        likelihood: Likelihood = "categorical",
    ):
        self.layers = list(layers)  # (weight (M, out, in), bias (M, out) or None) per preconditioned layer
        w = self.layers[0][0]
        # (M, 1, 1), from Python floats: a float32 tensor would round 1e-2 before a float64 run sees it
        self.damping = torch.tensor([float(d) for d in damping], dtype=torch.float64).to(w).view(-1, 1, 1)
        self.ema, self.cov_every, self.inverse_every, self.fisher = ema, cov_every, inverse_every, fisher
        self.likelihood = likelihood
        if fisher == "mc" and (generators is None or len(generators) != w.shape[0]):
            raise ValueError("StackedKFAC: the sampled Fisher needs one generator per member")
        self.generators = generators
        self.steps = 0
        self.A: list[torch.Tensor | None] = [None] * len(self.layers)
        self.S: list[torch.Tensor | None] = [None] * len(self.layers)
        self._eig: list[tuple[torch.Tensor, ...] | None] = [None] * len(self.layers)

    @property
    def observing(self) -> bool:
        """Whether this step's training forward pass feeds the factors (every `cov_every` steps)."""
        return self.steps % self.cov_every == 0

    def _output_vectors(self, logits: torch.Tensor) -> torch.Tensor:
        """(K, M, B, C): `KFAC._output_vectors`, per member."""
        z = logits.detach()
        classes = z.shape[2]
        if self.likelihood == "gaussian":  # unit variance: the loss Hessian is I
            if self.fisher == "exact":
                eye = torch.eye(classes, dtype=z.dtype, device=z.device).view(classes, 1, 1, classes)
                return eye.expand(-1, z.shape[0], z.shape[1], -1)
            noise = [torch.randn(z.shape[1:], generator=g, dtype=z.dtype, device=z.device) for g in self.generators]
            return -torch.stack(noise).unsqueeze(0)
        p = F.softmax(z, dim=2)
        if self.fisher == "exact":  # h_c = sqrt(p_c) (e_c - p), c = 1..C
            eye = torch.eye(classes, dtype=z.dtype, device=z.device).view(classes, 1, 1, classes)
            return (p.sqrt().permute(2, 0, 1).unsqueeze(-1) * (eye - p.unsqueeze(0))).contiguous()
        # one target per example from each member's own predictive distribution, drawn from the
        # generator that continues that member's run's RNG stream (as KFAC draws from torch's)
        y = torch.stack([torch.multinomial(p[k], 1, generator=g).squeeze(1) for k, g in enumerate(self.generators)])
        return (p - F.one_hot(y, classes).to(z.dtype)).unsqueeze(0)

    def _update(self, old: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
        return new if old is None else old.mul_(self.ema).add_(new, alpha=1.0 - self.ema)

    def observe(self, logits: torch.Tensor, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        """From the training forward pass: logits (M, B, C), and per preconditioned layer its inputs a
        (M, B, in) and its outputs s (M, B, out), still in the graph (which is kept for the loss)."""
        if not self.observing:
            return
        batch = logits.shape[1]
        vectors = self._output_vectors(logits)  # (K, M, B, C)
        gs = torch.autograd.grad(logits, outputs, grad_outputs=vectors, retain_graph=True, is_grads_batched=True)
        with torch.no_grad():
            for i, (a, g) in enumerate(zip(inputs, gs)):
                g = g.transpose(0, 1).reshape(g.shape[1], -1, g.shape[-1])  # (M, K B, out), K-major as KFAC's
                a = a.detach()
                if self.layers[i][1] is not None:
                    a = torch.cat([a, torch.ones_like(a[..., :1])], dim=2)
                self.A[i] = self._update(self.A[i], a.mT @ a / batch)
                self.S[i] = self._update(self.S[i], g.mT @ g / batch)

    @staticmethod
    def _eigh(mat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched eigh; a member whose factor is not finite (a diverged run, whose updates no longer
        matter) gets the identity's, so that one member cannot stop the others."""
        finite = torch.isfinite(mat).flatten(1).all(1)
        if not bool(finite.all()):
            eye = torch.eye(mat.shape[-1], dtype=mat.dtype, device=mat.device).expand_as(mat)
            mat = torch.where(finite.view(-1, 1, 1), mat, eye)
        e, q = torch.linalg.eigh(mat)
        return e.clamp_(min=0.0), q

    @torch.no_grad()
    def precondition(self, directions: dict[int, torch.Tensor]) -> None:
        """Replace the directions (by id of the parameter) of every preconditioned layer's weight and
        bias with the damped natural-gradient direction, per member (Grosse ch. 5, Eq. 26); then count
        the step."""
        for i, (w, b) in enumerate(self.layers):
            if id(w) not in directions or self.A[i] is None:
                continue
            if self._eig[i] is None or self.steps % self.inverse_every == 0:
                self._eig[i] = (*self._eigh(self.A[i]), *self._eigh(self.S[i]))
            ea, qa, es, qs = self._eig[i]
            parts = [directions[id(w)]] + ([directions[id(b)].unsqueeze(2)] if b is not None else [])
            G = torch.cat(parts, dim=2)  # (M, out, in(+1))
            U = qs @ ((qs.mT @ G @ qa) / (es.unsqueeze(2) * ea.unsqueeze(1) + self.damping)) @ qa.mT
            directions[id(w)] = U[:, :, : w.shape[2]]
            if b is not None:
                directions[id(b)] = U[:, :, -1]
        self.steps += 1
