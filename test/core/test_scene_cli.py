"""The detect / eval-det / scene CLI through main(argv)."""

import json

import numpy as np

from opendlign_core.boxes import Box3D
from opendlign_core.scene_cli import main


def _write_json(path, scene, key, items):
    path.write_text(json.dumps({'scene': scene, key: items}))


def _box(x):
    return Box3D(np.array([x, 0, 0.5]), np.ones(3)).to_dict()


def test_eval_det_on_json_ground_truth(tmp_path, capsys):
    (tmp_path / 'gt').mkdir()
    (tmp_path / 'pred').mkdir()
    _write_json(tmp_path / 'gt' / 's0.json', 's0', 'objects',
                [{'label': 'chair', 'box': _box(0)}, {'label': 'chair', 'box': _box(3)}])
    _write_json(tmp_path / 'pred' / 's0.json', 's0', 'detections',
                [{'label': 'chair', 'score': 0.9, 'box': _box(0)}])
    rc = main(['eval-det', '--pred', str(tmp_path / 'pred'), '--gt', str(tmp_path / 'gt'),
               '--classes', 'chair', '--out', str(tmp_path / 'out')])
    assert rc == 0
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert summary['mean_ap']['0.25'] == 0.5
    assert (tmp_path / 'out' / 'pr.png').is_file()
    assert '| chair | 2 | 1 | 50.00 | 50.00 |' in capsys.readouterr().out


def test_eval_det_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(['eval-det', '--pred', str(tmp_path / 'nope'), '--gt', str(tmp_path)]) == 2
    assert 'not found' in capsys.readouterr().err


def test_detect_with_tiny_model(tmp_path, monkeypatch):
    from dataclasses import replace

    from opendlign_core.config import ProjectionConfig
    from opendlign_core.detection import Detector

    build = Detector.from_config.__func__

    def small(cls, config):
        # Two 32-pixel views keep this CPU test fast; the flags under test are unchanged.
        projection = ProjectionConfig(resolution=32, view_angles_deg=(30.0, 120.0))
        return build(cls, replace(config, opendlign=replace(config.opendlign,
                                                            projection=projection)))

    monkeypatch.setattr(Detector, 'from_config', classmethod(small))
    rng = np.random.default_rng(0)
    floor = np.c_[rng.uniform(0, 3, (8000, 2)), np.zeros(8000)]
    obj = rng.uniform([1, 1, 0.05], [1.4, 1.5, 0.9], (2000, 3))
    np.save(tmp_path / 'scene.npy', np.vstack([floor, obj]).astype(np.float32))
    out = tmp_path / 'dets.json'
    rc = main(['detect', str(tmp_path / 'scene.npy'), '--labels', 'chair,table', '--out',
               str(out), '--model-name', 'OpenDlign-Tiny-Test', '--batch-size', '2'])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data['scene'] == 'scene' and len(data['detections']) == 1
    assert data['detections'][0]['label'] in ('chair', 'table')
    assert out.with_suffix('.png').stat().st_size > 1000
