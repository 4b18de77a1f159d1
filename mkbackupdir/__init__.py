"""mkbackupdir: the placeholder tree NetWorker saves through the imsasm ASM.

``layout`` maps mailboxes to placeholder paths and back (also used by imsasm); ``tree``
builds the tree and keeps it in step with the store; ``cli`` is the command.
"""
