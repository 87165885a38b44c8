"""scripts/demo.py end to end (the README's first command), so CI proves it works as written.
About a minute on 2 cores; SNAC48_SKIP_DEMO=1 skips it for a quick local run."""

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

pytestmark = pytest.mark.slow  # the whole demo end to end

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(os.environ.get("SNAC48_SKIP_DEMO") == "1", reason="SNAC48_SKIP_DEMO=1")
def test_demo_runs_every_step_and_reports_its_outputs(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--output_dir", str(out),
                           "--files", "12", "--epochs", "3", "--random_base"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "tiny RANDOM base model" in proc.stdout
    log = (out / "runs" / "demo48" / "training.log").read_text()
    assert "phase switch" in log and "saved checkpoint_iter" in log and "resumed from" in log
    status = json.loads((out / "runs" / "demo48" / "status.json").read_text())
    assert status["state"] == "finished" and status["iteration"] == status["total_iterations"]
    decoded = sorted((out / "decoded").rglob("*.wav"))
    # the model's decodes at 48 kHz; the --compare stock decodes (<name>.stock_24khz.wav) at 24 kHz
    stock = [p for p in decoded if p.name.endswith(".stock_24khz.wav")]
    model = [p for p in decoded if p not in stock]
    assert model and len(stock) == len(model)
    assert {sf.info(str(p)).samplerate for p in model} == {48000}
    assert {sf.info(str(p)).samplerate for p in stock} == {24000}
    report = json.loads((out / "eval" / "metrics.json").read_text())
    assert set(report["mean"]) == {"stock 24 kHz", "band replication 48 kHz", "model 48 kHz"}
    assert (out / "export" / "model.safetensors").is_file()
    for path in ("runs/demo48/loss_curves.png", "eval/report.md"):
        assert str(out / path) in proc.stdout
    # the random-base caveat sits right under the evaluation table, not only at the top
    table_end = proc.stdout.index("model 48 kHz", proc.stdout.index("demo finished"))
    assert proc.stdout.index("^ caveat: a tiny RANDOM base", table_end) < proc.stdout.index("\noutputs:")
    # the summary's checkpoint and resume lines come in the order the training log has them
    summary = [line.split(": ", 1)[1].strip() for line in proc.stdout.splitlines()
               if line.startswith(("  phase switch:", "  iteration ckpt:", "  timer ckpt:", "  resume:"))]
    in_log = [line for line in summary if line in log]
    assert len(in_log) >= 3 and in_log == sorted(in_log, key=log.index)


def test_printed_commands_can_be_pasted_into_a_shell(tmp_path, capsys):
    """A path with a space was printed bare, so the pasted command split it in two."""
    spec = importlib.util.spec_from_file_location("demo_script", ROOT / "scripts" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    script = tmp_path / "my scripts" / "echo args.py"
    script.parent.mkdir()
    script.write_text("import sys; print(sys.argv[1:])")
    demo.Steps(tmp_path, dict(os.environ)).run("echo", [script, "--output_dir", tmp_path / "out dir"])
    shown = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("$ "))
    assert shlex.split(shown.strip()[2:]) == ["python", str(script), "--output_dir", str(tmp_path / "out dir")]
