"""ament_python packaging of opendlign_ros (the node) and opendlign_core (the library)."""

from glob import glob
import os

from setuptools import setup

package_name = 'opendlign_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=['opendlign_core', 'opendlign_ros'],
    package_data={
        'opendlign_core': ['model_configs/*.json', 'data/*', 'weights/*'],
    },
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        (os.path.join('share', package_name, 'launch'), glob('launch/*.launch.py')),
        (os.path.join('share', package_name, 'config'),
         glob('config/*.yaml') + glob('config/*.xml')),
    ],
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='OpenDlign ROS maintainers',
    maintainer_email='opendlign-ros@example.com',
    description='Open-vocabulary 3D object recognition in point clouds (OpenDlign) for ROS 2.',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'opendlign = opendlign_ros.cli:main',
            'opendlign-detector = opendlign_ros.node:main',
            'detector = opendlign_ros.node:main',
        ],
    },
)
