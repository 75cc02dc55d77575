"""Faults of the indexer: killed at random points, or out of disk space, a run resumes
to exactly the index an uninterrupted run writes."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_indexer_state import TABLE_ORDER, _tables

from fixtures_models import TINY_CTX

HERE = Path(__file__).parent
# Two kills in calibration, three while streaming, three inside a checkpoint's write and
# two during finalize: ten points, their events and delays drawn from one seed.
KILL_PHASES = ["calibration"] * 2 + ["streaming"] * 3 + ["checkpoint"] * 3 + ["finalize"] * 2
KILL_SEED = 20


def _run_options(model, sae, corpus) -> dict:
    """A run of 14 batches of 4 sequences: 3 of them calibrate, a checkpoint every 3."""
    return dict(
        model=str(model),
        dataset=str(corpus),
        saes=[str(sae)],
        ctx=TINY_CTX,
        batch_size=4,
        max_tokens=TINY_CTX * 4 * 14,
        top_k=4,
        band_size=2,
        window=[4, 2],
        calibration_tokens=250,
        hist_bins=64,
        checkpoint_every=3,
        quiet=True,
        device="cpu",
    )


# The run's checkpoint takes 0.5 MB, its partial file 1.8 MB while streaming, the index
# 4.7 MB: 3 MB hold the checkpoints but not the finished index.
SMALL_DISK = "4500k"  # room for the first checkpoints, not for the index


@contextlib.contextmanager
def _small_disk(path: Path):
    """A 3 MB filesystem at `path` (tmpfs, where this process may mount one), and the
    command that gives it room again; else None, and a file size limit stands in."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        yield None
        return
    try:
        yield ["mount", "-o", "remount,size=64m", str(path)]
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.fixture(scope="module")
def fault_runs(tmp_path_factory, tiny_model_dir, tiny_sae_dir, tiny_corpus_dir) -> dict:
    """The kill points and the full disk, run by kill_points.py in one process: what
    happened, and the reference index's tables."""
    work = tmp_path_factory.mktemp("faults")
    disk_dir = work / "disk"
    with _small_disk(disk_dir) as grow:
        disk = {"out": str(disk_dir / "index.duckdb")}
        disk.update({"grow": grow} if grow else {"fsize_limit": 2_500_000})
        spec = work / "spec.json"
        options = _run_options(tiny_model_dir, tiny_sae_dir, tiny_corpus_dir)
        spec.write_text(
            json.dumps(
                {
                    "config": options,
                    "dir": str(work),
                    "seed": KILL_SEED,
                    "phases": KILL_PHASES,
                    "parallel": 2,
                    "disk": disk,
                }
            )
        )
        # One thread per run: two runs go side by side.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
        proc = subprocess.run(
            [sys.executable, str(HERE / "kill_points.py"), str(spec)],
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
            cwd=work,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        reference = result["reference"]
        assert reference["exit"] == 0, reference["stderr"]
        result["whole"] = _tables(Path(result["reference_out"]))
        result["disk_tables"] = _tables(Path(result["disk"]["out"])) if result["disk"]["resumed"]["exit"] == 0 else None
        result["disk"]["by"] = "tmpfs" if grow else "RLIMIT_FSIZE"
    return result


@pytest.mark.slow
def test_killed_at_ten_random_points_resumes_to_the_same_tables(fault_runs):
    counts = fault_runs["reference"]["counts"]
    assert counts["calibration"] == 3 and counts["streaming"] >= 14 and counts["checkpoint"] == 4
    assert counts["finalize"] >= 8
    whole = fault_runs["whole"]
    assert len(whole["sequences"]) == 4 * 14

    phases = [point["fault"]["phase"] for point in fault_runs["points"]]
    assert sorted(phases) == sorted(KILL_PHASES)
    for point in fault_runs["points"]:
        where = json.dumps(point["fault"])
        killed, resumed = point["killed"], point["resumed"]
        assert killed["signal"] == 9, f"{where}: the run was not killed ({killed})"
        assert not point["after_kill"]["out_exists"] or point["fault"]["phase"] == "finalize", where
        assert resumed["exit"] == 0, f"{where}: the resumed run failed:\n{resumed['stderr']}"
        assert point["left"] == [], f"{where}: left behind {point['left']}"
        tables = _tables(Path(point["out"]))
        for table in TABLE_ORDER:
            assert tables[table] == whole[table], f"{where}: table {table} differs"
    # Most kills came after a checkpoint: most resumes did resume.
    assert sum(point["after_kill"]["checkpoint"] for point in fault_runs["points"]) >= 5


@pytest.mark.slow
def test_a_full_disk_is_one_error_line_and_the_checkpoint_resumes(fault_runs):
    disk = fault_runs["disk"]
    failed, after = disk["failed"], disk["after"]
    assert failed["exit"] == 2, failed["stderr"]
    lines = failed["stderr"].strip().splitlines()
    assert len(lines) == 1, failed["stderr"]
    reason = "No space left on device" if disk["by"] == "tmpfs" else "File too large"
    assert lines[0] == (
        f"error: out of disk space writing the index beside --out {disk['out']} ({reason}): "
        "free some space, then run the same command with --resume to go on from the last checkpoint"
    )
    assert not after["out_exists"] and after["checkpoint"], after
    assert "index.duckdb.ckpt.part" not in after["files"]
    resumed = disk["resumed"]
    assert resumed["exit"] == 0, resumed["stderr"]
    assert resumed["counts"]["calibration"] == 0  # resumed from the checkpoint, not started over
    assert disk["left"] == ["index.duckdb"]
    for table in TABLE_ORDER:
        assert fault_runs["disk_tables"][table] == fault_runs["whole"][table], table
