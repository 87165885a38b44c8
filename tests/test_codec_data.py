"""The codec trainer's lazy window source: an epoch is every window once (over all ranks), the
windows equal slices of the whole resampled file, and the stream position round-trips through
state_dict, on the same and on another world size."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from snac.audio import load_audio, resample
from snac.train.codec_data import LazyAudioWindows, permuted_index

RATE, WINDOW = 24000, 2048


@pytest.fixture
def folder(tmp_path):
    """5 files of other rates and lengths (one shorter than a window, one empty)."""
    rng = np.random.default_rng(0)
    for i, (rate, seconds) in enumerate([(24000, 0.5), (16000, 0.3), (44100, 0.05), (24000, 0.21), (24000, 0.0)]):
        sf.write(tmp_path / f"f{i}.wav", 0.1 * rng.standard_normal(int(rate * seconds)), rate)
    return tmp_path


@pytest.mark.parametrize("n", [1, 2, 7, 64, 1000])
def test_permutation_is_a_bijection(n):
    for key in (0, 5):
        assert sorted(permuted_index(i, n, key) for i in range(n)) == list(range(n))
    assert n < 7 or [permuted_index(i, n, 0) for i in range(n)] != [permuted_index(i, n, 1) for i in range(n)]


def whole_file_windows(folder) -> dict[tuple[str, int], np.ndarray]:
    """Every grid window of every file, cut from the whole file resampled (the reference)."""
    out = {}
    for path in sorted(folder.glob("*.wav")):
        if sf.info(path).frames == 0:
            continue
        x, sr = load_audio(path, mono=True)
        y = resample(x, sr, RATE)
        for start in range(0, len(y), WINDOW):
            out[(path.name, start)] = y[start:start + WINDOW]
    return out


@pytest.mark.parametrize("world", [1, 2])
def test_an_epoch_covers_every_window_once_over_the_ranks(folder, world):
    ranks = [LazyAudioWindows(str(folder), RATE, WINDOW, seed=3, rank=r, world_size=world, warn=print)
             for r in range(world)]
    reference = whole_file_windows(folder)
    n = ranks[0].num_windows
    assert n == len(reference) and ranks[0].num_files == 4  # the empty file holds no window
    seen = []
    batch = 2
    for _ in range(ranks[0].epoch_steps(batch) * 2):  # two epochs, the last step may cross into the next
        for r in ranks:
            audio, mask = r.sample(batch)
            seen += [(a[0], m[0]) for a, m in zip(audio, mask)]
    first = seen[:n]
    found = {}
    for audio, mask in first:
        real = int(mask.sum())
        key = next(k for k, v in reference.items() if len(v) == real and np.allclose(v, audio[:real].numpy(),
                                                                                   atol=1e-4))
        assert key not in found
        found[key] = True
        assert mask[:real].all() and not mask[real:].any() and not audio[real:].any()
    assert len(found) == n  # every window once in epoch 0
    order = [torch.cat([a, m]) for a, m in seen]
    assert not all(torch.equal(x, y) for x, y in zip(order[:n], order[n:2 * n]))  # epoch 1 in another order


def test_state_dict_round_trip_continues_the_stream_on_any_world_size(folder):
    def stream(sources, steps, batch=3):
        return [torch.cat([s.sample(batch)[0] for s in sources]) for _ in range(steps)]

    whole = stream([LazyAudioWindows(str(folder), RATE, WINDOW, seed=1, rank=r, world_size=2) for r in range(2)], 5)
    first = [LazyAudioWindows(str(folder), RATE, WINDOW, seed=1, rank=r, world_size=2) for r in range(2)]
    head = stream(first, 2)
    state = first[1].state_dict()
    assert state == first[0].state_dict() == {"consumed": 12, "num_windows": first[0].num_windows}
    two = [LazyAudioWindows(str(folder), RATE, WINDOW, seed=1, rank=r, world_size=2) for r in range(2)]
    for s in two:
        s.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(head + stream(two, 3), whole))
    one = LazyAudioWindows(str(folder), RATE, WINDOW, seed=1, rank=0, world_size=1)
    one.load_state_dict(state)  # 2 ranks x 3 -> 1 rank x 6: the same windows in the same order
    assert all(torch.equal(one.sample(6)[0], w) for w in whole[2:])


def test_a_code_cache_source_reads_windows_of_its_target_audio_at_the_model_rate(tmp_path):
    from helpers_train import tiny_snac, write_cache
    from snac.cache.reader import CodeCache

    cache_dir = write_cache(tmp_path / "cache", tiny_snac(), [0.2, 0.13], embed_audio=True)
    data = LazyAudioWindows(str(cache_dir), RATE, WINDOW, seed=0)
    cache = CodeCache(cache_dir)
    whole = [resample(cache.audio(i), cache.target_sample_rate, RATE) for i in range(len(cache))]
    assert data.num_windows == sum(-(-len(w) // WINDOW) for w in whole) == 5
    for item in range(data.num_windows):
        f, start = data.window_of(item)
        piece = data.source.read(f, start, WINDOW)
        ref = whole[f][start:start + WINDOW]
        assert len(piece) == len(ref) and np.abs(piece - ref).max() < 1e-4 * max(1e-3, np.abs(ref).max())
