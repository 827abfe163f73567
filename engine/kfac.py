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
