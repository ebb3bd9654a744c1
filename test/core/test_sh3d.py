"""Sweet Home 3D catalogs. Tests marked by _needs_cache skip when the Debian data is not cached
(fetch it with ``python -c 'from opendlign_core.sh3d import fetch_sh3d; fetch_sh3d()'``)."""

import numpy as np
import pytest

from opendlign_core import sh3d

_needs_cache = pytest.mark.skipif(
    not sh3d.sh3d_available(),
    reason=f'Sweet Home 3D cache missing at {sh3d.default_cache_dir()} (run sh3d.fetch_sh3d())')


def test_parse_properties():
    text = ('# comment\n! other\nid#1=Scopia#bed1\nname#1=Caf\\u00e9 table\n'
            'tags#1 = a, \\\n    b\nwidth#1:90.5\nempty#1=\n')
    props = sh3d.parse_properties(text)
    assert props['id#1'] == 'Scopia#bed1'
    assert props['name#1'] == 'Caf\u00e9 table'
    assert props['tags#1'] == 'a, b'
    assert props['width#1'] == '90.5'
    assert props['empty#1'] == ''


def test_labels_table_and_split_rule():
    rows = sh3d.load_labels()
    assert len(rows) == 920
    assert len(sh3d.load_labels('train')) == 655 and len(sh3d.load_labels('eval')) == 265
    assert {r.source for r in sh3d.load_labels('eval')} == {'BlendSwap-CC-0', 'KatorLegaz'}
    with pytest.raises(ValueError, match='split'):
        sh3d.load_labels('test')


@_needs_cache
def test_catalogs_parse():
    entries = sh3d.read_catalogs()
    assert len(entries) == 920
    keys = {(r.source, r.id) for r in sh3d.load_labels()}
    assert {(e.source, e.id) for e in entries} == keys


@_needs_cache
def test_mesh_is_normalised():
    entry = next(e for e in sh3d.read_catalog('Default') if e.id == 'eTeks#bed140x190')
    mesh = sh3d.load_model_mesh(entry)
    lo, hi = mesh.bounds
    np.testing.assert_allclose(hi - lo, [1.58, 2.08, 0.70], atol=1e-6)
    np.testing.assert_allclose([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]], 0, atol=1e-6)
