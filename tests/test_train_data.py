"""Aligned windows, padding masks, the sampler's data position and sharding, val windows."""

import numpy as np
import pytest
import torch

from helpers_train import FakeCache, TINY_24KHZ, TINY_32KHZ, one_thread, tiny_snac, write_cache  # noqa: F401
from snac.audio import resample
from snac.cache import CodeCache
from snac.train.windows import (WindowDataset, WindowGeometry, WindowSampler, collate_windows, validation_items,
                       window_start)


def geometry_for(config: dict, out_rate: int) -> WindowGeometry:
    return WindowGeometry.from_configs(config, out_rate, out_rate)


def test_geometry_matches_the_published_arithmetic():
    # SNAC_FACTS: snac_24khz codes -> 48 kHz: 4 * 512 * 2 = 4096 samples per coarse token
    g = geometry_for(TINY_24KHZ, 48000)
    assert g.output_samples_per_token == 4096 and g.token_multiple == 1
    assert g.tokens_for_seconds(4.0) == 46  # floor(4 * 24000 / 2048) = floor(46.875)
    # 32 kHz codes (strides 8,4,2,1, hop 384, attention window 32) -> 48 kHz: 8 * 384 * 1.5
    g32 = geometry_for(TINY_32KHZ, 48000)
    assert g32.output_samples_per_token == 4608
    assert g32.token_multiple == 4  # lcm(8, 32) / 8: windows start on the attention grid
    assert g32.tokens_for_seconds(1.0) == 8  # floor(1 * 32000 / 3072) = 10 -> 8 on the grid of 4
    with pytest.raises(ValueError, match="whole number of samples"):
        # SNAC_FACTS: 44.1 kHz codes have no whole number of 48 kHz samples per token
        WindowGeometry.from_configs(dict(TINY_32KHZ, sampling_rate=44100), 48000, 48000)


@pytest.mark.parametrize("config,out_rate", [(TINY_24KHZ, 48000), (TINY_24KHZ, 24000), (TINY_32KHZ, 48000)])
def test_every_scale_and_the_audio_start_at_the_same_instant(config, out_rate):
    g = geometry_for(config, out_rate)
    rng = np.random.default_rng(0)
    cache = FakeCache(config, list(rng.integers(3, 40, size=30) * g.token_multiple), out_rate)
    dataset = WindowDataset(cache, g)
    n = 2 * g.token_multiple
    strides, hop = config["vq_strides"], g.hop_length
    for row in range(len(cache)):
        k = window_start(7, 0, row, int(cache.num_coarse[row]), n, g.token_multiple)
        item = dataset[(row, k, n)]
        # model-rate time (in samples) of each scale's first token and of the first audio sample
        instants = [int(c[0]) * s * hop for c, s in zip(item["codes"], strides)]
        assert len(set(instants)) == 1 and instants[0] == k * strides[0] * hop
        # the audio's first sample (its index at R_out) is that instant exactly, in integers:
        # index * R_in == k * s_0 * hop * R_out (no floor division that could hide a 1-sample shift)
        audio_index = round(float(item["audio"][0]) * 2**20)
        assert audio_index * config["sampling_rate"] == k * strides[0] * hop * out_rate
        # and every later token lines up too: codebook i token j sits at sample j * s_i * hop
        for c, s in zip(item["codes"], strides):
            assert np.array_equal(c, np.arange(len(c)) + c[0])
            assert len(c) * s == n * strides[0]
        assert len(item["audio"]) == n * g.output_samples_per_token
        # decoded length of these codes = len(codes[-1]) * s_last * hop * (R_out / R_in)
        assert len(item["codes"][-1]) * strides[-1] * hop * out_rate // config["sampling_rate"] == len(item["audio"])


@pytest.mark.parametrize("config", [TINY_24KHZ, TINY_32KHZ])
def test_short_items_are_padded_on_every_scale_and_masked(config):
    g = geometry_for(config, 48000)
    m = g.token_multiple
    short_audio = 1000  # real audio ends 1000 samples before the codes do
    cache = FakeCache(config, [m, 3 * m], 48000, short_audio=short_audio)
    dataset = WindowDataset(cache, g)
    n = 4 * m
    item = dataset[(0, 0, n)]  # a row of m tokens in a window of 4m
    p = g.output_samples_per_token
    for c, s in zip(item["codes"], config["vq_strides"]):
        real = m * config["vq_strides"][0] // s
        assert len(c) == n * config["vq_strides"][0] // s
        assert np.array_equal(c[:real], np.arange(real)) and not c[real:].any()  # pad = code 0, valid index
    valid = m * p - short_audio
    assert item["mask"][:valid].all() and not item["mask"][valid:].any()
    assert not item["audio"][valid:].any()
    # a window at the end of a longer row: the mask stops where that row's audio stops
    item = dataset[(1, 2 * m, 2 * m)]
    assert item["mask"].sum() == m * p - short_audio


@pytest.mark.parametrize("embed_audio", [False, True])
def test_real_cache_windows_equal_slices_of_the_whole_row(tmp_path, embed_audio):
    model = tiny_snac()
    cache = CodeCache(write_cache(tmp_path / "c", model, [0.3, 0.7], embed_audio=embed_audio),
                      expected_model_config=model.config)
    g = WindowGeometry.from_configs(model.config, cache.target_sample_rate, 48000)
    dataset = WindowDataset(cache, g)
    full_codes, full_audio = cache.codes(1), cache.audio(1)
    p = g.output_samples_per_token
    for k in range(int(cache.num_coarse[1]) - 2):
        item = dataset[(1, k, 2)]
        for i, c in enumerate(item["codes"]):
            r = len(full_codes[i]) // int(cache.num_coarse[1])
            assert np.array_equal(c, full_codes[i][k * r:(k + 2) * r])
        valid = int(item["mask"].sum())
        assert np.allclose(item["audio"][:valid], full_audio[k * p:k * p + valid], atol=1e-6)
    batch = collate_windows([dataset[(0, 0, 2)], dataset[(1, 1, 2)]])
    assert [tuple(c.shape) for c in batch["codes"]] == [(2, 2), (2, 4), (2, 8)]
    assert batch["audio"].shape == batch["mask"].shape == (2, 1, 2 * 4096)


def test_after_restore_the_next_batches_are_equal():
    """Data position (torchtitan style): save the sampler mid-epoch, rebuild, and the DataLoader
    yields torch.equal batches to the uninterrupted one."""
    g = geometry_for(TINY_24KHZ, 48000)
    cache = FakeCache(TINY_24KHZ, list(np.random.default_rng(1).integers(1, 9, size=23)), 48000)

    def loader(sampler):
        return torch.utils.data.DataLoader(WindowDataset(cache, g), batch_sampler=sampler,
                                           collate_fn=collate_windows, num_workers=0)

    ref = WindowSampler(cache.num_coarse, seed=3)
    ref.configure(window_tokens=2, batch_size=4, token_multiple=1)
    ref.start_epoch(1)
    reference = list(loader(ref))
    run = WindowSampler(cache.num_coarse, seed=3)
    run.configure(2, 4, 1)
    run.start_epoch(1)
    for _ in range(3):  # three steps trained...
        run.advance()
    state = run.state_dict()
    restored = WindowSampler(cache.num_coarse, seed=3)
    restored.configure(2, 4, 1)
    restored.load_state_dict(state)
    resumed = list(loader(restored))
    assert len(resumed) == len(reference) - 3
    for a, b in zip(resumed, reference[3:]):
        assert all(torch.equal(x, y) for x, y in zip(a["codes"], b["codes"]))
        assert torch.equal(a["audio"], b["audio"]) and torch.equal(a["mask"], b["mask"])
    # a new epoch is a new permutation with new window starts
    ref.start_epoch(2)
    assert [b["rows"].tolist() for b in loader(ref)] != [b["rows"].tolist() for b in reference]


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_share_an_epoch_without_overlap_and_resharding_keeps_the_position(world_size):
    num_coarse = np.full(17, 5)
    samplers = [WindowSampler(num_coarse, seed=0, rank=r, world_size=world_size) for r in range(world_size)]
    for s in samplers:
        s.configure(2, 2, 1)
    rows = [[it[0] for batch in s for it in batch] for s in samplers]
    assert len({len(r) for r in rows}) == 1  # same number of items (and steps) on every rank
    seen = [r for rank_rows in rows for r in rank_rows]
    assert set(seen) == set(range(17)) and len(seen) - 17 < world_size  # only DistributedSampler-style padding
    # advance 2 global steps, then continue on ONE rank: exactly the remaining items of the order
    for _ in range(2):
        for s in samplers:
            s.advance()
    single = WindowSampler(num_coarse, seed=0)
    single.configure(2, 2, 1)
    single.load_state_dict(samplers[0].state_dict())
    rest = [it[0] for batch in single for it in batch]
    order = single.order(0)
    assert rest == list(order[2 * 2 * world_size:])


def test_a_rank_resumed_mid_epoch_gets_the_batches_of_the_uninterrupted_run_padding_included():
    # 9 rows on 2 ranks: the epoch is padded with one repeated item. It must be the epoch's first
    # item whatever the position: before, a resume padded with the first item still LEFT, so rank 1's
    # last batch differed and a DDP resume of the decoder trainer was not bit-identical
    num_coarse = np.full(9, 5)

    def batches(rank, steps_done):
        s = WindowSampler(num_coarse, seed=0, rank=rank, world_size=2)
        s.configure(2, 2, 1)
        for _ in range(steps_done):
            s.advance()
        restored = WindowSampler(num_coarse, seed=0, rank=rank, world_size=2)
        restored.configure(2, 2, 1)
        restored.load_state_dict(s.state_dict())
        return list(restored)

    for rank in range(2):
        whole = batches(rank, 0)
        assert len(whole) == 3
        for done in (1, 2):
            assert batches(rank, done) == whole[done:], (rank, done)


def test_validation_windows_are_fixed_and_cover_every_row_once():
    num_coarse = np.array([3, 10, 1, 7, 20])
    one = validation_items(num_coarse, n=4, multiple=2)
    assert one == validation_items(num_coarse, n=4, multiple=2)
    assert [r for r, _, _ in one] == list(range(5)) and all(n == 4 for _, _, n in one)
    # centred on the grid of 2, worked out by hand: row 1 (10 tokens): (10 - 4) / 2 = 3 -> 2;
    # row 3 (7): 1.5 -> 0; row 4 (20): 8; rows 0 and 2 are shorter than the window -> 0
    assert [k for _, k, _ in one] == [0, 2, 0, 0, 8]
    split = validation_items(num_coarse, 4, 2, rank=0, world_size=2) + validation_items(num_coarse, 4, 2, 1, 2)
    assert sorted(split) == sorted(one)


def test_windows_at_another_cache_rate_equal_slices_of_the_whole_row_resampled(tmp_path):
    # a cache whose audio is at 24 kHz, a model decoding at 48 kHz: every window must be the
    # slice of the whole row resampled (before: the bare window was resampled, and its edges
    # were off by up to ~17% of the RMS)
    model = tiny_snac()
    cache = CodeCache(write_cache(tmp_path / "c", model, [0.9], target_sample_rate=24000, embed_audio=True),
                      expected_model_config=model.config)
    g = WindowGeometry.from_configs(model.config, 24000, 48000)
    dataset = WindowDataset(cache, g)
    whole = resample(cache.audio(0), 24000, 48000)
    rms = float(np.sqrt(np.mean(whole ** 2)))
    p = g.output_samples_per_token
    worst = 0.0
    for k in range(1, int(cache.num_coarse[0]) - 3):
        item = dataset[(0, k, 2)]
        valid = int(item["mask"].sum())
        assert valid == 2 * p
        worst = max(worst, float(np.abs(item["audio"][:valid] - whole[k * p:k * p + valid]).max()))
    assert worst < 1e-4 * rms, worst / rms


def test_a_row_gets_new_window_starts_in_new_epochs():
    # a pure function of (seed, epoch, position): the same in a resumed run, different across epochs
    # (a sampler that ignored the epoch would train on the same few seconds of every row forever)
    starts = np.array([[window_start(7, epoch, position, 400, 20, 1) for position in range(40)]
                       for epoch in range(3)])
    assert (starts == np.array([[window_start(7, epoch, position, 400, 20, 1) for position in range(40)]
                                for epoch in range(3)])).all()
    assert (starts[0] != starts[1]).mean() > 0.8 and (starts[1] != starts[2]).mean() > 0.8
    assert ((starts >= 0) & (starts <= 380)).all()


def test_loader_workers_are_capped_at_the_cpus_of_the_rank(monkeypatch):
    """A config asking for 4 workers on a 2-CPU machine gets 2 (torch warns above the CPU count and
    the workers only compete); 0 stays 0; ranks on one node share the node's CPUs."""
    from snac.train.step import loader_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert (loader_workers(4), loader_workers(2), loader_workers(1), loader_workers(0)) == (2, 2, 1, 0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert loader_workers(4) == 1  # never 0 when workers were asked for
