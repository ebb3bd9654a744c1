"""
Thread-count guards for small CPU work on a shared machine.

On a 2-core robot computer that also runs drivers and SLAM, torch's intra-op worker threads wake
up late for tiny operations: matching 15 objects x 10 views against 18 labels took 24 ms with two
threads and 0.05 ms with one while another process held a core (measured here). Small CPU work
therefore runs single-threaded; large work (the image encoder) keeps torch's setting.
"""

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def torch_threads(threads: int, device: torch.device | str = 'cpu') -> Iterator[None]:
    """
    Run a block with ``threads`` torch intra-op threads on CPU, then restore the old count.

    ``torch.set_num_threads`` is process-wide: work running concurrently in another Python
    thread sees the temporary count too (it only changes speed, never results).

    :param threads: Threads for the block; ``<= 0`` keeps the current count.
    :param device: The device the block computes on; nothing changes for a non-CPU device.
    """
    previous = torch.get_num_threads()
    wanted = threads if torch.device(device).type == 'cpu' and threads > 0 else previous
    if wanted != previous:
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        if wanted != previous:
            torch.set_num_threads(previous)
