from __future__ import annotations

import platform

import pytest

from autoslm.allocator import unmap_large_blocks


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_large_blocks_are_unmapped_when_freed_on_glibc() -> None:
    assert unmap_large_blocks() is True
    assert unmap_large_blocks() is True  # once per process; again is a no-op
