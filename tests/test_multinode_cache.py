"""cache_codes_multigpu.py on two torchrun "nodes" (c10d rendezvous on localhost, gloo, CPU): every
file cached once, rows equal to a one-process cache, rank 1 writes only its own shard files; a node
SIGKILLed mid-run and the job rerun -> no duplicate, no missing row."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers_cache import REPO, load_script, save_tiny_model, write_audio
from helpers_multinode import free_port, freeze_node, kill_node, node_env, run_nodes, start_node, wait_for, wait_node, written
from helpers_train import pycache_env  # noqa: F401 (a fixture)
from snac.cache import list_shards
from snac.cache.format import LOCK_NAME, META_DIR, reject_log, shard_name

pytestmark = pytest.mark.slow
SCRIPT = REPO / "cache_codes_multigpu.py"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    files = set()
    for i in range(24):
        rel = f"spk{i % 3}/utt{i:02d}.wav"
        write_audio(root / "audio" / rel, 0.2 + 0.05 * i, [16000, 24000, 48000][i % 3], seed=i)
        files.add(rel)
    return dict(root=root, model=save_tiny_model(root / "model"), audio=root / "audio", files=files)


def args(corpus, cache, *extra) -> list:
    return ["--input_dir", corpus["audio"], "--output_dir", cache, "--pretrained_model", corpus["model"],
            "--devices", "cpu", "--batch_seconds", "0.5", *extra]


def rows(cache) -> list[dict]:
    """Every row of every shard, by id (the order rows land in shards is not part of the contract)."""
    table = pa.concat_tables(pq.read_table(s) for s in list_shards(cache))
    return sorted(table.to_pylist(), key=lambda r: r["id"])


@pytest.fixture(scope="module")
def one_process(corpus):
    cache = corpus["root"] / "one"
    assert load_script("cache_codes_multigpu.py").main([str(a) for a in args(corpus, cache)]) == 0
    return rows(cache)


def assert_complete(cache, corpus, reference) -> None:
    got = rows(cache)
    paths = [r["path"] for r in got]
    assert len(paths) == len(set(paths)), "duplicate rows"
    assert set(paths) == corpus["files"], "missing rows"
    assert got == reference  # codes, durations, ids: identical to the one-process cache


def test_two_nodes_cache_each_file_once_like_one_process_and_rank1_writes_only_its_shards(
        corpus, one_process, tmp_path, pycache_env):
    cache = tmp_path / "cache"
    results = run_nodes(tmp_path, SCRIPT, args(corpus, cache, "--shard_rows", "3"), pycache_env)
    for code, out in results:
        assert code == 0, out[-3000:]
    assert_complete(cache, corpus, one_process)
    logs = "".join(out for _, out in results)
    assert "of 2 in all (rank 1/2)" in logs and logs.count("summary:") == 1  # rank 0 alone sums up
    # rank 1 is whichever agent the rendezvous ranked second: the node whose log has '[cache rank 1]'
    k1 = next(k for k, (_, out) in enumerate(results) if "[cache rank 1]" in out)
    assert not written(tmp_path, f"run{k1}", [corpus["audio"], corpus["model"]])
    assert not any((tmp_path / f"run-cwd{k1}").iterdir())  # (multiprocessing's sockets come and go there)
    names = {p[len(str(cache)):].lstrip("/") for p in written(tmp_path, f"run{k1}", [cache])}
    own = shard_name(1, 0).split("-")[0] + "-"  # 'shard-w00001-': worker 1, the only worker of rank 1
    # mkdir of the (existing) shared folders, its lock, its rejection log, its shards (temp name, then final)
    allowed = {"", META_DIR, f"{LOCK_NAME}-rank1", reject_log(cache, 1).relative_to(cache).as_posix()}
    assert all(n.startswith(own) or n in allowed for n in names), sorted(names)
    assert any(n.startswith(own) and n.endswith(".parquet") for n in names)
    theirs = written(tmp_path, f"run{1 - k1}", [cache])
    assert any(p.endswith("manifest.json") for p in theirs)


def test_a_node_killed_mid_run_then_the_rerun_leaves_no_duplicate_and_no_missing_row(
        corpus, one_process, tmp_path, pycache_env):
    cache = tmp_path / "cache"
    flags = args(corpus, cache, "--shard_rows", "1", "--batch_seconds", "0.05")
    port = free_port()
    nodes = [start_node(k, port, SCRIPT, flags, tmp_path / f"cwd{k}", node_env(tmp_path, f"kill{k}", pycache_env),
                        tmp_path / f"node{k}.log") for k in range(2)]
    own = shard_name(1, 0).split("-")[0]  # worker 1's shards: rank 1's, whichever node it is
    started = wait_for(lambda: any(s.name.startswith(own) for s in list_shards(cache)), 240, nodes)
    victim = nodes[1] if "rank 1/2" in (tmp_path / "node1.log").read_text() else nodes[0]
    freeze_node(victim)  # stopped at once, so the count below is what it had written when it died
    cached = len(rows(cache)) if list_shards(cache) else 0
    kill_node(victim)
    survivor = nodes[1] if victim is nodes[0] else nodes[0]
    code0 = wait_node(survivor, 240)
    log0 = (tmp_path / f"node{nodes.index(survivor)}.log").read_text()
    assert started, (tmp_path / "node1.log").read_text()[-3000:] + log0[-3000:]
    assert 0 < cached < len(corpus["files"]), "the kill did not land mid-run: the test proves nothing"
    assert len(rows(cache)) < len(corpus["files"])
    assert code0 != 0, log0[-3000:]  # the survivor fails (its peer is gone) and keeps its complete shards
    results = run_nodes(tmp_path, SCRIPT, flags, pycache_env, tag="rerun")
    for code, out in results:
        assert code == 0, out[-3000:]
    assert_complete(cache, corpus, one_process)
