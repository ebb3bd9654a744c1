"""The prepared GPU check's report writer, budgets and arguments; a tiny-model classify run."""

import json
import math
import time

import pytest
import torch

from benchmarks.gpu_check import (
    Budget,
    Row,
    check_device,
    format_table,
    parse_args,
    run_classify,
    write_report,
)

ROWS = [
    Row('tests', 'pytest -m gpu', ms=1234.56, note='ok: 2 passed'),
    Row('classify', 'ViT-B-32 fp32 x8', ms=10.04, bare_ms=8.0, ratio=1.25, peak_mib=math.nan,
        note='a|b'),
    Row('node', 'bag eval', note='skipped for time'),
]


def test_format_table_exact():
    assert format_table(ROWS) == (
        '| section | case | latency ms | bare encoder ms | ratio | peak GPU MiB | note |\n'
        '|---|---|---|---|---|---|---|\n'
        '| tests | pytest -m gpu | 1234.6 |  |  |  | ok: 2 passed |\n'
        '| classify | ViT-B-32 fp32 x8 | 10.0 | 8.0 | 1.250 | n/a | a/b |\n'
        '| node | bag eval |  |  |  |  | skipped for time |\n')


def test_write_report_markdown_and_json(tmp_path):
    md, js = write_report(ROWS, {'device': 'cpu', 'wall_s': 1.5}, tmp_path / 'r')
    text = md.read_text()
    assert text.startswith('# GPU check\n\n- device: cpu\n- wall_s: 1.5\n\n| section |')
    assert text.endswith(format_table(ROWS))
    data = json.loads(js.read_text())
    assert data['meta'] == {'device': 'cpu', 'wall_s': 1.5}
    assert data['rows'][1] == {'section': 'classify', 'case': 'ViT-B-32 fp32 x8', 'ms': 10.04,
                               'bare_ms': 8.0, 'ratio': 1.25, 'peak_mib': 'n/a', 'note': 'a|b'}
    assert data['rows'][2]['ms'] is None


def test_write_report_rejects_infinity(tmp_path):
    with pytest.raises(ValueError):
        write_report([Row('x', 'y', ms=math.inf)], {}, tmp_path)


def test_budget_bounded_by_deadline():
    now = time.monotonic()
    budget = Budget(100.0, deadline=now + 10.0, start=now)
    assert 9.0 < budget.left() <= 10.0
    assert budget.allows(5.0) and not budget.allows(11.0)
    assert Budget(1.0, deadline=now + 50.0, start=now - 2.0).left() < 0


def test_parse_args_defaults_and_errors():
    quick = parse_args(['--device', 'cpu', '--quick'])
    assert quick.models == ['ViT-B-32'] and quick.total_budget == 115.0
    full = parse_args([])
    assert full.device == 'cuda:0' and full.models == ['ViT-B-32', 'ViT-B-16', 'ViT-L-14',
                                                       'ViT-H-14']
    assert full.sections == ['tests', 'classify', 'detect', 'node']
    for bad in (['--device', 'gpu'], ['--sections', 'tests,bogus'], ['--total-budget', '0']):
        with pytest.raises(SystemExit):
            parse_args(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the no-CUDA error')
def test_cuda_requested_without_cuda_is_an_error():
    with pytest.raises(RuntimeError, match='refusing to fall back to the CPU'):
        check_device('cuda:0')


def test_classify_rows_with_the_tiny_model():
    args = parse_args(['--device', 'cpu', '--quick', '--models', 'OpenDlign-Tiny-Test'])
    rows = run_classify(args, Budget(120.0, deadline=time.monotonic() + 120.0))
    assert [r.case for r in rows] == ['OpenDlign-Tiny-Test fp32 x1', 'OpenDlign-Tiny-Test fp32 x2',
                                      'OpenDlign-Tiny-Test bf16 x1', 'OpenDlign-Tiny-Test bf16 x2']
    for r in rows:
        assert r.ms > 0 and r.bare_ms > 0
        assert r.ratio == pytest.approx(r.ms / r.bare_ms)
        assert math.isnan(r.peak_mib)


def test_classify_reports_skips_for_time():
    args = parse_args(['--device', 'cpu', '--quick', '--models',
                       'OpenDlign-Tiny-Test,OpenDlign-Tiny-Test'])
    # The first configuration always runs; with no time left the others are listed as skipped.
    rows = run_classify(args, Budget(0.0, deadline=time.monotonic()))
    assert len(rows) == 8 and rows[0].ms > 0
    assert [r.note for r in rows[1:]] == ['skipped for time'] * 7
    assert all(r.ms is None for r in rows[1:])
