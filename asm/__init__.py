"""imsasm, the NetWorker ASM: placeholder paths from mkbackupdir's tree -> backup/restore.

``imsasm`` holds the translation and the three modes; ``cli`` is the entry point, which
works under any name ending in ``asm`` (NetWorker runs external ASMs only so named, from
the directory of its own ``save``/``recover``).
"""
