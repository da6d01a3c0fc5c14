"""The claims of the vision-transformer sections: one MoE layer inside a ViT, its routing patterns,
and global against layer-wise routing (each ``claim_...`` returns the keyword arguments of
:meth:`mpnn.runtime.repro.Run.claim`)."""
from __future__ import annotations

import pandas as pd

from mpnn.runtime import verdicts

from .claims import _gain_rule, ci_text, diff_claim, level_claim

SEC_VIT = "One MoE layer inside a vision transformer"
SEC_PATTERNS = "Routing patterns: by patch position, by digit, and over training"
SEC_GLOBAL = "Global vs layer-wise routing"


def claim_vit_one_moe_block(vit_gain: dict[str, list[float]], vit_experts: int, gain_margin: float) -> dict:
    """The next check "a single MoE layer in a transformer adds capacity at equal active compute" (top-1 minus dense)."""
    measured, verdict = diff_claim(vit_gain["top-1"], above=0, refuted_below=gain_margin)
    return dict(
        id="vit-one-moe-block", kind="next check",
        document="First experiment 2: a single MoE layer in a transformer; width sparsity adds capacity at equal active compute",
        criterion=_gain_rule("the ViT with a top-1 MoE last block", "the dense ViT of equal active compute", gain_margin),
        measured=f"top-1 MoE block ({vit_experts} experts) minus dense block: {measured}", verdict=verdict,
        expected="inconclusive", needs="default", section=SEC_VIT)


def claim_vit_moe_every_block(every_gain: list[float], gain_margin: float) -> dict:
    """The extension "width sparsity adds capacity at equal compute" with every ViT block an MoE layer."""
    measured, verdict = diff_claim(every_gain, above=0, refuted_below=gain_margin)
    return dict(
        id="vit-moe-every-block", kind="extension",
        document="Width sparsity adds capacity without adding compute per input (every block of the ViT an MoE layer)",
        criterion=_gain_rule("the ViT with every block's MLP a top-1 MoE", "the dense ViT", gain_margin),
        measured=f"every block a top-1 MoE minus the dense ViT (equal active compute per token): {measured}",
        verdict=verdict, expected="supported", needs="default", section=SEC_GLOBAL)


def layerwise_nmi(path_layers: pd.DataFrame) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per seed, the layer-wise top-1 ViT's NMI of the expert with the patch position and with the
    digit in its first and its last MoE layer: ``(position 0, digit 0, position 1, digit 1)``."""
    lw = path_layers[path_layers.variant == "layer-wise top-1"]
    first, last = lw[lw.layer == 0], lw[lw.layer == 1]
    return (first["NMI position"].tolist(), first["NMI digit"].tolist(), last["NMI position"].tolist(),
            last["NMI digit"].tolist())


def claim_vit_routing_position_then_digit(path_layers: pd.DataFrame) -> dict:
    """The next check "routing reflects the data: the first MoE layer routes by position, the last by digit"."""
    pos0, dig0, pos1, dig1 = layerwise_nmi(path_layers)
    (m_p0, v_p0), (m_d1, v_d1) = level_claim(pos0, above=0.1), level_claim(dig1, above=0.1)
    return dict(
        id="vit-routing-position-then-digit", kind="next check",
        document="Next check 3: routing decisions reflect meaningful patterns in the data (here: the first MoE layer "
                 "routes by patch position, the last by digit)",
        criterion=("supported if the 95% CIs (inside [0, 1]) of the first MoE layer's NMI(position; expert) and of the "
                   "last layer's NMI(digit; expert) both lie above 0.1; not supported if both lie below; mixed or "
                   "inconclusive otherwise"),
        measured=(f"layer-wise top-1 ViT: first MoE layer NMI(position) {m_p0}, NMI(digit) {ci_text(dig0)}; last MoE "
                  f"layer NMI(position) {ci_text(pos1)}, NMI(digit) {m_d1}"),
        verdict=verdicts.combine({"position first": v_p0, "digit last": v_d1}), expected="supported", needs="default",
        section=SEC_GLOBAL)


def claim_vit_top1_routes_by_digit(vit_per_seed: pd.DataFrame) -> dict:
    """The next check "a single MoE layer's routing reflects the input's digit" (:func:`vit_table` per seed)."""
    top1_rows = vit_per_seed[vit_per_seed.variant == "top-1"]
    measured, verdict = level_claim(top1_rows["NMI digit"].tolist(), above=0.05)
    return dict(
        id="vit-top1-routes-by-digit", kind="next check",
        document="First experiment 2: observe a single MoE layer's routing patterns (routing reflects the input: its digit)",
        criterion=("supported if the 95% CI (inside [0, 1]) of the top-1 MoE block's NMI(digit; expert) lies above 0.05; "
                   "not supported if it lies below; inconclusive otherwise"),
        measured=(f"one top-1 MoE block (the last): NMI(digit; expert) {measured}, NMI(position; expert) "
                  f"{ci_text(top1_rows['NMI position'].tolist())}"),
        verdict=verdict, expected="supported", needs="default", section=SEC_PATTERNS)


def claim_vit_load_balanced(vit_per_seed: pd.DataFrame, vit_alpha: float) -> dict:
    """The extension "the Switch Transformer's alpha = 0.01 keeps a transformer's top-1 MoE block balanced"."""
    top1_rows = vit_per_seed[vit_per_seed.variant == "top-1"]
    measured, verdict = level_claim(top1_rows["routing entropy"].tolist(), above=0.9)
    return dict(
        id="vit-load-balanced", kind="extension",
        document="The Switch Transformer's balancing weight alpha=0.01 (Fedus et al. 2022) keeps a transformer's top-1 "
                 "MoE block balanced",
        criterion=("supported if the 95% CI (inside [0, 1]) of the normalised routing entropy of the last tenth of training "
                   "lies above 0.9; not supported if it lies below; inconclusive otherwise"),
        measured=f"top-1 MoE block, alpha={vit_alpha}: normalised routing entropy {measured}",
        verdict=verdict, expected="supported", needs="default", section=SEC_PATTERNS)


def claim_global_vs_layerwise(global_gain: list[float]) -> dict:
    """The open question "routing decisions taken globally can do better than layer-wise ones"."""
    measured, verdict = diff_claim(global_gain, above=0)
    return dict(
        id="global-vs-layerwise", kind="open question",
        document="Open question 3: routing decisions taken globally (once per input, for every layer) can do better than "
                 "local, layer-wise ones",
        criterion=("supported if the 95% CI of one learned per-image path (for both MoE layers) minus per-token, per-layer "
                   "top-1 at equal active compute (paired by seed) lies above 0; not supported if it lies below 0; "
                   "inconclusive otherwise (a search over E paths, not over the E^L combinations)"),
        measured=f"global path minus layer-wise top-1: {measured}", verdict=verdict,
        expected="not supported", needs="default", section=SEC_GLOBAL)


def layerwise_spread(paths: pd.DataFrame) -> tuple[list[float], list[float]]:
    """Per seed, the layer-wise top-1 ViT's experts per image and layer, and the NMI between a token's
    experts in the two layers (:func:`routing_comparison`)."""
    lw = paths[paths.variant == "layer-wise top-1"]
    return lw["experts per image"].tolist(), lw["layer agreement"].tolist()


def claim_layerwise_routing_differs(paths: pd.DataFrame, vit_experts: int) -> dict:
    """The extension "layer-wise routing is not one path per input in disguise"."""
    per_image, agree = layerwise_spread(paths)
    (m_pi, v_pi), (m_ag, v_ag) = level_claim(per_image, above=2, bounds=(1, vit_experts)), level_claim(agree, below=0.2)
    return dict(
        id="layerwise-routing-differs", kind="extension",
        document="Local routing is taken layer by layer: it is not one path per input in disguise",
        criterion=(f"supported if the 95% CI (inside [1, {vit_experts}]) of the experts an image's tokens use per layer lies "
                   "above 2 and the CI of the NMI between a token's experts in the two layers lies below 0.2; not "
                   "supported if neither holds; mixed otherwise"),
        measured=(f"layer-wise top-1: experts per image and layer {m_pi}; NMI of a token's two experts {m_ag} "
                  "(the global path: 1 expert per image, NMI 1 by construction)"),
        verdict=verdicts.combine({"experts per image": v_pi, "layer agreement": v_ag}), expected="supported",
        needs="default", section=SEC_GLOBAL)
