"""The transfer disk: a block device beside the agent channel that carries files' bytes.

The agent channel is a virtio-serial port, and under TCG its bytes cost: QEMU
moves them 4 KiB at a time, the guest takes one interrupt per page, and the agent
decodes every frame (50-80 MB/s each way measured, with no framing at all). A
virtio-blk request moves a MiB by DMA into guest memory, and the guest can hand it
on to a file with ``O_DIRECT`` without touching a byte of it. So every VM has a
second disk, a sparse file in its run directory that nothing keeps, and the
stream of an upload or a download carries EXTENT frames (``ember.protocol.framing``):
"the next ``length`` bytes are on the transfer disk at ``offset``".

The host owns the disk's layout (``ember.engine.extents``): lanes of slots, one
lane per transfer. An extent is either the host's or lent to the guest, and each
frame moves one across: on an upload the host fills a slot and lends it, the
guest reads it and gives it back; on a download the host lends empty slots, the
guest fills one and gives it back with the length it wrote. The guest finds the
disk by its serial.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The transfer disk's virtio-blk serial (``/sys/block/vd*/serial`` in the guest).
TRANSFER_DISK_SERIAL = "ember-transfer"
#: One extent at most: a block request the guest's virtio-blk takes whole (its limit is 1280 KiB).
SLOT_BYTES = 1024 * 1024
#: Slots one transfer has out at once: enough to keep both ends busy.
LANE_SLOTS = 8
#: Transfers that use the disk at once; more go through the channel's DATA frames.
LANES = 4
TRANSFER_DISK_BYTES = SLOT_BYTES * LANE_SLOTS * LANES
#: Direct I/O's alignment of offsets, lengths and buffers (the guest's page size).
ALIGN_BYTES = 4096
#: A body smaller than this is sent as DATA frames: a disk round trip costs more than it saves.
MIN_EXTENT_BODY_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Extent:
    """``length`` bytes of the transfer disk at ``offset``."""

    offset: int
    length: int
