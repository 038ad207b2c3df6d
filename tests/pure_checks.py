"""The PURE projector property check shared by the UNet / cross-attention DiT tests (test_pure_ace.py) and the
joint-attention ones (test_joint_sites.py)."""

from __future__ import annotations

import torch

from erasekit.methods import pure as P


def check_projector_edit(pipe, ad, edit, H_F: dict, H_R: dict, config, *, changes: bool = False) -> None:
    """Applied, ``edit`` (PURE's activation basis) gives every site of each attention block E W0 with
    E = I − P_F(I − P_R) built from the block's recorded forget / retain activations ``H_F`` / ``H_R``: E V_R = V_R
    (identity on the retain subspace), the change W − W0 inside span V_F with rank ≤ rank V_F (``changes``: and not
    zero); revert is bit-exact."""
    originals = {p: ad.linear(p).weight.detach().clone() for p in ad.paths}
    edit.apply(pipe)
    try:
        for block, paths in ad.attention_layers().items():
            V_F, V_R = P.activation_bases([H_F[block]], [None], H_R[block], config)
            assert V_F.shape[1] >= 1 and V_R.shape[1] >= 1
            E = P.projector_E(V_F, V_R)
            torch.testing.assert_close(E @ V_R, V_R, rtol=0, atol=1e-10)  # identity on the retain subspace
            for path in paths:
                W0, W = originals[path].double(), ad.linear(path).weight.detach().double()
                torch.testing.assert_close(W, E @ W0, rtol=1e-5, atol=1e-6)
                D = W - W0  # = −P_F (I − P_R) W0: its outputs lie in span V_F, rank ≤ rank V_F
                if changes:
                    assert float(D.abs().max()) > 0
                torch.testing.assert_close(V_F @ (V_F.T @ D), D, rtol=1e-5, atol=1e-6)
                assert torch.linalg.matrix_rank(D, rtol=1e-4) <= V_F.shape[1]  # fp32 storage rounds the rest
    finally:
        edit.revert(pipe)
    for p, w in originals.items():
        assert torch.equal(ad.linear(p).weight, w)
