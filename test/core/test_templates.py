import pytest

from opendlign_core.templates import (
    DEPTH_TEMPLATES,
    DEPTH_TEMPLATES_SCANOBJECTNN,
    fill_templates,
    get_templates,
)


def test_depth_templates_structure():
    assert len(DEPTH_TEMPLATES) == 80 and len(set(DEPTH_TEMPLATES)) == 80
    assert all(t.count('{}') == 2 for t in DEPTH_TEMPLATES)
    silhouette = ', a silhouette of a {}, a raytraced image, image dataset, kinetic pointillism.'
    rough = (', a rough {} object in the middle, a raytraced image, image dataset, '
             'kinetic pointillism.')
    tails = ['S' if t.endswith(silhouette) else 'R' if t.endswith(rough) else '?'
             for t in DEPTH_TEMPLATES]
    assert tails == ['S'] * 53 + ['R'] * 26 + ['S']
    assert DEPTH_TEMPLATES[0] == ('a bad depth image of a gray {} 3D model with white background'
                                  + silhouette)
    assert DEPTH_TEMPLATES[79].startswith('a sketch of the gray {} 3D model, a silhouette')


def test_scanobjectnn_differs_only_in_template_17():
    diff = [i for i, (a, b) in enumerate(zip(DEPTH_TEMPLATES, DEPTH_TEMPLATES_SCANOBJECTNN))
            if a != b]
    assert diff == [16]
    assert DEPTH_TEMPLATES_SCANOBJECTNN[16].endswith('kinetic pointillism, 3D.')


def test_fill_and_lookup():
    filled = fill_templates(get_templates('depth'), 'night stand')
    assert filled[0].startswith('a bad depth image of a gray night stand 3D model')
    assert 'a silhouette of a night stand,' in filled[0] and '{}' not in ''.join(filled)
    with pytest.raises(ValueError, match="unknown template set 'nope'"):
        get_templates('nope')
