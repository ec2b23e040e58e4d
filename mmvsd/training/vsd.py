"""Variational Speculative Decoding (VSD; Zou et al., "Variational Speculative Decoding: Rethinking
Draft Training from Token Likelihood to Sequence Acceptance", ICML 2026, arXiv 2602.05774).

VSD trains the drafter q for what decoding rewards, accepted draft paths, by EM over latent
draft paths z = (z_1 .. z_L) from a context x. The paper's exact formulas are not public; this
is our formulation of its description, every choice written down here.

E-step (`estep`). From C contexts of each training sequence the drafter samples S paths by
rolling out on its own states at temperature `vsd.temperature` (the proposal q_s), as decoding
drafts. The target scores every path in one pass (the oracle). Per token k of path s:

    alpha_sk = 1[z_sk = argmax p_T]                        (greedy oracle, target_temperature 0)
             = min(1, p_T(z_sk) / q_s(z_sk))               (stochastic oracle, p_T at target_temperature)
    pi_sk    = prod_{j <= k} alpha_sj                      (the prefix up to k survives)
    U_s      = sum_k pi_sk                                 (utility: expected accepted length)
    kappa_s  = pi_sL                                       (path validity: all L accepted)
    log rho_s = sum_k pi_sk (log p_T(z_sk) - log q_s(z_sk))   (importance ratio of the accepted part;
                                                            greedy: log p_T = 0 on accepted tokens)

The oracle-filtered posterior is q* ~ p_T(z) kappa(z); its self-normalised importance weights
over the S samples are w_s ~ kappa_s rho_s ("plain" weights, `vsd.arw=false`): only fully
accepted paths count.

ARW, Adaptive Rejection Weighting (`vsd.arw=true`). Rejected proposals keep their accepted
prefixes: the hard validity kappa_s becomes a discount gamma^(L - U_s) per missing token, and the
weights are tempered adaptively to cut variance,

    w_s ~ [gamma^(L - U_s) rho_s]^eta,   eta = max{eta in (0, 1] : ESS(w) >= ess_floor * S},

found per context by bisection (ESS = (sum w)^2 / sum w^2; eta -> 0 gives uniform weights,
ESS = S, so a solution always exists).

M-step (`vsd_losses`). Weighted likelihood of the accepted prefixes,

    L_wll = -(1/C) sum_c sum_s w_cs sum_k pi_csk log q(z_csk),

with q the drafter at temperature 1 (gradients flow through its rollout), plus the baseline
losses as the anchor that keeps q near the target (the KL term of the ELBO).

CAR, Confidence-Aware Regularisation (`vsd.car=true`). Where a path is first rejected, penalise
the confidence the drafter put on the rejected token, in proportion to that confidence:

    L_car = (1/(C S)) sum_c sum_s sum_k pi_cs(k-1) (1 - alpha_csk) * sg[q(z_csk)] * -log(1 - q(z_csk)),

pi_cs(k-1) (1 - alpha_csk) being the probability that k is the first rejected token, sg a stop
gradient: confidently wrong tokens are pushed down hardest, unsure ones barely.

Diagnostics (the paper's): `greedy_pruned`, the share of contexts whose greedy draft path (the
drafter's argmax rollout) is not among the S sampled proposals; `accepted_is_greedy`, the share
where the proposals' best accepted path (highest U) is the greedy path's prefix of that length.
"""

from __future__ import annotations

import torch

from mmvsd.config import VsdConfig
from mmvsd.drafters.base import Rollout, pair_position
from mmvsd.training.features import DraftBatch


def acceptance(paths: torch.Tensor, draft_logits: torch.Tensor, target_logits: torch.Tensor,
               draft_temperature: float, target_temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token acceptance alpha [..., L] of sampled `paths` [..., L] and the log ratio
    log p_T(z) - log q_s(z) [..., L] (0 where the greedy oracle accepts), from the drafter's
    logits (the proposal, at `draft_temperature`) and the target's [..., L, V]."""
    z = paths[..., None]
    log_q = torch.log_softmax(draft_logits.detach() / draft_temperature, -1).gather(-1, z)[..., 0]
    if target_temperature == 0:
        alpha = (target_logits.argmax(-1) == paths).float()
        return alpha, -log_q * alpha
    log_p = torch.log_softmax(target_logits / target_temperature, -1).gather(-1, z)[..., 0]
    return (log_p - log_q).exp().clamp(max=1.0), log_p - log_q


def ess(w: torch.Tensor) -> torch.Tensor:
    """Effective sample size of weights [..., S] (not necessarily normalised)."""
    return w.sum(-1) ** 2 / (w ** 2).sum(-1).clamp_min(1e-30)


def plain_weights(survival: torch.Tensor, log_ratio: torch.Tensor) -> torch.Tensor:
    """w_s ~ kappa_s rho_s, self-normalised over S ([C, S]; all zero where no path is valid)."""
    kappa = survival[..., -1]
    logw = torch.where(kappa > 0, kappa.clamp_min(1e-30).log() + (survival * log_ratio).sum(-1), -torch.inf)
    w = torch.softmax(logw, -1)
    return torch.nan_to_num(w, nan=0.0)


def arw_weights(survival: torch.Tensor, log_ratio: torch.Tensor, gamma: float, ess_floor: float,
                iterations: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive Rejection Weighting: w_s ~ [gamma^(L - U_s) rho_s]^eta with the largest eta in
    (0, 1] keeping ESS >= ess_floor * S, per context. Returns w [C, S] (rows sum to 1) and eta [C]."""
    length = survival.shape[-1]
    score = (length - survival.sum(-1)) * torch.log(torch.tensor(gamma)) + (survival * log_ratio).sum(-1)  # [C, S]
    floor = ess_floor * score.shape[-1]
    low, high = torch.zeros(score.shape[0]), torch.ones(score.shape[0])
    ok = ess(torch.softmax(score, -1)) >= floor  # eta = 1 already fine
    for _ in range(iterations):
        mid = (low + high) / 2
        good = ess(torch.softmax(score * mid[:, None], -1)) >= floor
        low, high = torch.where(good, mid, low), torch.where(good, high, mid)
    eta = torch.where(ok, torch.ones_like(low), low)
    return torch.softmax(score * eta[:, None], -1), eta


def weighted_path_nll(log_q: torch.Tensor, survival: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """L_wll = -(1/C) sum_c sum_s w_cs sum_k pi_csk log q(z_csk); log_q, survival [C, S, L], w [C, S]."""
    return -(w[..., None] * survival * log_q).sum() / log_q.shape[0]


def car_loss(log_q: torch.Tensor, alpha: torch.Tensor, survival: torch.Tensor) -> torch.Tensor:
    """L_car = mean over paths of sum_k P(k first rejected) * sg[q(z_k)] * -log(1 - q(z_k))."""
    before = torch.cat([torch.ones_like(survival[..., :1]), survival[..., :-1]], dim=-1)  # pi_(k-1)
    first_rejected = before * (1 - alpha)
    q = log_q.exp()
    unlikelihood = -torch.log1p(-q.clamp(max=1 - 1e-6))
    return (first_rejected * q.detach() * unlikelihood).sum(-1).mean()


def pick_contexts(loss_mask: torch.Tensor, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` answer positions per sequence ([B, n] mask -> [B, count] pair indices, uniform with
    replacement) and which sequences have any ([B] bool; the others get index 0, weight 0)."""
    weights = loss_mask.float().cpu()
    valid = weights.sum(-1) > 0
    weights[~valid, 0] = 1.0
    return torch.multinomial(weights, count, replacement=True, generator=generator), valid


def vsd_step(model, target, batch: DraftBatch, cfg: VsdConfig, generator: torch.Generator):
    """One VSD E-step and the M-step's loss terms. Runs the drafter once (teacher-forced pass and
    rollouts together) and the target once over all sampled paths.

    Returns the teacher-forced predictions [B, n, H] (for the anchor losses), the VSD loss, and
    the training-time metrics."""
    b = batch.tokens.shape[0]
    c, s, length = cfg.contexts, cfg.num_proposals, cfg.depth
    device = batch.tokens.device
    contexts, valid = pick_contexts(batch.loss_mask, c, generator)  # [B, C]
    contexts, valid = contexts.to(device), valid.to(device)
    rows = contexts.repeat_interleave(s + 1, dim=1)  # [B, C (S + 1)]: S samples, then the greedy path

    def pick(_, logits: torch.Tensor, level: int) -> torch.Tensor:
        logits = logits.detach().view(c, s + 1, -1)
        probs = torch.softmax(logits[:, :s].float() / cfg.temperature, -1).flatten(0, 1).cpu()
        sampled = torch.multinomial(probs, 1, generator=generator).view(c, s).to(device)
        return torch.cat([sampled, logits[:, s].argmax(-1, keepdim=True)], dim=1).flatten()

    predicted, draft_logits, paths = model(batch.features, batch.tokens, batch.image_pairs, batch.image_embeds,
                                           Rollout(rows, length, pick))
    draft_logits = draft_logits.view(b * c, s + 1, length, -1)
    paths = paths.view(b * c, s + 1, length)
    greedy, paths, draft_logits = paths[:, s], paths[:, :s], draft_logits[:, :s]

    prefix_ends = pair_position(contexts).repeat_interleave(s, dim=1)  # a context pair ends on its token
    after_nodes = target.path_logits(batch.input_ids, batch.attention_mask, batch.image_embeds, prefix_ends,
                                     paths.reshape(b, c * s, length))  # [B, C S, L, V]
    first = batch.next_logits[torch.arange(b, device=device)[:, None], contexts]  # [B, C, V]
    target_logits = torch.cat([first[:, :, None, None].expand(-1, -1, s, 1, -1).reshape(b * c, s, 1, -1),
                               after_nodes.view(b * c, s, length, -1)[:, :, :-1]], dim=2)  # [BC, S, L, V]
    alpha, log_ratio = acceptance(paths, draft_logits, target_logits, cfg.temperature, cfg.target_temperature)
    survival = alpha.cumprod(-1)
    if cfg.arw:
        w, _ = arw_weights(survival.cpu(), log_ratio.cpu(), cfg.arw_gamma, cfg.ess_floor)
    else:
        w = plain_weights(survival.cpu(), log_ratio.cpu())
    w = w.to(device) * valid.repeat_interleave(c)[:, None]
    log_q = torch.log_softmax(draft_logits, -1).gather(-1, paths[..., None])[..., 0]  # temperature 1, with grad
    loss = cfg.weight * weighted_path_nll(log_q, survival, w)
    if cfg.car:
        loss = loss + cfg.car_weight * car_loss(log_q, alpha, survival)

    utility = survival.sum(-1)  # [BC, S]
    best = paths[torch.arange(len(paths)), utility.argmax(-1)]  # [BC, L]
    best_length = utility.max(-1).values.round().long()
    same_prefix = torch.tensor([torch.equal(best[i, :k], greedy[i, :k]) for i, k in enumerate(best_length.tolist())])
    stats = {"vsd_loss": loss.item(), "accepted_len": utility.mean().item(),
             "ess": (ess(w) / s)[w.sum(-1) > 0].mean().nan_to_num(0.0).item(),
             "full_accept": survival[..., -1].mean().item(),
             "greedy_pruned": 1 - (paths == greedy[:, None]).all(-1).any(-1).float().mean().item(),
             "accepted_is_greedy": same_prefix.float().mean().item()}
    return predicted, loss, stats
