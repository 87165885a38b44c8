"""Our SNAC against upstream SNAC 1.2.1 (the implementation the published checkpoints were made for)."""

import os

import pytest
import torch

from helpers_perturb import perturb_parameters_
from snac.presets import SNAC_24KHZ, SNAC_32KHZ, SNAC_44KHZ
from snac import SNAC

pytestmark = pytest.mark.skipif(os.environ.get("SNAC_SKIP_REFERENCE") == "1",
                                reason="SNAC_SKIP_REFERENCE=1: no PyPI access for the reference wheel")


@pytest.fixture(scope="module")
def ref():
    from scripts._common import import_reference

    return import_reference()


PUBLISHED = {  # tensors in the state_dict, parameters (SNAC_FACTS.md)
    "24khz": (SNAC_24KHZ, 269, 19_842_914),
    "32khz": (SNAC_32KHZ, 286, 54_546_338),
    "44khz": (SNAC_44KHZ, 286, 54_546_338),
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_state_dict_layout_equals_reference(ref, name):
    cfg, n_tensors, n_params = PUBLISHED[name]
    ours, theirs = SNAC(**cfg).state_dict(), ref.SNAC(**cfg).state_dict()
    assert len(ours) == n_tensors
    assert sum(v.numel() for k, v in SNAC(**cfg).named_parameters()) == n_params
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


@pytest.mark.parametrize("cfg", [pytest.param(SNAC_24KHZ, id="24khz"),  # the 32 kHz layout (attention) in the slow lane
                                 pytest.param(SNAC_32KHZ, id="32khz", marks=pytest.mark.slow)])
def test_codes_and_decode_equal_reference(ref, cfg):
    torch.manual_seed(0)
    # every tensor away from its init (Snake alphas, biases, magnitudes): a layer of ours that
    # ignored a loaded tensor would otherwise agree with the reference by accident
    theirs = perturb_parameters_(ref.SNAC(**cfg), seed=5).eval()
    ours = SNAC(**cfg).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    sr = cfg["sampling_rate"]
    t = torch.arange(sr // 2 + 777) / sr
    audio = torch.stack([0.4 * torch.sin(2 * torch.pi * 190 * t), 0.1 * torch.randn(len(t))])[:, None]
    with torch.inference_mode():
        codes_ref, codes = theirs.encode(audio), ours.encode(audio)
        assert len(codes) == len(cfg["vq_strides"])
        for a, b in zip(codes_ref, codes):
            assert b.dtype == torch.int64
            assert torch.equal(a, b)
        torch.manual_seed(1)
        dec_ref = theirs.decode(codes)
        torch.manual_seed(1)  # same NoiseBlock draws
        dec = ours.decode(codes)
        assert dec.shape == dec_ref.shape
        assert (dec - dec_ref).abs().max() < 1e-5
        torch.manual_seed(2)
        fwd_ref, _ = theirs(audio)
        torch.manual_seed(2)
        fwd, fwd_codes = ours(audio)
        assert fwd.shape == audio.shape
        assert (fwd - fwd_ref).abs().max() < 1e-5
        assert all(torch.equal(a, b) for a, b in zip(fwd_codes, codes))
