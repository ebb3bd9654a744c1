"""Test-wide environment: offline model hubs, loopback-only ROS discovery, few CPU threads."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
# Hermetic: label text embeddings are cached in a per-run folder, never in the user's home.
os.environ['OPENDLIGN_TEXT_CACHE'] = tempfile.mkdtemp(prefix='opendlign-text-cache-')
atexit.register(shutil.rmtree, os.environ['OPENDLIGN_TEXT_CACHE'], ignore_errors=True)
