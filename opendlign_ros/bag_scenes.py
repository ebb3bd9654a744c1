"""
Scenes -> bags: ScanNet-format scenes written as rosbag2 bags with ground truth.

Two layouts (:func:`bag_from_scenes`):

``'scene'``
    One cloud per scene on ``/points`` (the whole aligned mesh, coloured) in ``frame_id``, and
    on ``/ground_truth`` one ``vision_msgs/Detection3DArray`` per cloud with the same header
    stamp (label in ``class_id``, score 1).

``'frames'`` (what a robot's bag holds; contract E)
    One cloud per exported depth frame on ``/points``, in the camera's optical frame
    ``camera_depth_optical_frame`` (z forward, x right, y down; REP-103), never pre-transformed.
    ``/tf`` carries ``<frame_id> -> camera_link`` (the camera's pose in the fixed frame,
    ``frame_id`` default ``map``): one sample at each cloud stamp and
    :data:`TF_SAMPLES_PER_CLOUD` - 1 more between consecutive clouds of a scene (linear
    translation, spherical rotation; so every cloud stamp is bracketed, as tf2 interpolation
    needs), plus a sample a quarter period before the first and after the last cloud of each
    scene; every ``/tf`` message is logged at its header stamp. ``/tf_static`` holds one
    ``TFMessage`` with ``camera_link -> camera_depth_optical_frame`` (rpy (-pi/2, 0, -pi/2)),
    offered as KEEP_LAST 1 / RELIABLE / TRANSIENT_LOCAL so that players republish it latched.
    Ground truth is in the fixed frame: on ``/ground_truth`` the objects each cloud sees (same
    stamp as the cloud), on ``/ground_truth/objects`` every object of the scene (one message per
    scene, stamped with its first cloud). Scene ``i`` of a multi-scene bag is moved
    ``i * SCENE_SPACING`` metres along x, so the rooms never overlap in one fixed frame (one
    object map covers the whole bag); a single-scene bag's fixed frame is the scene frame.
"""

from dataclasses import dataclass, replace
import logging
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from opendlign_ros.bag_io import (
    CLOUD_TOPIC,
    CLOUD_TYPE,
    DETECTIONS_TYPE,
    GROUND_TRUTH_TOPIC,
    GT_OBJECTS_TOPIC,
    START_NS,
    TF_STATIC_TOPIC,
    TF_TOPIC,
    TF_TYPE,
    BagWriter,
    bag_topics,
    deserialize,
    latched_qos,
    offered_qos,
    read_bag,
    stamp_key,
    stamp_ns,
    time_msg,
    typestore,
)

logger = logging.getLogger(__name__)

CAMERA_LINK = 'camera_link'
OPTICAL_FRAME = 'camera_depth_optical_frame'
#: ``camera_link -> camera_depth_optical_frame`` rotation, quaternion (x, y, z, w): rpy
#: (-pi/2, 0, -pi/2), optical z forward = link x, optical x right = link -y.
LINK_FROM_OPTICAL_QUAT = (-0.5, 0.5, -0.5, 0.5)
#: ``/tf`` samples per cloud period within a scene (20 Hz for the default 5 clouds per second).
TF_SAMPLES_PER_CLOUD = 4
#: Distance, metres along x, between consecutive scenes of a frames bag in the fixed frame.
SCENE_SPACING = 100.0


def link_from_optical() -> np.ndarray:
    """
    Return ``T_camera_link<-camera_depth_optical_frame``.

    :return: (4, 4) float64 rigid transform (pure rotation).
    """
    from scipy.spatial.transform import Rotation

    m = np.eye(4)
    m[:3, :3] = Rotation.from_quat(LINK_FROM_OPTICAL_QUAT).as_matrix()
    return m


@dataclass(frozen=True)
class SceneBagSummary:
    """What :func:`bag_from_scenes` wrote."""

    path: Path
    clouds: int
    boxes: int
    points: int
    #: ``/tf`` messages (frames mode; 0 in scene mode).
    transforms: int = 0


def bag_from_scenes(scene_dirs: Sequence[Path], out: Path, storage: str = 'mcap',
                    mode: str = 'scene', rate: Optional[float] = None,
                    frame_id: str = 'map', frame_step: int = 1) -> SceneBagSummary:
    """
    Write ScanNet-format scenes as a bag of clouds with ground-truth boxes.

    :param scene_dirs: Scene folders (or roots holding scene folders) in ScanNet's layout.
    :param out: Bag folder to create.
    :param storage: ``'mcap'`` or ``'sqlite3'``.
    :param mode: ``'scene'``: one cloud per scene (the whole aligned mesh vertices, with their
        colours as a packed ``rgb`` field) in ``frame_id``, with every annotated ScanNet-18 box
        (the semantic reading ``scannet18_semantic``: real bins in our synthetic scenes, the
        benchmark mapping in real scans); ``'frames'``: one cloud per exported depth frame (no
        colour) in the camera's optical frame, with ``/tf``, ``/tf_static`` and ground truth in
        ``frame_id`` as the module docstring describes; a frame's boxes are those of the
        instances it sees (>= ``MIN_BOX_POINTS`` pixels; box fitted to those points; every box
        of the scene if the frame has no instance image).
    :param rate: Clouds per second of bag time (default 1 for scenes, 5 for frames).
    :param frame_id: The fixed frame: the clouds' frame in scene mode; in frames mode the root
        of ``/tf`` and the frame of the ground truth.
    :param frame_step: Use every ``frame_step``-th frame (``'frames'`` mode).
    :return: A summary.
    :raises ValueError: If no scene is found, ``mode`` is unknown, ``rate`` is not positive,
        ``frame_step`` < 1 or ``frame_id`` is empty or names a camera frame.
    :raises FileNotFoundError: In ``'frames'`` mode, if a scene has no exported frames.
    """
    from opendlign_core import scannet

    if mode not in ('scene', 'frames'):
        raise ValueError(f"mode must be 'scene' or 'frames', got {mode!r}")
    rate = (1.0 if mode == 'scene' else 5.0) if rate is None else float(rate)
    if not rate > 0:
        raise ValueError(f'rate must be > 0, got {rate}')
    if frame_step < 1:
        raise ValueError(f'frame_step must be >= 1, got {frame_step}')
    frame_id = frame_id.lstrip('/')     # tf2 rejects a leading slash
    if not frame_id or frame_id in (CAMERA_LINK, OPTICAL_FRAME):
        raise ValueError(f'frame_id must be a non-empty fixed frame other than {CAMERA_LINK!r} '
                         f'and {OPTICAL_FRAME!r}, got {frame_id!r}')
    folders = [d for root in scene_dirs for d in scannet.list_scenes(Path(root))]
    if not folders:
        raise ValueError(f'no ScanNet scene folders in {[str(d) for d in scene_dirs]}')
    if mode == 'frames':
        for folder in folders:
            kfile = folder / 'frames' / 'intrinsic' / 'intrinsic_depth.txt'
            if not kfile.is_file():
                raise FileNotFoundError(f'scene {str(folder)!r} has no exported frames '
                                        f'({kfile.name} not found)')
    period_ns = int(round(1e9 / rate))
    with BagWriter(Path(out), storage) as writer:
        if mode == 'scene':
            summary = _write_scenes(writer, folders, period_ns, frame_id)
        else:
            summary = _write_frames(writer, folders, period_ns, frame_id, frame_step)
    summary = replace(summary, path=Path(out))
    logger.info('wrote %d clouds (%d boxes) to %s', summary.clouds, summary.boxes, out)
    return summary


def _write_scenes(writer: BagWriter, folders: Sequence[Path], period_ns: int,
                  frame_id: str) -> SceneBagSummary:
    from std_msgs.msg import Header

    from opendlign_core import scannet
    from opendlign_ros import conversions

    clouds = boxes = points = 0
    for folder in folders:
        scene = scannet.read_scannet_scene(folder)
        t = START_NS + clouds * period_ns
        header = Header(stamp=time_msg(t), frame_id=frame_id)
        gt = [(i.scannet18_semantic, i.box) for i in _objects(scene)]
        writer.write(CLOUD_TOPIC, CLOUD_TYPE, t,
                     conversions.cloud_to_msg(scene.points, header, scene.colors))
        writer.write(GROUND_TRUTH_TOPIC, DETECTIONS_TYPE, t, conversions.boxes_to_msg(gt, header))
        clouds += 1
        boxes += len(gt)
        points += len(scene.points)
    return SceneBagSummary(Path(), clouds, boxes, points)


def _objects(scene: Any) -> List[Any]:
    return [i for i in scene.instances if i.scannet18_semantic and i.box is not None]


def _shift(box: Any, offset: np.ndarray) -> Any:
    return replace(box, center=box.center + offset)


def _write_frames(writer: BagWriter, folders: Sequence[Path], period_ns: int, frame_id: str,
                  frame_step: int) -> SceneBagSummary:
    from std_msgs.msg import Header

    from opendlign_core import scannet
    from opendlign_ros import conversions

    store = writer.store
    quarter = period_ns // TF_SAMPLES_PER_CLOUD
    writer.add_topic(TF_STATIC_TOPIC, TF_TYPE, [latched_qos()])
    writer.add_topic(TF_TOPIC, TF_TYPE, [offered_qos(100, latched=False)])  # tf2 broadcaster's
    writer.add_topic(CLOUD_TOPIC, CLOUD_TYPE)
    writer.add_topic(GROUND_TRUTH_TOPIC, DETECTIONS_TYPE)
    writer.add_topic(GT_OBJECTS_TOPIC, DETECTIONS_TYPE)
    t_static = START_NS - quarter
    writer.write(TF_STATIC_TOPIC, TF_TYPE, t_static, tf_message(
        store, [(t_static, CAMERA_LINK, OPTICAL_FRAME, link_from_optical())]))
    optical_to_link = np.linalg.inv(link_from_optical())
    clouds = boxes = points = transforms = 0

    def write_tf(t: int, map_from_link: np.ndarray) -> None:
        nonlocal transforms
        writer.write(TF_TOPIC, TF_TYPE, t,
                     tf_message(store, [(t, frame_id, CAMERA_LINK, map_from_link)]))
        transforms += 1

    for index, folder in enumerate(folders):
        scene = scannet.read_scannet_scene(folder)
        offset = np.array([index * SCENE_SPACING, 0.0, 0.0])
        shift = np.eye(4)
        shift[:3, 3] = offset
        frames = _frame_clouds(scene, folder, frame_step)
        current = next(frames, None)
        if current is None:
            logger.warning('scene %s has no frame with valid depth; skipped', folder.name)
            continue
        t = START_NS + clouds * period_ns
        write_tf(t - quarter, shift @ current[1] @ optical_to_link)
        objects = [(i.scannet18_semantic, _shift(i.box, offset)) for i in _objects(scene)]
        writer.write(GT_OBJECTS_TOPIC, DETECTIONS_TYPE, t, conversions.boxes_to_msg(
            objects, Header(stamp=time_msg(t), frame_id=frame_id)))
        while current is not None:
            cam_points, map_from_optical, gt = current
            t = START_NS + clouds * period_ns
            map_from_link = shift @ map_from_optical @ optical_to_link
            write_tf(t, map_from_link)
            writer.write(CLOUD_TOPIC, CLOUD_TYPE, t, conversions.cloud_to_msg(
                cam_points, Header(stamp=time_msg(t), frame_id=OPTICAL_FRAME)))
            writer.write(GROUND_TRUTH_TOPIC, DETECTIONS_TYPE, t, conversions.boxes_to_msg(
                [(label, _shift(box, offset)) for label, box in gt],
                Header(stamp=time_msg(t), frame_id=frame_id)))
            clouds += 1
            boxes += len(gt)
            points += len(cam_points)
            following = next(frames, None)
            if following is None:
                write_tf(t + quarter, map_from_link)
            else:
                after = shift @ following[1] @ optical_to_link
                for j in range(1, TF_SAMPLES_PER_CLOUD):
                    write_tf(t + j * quarter, interpolate_pose(
                        map_from_link, after, j / TF_SAMPLES_PER_CLOUD))
            current = following
    return SceneBagSummary(Path(), clouds, boxes, points, transforms)


def _frame_clouds(scene: Any, folder: Path, frame_step: int
                  ) -> Iterable[Tuple[np.ndarray, np.ndarray, List[Tuple[str, Any]]]]:
    # (points (N, 3) float32 in the optical frame, T_scene<-optical, ground truth in the scene
    # frame) per frame with valid depth.
    from opendlign_core import scannet
    from opendlign_core.boxes import fit_aabb

    objects = _objects(scene)
    align = scene.axis_alignment
    for index, frame in enumerate(scannet.read_frames(folder)):
        if index % frame_step:
            continue
        # The core's back-projection with an identity pose gives the camera-frame points.
        cam = replace(frame, pose=np.eye(4)).points()
        if not len(cam):
            continue
        scene_from_optical = align @ frame.pose     # camera -> scan -> scene (aligned) frame
        gt = []
        if frame.instance is not None:
            pts = cam.astype(np.float64) @ scene_from_optical[:3, :3].T + scene_from_optical[:3, 3]
            ids = frame.instance[frame.depth > 0]
            for inst in objects:
                seen = pts[ids == inst.object_id]
                if len(seen) >= scannet.MIN_BOX_POINTS:
                    gt.append((inst.scannet18_semantic, fit_aabb(seen)))
        else:
            gt = [(i.scannet18_semantic, i.box) for i in objects]
        yield cam, scene_from_optical, gt


def interpolate_pose(a: np.ndarray, b: np.ndarray, fraction: float) -> np.ndarray:
    """
    Interpolate between two rigid transforms the way tf2 does.

    :param a: (4, 4) transform at ``fraction`` 0.
    :param b: (4, 4) transform at ``fraction`` 1.
    :param fraction: In [0, 1].
    :return: (4, 4) float64: translation linear, rotation spherical-linear.
    :raises ValueError: If ``fraction`` is outside [0, 1].
    """
    from scipy.spatial.transform import Rotation, Slerp

    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f'fraction must be in [0, 1], got {fraction}')
    out = np.eye(4)
    out[:3, :3] = Slerp([0.0, 1.0], Rotation.from_matrix(np.stack([a[:3, :3], b[:3, :3]])))(
        fraction).as_matrix()
    out[:3, 3] = (1.0 - fraction) * a[:3, 3] + fraction * b[:3, 3]
    return out


def tf_message(store: Any, transforms: Sequence[Tuple[int, str, str, np.ndarray]]) -> Any:
    """
    Build a ``tf2_msgs/msg/TFMessage`` with the ``rosbags`` type store (no tf2_msgs needed).

    :param store: Type store holding ``tf2_msgs`` (:func:`opendlign_ros.bag_io.typestore`).
    :param transforms: ``(stamp_ns, parent, child, T_parent<-child (4, 4))`` per transform.
    :return: The message (rotation as a unit quaternion with ``w >= 0``).
    :raises ValueError: If a transform is not a finite rigid (4, 4) matrix.
    """
    from scipy.spatial.transform import Rotation

    types = store.types
    out = []
    for ns, parent, child, matrix in transforms:
        m = np.asarray(matrix, dtype=np.float64)
        if m.shape != (4, 4) or not np.isfinite(m).all():
            raise ValueError(f'transform {parent} -> {child} must be a finite (4, 4) matrix, '
                             f'got shape {m.shape}')
        r = m[:3, :3]
        if not (np.allclose(r @ r.T, np.eye(3), atol=1e-6) and np.linalg.det(r) > 0):
            raise ValueError(f'transform {parent} -> {child}: rotation block is not a rotation')
        q = Rotation.from_matrix(r).as_quat()
        q = -q if q[3] < 0 else q
        stamp = types['builtin_interfaces/msg/Time'](sec=int(ns // 1_000_000_000),
                                                      nanosec=int(ns % 1_000_000_000))
        out.append(types['geometry_msgs/msg/TransformStamped'](
            header=types['std_msgs/msg/Header'](stamp=stamp, frame_id=parent),
            child_frame_id=child,
            transform=types['geometry_msgs/msg/Transform'](
                translation=types['geometry_msgs/msg/Vector3'](*map(float, m[:3, 3])),
                rotation=types['geometry_msgs/msg/Quaternion'](*map(float, q)))))
    return types[TF_TYPE](transforms=out)


@dataclass(frozen=True)
class StampedTransform:
    """One transform read from a bag's ``/tf`` or ``/tf_static``."""

    stamp_ns: int
    parent: str
    child: str
    #: (4, 4) float64 ``T_parent<-child`` (the child's pose in the parent).
    matrix: np.ndarray
    static: bool


def read_transforms(path: Path) -> List[StampedTransform]:
    """
    Read every transform of a bag's ``/tf`` and ``/tf_static`` (no tf2_msgs needed).

    :param path: Bag folder.
    :return: Transforms in bag order (leading ``/`` stripped from frame ids).
    """
    from scipy.spatial.transform import Rotation

    topics = bag_topics(path)
    wanted = [t for t in (TF_TOPIC, TF_STATIC_TOPIC) if topics.get(t, ('',))[0] == TF_TYPE]
    if not wanted:
        return []
    store = typestore()
    out = []
    for topic, msgtype, _, data in read_bag(path, wanted):
        for tr in deserialize(data, msgtype, store).transforms:
            m = np.eye(4)
            q, v = tr.transform.rotation, tr.transform.translation
            m[:3, :3] = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
            m[:3, 3] = (v.x, v.y, v.z)
            out.append(StampedTransform(stamp_ns(tr.header.stamp),
                                        tr.header.frame_id.lstrip('/'),
                                        tr.child_frame_id.lstrip('/'), m,
                                        topic == TF_STATIC_TOPIC))
    return out


def read_ground_truth(path: Path, topic: str = GROUND_TRUTH_TOPIC) -> Dict[str, List[Any]]:
    """
    Read the ground-truth boxes of a bag written by :func:`bag_from_scenes`.

    :param path: Bag folder.
    :param topic: ``/ground_truth`` (per cloud) or ``/ground_truth/objects`` (per scene).
    :return: Stamp key (``stamp_key``) -> ``det_eval.GtBox`` list; empty without that topic.
    """
    from opendlign_core.det_eval import GtBox
    from opendlign_ros import conversions

    if topic not in bag_topics(path):
        return {}
    store = typestore()
    gts: Dict[str, List[Any]] = {}
    for _, msgtype, _, data in read_bag(path, [topic]):
        msg = deserialize(data, msgtype, store)
        gts[stamp_key(msg.header.stamp)] = [
            GtBox(d.results[0].hypothesis.class_id, conversions.box_from_msg(d.bbox))
            for d in msg.detections if len(d.results)]
    return gts


def ground_truth_frame(path: Path) -> Optional[str]:
    """
    Return the frame of a bag's ground truth (the fixed frame of a frames bag).

    :param path: Bag folder.
    :return: ``header.frame_id`` of the first ground-truth message; ``None`` without one.
    """
    for topic in (GT_OBJECTS_TOPIC, GROUND_TRUTH_TOPIC):
        if topic in bag_topics(path):
            for _, msgtype, _, data in read_bag(path, [topic]):
                return deserialize(data, msgtype).header.frame_id.lstrip('/')
    return None
