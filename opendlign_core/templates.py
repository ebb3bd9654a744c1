"""
Text templates that turn a label into prompts.

``'depth'`` is OpenDlign's set of 80 depth-specific templates (spec section 5.1): each is a head
with one ``{}`` followed by one of two tails with a second ``{}``; every ``{}`` receives the label.
The ``'depth-scanobjectnn'`` set differs in template 17 only, as in the reference
``templates.json``.
"""

from typing import Dict, Sequence, Tuple

_TAIL_S = ', a silhouette of a {}, a raytraced image, image dataset, kinetic pointillism.'
_TAIL_R = (', a rough {} object in the middle, a raytraced image, image dataset, '
           'kinetic pointillism.')

_HEADS_S_1_53 = (
    'a bad depth image of a gray {} 3D model with white background',
    'a noisy depth image of a gray {} 3D model with white background',
    'a sculpture of a gray {} 3D model with white background',
    'a noisy depth image of the hard to see {} 3D model',
    'a low resolution depth image of the gray {} 3D model',
    'a rendering of a gray {} 3D model with white background',
    'graffiti of a gray {} 3D model with white background',
    'a bad depth image of the gray {} 3D model',
    'a cropped depth image of the gray {} 3D model',
    'a tattoo of a gray {} 3D model with white background',
    'the embroidered {} 3D model',
    'a noisy depth image of a hard to see {} 3D model',
    'a bright depth image of a gray {} 2D model with white background',
    'a noisy depth image of a clean {} 3D model',
    'a noisy depth image of a dirty {} 3D model',
    'a dark depth image of the gray {} 2D model',
    'a drawing of a gray {} 2D model with white background',
    'a noisy depth image of my {} 3D model',
    'the plastic {} 3D model',
    'a depth image of the cool {} 3D model',
    'a close-up depth image of a gray {} 2D model with white background',
    'a gray and white depth image of the {} 2D model',
    'a painting of the gray {} 2D model',
    'a painting of a gray {} 2D model with white background',
    'a pixelated depth image of the gray {} 2D model',
    'a sculpture of the gray {} 2D model',
    'a bright depth image of the gray {} 2D model',
    'a cropped depth image of a gray {} 2D model with white background',
    'a plastic {} 3D model',
    'a depth image of the dirty {} 3D model',
    'a jpeg corrupted depth image of a gray {} 2D model with white background',
    'a blurry depth image of the gray {} 2D model',
    'a depth image of the gray {} 2D model',
    'a good depth image of the gray {} 2D model',
    'a rendering of the gray {} 2D model',
    'a gray {} 2D model with white background',
    'a depth image of one {} 3D model',
    'a doodle of a gray {} 2D model with white background',
    'a close-up depth image of the gray {} 2D model',
    'a noisy depth image of a gray {} 2D model with white background',
    'the origami {} 3D model',
    'the gray {} 2D model',
    'a sketch of a gray {} 2D model with white background',
    'a doodle of the gray {} 2D model',
    'a origami {} 3D model',
    'a low resolution depth image of a gray {} 2D model with white background',
    'the toy {} 3D model',
    'a rendition of the gray {} 3D model',
    'a noisy depth image of the clean {} 3D model',
    'a noisy depth image of a large {} 3D model',
    'a rendition of a gray {} 3D model with white background',
    'a noisy depth image of a nice {} 3D model',
    'a noisy depth image of a weird {} 3D model',
)
_HEADS_R_54_79 = (
    'a blurry depth image of a gray {} 3D model with white background',
    'a cartoon {} 3D model',
    'art of a gray {} 3D model with white background',
    'a sketch of the gray {} 3D model',
    'a embroidered {} 3D model',
    'a pixelated depth image of a gray {} 3D model with white background',
    'itap of the gray {} 3D model',
    'a jpeg corrupted depth image of the gray {} 3D model',
    'a good depth image of a gray {} 3D model with white background',
    'a plushie {} 3D model',
    'a noisy depth image of the nice {} 3D model',
    'a noisy depth image of the small {} 3D model',
    'a noisy depth image of the weird {} 3D model',
    'the cartoon {} 3D model',
    'art of the gray {} 3D model',
    'a drawing of the gray {} 3D model',
    'a noisy depth image of the large {} 3D model',
    'a gray and white depth image of a gray {} 3D model with white background',
    'the plushie {} 3D model',
    'a dark depth image of a gray {} 3D model with white background',
    'itap of a gray {} 3D model with white background',
    'graffiti of the gray {} 3D model',
    'a toy {} 3D model',
    'itap of my {} 3D model',
    'a noisy depth image of a cool {} 3D model',
    'a noisy depth image of a small {} 3D model',
)
_HEAD_80 = 'a sketch of the gray {} 3D model'

DEPTH_TEMPLATES: Tuple[str, ...] = (
    tuple(h + _TAIL_S for h in _HEADS_S_1_53)
    + tuple(h + _TAIL_R for h in _HEADS_R_54_79)
    + (_HEAD_80 + _TAIL_S,)
)
DEPTH_TEMPLATES_SCANOBJECTNN: Tuple[str, ...] = (
    DEPTH_TEMPLATES[:16]
    + (DEPTH_TEMPLATES[16][:-1] + ', 3D.',)
    + DEPTH_TEMPLATES[17:]
)

TEMPLATE_SETS: Dict[str, Tuple[str, ...]] = {
    'depth': DEPTH_TEMPLATES,
    'depth-scanobjectnn': DEPTH_TEMPLATES_SCANOBJECTNN,
    'depth-simple': ('a depth map of a {}.', 'a gray depth image of a {} with white background.'),
    'photo': ('a photo of a {}.',),
    'label': ('{}',),
}


def get_templates(name: str) -> Tuple[str, ...]:
    """
    Return a named template set.

    :param name: One of :data:`TEMPLATE_SETS`.
    :return: The templates; each has one or more ``{}`` slots, all filled with the label.
    :raises ValueError: If the name is unknown.
    """
    try:
        return TEMPLATE_SETS[name]
    except KeyError:
        known = sorted(TEMPLATE_SETS)
        raise ValueError(f'unknown template set {name!r}; known: {known}') from None


def fill_templates(templates: Sequence[str], label: str) -> Tuple[str, ...]:
    """
    Fill every ``{}`` of every template with ``label``.

    :param templates: Templates with ``{}`` slots.
    :param label: The class name (underscores are not converted).
    :return: One prompt per template.
    """
    return tuple(t.replace('{}', label) for t in templates)
