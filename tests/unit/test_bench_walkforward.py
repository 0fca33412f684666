"""``tradeflow bench walkforward`` on a few real bars: the pooled figures are the folds'
untouched test blocks put together, and every family named gets its row."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from models.config import InvalidConfig
from ops.bench.walkforward import main


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_few_bars_two_folds_then_pooled_metrics_are_the_test_blocks_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "wf.json"
    argv = ["--bars", "1500", "--folds", "2", "--epochs", "2", "--hidden", "8", "--families", "tcn,linear_baseline"]
    assert main([*argv, "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [r["family"] for r in doc["results"]] == ["tcn", "linear_baseline"]
    for r in doc["results"]:
        folds, pooled = r["folds"], r["pooled"]
        assert len(folds) == 2 and folds[0]["test_end"] <= folds[1]["test_start"]  # blocks in time order
        assert folds[1]["train_rows"] > folds[0]["train_rows"]  # fold 2 also trains on block 1
        n = [f["test_rows"] for f in folds]
        assert pooled["wf_rows"] == sum(n) == doc["input"]["out_of_sample_rows"]
        for f in folds:
            assert f["metrics"]["test_rows"] == f["test_rows"]
        # Row means pool as row-weighted means: the pooled rows are exactly the folds' test rows.
        for key in ("log_loss", "accuracy"):
            weighted = sum(f["metrics"][f"test_{key}"] * k for f, k in zip(folds, n, strict=True)) / sum(n)
            assert pooled[f"wf_{key}"] == pytest.approx(weighted, rel=1e-12)
        assert pooled["wf_pnl_periods"] == pooled["wf_gross_pnl_periods"]
        assert pooled["wf_gross_pnl_total_return"] >= pooled["wf_pnl_total_return"]  # costs only take
    printed = capsys.readouterr().out
    assert "| tcn | " in printed and "| linear_baseline | " in printed


def test_unknown_family_then_refused_before_any_data_is_read(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig, match="family"):
        main(["--families", "mlp,transformer", "--out", str(tmp_path / "wf.json")])
    assert not (tmp_path / "wf.json").exists()
