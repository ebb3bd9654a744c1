"""
OpenDlign: open-world point-cloud recognition with depth-aligned CLIP (Python + PyTorch).

The public API is re-exported here; submodules load lazily, so ``import opendlign_core`` stays
cheap (torch, open_clip and open3d are imported on first use of a name that needs them).
"""

import importlib
from typing import Any, Dict, List

__version__ = '0.1.0'

_EXPORTS: Dict[str, str] = {
    # configuration
    'ProjectionConfig': 'config', 'ModelConfig': 'config', 'ClassifierConfig': 'config',
    'OpenDlignConfig': 'config', 'SegmentationConfig': 'config', 'DetectorConfig': 'config',
    # point clouds and projection
    'load_point_cloud': 'pointcloud', 'clean_points': 'pointcloud',
    'normalize_points': 'pointcloud', 'project_depth_views': 'projection',
    'save_views_png': 'projection',
    # model and classification
    'DepthCLIP': 'model', 'create_depth_clip': 'model', 'save_depth_clip': 'model',
    'Classifier': 'classifier', 'LabelSet': 'classifier', 'Prediction': 'classifier',
    'validate_labels': 'classifier', 'aggregate_scores': 'classifier',
    'get_templates': 'templates', 'LinearProbe': 'few_shot', 'ShapeGallery': 'retrieval',
    # scenes
    'Box3D': 'boxes', 'segment_scene': 'segmentation', 'Detector': 'detection',
    'Detection': 'detection', 'DetectionResult': 'detection',
    'evaluate_detections': 'det_eval',
    # persistent object map
    'ObjectMap': 'object_map', 'ObjectMapConfig': 'object_map', 'Observation': 'object_map',
    'SensorView': 'object_map', 'MapObject': 'object_map', 'MapUpdate': 'object_map',
    'observations_from_result': 'object_map',
}

__all__ = sorted(_EXPORTS) + ['__version__']


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(f'{__name__}.{module}'), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return __all__
