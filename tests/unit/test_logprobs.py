import torch

from rlkit.kernels.logprobs import token_logprobs


def test_token_logprobs_match_log_softmax_with_temperature_and_chunks():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 50, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (3, 7))
    ref = torch.log_softmax(logits / 0.7, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    p = torch.softmax(logits / 0.7, -1)
    ref_ent = -(p * torch.log_softmax(logits / 0.7, -1)).sum(-1)
    lp, ent = token_logprobs(logits, targets, temperature=0.7, chunk_rows=4, with_entropy=True)
    assert torch.allclose(lp.double(), ref, atol=1e-6)
    assert torch.allclose(ent.double(), ref_ent, atol=1e-5)
    g1, = torch.autograd.grad(lp.sum(), logits)
    g2, = torch.autograd.grad(ref.sum(), logits)
    assert torch.allclose(g1, g2, atol=1e-6)
