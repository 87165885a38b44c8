"""--compile in inference.py, the trainer and the code cache: the same output as eager, and the
graphs compiled are counted, logged and bounded across lengths, batch sizes and the phase switch.

inference.py runs inductor (real code generation: compiled == eager within 1e-5), and so does one
short training run. The trainer's curriculum test and the cache run dynamo with the aot_eager
backend: the same graphs, guards and recompiles without inductor's code generation, which on 2
cores costs tens of seconds per training graph.
"""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from helpers_cache import load_script, save_tiny_model, write_audio
from helpers_perturb import perturb_parameters_
from helpers_train import make_signal, one_thread, read_metrics, small_run_data, train_in_process  # noqa: F401

from snac import SNAC, SNAC48
from snac.cache import list_shards
from snac.compiling import CompileCounter, compile_fn
from snac.infer import noise_disabled
from snac.presets import TINY_24KHZ

pytestmark = pytest.mark.slow  # torch.compile: minutes of inductor code generation

inference = load_script("inference.py")
cache_cli = load_script("cache_codes_multigpu.py")


def test_counter_refuses_an_unknown_backend():
    with pytest.raises(ValueError, match="--compile_backend must be one of"):
        CompileCounter("x", "tensorrt")


def test_inductor_decode_and_encode_equal_eager():
    """Real code generation: a compiled lite SNAC48 decode equals eager within 1e-5 with the same
    seeded noise (inductor's random ops fall back to torch's generator; stricter than noise off,
    which would only drop the noise terms); a compiled encoder gives the same latent within 1e-5,
    hence the same codes. (One graph each: inductor costs tens of seconds per graph on 2 cores.)"""
    torch.manual_seed(0)
    base = perturb_parameters_(SNAC(**TINY_24KHZ), seed=1).eval()
    model = perturb_parameters_(SNAC48.from_snac(base, head={"type": "lite"}), seed=2).eval()
    audio = torch.from_numpy(make_signal(0.6, 24000, seed=3)).view(1, 1, -1)
    with torch.inference_mode():
        codes = base.encode(audio)
        latent = base.encoder(base.preprocess(audio))
        decoder, encoder = CompileCounter("decoder"), CompileCounter("encoder")
        decode = compile_fn(model.decode, decoder)
        outs = []
        for fn in (decode, model.decode):
            torch.manual_seed(5)
            outs.append(fn(codes))
        assert (outs[0] - outs[1]).abs().max() < 1e-5
        with noise_disabled(model):  # the noise is really there: the test would see a wrong draw
            assert (model.decode(codes) - outs[1]).abs().max() > 1e-4
        compiled_latent = compile_fn(base.encoder, encoder)(base.preprocess(audio))
        assert (compiled_latent - latent).abs().max() < 1e-5
        assert all(torch.equal(a, b) for a, b in zip(base.quantizer(compiled_latent)[1], codes))
    assert decoder.graphs == 1 and encoder.graphs == 1


def test_inference_compiled_equals_eager_and_counts_its_graphs(tmp_path, capsys):
    """inference.py --compile: two files of different lengths in 0.5 s chunks (first, middle and
    last chunks differ in length) write the eager run's audio, and a bounded number of graphs per
    compiled model is printed (dynamo's aot_eager backend: the graphs and recompiles of inductor,
    without its code generation)."""
    torch.manual_seed(0)
    base = perturb_parameters_(SNAC(**TINY_24KHZ), seed=1).eval()
    model = perturb_parameters_(SNAC48.from_snac(base), seed=2).eval()
    model.save_pretrained(tmp_path / "m48", base=base)
    for name, seconds in (("a.wav", 1.3), ("b.wav", 0.7)):
        write_audio(tmp_path / "in" / name, seconds, 24000, seed=int(seconds * 10))
    outs = {}
    for run, flags in (("eager", []), ("compiled", ["--compile", "--compile_backend", "aot_eager"])):
        (tmp_path / run).mkdir()
        assert inference.main(["--checkpoint", str(tmp_path / "m48"), "--input", str(tmp_path / "in"),
                               "--output", str(tmp_path / run), "--device", "cpu", "--chunk_seconds", "0.5",
                               "--subtype", "FLOAT", *flags]) == 0
        outs[run] = {n: sf.read(str(tmp_path / run / n))[0] for n in ("a.wav", "b.wav")}
    printed = capsys.readouterr().out
    for n in ("a.wav", "b.wav"):
        assert outs["compiled"][n].shape == outs["eager"][n].shape
        assert np.abs(outs["compiled"][n] - outs["eager"][n]).max() < 1e-5
    graphs = {}
    for name in ("decoder", "encoder"):
        line = next(x for x in printed.splitlines() if x.startswith(f"torch.compile ({name}): "))
        graphs[name] = int(line.split(": ")[1].split()[0])
        assert printed.count(f"torch.compile ({name}, aot_eager): graph ") == graphs[name]
    # 7 decoder chunks in 4 shapes, 2 encoder calls: recompiles happen, and stay few
    assert 2 <= graphs["decoder"] <= 4 and 1 <= graphs["encoder"] <= 3, graphs


def test_trainer_compiled_steps_equal_eager_with_few_graphs(tmp_path):
    """Curriculum (window 0.2 s, 0.35 s, 0.25 s), a last partial batch (8 rows, batch 3) and the
    warmup -> unfreeze switch: every logged loss equals the eager run's, and the log names each
    graph compiled (3 here: the first, the partial batch's dynamic one, the phase switch)."""
    data = small_run_data(tmp_path, [0.6, 0.4])
    sched = [{"epochs": [2, 2], "length": 0.35}, {"epochs": [3, 3], "length": 0.25}]
    for name, flags in (("eager", {}), ("compiled", {"compile": True, "compile_backend": "aot_eager"})):
        assert train_in_process(data, tmp_path / name, batch_size=3, segment_schedule=sched, **flags) == 0
    losses = {name: [m["loss/total"] for m in read_metrics(tmp_path / name) if "loss/total" in m]
              for name in ("eager", "compiled")}
    assert len(losses["eager"]) >= 9
    np.testing.assert_allclose(losses["compiled"], losses["eager"], rtol=1e-5, atol=1e-6)
    log = (tmp_path / "compiled" / "training.log").read_text()
    compiled = log.count("torch.compile (train step, aot_eager): graph ")
    assert f"torch.compile (train step): {compiled} graph(s) compiled in this process" in log
    assert 2 <= compiled <= 4, log
    assert "torch.compile" not in (tmp_path / "eager" / "training.log").read_text()


def test_trainer_inductor_steps_equal_eager(tmp_path):
    """Real code generation for the training step (forward + backward + AdamW), warmup then
    unfreeze: every logged train and val loss equals eager's within 1e-5 (same seeded noise), two
    graphs (one per phase). ~1-2 min of inductor compiling on 2 cores, cold."""
    data = small_run_data(tmp_path, [0.6, 0.4])
    for name, flags in (("eager", {}), ("compiled", {"compile": True, "compile_backend": "inductor"})):
        assert train_in_process(data, tmp_path / name, batch_size=4, epochs=2, max_steps=4, **flags) == 0
    losses = {name: [(m["type"], m["iteration"], m["loss/total"]) for m in read_metrics(tmp_path / name)
                     if "loss/total" in m] for name in ("eager", "compiled")}
    assert [x[:2] for x in losses["compiled"]] == [x[:2] for x in losses["eager"]]
    assert {t for t, _, _ in losses["eager"]} == {"train", "val"} and len(losses["eager"]) >= 6
    np.testing.assert_allclose([x[2] for x in losses["compiled"]], [x[2] for x in losses["eager"]], rtol=1e-5)
    log = (tmp_path / "compiled" / "training.log").read_text()
    assert "torch.compile (train step): 2 graph(s) compiled in this process" in log, log


def test_cache_compiled_encoder_writes_the_eager_rows_and_counts_graphs(tmp_path, capsys):
    model_dir = save_tiny_model(tmp_path / "model")
    for i in range(8):  # 8 lengths -> several padded lengths and batch sizes
        write_audio(tmp_path / "audio" / f"u{i}.wav", 0.2 + 0.13 * i, 24000, seed=i)
    rows = {}
    for run, flags in (("eager", []), ("compiled", ["--compile", "--compile_backend", "aot_eager"])):
        cache = tmp_path / run
        assert cache_cli.main([str(a) for a in ("--input_dir", tmp_path / "audio", "--output_dir", cache,
                                                "--pretrained_model", model_dir, "--devices", "cpu",
                                                "--batch_seconds", 1.5, *flags)]) == 0
        rows[run] = sorted((r for s in list_shards(cache) for r in pq.read_table(s).to_pylist()),
                           key=lambda r: r["id"])
        last = json.loads((cache / "manifest.json").read_text())["last_run"]
        if run == "compiled":
            assert 1 <= last["compiled_graphs"] <= 4 and last["batches"] > last["compiled_graphs"], last
            assert "encoder graph(s) compiled in 1 worker(s)" in capsys.readouterr().out
        else:
            assert last["compiled_graphs"] is None
    assert rows["compiled"] == rows["eager"]
