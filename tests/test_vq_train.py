"""The quantizer's training path: VQ-VAE losses in the projected space, straight-through gradients,
and inference unchanged."""

import torch

from snac.vq import ResidualVectorQuantize, VectorQuantize


def _vq(seed: int = 0) -> VectorQuantize:
    torch.manual_seed(seed)
    return VectorQuantize(input_dim=16, codebook_size=32, codebook_dim=4, stride=2)


def test_losses_are_zero_when_the_projection_sits_on_a_codebook_entry():
    vq = _vq()
    # make in_proj the identity on the first 4 channels, then feed inputs equal to codebook rows
    with torch.no_grad():
        vq.in_proj.parametrizations.weight.original1.zero_()
        vq.in_proj.parametrizations.weight.original1[:, :4, 0] = torch.eye(4)
        vq.in_proj.parametrizations.weight.original0.fill_(1.0)
        vq.in_proj.bias.zero_()
    rows = torch.tensor([3, 7, 7, 0, 31])
    z_e = vq.codebook.weight[rows].detach().t()  # (4, 5)
    z = torch.zeros(1, 16, 10)
    z[0, :4] = z_e.repeat_interleave(2, dim=-1)  # avg-pooled by the stride back to z_e
    _, codes, commitment, codebook = vq.forward_train(z)
    assert torch.equal(codes[0], rows)
    assert commitment.abs().max() < 1e-12 and codebook.abs().max() < 1e-12


def test_losses_match_the_vq_vae_definition_and_gradients_take_their_paths():
    vq = _vq(1)
    z = torch.randn(2, 16, 8, requires_grad=True)
    z_q, codes, commitment, codebook = vq.forward_train(z)
    z_e = vq.in_proj(torch.nn.functional.avg_pool1d(z, 2, 2))
    q = vq.codebook.weight[codes].transpose(1, 2)
    torch.testing.assert_close(commitment, (z_e - q).pow(2).mean((1, 2)))
    torch.testing.assert_close(codebook, commitment)  # same value, different gradient paths
    # the codebook loss trains only the codebook; the commitment only the encoder side
    grads = torch.autograd.grad(codebook.sum(), [vq.codebook.weight, z], allow_unused=True)
    assert grads[0].abs().sum() > 0 and grads[1] is None
    grads = torch.autograd.grad(commitment.sum(), [vq.codebook.weight, z], allow_unused=True, retain_graph=True)
    assert grads[0] is None and grads[1].abs().sum() > 0


def test_reconstruction_gradient_reaches_the_encoder_through_the_straight_through_path():
    torch.manual_seed(2)
    rvq = ResidualVectorQuantize(16, 32, 4, [4, 2, 1])
    z = torch.randn(2, 16, 8, requires_grad=True)
    z_q, _, _, _ = rvq.forward_train(z)
    (g,) = torch.autograd.grad(z_q.pow(2).sum(), [z])
    assert g.abs().sum() > 0


def test_inference_outputs_are_unchanged_by_the_training_path():
    torch.manual_seed(3)
    rvq = ResidualVectorQuantize(16, 32, 4, [4, 2, 1])
    z = torch.randn(2, 16, 8)
    z_q, codes = rvq(z)
    z_q_t, codes_t, commitment, codebook = rvq.forward_train(z)
    assert torch.equal(z_q, z_q_t) and all(torch.equal(a, b) for a, b in zip(codes, codes_t))
    assert commitment.shape == codebook.shape == (2,)
    # decoding the codes gives the quantized latent (what the decoder sees either way)
    torch.testing.assert_close(rvq.from_codes(codes), z_q, atol=1e-5, rtol=1e-5)
